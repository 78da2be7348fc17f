using System.Runtime.InteropServices;

namespace XenSharp.Public.Io;

/// <summary>xen/include/public/io/console.h: struct xencons_interface (the hvc0 page).</summary>
[StructLayout(LayoutKind.Explicit, Size = 3088)]
public unsafe struct XenconsInterface
{
    public const int InSize = 1024, OutSize = 2048;
    public const int OffsetIn = 0, OffsetOut = 1024, OffsetInCons = 3072, OffsetInProd = 3076,
        OffsetOutCons = 3080, OffsetOutProd = 3084;
    [FieldOffset(0)] public fixed byte In[1024];
    [FieldOffset(1024)] public fixed byte Out[2048];
    [FieldOffset(3072)] public uint InCons;
    [FieldOffset(3076)] public uint InProd;
    [FieldOffset(3080)] public uint OutCons;
    [FieldOffset(3084)] public uint OutProd;
}
