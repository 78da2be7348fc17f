using XenSharp.Backends;
using XenSharp.Backends.Console;
using XenSharp.Store;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>One guest domain as the daemon holds it: its configuration, its hypervisor domain,
/// its console backend and its xenstore connection.</summary>
internal sealed class Domain
{
    public required uint DomId { get; init; }
    public required DomainConfig Config { get; set; }
    public required IHypervisorDomain Hv { get; init; }
    public required DateTimeOffset Started { get; init; }
    /// <summary>The guest this domain is an incarnation of (shared with the domains it restarts as).</summary>
    public required Lineage Lineage { get; init; }
    /// <summary>The primary console (start info and HVM params, not xenbus).</summary>
    public PrimaryConsole? PrimaryConsole { get; set; }
    public ConsoleBackend? Console => PrimaryConsole?.Backend;
    /// <summary>A domain built outside: the pty its primary console is served on, and whether that console must be
    /// bound again (its store was introduced anew, as after libxl's soft reset, which closed the old port).</summary>
    public ConsolePty? ForeignConsolePty { get; set; }
    public bool ForeignConsoleStale { get; set; }
    /// <summary>For an incoming migration's domain (NAME--incoming until the sender lets go of NAME): NAME, which its
    /// primary console's log is kept under from the start, so the guest's log goes on in one file.</summary>
    public string? ArrivingAs { get; init; }
    public IEventChannelEndpoint? StoreChannel { get; set; }
    public XenStoreDomain? Store { get; set; }
    /// <summary>Set once the toolstack has acted on the domain's shutdown (so it acts once).</summary>
    public bool ShutdownHandled { get; set; }
    /// <summary>Set (under the host's state lock) as the domain's destruction begins; read without
    /// it by work that must stop then, such as a core dump.</summary>
    public bool Destroyed { get => Volatile.Read(ref _destroyed); set => Volatile.Write(ref _destroyed, value); }
    private bool _destroyed;
    /// <summary>Held while the domain's memory is read from outside (core dumps) and while it is
    /// torn down, so a dump never reads memory being freed.</summary>
    public Lock MemoryUse { get; } = new();
    /// <summary>Pulsed when the hypervisor reports a change of the domain's state (a shutdown), for whoever waits on it.</summary>
    public object StateSignal { get; } = new();
    /// <summary>When that report was last heard (microseconds since 1970).</summary>
    public long StateChangedAt { get => Volatile.Read(ref _stateChangedAt); set => Volatile.Write(ref _stateChangedAt, value); }
    private long _stateChangedAt;
    /// <summary>Built and wired up: visible to xl list.</summary>
    public bool Ready { get; set; }
    /// <summary>Built by a Domain-0 program (Xen's own xl), not by the daemon: see HostForeignDomains.cs.</summary>
    public bool BuiltOutside { get; init; }
    /// <summary>What serving a domain built outside holds (its console watch and pty), released as it goes.</summary>
    public List<IDisposable> OutsideParts { get; } = [];
}

/// <summary>A guest frame shared with a backend.</summary>
internal sealed class GuestPage(IGuestPhysicalMemory memory, ulong gfn) : ISharedPage, IXenStoreRing
{
    private Action? _notify;

    public Span<byte> Page => memory.Page(gfn);

    public void SetNotify(Action notify) => _notify = notify;

    public void Notify() => _notify?.Invoke();
}
