using XenSharp.Dom0;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Backends.Block;

/// <summary>
/// feature-persistent for one ring: the frontend reuses a fixed set of grants, so each is mapped (writable,
/// as the protocol allows) the first time a request names it and stays mapped until the ring goes. Data then
/// moves with a plain copy to or from the mapped page instead of a grant copy. At most <see cref="Max"/>
/// grants are kept, as Linux's blkback bounds them per ring; beyond that, or for a grant that cannot be
/// mapped writable, the request falls back to grant copies.
/// </summary>
internal sealed class BlkifPersistentGrants(IDom0Services dom0, ushort domain, int max)
{
    /// <summary>Linux blkback's default bound per ring (its max_persistent_grants).</summary>
    public const int DefaultMax = 1056;

    private readonly Lock _lock = new();
    private readonly Dictionary<uint, (nint Address, uint Handle)> _grants = new(max);

    public int Max { get; } = max;

    public int Count
    {
        get { lock (_lock) return _grants.Count; }
    }

    /// <summary>The mapped page of <paramref name="gref"/>, mapping it now if there is room; 0 when the
    /// caller has to copy instead.</summary>
    public nint Get(uint gref)
    {
        lock (_lock)
        {
            if (_grants.TryGetValue(gref, out var g)) return g.Address;
            if (_grants.Count >= Max) return 0;
            Span<GrantMapOp> op = [new GrantMapOp(domain, gref, readOnly: false)];
            dom0.MapGrantRefs(op);
            if (op[0].Status != GNTST_okay) return 0;
            _grants.Add(gref, (op[0].Address, op[0].Handle));
            return op[0].Address;
        }
    }

    /// <summary>Unmaps every kept grant (the ring is going; nothing is in flight).</summary>
    public void UnmapAll()
    {
        lock (_lock)
        {
            Span<GrantUnmapOp> op = stackalloc GrantUnmapOp[1];
            foreach (var g in _grants.Values)
            {
                op[0] = new GrantUnmapOp(g.Handle);
                dom0.UnmapGrantRefs(op);
            }
            _grants.Clear();
        }
    }
}
