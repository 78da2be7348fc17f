using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;
using static XenSharp.Public.ArchX86.XenX86Emu;

namespace XenSharp.Hypervisor.X86;

/// <summary>How HVM_PARAM_CALLBACK_IRQ asks for event upcalls (HVM_PARAM_CALLBACK_TYPE_*; Xen's hvm_irq callback_via).</summary>
internal enum CallbackVia : byte { None, Gsi, PciIntx, Vector }

/// <summary>
/// An HVM or PVH domain's x86 state (Xen's hvm_domain): its HVM parameters and event callback, its I/O port and
/// MMIO buses with the devices the hypervisor emulates on them, and its GSIs.
/// </summary>
internal sealed unsafe class HvmDomain : ArchDomain
{
    /// <summary>Xen's debug console port (XEN_HVM_DEBUGCONS_IOPORT).</summary>
    public const ushort DebugConsolePort = 0xE9;

    public HvmDomain(Domain domain) : base(domain)
    {
        PortIo.Register(DebugConsolePort, 1, new DebugConsole());
        Pm1a = new AcpiPm1Control();
        PortIo.Register(Pm1a.Port, AcpiPm1Control.Length, Pm1a);
        Irq = new IrqRouter();
        Routes = new GsiVectorRoutes(domain, Irq);
        Irq.Controller = Routes;
        // As Xen's emulation_flags: an HVM domain gets the PC's platform devices, a PVH one only the local APIC.
        EmulationFlags = domain.Type == DomainKind.Hvm ? XEN_X86_EMU_ALL & ~XEN_X86_EMU_VPCI : XEN_X86_EMU_LAPIC;
        if ((EmulationFlags & XEN_X86_EMU_PIC) != 0)
            Platform = new HvmPlatform(domain, this);
        Ioreq = new IoreqServers(domain);
        PortIo.Changed += ForgetUnclaimedPorts;
    }

    private ulong[]? _unclaimedPorts;

    /// <summary>After an exit for a port nothing claimed: while the domain has no IOREQ server (a PVH domain, or an HVM
    /// one before its device model starts), gives the vCPU the map of unclaimed ports, so that the next reads of
    /// them (Linux's PIT calibration polls port 0x42 on a PVH domain a hundred thousand times) are answered in the
    /// engine. A device that claims a port or an IOREQ server that appears takes the map away first.</summary>
    public void OfferUnclaimedPorts(Vcpu v)
    {
        if (Ioreq.Any || Domain.Host.IoreqServer is not null || Io.HvmIoStats.On || v.Engine is not Cpu.IX86Vcpu cpu)
            return;
        var map = _unclaimedPorts;
        if (map is null)
        {
            map = new ulong[0x10000 / 64];
            Array.Fill(map, ulong.MaxValue);
            PortIo.ClearClaimed(map);
            _unclaimedPorts = map;
        }
        cpu.UnclaimedPorts = map;
    }

    /// <summary>Every vCPU exits again on every port: called before a device or an IOREQ server can claim one.</summary>
    public void ForgetUnclaimedPorts()
    {
        _unclaimedPorts = null;
        foreach (var v in Domain.Vcpus)
            if (v.Engine is Cpu.IX86Vcpu cpu)
                cpu.UnclaimedPorts = null;
    }

    /// <summary>The device models' IOREQ servers (XEN_DMOP_create_ioreq_server and the rest).</summary>
    public IoreqServers Ioreq { get; }

    /// <summary>XEN_X86_EMU_* of the domain: which devices the hypervisor emulates for it.</summary>
    public uint EmulationFlags { get; }

    /// <summary>The emulated PC (PIC, IOAPIC, PIT, RTC, HPET, PM timer) of an HVM domain; null for PVH.</summary>
    public HvmPlatform? Platform { get; }

    /// <summary>HVM_PARAM_* values (Xen's hvm_domain.params).</summary>
    public readonly ulong[] Params = new ulong[XenSharp.Public.Hvm.Params.HVM_NR_PARAMS];
    /// <summary>The vector of HVM_PARAM_CALLBACK_IRQ when its type is "vector", 0 otherwise.</summary>
    public byte CallbackVector;
    public CallbackVia CallbackVia;

    private readonly object _callbackLock = new();
    private IrqLine? _callbackLine;
    /// <summary>The callback GSI is raised (Xen's callback_via_asserted): every exit checks whether vCPU 0 has
    /// cleared its evtchn_upcall_pending since, as Xen does on VM entry.</summary>
    public volatile bool CallbackAsserted;

