using System.Text;

namespace XenSharp.Store;

/// <summary>Raised by the in-process API when the store answers with an error.</summary>
public sealed class XenStoreException : Exception
{
    public XenStoreException(XsError error, string path)
        : base($"xenstore: {error} on {path}")
    {
        Error = error;
        Path = path;
    }

    public XsError Error { get; }
    public string Path { get; }
}

/// <summary>
/// The xenstore daemon: the store, its socket for host clients, the rings of introduced domains,
/// and direct access (as dom0) for the toolstack in the same process.
/// </summary>
public sealed class XenStored : IDisposable
{
    public const string DefaultSocketPath = "/run/xenstored/socket";

    private readonly XenStoreEngine _engine;
    private readonly LocalConnection _dom0;
    private SocketServer? _server;

    public XenStored(XenStoreQuotas? quotas = null)
    {
        _engine = new XenStoreEngine(quotas ?? new XenStoreQuotas());
        _dom0 = new LocalConnection(_engine, 0);
    }

    public XenStoreQuotas Quotas => _engine.Quotas;

    /// <summary>Maps the ring page of a domain introduced over the wire (XS_INTRODUCE from a host
    /// client): given domid, mfn and event channel port, returns the ring or null if it cannot.</summary>
    public Func<uint, ulong, uint, IXenStoreRing?>? RingProvider
    {
        get => _engine.RingProvider;
        set => _engine.RingProvider = value;
    }

    /// <summary>Host clients connected to the socket now.</summary>
    public int SocketClientCount => _server?.ClientCount ?? 0;

    /// <summary>The socket path while started, else null.</summary>
    public string? SocketPath => _server?.Path;

    /// <summary>Starts serving host clients on a Unix socket (replacing a stale socket file).</summary>
    public void Start(string socketPath = DefaultSocketPath)
    {
        if (_server is not null) throw new InvalidOperationException("xenstored is already started");
        _server = new SocketServer(_engine, socketPath);
    }

    /// <summary>Stops the socket service and drops its clients; the store and domains stay.</summary>
    public void Stop()
    {
        _server?.Dispose();
        _server = null;
    }

    public void Dispose()
    {
        Stop();
        lock (_engine.Lock)
            foreach (DomainEntry d in _engine.Domains.All.ToArray())
                _engine.Release(d.DomId);
        _engine.StopRings();
    }

    // ---- domains ----

    /// <summary>Introduces a domain whose guest talks to the store over <paramref name="ring"/>
    /// (fires @introduceDomain). Call <see cref="XenStoreDomain.Signal"/> on its event channel kicks.</summary>
    public XenStoreDomain Introduce(uint domId, IXenStoreRing? ring, ulong mfn = 0, uint port = 0)
    {
        lock (_engine.Lock)
        {
            if (ring is not null && ring.Page.Length < XsWire.InterfaceSize)
                throw new ArgumentException("the xenstore ring page is smaller than struct xenstore_domain_interface", nameof(ring));
            XsError e = _engine.Introduce(domId, mfn, port, ring, out DomainEntry? d);
            if (e != XsError.None) throw new XenStoreException(e, $"domain {domId}");
            return new XenStoreDomain(domId, d!.Ring);
        }
    }

    /// <summary>The handle of an introduced domain (also one introduced over the wire), or null.</summary>
    public XenStoreDomain? GetDomain(uint domId)
    {
        lock (_engine.Lock)
            return _engine.Domains.Get(domId) is { } d ? new XenStoreDomain(domId, d.Ring) : null;
    }

    /// <summary>Same as <see cref="XenStoreDomain.Signal"/>: the domain's event channel fired.</summary>
    public void Signal(uint domId) => GetDomain(domId)?.Signal();

    /// <summary>Releases a domain (fires @releaseDomain) and removes the nodes it owned. False if it was not introduced.</summary>
    public bool Release(uint domId)
    {
        lock (_engine.Lock) return _engine.Release(domId) == XsError.None;
    }

    /// <summary>A domain shut down: fires @releaseDomain, as xenstored does when VIRQ_DOM_EXC shows a domain newly
    /// shut down or dying, so toolstacks waiting for a domain's death look at it.</summary>
    public void DomainShutDown()
    {
        lock (_engine.Lock) _engine.Watches.FireSpecial(WatchTable.ReleaseDomain);
    }

