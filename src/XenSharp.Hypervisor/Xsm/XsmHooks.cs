using System.Runtime.CompilerServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.Domctl;
using static XenSharp.Public.Sysctl;

namespace XenSharp.Hypervisor.Xsm;

/// <summary>
/// The XSM hooks the hypercall handlers call (Xen's xsm_* functions): each answers 0 or -errno. With FLASK off
/// (<see cref="HostServices.Flask"/> null, the default) each is one null test and the handlers' own privilege checks
/// (Xen's dummy XSM) are all there is; with FLASK on, the policy is asked too, under Xen's classes and permissions.
/// </summary>
internal static class XsmHooks
{
    /// <summary>xsm_domctl: the permission each domctl needs on its target domain.</summary>
    private static readonly Dictionary<uint, Perm> DomctlPerms = new()
    {
        [XEN_DOMCTL_destroydomain] = Av.DomainDestroy,
        [XEN_DOMCTL_pausedomain] = Av.DomainPause,
        [XEN_DOMCTL_unpausedomain] = Av.DomainUnpause,
        [XEN_DOMCTL_setvcpuaffinity] = Av.DomainSetaffinity,
        [XEN_DOMCTL_setnodeaffinity] = Av.DomainSetaffinity,
        [XEN_DOMCTL_getvcpuaffinity] = Av.DomainGetaffinity,
        [XEN_DOMCTL_getnodeaffinity] = Av.DomainGetaffinity,
        [XEN_DOMCTL_resumedomain] = Av.DomainResume,
        [XEN_DOMCTL_max_vcpus] = Av.DomainMaxVcpus,
        [XEN_DOMCTL_max_mem] = Av.DomainSetdomainmaxmem,
        [XEN_DOMCTL_setdomainhandle] = Av.DomainSetdomainhandle,
        [XEN_DOMCTL_setvcpucontext] = Av.DomainSetvcpucontext,
        [XEN_DOMCTL_getvcpucontext] = Av.DomainGetvcpucontext,
        [XEN_DOMCTL_get_address_size] = Av.DomainGetaddrsize,
        [XEN_DOMCTL_get_vcpu_msrs] = Av.DomainGetvcpucontext,
        [XEN_DOMCTL_getvcpuinfo] = Av.DomainGetvcpuinfo,
        [XEN_DOMCTL_settimeoffset] = Av.DomainSettime,
        [XEN_DOMCTL_setdebugging] = Av.DomainSetdebugging,
        [XEN_DOMCTL_getpageframeinfo3] = Av.MmuPageinfo,
        [XEN_DOMCTL_sethvmcontext] = Av.HvmSethvmc,
        [XEN_DOMCTL_gethvmcontext] = Av.HvmGethvmc,
        [XEN_DOMCTL_gethvmcontext_partial] = Av.HvmGethvmc,
        [XEN_DOMCTL_sendtrigger] = Av.DomainTrigger,
        [XEN_DOMCTL_set_cpu_policy] = Av.Domain2SetCpuPolicy,
        [XEN_DOMCTL_get_cpu_policy] = Av.Domain2GetCpuPolicy,
        [XEN_DOMCTL_gettscinfo] = Av.Domain2Gettsc,
        [XEN_DOMCTL_settscinfo] = Av.Domain2Settsc,
        [XEN_DOMCTL_get_paging_mempool_size] = Av.DomainGetpagingmempool,
        [XEN_DOMCTL_set_paging_mempool_size] = Av.DomainSetpagingmempool,
        [Public.VmEvent.XEN_DOMCTL_vm_event_op] = Av.Domain2VmEvent,
        [Public.VmEvent.XEN_DOMCTL_monitor_op] = Av.Domain2VmEvent,
        [Public.VmEvent.XEN_DOMCTL_set_access_required] = Av.Domain2VmEvent,
    };

