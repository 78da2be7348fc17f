using System.Runtime.CompilerServices;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.VmEvent;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// A domain's introspection state (Xen's arch/x86/monitor.c and the vm_event parts of hvm.c): the monitor ring, the
/// monitor events asked for with XEN_DOMCTL_monitor_op (the software breakpoint: INT3 is taken by the hypervisor,
/// reported, and the guest does not see it unless the agent injects it again; single-step: each instruction a
/// single-stepping vCPU completes is reported), and events an agent injects with XEN_DMOP_inject_event, delivered by
/// the pCPU loop before the vCPU next runs. A vCPU single-steps (Xen's v->arch.hvm.single_step, by the monitor trap
/// flag) after XEN_DOMCTL_debug_op or a vm_event response's VM_EVENT_FLAG_TOGGLE_SINGLESTEP.
/// </summary>
internal sealed class DomainMonitor(Domain d)
{
    public VmEventRing? Ring { get; set; }

    /// <summary>XEN_DOMCTL_MONITOR_EVENT_SOFTWARE_BREAKPOINT is on.</summary>
    public bool SoftwareBreakpoint { get; private set; }

    /// <summary>XEN_DOMCTL_MONITOR_EVENT_SINGLESTEP is on.</summary>
    public bool Singlestep { get; private set; }

    /// <summary>The monitor events this hypervisor can report (GET_CAPABILITIES).</summary>
    public const uint Capabilities = 1u << (int)XEN_DOMCTL_MONITOR_EVENT_SOFTWARE_BREAKPOINT |
        1u << (int)XEN_DOMCTL_MONITOR_EVENT_SINGLESTEP;

    private readonly bool[] _singleStep = new bool[d.Vcpus.Length];

    private readonly PendingEvent?[] _inject = new PendingEvent?[d.Vcpus.Length];

    private readonly record struct PendingEvent(byte Vector, byte Type, byte InsnLength, uint? ErrorCode, ulong Cr2);

    /// <summary>Before each entry into the guest, on the vCPU's own thread: the engine follows the monitor's
    /// settings and takes an event the agent injected.</summary>
    public void BeforeRun(Vcpu v, IVcpu cpu)
    {
        if (cpu is IX86Vcpu x)
        {
            if (x.InterceptDebug != SoftwareBreakpoint)
                x.InterceptDebug = SoftwareBreakpoint;
            if (x.MonitorTrap != _singleStep[v.Id])
                x.MonitorTrap = _singleStep[v.Id];
        }
        d.P2m.EnterView(v.Id);
        if (_inject[v.Id] is not { } e)
            return;
        _inject[v.Id] = null;
        // A software exception or interrupt returns past its instruction, which the vCPU is still at.
        if (e.Type is X86_EVENTTYPE_SW_EXCEPTION or X86_EVENTTYPE_SW_INTERRUPT or X86_EVENTTYPE_PRI_SW_EXCEPTION && e.InsnLength != 0)
        {
            cpu.GetRegisters(out var r);
            r.Rip += e.InsnLength;
            cpu.SetRegisters(r);
        }
        if (e.Type == X86_EVENTTYPE_NMI)
            cpu.InjectNmi();
        else
            cpu.InjectException(e.Vector, e.ErrorCode);
    }

    /// <summary>A Debug exit: INT3 under the software breakpoint monitor. The vCPU goes back to the INT3 and waits,
    /// paused, for the agent's answer (Xen's hvm_monitor_debug with a synchronous software breakpoint); a #DB, which
    /// no monitor asked for here, is the guest's own and is delivered to it.</summary>
    public bool OnDebug(Vcpu v, IVcpu cpu, in VcpuExit exit)
    {
        if (exit.Port != 3)
        {
            cpu.InjectException(1);
            return true;
        }
        cpu.GetRegisters(out var r);
        r.Rip = exit.Address - 1; // the INT3 (CC) itself
        cpu.SetRegisters(r);
        if (Ring is not { } ring || !SoftwareBreakpoint)
        {
            // Nobody listens (any more): the guest gets its breakpoint.
            _inject[v.Id] = new PendingEvent(3, X86_EVENTTYPE_SW_EXCEPTION, 1, null, 0);
            return true;
        }
        VmEventSt req = default;
        req.Reason = VM_EVENT_REASON_SOFTWARE_BREAKPOINT;
        VmEventRing.FillRegs(cpu, ref req.Regs);
        ulong gfn = v.Engine is { } e && e.TryTranslateLinear(req.Regs.Rip + (ulong)req.Regs.CsBase, false, out ulong pa) ? pa >> 12 : ulong.MaxValue;
        req.SoftwareBreakpoint.Gfn = gfn;
        req.SoftwareBreakpoint.Type = X86_EVENTTYPE_SW_EXCEPTION;
        req.SoftwareBreakpoint.InsnLength = 1;
        ring.Post(v, ref req, sync: true);
        return false;
    }

