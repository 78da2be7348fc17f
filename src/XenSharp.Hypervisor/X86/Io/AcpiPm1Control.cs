using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// The ACPI PM1a control register the toolstack's FADT points at: writing SLP_EN with the SLP_TYP of the DSDT's \_S5
/// powers the domain off. Other sleep states are not offered. Reads return all ones, as they always have here:
/// SCI_EN then reads as set, so the guest sees ACPI mode already on and never tries the SMI command port.
/// </summary>
internal sealed class AcpiPm1Control : IIoHandler
{
    /// <summary>PM1_CNT_LEN: the register is 16 bits wide.</summary>
    public const int Length = 2;
    private const int SlpTypShift = 10, SlpTypMask = 7, SlpEn = 1 << 13;

    public ushort Port { get; set; } = 0xB004;
    public int S5SleepType { get; set; } = 7;

    public ulong Read(Vcpu v, ulong offset, int size) => HvmIo.AllOnes(size);

    public void Write(Vcpu v, ulong offset, int size, ulong value)
    {
        if (offset != 0 || size < Length)
            return;
        bool sleepEnable = (value & SlpEn) != 0;
        int sleepType = (int)(value >> SlpTypShift) & SlpTypMask;
        if (sleepEnable && sleepType == S5SleepType)
            v.Domain.Host.ShutdownDomain(v.Domain, XenSharp.Public.Sched.SHUTDOWN_poweroff);
    }
}
