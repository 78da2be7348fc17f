using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/memory.h.</summary>
public static class Memory
{
    public const int XENMEM_increase_reservation = 0, XENMEM_decrease_reservation = 1,
        XENMEM_maximum_ram_page = 2, XENMEM_current_reservation = 3, XENMEM_maximum_reservation = 4,
        XENMEM_machphys_mfn_list = 5, XENMEM_populate_physmap = 6, XENMEM_add_to_physmap = 7,
        XENMEM_memory_map = 9, XENMEM_machine_memory_map = 10, XENMEM_exchange = 11, XENMEM_machphys_mapping = 12,
        XENMEM_set_memory_map = 13, XENMEM_maximum_gpfn = 14, XENMEM_remove_from_physmap = 15,
        XENMEM_set_pod_target = 16, XENMEM_get_pod_target = 17, XENMEM_add_to_physmap_batch = 23,
        XENMEM_claim_pages = 24, XENMEM_machphys_compat_mfn_list = 25, XENMEM_get_vnumainfo = 26,
        XENMEM_reserved_device_memory_map = 27, XENMEM_acquire_resource = 28;

    /// <summary>xen_mem_acquire_resource.type, and the grant table's ids.</summary>
    public const uint XENMEM_resource_ioreq_server = 0, XENMEM_resource_grant_table = 1, XENMEM_resource_vmtrace_buf = 2;
    public const uint XENMEM_resource_grant_table_id_shared = 0, XENMEM_resource_grant_table_id_status = 1;
    /// <summary>The frames of an IOREQ server's resource: the buffered ring, then the synchronous ioreq page(s).</summary>
    public const ulong XENMEM_resource_ioreq_server_frame_bufioreq = 0;
    public static ulong XENMEM_resource_ioreq_server_frame_ioreq(ulong n) => 1 + n;

    /// <summary>Low bits of the memory_op command hold the op; the rest is a continuation start extent.</summary>
    public const int MEMOP_EXTENT_SHIFT = 6, MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1;

    public const uint XENMEMF_populate_on_demand = 1 << 16, XENMEMF_exact_node_request = 1 << 17,
        XENMEMF_vnode = 1 << 18;
    public static uint XENMEMF_get_address_bits(uint x) => x & 0xff;

    public const uint XENMAPSPACE_shared_info = 0, XENMAPSPACE_grant_table = 1, XENMAPSPACE_gmfn = 2,
        XENMAPSPACE_gmfn_range = 3, XENMAPSPACE_gmfn_foreign = 4, XENMAPSPACE_dev_mmio = 5;
    public const ulong XENMAPIDX_grant_table_status = 0x80000000;
}

/// <summary>struct xen_memory_reservation (x86_64: 32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryReservation
{
    /// <summary>Guest handle (guest-linear address) of an array of xen_pfn_t.</summary>
    public ulong ExtentStart;
    public ulong NrExtents;
    public uint ExtentOrder;
    public uint MemFlags;
    public ushort Domid;
}

/// <summary>struct xen_memory_exchange: trade the frames of <see cref="In"/> for fresh ones placed as <see cref="Out"/> lists.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryExchange
{
    public XenMemoryReservation In;
    public XenMemoryReservation Out;
    /// <summary>Input extents done so far (IN/OUT; the caller starts it at zero).</summary>
    public ulong NrExchanged;

    public const int OffsetNrExchanged = 64;
}

/// <summary>struct xen_add_to_physmap_batch (interface version 4.7 and later: the union u holds foreign_domid).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenAddToPhysmapBatch
{
    public ushort Domid;
    public ushort Space;
    public ushort Size;
    /// <summary>u.foreign_domid for XENMAPSPACE_gmfn_foreign, u.res0 (zero) otherwise.</summary>
    public ushort ForeignDomid;
    /// <summary>Guest handles: xen_ulong_t idxs[], xen_pfn_t gpfns[], int errs[].</summary>
    public ulong Idxs;
    public ulong Gpfns;
    public ulong Errs;
}

/// <summary>struct xen_add_to_physmap.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenAddToPhysmap
{
    public ushort Domid;
    public ushort Size;
    public uint Space;
    public ulong Idx;
    public ulong Gpfn;
}

/// <summary>struct xen_remove_from_physmap.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenRemoveFromPhysmap
{
    public ushort Domid;
    public ulong Gpfn;
}

/// <summary>struct xen_pod_target: XENMEM_set_pod_target / XENMEM_get_pod_target.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenPodTarget
{
    public ulong TargetPages;
    public ulong TotPages;
    public ulong PodCachePages;
    public ulong PodEntries;
    public ushort Domid;
}

/// <summary>struct xen_memory_map: nr_entries IN/OUT, buffer of e820 entries.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryMap
{
    public uint NrEntries;
    public ulong Buffer;
}

/// <summary>struct xen_foreign_memory_map (XENMEM_set_memory_map): a domain and its e820.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenForeignMemoryMap
{
    public ushort Domid;
    public XenMemoryMap Map;
}

/// <summary>struct e820entry as XENMEM_memory_map returns it (packed, 20 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct E820Entry
{
    public ulong Addr;
    public ulong Size;
    public uint Type;
}

/// <summary>struct xen_machphys_mapping (XENMEM_machphys_mapping): where the M2P is and its largest MFN.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMachphysMapping { public ulong VStart; public ulong VEnd; public ulong MaxMfn; }

/// <summary>struct xen_machphys_mfn_list (XENMEM_machphys_mfn_list): the MFNs of the M2P's 2 MiB superpages.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMachphysMfnList { public uint MaxExtents; public ulong ExtentStart; public uint NrExtents; }
