using XenSharp.Cpu;
using XenSharp.Public;
using static XenSharp.Public.MemPaging;
using static XenSharp.Public.VmEvent;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Memory paging (Xen's arch/x86/mm/mem_paging.c) for HVM and PVH domains: a pager in Domain-0 (Debian's xenpaging)
/// enables the domain's paging ring, nominates gfns (their entries become <see cref="P2mType.PagingOut"/>: the guest
/// can no longer reach them, the pager can still map and save them), evicts them (the frame is freed and leaves the
/// reservation; the entry becomes <see cref="P2mType.Paged"/>), and loads them back (prep: a new frame filled from the
/// pager's buffer). Whoever needs a gfn in a paging state asks for it (populate): the entry becomes
/// <see cref="P2mType.PagingIn"/> and a VM_EVENT_REASON_MEM_PAGING request goes on the ring. A guest vCPU that
/// touched it, by data access, instruction fetch or a page-table entry its walk read, is paused with
/// VM_EVENT_FLAG_VCPU_PAUSED and runs the instruction again once the pager answers; the guest sees no fault. The
/// hypervisor's own users (a foreign mapping, a grant, a copy for a hypercall) fail this time with Xen's errors
/// (-ENOENT, GNTST_eagain, -EFAULT), and their callers retry as Xen's do. Locks: the domain's lock, then the ring's.
/// </summary>
internal static unsafe class MemPaging
{
    /// <summary>Xen's p2m_type_t numbers, which a request carries in vm_event_paging.p2mt.</summary>
    private const uint p2m_ram_paging_out = 8, p2m_ram_paged = 9, p2m_ram_paging_in = 10;

    private static uint XenType(P2mType t) => t switch
    {
        P2mType.PagingOut => p2m_ram_paging_out,
        P2mType.Paged => p2m_ram_paged,
        _ => p2m_ram_paging_in,
    };

    // ---- XEN_DOMCTL_vm_event_op, mode PAGING ----

