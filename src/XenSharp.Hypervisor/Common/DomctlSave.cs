using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The domctls libxc's save and resume need beyond the build ones: XEN_DOMCTL_getpageframeinfo3 (which of a
/// translated guest's pages hold RAM to send) and XEN_DOMCTL_resumedomain (a suspended domain carries on in place
/// when a save is cancelled or checkpointed).
/// </summary>
internal static class DomctlSave
{
    /// <summary>XEN_DOMCTL_PFINFO_NOTAB (RAM, no page-table type: a translated guest's pages never have one) and
    /// XEN_DOMCTL_PFINFO_XTAB (nothing to save: a hole, MMIO, a grant or foreign mapping, a Xen page).</summary>
    private const ulong PfinfoNotab = 0, PfinfoXtab = 0xFUL << 28;
    private const uint MaxBatch = 1024;

    private static XenHypervisor Control(Vcpu v) =>
        v.Domain.Host.Control ?? throw new InvalidOperationException("no control face for the toolstack's domctls");

    /// <summary>Replaces each gfn of the array with its page's type; more than 1024 at once is -E2BIG.</summary>
    public static long GetPageFrameInfo3(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain || d.Type == Hypervisor.DomainKind.Pv)
            return -Errno.EINVAL;
        ref var p = ref op.As<XenDomctlGetpageframeinfo3>();
        if (p.Num > MaxBatch)
            return -Errno.E2BIG;
        for (uint i = 0; i < p.Num; i++)
        {
            ulong slot = p.Array + 8UL * i;
            if (!GuestAccess.Read(v, slot, out ulong gfn))
                return -Errno.EFAULT;
            P2mType type;
            lock (d.Lock)
                if (!d.P2m.TryLookup(gfn, out _, out type))
                    type = P2mType.Invalid;
            ulong info = type is P2mType.RamRw or P2mType.RamRo or P2mType.PopulateOnDemand ? PfinfoNotab : PfinfoXtab;
            if (!GuestAccess.Write(v, slot, info))
                return -Errno.EFAULT;
        }
        return 0;
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
