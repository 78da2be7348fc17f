using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.VcpuOp;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "x86/PVH")]
public unsafe class VcpuOpTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static long Op<T>(Guest g, int cmd, uint vcpu, T arg, int caller = 0) where T : unmanaged
    {
        g.Write(Guest.Scratch, arg);
        return g.Call(Xen.__HYPERVISOR_vcpu_op, (ulong)cmd, vcpu, Guest.Scratch, vcpu: caller);
    }

    [Fact]
    public void RegisterVcpuInfoMovesItAndPublishesTime()
    {
        var g = new Guest(_host);
        Assert.Equal(0, Op(g, VCPUOP_register_vcpu_info, 1, new VcpuRegisterVcpuInfo { Mfn = 0x50, Offset = 64 }));
        var vi = g.Read<VcpuInfo>(0x50 * 4096 + 64);
        Assert.Equal(1, vi.EvtchnUpcallPending);
        Assert.Equal(ulong.MaxValue, vi.EvtchnPendingSel);
        Assert.NotEqual(0u, vi.Time.TscToSystemMul);
        Assert.Equal(0u, vi.Time.Version & 1);
        // Events for vCPU 1 now land in the new place.
        // As a guest would after handling the upcall: clear the flag and the selector.
        g.Write(0x50 * 4096 + 64, 0UL);
        g.Write(0x50 * 4096 + 72, 0UL);
        uint port = Evtchn.BindIpi(g, 1);
        Assert.Equal(0, Evtchn.Send(g, port));
        Assert.Equal(1, g.Read<byte>(0x50 * 4096 + 64));

        Assert.Equal(-Errno.EINVAL, Op(g, VCPUOP_register_vcpu_info, 1, new VcpuRegisterVcpuInfo { Mfn = 0x51 }));
        Assert.Equal(-Errno.EINVAL, Op(g, VCPUOP_register_vcpu_info, 0, new VcpuRegisterVcpuInfo { Mfn = 0x51, Offset = 4064 }));
        Assert.Equal(-Errno.EINVAL, Op(g, VCPUOP_register_vcpu_info, 0, new VcpuRegisterVcpuInfo { Mfn = 0x9000 }));
        Assert.Equal(-Errno.ENOENT, Op(g, VCPUOP_register_vcpu_info, 5, new VcpuRegisterVcpuInfo { Mfn = 0x51 }));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_register_vcpu_info, 0, Guest.Bad));
    }

    [Fact]
    public void RunstateAreaAndInfo()
    {
        var g = new Guest(_host);
        Assert.Equal(0, Op(g, VCPUOP_register_runstate_memory_area, 0, new VcpuRegisterRunstateMemoryArea { Addr = 0x7000 }));
        var rs = g.Read<VcpuRunstateInfo>(0x7000);
        Assert.Equal((int)RUNSTATE_runnable, rs.State);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_get_runstate_info, 1, Guest.Scratch));
        Assert.Equal(RUNSTATE_offline, g.Read<VcpuRunstateInfo>(Guest.Scratch).State);
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_get_runstate_info, 1, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_register_runstate_memory_area, 0, Guest.Bad));
        Assert.Equal(0, Op(g, VCPUOP_register_vcpu_time_memory_area, 0, new VcpuRegisterTimeMemoryArea { Addr = 0x7100 }));
        Assert.NotEqual(0u, g.Read<VcpuTimeInfo>(0x7100).TscToSystemMul);
    }

    [Fact]
    public void UpDownAndInitialise()
    {
        var g = new Guest(_host);
        Assert.Equal(1, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1));
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_up, 1));
        var ctx = new VcpuHvmContext { Mode = HvmVcpu.VCPU_HVM_MODE_64B };
        ctx.X86_64.Rip = 0x100000;
        ctx.X86_64.Cr0 = 0x80000011;
        ctx.X86_64.Efer = 0x500;
        Assert.Equal(0, Op(g, VCPUOP_initialise, 1, ctx));
        Assert.Equal(0x100000UL, g.Vcpu(1).PendingContext!.Value.Regs.Rip);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_up, 1));
        Assert.Equal(1, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1));
        Assert.Equal(-Errno.EEXIST, Op(g, VCPUOP_initialise, 1, ctx));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_down, 1));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1));
        ctx.Mode = 7;
        Assert.Equal(-Errno.EINVAL, Op(g, VCPUOP_initialise, 1, ctx));
        Assert.Equal(-Errno.ENOENT, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_is_up, 2));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_vcpu_op, 99, 0));
    }
}