    public static long VmEventOp(Vcpu caller, Domain d, ref XenDomctlVmEventOp ve, out bool copyBack)
    {
        copyBack = false;
        switch (ve.Op)
        {
            case XEN_VM_EVENT_ENABLE:
            {
                // Hardware-assisted paging only: a PV domain has none. No PoD guest (Xen's EXDEV), whose entries
                // would need populating before they could be paged.
                if (d.Pv is not null)
                    return -Errno.ENODEV;
                if (d.Pod.EntryCount > 0)
                    return -Errno.EXDEV;
                long rc;
                uint port;
                lock (d.Lock)
                    rc = VmEventRing.Enable(d, caller.Domain.DomainId, out port, paging: true);
                if (rc == 0)
                {
                    ve.Port = port;
                    copyBack = true;
                }
                return rc;
            }
            case XEN_VM_EVENT_DISABLE:
                if (d.PagingRing is not { } ring)
                    return -Errno.EINVAL;
                d.Host.PauseDomain(d);
                try
                {
                    Disable(d, ring);
                }
                finally
                {
                    d.Host.UnpauseDomain(d);
                }
                return 0;
            case XEN_VM_EVENT_RESUME:
                if (d.PagingRing is not { } r)
                    return -Errno.ENODEV;
                r.Resume();
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>The ring goes (its paused vCPUs run again). Pages that still have their frame (nominated, or on their
    /// way in after a nomination) become plain RAM again; evicted ones stay paged, and a guest that touches one later
    /// is crashed, as Xen does with no pager.</summary>
    public static void Disable(Domain d, VmEventRing ring)
    {
        lock (d.Lock)
        {
            foreach (var (gfn, mfn, t) in d.P2m.Entries().ToList())
                if (t is P2mType.PagingOut or P2mType.PagingIn && mfn != 0)
                    d.P2m.Set(gfn, mfn, P2mType.RamRw);
        }
        ring.Disable();
    }

    // ---- XENMEM_paging_op ----

    public static long Op(Vcpu v, ulong arg)
    {
        if (!GuestAccess.Read(v, arg, out XenMemPagingOp mpo))
            return -Errno.EFAULT;
        // rcu_lock_live_remote_domain_by_id, then xsm_mem_paging (XSM_DM_PRIV).
        if (mpo.Domain == Xen.DOMID_SELF || mpo.Domain == v.Domain.DomainId)
            return -Errno.EPERM;
        var d = v.Domain.Host.FindDomain(mpo.Domain);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (d.IsDying)
            return -Errno.EINVAL;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (d.PagingRing is null)
            return -Errno.ENODEV;
        switch (mpo.Op)
        {
            case XENMEM_paging_op_nominate:
                return Nominate(d, mpo.Gfn);
            case XENMEM_paging_op_evict:
                return Evict(d, mpo.Gfn);
            case XENMEM_paging_op_prep:
            {
                // guest_handle_okay: the buffer must be the caller's readable memory (checked before anything else).
                var buffer = new byte[FrameTable.PageSize];
                bool haveBuffer = mpo.Buffer != 0;
                if (haveBuffer && !GuestAccess.CopyFrom(v, mpo.Buffer, buffer))
                    return -Errno.EINVAL;
                long rc = Prepare(d, mpo.Gfn, haveBuffer ? buffer : null);
                return rc == 0 && !GuestAccess.Write(v, arg, mpo) ? -Errno.EFAULT : rc;
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>nominate: plain RAM of the domain's own that nothing else holds (-EBUSY otherwise, the pager's
    /// "unpageable") leaves the guest's reach, its frame kept until evict.</summary>
    public static long Nominate(Domain d, ulong gfn)
    {
        var frames = d.Host.Frames;
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || t != P2mType.RamRw)
                return -Errno.EBUSY;
            if (frames.OwnerOf(mfn) != d.DomainId || frames.RefsOf(mfn) != 0 || mfn == d.SharedInfoMfn)
                return -Errno.EBUSY;
            // The type change moves the generation: a vCPU drops its cached translations when it next enters.
            d.P2m.Set(gfn, mfn, P2mType.PagingOut);
        }
        // A running vCPU checks the generation only between blocks, so it could still write the frame after the pager
        // read it: as Xen flushes the guest's TLBs before the nomination returns, each running vCPU is made to leave
        // the CPU once (it takes the new generation when it comes back).
        if (d.Vcpus.Any(v => v.IsRunning))
        {
            d.Host.PauseDomain(d);
            d.Host.UnpauseDomain(d);
        }
        return 0;
    }

    /// <summary>evict: a nominated gfn that nobody took since gives its frame back; -EBUSY when it was touched (it is
    /// on its way in) or something holds the frame now.</summary>
    public static long Evict(Domain d, ulong gfn)
    {
        var frames = d.Host.Frames;
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || t != P2mType.PagingOut)
                return -Errno.EBUSY;
            if (frames.RefsOf(mfn) != 0)
                return -Errno.EBUSY;
            d.P2m.Set(gfn, 0, P2mType.Paged);
            frames.Free(mfn);
            d.UnchargePages(1);
            Interlocked.Increment(ref d.PagedPages);
            return 0;
        }
    }

    /// <summary>prep (libxc's load): a paged gfn gets a new frame filled from <paramref name="contents"/>; a gfn that
    /// kept its frame (nominated, never evicted) only becomes RAM again. -ENOENT for a gfn in no paging-in state,
    /// -EINVAL without a buffer where a frame is needed, -ENOMEM when the reservation or the host has no room.</summary>
    public static long Prepare(Domain d, ulong gfn, byte[]? contents)
    {
        var frames = d.Host.Frames;
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || t is not (P2mType.PagingIn or P2mType.Paged))
                return -Errno.ENOENT;
            if (mfn == 0)
            {
                if (contents is null)
                    return -Errno.EINVAL;
                if (!d.TryChargePages(1))
                    return -Errno.ENOMEM;
                if (!frames.TryAllocate(d.DomainId, FrameType.Ram, out mfn))
                {
                    d.UnchargePages(1);
                    return -Errno.ENOMEM;
                }
                contents.CopyTo(new Span<byte>(frames.PageAddress(mfn), FrameTable.PageSize));
                Interlocked.Decrement(ref d.PagedPages);
            }
            d.P2m.Set(gfn, mfn, P2mType.RamRw);
            return 0;
        }
    }

    /// <summary>p2m_mem_paging_resume for a response on the paging ring: a gfn on its way in that has its frame
    /// becomes RAM (the pager answered without prep for a page it never evicted). Xen skips responses with
    /// MEM_PAGING_DROP_PAGE; xenpaging leaves the response's paging flags unset, and a dropped gfn is no longer in
    /// the p2m anyway, so only the entry's state decides.</summary>
    public static void Resume(Domain d, in VmEventSt rsp)
    {
        lock (d.Lock)
        {
            ulong gfn = rsp.MemPaging.Gfn;
            if (d.P2m.TryLookup(gfn, out uint mfn, out var t) && t == P2mType.PagingIn && mfn != 0)
                d.P2m.Set(gfn, mfn, P2mType.RamRw);
        }
    }

