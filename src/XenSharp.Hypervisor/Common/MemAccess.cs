using XenSharp.Cpu;
using XenSharp.Public;
using static XenSharp.Public.VmEvent;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// mem_access (Xen's common/mem_access.c and arch/x86/mm/mem_access.c): XENMEM_access_op, by which a privileged
/// agent sets and reads the access of a domain's pages (<see cref="P2m"/> keeps it), and what happens when the
/// guest does what its page denies: a VM_EVENT_REASON_MEM_ACCESS request on the monitor ring with the vCPU paused
/// until the agent answers, after which the access is tried again (with the agent's new permissions, or into a new
/// event). Without a listener the page gets rwx back, or the domain is crashed when an access listener is required.
/// </summary>
internal static class MemAccess
{
    public static long Op(Vcpu v, ulong arg, ulong start)
    {
        if (!GuestAccess.Read(v, arg, out XenMemAccessOp mao))
            return -Errno.EFAULT;
        // A remote domain only (Xen's rcu_lock_live_remote_domain_by_id), and only for the control domain.
        if (mao.Domid == Xen.DOMID_SELF || mao.Domid == v.Domain.DomainId)
            return -Errno.EPERM;
        var d = v.Domain.Host.FindDomain(mao.Domid);
        if (d is null || d.IsHost)
            return -Errno.ESRCH;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (d.Pv is not null)
            return -Errno.EINVAL; // p2m_mem_access_sanity_check: HVM with HAP only
        var p2m = d.P2m;
        ulong maxGpfn = p2m.MaxMappedGfn;
        switch (mao.Op)
        {
            case XENMEM_access_op_set_access:
            {
                if (mao.Pfn != ulong.MaxValue &&
                    (mao.Nr < start || mao.Pfn + mao.Nr - 1 < mao.Pfn || mao.Pfn + mao.Nr - 1 > maxGpfn))
                    return -Errno.EINVAL;
                if (!ToAccess(p2m, mao.Access, out byte access))
                    return mao.Access > XENMEM_access_default ? -Errno.EINVAL : -Errno.EOPNOTSUPP;
                if (mao.Pfn == ulong.MaxValue)
                    p2m.SetDefaultAccess(access);
                else if (mao.Nr > 0)
                    p2m.SetAccess(mao.Pfn, mao.Nr, access);
                return 0;
            }
            case XENMEM_access_op_get_access:
            {
                if (mao.Pfn > maxGpfn && mao.Pfn != ulong.MaxValue)
                    return -Errno.EINVAL;
                byte access;
                if (mao.Pfn == ulong.MaxValue)
                    access = p2m.DefaultAccess;
                else if (!p2m.TryGetAccess(mao.Pfn, out access))
                    return -Errno.ESRCH;
                mao.Access = access;
                return GuestAccess.Write(v, arg, mao) ? 0 : -Errno.EFAULT;
            }
            case XENMEM_access_op_set_access_multi:
            {
                if (mao.Nr > 0 && (mao.PfnList == 0 || mao.AccessList == 0))
                    return -Errno.EINVAL;
                for (uint i = 0; i < mao.Nr; i++)
                {
                    if (!GuestAccess.ReadElement(v, mao.PfnList, i, out ulong gfn) || !GuestAccess.ReadElement(v, mao.AccessList, i, out byte a))
                        return -Errno.EFAULT;
                    if (!ToAccess(p2m, a, out byte access))
                        return a > XENMEM_access_default ? -Errno.EINVAL : -Errno.EOPNOTSUPP;
                    p2m.SetAccess(gfn, 1, access);
                }
                return 0;
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>xenmem_access_t to the p2m's access: the eight r/w/x combinations and the default. rx2rw and n2rwx,
    /// which change by themselves on the first access, are not kept.</summary>
    private static bool ToAccess(P2m p2m, byte xenmem, out byte access)
    {
        access = xenmem == XENMEM_access_default ? p2m.DefaultAccess : xenmem;
        return xenmem <= XENMEM_access_rwx || xenmem == XENMEM_access_default;
    }

    /// <summary>An MMIO exit at a page whose access denies it: true when it was that (the event is raised and the
    /// instruction left to run again), false for real MMIO. Called only while some restriction is in force.</summary>
    public static bool OnMmio(Vcpu v, IVcpu cpu, in VcpuExit exit, out bool keepRunning)
    {
        keepRunning = true;
        ulong gfn = exit.Address >> 12;
        uint denied = v.Domain.P2m.EngineDeniedAccess(gfn) & (exit.IsWrite ? MEM_ACCESS_W : MEM_ACCESS_R);
        if (denied == 0)
            return false;
        cpu.RetryExit();
        keepRunning = Violation(v, cpu, gfn, exit.Address & 0xFFF, denied);
        return true;
    }

    /// <summary>A FetchDenied exit: the instruction fetch is the violation.</summary>
    public static bool OnFetchDenied(Vcpu v, IVcpu cpu, in VcpuExit exit)
    {
        ulong gfn = exit.Address >> 12;
        if ((v.Domain.P2m.EngineDeniedAccess(gfn) & MEM_ACCESS_X) == 0)
            return true; // allowed again since: fetch again
        return Violation(v, cpu, gfn, exit.Address & 0xFFF, MEM_ACCESS_X);
    }

    /// <summary>p2m_mem_access_check: reports the access and pauses the vCPU; false when it must leave the CPU.</summary>
    private static bool Violation(Vcpu v, IVcpu cpu, ulong gfn, ulong offset, uint access)
    {
        var d = v.Domain;
        if (d.Monitor.Ring is not { } ring)
        {
            if (d.P2m.AccessRequired)
            {
                d.Host.Log($"(d{d.DomainId}) vcpu {v.Id}: memory access listener required, but none present: crashing the domain");
                d.Host.ShutdownDomain(d, Public.Sched.SHUTDOWN_crash);
                return false;
            }
            // No listener is required: the restriction goes (in the view the vCPU sees), as in Xen.
            int view = d.P2m.VcpuView(v.Id);
            if (view != 0)
                d.P2m.SetViewAccess(view, gfn, XENMEM_access_rwx);
            else
                d.P2m.SetAccess(gfn, 1, XENMEM_access_rwx);
            return true;
        }
        VmEventSt req = default;
        req.Reason = VM_EVENT_REASON_MEM_ACCESS;
        req.MemAccess.Gfn = gfn;
        req.MemAccess.Offset = offset;
        req.MemAccess.Flags = access;
        VmEventRing.FillRegs(cpu, ref req.Regs);
        ring.Post(v, ref req, sync: true);
        return false;
    }
}
