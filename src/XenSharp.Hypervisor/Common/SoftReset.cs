using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// XEN_DOMCTL_soft_reset (Xen's domain_soft_reset): a domain that shut down with SHUTDOWN_soft_reset runs on in
/// place, its memory and vCPU state kept, as a kexec'd crash kernel needs. What the old kernel set up with Xen goes:
/// every event channel is closed and the 2-level ABI is back, Argo rings are dropped, registered vcpu_info, runstate
/// and time areas are forgotten, and shared_info leaves the physical address space (a fresh RAM page takes its GFN,
/// so the guest finds no hole there). The grant table stays, as in Xen, which only warns of grants still in use.
/// Only HVM and PVH domains may be soft-reset: for a PV domain, as on Xen's x86, the common part is done, then -EINVAL
/// and the domain stays shut down (Xen's domain_crash of a domain already shut down changes nothing).
/// </summary>
internal static unsafe class SoftReset
{
    /// <summary>XEN_DOMCTL_soft_reset (and _cont, which Xen uses to go on after a preemption; the reset here never
    /// stops part-way). Never on the caller's own domain.</summary>
    public static long Domctl(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d == v.Domain)
            return -Errno.EINVAL;
        return Do(d!);
    }

    public static long Do(Domain d)
    {
        if (d.IsHost)
            return -Errno.EINVAL;
        // Every vCPU must have stopped for the shutdown: a domain still running is refused.
        lock (d.Lock)
            if (d.State != DomainRunState.Shutdown)
                return -Errno.EINVAL;
        d.Host.WaitOffCpu(d);

        d.Evtchn.Reset();
        if (d.Gnttab.HasActiveGrants)
            d.Host.Log($"d{d.DomainId}: soft reset with grants of its pages still in use by other domains");
        ArgoOp.Teardown(d);
        foreach (var v in d.Vcpus)
        {
            v.RunstateGuestArea = 0;
            v.UnregisterVcpuInfo();
        }

        long rc = ArchReset(d);
        if (rc == 0)
            Resume(d);
        else
            // Xen crashes the domain here; it has shut down already, so it stays down as it was, for the
            // toolstack to destroy.
            d.Host.Log($"d{d.DomainId}: soft reset refused ({rc}): the domain stays shut down");
        return rc;
    }

    /// <summary>Xen's arch_domain_soft_reset on x86: HVM only; shared_info's GFN gets a new RAM page.</summary>
    private static long ArchReset(Domain d)
    {
        if (d.Pv is not null)
            return -Errno.EINVAL;
        lock (d.Lock)
        {
            if (d.SharedInfoGfn is ulong gfn)
            {
                if (!d.TryChargePages(1))
                    return -Errno.ENOMEM;
                if (!d.Host.Frames.TryAllocate(d.DomainId, FrameType.Ram, out uint mfn))
                {
                    d.UnchargePages(1);
                    return -Errno.ENOMEM;
                }
                d.ReleaseOld(d.P2m.Set(gfn, mfn, P2mType.RamRw));
            }
        }
        foreach (var v in d.Vcpus)
            v.TimeGuestArea = 0;
        return 0;
    }

    /// <summary>Xen's domain_resume: the shutdown is over and the vCPUs go on where they stopped.</summary>
    private static void Resume(Domain d)
    {
        d.Host.PauseDomain(d);
        lock (d.Lock)
        {
            d.State = DomainRunState.Paused;
            d.ShutdownReason = null;
            d.ShutdownCode = null;
        }
        foreach (var v in d.Vcpus)
            v.DescheduleRequested = false;
        d.Host.UnpauseDomain(d);
    }
}
