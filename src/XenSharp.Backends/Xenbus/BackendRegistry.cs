using XenSharp.Backends.Block;
using XenSharp.Backends.Console;
using XenSharp.Backends.Net;
using XenSharp.Dom0;
using XenSharp.Store;

namespace XenSharp.Backends.Xenbus;

/// <summary>What the daemon tells its backends (where logs go, how large they grow).</summary>
public sealed class BackendOptions
{
    /// <summary>The log of a console: the domain's id and console number (0 for the primary) → a path, or null for none.</summary>
    public Func<uint, int, string?> ConsoleLogPath { get; init; } = (_, _) => null;
    public ConsoleLogLimits ConsoleLogLimits { get; init; } = ConsoleLogLimits.Default;
    /// <summary>The host end of a vif, by interface name: a TAP device unless told otherwise.</summary>
    public Func<string, IVifPort> OpenVifPort { get; init; } = TapPort.Open;
    /// <summary>The host end of a user-mode vif (backend node network=user): passt unless told otherwise.</summary>
    public Func<UserNetwork, IVifPort> OpenUserPort { get; init; } = PasstPort.Open;
    /// <summary>Called (on the bus's watch thread) when a device's backend has started.</summary>
    public Action<DeviceAddress>? DeviceStarted { get; init; }
}

/// <summary>
/// The served device kinds: each one's backend factory, its I/O thread and its watch on
/// /local/domain/0/backend/KIND, through which it picks up the devices the toolstack writes. A new backend
/// is a folder beside Console/ with a <see cref="BackendDevice"/> and one line in <see cref="Served"/>.
/// </summary>
public sealed class BackendRegistry : IDisposable
{
    /// <summary>The kinds with a backend, and how to make one.</summary>
    private static readonly (string Kind, Func<BackendContext, DeviceAddress, BackendDevice> Create)[] Served =
    [
        (DeviceKinds.Console, (c, a) => new ConsoleDevice(c, a)),
        (DeviceKinds.Vbd, (c, a) => new BlkifBackend(c, a)),
        (DeviceKinds.Vif, (c, a) => new NetifBackend(c, a)),
    ];

    private readonly Dictionary<string, BackendBus> _buses = [];
    private readonly Dictionary<string, BackendIoThread> _threads = [];

    public BackendRegistry(IDom0Services dom0, XenStored store, BackendOptions? options = null)
    {
        Dom0 = dom0;
        Store = store;
        Options = options ?? new BackendOptions();
        foreach (var (kind, create) in Served)
        {
            var io = new BackendIoThread($"backend-{kind}");
            _threads[kind] = io;
            _buses[kind] = new BackendBus(kind, new BackendContext(dom0, store, io, Options), create);
        }
    }

    public IDom0Services Dom0 { get; }
    public XenStored Store { get; }
    public BackendOptions Options { get; }

    public static bool IsServed(string kind) => Served.Any(s => s.Kind == kind);

    /// <summary>The I/O thread of a served kind (the primary console shares the console kind's).</summary>
    public BackendIoThread IoThread(string kind) => _threads[kind];

    /// <summary>The live backend of a device, or null.</summary>
    public BackendDevice? Find(DeviceAddress a) => _buses.TryGetValue(a.Kind, out var b) ? b.Find(a) : null;

    /// <summary>The request counters of each PV disk that exists now (what blkback shows in sysfs).</summary>
    public (DeviceAddress Address, Block.BlkifStatistics Statistics)[] VbdStatistics() =>
        _buses.TryGetValue(DeviceKinds.Vbd, out var b) ? [.. b.All().OfType<Block.BlkifBackend>().Select(d => (d.Address, d.Statistics))] : [];

    /// <summary>Ends every backend device of domain <paramref name="domId"/> and waits until each has let go of
    /// the guest's grants and ports (before the domain itself is destroyed).</summary>
    public void RemoveDevicesOf(uint domId)
    {
        var done = _buses.Values.SelectMany(b => b.RemoveDevicesOf(domId)).ToList();
        foreach (var h in done) h.WaitOne(TimeSpan.FromSeconds(10));
    }

    public void Dispose()
    {
        foreach (var b in _buses.Values) b.Dispose();
        foreach (var t in _threads.Values) t.Dispose();
    }
}

