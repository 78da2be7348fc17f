using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.Params;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The PC platform Xen itself emulates for an HVM domain (its emulation_flags): the dual 8259 and the I/O APIC wired
/// by <see cref="PlatformIrq"/>, the 8254 PIT, the MC146818 RTC, the HPET (while HVM_PARAM_HPET_ENABLED is set) and
/// the ACPI PM timer, each a device on the domain's port or MMIO bus that interrupts only through its GSI lines.
/// A PVH domain has none of them, as in Xen.
/// </summary>
internal sealed class HvmPlatform
{
    private readonly HvmDomain _hvm;
    private bool _hpetMapped;

    public HvmPlatform(Domain domain, HvmDomain hvm)
    {
        _hvm = hvm;
        Irq = new PlatformIrq(domain, hvm.Irq);
        hvm.Irq.Controller = Irq;
        Irq.Vpic.Register(hvm.PortIo);
        hvm.Mmio.Register(Vioapic.DefaultBase, Vioapic.Length, Irq.Vioapic);
        Pit = new Pit(domain, hvm.Irq);
        Pit.Register(hvm.PortIo);
        Rtc = new Rtc(domain, hvm.Irq);
        hvm.PortIo.Register(Rtc.Port, 2, Rtc);
        PmTimer = new PmTimer(domain, hvm.Irq);
        PmTimer.Register(hvm.PortIo);
        Hpet = new Hpet(domain, hvm.Irq, Pit, Rtc);
        DelayPorts.Register(hvm.PortIo);
    }

    public PlatformIrq Irq { get; }
    public Vpic Pic => Irq.Vpic;
    public Vioapic Ioapic => Irq.Vioapic;
    public Pit Pit { get; }
    public Rtc Rtc { get; }
    public PmTimer PmTimer { get; }
    public Hpet Hpet { get; }

    /// <summary>A parameter the platform follows was set (xl.cfg hpet: HVM_PARAM_HPET_ENABLED maps or unmaps the
    /// HPET's registers; timer_mode is read by each tick).</summary>
    public void ParamChanged(int index, ulong value)
    {
        if (index != HVM_PARAM_HPET_ENABLED)
            return;
        lock (this)
        {
            bool want = value != 0;
            if (want == _hpetMapped)
                return;
            if (want)
                _hpetMapped = _hvm.Mmio.TryRegister(Hpet.Base, Hpet.Length, Hpet);
            else
            {
                _hvm.Mmio.Unregister(Hpet.Base, Hpet);
                _hpetMapped = false;
            }
        }
    }

    // ---------------- save/restore: Xen's PIC, IOAPIC, PCI_IRQ, ISA_IRQ, PCI_LINK, PIT, RTC, HPET and PMTIMER records ----------------

    /// <summary>The interrupt wiring's records load before the controllers': setting a wire moves the 8259s' and the
    /// IOAPIC's inputs, and their own records then put back what they had latched from them.</summary>
    public static bool LoadsFirst(ushort type) => type is HvmSave.PCI_IRQ or HvmSave.ISA_IRQ or HvmSave.PCI_LINK;

    /// <summary>Appends the platform's records, each through <paramref name="append"/> (type, instance, bytes).</summary>
    public void Save(Action<ushort, ushort, byte[]> append)
    {
        append(HvmSave.PIC, 0, Bytes(Pic.Save(0)));
        append(HvmSave.PIC, 1, Bytes(Pic.Save(1)));
        append(HvmSave.IOAPIC, 0, Bytes(Ioapic.Save()));
        append(HvmSave.PCI_IRQ, 0, Bytes(Irq.SavePciIrqs()));
        append(HvmSave.ISA_IRQ, 0, Bytes(Irq.SaveIsaIrqs()));
        append(HvmSave.PCI_LINK, 0, Bytes(Irq.SaveLink()));
        append(HvmSave.PIT, 0, Bytes(Pit.Save()));
        append(HvmSave.RTC, 0, Bytes(Rtc.Save()));
        if (_hpetMapped)
            append(HvmSave.HPET, 0, Bytes(Hpet.Save()));
        append(HvmSave.PMTIMER, 0, Bytes(PmTimer.Save()));
    }