    public bool IsIntroduced(uint domId)
    {
        lock (_engine.Lock) return _engine.Domains.IsIntroduced(domId);
    }

    /// <summary>Lets <paramref name="domId"/> act with <paramref name="target"/>'s rights (a device model stub domain).</summary>
    public void SetTarget(uint domId, uint target)
    {
        lock (_engine.Lock) Check(_engine.SetTarget(domId, target), $"domain {domId}");
    }

    public static string GetDomainPath(uint domId) => Connection.DomainPathOf(domId);

    // ---- direct access as dom0 ----

    public string? Read(string path) => ReadBytes(path) is { } b ? Encoding.UTF8.GetString(b) : null;

    /// <summary>The node's value, or null if there is no such node.</summary>
    public byte[]? ReadBytes(string path) => Op(path, null, static (s, p, tx) => s.ReadBytes(p, tx));

    public bool Exists(string path) => Op(path, null, (s, p, tx) => s.Exists(p, tx));

    public void Write(string path, string value) => Write(path, Encoding.UTF8.GetBytes(value));

    public void Write(string path, byte[] value) => Op(path, null, (s, p, tx) => s.Write(p, value, tx));

    public void Mkdir(string path) => Op(path, null, static (s, p, tx) => s.Mkdir(p, tx));

    /// <summary>Removes the node and its subtree (no error if it is already gone).</summary>
    public void Rm(string path) => Op(path, null, static (s, p, tx) => s.Rm(p, tx));

    /// <summary>The children's names, or null if there is no such node.</summary>
    public string[]? Directory(string path) => Op(path, null, static (s, p, tx) => s.Directory(p, tx));

    public XsPermission[]? GetPerms(string path) => Op(path, null, static (s, p, tx) => s.GetPerms(p, tx));

    public void SetPerms(string path, params XsPermission[] perms) => Op(path, null, (s, p, tx) => s.SetPerms(p, perms, tx));

    /// <summary>Starts a transaction: changes made through it become visible together on
    /// <see cref="XenStoreTransaction.Commit"/>, or not at all if something it touched changed meanwhile.</summary>
    public XenStoreTransaction BeginTransaction()
    {
        lock (_engine.Lock)
        {
            Check(_engine.TransactionStart(_dom0, out uint id), "transaction");
            return new XenStoreTransaction(this, id);
        }
    }

    /// <summary>Watches a path and its subtree; <paramref name="onEvent"/> receives the changed path
    /// (first once with the watched path itself, as Xen does). Dispose the result to unwatch.</summary>
    public IDisposable Watch(string path, Action<string> onEvent)
    {
        lock (_engine.Lock)
        {
            string canonical = path;
            if (!path.StartsWith('@'))
                Check(Paths.Canonicalize(_dom0, path, int.MaxValue, out canonical), path);
            string token = _dom0.AddCallback(onEvent);
            byte[] tokenBytes = Encoding.Latin1.GetBytes(token);
            Check(_engine.Watches.Add(_dom0, canonical, token, tokenBytes, 0, int.MaxValue, out Watch? w), path);
            _engine.Watches.Send(w!, canonical);
            return new WatchHandle(this, canonical, token);
        }
    }

