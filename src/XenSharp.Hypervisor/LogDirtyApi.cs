using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor;

/// <summary>The toolstack's face of log-dirty mode and of resuming a suspended domain in place (live migration,
/// xl save -c).</summary>
public sealed partial class XenHypervisor
{
    /// <summary>XEN_DOMCTL_shadow_op with a dirty bitmap of <c>bitmap.Length * 64</c> pages; returns the stats.</summary>
    public (uint Faults, uint Dirtied) ShadowOp(ushort domid, uint op, Span<ulong> bitmap, uint mode = 0)
    {
        long rc = LogDirty.Op(Guest(domid), op, mode, bitmap, out uint faults, out uint dirtied);
        if (rc < 0)
            throw new HypervisorException($"shadow op {op} on domain {domid}", (int)-rc);
        return (faults, dirtied);
    }

    /// <summary>Marks a page of a domain dirty (a write the toolstack made through a mapping of its own).</summary>
    public void MarkDirty(ushort domid, ulong gfn) => Guest(domid).P2m.MarkDirty(gfn);

    /// <summary>XEN_DOMCTL_resumedomain after a cancelled suspend (libxl_domain_resume with suspend_cancel): the
    /// domain leaves its suspended shutdown state and vCPU 0's SCHEDOP_shutdown returns 1, which tells the guest
    /// it resumed where it was, in the same domain. A guest the toolstack suspended from outside (one without PV
    /// drivers) made no such call: <paramref name="cancelHypercall"/> is false for it and its registers stay.</summary>
    public void ResumeSuspended(ushort domid, bool cancelHypercall = true)
    {
        var d = Guest(domid);
        Services.PauseDomain(d);
        try
        {
            lock (d.Lock)
            {
                if (d.State != DomainRunState.Shutdown || d.ShutdownReason != (uint)ShutdownReason.Suspend)
                    throw new HypervisorException($"domain {domid} is not suspended", Errno.EINVAL);
                d.State = DomainRunState.Paused;
                d.ShutdownReason = null;
                d.ShutdownCode = null;
            }
            if (cancelHypercall && d.Vcpus.Length > 0 && d.Vcpus[0].Engine is { } e)
            {
                e.GetRegisters(out var regs);
                regs.Rax = 1;
                e.SetRegisters(regs);
            }
            foreach (var v in d.Vcpus)
                v.DescheduleRequested = false;
        }
        finally
        {
            Services.UnpauseDomain(d);
        }
    }
}