    /// <summary>xsm_sysctl: the permission each sysctl needs on Xen itself (SECINITSID_XEN).</summary>
    private static readonly Dictionary<uint, Perm> SysctlPerms = new()
    {
        [XEN_SYSCTL_tbuf_op] = Av.XenTbufcontrol,
        [XEN_SYSCTL_sched_id] = Av.XenGetscheduler,
        [XEN_SYSCTL_debug_keys] = Av.XenDebug,
        [XEN_SYSCTL_getcpuinfo] = Av.XenGetcpuinfo,
        [XEN_SYSCTL_availheap] = Av.XenHeap,
        [XEN_SYSCTL_cpupool_op] = Av.XenCpupoolOp,
        [XEN_SYSCTL_physinfo] = Av.XenPhysinfo,
        [XEN_SYSCTL_cputopoinfo] = Av.XenPhysinfo,
        [XEN_SYSCTL_numainfo] = Av.XenPhysinfo,
        [XEN_SYSCTL_pcitopoinfo] = Av.XenPhysinfo,
        [XEN_SYSCTL_get_cpu_policy] = Av.XenPhysinfo,
        [XEN_SYSCTL_get_cpu_featureset] = Av.Xen2GetCpuFeatureset,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Domctl(Vcpu v, Domain? d, ref XenDomctl op) =>
        v.Domain.Host.Flask is { } f ? DomctlChecked(f, v.Domain, d, ref op) : 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long GetDomainInfo(Vcpu v, Domain d) =>
        v.Domain.Host.Flask is { } f ? f.DomainHasPerm(v.Domain, d, Av.DomainGetdomaininfo) : 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Sysctl(Vcpu v, ref XenSysctl op) =>
        v.Domain.Host.Flask is { } f ? SysctlChecked(f, v.Domain, ref op) : 0;

    /// <summary>xsm_grant_mapref: may <paramref name="mapper"/> map a grant of <paramref name="granter"/>?</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long GrantMap(Domain mapper, Domain granter, bool readOnly) =>
        mapper.Host.Flask is { } f ? f.DomainHasPerm(mapper, granter, Av.GrantMapRead, readOnly ? null : Av.GrantMapWrite) : 0;

    /// <summary>xsm_grant_copy: may <paramref name="caller"/> copy to or from <paramref name="other"/>'s grants?</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long GrantCopy(Domain caller, Domain other) =>
        caller.Host.Flask is { } f ? f.DomainHasPerm(caller, other, Av.GrantCopy) : 0;

    /// <summary>xsm_evtchn_interdomain: binding <paramref name="d1"/>'s new port to <paramref name="d2"/>'s — the channel
    /// is labelled by the transition of d1 over d2 in class event; d1 needs create on it and d2 bind.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long EvtchnInterdomain(Domain d1, Domain d2) =>
        d1.Host.Flask is { } f ? EvtchnChecked(f, d1, d2) : 0;

    /// <summary>xsm_evtchn_unbound: <paramref name="caller"/> allocates a port of <paramref name="d1"/> for
    /// <paramref name="remoteDom"/> to bind; the caller needs create on its label and the label bind to the remote.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long EvtchnUnbound(Domain caller, Domain d1, ushort remoteDom) =>
        caller.Host.Flask is { } f ? EvtchnUnboundChecked(f, caller, d1, remoteDom) : 0;

    /// <summary>xsm_evtchn_send: <paramref name="sender"/> signals the channel it shares with <paramref name="remote"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long EvtchnSend(Domain sender, Domain remote) =>
        sender.Host.Flask is { } f ? EvtchnSendChecked(f, sender, remote) : 0;

    /// <summary>xsm_memory_adjust_reservation and xsm_add_to_physmap against a foreign domain.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long MemoryForeign(Domain caller, Domain target, bool physmap) =>
        caller.Host.Flask is { } f && caller != target ? f.DomainHasPerm(caller, target, physmap ? Av.MmuPhysmap : Av.MmuAdjust) : 0;

    /// <summary>xsm_map_gmfn_foreign / a foreign mapping of <paramref name="target"/>'s frames.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long MapForeign(Domain caller, Domain target, bool writable) =>
        caller.Host.Flask is { } f ? MapForeignChecked(f, caller, target, writable) : 0;

    /// <summary>xsm_hvm_param: hvm_op get/set param on <paramref name="target"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long HvmParam(Domain caller, Domain target, bool set) =>
        caller.Host.Flask is { } f ? f.DomainHasPerm(caller, target, set ? Av.HvmSetparam : Av.HvmGetparam) : 0;

    /// <summary>flask_domain_create as the toolstack creates a domain: 0, or -errno refusing the label.</summary>
    public static long DomainCreate(HostServices host, uint ssidref) =>
        host.Flask is { } f ? f.CheckCreate(host.Dom0, ssidref) : 0;

    /// <summary>Gives a new domain its label (nothing with FLASK off: the SSID stays 0, as Xen's dummy reports).</summary>
    public static void DomainCreated(Domain d, uint ssidref)
    {
        d.Host.Flask?.Label(d, ssidref);
    }

    private static long DomctlChecked(Flask f, Domain caller, Domain? d, ref XenDomctl op)
    {
        switch (op.Cmd)
        {
            case XEN_DOMCTL_createdomain:
                return f.CheckCreate(caller, op.As<XenDomctlCreatedomain>().Ssidref);
            case XEN_DOMCTL_getdomaininfo:
                return 0; // checked on the domain it finds
            case XEN_DOMCTL_scheduler_op:
                uint cmd = op.As<XenDomctlSchedulerOp>().Cmd;
                return cmd switch
                {
                    XEN_DOMCTL_SCHEDOP_putinfo or XEN_DOMCTL_SCHEDOP_putvcpuinfo => f.DomainHasPerm(caller, d!, Av.Domain2Setscheduler),
                    XEN_DOMCTL_SCHEDOP_getinfo or XEN_DOMCTL_SCHEDOP_getvcpuinfo => f.DomainHasPerm(caller, d!, Av.DomainGetscheduler),
                    _ => Unknown(f, caller, "domctl_scheduler_op", cmd),
                };
            case XEN_DOMCTL_shadow_op:
                uint sop = op.As<XenDomctlShadowOp>().Op;
                return sop switch
                {
                    XEN_DOMCTL_SHADOW_OP_OFF => f.DomainHasPerm(caller, d!, Av.ShadowDisable),
                    XEN_DOMCTL_SHADOW_OP_ENABLE or XEN_DOMCTL_SHADOW_OP_ENABLE_TEST or XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION
                        or XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION => f.DomainHasPerm(caller, d!, Av.ShadowEnable),
                    XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY or XEN_DOMCTL_SHADOW_OP_PEEK or XEN_DOMCTL_SHADOW_OP_CLEAN
                        => f.DomainHasPerm(caller, d!, Av.ShadowLogdirty),
                    _ => Unknown(f, caller, "shadow_control", sop),
                };
        }
        if (d is not null && DomctlPerms.TryGetValue(op.Cmd, out var perm))
            return f.DomainHasPerm(caller, d, perm);
        return Unknown(f, caller, "domctl", op.Cmd);
    }

    private static long SysctlChecked(Flask f, Domain caller, ref XenSysctl op)
    {
        if (op.Cmd == XEN_SYSCTL_readconsole)
        {
            long rc = f.CurrentHasPerm(caller, Flask.SecinitsidXen, Av.XenReadconsole);
            return rc < 0 || op.As<XenSysctlReadconsole>().Clear == 0 ? rc : f.CurrentHasPerm(caller, Flask.SecinitsidXen, Av.XenClearconsole);
        }
        if (op.Cmd == XEN_SYSCTL_getdomaininfolist)
            return f.CurrentHasPerm(caller, Flask.SecinitsidDomxen, Av.DomainGetdomaininfo);
        if (op.Cmd == XEN_SYSCTL_scheduler_op)
            return f.CurrentHasPerm(caller, Flask.SecinitsidXen,
                op.As<XenSysctlSchedulerOp>().Cmd == XEN_SYSCTL_SCHEDOP_putinfo ? Av.XenSetscheduler : Av.XenGetscheduler);
        if (op.Cmd == XEN_SYSCTL_cpu_hotplug)
            return f.CurrentHasPerm(caller, Flask.SecinitsidDomxen,
                op.As<XenSysctlCpuHotplug>().Op is XEN_SYSCTL_CPU_HOTPLUG_ONLINE or XEN_SYSCTL_CPU_HOTPLUG_SMT_ENABLE ? Av.ResourcePlug : Av.ResourceUnplug);
        return SysctlPerms.TryGetValue(op.Cmd, out var perm)
            ? f.CurrentHasPerm(caller, Flask.SecinitsidXen, perm)
            : Unknown(f, caller, "sysctl", op.Cmd);
    }

    private static long EvtchnChecked(Flask f, Domain d1, Domain d2)
    {
        var ss = f.Server;
        if (ss is null)
            return 0;
        // Each end sees the other under its target label (its self label for a loopback channel).
        uint s1 = Flask.SidOf(d1), s2 = Flask.TargetSidOf(d1, d2);
        var (eventClass, _) = ss.Resolve(Av.EventCreate);
        // The new channel's label, and the label the other end got when it was allocated unbound.
        if (f.TransitionSid(s1, s2, eventClass, Policydb.AvtabTransition, out uint chan) < 0
            || f.TransitionSid(Flask.SidOf(d2), Flask.TargetSidOf(d2, d1), eventClass, Policydb.AvtabTransition, out uint reverse) < 0)
            return -Errno.EACCES;
        long rc = f.HasPerm(s1, chan, Av.EventCreate, d1, d2);
        if (rc >= 0)
            rc = f.HasPerm(chan, s2, Av.EventBind, d1, d2);
        if (rc >= 0)
            rc = f.HasPerm(reverse, Flask.TargetSidOf(d2, d1), Av.EventBind, d1, d2);
        return rc;
    }

    private static long EvtchnUnboundChecked(Flask f, Domain caller, Domain d1, ushort remoteDom)
    {
        var ss = f.Server;
        if (ss is null)
            return 0;
        if (d1.Host.FindDomain(remoteDom) is not { } d2)
            return -Errno.EPERM; // as Xen's FLASK: the remote end must exist to label the channel
        uint s1 = Flask.SidOf(d1), s2 = Flask.TargetSidOf(d1, d2);
        var (eventClass, _) = ss.Resolve(Av.EventCreate);
        if (f.TransitionSid(s1, s2, eventClass, Policydb.AvtabTransition, out uint chan) < 0)
            return -Errno.EACCES;
        long rc = f.HasPerm(Flask.SidOf(caller), chan, Av.EventCreate, d1, d2);
        return rc < 0 ? rc : f.HasPerm(chan, s2, Av.EventBind, d1, d2);
    }

    private static long EvtchnSendChecked(Flask f, Domain sender, Domain remote)
    {
        var ss = f.Server;
        if (ss is null)
            return 0;
        // The channel's label is the one its binding computed; it is recomputed here rather than stored per port.
        var (eventClass, _) = ss.Resolve(Av.EventSend);
        uint s1 = Flask.SidOf(sender), s2 = Flask.TargetSidOf(sender, remote);
        if (f.TransitionSid(s1, s2, eventClass, Policydb.AvtabTransition, out uint chan) < 0)
            return -Errno.EACCES;
        return f.HasPerm(s1, chan, Av.EventSend, sender, remote);
    }

    private static long MapForeignChecked(Flask f, Domain caller, Domain target, bool writable) =>
        f.DomainHasPerm(caller, target, Av.MmuMapRead, writable ? Av.MmuMapWrite : null);

    /// <summary>avc_unknown_permission: an operation FLASK has no permission for is allowed only when not enforcing
    /// or when the policy allows unknown permissions.</summary>
    private static long Unknown(Flask f, Domain caller, string what, uint id)
    {
        bool allow = !f.Enforcing || f.Server is null || f.Server.Policy.AllowUnknown;
        caller.Host.Log($"FLASK: {(allow ? "Allowing" : "Denying")} unknown {what}: {id}.");
        return allow ? 0 : -Errno.EPERM;
    }
}
