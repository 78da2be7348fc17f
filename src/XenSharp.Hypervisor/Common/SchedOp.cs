using XenSharp.Public;
using XenSharp.Public.Compat;
using static XenSharp.Public.Sched;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_sched_op(cmd, arg).</summary>
internal static unsafe class SchedOp
{
    public const int MaxPollPorts = 128;
    public const int NrWatchdogs = 2;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong arg = a.A2;
        var d = v.Domain;
        switch ((int)a.A1)
        {
            case SCHEDOP_yield:
                v.DescheduleRequested = true;
                return 0;
            case SCHEDOP_block:
                // Xen's do_block enables event delivery first: a PV kernel blocks with its events masked (its
                // "sti; hlt") and relies on this to be woken by the next one.
                if (v.Pv is not null && v.VcpuInfo is not null)
                    v.VcpuInfo->EvtchnUpcallMask = 0;
                v.Block();
                return 0;
            case SCHEDOP_shutdown:
            {
                if (!GuestAccess.Read(v, arg, out SchedShutdown s))
                    return -Errno.EFAULT;
                if (s.Reason > SHUTDOWN_MAX)
                    return -Errno.EINVAL;
                d.Host.ShutdownDomain(d, s.Reason);
                return 0;
            }
            case SCHEDOP_shutdown_code:
            {
                if (!GuestAccess.Read(v, arg, out SchedShutdown s))
                    return -Errno.EFAULT;
                if (s.Reason > SHUTDOWN_MAX)
                    return -Errno.EINVAL;
                d.ShutdownCode = s.Reason;
                return 0;
            }
            case SCHEDOP_poll:
            {
                SchedPoll p;
                if (v.Compat)
                {
                    if (!GuestAccess.Read(v, arg, out SchedPoll32 p32))
                        return -Errno.EFAULT;
                    p = new SchedPoll { Ports = p32.Ports, NrPorts = p32.NrPorts, Timeout = p32.Timeout };
                }
                else if (!GuestAccess.Read(v, arg, out p))
                    return -Errno.EFAULT;
                if (p.NrPorts > MaxPollPorts)
                    return -Errno.EINVAL;
                var ports = new uint[p.NrPorts];
                for (uint i = 0; i < p.NrPorts; i++)
                {
                    if (!GuestAccess.ReadElement(v, p.Ports, i, out ports[i]))
                        return -Errno.EFAULT;
                    if (d.Evtchn.Get(ports[i]) is null)
                        return -Errno.EINVAL;
                }
                foreach (var port in ports)
                    if (d.Evtchn.IsPending(port))
                        return 0;
                if (p.Timeout != 0 && (long)p.Timeout <= d.Host.Time.NowNs)
                    return 0;
                v.Block(ports, p.Timeout == 0 ? long.MaxValue : (long)Math.Min(p.Timeout, long.MaxValue - 1));
                return 0;
            }
            case SCHEDOP_remote_shutdown:
            {
                if (!GuestAccess.Read(v, arg, out SchedRemoteShutdown r))
                    return -Errno.EFAULT;
                if (!d.IsPrivileged)
                    return -Errno.EPERM;
                var t = d.Host.FindDomain(r.DomainId);
                if (t is null || t.IsHost)
                    return -Errno.ESRCH;
                if (r.Reason > SHUTDOWN_MAX)
                    return -Errno.EINVAL;
                d.Host.ShutdownDomain(t, r.Reason);
                return 0;
            }
            case SCHEDOP_watchdog:
            {
                if (!GuestAccess.Read(v, arg, out SchedWatchdog w))
                    return -Errno.EFAULT;
                return Watchdog(d, w.Id, w.Timeout);
            }
            case SCHEDOP_pin_override:
                return -Errno.EPERM;
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>Creates (id 0), re-arms or (timeout 0) destroys one of the domain's watchdogs; returns the id.</summary>
    private static long Watchdog(Domain d, uint id, uint timeoutSeconds)
    {
        lock (d.Watchdogs)
        {
            long now = d.Host.Time.NowNs;
            if (id == 0)
            {
                for (uint i = 1; i <= NrWatchdogs; i++)
                    if (!d.Watchdogs.ContainsKey(i))
                    {
                        Arm(d, i, now + timeoutSeconds * 1_000_000_000L);
                        return i;
                    }
                return -Errno.EEXIST;
            }
            if (id > NrWatchdogs || !d.Watchdogs.ContainsKey(id))
                return -Errno.EINVAL;
            if (timeoutSeconds == 0)
                d.Watchdogs.Remove(id);
            else
                Arm(d, id, now + timeoutSeconds * 1_000_000_000L);
            return 0;
        }
    }

    private static void Arm(Domain d, uint id, long deadline)
    {
        d.Watchdogs[id] = deadline;
        d.Host.Timers.Schedule(deadline, d, TimerKind.Watchdog);
    }

    /// <summary>A watchdog deadline may have passed: shut the domain down if one really expired.</summary>
    public static void CheckWatchdogs(Domain d, long now)
    {
        bool expired;
        lock (d.Watchdogs)
            expired = d.Watchdogs.Values.Any(deadline => deadline <= now);
        if (expired)
        {
            d.Host.Log($"(d{d.DomainId}) watchdog timeout");
            d.Host.ShutdownDomain(d, SHUTDOWN_watchdog);
        }
    }
}
