namespace XenSharp.Store;

/// <summary>
/// The store's state and the operations on it, shared by every transport. One lock serialises all
/// operations (as Xen's single-threaded xenstored does); transports only parse and deliver bytes
/// outside it, so a slow client never holds it.
/// </summary>
internal sealed partial class XenStoreEngine
{
    public readonly Lock Lock = new();
    public readonly XenStoreQuotas Quotas;
    public readonly WatchTable Watches;
    public readonly NodeStore Nodes;
    public readonly Domains Domains = new();
    private RingWorker? _rings;

    /// <summary>The ring service thread, started with the first guest ring.</summary>
    public RingWorker Rings
    {
        get
        {
            if (_rings is null)
                lock (Lock) _rings ??= new RingWorker();
            return _rings;
        }
    }

    public void StopRings()
    {
        _rings?.Dispose();
        _rings = null;
    }

    /// <summary>Maps a ring for XS_INTRODUCE arriving over the wire (domid, mfn, event channel port).</summary>
    public Func<uint, ulong, uint, IXenStoreRing?>? RingProvider;

    public XenStoreEngine(XenStoreQuotas quotas)
    {
        Quotas = quotas;
        Watches = new WatchTable();
        Nodes = new NodeStore(Watches, quotas);
        var dom0 = new LocalConnection(this, 0);
        Nodes.Mkdir(dom0, "/tool/xenstored", null);
    }

    /// <summary>Forgets a closed connection's transactions and watches.</summary>
    public void Disconnect(Connection c)
    {
        lock (Lock)
        {
            c.Transactions.Clear();
            Watches.RemoveAll(c);
        }
    }

    public XsError TransactionStart(Connection c, out uint id)
    {
        id = 0;
        if (!c.Privileged && c.Transactions.Count >= Quotas.TransactionsPerDomain) return XsError.ENOSPC;
        do id = c.NextTransactionId++; while (id == 0 || c.Transactions.ContainsKey(id));
        c.Transactions[id] = new Transaction(id);
        return XsError.None;
    }

    public XsError TransactionEnd(Connection c, uint id, bool commit)
    {
        if (!c.Transactions.Remove(id, out Transaction? tx)) return XsError.ENOENT;
        return commit ? Nodes.Commit(tx) : XsError.None;
    }

    /// <summary>Introduces a domain: from now on it may talk to the store over its ring.</summary>
    public XsError Introduce(uint domId, ulong mfn, uint port, IXenStoreRing? ring, out DomainEntry? entry)
    {
        entry = Domains.Get(domId);
        if (domId == 0 || domId >= 0x7ff0) return XsError.EINVAL;
        if (entry is not null)
            return entry.Mfn == mfn && entry.Port == port ? XsError.None : XsError.EEXIST;
        RingConnection? conn = null;
        try
        {
            ring ??= RingProvider?.Invoke(domId, mfn, port);
            if (ring is not null) conn = new RingConnection(this, domId, ring);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // A page the host cannot map (bad mfn from a client) is the client's error, not ours.
            Console.Error.WriteLine($"xenstored: cannot map the ring of domain {domId} (mfn {mfn:x}): {ex.Message}");
            entry = null;
            return XsError.EINVAL;
        }
        entry = new DomainEntry { DomId = domId, Mfn = mfn, Port = port, Ring = conn };
        Domains.Add(entry);
        Watches.FireSpecial(WatchTable.IntroduceDomain);
        entry.Ring?.Start();
        return XsError.None;
    }

    /// <summary>Releases a domain: drops its connection and removes the nodes it owned.</summary>
    public XsError Release(uint domId)
    {
        if (domId == 0) return XsError.EINVAL;
        if (!Domains.Remove(domId, out DomainEntry? entry)) return XsError.ENOENT;
        if (entry!.Ring is { } ring)
        {
            ring.Close();
            ring.Transactions.Clear();
            Watches.RemoveAll(ring);
        }
        foreach (DomainEntry d in Domains.All)
            if (d.Target == domId) { d.Target = null; if (d.Ring is not null) d.Ring.Target = null; }
        Nodes.RemoveOwnedBy(domId);
        Watches.FireSpecial(WatchTable.ReleaseDomain);
        return XsError.None;
    }

    public XsError SetTarget(uint domId, uint target)
    {
        DomainEntry? d = Domains.Get(domId);
        if (d is null || !Domains.IsIntroduced(target)) return XsError.ENOENT;
        d.Target = target;
        if (d.Ring is not null) d.Ring.Target = target;
        return XsError.None;
    }
}
