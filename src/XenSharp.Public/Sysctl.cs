using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/sysctl.h of Xen 4.17 (XEN_SYSCTL_INTERFACE_VERSION 0x15): the host-wide operations
/// of the control domain's toolstack.</summary>
public static class Sysctl
{
    public const uint XEN_SYSCTL_INTERFACE_VERSION = 0x00000015;

    public const uint XEN_SYSCTL_readconsole = 1, XEN_SYSCTL_tbuf_op = 2, XEN_SYSCTL_physinfo = 3, XEN_SYSCTL_sched_id = 4,
        XEN_SYSCTL_perfc_op = 5, XEN_SYSCTL_getdomaininfolist = 6, XEN_SYSCTL_debug_keys = 7, XEN_SYSCTL_getcpuinfo = 8,
        XEN_SYSCTL_availheap = 9, XEN_SYSCTL_get_pmstat = 10, XEN_SYSCTL_cpu_hotplug = 11, XEN_SYSCTL_pm_op = 12,
        XEN_SYSCTL_page_offline_op = 14, XEN_SYSCTL_lockprof_op = 15, XEN_SYSCTL_cputopoinfo = 16, XEN_SYSCTL_numainfo = 17,
        XEN_SYSCTL_cpupool_op = 18, XEN_SYSCTL_scheduler_op = 19, XEN_SYSCTL_coverage_op = 20, XEN_SYSCTL_psr_cmt_op = 21,
        XEN_SYSCTL_pcitopoinfo = 22, XEN_SYSCTL_psr_alloc = 23, XEN_SYSCTL_get_cpu_levelling_caps = 25,
        XEN_SYSCTL_get_cpu_featureset = 26, XEN_SYSCTL_livepatch_op = 27, XEN_SYSCTL_get_cpu_policy = 29;

    /// <summary>xen_sysctl_physinfo.capabilities.</summary>
    public const uint XEN_SYSCTL_TBUFOP_get_info = 0, XEN_SYSCTL_TBUFOP_set_cpu_mask = 1, XEN_SYSCTL_TBUFOP_set_evt_mask = 2,
        XEN_SYSCTL_TBUFOP_set_size = 3, XEN_SYSCTL_TBUFOP_enable = 4, XEN_SYSCTL_TBUFOP_disable = 5;
    /// <summary>A PCI device the hypervisor does not know (XEN_INVALID_NODE_ID - 1).</summary>
    public const uint XEN_INVALID_DEV = uint.MaxValue - 1;
    public const uint XEN_SYSCTL_CPU_HOTPLUG_ONLINE = 0, XEN_SYSCTL_CPU_HOTPLUG_OFFLINE = 1,
        XEN_SYSCTL_CPU_HOTPLUG_SMT_ENABLE = 2, XEN_SYSCTL_CPU_HOTPLUG_SMT_DISABLE = 3;
    public const uint XEN_SYSCTL_PHYSCAP_hvm = 1 << 0, XEN_SYSCTL_PHYSCAP_pv = 1 << 1, XEN_SYSCTL_PHYSCAP_directio = 1 << 2,
        XEN_SYSCTL_PHYSCAP_hap = 1 << 3, XEN_SYSCTL_PHYSCAP_shadow = 1 << 4, XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 1 << 5,
        XEN_SYSCTL_PHYSCAP_vmtrace = 1 << 6, XEN_SYSCTL_PHYSCAP_vpmu = 1 << 7, XEN_SYSCTL_PHYSCAP_gnttab_v1 = 1 << 8,
        XEN_SYSCTL_PHYSCAP_gnttab_v2 = 1 << 9;

    /// <summary>xen_sysctl_cpu_featureset.index and xen_sysctl_cpu_policy.index.</summary>
    public const uint XEN_SYSCTL_cpu_featureset_raw = 0, XEN_SYSCTL_cpu_featureset_host = 1, XEN_SYSCTL_cpu_featureset_pv = 2,
        XEN_SYSCTL_cpu_featureset_hvm = 3, XEN_SYSCTL_cpu_featureset_pv_max = 4, XEN_SYSCTL_cpu_featureset_hvm_max = 5;
    public const uint XEN_SYSCTL_cpu_policy_raw = 0, XEN_SYSCTL_cpu_policy_host = 1, XEN_SYSCTL_cpu_policy_pv_max = 2,
        XEN_SYSCTL_cpu_policy_hvm_max = 3, XEN_SYSCTL_cpu_policy_pv_default = 4, XEN_SYSCTL_cpu_policy_hvm_default = 5;

    public const uint XEN_SYSCTL_CPUPOOL_OP_CREATE = 1, XEN_SYSCTL_CPUPOOL_OP_DESTROY = 2, XEN_SYSCTL_CPUPOOL_OP_INFO = 3,
        XEN_SYSCTL_CPUPOOL_OP_ADDCPU = 4, XEN_SYSCTL_CPUPOOL_OP_RMCPU = 5, XEN_SYSCTL_CPUPOOL_OP_MOVEDOMAIN = 6,
        XEN_SYSCTL_CPUPOOL_OP_FREEINFO = 7;
    public const uint XEN_SYSCTL_CPUPOOL_PAR_ANY = 0xFFFFFFFF;

