using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/domctl.h of Xen 4.17 (XEN_DOMCTL_INTERFACE_VERSION 0x15): the per-domain operations of
/// the control domain's toolstack.</summary>
public static class Domctl
{
    public const uint XEN_DOMCTL_INTERFACE_VERSION = 0x00000015;

    public const uint XEN_DOMCTL_createdomain = 1, XEN_DOMCTL_destroydomain = 2, XEN_DOMCTL_pausedomain = 3,
        XEN_DOMCTL_unpausedomain = 4, XEN_DOMCTL_getdomaininfo = 5, XEN_DOMCTL_setvcpuaffinity = 9,
        XEN_DOMCTL_shadow_op = 10, XEN_DOMCTL_max_mem = 11, XEN_DOMCTL_setvcpucontext = 12,
        XEN_DOMCTL_getvcpucontext = 13, XEN_DOMCTL_getvcpuinfo = 14, XEN_DOMCTL_max_vcpus = 15,
        XEN_DOMCTL_scheduler_op = 16, XEN_DOMCTL_setdomainhandle = 17, XEN_DOMCTL_setdebugging = 18,
        XEN_DOMCTL_irq_permission = 19, XEN_DOMCTL_iomem_permission = 20, XEN_DOMCTL_ioport_permission = 21,
        XEN_DOMCTL_hypercall_init = 22, XEN_DOMCTL_settimeoffset = 24, XEN_DOMCTL_getvcpuaffinity = 25,
        XEN_DOMCTL_resumedomain = 27, XEN_DOMCTL_sendtrigger = 28, XEN_DOMCTL_get_address_size = 36,
        XEN_DOMCTL_set_target = 46, XEN_DOMCTL_getpageframeinfo3 = 61, XEN_DOMCTL_gettscinfo = 59,
        XEN_DOMCTL_settscinfo = 60, XEN_DOMCTL_get_vcpu_msrs = 72, XEN_DOMCTL_get_cpu_policy = 82,
        XEN_DOMCTL_gethvmcontext = 33, XEN_DOMCTL_sethvmcontext = 34, XEN_DOMCTL_set_cpu_policy = 83,
        XEN_DOMCTL_get_paging_mempool_size = 85, XEN_DOMCTL_set_paging_mempool_size = 86,
        XEN_DOMCTL_gethvmcontext_partial = 55,
        XEN_DOMCTL_soft_reset_cont = 23, XEN_DOMCTL_soft_reset = 79;

    /// <summary>xen_domctl_createdomain.flags (XEN_DOMCTL_CDF_*); bits above vpmu are refused.</summary>
    public const uint XEN_DOMCTL_CDF_hvm = 1 << 0, XEN_DOMCTL_CDF_hap = 1 << 1, XEN_DOMCTL_CDF_s3_integrity = 1 << 2,
        XEN_DOMCTL_CDF_oos_off = 1 << 3, XEN_DOMCTL_CDF_xs_domain = 1 << 4, XEN_DOMCTL_CDF_iommu = 1 << 5,
        XEN_DOMCTL_CDF_nested_virt = 1 << 6, XEN_DOMCTL_CDF_vpmu = 1 << 7;
    public const uint XEN_DOMCTL_GRANT_version_mask = 0xF;

    /// <summary>xen_arch_domainconfig.emulation_flags (XEN_X86_EMU_*).</summary>
    public const uint XEN_X86_EMU_LAPIC = 1 << 0, XEN_X86_EMU_HPET = 1 << 1, XEN_X86_EMU_PM = 1 << 2,
        XEN_X86_EMU_RTC = 1 << 3, XEN_X86_EMU_IOAPIC = 1 << 4, XEN_X86_EMU_PIC = 1 << 5, XEN_X86_EMU_VGA = 1 << 6,
        XEN_X86_EMU_IOMMU = 1 << 7, XEN_X86_EMU_PIT = 1 << 8, XEN_X86_EMU_USE_PIRQ = 1 << 9, XEN_X86_EMU_VPCI = 1 << 10;
    public const uint XEN_X86_EMU_ALL = (1 << 11) - 1;
    /// <summary>xen_arch_domainconfig.misc_flags: XEN_X86_MSR_RELAXED is the only one.</summary>
    public const uint XEN_X86_MSR_RELAXED = 1 << 0;

    /// <summary>xen_cpuid_leaf_t.subleaf of a leaf without subleaves.</summary>
    public const uint XEN_CPUID_NO_SUBLEAF = 0xFFFFFFFF;

    /// <summary>
    /// XEN_DOMCTL_setnodeaffinity/getnodeaffinity (struct xen_domctl_nodeaffinity: one xenctl_bitmap of nodes, bit n
    /// of byte n / 8). Setting every node means "derive it from the vCPUs' affinities" again.
    /// </summary>
    public const uint XEN_DOMCTL_setnodeaffinity = 68, XEN_DOMCTL_getnodeaffinity = 69;

