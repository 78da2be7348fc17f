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

/// <summary>struct hvm_vmce_vcpu (HVM_SAVE_CODE(VMCE_VCPU)): a vCPU's MCG_CAP, its two banks' MCi_CTL2 and
/// MCG_EXT_CTL.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmVmceVcpu
{
    public ulong Caps, MciCtl2Bank0, MciCtl2Bank1, McgExtCtl;
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

/// <summary>struct hvm_hw_vpic (HVM_SAVE_CODE(PIC), instance 0 the master, 1 the slave). Byte 4 holds init_state in
/// bits 0-3 and priority_add in bits 4-7; byte 5 the flags readsel_isr, poll, auto_eoi, rotate_on_auto_eoi,
/// special_fully_nested_mode, special_mask_mode, is_master from bit 0 up.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct HvmHwVpic
{
    public byte Irr, Imr, Isr, IrqBase;
    public byte InitStatePriority;
    public byte Flags;
    public byte Elcr;
    public byte IntOutput;
}

/// <summary>struct hvm_hw_vioapic (HVM_SAVE_CODE(IOAPIC)) with VIOAPIC_NUM_PINS redirection entries.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct HvmHwVioapic
{
    public const int VIOAPIC_NUM_PINS = 48;
    public ulong BaseAddress;
    public uint Ioregsel;
    public uint Id;
    public fixed ulong Redirtbl[VIOAPIC_NUM_PINS];
}

/// <summary>struct hvm_hw_pci_irqs (HVM_SAVE_CODE(PCI_IRQ)): the INTx wires of bus 0, bit device*4 + INTx.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmHwPciIrqs
{
    public ulong Low, High;
}

/// <summary>struct hvm_hw_isa_irqs (HVM_SAVE_CODE(ISA_IRQ)): the ISA IRQ wires, bit per IRQ 0-15.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct HvmHwIsaIrqs
{
    public ulong Wires;
}

/// <summary>struct hvm_hw_pci_link (HVM_SAVE_CODE(PCI_LINK)): the ISA IRQ each of the four PCI links is routed to
/// (0: none), then four bytes of padding that must be zero.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public unsafe struct HvmHwPciLink
{
    public fixed byte Route[4];
    public fixed byte Pad0[4];
}

/// <summary>struct hvm_hw_pit_channel: one 16-byte channel of <see cref="HvmHwPit"/>.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct HvmHwPitChannel
{
    public uint Count;
    public ushort LatchedCount;
    public byte CountLatched, StatusLatched, Status, ReadState, WriteState, WriteLatch, RwMode, Mode, Bcd, Gate;
}

/// <summary>struct hvm_hw_pit (HVM_SAVE_CODE(PIT)).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct HvmHwPit
{
    public HvmHwPitChannel Channel0, Channel1, Channel2;
    public uint SpeakerDataOn;
    public uint Pad0;
}

/// <summary>struct hvm_hw_rtc (HVM_SAVE_CODE(RTC)): the clock's RTC_CMOS_SIZE registers, the index, and the
/// offset of its time from the host's.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct HvmHwRtc
{
    public const int RTC_CMOS_SIZE = 14;
    public fixed byte CmosData[RTC_CMOS_SIZE];
    public byte CmosIndex;
    public byte Pad0;
    public long RtcOffset;
}

/// <summary>struct hvm_hw_hpet (HVM_SAVE_CODE(HPET)): the 1 KiB register page as the guest sees it, then the hidden
/// period of each of its HPET_TIMER_NUM timers.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct HvmHwHpet
{
    public const int HPET_TIMER_NUM = 3;
    public ulong Capability, Res0, Config, Res1, Isr;
    public fixed ulong Res2[25];
    public ulong Mc64, Res3;
    /// <summary>Per timer: config, cmp, fsb, res4.</summary>
    public fixed ulong Timers[HPET_TIMER_NUM * 4];
    public fixed ulong Res5[4 * (24 - HPET_TIMER_NUM)];
    public fixed ulong Period[HPET_TIMER_NUM];
}

/// <summary>struct hvm_hw_pmtimer (HVM_SAVE_CODE(PMTIMER)).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct HvmHwPmtimer
{
    public uint TmrVal;
    public ushort Pm1aSts;
    public ushort Pm1aEn;
}
