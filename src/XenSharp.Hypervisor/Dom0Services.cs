using XenSharp.Dom0;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Hypervisor;

/// <summary>
/// Domain-0's kernel services over the hypervisor (the role of Linux's gntdev, evtchn and privcmd in
/// dom0): grant maps, unmaps and copies against the granting domain's real table, event channels with a
/// Domain-0 end, and foreign mappings of guest frames. Backends reach guests only through
/// <see cref="IDom0Services"/>; the toolstack uses the throwing forms below.
/// </summary>
public sealed unsafe class Dom0Services : IDom0Services
{
    private readonly XenHypervisor _hv;

    internal Dom0Services(XenHypervisor hv) => _hv = hv;

    private Domain Dom0 => _hv.Dom0;

    // ================= IDom0Services =================

    public void MapGrantRefs(Span<GrantMapOp> ops)
    {
        for (int i = 0; i < ops.Length; i++)
        {
            ref var o = ref ops[i];
            var op = new GnttabMapGrantRef { Dom = o.Dom, Ref = o.Ref, Flags = GNTMAP_host_map | (o.ReadOnly ? GNTMAP_readonly : 0) };
            o.Status = Dom0.Gnttab.Map(ref op, host: true, out byte* p);
            o.Handle = o.Status == GNTST_okay ? op.Handle : 0;
            o.Address = o.Status == GNTST_okay ? (nint)p : 0;
        }
    }

    public void UnmapGrantRefs(Span<GrantUnmapOp> ops)
    {
        for (int i = 0; i < ops.Length; i++)
            ops[i].Status = Dom0.Gnttab.Unmap(ops[i].Handle, 0, host: true);
    }

    public void CopyGrants(Span<GrantCopyOp> ops)
    {
        for (int i = 0; i < ops.Length; i++)
        {
            ref var o = ref ops[i];
            if (o.Local is null && o.Length != 0)
            {
                o.Status = GNTST_bad_copy_arg;
                continue;
            }
            o.Status = PinForHostCopy(o.Dom, o.Ref, o.Offset, o.Length, o.ToGuest, out var d, out uint mfn);
            if (o.Status != GNTST_okay)
                continue;
            byte* page = _hv.Frames.PageAddress(mfn) + o.Offset;
            if (o.ToGuest)
                Buffer.MemoryCopy(o.Local, page, o.Length, o.Length);
            else
                Buffer.MemoryCopy(page, o.Local, o.Length, o.Length);
            d!.Gnttab.ReleasePin(o.Ref, mfn, readOnly: !o.ToGuest);
        }
    }

    public short MapGrantRefsContiguous(ushort dom, ReadOnlySpan<uint> refs, bool readOnly, out IGrantMapping? mapping)
    {
        mapping = null;
        if (refs.Length == 0)
            return GNTST_general_error;
        var ops = new GrantMapOp[refs.Length];
        for (int i = 0; i < refs.Length; i++) ops[i] = new GrantMapOp(dom, refs[i], readOnly);
        MapGrantRefs(ops);
        short st = GNTST_okay;
        foreach (var o in ops)
            if (o.Status != GNTST_okay) { st = o.Status; break; }
        byte* window = null;
        ulong bytes = (ulong)refs.Length << FrameTable.PageShift;
        if (st == GNTST_okay && refs.Length > 1)
        {
            // A second view of each frame's memfd page, side by side in one reservation.
            window = HostMemory.Reserve(bytes);
            for (int i = 0; i < ops.Length && st == GNTST_okay; i++)
            {
                uint mfn = (uint)(((byte*)ops[i].Address - _hv.Frames.Base) >> FrameTable.PageShift);
                if (!_hv.Frames.TryGetBacking(mfn, out var fd, out long offset)
                    || !HostMemory.MapFileAt(window + ((long)i << FrameTable.PageShift), FrameTable.PageSize, fd, offset))
                    st = GNTST_general_error;
            }
        }
        if (st != GNTST_okay)
        {
            if (window is not null) HostMemory.Release(window, bytes);
            foreach (var o in ops)
                if (o.Status == GNTST_okay) Dom0.Gnttab.Unmap(o.Handle, 0, host: true);
            return st;
        }
        var dom0 = Dom0;
        uint[] handles = [.. ops.Select(o => o.Handle)];
        mapping = new ContiguousGrantMapping(window is null ? ops[0].Address : (nint)window, refs.Length, () =>
        {
            if (window is not null) HostMemory.Release(window, bytes);
            foreach (uint h in handles) dom0.Gnttab.Unmap(h, 0, host: true);
        });
        return GNTST_okay;
    }

