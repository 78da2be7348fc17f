using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/vm_event.h (VM_EVENT_INTERFACE_VERSION 7) and the introspection parts of domctl.h
/// and memory.h: the vm_event rings, their domctls (vm_event_op, monitor_op, set_access_required) and
/// XENMEM_access_op.</summary>
public static class VmEvent
{
    public const uint VM_EVENT_INTERFACE_VERSION = 0x00000007;

    public const uint VM_EVENT_FLAG_VCPU_PAUSED = 1 << 0, VM_EVENT_FLAG_FOREIGN = 1 << 1, VM_EVENT_FLAG_EMULATE = 1 << 2,
        VM_EVENT_FLAG_EMULATE_NOWRITE = 1 << 3, VM_EVENT_FLAG_TOGGLE_SINGLESTEP = 1 << 4,
        VM_EVENT_FLAG_SET_EMUL_READ_DATA = 1 << 5, VM_EVENT_FLAG_DENY = 1 << 6, VM_EVENT_FLAG_ALTERNATE_P2M = 1 << 7,
        VM_EVENT_FLAG_SET_REGISTERS = 1 << 8;

    public const uint VM_EVENT_REASON_UNKNOWN = 0, VM_EVENT_REASON_MEM_ACCESS = 1, VM_EVENT_REASON_MEM_SHARING = 2,
        VM_EVENT_REASON_MEM_PAGING = 3, VM_EVENT_REASON_WRITE_CTRLREG = 4, VM_EVENT_REASON_MOV_TO_MSR = 5,
        VM_EVENT_REASON_SOFTWARE_BREAKPOINT = 6, VM_EVENT_REASON_SINGLESTEP = 7, VM_EVENT_REASON_GUEST_REQUEST = 8,
        VM_EVENT_REASON_DEBUG_EXCEPTION = 9, VM_EVENT_REASON_CPUID = 10;

    /// <summary>vm_event_mem_access.flags.</summary>
    public const uint MEM_ACCESS_R = 1 << 0, MEM_ACCESS_W = 1 << 1, MEM_ACCESS_X = 1 << 2, MEM_ACCESS_RWX = 7,
        MEM_ACCESS_GLA_VALID = 1 << 3, MEM_ACCESS_FAULT_WITH_GLA = 1 << 4, MEM_ACCESS_FAULT_IN_GPT = 1 << 5;

    /// <summary>hvm.h's X86_EVENTTYPE_* (vm_event_debug.type, xen_dm_op_inject_event.type).</summary>
    public const byte X86_EVENTTYPE_EXT_INTR = 0, X86_EVENTTYPE_NMI = 2, X86_EVENTTYPE_HW_EXCEPTION = 3,
        X86_EVENTTYPE_SW_INTERRUPT = 4, X86_EVENTTYPE_PRI_SW_EXCEPTION = 5, X86_EVENTTYPE_SW_EXCEPTION = 6;

    // ---- domctl.h ----
    public const uint XEN_DOMCTL_debug_op = 54, XEN_DOMCTL_vm_event_op = 56, XEN_DOMCTL_set_access_required = 64,
        XEN_DOMCTL_monitor_op = 77;

    public const uint XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_OFF = 0, XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_ON = 1;

    public const uint XEN_VM_EVENT_ENABLE = 0, XEN_VM_EVENT_DISABLE = 1, XEN_VM_EVENT_RESUME = 2, XEN_VM_EVENT_GET_VERSION = 3;
    public const uint XEN_DOMCTL_VM_EVENT_OP_PAGING = 1, XEN_DOMCTL_VM_EVENT_OP_MONITOR = 2, XEN_DOMCTL_VM_EVENT_OP_SHARING = 3;

    public const uint XEN_DOMCTL_MONITOR_OP_ENABLE = 0, XEN_DOMCTL_MONITOR_OP_DISABLE = 1,
        XEN_DOMCTL_MONITOR_OP_GET_CAPABILITIES = 2, XEN_DOMCTL_MONITOR_OP_EMULATE_EACH_REP = 3,
        XEN_DOMCTL_MONITOR_OP_CONTROL_REGISTERS = 4;
    public const uint XEN_DOMCTL_MONITOR_EVENT_WRITE_CTRLREG = 0, XEN_DOMCTL_MONITOR_EVENT_MOV_TO_MSR = 1,
        XEN_DOMCTL_MONITOR_EVENT_SINGLESTEP = 2, XEN_DOMCTL_MONITOR_EVENT_SOFTWARE_BREAKPOINT = 3,
        XEN_DOMCTL_MONITOR_EVENT_GUEST_REQUEST = 4, XEN_DOMCTL_MONITOR_EVENT_DEBUG_EXCEPTION = 5,
        XEN_DOMCTL_MONITOR_EVENT_CPUID = 6;

