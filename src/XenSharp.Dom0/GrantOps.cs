using System.Runtime.InteropServices;

namespace XenSharp.Dom0;

/// <summary>One GNTTABOP_map_grant_ref of a batch, as dom0's gntdev issues it: IN <see cref="Dom"/>,
/// <see cref="Ref"/>, <see cref="ReadOnly"/>; OUT <see cref="Status"/> (a GNTST_* value),
/// <see cref="Handle"/> for the unmap and <see cref="Address"/>, the page in the host.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GrantMapOp
{
    public ushort Dom;
    public uint Ref;
    public bool ReadOnly;
    public short Status;
    public uint Handle;
    public nint Address;

    public GrantMapOp(ushort dom, uint gref, bool readOnly)
    {
        Dom = dom;
        Ref = gref;
        ReadOnly = readOnly;
    }
}

/// <summary>One GNTTABOP_unmap_grant_ref of a batch: IN <see cref="Handle"/>; OUT <see cref="Status"/>.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GrantUnmapOp
{
    public uint Handle;
    public short Status;

    public GrantUnmapOp(uint handle) => Handle = handle;
}

/// <summary>One GNTTABOP_copy of a batch between a granted page and host memory: IN the grant
/// (<see cref="Dom"/>, <see cref="Ref"/>, <see cref="Offset"/> in its page), <see cref="Length"/>,
/// the direction and <see cref="Local"/>, the host buffer; OUT <see cref="Status"/> (GNTST_*).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct GrantCopyOp
{
    public ushort Dom;
    public uint Ref;
    public ushort Offset;
    public ushort Length;
    /// <summary>True: host buffer → granted page (GNTCOPY_dest_gref); false: granted page → host buffer (GNTCOPY_source_gref).</summary>
    public bool ToGuest;
    public byte* Local;
    public short Status;
}