/// <summary>
/// One served kind's watch on /local/domain/0/backend/KIND (the role of Linux's xenbus backend bus):
/// a complete device directory there gets a backend; a removed one loses it.
/// </summary>
internal sealed class BackendBus : IDisposable
{
    private readonly string _kind;
    private readonly string _root;
    private readonly BackendContext _context;
    private readonly Func<BackendContext, DeviceAddress, BackendDevice> _create;
    private readonly Dictionary<(uint, int), BackendDevice> _devices = [];
    // Domains whose devices were ended before their destruction: watch events still queued for their directories
    // (which the toolstack removes later) must not bring a backend back.
    private readonly HashSet<uint> _ended = [];
    private readonly Lock _lock = new();
    private readonly IDisposable _watch;
    private bool _disposed;

    public BackendBus(string kind, BackendContext context, Func<BackendContext, DeviceAddress, BackendDevice> create)
    {
        _kind = kind;
        _root = $"/local/domain/0/backend/{kind}";
        _context = context;
        _create = create;
        _watch = context.Store.Watch(_root, OnChanged);
    }

    public BackendDevice? Find(DeviceAddress a)
    {
        lock (_lock) return _devices.GetValueOrDefault((a.FrontendId, a.DevId));
    }

    public BackendDevice[] All()
    {
        lock (_lock) return [.. _devices.Values];
    }

    /// <summary>Watch events arrive in order on one thread at a time: the path names the device
    /// (…/KIND/DOMID/ID/…) or a level above it, which is looked at whole.</summary>
    private void OnChanged(string path)
    {
        var rest = path.Length > _root.Length ? path[(_root.Length + 1)..].Split('/') : [];
        if (rest.Length >= 2 && uint.TryParse(rest[0], out uint dom) && int.TryParse(rest[1], out int id))
            Look(dom, id);
        else
            LookAll();
    }

    private void LookAll()
    {
        var seen = new HashSet<(uint, int)>();
        var doms = _context.Store.Directory(_root) ?? [];
        lock (_lock) _ended.RemoveWhere(dom => !doms.Contains(dom.ToString()));
        foreach (string d in doms)
        {
            if (!uint.TryParse(d, out uint dom)) continue;
            foreach (string i in _context.Store.Directory($"{_root}/{d}") ?? [])
                if (int.TryParse(i, out int id))
                {
                    seen.Add((dom, id));
                    Look(dom, id);
                }
        }
        List<(uint, int)> gone;
        lock (_lock) gone = [.. _devices.Keys.Where(k => !seen.Contains(k))];
        foreach (var (dom, id) in gone) Look(dom, id);
    }

    private void Look(uint dom, int id)
    {
        var a = new DeviceAddress(_kind, dom, id);
        // The toolstack writes the whole directory in one transaction; frontend-id marks it complete.
        bool present = _context.Store.Read($"{a.BackendPath}/frontend-id") is not null;
        bool domainDirGone = !present && (_context.Store.Directory($"{_root}/{dom}") ?? []).Length == 0;
        BackendDevice? d;
        lock (_lock)
        {
            if (_disposed) return;
            if (domainDirGone) _ended.Remove(dom);
            _devices.TryGetValue((dom, id), out d);
            if (present && d is null)
            {
                if (_ended.Contains(dom)) return;
                d = _create(_context, a);
                _devices[(dom, id)] = d;
                d.Start();
                d = null;
            }
            else
            {
                if (present || d is null) return;
                _devices.Remove((dom, id));
            }
        }
        if (d is not null)
            d.Remove();
        else
            _context.Options.DeviceStarted?.Invoke(a);
    }

    public List<WaitHandle> RemoveDevicesOf(uint domId)
    {
        List<BackendDevice> mine;
        lock (_lock)
        {
            _ended.Add(domId);
            mine = [.. _devices.Values.Where(d => d.Address.FrontendId == domId)];
            foreach (var d in mine) _devices.Remove((d.Address.FrontendId, d.Address.DevId));
        }
        return [.. mine.Select(d => d.Remove())];
    }

    public void Dispose()
    {
        _watch.Dispose();
        List<BackendDevice> all;
        lock (_lock)
        {
            _disposed = true;
            all = [.. _devices.Values];
            _devices.Clear();
        }
        foreach (var d in all) d.Remove();
    }
}
