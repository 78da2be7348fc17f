using XenSharp.Public;
using static XenSharp.Public.EventChannel;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_event_channel_op: copies each EVTCHNOP argument in, runs it, copies results out.</summary>
internal static class EventChannelOp
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong arg = a.A2;
        var d = v.Domain;
        var ev = d.Evtchn;
        switch ((int)a.A1)
        {
            case EVTCHNOP_alloc_unbound:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnAllocUnbound op))
                    return -Errno.EFAULT;
                var target = d.Host.LookupForGuest(d, op.Dom, out long err);
                if (target is null)
                    return err;
                ushort remote = op.RemoteDom == Xen.DOMID_SELF ? d.DomainId : op.RemoteDom;
                if (Xsm.XsmHooks.EvtchnUnbound(d, target, remote) is < 0 and var denied)
                    return denied;
                long rc = target.Evtchn.AllocUnbound(remote, out op.Port);
                if (rc != 0)
                    return rc;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_bind_interdomain:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnBindInterdomain op))
                    return -Errno.EFAULT;
                var remote = op.RemoteDom == Xen.DOMID_SELF ? d : d.Host.FindDomain(op.RemoteDom);
                if (remote is null)
                    return -Errno.ESRCH;
                long rc = ev.BindInterdomain(remote, op.RemotePort, out op.LocalPort);
                if (rc != 0)
                    return rc;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_bind_virq:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnBindVirq op))
                    return -Errno.EFAULT;
                long rc = ev.BindVirq(op.Virq, op.Vcpu, out op.Port);
                if (rc != 0)
                    return rc;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_bind_ipi:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnBindIpi op))
                    return -Errno.EFAULT;
                long rc = ev.BindIpi(op.Vcpu, out op.Port);
                if (rc != 0)
                    return rc;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_bind_pirq:
                return -Errno.ENOSYS; // no physical IRQs are passed through
            case EVTCHNOP_close:
                // A guest cannot close a channel the hypervisor consumes (an IOREQ server's).
                if (!GuestAccess.Read(v, arg, out EvtchnClose close))
                    return -Errno.EFAULT;
                return ev.IsXenConsumer(close.Port) ? -Errno.EINVAL : ev.Close(close.Port);
            case EVTCHNOP_send:
                return GuestAccess.Read(v, arg, out EvtchnSend send) ? ev.Send(send.Port) : -Errno.EFAULT;
            case EVTCHNOP_status:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnStatus op))
                    return -Errno.EFAULT;
                var target = d.Host.LookupForGuest(d, op.Dom, out long err);
                if (target is null)
                    return err;
                long rc = target.Evtchn.Status(op.Port, ref op);
                if (rc != 0)
                    return rc;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_bind_vcpu:
                return GuestAccess.Read(v, arg, out EvtchnBindVcpu bv) ? ev.BindVcpu(bv.Port, bv.Vcpu) : -Errno.EFAULT;
            case EVTCHNOP_unmask:
                return GuestAccess.Read(v, arg, out EvtchnUnmask um) ? ev.Unmask(um.Port) : -Errno.EFAULT;
            case EVTCHNOP_reset:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnReset op))
                    return -Errno.EFAULT;
                var target = d.Host.LookupForGuest(d, op.Dom, out long err);
                return target is null ? err : target.Evtchn.Reset();
            }
            case EVTCHNOP_init_control:
            {
                if (!GuestAccess.Read(v, arg, out EvtchnInitControl op))
                    return -Errno.EFAULT;
                long rc = ev.InitControl(op);
                if (rc != 0)
                    return rc;
                op.LinkBits = EVTCHN_FIFO_LINK_BITS;
                return GuestAccess.Write(v, arg, op) ? 0 : -Errno.EFAULT;
            }
            case EVTCHNOP_expand_array:
                return GuestAccess.Read(v, arg, out EvtchnExpandArray ea) ? ev.ExpandArray(ea.ArrayGfn) : -Errno.EFAULT;
            case EVTCHNOP_set_priority:
                return GuestAccess.Read(v, arg, out EvtchnSetPriority sp) ? ev.SetPriority(sp.Port, sp.Priority) : -Errno.EFAULT;
            default:
                return -Errno.ENOSYS;
        }
    }
}
