using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The domctls libxc's save and resume need beyond the build ones: XEN_DOMCTL_getpageframeinfo3 (which of a
/// translated guest's pages hold RAM to send; for a PV guest, which of its machine frames are page tables, of what
/// level and pinned) and XEN_DOMCTL_resumedomain (a suspended domain carries on in place
/// when a save is cancelled or checkpointed).
/// </summary>
internal static class DomctlSave
{
    /// <summary>XEN_DOMCTL_PFINFO_NOTAB (RAM, no page-table type: a translated guest's pages never have one) and
    /// XEN_DOMCTL_PFINFO_XTAB (nothing to save: a hole, MMIO, a grant or foreign mapping, a Xen page).</summary>
    private const ulong PfinfoNotab = 0, PfinfoXtab = 0xFUL << 28, PfinfoLpintab = 1UL << 31;
    private const int PfinfoLtabShift = 28;
    private const uint MaxBatch = 1024;

    private static XenHypervisor Control(Vcpu v) =>
        v.Domain.Host.Control ?? throw new InvalidOperationException("no control face for the toolstack's domctls");

    /// <summary>Replaces each gfn of the array with its page's type; more than 1024 at once is -E2BIG.</summary>
    public static long GetPageFrameInfo3(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        ref var p = ref op.As<XenDomctlGetpageframeinfo3>();
        if (p.Num > MaxBatch)
            return -Errno.E2BIG;
        // The array holds the caller's xen_pfn_t: 4 bytes for a 32-bit caller.
        uint width = v.Compat ? 4u : 8u;
        for (uint i = 0; i < p.Num; i++)
        {
            ulong slot = p.Array + width * i;
            ulong gfn;
            if (width == 4)
            {
                if (!GuestAccess.Read(v, slot, out uint g32))
                    return -Errno.EFAULT;
                gfn = g32;
            }
            else if (!GuestAccess.Read(v, slot, out gfn))
                return -Errno.EFAULT;
            ulong info = d.Pv is not null ? PvFrameInfo(d, gfn) : TranslatedFrameInfo(d, gfn);
            if (!(width == 4 ? GuestAccess.Write(v, slot, (uint)info) : GuestAccess.Write(v, slot, info)))
                return -Errno.EFAULT;
        }
        return 0;
    }

    private static ulong TranslatedFrameInfo(Domain d, ulong gfn)
    {
        P2mType type;
        lock (d.Lock)
            if (!d.P2m.TryLookup(gfn, out _, out type))
                type = P2mType.Invalid;
        return type is P2mType.RamRw or P2mType.RamRo or P2mType.PopulateOnDemand ? PfinfoNotab : PfinfoXtab;
    }

    /// <summary>A PV guest names its machine frames: XTAB for one that is not the domain's (free, another's, Xen's or
    /// a Xen page lent to it),
    /// else its validated page-table level with LPINTAB when pinned, NOTAB for any other frame, as Xen answers.</summary>
    private static ulong PvFrameInfo(Domain d, ulong mfn)
    {
        var frames = d.Host.Frames;
        if (mfn > frames.MaxMfn || !frames.TryGetPage(mfn, d.DomainId))
            return PfinfoXtab;
        try
        {
            // shared_info and grant frames are Xen's pages the domain is lent (Xen's is_special_page).
            if (frames.TypeOf((uint)mfn) == FrameType.XenShared)
                return PfinfoXtab;
            lock (frames.TypeLock)
            {
                var ti = frames.TypeInfoOf(mfn);
                if (ti.Count == 0 || ti.Type is < PageType.L1 or > PageType.L4)
                    return PfinfoNotab;
                ulong info = (ulong)(int)ti.Type << PfinfoLtabShift;
                if (ti.Pinned)
                    return info | PfinfoLpintab;
                return ti.Validated ? info : PfinfoNotab;
            }
        }
        finally
        {
            frames.PutPage(mfn);
        }
    }

    /// <summary>XEN_DOMCTL_resumedomain (Xen's domain_resume): a domain suspended by SHUTDOWN_suspend leaves that
    /// state and runs on with its registers as they are (libxc sets the hypercall's result itself when it means
    /// to); a domain that is not shut down has nothing to resume. XenSharp cannot bring back a domain shut down for
    /// another reason (-EINVAL).</summary>
    public static long ResumeDomain(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        if (d.State != Hypervisor.DomainRunState.Shutdown)
            return 0;
        try
        {
            Control(v).ResumeSuspended(d.DomainId, cancelHypercall: false);
            return 0;
        }
        catch (HypervisorException e)
        {
            return -(e.Errno == 0 ? Errno.EINVAL : e.Errno);
        }
    }
}
