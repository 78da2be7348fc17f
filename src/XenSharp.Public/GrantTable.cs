using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/grant_table.h.</summary>
public static class GrantTable
{
    public const int GNTTABOP_map_grant_ref = 0, GNTTABOP_unmap_grant_ref = 1, GNTTABOP_setup_table = 2,
        GNTTABOP_dump_table = 3, GNTTABOP_transfer = 4, GNTTABOP_copy = 5, GNTTABOP_query_size = 6,
        GNTTABOP_unmap_and_replace = 7, GNTTABOP_set_version = 8, GNTTABOP_get_status_frames = 9,
        GNTTABOP_get_version = 10, GNTTABOP_swap_grant_ref = 11, GNTTABOP_cache_flush = 12;

    public const int GNTTAB_NR_RESERVED_ENTRIES = 8, GNTTAB_RESERVED_CONSOLE = 0, GNTTAB_RESERVED_XENSTORE = 1;

    public const ushort GTF_invalid = 0, GTF_permit_access = 1, GTF_accept_transfer = 2, GTF_transitive = 3,
        GTF_type_mask = 3, GTF_readonly = 1 << 2, GTF_reading = 1 << 3, GTF_writing = 1 << 4, GTF_PWT = 1 << 5,
        GTF_PCD = 1 << 6, GTF_PAT = 1 << 7, GTF_sub_page = 1 << 8, GTF_transfer_committed = 1 << 2,
        GTF_transfer_completed = 1 << 3;

    public const uint GNTMAP_device_map = 1 << 0, GNTMAP_host_map = 1 << 1, GNTMAP_readonly = 1 << 2,
        GNTMAP_application_map = 1 << 3, GNTMAP_contains_pte = 1 << 4;

    public const ushort GNTCOPY_source_gref = 1 << 0, GNTCOPY_dest_gref = 1 << 1;

    public const short GNTST_okay = 0, GNTST_general_error = -1, GNTST_bad_domain = -2, GNTST_bad_gntref = -3,
        GNTST_bad_handle = -4, GNTST_bad_virt_addr = -5, GNTST_bad_dev_addr = -6, GNTST_no_device_space = -7,
        GNTST_permission_denied = -8, GNTST_bad_page = -9, GNTST_bad_copy_arg = -10, GNTST_address_too_big = -11,
        GNTST_eagain = -12, GNTST_no_space = -13;
}

/// <summary>struct grant_entry_v1 (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GrantEntryV1 { public ushort Flags; public ushort Domid; public uint Frame; }

/// <summary>union grant_entry_v2 (16 bytes): hdr, full_page, sub_page, transitive.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
public struct GrantEntryV2
{
    [FieldOffset(0)] public ushort Flags;
    [FieldOffset(2)] public ushort Domid;
    /// <summary>full_page.frame and sub_page.frame.</summary>
    [FieldOffset(8)] public ulong Frame;
    [FieldOffset(4)] public ushort SubPageOff;
    [FieldOffset(6)] public ushort SubPageLength;
    [FieldOffset(4)] public ushort TransDomid;
    [FieldOffset(8)] public uint TransGref;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabMapGrantRef
{
    public ulong HostAddr;
    public uint Flags;
    public uint Ref;
    public ushort Dom;
    public short Status;
    public uint Handle;
    public ulong DevBusAddr;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabUnmapGrantRef
{
    public ulong HostAddr;
    public ulong DevBusAddr;
    public uint Handle;
    public short Status;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabSetupTable
{
    public ushort Dom;
    public uint NrFrames;
    public short Status;
    /// <summary>Guest handle of an array of xen_pfn_t.</summary>
    public ulong FrameList;
}

/// <summary>struct gnttab_copy_ptr: u.ref or u.gmfn (8 bytes), domid, offset.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GnttabCopyPtr
{
    public ulong RefOrGmfn;
    public ushort Domid;
    public ushort Offset;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabCopy
{
    public GnttabCopyPtr Source;
    public GnttabCopyPtr Dest;
    public ushort Len;
    public ushort Flags;
    public short Status;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabQuerySize
{
    public ushort Dom;
    public uint NrFrames;
    public uint MaxNrFrames;
    public short Status;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabSetVersion { public uint Version; }

[StructLayout(LayoutKind.Sequential)]
public struct GnttabGetStatusFrames
{
    public uint NrFrames;
    public ushort Dom;
    public short Status;
    public ulong FrameList;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabGetVersion { public ushort Dom; public ushort Pad; public uint Version; }
