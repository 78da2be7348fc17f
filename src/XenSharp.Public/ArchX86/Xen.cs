using System.Runtime.InteropServices;

namespace XenSharp.Public.ArchX86;

/// <summary>struct arch_vcpu_info (x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArchVcpuInfo
{
    public ulong Cr2;
    public ulong Pad;
}

/// <summary>struct arch_shared_info (x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArchSharedInfo
{
    public ulong MaxPfn;
    public ulong PfnToMfnFrameListList;
    public ulong NmiReason;
    public ulong P2mCr3;
    public ulong P2mVaddr;
    public ulong P2mGeneration;
}