    private sealed class ContiguousGrantMapping(nint address, int pages, Action release) : IGrantMapping
    {
        private Action? _release = release;
        public nint Address { get; } = address;
        public int Pages { get; } = pages;
        public void Dispose() => Interlocked.Exchange(ref _release, null)?.Invoke();
    }

    public long AllocUnboundInGuest(ushort dom, ushort remoteDom, out uint port)
    {
        port = 0;
        var d = _hv.FindDomain(dom);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        return d.Evtchn.AllocUnbound(remoteDom, out port);
    }

    public long BindInterdomain(ushort remoteDom, uint remotePort, Action onEvent, out uint localPort)
    {
        localPort = 0;
        var remote = _hv.FindDomain(remoteDom);
        if (remote is null || remote.IsHost)
            return -Errno.ESRCH;
        return Dom0.Evtchn.BindInterdomain(remote, remotePort, out localPort, onEvent);
    }

    public long AllocUnbound(ushort remoteDom, Action onEvent, out uint localPort)
    {
        localPort = 0;
        var remote = _hv.FindDomain(remoteDom);
        if (remote is null || remote.IsHost)
            return -Errno.ESRCH;
        return Dom0.Evtchn.AllocUnbound(remoteDom, out localPort, onEvent);
    }

    public long Notify(uint localPort) => Dom0.Evtchn.Send(localPort);

    public long Unbind(uint localPort) => Dom0.Evtchn.Close(localPort);

    public long MapForeign(ushort dom, ulong gfn, bool writable, out IForeignMapping? mapping)
    {
        mapping = null;
        var d = _hv.FindDomain(dom);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        long rc = TryMap(d, gfn, writable, out var m);
        mapping = m;
        return rc;
    }

    // ================= the toolstack's forms (HypervisorException on failure) =================

    /// <summary>Allocates a port in guest <paramref name="domid"/> that <paramref name="remoteDomid"/> (by default Domain-0) may bind.</summary>
    public uint AllocUnboundEventChannel(ushort domid, ushort remoteDomid = 0)
    {
        long rc = _hv.Guest(domid).Evtchn.AllocUnbound(remoteDomid, out uint port);
        if (rc != 0)
            throw new HypervisorException($"no free event channel in domain {domid}", (int)-rc);
        return port;
    }

    /// <summary>Binds a Domain-0 port to an unbound guest port offered to Domain-0; <paramref name="onEvent"/> runs when the guest notifies
    /// (on the notifying thread: keep it short and non-blocking).</summary>
    public Dom0EventChannel BindInterdomain(ushort remoteDomid, uint remotePort, Action onEvent)
    {
        var remote = _hv.Guest(remoteDomid);
        long rc = Dom0.Evtchn.BindInterdomain(remote, remotePort, out uint local, onEvent);
        if (rc != 0)
            throw new HypervisorException($"port {remotePort} of domain {remoteDomid} is not an unbound port for Domain-0", (int)-rc);
        return new Dom0EventChannel(this, local, remoteDomid);
    }

    /// <summary>Allocates a Domain-0 port that guest <paramref name="remoteDomid"/> may bind with EVTCHNOP_bind_interdomain.</summary>
    public Dom0EventChannel AllocUnboundInDom0(ushort remoteDomid, Action onEvent)
    {
        _hv.Guest(remoteDomid);
        long rc = Dom0.Evtchn.AllocUnbound(remoteDomid, out uint port, onEvent);
        if (rc != 0)
            throw new HypervisorException("no free event channel in Domain-0", (int)-rc);
        return new Dom0EventChannel(this, port, remoteDomid);
    }

