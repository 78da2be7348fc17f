using XenSharp.Hypervisor.Common;
using XenSharp.Public;

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
}