public class HvmOpTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void ParamsBetweenToolstackAndGuest()
    {
        var g = new Guest(_host);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_STORE_PFN, 0xFEFFC);
        var p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_STORE_PFN };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_get_param, ref p));
        Assert.Equal(0xFEFFCUL, p.Value);
        p.Value = 5;
        Assert.Equal(-Errno.EPERM, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_CALLBACK_IRQ, Value = (2UL << 56) | 0xF3 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        Assert.Equal(0xF3, g.Domain.Arch.CallbackVector);
        Assert.Equal((2UL << 56) | 0xF3, _host.GetHvmParam(g.Id, Params.HVM_PARAM_CALLBACK_IRQ));
        p.Index = 500;
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_get_param, ref p));
        var other = new Guest(_host);
        p = new XenHvmParam { Domid = other.Id, Index = Params.HVM_PARAM_STORE_PFN };
        Assert.Equal(-Errno.EPERM, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_get_param, ref p));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_get_param, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_get_time, Guest.Bad));
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM")]
    public void PerVcpuUpcallVectorAndUnsupportedOps()
    {
        var g = new Guest(_host);
        var u = new XenHvmEvtchnUpcallVector { Vcpu = 1, Vector = 0xE0 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_evtchn_upcall_vector, ref u));
        Assert.Equal(0xE0, g.Vcpu(1).Arch.UpcallVector);
        u.Vector = 3;
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_evtchn_upcall_vector, ref u));
        u = new XenHvmEvtchnUpcallVector { Vcpu = 9, Vector = 0xE0 };
        Assert.Equal(-Errno.ENOENT, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_evtchn_upcall_vector, ref u));
        var pd = new XenHvmPagetableDying { Domid = Xen.DOMID_SELF, Gpa = 0x1000 };
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_pagetable_dying, ref pd));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_pagetable_dying, Guest.Bad));
        // HVMOP_altp2m exists (Altp2mTests); a zeroed argument has the wrong interface version.
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_altp2m, Guest.Scratch));
    }
}

public class SchedOpTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private DomainShutdownEventArgs? WaitShutdown(ushort domid, Action act)
    {
        DomainShutdownEventArgs? got = null;
        EventHandler<DomainShutdownEventArgs> h = (_, e) => { if (e.DomainId == domid) got = e; };
        _host.DomainShutdown += h;
        try
        {
            act();
            TestHosts.WaitUntil(() => got is not null);
            return got;
        }
        finally
        {
            _host.DomainShutdown -= h;
        }
    }

    [Theory]
    [InlineData(Sched.SHUTDOWN_poweroff, ShutdownReason.Poweroff)]
    [InlineData(Sched.SHUTDOWN_reboot, ShutdownReason.Reboot)]
    [InlineData(Sched.SHUTDOWN_suspend, ShutdownReason.Suspend)]
    [InlineData(Sched.SHUTDOWN_crash, ShutdownReason.Crash)]
    [InlineData(Sched.SHUTDOWN_soft_reset, ShutdownReason.SoftReset)]
    public void ShutdownIsReportedToTheToolstack(uint reason, ShutdownReason expected)
    {
        var g = new Guest(_host);
        var s = new SchedShutdown { Reason = reason };
        Assert.Equal(0, _host.ShutdownTime(g.Id));
        long before = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;
        var e = WaitShutdown(g.Id, () => Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, ref s)));
        long after = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;
        Assert.Equal(expected, e!.Reason);
        var info = _host.GetDomainInfo(g.Id);
        Assert.Equal(DomainRunState.Shutdown, info.State);
        Assert.Equal(expected, info.ShutdownReason);
        // The time of the hypercall itself (a migration's downtime starts there), not of the toolstack's news of it.
        Assert.InRange(_host.ShutdownTime(g.Id), before, after);
    }

    [Fact]
    public void ShutdownCodeWinsAndBadReasonsAreRefused()
    {
        var g = new Guest(_host);
        var s = new SchedShutdown { Reason = Sched.SHUTDOWN_suspend };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown_code, ref s));
        s.Reason = 9;
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, ref s));
        s.Reason = Sched.SHUTDOWN_crash;
        var e = WaitShutdown(g.Id, () => g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, ref s));
        Assert.Equal(ShutdownReason.Suspend, e!.Reason);
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown_code, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_remote_shutdown, Guest.Bad));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, Guest.Bad));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_sched_op, 42, Guest.Scratch));
    }

    [Fact]
    public void RemoteShutdownNeedsPrivilegeButTheToolstackMayDoIt()
    {
        var a = new Guest(_host);
        var b = new Guest(_host);
        var r = new SchedRemoteShutdown { DomainId = b.Id, Reason = Sched.SHUTDOWN_poweroff };
        Assert.Equal(-Errno.EPERM, a.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_remote_shutdown, ref r));
        var e = WaitShutdown(b.Id, () => _host.Shutdown(b.Id, ShutdownReason.Reboot));
        Assert.Equal(ShutdownReason.Reboot, e!.Reason);
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void WatchdogExpiryShutsTheDomainDown()
    {
        var g = new Guest(_host);
        var w = new SchedWatchdog { Id = 0, Timeout = 30 };
        Assert.Equal(1, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        Assert.Equal(2, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        Assert.Equal(-Errno.EEXIST, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        w = new SchedWatchdog { Id = 2, Timeout = 0 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        w = new SchedWatchdog { Id = 7, Timeout = 1 };
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        w = new SchedWatchdog { Id = 1, Timeout = 1 };
        var e = WaitShutdown(g.Id, () => g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_watchdog, ref w));
        Assert.Equal(ShutdownReason.Watchdog, e!.Reason);
    }
}