    /// <summary>hvm_toggle_singlestep, for a vCPU the monitor ring holds paused.</summary>
    public void ToggleSingleStep(Vcpu v) => _singleStep[v.Id] = !_singleStep[v.Id];

    /// <summary>A MonitorTrap exit: the single-stepping vCPU completed an instruction. With the single-step monitor on
    /// it is reported at the next instruction and the vCPU waits, paused, for the agent (hvm_monitor_debug's
    /// HVM_MONITOR_SINGLESTEP_BREAKPOINT); otherwise it steps on.</summary>
    public bool OnMonitorTrap(Vcpu v, IVcpu cpu)
    {
        if (!_singleStep[v.Id] || !Singlestep || Ring is not { } ring)
            return true;
        VmEventSt req = default;
        req.Reason = VM_EVENT_REASON_SINGLESTEP;
        VmEventRing.FillRegs(cpu, ref req.Regs);
        req.SinglestepGfn = cpu.TryTranslateLinear(req.Regs.Rip + (ulong)req.Regs.CsBase, false, out ulong pa) ? pa >> 12 : ulong.MaxValue;
        ring.Post(v, ref req, sync: true);
        return false;
    }

    // ---- XEN_DOMCTL_vm_event_op, XEN_DOMCTL_monitor_op, XEN_DOMCTL_set_access_required ----

    public static long VmEventOp(Vcpu caller, ref XenDomctl op, Domain? target, out bool copyBack)
    {
        copyBack = false;
        var d = target!;
        ref var ve = ref op.As<XenDomctlVmEventOp>();
        if (d == caller.Domain || d.IsHost)
            return -Errno.EINVAL;
        if (ve.Mode == XEN_DOMCTL_VM_EVENT_OP_PAGING)
            return ve.Op == XEN_VM_EVENT_GET_VERSION ? GetVersion(ref ve, out copyBack) : Common.MemPaging.VmEventOp(caller, d, ref ve, out copyBack);
        if (ve.Mode != XEN_DOMCTL_VM_EVENT_OP_MONITOR)
            return ve.Mode is XEN_DOMCTL_VM_EVENT_OP_SHARING ? -Errno.EOPNOTSUPP : -Errno.ENOSYS;
        // The monitor ring needs hardware-assisted paging: a PV domain has none (libxc's "EPT not supported").
        if (d.Pv is not null)
            return -Errno.ENODEV;
        switch (ve.Op)
        {
            case XEN_VM_EVENT_ENABLE:
            {
                d.Host.PauseDomain(d);
                try
                {
                    long rc = VmEventRing.Enable(d, caller.Domain.DomainId, out uint port);
                    if (rc == 0)
                    {
                        ve.Port = port;
                        copyBack = true;
                    }
                    return rc;
                }
                finally
                {
                    d.Host.UnpauseDomain(d);
                }
            }
            case XEN_VM_EVENT_DISABLE:
                if (d.Monitor.Ring is not { } ring)
                    return -Errno.EINVAL;
                ring.Disable();
                return 0;
            case XEN_VM_EVENT_RESUME:
                if (d.Monitor.Ring is not { } r)
                    return -Errno.ENODEV;
                r.Resume();
                return 0;
            case XEN_VM_EVENT_GET_VERSION:
                return GetVersion(ref ve, out copyBack);
            default:
                return -Errno.ENOSYS;
        }
    }

    private static long GetVersion(ref XenDomctlVmEventOp ve, out bool copyBack)
    {
        ve.Port = VM_EVENT_INTERFACE_VERSION;
        copyBack = true;
        return 0;
    }

