namespace XenSharp.Dom0;

/// <summary>
/// What dom0's kernel gives its backends (Linux's gntdev, evtchn and privcmd drivers): the only way a
/// backend acts on a guest. Grant operations come in batches with a GNTST_* status per operation, as
/// GNTTABOP_map_grant_ref/unmap_grant_ref/copy take them; event channel and foreign mapping calls return
/// 0 or Xen's -errno. Nothing a guest wrote makes these throw.
/// </summary>
public interface IDom0Services
{
    // ---- grant tables ----

    /// <summary>Maps each granted page into the host (GNTMAP_host_map); each op gets its own status.</summary>
    void MapGrantRefs(Span<GrantMapOp> ops);

    /// <summary>Unmaps pages mapped by <see cref="MapGrantRefs"/>; each op gets its own status.</summary>
    void UnmapGrantRefs(Span<GrantUnmapOp> ops);

    /// <summary>Copies between granted pages and host buffers; each op gets its own status.</summary>
    void CopyGrants(Span<GrantCopyOp> ops);

    /// <summary>Maps granted pages of <paramref name="dom"/> at consecutive host addresses, in order, as gntdev
    /// maps several grants with one mmap (a multi-page ring). Returns GNTST_okay and the mapping, or the first
    /// failing page's status with nothing left mapped. This default maps a single page only.</summary>
    short MapGrantRefsContiguous(ushort dom, ReadOnlySpan<uint> refs, bool readOnly, out IGrantMapping? mapping)
    {
        mapping = null;
        if (refs.Length != 1) return XenSharp.Public.GrantTable.GNTST_general_error;
        Span<GrantMapOp> op = [new GrantMapOp(dom, refs[0], readOnly)];
        MapGrantRefs(op);
        if (op[0].Status == XenSharp.Public.GrantTable.GNTST_okay)
            mapping = new SinglePageGrantMapping(this, op[0].Address, op[0].Handle);
        return op[0].Status;
    }

    // ---- event channels ----

    /// <summary>EVTCHNOP_alloc_unbound in guest <paramref name="dom"/> for <paramref name="remoteDom"/>
    /// (the toolstack's offer of a port to a backend); returns 0 or -errno.</summary>
    long AllocUnboundInGuest(ushort dom, ushort remoteDom, out uint port);

    /// <summary>EVTCHNOP_bind_interdomain from dom0 to <paramref name="remotePort"/> of
    /// <paramref name="remoteDom"/>; <paramref name="onEvent"/> runs on the notifying thread (a guest's
    /// pCPU): it must only hand the work on. Returns 0 or -errno.</summary>
    long BindInterdomain(ushort remoteDom, uint remotePort, Action onEvent, out uint localPort);

    /// <summary>EVTCHNOP_alloc_unbound in dom0 for <paramref name="remoteDom"/> to bind; returns 0 or -errno.</summary>
    long AllocUnbound(ushort remoteDom, Action onEvent, out uint localPort);

    /// <summary>EVTCHNOP_send from dom0's <paramref name="localPort"/>; returns 0 or -errno.</summary>
    long Notify(uint localPort);

    /// <summary>EVTCHNOP_close of dom0's <paramref name="localPort"/>; returns 0 or -errno.</summary>
    long Unbind(uint localPort);

    // ---- foreign mapping ----

    /// <summary>Maps RAM frame <paramref name="gfn"/> of <paramref name="dom"/> into the host (privcmd's
    /// mmapbatch); returns 0 or -errno (-EINVAL for no RAM there, -EACCES for a read-only frame asked
    /// writable, -ESRCH for no such domain).</summary>
    long MapForeign(ushort dom, ulong gfn, bool writable, out IForeignMapping? mapping);
}

/// <summary>Granted pages mapped at consecutive host addresses; dispose to unmap them.</summary>
public interface IGrantMapping : IDisposable
{
    nint Address { get; }
    int Pages { get; }
}

internal sealed class SinglePageGrantMapping(IDom0Services dom0, nint address, uint handle) : IGrantMapping
{
    private int _disposed;
    public nint Address { get; } = address;
    public int Pages => 1;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
            dom0.UnmapGrantRef(handle);
    }
}

/// <summary>A guest page mapped into the host; dispose to let it go.</summary>
public interface IForeignMapping : IDisposable
{
    ushort DomainId { get; }
    ulong Gfn { get; }
    Span<byte> Span { get; }
}
