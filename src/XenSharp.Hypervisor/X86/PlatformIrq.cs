using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The interrupt wiring of an HVM domain's emulated PC (Xen's hvm/irq.c around its vIOAPIC and vPIC): every GSI
/// drives its vIOAPIC pin; GSIs 0-15 are the ISA IRQs and drive the 8259s too, ISA IRQ 0 (the timer) arriving on
/// GSI 2 as Xen's hvm_isa_irq_to_gsi has it. PCI INTx lines are wired to GSIs 16-47 by device and pin, and through
/// the four PCI interrupt links (set_pci_link_route) to an ISA IRQ of the 8259s. These are the targets of
/// HVMOP/XEN_DMOP set_isa_irq_level, set_pci_intx_level and set_pci_link_route.
/// </summary>
internal sealed class PlatformIrq : IInterruptController
{
    public const int NrIsaIrqs = 16, NrPciDevices = 32, NrLinks = 4;

    private readonly IrqRouter _router;
    private readonly object _lock = new();
    private readonly IrqLine?[] _isaLines = new IrqLine?[NrIsaIrqs];
    private readonly IrqLine?[] _pciIntx = new IrqLine?[NrPciDevices * 4];
    private readonly int[] _linkAssertCount = new int[NrLinks];
    private readonly byte[] _linkRoute = new byte[NrLinks];

    public PlatformIrq(Domain domain, IrqRouter router)
    {
        _router = router;
        Vpic = new Vpic(domain);
        Vioapic = new Vioapic(domain);
    }

    public Vpic Vpic { get; }
    public Vioapic Vioapic { get; }

    /// <summary>The GSI an ISA IRQ arrives on at the IOAPIC (Xen's hvm_isa_irq_to_gsi).</summary>
    public static uint IsaIrqToGsi(int isaIrq) => isaIrq == 0 ? 2u : (uint)isaIrq;

    /// <summary>The GSI of PCI device <paramref name="device"/>'s INTx pin (Xen's hvm_pci_intx_gsi, matching the
    /// _PRT of hvmloader's DSDT).</summary>
    public static uint PciIntxGsi(int device, int intx) => (uint)((((device << 2) + (device >> 3) + intx) & 31) + 16);

    /// <summary>The PCI interrupt link a device's INTx pin is wired to (Xen's hvm_pci_intx_link).</summary>
    public static int PciIntxLink(int device, int intx) => (device + intx) & 3;

    public void SetIrqLevel(uint gsi, bool level)
    {
        Vioapic.SetIrqLevel(gsi, level);
        if (gsi < NrIsaIrqs && gsi != 0)
            UpdatePicInput(gsi == 2 ? 0 : (int)gsi);
    }

    public void EndOfInterrupt(Vcpu v, byte vector) => Vioapic.EndOfInterrupt(v, vector);

    /// <summary>An 8259 input is the OR of its ISA IRQ's GSI and the PCI links routed to it.</summary>
    private void UpdatePicInput(int isaIrq)
    {
        bool level;
        lock (_lock)
        {
            level = _router.Level(IsaIrqToGsi(isaIrq));
            for (int l = 0; l < NrLinks; l++)
                if (_linkRoute[l] == isaIrq && _linkAssertCount[l] > 0)
                    level = true;
            Vpic.SetIrqLevel(isaIrq, level);
        }
    }

    /// <summary>XEN_DMOP_set_isa_irq_level: the device model's own source on an ISA IRQ.</summary>
    public int SetIsaIrqLevel(uint isaIrq, bool level)
    {
        if (isaIrq >= NrIsaIrqs)
            return -Errno.EINVAL;
        IrqLine line;
        lock (_lock)
            line = _isaLines[isaIrq] ??= _router.Line(IsaIrqToGsi((int)isaIrq));
        line.Set(level);
        return 0;
    }

    /// <summary>XEN_DMOP_set_pci_intx_level: PCI device <paramref name="device"/> (bus 0) raises or lowers INTx.</summary>
    public int SetPciIntxLevel(uint domain, uint bus, uint device, uint intx, bool level)
    {
        if (domain != 0 || bus != 0 || device >= NrPciDevices || intx > 3)
            return -Errno.EINVAL;
        IrqLine line;
        lock (_lock)
            line = _pciIntx[device * 4 + intx] ??= _router.Line(PciIntxGsi((int)device, (int)intx));
        if (line.Level == level)
            return 0;
        int link = PciIntxLink((int)device, (int)intx);
        int routed;
        lock (_lock)
        {
            _linkAssertCount[link] += level ? 1 : -1;
            routed = _linkRoute[link];
        }
        line.Set(level);
        if (routed != 0)
            UpdatePicInput(routed);
        return 0;
    }