    public static long MonitorOp(Vcpu caller, ref XenDomctl op, Domain? target, out bool copyBack)
    {
        copyBack = false;
        var d = target!;
        if (d == caller.Domain)
            return -Errno.EPERM;
        if (d.IsHost || d.Pv is not null)
            return -Errno.EOPNOTSUPP;
        ref var mo = ref op.As<XenDomctlMonitorOp>();
        switch (mo.Op)
        {
            case XEN_DOMCTL_MONITOR_OP_GET_CAPABILITIES:
                mo.Event = Capabilities;
                copyBack = true;
                return 0;
            case XEN_DOMCTL_MONITOR_OP_ENABLE:
            case XEN_DOMCTL_MONITOR_OP_DISABLE:
                break;
            default:
                return -Errno.EOPNOTSUPP;
        }
        bool enable = mo.Op == XEN_DOMCTL_MONITOR_OP_ENABLE;
        var m = d.Monitor;
        switch (mo.Event)
        {
            case XEN_DOMCTL_MONITOR_EVENT_SOFTWARE_BREAKPOINT:
                if (m.SoftwareBreakpoint == enable)
                    return -Errno.EEXIST;
                m.SoftwareBreakpoint = enable;
                // Running vCPUs take the new setting at their next entry.
                foreach (var v in d.Vcpus)
                    v.Engine?.RequestExit();
                return 0;
            case XEN_DOMCTL_MONITOR_EVENT_SINGLESTEP:
                if (m.Singlestep == enable)
                    return -Errno.EEXIST;
                m.Singlestep = enable;
                return 0;
            default:
                return -Errno.EOPNOTSUPP;
        }
    }

    /// <summary>XEN_DOMCTL_debug_op (hvm_debug_op): a vCPU of an HVM domain single-steps or stops; -EINVAL for a vCPU
    /// the domain does not have, the caller's own, or a PV domain's, -ENOSYS for another op.</summary>
    public static long DebugOp(Vcpu caller, ref XenDomctl op, Domain? target, out bool copyBack)
    {
        copyBack = false;
        var d = target!;
        ref var dop = ref op.As<XenDomctlDebugOp>();
        if (dop.Vcpu >= (uint)d.Vcpus.Length || d.IsHost)
            return -Errno.EINVAL;
        var v = d.Vcpus[dop.Vcpu];
        if (v == caller || d.Pv is not null)
            return -Errno.EINVAL;
        if (dop.Op is not (XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_ON or XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_OFF))
            return -Errno.ENOSYS;
        d.Monitor._singleStep[v.Id] = dop.Op == XEN_DOMCTL_DEBUG_OP_SINGLE_STEP_ON;
        // The vCPU latches the new state at its next entry.
        v.Engine?.RequestExit();
        return 0;
    }

    public static long SetAccessRequired(Vcpu caller, ref XenDomctl op, Domain? target, out bool copyBack)
    {
        copyBack = false;
        var d = target!;
        if (d == caller.Domain)
            return -Errno.EPERM;
        if (d.IsHost || d.Pv is not null)
            return -Errno.EOPNOTSUPP;
        d.P2m.AccessRequired = op.As<byte>() != 0;
        return 0;
    }

    /// <summary>XEN_DMOP_inject_event (struct xen_dm_op_inject_event at <paramref name="u"/>): queued for the vCPU's
    /// next entry; -EBUSY while one is still queued, as Xen refuses a second.</summary>
    public static unsafe long InjectEvent(Domain d, byte* u)
    {
        uint vcpu = Unsafe.ReadUnaligned<uint>(u);
        byte vector = u[4], type = u[5], insnLen = u[6], pad0 = u[7];
        uint errorCode = Unsafe.ReadUnaligned<uint>(u + 8), pad1 = Unsafe.ReadUnaligned<uint>(u + 12);
        ulong cr2 = Unsafe.ReadUnaligned<ulong>(u + 16);
        if (pad0 != 0 || pad1 != 0)
            return -Errno.EINVAL;
        if (vcpu >= (uint)d.Vcpus.Length || d.Pv is not null)
            return -Errno.EINVAL;
        if (type > X86_EVENTTYPE_SW_EXCEPTION || type == 1 || vector > 31 && type is X86_EVENTTYPE_HW_EXCEPTION)
            return -Errno.EINVAL;
        var m = d.Monitor;
        if (m._inject[vcpu] is not null)
            return -Errno.EBUSY;
        m._inject[vcpu] = new PendingEvent(vector, type, insnLen, errorCode == uint.MaxValue ? null : errorCode, cr2);
        d.Vcpus[vcpu].Kick();
        return 0;
    }
}