    /// <summary>
    /// p2m_mem_paging_populate: <paramref name="gfn"/> is wanted. A nominated or evicted gfn goes on its way in and
    /// the pager is told (EVICT_FAIL when it was only nominated); with <paramref name="v"/>, a vCPU of the domain that
    /// touched it, that vCPU is paused until the pager answers, whatever the state, and the request says so.
    /// Returns false when <paramref name="v"/> must leave the CPU (paused, or the domain crashed); the caller leaves
    /// the instruction to run again. Without a ring the domain is crashed, as Xen does.
    /// </summary>
    public static bool Populate(Domain d, ulong gfn, Vcpu? v)
    {
        if (v is not null && v.Domain != d)
            v = null;
        lock (d.Lock)
        {
            if (!d.P2m.TryLookup(gfn, out uint mfn, out var t) || !P2m.IsPaging(t))
                return true; // back already
            if (d.PagingRing is not { } ring)
            {
                d.Host.Log($"d{d.DomainId}: paging gfn {gfn:x} yet no ring in place: crashing the domain");
                d.Host.ShutdownDomain(d, Public.Sched.SHUTDOWN_crash);
                return false;
            }
            bool outPath = t is P2mType.PagingOut or P2mType.Paged;
            // The pager hears only of gfns on their way out, and of every vCPU that waits for one.
            if (!outPath && v is null)
                return true;
            VmEventSt req = default;
            req.Reason = VM_EVENT_REASON_MEM_PAGING;
            req.MemPaging.Gfn = gfn;
            req.MemPaging.P2mt = XenType(t);
            if (t == P2mType.PagingOut)
                req.MemPaging.Flags = MEM_PAGING_EVICT_FAIL;
            if (!ring.Post(v, ref req, sync: v is not null))
                return false; // full: a vCPU waits for a slot and touches the page again; others try again later
            if (outPath)
                d.P2m.Set(gfn, mfn, P2mType.PagingIn);
            return v is null;
        }
    }

    /// <summary>A paging entry went from the p2m (the guest gave the gfn back, or the domain goes): its frame, if it
    /// has one, is freed, and the pager is told to forget an evicted page (DROP_PAGE, with EVICT_FAIL for one only
    /// nominated). Caller holds the domain's lock.</summary>
    public static void EntryRemoved(Domain d, uint mfn, P2mType t, ulong gfn)
    {
        if (mfn != 0)
        {
            d.Host.Frames.Free(mfn);
            d.UnchargePages(1);
        }
        else
            Interlocked.Decrement(ref d.PagedPages);
        if (d.PagingRing is not { } ring || gfn == ulong.MaxValue)
            return;
        VmEventSt req = default;
        req.Reason = VM_EVENT_REASON_MEM_PAGING;
        req.MemPaging.Gfn = gfn;
        req.MemPaging.Flags = MEM_PAGING_DROP_PAGE | (t == P2mType.PagingOut ? MEM_PAGING_EVICT_FAIL : 0);
        ring.Post(null, ref req, sync: false);
    }

    // ---- the vCPU's side ----

    /// <summary>An MMIO exit at a gfn in a paging state (a data access or a page-table entry read by the walk): the
    /// page is asked for and the instruction left to run again. False for real MMIO.</summary>
    public static bool OnMmio(Vcpu v, IVcpu cpu, in VcpuExit exit, out bool keepRunning)
    {
        keepRunning = true;
        ulong gfn = exit.Address >> 12;
        if (!v.Domain.P2m.TryLookup(gfn, out _, out var t) || !P2m.IsPaging(t))
            return false;
        cpu.RetryExit();
        keepRunning = Populate(v.Domain, gfn, v);
        return true;
    }

    /// <summary>A FetchDenied exit at a gfn in a paging state: as <see cref="OnMmio"/> for an instruction fetch.</summary>
    public static bool OnFetch(Vcpu v, in VcpuExit exit, out bool keepRunning)
    {
        keepRunning = true;
        ulong gfn = exit.Address >> 12;
        if (!v.Domain.P2m.TryLookup(gfn, out _, out var t) || !P2m.IsPaging(t))
            return false;
        keepRunning = Populate(v.Domain, gfn, v);
        return true;
    }
}