    /// <summary>Takes one saved record; false when it is not a platform record or its size is wrong.</summary>
    public bool TryLoad(ushort type, ushort instance, ReadOnlySpan<byte> body)
    {
        switch (type)
        {
            case HvmSave.PIC when instance < 2 && Is<HvmHwVpic>(body): Pic.Load(instance, Read<HvmHwVpic>(body)); return true;
            case HvmSave.IOAPIC when instance == 0 && Is<HvmHwVioapic>(body): Ioapic.Load(Read<HvmHwVioapic>(body)); return true;
            case HvmSave.PCI_IRQ when instance == 0 && Is<HvmHwPciIrqs>(body): Irq.LoadPciIrqs(Read<HvmHwPciIrqs>(body)); return true;
            case HvmSave.ISA_IRQ when instance == 0 && Is<HvmHwIsaIrqs>(body): Irq.LoadIsaIrqs(Read<HvmHwIsaIrqs>(body)); return true;
            case HvmSave.PCI_LINK when instance == 0 && Is<HvmHwPciLink>(body) && PlatformIrq.IsValidLink(Read<HvmHwPciLink>(body)):
                Irq.LoadLink(Read<HvmHwPciLink>(body));
                return true;
            case HvmSave.PIT when Is<HvmHwPit>(body): Pit.Load(Read<HvmHwPit>(body)); return true;
            case HvmSave.RTC when Is<HvmHwRtc>(body): Rtc.Load(Read<HvmHwRtc>(body)); return true;
            case HvmSave.HPET when Is<HvmHwHpet>(body):
                _hvm.Params[HVM_PARAM_HPET_ENABLED] = 1;
                ParamChanged(HVM_PARAM_HPET_ENABLED, 1);
                Hpet.Load(Read<HvmHwHpet>(body));
                return true;
            case HvmSave.PMTIMER when Is<HvmHwPmtimer>(body): PmTimer.Load(Read<HvmHwPmtimer>(body)); return true;
            default: return false;
        }
    }

    /// <summary>The record has the size of its type and an instance the platform has.</summary>
    public static bool IsValidRecord(ushort type, ushort instance, ReadOnlySpan<byte> body) => type switch
    {
        HvmSave.PIC => instance < 2 && Is<HvmHwVpic>(body),
        HvmSave.IOAPIC => instance == 0 && Is<HvmHwVioapic>(body),
        HvmSave.PCI_IRQ => instance == 0 && Is<HvmHwPciIrqs>(body),
        HvmSave.ISA_IRQ => instance == 0 && Is<HvmHwIsaIrqs>(body),
        HvmSave.PCI_LINK => instance == 0 && Is<HvmHwPciLink>(body) && PlatformIrq.IsValidLink(Read<HvmHwPciLink>(body)),
        HvmSave.PIT => instance == 0 && Is<HvmHwPit>(body),
        HvmSave.RTC => instance == 0 && Is<HvmHwRtc>(body),
        HvmSave.HPET => instance == 0 && Is<HvmHwHpet>(body),
        HvmSave.PMTIMER => instance == 0 && Is<HvmHwPmtimer>(body),
        _ => false,
    };

    public static bool IsPlatformRecord(ushort type) =>
        type is HvmSave.PIC or HvmSave.IOAPIC or HvmSave.PCI_IRQ or HvmSave.ISA_IRQ or HvmSave.PCI_LINK or HvmSave.PIT or HvmSave.RTC or HvmSave.HPET or HvmSave.PMTIMER;

    private static unsafe bool Is<T>(ReadOnlySpan<byte> body) where T : unmanaged => body.Length == sizeof(T);
    private static T Read<T>(ReadOnlySpan<byte> body) where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.Read<T>(body);
    private static byte[] Bytes<T>(T value) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();
}
