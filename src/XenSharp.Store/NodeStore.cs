namespace XenSharp.Store;

/// <summary>
/// The tree of nodes, its permission rules, node quotas and the transactional view of it.
/// Every method expects the store lock held. Paths handed in are canonical (see <see cref="Paths"/>).
/// </summary>
internal sealed class NodeStore
{
    private readonly Dictionary<string, Node> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, int> _nodeCount = new();
    private readonly WatchTable _watches;
    private readonly XenStoreQuotas _quotas;
    private long _generation;

    private static readonly XsPermission[] RootPerms = [new XsPermission(0, XsPerm.None)];

    public NodeStore(WatchTable watches, XenStoreQuotas quotas)
    {
        _watches = watches;
        _quotas = quotas;
        var root = new Node("/", [], RootPerms, []) { Generation = ++_generation };
        _nodes["/"] = root;
        _nodeCount[0] = 1;
    }

    public int NodesOwnedBy(uint dom) => _nodeCount.TryGetValue(dom, out int n) ? n : 0;

    // ---- access rules ----

    /// <summary>Access the connection has to the node: privileged clients, the owner and the owner's
    /// controller (target relation) get everything; then a domain-specific entry; then the default.</summary>
    public static XsPerm Access(Connection c, Node n, out bool owner)
    {
        XsPermission[] p = n.Perms;
        if (c.Privileged || p[0].DomId == c.DomId || (c.Target is uint t && p[0].DomId == t))
        {
            owner = true;
            return XsPerm.Both;
        }
        owner = false;
        for (int i = 1; i < p.Length; i++)
            if (p[i].DomId == c.DomId || (c.Target is uint t2 && p[i].DomId == t2))
                return p[i].Perm;
        return p[0].Perm;
    }

    public static bool CanRead(Connection c, Node n) => (Access(c, n, out _) & XsPerm.Read) != 0;

    // ---- transactional view ----

    public Node? Get(string path, Transaction? tx)
    {
        if (tx is null)
            return _nodes.GetValueOrDefault(path);
        if (tx.Overlay.TryGetValue(path, out Node? mine))
            return mine;
        if (tx.Snapshot.TryGetValue(path, out Node? seen))
            return seen;
        // The first read takes a copy: later reads in the transaction see the node as it was then,
        // whatever others write meanwhile (their write still makes the commit fail with EAGAIN).
        Node? n = _nodes.GetValueOrDefault(path);
        tx.Seen.TryAdd(path, n?.Generation ?? -1);
        n = n?.Clone();
        tx.Snapshot[path] = n;
        return n;
    }

    /// <summary>A node the caller may change in place: the committed node itself, or the
    /// transaction's own copy.</summary>
    private Node Writable(Node n, Transaction? tx)
    {
        if (tx is null) return n;
        if (tx.Overlay.TryGetValue(n.Path, out Node? mine) && mine is not null) return mine;
        Node copy = n.Clone();
        tx.Overlay[n.Path] = copy;
        return copy;
    }

    private void Changed(Node n, Transaction? tx)
    {
        if (tx is null) n.Generation = ++_generation;
    }

    private void Insert(Node n, Transaction? tx)
    {
        if (tx is null)
        {
            n.Generation = ++_generation;
            _nodes[n.Path] = n;
            Count(_nodeCount, n.Owner, +1);
        }
        else
        {
            tx.Overlay[n.Path] = n;
            Count(tx.NodeDelta, n.Owner, +1);
        }
    }

    private void Delete(Node n, Transaction? tx)
    {
        if (tx is null)
        {
            _nodes.Remove(n.Path);
            Count(_nodeCount, n.Owner, -1);
        }
        else
        {
            tx.Overlay[n.Path] = null;
            Count(tx.NodeDelta, n.Owner, -1);
        }
    }

    private static void Count(Dictionary<uint, int> counts, uint dom, int delta)
    {
        counts.TryGetValue(dom, out int n);
        counts[dom] = n + delta;
    }