    // ---- memory.h ----
    public const int XENMEM_access_op = 21;
    public const byte XENMEM_access_op_set_access = 0, XENMEM_access_op_get_access = 1, XENMEM_access_op_set_access_multi = 4;
    /// <summary>xenmem_access_t: n, r, w, rw, x, rx, wx, rwx as the bits R=1 W=2 X=4, then rx2rw, n2rwx, default.</summary>
    public const byte XENMEM_access_n = 0, XENMEM_access_r = 1, XENMEM_access_w = 2, XENMEM_access_rw = 3, XENMEM_access_x = 4,
        XENMEM_access_rx = 5, XENMEM_access_wx = 6, XENMEM_access_rwx = 7, XENMEM_access_rx2rw = 8, XENMEM_access_n2rwx = 9,
        XENMEM_access_default = 10;
}

/// <summary>struct xen_domctl_vm_event_op: op, mode, and the port ENABLE answers (or the version).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlVmEventOp
{
    public uint Op;
    public uint Mode;
    public uint Port;
}

/// <summary>struct xen_domctl_monitor_op: op, event, and the ENABLE options (mov_to_cr's are the largest).</summary>
[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct XenDomctlMonitorOp
{
    public uint Op;
    public uint Event;
    public byte Index;
    public byte Sync;
    public byte OnChangeOnly;
    public byte Pad1;
    public uint Pad2;
    public ulong Bitmask;
}

/// <summary>struct xen_domctl_debug_op.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenDomctlDebugOp
{
    public uint Op;
    public uint Vcpu;
}

/// <summary>struct xen_mem_access_op.</summary>
[StructLayout(LayoutKind.Sequential, Size = 32)]
public struct XenMemAccessOp
{
    public byte Op;
    public byte Access;
    public ushort Domid;
    public uint Nr;
    public ulong Pfn;
    public ulong PfnList;
    public ulong AccessList;
}

/// <summary>struct vm_event_regs_x86.</summary>
[StructLayout(LayoutKind.Sequential, Size = 344)]
public struct VmEventRegsX86
{
    public ulong Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rflags, Dr6, Dr7, Rip, Cr0, Cr2, Cr3, Cr4;
    public ulong SysenterCs, SysenterEsp, SysenterEip, MsrEfer, MsrStar, MsrLstar, GdtrBase, NptBase, VmtracePos;
    public uint CsBase, SsBase, DsBase, EsBase;
    public ulong FsBase, GsBase;
    /// <summary>vm_event_x86_selector_reg: limit in bits 0-19, access rights in 20-31.</summary>
    public uint Cs, Ss, Ds, Es, Fs, Gs;
    public ulong ShadowGs;
    public ushort GdtrLimit, CsSel, SsSel, DsSel, EsSel, FsSel, GsSel, Pad;
}

/// <summary>struct vm_event_mem_access.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VmEventMemAccess
{
    public ulong Gfn;
    public ulong Offset;
    public ulong Gla;
    public uint Flags;
    public uint Pad;
}

/// <summary>struct vm_event_debug (software_breakpoint, debug_exception).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VmEventDebug
{
    public ulong Gfn;
    public ulong PendingDbg;
    public uint InsnLength;
    public byte Type;
    public byte Pad0, Pad1, Pad2;
}

/// <summary>vm_event_request_t / vm_event_response_t: the header, the 32-byte reason union <c>u</c> and the 344-byte
/// <c>data</c> union (the x86 registers).</summary>
[StructLayout(LayoutKind.Explicit, Size = 400)]
public struct VmEventSt
{
    public const int OffsetU = 24, OffsetData = 56;

    [FieldOffset(0)] public uint Version;
    [FieldOffset(4)] public uint Flags;
    [FieldOffset(8)] public uint Reason;
    [FieldOffset(12)] public uint VcpuId;
    [FieldOffset(16)] public ushort Altp2mIdx;
    [FieldOffset(OffsetU)] public VmEventMemAccess MemAccess;
    [FieldOffset(OffsetU)] public VmEventDebug SoftwareBreakpoint;
    [FieldOffset(OffsetU)] public VmEventPaging MemPaging;
    /// <summary>vm_event_singlestep.gfn.</summary>
    [FieldOffset(OffsetU)] public ulong SinglestepGfn;
    [FieldOffset(OffsetData)] public VmEventRegsX86 Regs;
}