    /// <summary>XEN_DOMCTL_sendtrigger's trigger values.</summary>
    public const uint XEN_DOMCTL_SENDTRIGGER_NMI = 0, XEN_DOMCTL_SENDTRIGGER_RESET = 1, XEN_DOMCTL_SENDTRIGGER_INIT = 2,
        XEN_DOMCTL_SENDTRIGGER_POWER = 3, XEN_DOMCTL_SENDTRIGGER_SLEEP = 4;

    /// <summary>xen_domctl_getdomaininfo.flags.</summary>
    public const uint XEN_DOMINF_dying = 1 << 0, XEN_DOMINF_hvm_guest = 1 << 1, XEN_DOMINF_shutdown = 1 << 2,
        XEN_DOMINF_paused = 1 << 3, XEN_DOMINF_blocked = 1 << 4, XEN_DOMINF_running = 1 << 5,
        XEN_DOMINF_debugged = 1 << 6, XEN_DOMINF_xs_domain = 1 << 7, XEN_DOMINF_hap = 1 << 8;
    public const int XEN_DOMINF_shutdownshift = 16;
    public const uint XEN_DOMINF_shutdownmask = 255;
    public const uint XEN_INVALID_MAX_VCPU_ID = ~0u;

    /// <summary>XEN_DOMCTL_shadow_op's op values (the log-dirty ones and the legacy enable aliases).</summary>
    public const uint XEN_DOMCTL_SHADOW_OP_OFF = 0, XEN_DOMCTL_SHADOW_OP_ENABLE = 32, XEN_DOMCTL_SHADOW_OP_CLEAN = 11,
        XEN_DOMCTL_SHADOW_OP_PEEK = 12, XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION = 30, XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION = 31,
        XEN_DOMCTL_SHADOW_OP_ENABLE_TEST = 1, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY = 2, XEN_DOMCTL_SHADOW_OP_ENABLE_TRANSLATE = 3;

    /// <summary>XEN_DOMCTL_SHADOW_OP_ENABLE's mode flags.</summary>
    public const uint XEN_DOMCTL_SHADOW_ENABLE_REFCOUNT = 1 << 1, XEN_DOMCTL_SHADOW_ENABLE_LOG_DIRTY = 1 << 2,
        XEN_DOMCTL_SHADOW_ENABLE_TRANSLATE = 1 << 3, XEN_DOMCTL_SHADOW_ENABLE_EXTERNAL = 1 << 4;

    public const uint XEN_VCPUAFFINITY_HARD = 1 << 0, XEN_VCPUAFFINITY_SOFT = 1 << 1, XEN_VCPUAFFINITY_FORCE = 1 << 2;

    /// <summary>XEN_SCHEDULER_*: the ids sched_id and scheduler_op name policies by.</summary>
    public const uint XEN_SCHEDULER_CREDIT = 5, XEN_SCHEDULER_CREDIT2 = 6, XEN_SCHEDULER_ARINC653 = 7,
        XEN_SCHEDULER_RTDS = 8, XEN_SCHEDULER_NULL = 9;

    public const uint XEN_DOMCTL_SCHEDOP_putinfo = 0, XEN_DOMCTL_SCHEDOP_getinfo = 1,
        XEN_DOMCTL_SCHEDOP_putvcpuinfo = 2, XEN_DOMCTL_SCHEDOP_getvcpuinfo = 3;

    /// <summary>The XEN_SCHEDULER_* id of a scheduler by the name xl and sched= use, or 0.</summary>
    public static uint SchedulerId(string name) => name switch
    {
        "credit" => XEN_SCHEDULER_CREDIT,
        "credit2" => XEN_SCHEDULER_CREDIT2,
        "arinc653" => XEN_SCHEDULER_ARINC653,
        "rtds" => XEN_SCHEDULER_RTDS,
        "null" => XEN_SCHEDULER_NULL,
        _ => 0,
    };
}

/// <summary>struct xen_domctl: the command, the interface version, the domain, and the 128-byte union.</summary>
[StructLayout(LayoutKind.Sequential, Size = 144)]
public unsafe struct XenDomctl
{
    public uint Cmd;
    public uint InterfaceVersion;
    public ushort Domain;
    public fixed ushort Pad[3];
    public fixed byte U[128];

    /// <summary>The union as sub-operation <typeparamref name="T"/>.</summary>
    [UnscopedRef]
    public ref T As<T>() where T : unmanaged => ref Unsafe.As<byte, T>(ref U[0]);
}

/// <summary>struct xen_domctl_shadow_op: op, mode, mb, the dirty bitmap's handle and size in pages (bits), and the
/// stats since the last CLEAN.</summary>
[StructLayout(LayoutKind.Sequential, Size = 40)]
public struct XenDomctlShadowOp
{
    public uint Op;
    public uint Mode;
    public uint Mb;
    public uint Pad;
    public ulong DirtyBitmap;
    public ulong Pages;
    public uint FaultCount;
    public uint DirtyCount;
}