    private void Announce(string path, bool removed, Node node, Transaction? tx)
    {
        if (tx is null) _watches.Fire(path, removed, node);
        else tx.Changes.Add((path, removed));
    }

    // ---- lookups with Xen's error rules ----

    /// <summary>Finds a node the connection may access as asked. A missing node is ENOENT, unless the
    /// caller could not even read the closest existing ancestor, which makes it EACCES.</summary>
    public XsError Lookup(Connection c, string path, XsPerm need, Transaction? tx, out Node? node)
    {
        node = Get(path, tx);
        if (node is null)
        {
            Node? anc = ClosestAncestor(path, tx);
            return anc is not null && !CanRead(c, anc) ? XsError.EACCES : XsError.ENOENT;
        }
        if ((Access(c, node, out _) & need) != need)
        {
            node = null;
            return XsError.EACCES;
        }
        return XsError.None;
    }

    private Node? ClosestAncestor(string path, Transaction? tx)
    {
        string p = path;
        while (p != "/")
        {
            p = Paths.Parent(p);
            Node? n = Get(p, tx);
            if (n is not null) return n;
        }
        return null;
    }

    // ---- operations ----

    public XsError Write(Connection c, string path, ReadOnlySpan<byte> value, Transaction? tx)
    {
        if (!c.Privileged && value.Length > _quotas.MaxEntrySize)
            return XsError.ENOSPC;
        Node? n = Get(path, tx);
        if (n is not null)
        {
            if ((Access(c, n, out _) & XsPerm.Write) == 0) return XsError.EACCES;
            n = Writable(n, tx);
            n.Value = value.ToArray();
            Changed(n, tx);
            Announce(path, false, n, tx);
            return XsError.None;
        }
        XsError e = Create(c, path, value, tx, out n);
        if (e == XsError.None) Announce(path, false, n!, tx);
        return e;
    }

    public XsError Mkdir(Connection c, string path, Transaction? tx)
    {
        Node? n = Get(path, tx);
        if (n is not null)
            return (Access(c, n, out _) & XsPerm.Write) != 0 ? XsError.None : XsError.EACCES;
        XsError e = Create(c, path, [], tx, out n);
        if (e == XsError.None) Announce(path, false, n!, tx);
        return e;
    }

    /// <summary>Creates the node and any missing ancestors (implicit creation), which inherit the
    /// permissions of their closest existing ancestor; an unprivileged creator becomes the owner.</summary>
    private XsError Create(Connection c, string path, ReadOnlySpan<byte> value, Transaction? tx, out Node? created)
    {
        created = null;
        // Walk up to the closest existing ancestor, remembering the missing names.
        int depth = path.AsSpan().Count('/');
        Span<int> cuts = depth <= 64 ? stackalloc int[64] : new int[depth];
        int missing = 0;
        string p = path;
        Node? parent;
        while (true)
        {
            cuts[missing++] = p.Length;
            p = Paths.Parent(p);
            parent = Get(p, tx);
            if (parent is not null) break;
        }
        if ((Access(c, parent, out _) & XsPerm.Write) == 0) return XsError.EACCES;

        if (!c.Privileged)
        {
            int owned = NodesOwnedBy(c.DomId) + (tx?.Delta(c.DomId) ?? 0);
            if (owned + missing > _quotas.NodesPerDomain) return XsError.ENOSPC;
        }

        XsPermission[] perms = parent.Perms;
        if (!c.Privileged && perms[0].DomId != c.DomId)
        {
            perms = (XsPermission[])perms.Clone();
            perms[0] = perms[0] with { DomId = c.DomId };
        }

        for (int i = missing - 1; i >= 0; i--)
        {
            string childPath = path[..cuts[i]];
            Node writableParent = Writable(parent, tx);
            writableParent.Children.Add(Paths.Name(childPath));
            Changed(writableParent, tx);
            var child = new Node(childPath, i == 0 ? value.ToArray() : [], perms, []);
            Insert(child, tx);
            parent = child;
        }
        created = parent;
        return XsError.None;
    }

