using XenSharp.Public;
using static XenSharp.Public.MemSharing;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Memory sharing (Xen's arch/x86/mm/mem_sharing.c): identical frames of HVM and PVH domains shared copy-on-write.
/// A privileged agent nominates a gfn (its entry becomes <see cref="P2mType.RamShared"/> and the frame gets a handle,
/// leaving the domain's reservation as in Xen, where it goes to dom_cow), then shares two nominated frames by their
/// handles (every gfn of the client's frame is pointed at the source's, and the client's frame freed) or adds a
/// shared frame at a hole of another domain. A write to a shared entry, by the guest or by the hypervisor for it,
/// gives that gfn a private copy (the last gfn of a frame takes the frame itself back). The host-wide counts are
/// Xen's: frames in the sharing state (nr_shared_mfns) and frames saved by it (nr_saved_mfns), which XENMEM_get_sharing_
/// shared_pages and freed_pages report and `xl info` shows. Locks: domains' locks (lower domid first), then this one.
/// </summary>
internal sealed unsafe class MemSharing(HostServices host)
{
    /// <summary>A frame in the sharing state: its handle and the gfns (Xen's rmap) that map it.</summary>
    private sealed class SharedFrame(ulong handle, uint mfn)
    {
        public readonly ulong Handle = handle;
        public readonly uint Mfn = mfn;
        public readonly List<(Domain Domain, ulong Gfn)> Gfns = [];
    }

    private readonly object _lock = new();
    private readonly Dictionary<uint, SharedFrame> _frames = new();
    private ulong _nextHandle = 1;
    private long _shared, _saved;

    /// <summary>nr_shared_mfns: frames in the sharing state.</summary>
    public long SharedPages => Interlocked.Read(ref _shared);

    /// <summary>nr_saved_mfns: frames sharing saved.</summary>
    public long SavedPages => Interlocked.Read(ref _saved);

    /// <summary>mem_sharing_control: sharing may be turned on for HVM and PVH domains only.</summary>
    public static long Control(Domain d, bool enable)
    {
        if (enable && (d.Pv is not null || d.IsHost))
            return -Errno.EOPNOTSUPP;
        d.MemSharingEnabled = enable;
        return 0;
    }

    /// <summary>XEN_DOMCTL_mem_sharing_op: only CONTROL (sharing on or off for the domain).</summary>
    public static long DomctlOp(Vcpu caller, ref XenDomctl op, Domain? target, out bool copyBack)
    {
        copyBack = false;
        var d = target!;
        if (d == caller.Domain)
            return -Errno.EPERM;
        ref var ms = ref op.As<ushort>();
        return (byte)ms == Public.MemSharing.XEN_DOMCTL_MEM_SHARING_CONTROL ? Control(d, (ms >> 8) != 0) : -Errno.ENOSYS;
    }

    // ---- XENMEM_sharing_op ----

    public long Op(Vcpu v, ulong arg)
    {
        if (!GuestAccess.Read(v, arg, out XenMemSharingOp mso))
            return -Errno.EFAULT;
        if (mso.Op == XENMEM_sharing_op_audit)
            return v.Domain.IsPrivileged ? Audit() : -Errno.EPERM;
        long rc = RemoteDomain(v, mso.Domain, out var d);
        if (rc != 0)
            return rc;
        if (!d!.MemSharingEnabled && (rc = Control(d, true)) != 0)
            return rc;
        switch (mso.Op)
        {
            case XENMEM_sharing_op_nominate_gfn:
                rc = Nominate(d, mso.Gfn, out ulong handle);
                mso.Handle = handle;
                return rc == 0 && !GuestAccess.Write(v, arg, mso) ? -Errno.EFAULT : rc;
            case XENMEM_sharing_op_share:
            case XENMEM_sharing_op_add_physmap:
            {
                if ((rc = RemoteDomain(v, mso.ClientDomain, out var cd)) != 0)
                    return rc;
                if (!cd!.MemSharingEnabled)
                    return -Errno.EINVAL;
                // Grant references name no gfn here (no grant is ever shared).
                if (((mso.SourceGfn | mso.ClientGfn) & XENMEM_SHARING_OP_FIELD_IS_GREF_FLAG) != 0)
                    return -Errno.EINVAL;
                return mso.Op == XENMEM_sharing_op_share
                    ? Share(d, mso.SourceGfn, mso.SourceHandle, cd, mso.ClientGfn, mso.ClientHandle)
                    : AddToPhysmap(d, mso.SourceGfn, mso.SourceHandle, cd, mso.ClientGfn);
            }
            case XENMEM_sharing_op_range_share:
            {
                if (mso.RangePad0 != 0 || mso.RangePad1 != 0 || mso.RangePad2 != 0)
                    return -Errno.EINVAL;
                if (mso.Opaque != 0 && (mso.Opaque < mso.FirstGfn || mso.Opaque > mso.LastGfn))
                    return -Errno.EINVAL;
                if ((rc = RemoteDomain(v, mso.RangeClientDomain, out var cd)) != 0)
                    return rc;
                if (!cd!.MemSharingEnabled)
                    return -Errno.EINVAL;
                // The toolstack keeps both paused while their pages are compared and shared.
                if (d.PauseCount == 0 || cd.PauseCount == 0)
                    return -Errno.EINVAL;
                if (d.P2m.MaxMappedGfn < mso.LastGfn || cd.P2m.MaxMappedGfn < mso.LastGfn || mso.FirstGfn > mso.LastGfn)
                    return -Errno.EINVAL;
                return RangeShare(d, cd, mso.Opaque != 0 ? mso.Opaque : mso.FirstGfn, mso.LastGfn);
            }
            case XENMEM_sharing_op_debug_gfn:
                return DebugGfn(d, mso.Gfn);
            case XENMEM_sharing_op_nominate_gref:
            case XENMEM_sharing_op_debug_gref:
            case XENMEM_sharing_op_debug_mfn:
            case XENMEM_sharing_op_fork:
            case XENMEM_sharing_op_fork_reset:
                return -Errno.EOPNOTSUPP;
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>rcu_lock_live_remote_domain_by_id with the default policy (XSM_DM_PRIV): another live domain, for a
    /// privileged caller.</summary>
    private static long RemoteDomain(Vcpu v, ushort domid, out Domain? d)
    {
        d = null;
        if (domid == Xen.DOMID_SELF || domid == v.Domain.DomainId)
            return -Errno.EPERM;
        d = v.Domain.Host.FindDomain(domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (d.IsDying)
            return -Errno.EINVAL;
        return v.Domain.IsPrivileged ? 0 : -Errno.EPERM;
    }

    /// <summary>nominate_page: the gfn's frame enters the sharing state (or is there already) and its handle is
    /// given. -EINVAL for a gfn that is not the domain's own writable RAM, or whose frame something else holds.</summary>
    public long Nominate(Domain d, ulong gfn, out ulong handle)
    {
        handle = 0;
        lock (d.Lock)
        lock (_lock)
            return NominateLocked(d, gfn, out handle);
    }

    private long NominateLocked(Domain d, ulong gfn, out ulong handle)
    {
        handle = 0;
        if (!d.P2m.TryLookup(gfn, out uint mfn, out var t))
            return -Errno.EINVAL;
        if (t == P2mType.RamShared)
        {
            if (!_frames.TryGetValue(mfn, out var shared))
                return -Errno.EINVAL;
            handle = shared.Handle;
            return 0;
        }
        // page_make_sharable: plain RAM of the domain itself that nothing else references (a mapping by a backend or
        // the hypervisor, a ring page) and no view of the domain changes.
        if (t != P2mType.RamRw || host.Frames.OwnerOf(mfn) != d.DomainId || host.Frames.RefsOf(mfn) != 0 ||
            d.P2m.Altp2mActive || d.P2m.DeniedAccess(gfn) != 0)
            return -Errno.EINVAL;
        var f = new SharedFrame(_nextHandle++, mfn);
        f.Gfns.Add((d, gfn));
        _frames[mfn] = f;
        // The new type moves the generation: no vCPU keeps writing the frame through a cached translation.
        d.P2m.Set(gfn, mfn, P2mType.RamShared);
        d.UnchargePages(1);
        Interlocked.Increment(ref _shared);
        handle = f.Handle;
        return 0;
    }

    /// <summary>share_pages: every gfn of the client's frame maps the source's; the client's frame is freed.</summary>
    public long Share(Domain sd, ulong sgfn, ulong sh, Domain cd, ulong cgfn, ulong ch)
    {
        var (first, second) = sd.DomainId <= cd.DomainId ? (sd, cd) : (cd, sd);
        lock (first.Lock)
        lock (second.Lock)
        lock (_lock)
            return ShareLocked(sd, sgfn, sh, cd, cgfn, ch);
    }

    private long ShareLocked(Domain sd, ulong sgfn, ulong sh, Domain cd, ulong cgfn, ulong ch)
    {
        var sf = FrameAt(sd, sgfn);
        var cf = FrameAt(cd, cgfn);
        if (sf is not null && cf == sf)
            return 0; // the same frame already
        if (sf is null || sf.Handle != sh)
            return XENMEM_SHARING_OP_S_HANDLE_INVALID;
        if (cf is null || cf.Handle != ch)
            return XENMEM_SHARING_OP_C_HANDLE_INVALID;
        foreach (var (d, gfn) in cf.Gfns)
        {
            d.P2m.Set(gfn, sf.Mfn, P2mType.RamShared);
            sf.Gfns.Add((d, gfn));
        }
        _frames.Remove(cf.Mfn);
        host.Frames.Free(cf.Mfn);
        Interlocked.Decrement(ref _shared);
        Interlocked.Increment(ref _saved);
        return 0;
    }

    /// <summary>add_to_physmap: a hole of the client gets the source's shared frame.</summary>
    public long AddToPhysmap(Domain sd, ulong sgfn, ulong sh, Domain cd, ulong cgfn)
    {
        var (first, second) = sd.DomainId <= cd.DomainId ? (sd, cd) : (cd, sd);
        lock (first.Lock)
        lock (second.Lock)
        lock (_lock)
        {
            var sf = FrameAt(sd, sgfn);
            if (sf is null || sf.Handle != sh)
                return XENMEM_SHARING_OP_S_HANDLE_INVALID;
            if (cgfn > P2m.MaxGfn || cd.P2m.TryLookup(cgfn, out _, out _))
                return XENMEM_SHARING_OP_C_HANDLE_INVALID;
            cd.P2m.Set(cgfn, sf.Mfn, P2mType.RamShared);
            sf.Gfns.Add((cd, cgfn));
            Interlocked.Increment(ref _saved);
            return 0;
        }
    }

    /// <summary>range_share: each gfn of the range nominated in both domains and shared; gfns that cannot be are skipped.</summary>
    private long RangeShare(Domain sd, Domain cd, ulong start, ulong last)
    {
        var (first, second) = sd.DomainId <= cd.DomainId ? (sd, cd) : (cd, sd);
        lock (first.Lock)
        lock (second.Lock)
        lock (_lock)
        {
            for (ulong gfn = start; gfn <= last && gfn <= P2m.MaxGfn; gfn++)
            {
                if (NominateLocked(sd, gfn, out ulong sh) != 0 || NominateLocked(cd, gfn, out ulong ch) != 0)
                    continue;
                ShareLocked(sd, gfn, sh, cd, gfn, ch);
            }
            return 0;
        }
    }

    /// <summary>debug_gfn: how many gfns map the gfn's shared frame; -EINVAL for a gfn that is not shared.</summary>
    private long DebugGfn(Domain d, ulong gfn)
    {
        lock (_lock)
        {
            var f = FrameAt(d, gfn);
            if (f is null)
                return -Errno.EINVAL;
            host.Log($"(d{d.DomainId}) sharing debug: gfn {gfn:x} mfn {f.Mfn:x} handle {f.Handle:x} gfns {f.Gfns.Count}");
            return f.Gfns.Count;
        }
    }

    /// <summary>audit: the errors found between the shared frames, their gfns and the p2m entries, and the count.</summary>
    private long Audit()
    {
        lock (_lock)
        {
            int errors = 0;
            foreach (var f in _frames.Values)
            {
                if (f.Gfns.Count == 0)
                    errors++;
                foreach (var (d, gfn) in f.Gfns)
                    if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || mfn != f.Mfn || t != P2mType.RamShared)
                        errors++;
            }
            if (_frames.Count != SharedPages)
                errors++;
            return errors;
        }
    }

    private SharedFrame? FrameAt(Domain d, ulong gfn) =>
        d.P2m.TryLookup(gfn, out uint mfn, out var t) && t == P2mType.RamShared && _frames.TryGetValue(mfn, out var f) ? f : null;

    /// <summary>mem_sharing_unshare_page for a write (the guest's, or the hypervisor's for it): the gfn gets a private
    /// copy, or the frame itself when it is the last gfn sharing it and the domain's own. False, with the domain
    /// crashed, when the domain's reservation has no room for the copy (Xen crashes it when no sharing ring listens).</summary>
    public bool Unshare(Domain d, ulong gfn)
    {
        lock (d.Lock)
        lock (_lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || t != P2mType.RamShared)
                return t != P2mType.Invalid; // unshared meanwhile
            if (!_frames.TryGetValue(mfn, out var f))
                return false;
            bool last = f.Gfns.Count == 1;
            if (!d.TryChargePages(1))
                return Crash(d, gfn);
            uint target = mfn;
            if (!last || host.Frames.OwnerOf(mfn) != d.DomainId)
            {
                if (!host.Frames.TryAllocate(d.DomainId, FrameType.Ram, out target))
                {
                    d.UnchargePages(1);
                    return Crash(d, gfn);
                }
                new ReadOnlySpan<byte>(host.Frames.PageAddress(mfn), FrameTable.PageSize)
                    .CopyTo(new Span<byte>(host.Frames.PageAddress(target), FrameTable.PageSize));
            }
            f.Gfns.Remove((d, gfn));
            d.P2m.Set(gfn, target, P2mType.RamRw);
            if (last)
            {
                _frames.Remove(mfn);
                if (target != mfn)
                    host.Frames.Free(mfn);
                Interlocked.Decrement(ref _shared);
            }
            else
                Interlocked.Decrement(ref _saved);
            return true;
        }
    }

    private bool Crash(Domain d, ulong gfn)
    {
        host.Log($"d{d.DomainId}: no memory to unshare gfn {gfn:x}: crashing the domain");
        host.ShutdownDomain(d, Public.Sched.SHUTDOWN_crash);
        return false;
    }

    /// <summary>A shared entry of <paramref name="d"/> at <paramref name="mfn"/> went from its p2m (the caller holds the
    /// domain's lock): the gfn no longer shares it, and the frame is freed with its last gfn.</summary>
    public void EntryRemoved(Domain d, uint mfn)
    {
        lock (_lock)
        {
            if (!_frames.TryGetValue(mfn, out var f))
                return;
            int i = f.Gfns.FindIndex(g => g.Domain == d && !(d.P2m.TryLookup(g.Gfn, out uint m, out var t) && m == mfn && t == P2mType.RamShared));
            if (i < 0)
                return;
            f.Gfns.RemoveAt(i);
            if (f.Gfns.Count == 0)
            {
                _frames.Remove(mfn);
                host.Frames.Free(mfn);
                Interlocked.Decrement(ref _shared);
            }
            else
                Interlocked.Decrement(ref _saved);
        }
    }
}