    /// <summary>XEN_DMOP_set_pci_link_route: link <paramref name="link"/> to ISA IRQ <paramref name="isaIrq"/>
    /// (0: none). An asserted link moves its level with it.</summary>
    public int SetPciLinkRoute(uint link, uint isaIrq)
    {
        if (link >= NrLinks || isaIrq >= NrIsaIrqs)
            return -Errno.EINVAL;
        int old;
        lock (_lock)
        {
            old = _linkRoute[link];
            _linkRoute[link] = (byte)isaIrq;
        }
        if (old != 0)
            UpdatePicInput(old);
        if (isaIrq != 0)
            UpdatePicInput((int)isaIrq);
        return 0;
    }

    /// <summary>The line of PCI device <paramref name="device"/>'s INTx pin, for HVM_PARAM_CALLBACK_IRQ of the PCI
    /// INTx type (the platform device's interrupt).</summary>
    public void SetCallbackIntx(int device, int intx, bool level) => SetPciIntxLevel(0, 0, (uint)device, (uint)intx, level);

    public byte LinkRoute(int link) { lock (_lock) return _linkRoute[link]; }

    // ---------------- save/restore: Xen's PCI_IRQ, ISA_IRQ and PCI_LINK records ----------------
    // The wires the device model drives (set_pci_intx_level, set_isa_irq_level) and the link routes. The event
    // callback's INTx is not among them: it follows vCPU 0's upcall flag and is raised again by the restored domain,
    // as Xen leaves it out of PCI_IRQ.

    public HvmHwPciIrqs SavePciIrqs()
    {
        var r = new HvmHwPciIrqs();
        lock (_lock)
            for (int i = 0; i < _pciIntx.Length; i++)
                if (_pciIntx[i] is { Level: true })
                {
                    if (i < 64) r.Low |= 1UL << i;
                    else r.High |= 1UL << (i - 64);
                }
        return r;
    }

    public HvmHwIsaIrqs SaveIsaIrqs()
    {
        var r = new HvmHwIsaIrqs();
        lock (_lock)
            for (int i = 0; i < NrIsaIrqs; i++)
                if (_isaLines[i] is { Level: true })
                    r.Wires |= 1UL << i;
        return r;
    }

    public unsafe HvmHwPciLink SaveLink()
    {
        var r = new HvmHwPciLink();
        lock (_lock)
            for (int l = 0; l < NrLinks; l++)
                r.Route[l] = _linkRoute[l];
        return r;
    }

    /// <summary>Xen's irq_check_link: the padding is zero and every route names an ISA IRQ.</summary>
    public static unsafe bool IsValidLink(in HvmHwPciLink link)
    {
        for (int l = 0; l < NrLinks; l++)
        {
            if (link.Pad0[l] != 0) return false;
            if (link.Route[l] >= NrIsaIrqs) return false;
        }
        return true;
    }

    /// <summary>Sets every INTx wire as saved; the GSIs and the links' 8259 inputs follow.</summary>
    public void LoadPciIrqs(in HvmHwPciIrqs s)
    {
        for (int i = 0; i < NrPciDevices * 4; i++)
        {
            bool level = ((i < 64 ? s.Low >> i : s.High >> (i - 64)) & 1) != 0;
            SetPciIntxLevel(0, 0, (uint)(i / 4), (uint)(i % 4), level);
        }
    }

    public void LoadIsaIrqs(in HvmHwIsaIrqs s)
    {
        for (uint i = 0; i < NrIsaIrqs; i++)
            SetIsaIrqLevel(i, ((s.Wires >> (int)i) & 1) != 0);
    }

    /// <summary>Routes the links as saved (checked by <see cref="IsValidLink"/>); an asserted link drives its new IRQ.</summary>
    public unsafe void LoadLink(in HvmHwPciLink s)
    {
        for (int l = 0; l < NrLinks; l++)
            SetPciLinkRoute((uint)l, s.Route[l]);
    }
}