/// <summary>struct xen_domctl_getdomaininfo (also the element of XEN_SYSCTL_getdomaininfolist).</summary>
[StructLayout(LayoutKind.Sequential, Size = 112)]
public unsafe struct XenDomctlGetdomaininfo
{
    public ushort Domain;
    public ushort Pad1;
    public uint Flags;
    public ulong TotPages;
    public ulong MaxPages;
    public ulong OutstandingPages;
    public ulong ShrPages;
    public ulong PagedPages;
    public ulong SharedInfoFrame;
    public ulong CpuTime;
    public uint NrOnlineVcpus;
    public uint MaxVcpuId;
    public uint Ssidref;
    /// <summary>xen_domain_handle_t: the domain's UUID, bytes in order.</summary>
    public fixed byte Handle[16];
    public uint Cpupool;
    public byte GpaddrBits;
    public fixed byte Pad2[7];
    /// <summary>struct xen_arch_domainconfig (x86): emulation_flags, misc_flags.</summary>
    public uint EmulationFlags;
    public uint MiscFlags;
}

/// <summary>struct xen_domctl_getvcpuinfo.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlGetvcpuinfo
{
    public uint Vcpu;
    public byte Online;
    public byte Blocked;
    public byte Running;
    public ulong CpuTime;
    public uint Cpu;
}

/// <summary>struct xen_domctl_vcpuaffinity.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlVcpuaffinity
{
    public uint Vcpu;
    public uint Flags;
    public XenctlBitmap CpumapHard;
    public XenctlBitmap CpumapSoft;
}

/// <summary>struct xen_domctl_nodeaffinity.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlNodeaffinity
{
    public XenctlBitmap Nodemap;
}

/// <summary>struct xen_domctl_scheduler_op with the credit/credit2 member of its union (weight, cap).</summary>
[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct XenDomctlSchedulerOp
{
    public uint SchedId;
    public uint Cmd;
    public ushort Weight;
    public ushort Cap;
}

/// <summary>struct xen_domctl_createdomain with the x86 xen_arch_domainconfig.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenDomctlCreatedomain
{
    public uint Ssidref;
    public fixed byte Handle[16];
    public uint Flags;
    public uint IommuOpts;
    public uint MaxVcpus;
    public uint MaxEvtchnPort;
    public int MaxGrantFrames;
    public int MaxMaptrackFrames;
    public uint GrantOpts;
    public uint VmtraceSize;
    public uint CpupoolId;
    public uint EmulationFlags;
    public uint MiscFlags;
}

/// <summary>struct xen_domctl_max_mem.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlMaxMem
{
    public ulong MaxMemKb;
}

/// <summary>struct xen_domctl_max_vcpus.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlMaxVcpus
{
    public uint Max;
}

/// <summary>struct xen_domctl_hvmcontext: a null buffer asks for the size.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlHvmcontext
{
    public uint Size;
    public ulong Buffer;
}

/// <summary>struct xen_domctl_address_size (XEN_DOMCTL_get_address_size / set_address_size).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlAddressSize
{
    public uint Size;
}

/// <summary>struct xen_domctl_vcpucontext (getvcpucontext/setvcpucontext): the vCPU and its vcpu_guest_context.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlVcpucontext
{
    public uint Vcpu;
    public ulong Ctxt;
}

/// <summary>struct xen_domctl_hvmcontext_partial: one record (type, instance) of the HVM context, without its
/// descriptor; a null buffer asks for its size.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlHvmcontextPartial
{
    public uint Type;
    public uint Instance;
    public ulong Bufsz;
    public ulong Buffer;
}

/// <summary>struct xen_domctl_getpageframeinfo3: <c>num</c> gfns in <c>array</c>, each replaced by its type.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlGetpageframeinfo3
{
    public ulong Num;
    public ulong Array;
}

/// <summary>struct xen_domctl_tsc_info.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlTscInfo
{
    public uint TscMode;
    public uint GtscKhz;
    public uint Incarnation;
    public uint Pad;
    public ulong ElapsedNsec;
}

/// <summary>struct xen_domctl_settimeoffset.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlSettimeoffset
{
    public long TimeOffsetSeconds;
}

/// <summary>struct xen_domctl_paging_mempool.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlPagingMempool
{
    public ulong Size;
}

/// <summary>struct xen_domctl_cpu_policy (get_cpu_policy/set_cpu_policy): serialised CPUID leaves and MSRs.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlCpuPolicy
{
    public uint NrLeaves;
    public uint NrMsrs;
    public ulong Leaves;
    public ulong Msrs;
    public uint ErrLeaf;
    public uint ErrSubleaf;
    public uint ErrMsr;
}

/// <summary>xen_cpuid_leaf_t.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenCpuidLeaf
{
    public uint Leaf;
    public uint Subleaf;
    public uint A, B, C, D;
}

/// <summary>xen_msr_entry_t.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMsrEntry
{
    public uint Idx;
    public uint Flags;
    public ulong Val;
}
