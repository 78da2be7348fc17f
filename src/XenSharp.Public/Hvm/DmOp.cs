using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/dm_op.h: __HYPERVISOR_dm_op(domid, nr_bufs, bufs), the device model's operations
/// on the domain it serves; bufs[0] holds a <see cref="XenDmOp"/>.</summary>
public static class DmOp
{
    public const uint XEN_DMOP_create_ioreq_server = 1, XEN_DMOP_get_ioreq_server_info = 2,
        XEN_DMOP_map_io_range_to_ioreq_server = 3, XEN_DMOP_unmap_io_range_from_ioreq_server = 4,
        XEN_DMOP_set_ioreq_server_state = 5, XEN_DMOP_destroy_ioreq_server = 6, XEN_DMOP_track_dirty_vram = 7,
        XEN_DMOP_set_pci_intx_level = 8, XEN_DMOP_set_isa_irq_level = 9, XEN_DMOP_set_pci_link_route = 10,
        XEN_DMOP_modified_memory = 11, XEN_DMOP_set_mem_type = 12, XEN_DMOP_inject_event = 13, XEN_DMOP_inject_msi = 14,
        XEN_DMOP_map_mem_type_to_ioreq_server = 15, XEN_DMOP_remote_shutdown = 16, XEN_DMOP_relocate_memory = 17,
        XEN_DMOP_pin_memory_cacheattr = 18, XEN_DMOP_set_irq_level = 19, XEN_DMOP_nr_vcpus = 20;

    /// <summary>offsetof(struct xen_dm_op, u).</summary>
    public const int HeaderSize = 8;
}

/// <summary>struct xen_dm_op: op, pad, and the union of the per-op structures (24 bytes on x86).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenDmOp
{
    public uint Op;
    public uint Pad;
    public fixed byte U[24];
}

/// <summary>struct xen_dm_op_buf: a guest handle and its size.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpBuf
{
    public ulong H;
    public ulong Size;
}

/// <summary>struct xen_dm_op_set_pci_intx_level.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpSetPciIntxLevel
{
    public ushort Domain;
    public byte Bus, Device, Intx;
    public byte Level;
}

/// <summary>struct xen_dm_op_set_isa_irq_level.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpSetIsaIrqLevel
{
    public byte IsaIrq;
    public byte Level;
}

/// <summary>struct xen_dm_op_set_pci_link_route.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpSetPciLinkRoute
{
    public byte Link;
    public byte IsaIrq;
}

/// <summary>struct xen_dm_op_nr_vcpus.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpNrVcpus
{
    public uint Vcpus;
}

/// <summary>struct xen_dm_op_create_ioreq_server.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenDmOpCreateIoreqServer
{
    public byte HandleBufioreq;
    public fixed byte Pad[3];
    public ushort Id;
}

/// <summary>struct xen_dm_op_get_ioreq_server_info.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpGetIoreqServerInfo
{
    public const ushort XEN_DMOP_no_gfns = 1;
    public ushort Id;
    public ushort Flags;
    public uint BufioreqPort;
    public ulong IoreqGfn;
    public ulong BufioreqGfn;
}

/// <summary>struct xen_dm_op_ioreq_server_range (XEN_DMOP_IO_RANGE_PORT, _MEMORY, _PCI).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpIoreqServerRange
{
    public const uint XEN_DMOP_IO_RANGE_PORT = 0, XEN_DMOP_IO_RANGE_MEMORY = 1, XEN_DMOP_IO_RANGE_PCI = 2;
    public ushort Id;
    public ushort Pad;
    public uint Type;
    public ulong Start, End;
}

/// <summary>struct xen_dm_op_set_ioreq_server_state.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpSetIoreqServerState
{
    public ushort Id;
    public byte Enabled;
    public byte Pad;
}

/// <summary>struct xen_dm_op_destroy_ioreq_server.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpDestroyIoreqServer
{
    public ushort Id;
    public ushort Pad;
}

/// <summary>struct xen_dm_op_track_dirty_vram: buffer 1 receives one bit per page.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpTrackDirtyVram
{
    public uint Nr;
    public uint Pad;
    public ulong FirstPfn;
}

/// <summary>struct xen_dm_op_modified_memory: buffer 1 holds <see cref="NrExtents"/> extents.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpModifiedMemory
{
    public uint NrExtents;
    public uint Opaque;
}

/// <summary>struct xen_dm_op_modified_memory_extent.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpModifiedMemoryExtent
{
    public uint Nr;
    public uint Pad;
    public ulong FirstPfn;
}

/// <summary>struct xen_dm_op_set_mem_type (mem_type an hvmmem_type_t).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpSetMemType
{
    public const ushort HVMMEM_ram_rw = 0, HVMMEM_ram_ro = 1, HVMMEM_mmio_dm = 2,
        HVMMEM_unused = 3, HVMMEM_ioreq_server = 4;
    public uint Nr;
    public ushort MemType;
    public ushort Pad;
    public ulong FirstPfn;
}

/// <summary>struct xen_dm_op_inject_msi.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpInjectMsi
{
    public uint Data;
    public uint Pad;
    public ulong Addr;
}

/// <summary>struct xen_dm_op_remote_shutdown.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpRemoteShutdown
{
    public uint Reason;
}

/// <summary>struct xen_dm_op_relocate_memory.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpRelocateMemory
{
    public uint Size;
    public uint Pad;
    public ulong SrcGfn, DstGfn;
}

/// <summary>struct xen_dm_op_pin_memory_cacheattr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDmOpPinMemoryCacheattr
{
    public const uint XEN_DMOP_MEM_CACHEATTR_UC = 0, XEN_DMOP_MEM_CACHEATTR_WC = 1, XEN_DMOP_MEM_CACHEATTR_WT = 4,
        XEN_DMOP_MEM_CACHEATTR_WP = 5, XEN_DMOP_MEM_CACHEATTR_WB = 6, XEN_DMOP_MEM_CACHEATTR_UCM = 7,
        XEN_DMOP_DELETE_MEM_CACHEATTR = ~0u;
    public ulong Start, End;
    public uint Type;
    public uint Pad;
}

/// <summary>struct xen_dm_op_set_irq_level.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenDmOpSetIrqLevel
{
    public uint Irq;
    public byte Level;
    public fixed byte Pad[3];
}
