using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.X86;

/// <summary>How HVM_PARAM_CALLBACK_IRQ asks for event upcalls (HVM_PARAM_CALLBACK_TYPE_*; Xen's hvm_irq callback_via).</summary>
internal enum CallbackVia : byte { None, Gsi, PciIntx, Vector }

/// <summary>
/// An HVM or PVH domain's x86 state (Xen's hvm_domain): its HVM parameters and event callback, its I/O port and
/// MMIO buses with the devices the hypervisor emulates on them, and its GSIs.
/// </summary>
internal sealed class HvmDomain : ArchDomain
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
    }

    /// <summary>HVM_PARAM_* values (Xen's hvm_domain.params).</summary>
    public readonly ulong[] Params = new ulong[XenSharp.Public.Hvm.Params.HVM_NR_PARAMS];
    /// <summary>The vector of HVM_PARAM_CALLBACK_IRQ when its type is "vector", 0 otherwise.</summary>
    public byte CallbackVector;
    public CallbackVia CallbackVia;

    /// <summary>I/O ports 0-0xFFFF and guest-physical MMIO, each a range map of devices. Accesses no device
    /// claims go to the IOREQ server (<see cref="HvmIo"/>).</summary>
    public IoBus PortIo { get; } = new("port I/O");
    public IoBus Mmio { get; } = new("MMIO");

    /// <summary>The domain's GSIs, and the table that routes them to vLAPIC vectors until a vIOAPIC does.</summary>
    public IrqRouter Irq { get; }
    public GsiVectorRoutes Routes { get; }

    /// <summary>The FADT's PM1a control register, where the guest asks for S5 (poweroff).</summary>
    public AcpiPm1Control Pm1a { get; }

    /// <summary>Moves the PM1a control register to the port the toolstack's FADT names, with its \_S5 SLP_TYP.</summary>
    public void SetAcpiSleepControl(ushort port, int s5SleepType)
    {
        lock (Pm1a)
        {
            if (port != Pm1a.Port)
            {
                PortIo.Unregister(Pm1a.Port, Pm1a);
                if (!PortIo.TryRegister(port, AcpiPm1Control.Length, Pm1a))
                {
                    PortIo.Register(Pm1a.Port, AcpiPm1Control.Length, Pm1a);
                    throw new HypervisorException($"I/O port 0x{port:x} of the PM1a control register is taken", Public.Errno.EEXIST);
                }
                Pm1a.Port = port;
            }
            Pm1a.S5SleepType = s5SleepType;
        }
    }
}