    /// <summary>Takes the new HVM_PARAM_CALLBACK_IRQ (Xen's hvm_set_callback_via): a GSI via (1 to 47; GSI 0
    /// means none) gets a line of its own, which then follows vCPU 0's evtchn_upcall_pending. A PCI INTx via does the
    /// same on that device's INTx GSI in an HVM domain; in a PVH one (no PCI) it is recorded but delivers nothing.</summary>
    public void SetCallbackVia(CallbackVia via, byte vector, ulong gsi)
    {
        lock (_callbackLock)
        {
            _callbackLine?.Lower();
            _callbackLine = null;
            CallbackAsserted = false;
            if (via == CallbackVia.Gsi && (gsi == 0 || gsi >= IrqRouter.NrGsis))
                via = CallbackVia.None;
            CallbackVia = via;
            CallbackVector = via == CallbackVia.Vector ? vector : (byte)0;
            if (via == CallbackVia.Gsi)
                _callbackLine = Irq.Line((uint)gsi);
            else if (via == CallbackVia.PciIntx && Platform is not null)
            {
                // The platform PCI device's INTx pin (bits 11-15 the device, 0-1 the pin), wired as PCI INTx are.
                int device = (int)(gsi >> 11) & 31, intx = (int)gsi & 3;
                _callbackLine = Irq.Line(PlatformIrq.PciIntxGsi(device, intx));
            }
        }
        UpdateCallbackLevel();
    }

    /// <summary>Sets the callback GSI to vCPU 0's evtchn_upcall_pending (Xen's hvm_set_callback_irq_level).</summary>
    public void UpdateCallbackLevel()
    {
        lock (_callbackLock)
        {
            if (_callbackLine is not { } line || Domain.Vcpus.Length == 0)
                return;
            var info = Domain.Vcpus[0].VcpuInfo;
            bool pending = info is not null && info->EvtchnUpcallPending != 0;
            line.Set(pending);
            CallbackAsserted = pending;
        }
    }

    /// <summary>I/O ports 0-0xFFFF and guest-physical MMIO, each a range map of devices. Accesses no device
    /// claims go to the IOREQ server (<see cref="HvmIo"/>).</summary>
    public IoBus PortIo { get; } = new("port I/O");
    public IoBus Mmio { get; } = new("MMIO");

    /// <summary>The domain's GSIs, and the table that routes them to vLAPIC vectors until a vIOAPIC does.</summary>
    public IrqRouter Irq { get; }
    public GsiVectorRoutes Routes { get; }

    /// <summary>The FADT's PM1a control register, where the guest asks for S5 (poweroff).</summary>
    public AcpiPm1Control Pm1a { get; }

    /// <summary>Whether the toolstack gave the guest an ACPI sleep register (XenSharp's own builder does; libxl's PVH
    /// tables have no sleep states).</summary>
    public bool HasAcpiSleepControl { get; private set; }

    /// <summary>Whether the PM1a control register is on the port bus; a device model's domain has none of its own.</summary>
    private bool _pm1aClaimed = true;

    /// <summary>hvmloader set HVM_PARAM_ACPI_IOPORTS_LOCATION: its FADT names the device model's PM1a control register
    /// (QEMU's PIIX4 power management), which Xen does not emulate, so the stand-in at 0xB004 steps aside unless the
    /// toolstack gave the guest its own. Firmware that reads, modifies and writes the register back (OVMF) would otherwise
    /// read all ones and write S5.</summary>
    public void AcpiPortsRelocated()
    {
        lock (Pm1a)
            if (!HasAcpiSleepControl && _pm1aClaimed)
            {
                PortIo.Unregister(Pm1a.Port, Pm1a);
                _pm1aClaimed = false;
            }
    }

    /// <summary>Moves the PM1a control register to the port the toolstack's FADT names, with its \_S5 SLP_TYP.</summary>
    public void SetAcpiSleepControl(ushort port, int s5SleepType)
    {
        lock (Pm1a)
        {
            if (port != Pm1a.Port || !_pm1aClaimed)
            {
                if (_pm1aClaimed)
                    PortIo.Unregister(Pm1a.Port, Pm1a);
                if (!PortIo.TryRegister(port, AcpiPm1Control.Length, Pm1a))
                {
                    if (_pm1aClaimed)
                        PortIo.Register(Pm1a.Port, AcpiPm1Control.Length, Pm1a);
                    throw new HypervisorException($"I/O port 0x{port:x} of the PM1a control register is taken", Public.Errno.EEXIST);
                }
                Pm1a.Port = port;
                _pm1aClaimed = true;
            }
            HasAcpiSleepControl = true;
            Pm1a.S5SleepType = s5SleepType;
        }
    }

    /// <summary>Leaves the PM1a control port to the IOREQ servers, as Xen has no such register of its own: in a domain
    /// with a device model, QEMU's PIIX4 power management serves it and reports S5 through XEN_DMOP_remote_shutdown.</summary>
    public void ReleaseAcpiSleepControl()
    {
        lock (Pm1a)
        {
            if (_pm1aClaimed)
                PortIo.Unregister(Pm1a.Port, Pm1a);
            _pm1aClaimed = false;
            HasAcpiSleepControl = false;
        }
    }
}
