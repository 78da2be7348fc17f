using System.Runtime.InteropServices;

namespace XenSharp.Public;

using XenSharp.Public.ArchX86;

/// <summary>xen/include/public/xen.h: hypercall numbers, VIRQs, domain ids, VM assists, console_io.</summary>
public static class Xen
{
    public const int __HYPERVISOR_set_trap_table = 0, __HYPERVISOR_mmu_update = 1, __HYPERVISOR_set_gdt = 2,
        __HYPERVISOR_stack_switch = 3, __HYPERVISOR_set_callbacks = 4, __HYPERVISOR_fpu_taskswitch = 5,
        __HYPERVISOR_sched_op_compat = 6, __HYPERVISOR_platform_op = 7, __HYPERVISOR_set_debugreg = 8,
        __HYPERVISOR_get_debugreg = 9, __HYPERVISOR_update_descriptor = 10, __HYPERVISOR_memory_op = 12,
        __HYPERVISOR_multicall = 13, __HYPERVISOR_update_va_mapping = 14, __HYPERVISOR_set_timer_op = 15,
        __HYPERVISOR_event_channel_op_compat = 16, __HYPERVISOR_xen_version = 17, __HYPERVISOR_console_io = 18,
        __HYPERVISOR_physdev_op_compat = 19, __HYPERVISOR_grant_table_op = 20, __HYPERVISOR_vm_assist = 21,
        __HYPERVISOR_update_va_mapping_otherdomain = 22, __HYPERVISOR_iret = 23, __HYPERVISOR_vcpu_op = 24,
        __HYPERVISOR_set_segment_base = 25, __HYPERVISOR_mmuext_op = 26, __HYPERVISOR_xsm_op = 27,
        __HYPERVISOR_nmi_op = 28, __HYPERVISOR_sched_op = 29, __HYPERVISOR_callback_op = 30,
        __HYPERVISOR_xenoprof_op = 31, __HYPERVISOR_event_channel_op = 32, __HYPERVISOR_physdev_op = 33,
        __HYPERVISOR_hvm_op = 34, __HYPERVISOR_sysctl = 35, __HYPERVISOR_domctl = 36, __HYPERVISOR_kexec_op = 37,
        __HYPERVISOR_tmem_op = 38, __HYPERVISOR_argo_op = 39, __HYPERVISOR_xenpmu_op = 40, __HYPERVISOR_dm_op = 41,
        __HYPERVISOR_hypfs_op = 42, __HYPERVISOR_arch_0 = 48, __HYPERVISOR_arch_7 = 55;

    public const int VIRQ_TIMER = 0, VIRQ_DEBUG = 1, VIRQ_CONSOLE = 2, VIRQ_DOM_EXC = 3, VIRQ_TBUF = 4,
        VIRQ_DEBUGGER = 6, VIRQ_XENOPROF = 7, VIRQ_CON_RING = 8, VIRQ_PCPU_STATE = 9, VIRQ_MEM_EVENT = 10,
        VIRQ_ARGO = 11, VIRQ_ENOMEM = 12, VIRQ_XENPMU = 13, VIRQ_ARCH_0 = 16, VIRQ_ARCH_7 = 23, NR_VIRQS = 24;

    public const int CONSOLEIO_write = 0, CONSOLEIO_read = 1;

    public const int VMASST_CMD_enable = 0, VMASST_CMD_disable = 1;
    public const int VMASST_TYPE_4gb_segments = 0, VMASST_TYPE_4gb_segments_notify = 1,
        VMASST_TYPE_writable_pagetables = 2, VMASST_TYPE_pae_extended_cr3 = 3, VMASST_TYPE_architectural_iopl = 4,
        VMASST_TYPE_runstate_update_flag = 5, VMASST_TYPE_m2p_strict = 32;

    public const ushort DOMID_FIRST_RESERVED = 0x7FF0, DOMID_SELF = 0x7FF0, DOMID_IO = 0x7FF1, DOMID_XEN = 0x7FF2,
        DOMID_COW = 0x7FF3, DOMID_INVALID = 0x7FF4, DOMID_IDLE = 0x7FFF, DOMID_MASK = 0x7FFF;

    public const int MAX_GUEST_CMDLINE = 1024;
    public const uint SIF_PRIVILEGED = 1 << 0, SIF_INITDOMAIN = 1 << 1, SIF_MULTIBOOT_MOD = 1 << 2,
        SIF_MOD_START_PFN = 1 << 3, SIF_VIRT_P2M_4TOOLS = 1 << 4;

    /// <summary>XEN_LEGACY_MAX_VCPUS on x86: vcpu_info slots inside shared_info.</summary>
    public const int XEN_LEGACY_MAX_VCPUS = 32;
    public const int PAGE_SHIFT = 12, PAGE_SIZE = 4096;

    /// <summary>vcpu_time_info.flags bits (XEN_PVCLOCK_*).</summary>
    public const byte XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0, XEN_PVCLOCK_GUEST_STOPPED = 1 << 1;
}

/// <summary>struct vcpu_time_info (32 bytes): system time = system_time + ((tsc - tsc_timestamp) scaled by mul/shift).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VcpuTimeInfo
{
    public uint Version;
    public uint Pad0;
    public ulong TscTimestamp;
    public ulong SystemTime;
    public uint TscToSystemMul;
    public sbyte TscShift;
    public byte Flags;
    public ushort Pad1;
}

/// <summary>struct vcpu_info (64 bytes on x86).</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
public struct VcpuInfo
{
    public const int OffsetUpcallPending = 0, OffsetUpcallMask = 1, OffsetPendingSel = 8, OffsetTime = 32;
    [FieldOffset(0)] public byte EvtchnUpcallPending;
    [FieldOffset(1)] public byte EvtchnUpcallMask;
    [FieldOffset(8)] public ulong EvtchnPendingSel;
    [FieldOffset(16)] public ArchVcpuInfo Arch;
    [FieldOffset(32)] public VcpuTimeInfo Time;
}

/// <summary>struct shared_info on x86_64 (3136 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 0xC40)]
public unsafe struct SharedInfo
{
    public const int OffsetEvtchnPending = 0x800, OffsetEvtchnMask = 0xA00, OffsetWcVersion = 0xC00,
        OffsetWcSec = 0xC04, OffsetWcNsec = 0xC08, OffsetWcSecHi = 0xC0C, OffsetArch = 0xC10;
    [FieldOffset(0)] public fixed byte VcpuInfo[64 * Xen.XEN_LEGACY_MAX_VCPUS];
    [FieldOffset(0x800)] public fixed ulong EvtchnPending[64];
    [FieldOffset(0xA00)] public fixed ulong EvtchnMask[64];
    [FieldOffset(0xC00)] public uint WcVersion;
    [FieldOffset(0xC04)] public uint WcSec;
    [FieldOffset(0xC08)] public uint WcNsec;
    [FieldOffset(0xC0C)] public uint WcSecHi;
    [FieldOffset(0xC10)] public ArchSharedInfo Arch;
}

/// <summary>struct multicall_entry (64 bytes on x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct MulticallEntry
{
    public ulong Op;
    public ulong Result;
    public fixed ulong Args[6];
}
