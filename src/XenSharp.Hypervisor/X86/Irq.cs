using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// What a domain's GSIs are wired to: the vIOAPIC and vPIC (Xen's vioapic.c, vpic.c) once they exist, the
/// <see cref="GsiVectorRoutes"/> table until then. Called with the line's wire-OR level whenever it changes.
/// </summary>
internal interface IInterruptController
{
    void SetIrqLevel(uint gsi, bool level);

    /// <summary>The vLAPIC of <paramref name="v"/> took an EOI for a level-triggered vector (Xen's
    /// vioapic_update_EOI): a line still asserted behind it delivers again.</summary>
    void EndOfInterrupt(Vcpu v, byte vector);
}

/// <summary>
/// A domain's global system interrupts (Xen's hvm_irq): each GSI is the wire-OR of the sources that assert it,
/// counted per line as Xen's gsi_assert_count, and the controller hears only the line's transitions. Devices hold
/// an <see cref="IrqLine"/> each and never talk to a controller or a vLAPIC themselves.
/// </summary>
internal sealed class IrqRouter
{
    /// <summary>Xen's default number of GSIs of an HVM domain (its vIOAPIC's 48 pins).</summary>
    public const int NrGsis = 48;

    private readonly int[] _assertCount = new int[NrGsis];
    private readonly object _lock = new();

    /// <summary>Where the lines go; with none (a PVH domain in Xen has no vIOAPIC) levels are kept but reach nobody.</summary>
    public IInterruptController? Controller { get; set; }

    /// <summary>A new source on <paramref name="gsi"/>, lowered to start with.</summary>
    public IrqLine Line(uint gsi)
    {
        if (gsi >= NrGsis)
            throw new ArgumentOutOfRangeException(nameof(gsi), gsi, $"a domain has GSIs 0-{NrGsis - 1}");
        return new IrqLine(this, gsi);
    }

    /// <summary>The line's level: some source asserts it.</summary>
    public bool Level(uint gsi) => gsi < NrGsis && Volatile.Read(ref _assertCount[gsi]) > 0;

    internal void Assert(uint gsi)
    {
        lock (_lock)
            if (_assertCount[gsi]++ == 0)
                Controller?.SetIrqLevel(gsi, true);
    }

    internal void Deassert(uint gsi)
    {
        lock (_lock)
            if (--_assertCount[gsi] == 0)
                Controller?.SetIrqLevel(gsi, false);
    }

    public void EndOfInterrupt(Vcpu v, byte vector) => Controller?.EndOfInterrupt(v, vector);
}

/// <summary>One source's pin on a GSI: a device raises and lowers it (level) or pulses it (edge). Raising a raised
/// pin does nothing, so the line's assert count stays one per source.</summary>
internal sealed class IrqLine
{
    private readonly IrqRouter _router;
    private readonly object _lock = new();
    private bool _level;

    internal IrqLine(IrqRouter router, uint gsi)
    {
        _router = router;
        Gsi = gsi;
    }

    public uint Gsi { get; }
    public bool Level => _level;

    public void Set(bool level)
    {
        lock (_lock)
        {
            if (level == _level)
                return;
            _level = level;
            if (level)
                _router.Assert(Gsi);
            else
                _router.Deassert(Gsi);
        }
    }

    public void Raise() => Set(true);
    public void Lower() => Set(false);

    /// <summary>An edge: up and down again (Xen's hvm_isa_irq_assert then _deassert).</summary>
    public void Pulse()
    {
        lock (_lock)
        {
            if (_level)
                return; // a raised line has no edge to give
            _router.Assert(Gsi);
            _router.Deassert(Gsi);
        }
    }
}

/// <summary>
/// GSIs delivered as fixed vectors to one vCPU's vLAPIC each: the redirection table without the vIOAPIC around it.
/// An edge route delivers on each rising edge. A level route delivers while the line is up and holds further
/// deliveries until the vector's EOI, then delivers again if the line is still up (the IOAPIC's remote IRR).
/// </summary>
internal sealed class GsiVectorRoutes(Domain domain, IrqRouter router) : IInterruptController
{
    private struct Route
    {
        public bool Valid, LevelTriggered, RemoteIrr;
        public int Vcpu;
        public byte Vector;
    }

    private readonly Route[] _routes = new Route[IrqRouter.NrGsis];

    /// <summary>Routes <paramref name="gsi"/> to <paramref name="vector"/> on vCPU <paramref name="vcpu"/>; a line
    /// already up delivers at once.</summary>
    public void SetRoute(uint gsi, int vcpu, byte vector, bool levelTriggered)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(gsi, (uint)IrqRouter.NrGsis);
        if (domain.GetVcpu((uint)vcpu) is null)
            throw new ArgumentOutOfRangeException(nameof(vcpu), vcpu, $"domain {domain.DomainId} has no such vCPU");
        lock (_routes)
            _routes[gsi] = new Route { Valid = true, LevelTriggered = levelTriggered, Vcpu = vcpu, Vector = vector };
        if (router.Level(gsi))
            SetIrqLevel(gsi, true);
    }

    public void ClearRoute(uint gsi)
    {
        lock (_routes)
            _routes[gsi] = default;
    }

    public void SetIrqLevel(uint gsi, bool level)
    {
        if (!level)
            return; // a lowered line takes back nothing already in IRR
        Route r;
        lock (_routes)
        {
            r = _routes[gsi];
            if (!r.Valid || (r.LevelTriggered && r.RemoteIrr))
                return;
            if (r.LevelTriggered)
                _routes[gsi].RemoteIrr = true;
        }
        domain.Vcpus[r.Vcpu].Arch.Vlapic.Accept(r.Vector, r.LevelTriggered);
    }

    public void EndOfInterrupt(Vcpu v, byte vector)
    {
        for (uint gsi = 0; gsi < IrqRouter.NrGsis; gsi++)
        {
            lock (_routes)
            {
                ref var r = ref _routes[gsi];
                if (!r.Valid || !r.LevelTriggered || !r.RemoteIrr || r.Vector != vector || r.Vcpu != v.Id)
                    continue;
                r.RemoteIrr = false;
            }
            if (router.Level(gsi))
                SetIrqLevel(gsi, true);
        }
    }
}
