using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/save.h and arch-x86/hvm/save.h: the records of an HVM context
/// (XEN_DOMCTL_gethvmcontext/sethvmcontext), each a <see cref="HvmSaveDescriptor"/> followed by its data.</summary>
public static class HvmSave
{
    public const uint HVM_FILE_MAGIC = 0x54381286, HVM_FILE_VERSION = 1;

    // Type codes (DECLARE_HVM_SAVE_TYPE).
    public const ushort END = 0, HEADER = 1, CPU = 2, PIC = 3, IOAPIC = 4, LAPIC = 5, LAPIC_REGS = 6, PCI_IRQ = 7,
        ISA_IRQ = 8, PCI_LINK = 9, PIT = 10, RTC = 11, HPET = 12, PMTIMER = 13, MTRR = 14, VIRIDIAN_DOMAIN = 15,
        VIRIDIAN_VCPU = 17, VMCE_VCPU = 18, TSC_ADJUST = 19, CPU_XSAVE = 16, CPU_MSR = 20;

    public const uint XEN_X86_FPU_INITIALISED = 1;
    /// <summary>hvm_hw_lapic.disabled bits (Xen's VLAPIC_SW_DISABLED / VLAPIC_HW_DISABLED).</summary>
    public const uint VLAPIC_SW_DISABLED = 1, VLAPIC_HW_DISABLED = 2;
}

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct HvmSaveDescriptor
{
    public ushort Typecode;
    public ushort Instance;
    /// <summary>In bytes, not counting the descriptor.</summary>
    public uint Length;
}

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmSaveHeader
{
    public uint Magic;
    public uint Version;
    public ulong Changeset;
    public uint Cpuid;
    public uint GtscKhz;
}

/// <summary>struct hvm_hw_cpu: one vCPU's registers as Xen saves them.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct HvmHwCpu
{
    public fixed byte FpuRegs[512];
    public ulong Rax, Rbx, Rcx, Rdx, Rbp, Rsi, Rdi, Rsp, R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
    public ulong Cr0, Cr2, Cr3, Cr4;
    public ulong Dr0, Dr1, Dr2, Dr3, Dr6, Dr7;
    public uint CsSel, DsSel, EsSel, FsSel, GsSel, SsSel, TrSel, LdtrSel;
    public uint CsLimit, DsLimit, EsLimit, FsLimit, GsLimit, SsLimit, TrLimit, LdtrLimit, IdtrLimit, GdtrLimit;
    public ulong CsBase, DsBase, EsBase, FsBase, GsBase, SsBase, TrBase, LdtrBase, IdtrBase, GdtrBase;
    public uint CsArbytes, DsArbytes, EsArbytes, FsArbytes, GsArbytes, SsArbytes, TrArbytes, LdtrArbytes;
    public ulong SysenterCs, SysenterEsp, SysenterEip;
    public ulong ShadowGs;
    public ulong MsrFlags, MsrLstar, MsrStar, MsrCstar, MsrSyscallMask, MsrEfer, MsrTscAux;
    public ulong Tsc;
    public uint PendingEvent;
    public uint ErrorCode;
    public uint Flags;
    public uint Pad0;
}

/// <summary>struct hvm_hw_lapic.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmHwLapic
{
    public ulong ApicBaseMsr;
    public uint Disabled;
    public uint TimerDivisor;
    public ulong TdtMsr;
}

/// <summary>struct hvm_hw_mtrr (MTRR_VCNT = 8 variable ranges, NUM_FIXED_MSR = 11).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct HvmHwMtrr
{
    public const int MTRR_VCNT = 8, NUM_FIXED_MSR = 11;
    public ulong MsrPatCr;
    public fixed ulong MsrMtrrVar[MTRR_VCNT * 2];
    public fixed ulong MsrMtrrFixed[NUM_FIXED_MSR];
    public ulong MsrMtrrCap;
    public ulong MsrMtrrDefType;
}
