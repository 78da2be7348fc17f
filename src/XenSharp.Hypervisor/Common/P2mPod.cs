namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Populate-on-demand memory of one domain (Xen's p2m-pod): the toolstack marks the guest's RAM as PoD
/// entries and sizes a cache of frames (the target); a guest's first touch of a PoD entry maps a frame from
/// the cache, so a guest that starts with less memory than its memory map covers runs until its balloon
/// driver has given back the difference. Cache frames belong to the domain and count in its tot_pages.
/// A touch with the cache empty crashes the domain, as Xen does. Every mutator runs under the domain's lock.
/// </summary>
internal sealed unsafe class P2mPod
{
    private readonly Domain _d;
    private readonly Stack<uint> _cache = new();
    private long _entryCount;

    public P2mPod(Domain d) => _d = d;

    /// <summary>Frames in the cache (Xen's pod.count).</summary>
    public long Count { get { lock (_d.Lock) return _cache.Count; } }

    /// <summary>PoD entries outstanding in the p2m (Xen's pod.entry_count).</summary>
    public long EntryCount { get { lock (_d.Lock) return _entryCount; } }

    /// <summary>XENMEM_set_pod_target (p2m_pod_set_mem_target): grows the cache so that the domain's
    /// populated pages plus the cache make <paramref name="target"/>, never beyond the outstanding entries
    /// once the guest runs. A target below tot_pages is left to the balloon driver. 0 or -errno.</summary>
    public long SetMemTarget(ulong target)
    {
        lock (_d.Lock)
        {
            long populated = _d.TotPages - _cache.Count;
            if (populated > 0 && _entryCount == 0)
                return 0; // not a PoD domain (or no longer one)
            if (_d.IsDying || (long)target < _d.TotPages)
                return 0;
            long podTarget = (long)target - populated;
            if (populated > 0 && podTarget > _entryCount)
                podTarget = _entryCount;
            return SetCacheTarget(podTarget);
        }
    }

    /// <summary>Grows or shrinks the cache to <paramref name="pages"/> frames; -ENOMEM when the domain's
    /// reservation or machine memory cannot give more.</summary>
    private long SetCacheTarget(long pages)
    {
        while (_cache.Count < pages)
        {
            if (!_d.TryChargePages(1))
                return -Public.Errno.ENOMEM;
            if (!_d.Host.Frames.TryAllocate(_d.DomainId, FrameType.Ram, out uint mfn))
            {
                _d.UnchargePages(1);
                return -Public.Errno.ENOMEM;
            }
            _cache.Push(mfn);
        }
        while (_cache.Count > pages)
        {
            _d.Host.Frames.Free(_cache.Pop());
            _d.UnchargePages(1);
        }
        return 0;
    }

    /// <summary>guest_physmap_mark_populate_on_demand: makes [gfn, gfn+pages) PoD entries. -EBUSY, with
    /// nothing changed, when one of them is populated RAM.</summary>
    public long MarkPopulateOnDemand(ulong gfn, ulong pages)
    {
        if (gfn + pages - 1 > P2m.MaxGfn)
            return -Public.Errno.EINVAL;
        lock (_d.Lock)
        {
            for (ulong i = 0; i < pages; i++)
                if (_d.P2m.TryLookup(gfn + i, out _, out var t) && t is P2mType.RamRw or P2mType.RamRo)
                    return -Public.Errno.EBUSY;
            // Entries replaced here leave the count through ReleaseOld.
            for (ulong i = 0; i < pages; i++)
                _d.ReleaseOld(_d.P2m.Set(gfn + i, 0, P2mType.PopulateOnDemand));
            _entryCount += (long)pages;
            return 0;
        }
    }

    /// <summary>
    /// One page given back by XENMEM_decrease_reservation (p2m_pod_decrease_reservation and guest_remove_page):
    /// a PoD entry just goes; populated RAM goes to the cache while the outstanding entries exceed it (so the
    /// balloon driver's own touches do not drain it), and otherwise back to the machine. False when there
    /// is no RAM or PoD entry at <paramref name="gfn"/>.
    /// </summary>
    public bool DecreaseReservation(ulong gfn)
    {
        lock (_d.Lock)
        {
            if (!_d.P2m.TryLookup(gfn, out uint mfn, out var t))
                return false;
            switch (t)
            {
                case P2mType.PopulateOnDemand:
                    _d.P2m.Remove(gfn);
                    _entryCount--;
                    break;
                case P2mType.RamRw or P2mType.RamRo:
                    if (!_d.IsDying && _entryCount > _cache.Count && _d.Host.Frames.RefsOf(mfn) == 0)
                    {
                        _d.P2m.Remove(gfn);
                        // The reservation keeps the page for the cache. A sibling vCPU may still store through a
                        // stale translation of this frame, so the cache takes a fresh frame and this one waits out
                        // the flushes like any freed frame; with no frame to spare it is scrubbed and kept.
                        if (_d.Host.Frames.TryAllocate(_d.DomainId, FrameType.Ram, out uint fresh))
                        {
                            _d.Host.Frames.Free(mfn);
                            mfn = fresh;
                        }
                        else
                            _d.Host.Frames.Scrub(mfn);
                        _cache.Push(mfn);
                    }
                    else
                        _d.RemovePage(gfn);
                    break;
                default:
                    return false;
            }
            // More cache than entries left to fill: the surplus is the machine's again.
            if (_entryCount < _cache.Count)
                SetCacheTarget(_entryCount);
            return true;
        }
    }

    /// <summary>p2m_pod_demand_populate: maps a cache frame at a PoD entry the guest touched. With the cache
    /// empty the domain is crashed (Xen's "out of PoD memory") and the access fails.</summary>
    public bool DemandPopulate(ulong gfn)
    {
        lock (_d.Lock)
        {
            if (!_d.P2m.TryLookup(gfn, out _, out var t) || t != P2mType.PopulateOnDemand)
                return t != P2mType.Invalid; // another vCPU filled it meanwhile
            if (_d.IsDying || _d.State is DomainRunState.Shutdown)
                return false;
            if (_cache.Count == 0)
            {
                _d.Host.Log($"d{_d.DomainId}: out of PoD memory (tot_pages {_d.TotPages}, PoD entries {_entryCount}): crashing the domain");
                _d.Host.ShutdownDomain(_d, Public.Sched.SHUTDOWN_crash);
                return false;
            }
            _d.P2m.Set(gfn, _cache.Pop(), P2mType.RamRw);
            _entryCount--;
            return true;
        }
    }

    /// <summary>A PoD entry was replaced by something else (populate_physmap, add_to_physmap, teardown); caller holds the lock.</summary>
    internal void EntryReplaced() => _entryCount--;

    /// <summary>Returns the cache to the machine (domain teardown; the entries go with the p2m).</summary>
    public void Teardown()
    {
        lock (_d.Lock)
        {
            SetCacheTarget(0);
            _entryCount = 0;
        }
    }
}