    public XsError Rm(Connection c, string path, Transaction? tx)
    {
        if (path == "/") return XsError.EINVAL;
        Node? n = Get(path, tx);
        if (n is null)
        {
            // Removing what is not there is fine as long as its parent exists.
            Node? parent0 = Get(Paths.Parent(path), tx);
            if (parent0 is null) return XsError.ENOENT;
            return CanRead(c, parent0) ? XsError.None : XsError.EACCES;
        }
        if ((Access(c, n, out _) & XsPerm.Write) == 0) return XsError.EACCES;
        Node parent = Writable(Get(Paths.Parent(path), tx)!, tx);
        RemoveSubtree(n, tx);
        parent.Children.Remove(Paths.Name(path));
        Changed(parent, tx);
        Announce(path, true, n, tx);
        return XsError.None;
    }

    private void RemoveSubtree(Node n, Transaction? tx)
    {
        foreach (string name in n.Children)
        {
            Node? child = Get(Paths.Child(n.Path, name), tx);
            if (child is not null) RemoveSubtree(child, tx);
        }
        Delete(n, tx);
    }

    public XsError SetPerms(Connection c, string path, XsPermission[] perms, Transaction? tx)
    {
        Node? n = Get(path, tx);
        if (n is null) return Lookup(c, path, XsPerm.None, tx, out _);
        Access(c, n, out bool owner);
        if (!owner) return XsError.EACCES;
        if (!c.Privileged && perms.Length > _quotas.PermissionsPerNode) return XsError.ENOSPC;
        // Only privileged clients may give a node away.
        if (!c.Privileged && perms[0].DomId != n.Owner) return XsError.EPERM;
        uint oldOwner = n.Owner;
        n = Writable(n, tx);
        n.Perms = perms;
        if (oldOwner != perms[0].DomId)
        {
            Dictionary<uint, int> counts = tx is null ? _nodeCount : tx.NodeDelta;
            Count(counts, oldOwner, -1);
            Count(counts, perms[0].DomId, +1);
        }
        Changed(n, tx);
        Announce(path, false, n, tx);
        return XsError.None;
    }

    // ---- transactions ----

    public XsError Commit(Transaction tx)
    {
        foreach (var (path, gen) in tx.Seen)
        {
            long now = _nodes.TryGetValue(path, out Node? n) ? n.Generation : -1;
            if (now != gen) return XsError.EAGAIN;
        }
        List<Node>? gone = null;
        foreach (var (path, node) in tx.Overlay)
        {
            _nodes.TryGetValue(path, out Node? old);
            if (old is not null && node is null) (gone ??= []).Add(old);
            if (old is not null) Count(_nodeCount, old.Owner, -1);
            if (node is null)
            {
                _nodes.Remove(path);
            }
            else
            {
                node.Generation = ++_generation;
                _nodes[path] = node;
                Count(_nodeCount, node.Owner, +1);
            }
        }
        foreach (var (path, removed) in tx.Changes)
        {
            Node? n = _nodes.GetValueOrDefault(path) ?? gone?.Find(g => g.Path == path);
            if (n is not null) _watches.Fire(path, removed, n);
        }
        return XsError.None;
    }

    /// <summary>Removes every node the domain owns (with its subtree) once the domain is released.</summary>
    public void RemoveOwnedBy(uint dom)
    {
        var doomed = new List<string>();
        foreach (var (path, n) in _nodes)
            if (n.Owner == dom && path != "/") doomed.Add(path);
        doomed.Sort(StringComparer.Ordinal);
        foreach (string path in doomed)
        {
            Node? n = _nodes.GetValueOrDefault(path);
            if (n is null) continue; // already gone with an ancestor
            Node parent = _nodes[Paths.Parent(path)];
            RemoveSubtree(n, null);
            parent.Children.Remove(Paths.Name(path));
            Changed(parent, null);
            _watches.Fire(path, true, n);
        }
    }
}