    private sealed class WatchHandle(XenStored owner, string path, string token) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            lock (owner._engine.Lock)
            {
                if (_done) return;
                _done = true;
                owner._engine.Watches.Remove(owner._dom0, path, token);
                owner._dom0.RemoveCallback(token);
            }
        }
    }

    internal T Op<T>(string path, uint? txId, Func<XenStored, string, Transaction?, T> op)
    {
        lock (_engine.Lock)
        {
            Check(Paths.Canonicalize(_dom0, path, int.MaxValue, out string canonical), path);
            Transaction? tx = null;
            if (txId is uint id && !_dom0.Transactions.TryGetValue(id, out tx))
                throw new XenStoreException(XsError.ENOENT, "transaction " + id);
            return op(this, canonical, tx);
        }
    }

    internal void Op(string path, uint? txId, Func<XenStored, string, Transaction?, XsError> op) =>
        Check(Op<XsError>(path, txId, op), path);

    internal bool End(uint id, bool commit)
    {
        lock (_engine.Lock)
        {
            XsError e = _engine.TransactionEnd(_dom0, id, commit);
            if (e == XsError.EAGAIN) return false;
            Check(e, "transaction " + id);
            return true;
        }
    }

    private static void Check(XsError e, string what)
    {
        if (e != XsError.None) throw new XenStoreException(e, what);
    }

    // The operations themselves (store lock held).
    internal byte[]? ReadBytes(string p, Transaction? tx) =>
        Found(_engine.Nodes.Lookup(_dom0, p, XsPerm.Read, tx, out Node? n), p) ? n!.Value : null;

    internal bool Exists(string p, Transaction? tx) => _engine.Nodes.Get(p, tx) is not null;

    internal XsError Write(string p, byte[] value, Transaction? tx) => _engine.Nodes.Write(_dom0, p, value, tx);

    internal XsError Mkdir(string p, Transaction? tx) => _engine.Nodes.Mkdir(_dom0, p, tx);

    internal XsError Rm(string p, Transaction? tx) => _engine.Nodes.Rm(_dom0, p, tx);

    internal string[]? Directory(string p, Transaction? tx) =>
        Found(_engine.Nodes.Lookup(_dom0, p, XsPerm.Read, tx, out Node? n), p) ? [.. n!.Children] : null;

    internal XsPermission[]? GetPerms(string p, Transaction? tx) =>
        Found(_engine.Nodes.Lookup(_dom0, p, XsPerm.Read, tx, out Node? n), p) ? (XsPermission[])n!.Perms.Clone() : null;

    internal XsError SetPerms(string p, XsPermission[] perms, Transaction? tx) =>
        perms.Length == 0 ? XsError.EINVAL : _engine.Nodes.SetPerms(_dom0, p, (XsPermission[])perms.Clone(), tx);

    private static bool Found(XsError e, string p) =>
        e == XsError.None || (e == XsError.ENOENT ? false : throw new XenStoreException(e, p));
}

/// <summary>A dom0 transaction of the in-process API. Dispose without commit aborts it.</summary>
public sealed class XenStoreTransaction : IDisposable
{
    private readonly XenStored _owner;
    private bool _ended;

    internal XenStoreTransaction(XenStored owner, uint id)
    {
        _owner = owner;
        Id = id;
    }

    public uint Id { get; }

    public string? Read(string path) => ReadBytes(path) is { } b ? Encoding.UTF8.GetString(b) : null;
    public byte[]? ReadBytes(string path) => _owner.Op(path, Id, static (s, p, tx) => s.ReadBytes(p, tx));
    public bool Exists(string path) => _owner.Op(path, Id, static (s, p, tx) => s.Exists(p, tx));
    public void Write(string path, string value) => Write(path, Encoding.UTF8.GetBytes(value));
    public void Write(string path, byte[] value) => _owner.Op(path, Id, (s, p, tx) => s.Write(p, value, tx));
    public void Mkdir(string path) => _owner.Op(path, Id, static (s, p, tx) => s.Mkdir(p, tx));
    public void Rm(string path) => _owner.Op(path, Id, static (s, p, tx) => s.Rm(p, tx));
    public string[]? Directory(string path) => _owner.Op(path, Id, static (s, p, tx) => s.Directory(p, tx));
    public XsPermission[]? GetPerms(string path) => _owner.Op(path, Id, static (s, p, tx) => s.GetPerms(p, tx));
    public void SetPerms(string path, params XsPermission[] perms) => _owner.Op(path, Id, (s, p, tx) => s.SetPerms(p, perms, tx));

    /// <summary>Commits; false if another change conflicted (Xen's EAGAIN): redo the work in a new transaction.</summary>
    public bool Commit()
    {
        if (_ended) throw new InvalidOperationException("transaction already ended");
        _ended = true;
        return _owner.End(Id, commit: true);
    }

    public void Abort()
    {
        if (_ended) return;
        _ended = true;
        _owner.End(Id, commit: false);
    }

    public void Dispose() => Abort();
}