    public const uint XEN_SYSCTL_SCHEDOP_putinfo = 0, XEN_SYSCTL_SCHEDOP_getinfo = 1;

    /// <summary>xen_sysctl_cputopo / xen_sysctl_meminfo "not present" values.</summary>
    public const uint XEN_INVALID_CORE_ID = ~0u, XEN_INVALID_SOCKET_ID = ~0u, XEN_INVALID_NODE_ID = ~0u;
    public const ulong XEN_INVALID_MEM_SZ = ~0ul;
    public const uint XEN_INVALID_NODE_DIST = ~0u;
}

/// <summary>struct xen_sysctl: the command, the interface version, and the 128-byte union of sub-operations.</summary>
[StructLayout(LayoutKind.Sequential, Size = 136)]
public unsafe struct XenSysctl
{
    public uint Cmd;
    public uint InterfaceVersion;
    public fixed byte U[128];

    /// <summary>The union as sub-operation <typeparamref name="T"/>.</summary>
    [UnscopedRef]
    public ref T As<T>() where T : unmanaged => ref Unsafe.As<byte, T>(ref U[0]);
}

/// <summary>struct xenctl_bitmap: a guest handle to a byte array of <see cref="NrBits"/> bits.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenctlBitmap
{
    public ulong Bitmap;
    public uint NrBits;
}

/// <summary>struct xen_sysctl_readconsole.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlReadconsole
{
    public byte Clear;
    public byte Incremental;
    public ushort Pad;
    public uint Index;
    public ulong Buffer;
    public uint Count;
}

/// <summary>struct xen_sysctl_physinfo.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenSysctlPhysinfo
{
    public uint ThreadsPerCore;
    public uint CoresPerSocket;
    public uint NrCpus;
    public uint MaxCpuId;
    public uint NrNodes;
    public uint MaxNodeId;
    public uint CpuKhz;
    public uint Capabilities;
    public uint ArchCapabilities;
    public uint Pad;
    public ulong TotalPages;
    public ulong FreePages;
    public ulong ScrubPages;
    public ulong OutstandingPages;
    public ulong MaxMfn;
    public fixed uint HwCap[8];
}

/// <summary>struct xen_sysctl_cpu_hotplug.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCpuHotplug
{
    public uint Cpu;
    public uint Op;
}

/// <summary>struct xen_sysctl_pcitopoinfo.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlPcitopoinfo
{
    public uint NumDevs;
    public ulong Devs;
    public ulong Nodes;
}

/// <summary>struct xen_sysctl_debug_keys.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlDebugKeys
{
    public ulong Keys;
    public uint NrKeys;
}

/// <summary>struct xen_sysctl_sched_id.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlSchedId
{
    public uint SchedId;
}

/// <summary>struct xen_sysctl_getdomaininfolist.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlGetdomaininfolist
{
    public ushort FirstDomain;
    public uint MaxDomains;
    /// <summary>Guest handle of an array of xen_domctl_getdomaininfo.</summary>
    public ulong Buffer;
    public uint NumDomains;
}

/// <summary>struct xen_sysctl_cpupool_op.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCpupoolOp
{
    public uint Op;
    public uint CpupoolId;
    public uint SchedId;
    public uint Domid;
    public uint Cpu;
    public uint NDom;
    public XenctlBitmap Cpumap;
}

/// <summary>struct xen_sysctl_credit_schedule.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCreditSchedule
{
    public uint TsliceMs;
    public uint RatelimitUs;
    public uint VcpuMigrDelayUs;
}

/// <summary>struct xen_sysctl_scheduler_op (its union: credit's three values, credit2's rate limit first, or
/// arinc653's schedule handle).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlSchedulerOp
{
    public uint CpupoolId;
    public uint SchedId;
    public uint Cmd;
    public uint Pad;
    public XenSysctlCreditSchedule Credit;
    public uint Pad2;
}

/// <summary>struct xen_sysctl_cputopoinfo: IN/OUT count and a handle to an array of xen_sysctl_cputopo.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCputopoinfo
{
    public uint NumCpus;
    public ulong Cputopo;
}

/// <summary>struct xen_sysctl_cputopo.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCputopo
{
    public uint Core;
    public uint Socket;
    public uint Node;
}

/// <summary>struct xen_sysctl_numainfo: IN/OUT node count, handles to xen_sysctl_meminfo[] and a distance matrix.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlNumainfo
{
    public uint NumNodes;
    public ulong Meminfo;
    public ulong Distance;
}

/// <summary>struct xen_sysctl_meminfo.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlMeminfo
{
    public ulong Memsize;
    public ulong Memfree;
}

/// <summary>struct xen_sysctl_cpu_featureset.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCpuFeatureset
{
    public uint Index;
    public uint NrFeatures;
    public ulong Features;
}

/// <summary>struct xen_sysctl_cpu_policy.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlCpuPolicy
{
    public uint Index;
    public uint NrLeaves;
    public uint NrMsrs;
    public uint Rsvd;
    public ulong Leaves;
    public ulong Msrs;
}