    /// <summary>Maps a RAM frame of a guest into the host (privcmd's foreign mapping).</summary>
    public GuestMapping MapGuestFrame(ushort domid, ulong gfn, bool writable = true)
    {
        long rc = TryMap(_hv.Guest(domid), gfn, writable, out var m);
        return rc switch
        {
            0 => m!,
            -Errno.EACCES => throw new HypervisorException($"gfn {gfn:x} of domain {domid} is read-only", Errno.EACCES),
            _ => throw new HypervisorException($"domain {domid} has no RAM at gfn {gfn:x}", (int)-rc),
        };
    }

    private long TryMap(Domain d, ulong gfn, bool writable, out GuestMapping? mapping)
    {
        mapping = null;
        uint mfn;
        // A shared page gets its own copy first: the mapping may write it.
        if (d.P2m.TryLookup(gfn, out _, out var st) && st == P2mType.RamShared)
            d.Host.Sharing.Unshare(d, gfn);
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out mfn, out var t) || t is not (P2mType.RamRw or P2mType.RamRo or P2mType.XenShared))
            {
                if (!P2m.IsPaging(t))
                    return -Errno.EINVAL;
                // Paged out: the pager is asked for it; the caller tries again (privcmd's paged error).
                Common.MemPaging.Populate(d, gfn, null);
                return -Errno.ENOENT;
            }
            if (writable && t == P2mType.RamRo)
                return -Errno.EACCES;
            _hv.Frames.AddRef(mfn);
        }
        var frames = _hv.Frames;
        // A writable mapping may be written until it goes: log-dirty sees the page as written when it is unmapped.
        mapping = new GuestMapping(frames.PageAddress(mfn), d.DomainId, gfn, writable, () =>
        {
            if (writable) d.P2m.MarkDirty(gfn);
            frames.Release(mfn, dropRef: true);
        });
        return 0;
    }

    /// <summary>Maps grant <paramref name="gref"/> of domain <paramref name="domid"/> into the host; returns the GNTST_* status.</summary>
    public short TryMapGrant(ushort domid, uint gref, bool readOnly, out GrantMapping? mapping)
    {
        mapping = null;
        var op = new GnttabMapGrantRef { Dom = domid, Ref = gref, Flags = GNTMAP_host_map | (readOnly ? GNTMAP_readonly : 0) };
        short st = Dom0.Gnttab.Map(ref op, host: true, out byte* p);
        if (st != GNTST_okay)
            return st;
        uint handle = op.Handle;
        var dom0 = Dom0;
        mapping = new GrantMapping(p, domid, gref, readOnly, () => dom0.Gnttab.Unmap(handle, 0, host: true));
        return GNTST_okay;
    }

    /// <summary>Copies from a granted page (GNTTABOP_copy with a source gref); returns the GNTST_* status.</summary>
    public short GrantCopyFrom(ushort domid, uint gref, int offset, Span<byte> destination) =>
        Dom0Extensions.GrantCopyFrom(this, domid, gref, offset, destination);

    /// <summary>Copies into a granted page (GNTTABOP_copy with a destination gref); returns the GNTST_* status.</summary>
    public short GrantCopyTo(ushort domid, uint gref, int offset, ReadOnlySpan<byte> source) =>
        Dom0Extensions.GrantCopyTo(this, domid, gref, offset, source);

    private short PinForHostCopy(ushort domid, uint gref, int offset, int length, bool write, out Domain? d, out uint mfn)
    {
        mfn = 0;
        d = null;
        if (offset < 0 || length < 0 || offset + length > FrameTable.PageSize)
            return GNTST_bad_copy_arg;
        d = _hv.FindDomain(domid);
        if (d is null || d.IsHost)
            return GNTST_bad_domain;
        short st = d.Gnttab.Acquire(0, gref, readOnly: !write, allowSubPage: true, out mfn, out int subOff, out int subLen);
        if (st != GNTST_okay)
            return st;
        if (offset < subOff || offset + length > subOff + subLen)
        {
            d.Gnttab.ReleasePin(gref, mfn, readOnly: !write);
            return GNTST_general_error;
        }
        return GNTST_okay;
    }
}
