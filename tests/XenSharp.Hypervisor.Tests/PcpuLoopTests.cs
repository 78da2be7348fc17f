using System.Text;
using XenSharp.Cpu;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Tests;

/// <summary>The pCPU loop with scripted engine exits: hypercalls, port I/O, MSRs, HLT and wake-ups.</summary>
[Trait("Feature", "Credit Scheduler")]
public class PcpuLoopTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    public void Dispose() => _host.Dispose();

    private static VcpuExit Hypercall => new() { Reason = VcpuExitReason.Hypercall };

    private static Action<TestVcpu> Regs(ulong rax, ulong rdi = 0, ulong rsi = 0, ulong rdx = 0) => c =>
    {
        c.Regs.Rax = rax;
        c.Regs.Rdi = rdi;
        c.Regs.Rsi = rsi;
        c.Regs.Rdx = rdx;
    };

    private ShutdownReason? RunUntilShutdown(Guest g)
    {
        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == g.Id) reason = e.Reason; };
        _host.Unpause(g.Id);
        TestHosts.WaitUntil(() => reason is not null);
        // The shutdown event is raised from the thread pool and can come before the pCPU has finished the slice;
        // the vCPU's registers and CPU time are settled once it is off the CPU.
        TestHosts.WaitUntil(() => !_host.GetDomainInfo(g.Id).IsRunningNow);
        return reason;
    }

    [Fact]
    public void HypercallsAndDebugPortRunThroughTheLoop()
    {
        var g = new Guest(_host, vcpus: 1);
        var text = Encoding.ASCII.GetBytes("boot\n");
        _host.WriteGuestMemory(g.Id, 0x3000, text);
        g.Write(0x3100, Sched.SHUTDOWN_poweroff);
        var cpu = g.Cpu();
        cpu.Script.Enqueue((Hypercall, Regs(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_write, (ulong)text.Length, 0x3000)));
        cpu.Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.Io, Port = 0xE9, Size = 1, IsWrite = true, Data = '!' }, null));
        cpu.Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.Io, Port = 0x71, Size = 1 }, null));
        cpu.Script.Enqueue((Hypercall, Regs(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, 0x3100)));

        Assert.Equal(ShutdownReason.Poweroff, RunUntilShutdown(g));
        Assert.Equal("boot\n!", Encoding.ASCII.GetString(_host.ReadConsoleHistory(g.Id)));
        Assert.Equal(0UL, cpu.Regs.Rax); // sched_op's result
        Assert.True(cpu.Completions.TryDequeue(out ulong ioRead));
        Assert.Equal(0xFFUL, ioRead); // an unemulated port reads all ones
        Assert.True(_host.GetDomainInfo(g.Id).CpuTimeNs > 0);
    }

    [Fact]
    public void AcpiSleepToS5PowersOff()
    {
        var g = new Guest(_host, vcpus: 1);
        g.Cpu().Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.Io, Port = 0xB004, Size = 2, IsWrite = true, Data = (7 << 10) | (1 << 13) }, null));
        Assert.Equal(ShutdownReason.Poweroff, RunUntilShutdown(g));
    }

    [Fact]
    public void TripleFaultCrashesTheDomain()
    {
        var g = new Guest(_host, vcpus: 1);
        g.Cpu().Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.Shutdown }, null));
        Assert.Equal(ShutdownReason.Crash, RunUntilShutdown(g));
        Assert.Contains("triple fault", _host.ReadDmesg());
    }

    [Fact]
    public unsafe void MsrExits()
    {
        var g = new Guest(_host, vcpus: 1);
        var cpu = g.Cpu();
        g.Write(0x3100, Sched.SHUTDOWN_poweroff);
        cpu.Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.WrMsr, Port = XenCpuid.HypercallPageMsr, Data = 0x2000 }, null));
        cpu.Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.RdMsr, Port = 0x12345 }, null));
        cpu.Script.Enqueue((new VcpuExit { Reason = VcpuExitReason.RdMsr, Port = Vlapic.MsrApicBase }, null));
        cpu.Script.Enqueue((Hypercall, Regs(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, 0x3100)));
        Assert.Equal(ShutdownReason.Poweroff, RunUntilShutdown(g));

        // The hypercall page: 32-byte stubs "mov $nr, %eax; vmcall; ret".
        var page = g.ReadBytes(0x2000, 4096);
        Assert.Equal(new byte[] { 0xB8, 18, 0, 0, 0, 0x0F, 0x01, 0xC1, 0xC3 }, page.AsSpan(18 * 32, 9).ToArray());
        Assert.Equal(0xCC, page[18 * 32 + 9]);
        Assert.True(cpu.Completions.TryDequeue(out ulong unknown));
        Assert.Equal(ulong.MaxValue - 1, unknown); // #GP for an MSR nobody owns
        Assert.True(cpu.Completions.TryDequeue(out ulong apicBase));
        Assert.Equal(0xFEE00000UL | Vlapic.ApicBaseEnable | Vlapic.ApicBaseBsp, apicBase);
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM")]
    public void HaltedVcpuWakesForItsEventAndTakesTheUpcall()
    {
        var a = new Guest(_host, vcpus: 1);
        var b = new Guest(_host, vcpus: 1);
        _host.SetHvmParam(a.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        uint pa = Evtchn.AllocUnbound(a, b.Id);
        uint pb = Evtchn.BindInterdomain(b, a.Id, pa);
        unsafe { a.Vcpu().VcpuInfo->EvtchnUpcallPending = 0; }
        _host.Unpause(a.Id);
        // With nothing scripted the vCPU halts and blocks.
        Assert.True(TestHosts.WaitUntil(() => a.Vcpu().Blocked && !a.Vcpu().IsRunning));
        Assert.True(_host.GetDomainInfo(a.Id).IsBlocked);
        Assert.Equal(0, Evtchn.Send(b, pb));
        Assert.True(TestHosts.WaitUntil(() => a.Cpu().Delivered.Contains(0xF3)));
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM")]
    public void AHaltedVcpusSingleshotTimerIsFiredByThePcpuThatRunsIt() => HaltWithATimer(softAffinity: null, expectedPcpu: 0);

    [Fact]
    [Trait("Feature", "x86/PVHVM")]
    public void TheTimerOfAVcpuThatPrefersAnotherPcpuIsFiredThere() => HaltWithATimer(softAffinity: 1, expectedPcpu: 1);

    private void HaltWithATimer(int? softAffinity, int expectedPcpu)
    {
        var g = new Guest(_host, vcpus: 1);
        if (softAffinity is int soft)
            _host.SetVcpuAffinity(g.Id, 0, hard: null, soft: [soft]);
        _host.SetHvmParam(g.Id, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        var bind = new Public.EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = 0 };
        Assert.Equal(0, Evtchn.Op(g, EventChannel.EVTCHNOP_bind_virq, ref bind));
        unsafe { g.Vcpu().VcpuInfo->EvtchnUpcallPending = 0; }
        var wheel = _host.Services.Timers;
        long firedByWheel = wheel.SingleshotsFired;
        long deadline = _host.SystemTimeNs + 200_000_000;
        g.Write(Guest.Scratch, new Public.VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)deadline });
        g.Cpu().Script.Enqueue((Hypercall, Regs(Xen.__HYPERVISOR_vcpu_op, Public.VcpuOp.VCPUOP_set_singleshot_timer, 0, Guest.Scratch)));
        // The vCPU arms its timer and halts; its idle pCPU takes the timer from the wheel, sleeps until it, fires it
        // and runs the vCPU, which takes the upcall. The timer thread fires nothing.
        _host.Unpause(g.Id);
        Assert.True(TestHosts.WaitUntil(() => g.Cpu().Delivered.Contains(0xF3)));
        Assert.True(_host.SystemTimeNs >= deadline);
        Assert.Equal(long.MaxValue, g.Vcpu().SingleshotDeadline);
        Assert.Equal(1u, g.Vcpu().VirqTimerPending);
        Assert.Equal(firedByWheel, wheel.SingleshotsFired);
        // Both pCPUs are idle: the one the wake-up goes to (the first, or the one the vCPU prefers) took it.
        Assert.Equal(expectedPcpu, XenSharp.Hypervisor.Scheduling.SchedUnit.Of(g.Vcpu()).Processor);
    }

    [Fact]
    public void PauseUnpauseAndDestroyAWorkingDomain()
    {
        var g = new Guest(_host, vcpus: 2);
        var ctx = new Public.Hvm.VcpuHvmContext { Mode = 1 };
        g.Vcpu(1).SetInitialContext(ctx);
        _host.Unpause(g.Id);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VcpuOp.VCPUOP_up, 1));
        Assert.Equal(2, _host.GetDomainInfo(g.Id).OnlineVcpus);
        _host.Pause(g.Id);
        Assert.Equal(DomainRunState.Paused, _host.GetDomainInfo(g.Id).State);
        Assert.False(_host.GetDomainInfo(g.Id).IsRunningNow);
        _host.Unpause(g.Id);
        Assert.Equal(DomainRunState.Running, _host.GetDomainInfo(g.Id).State);
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        _host.Destroy(g.Id);
        Assert.True(_host.GetHostInfo().FreeMemoryBytes > free);
        Assert.Throws<HypervisorException>(() => _host.GetDomainInfo(g.Id));
    }

    [Fact]
    public void Domain0IsListed()
    {
        var g = new Guest(_host);
        var list = _host.ListDomains();
        Assert.Equal(0, list[0].DomainId);
        Assert.Equal(DomainRunState.Running, list[0].State);
        Assert.Contains(list, d => d.DomainId == g.Id && d.State == DomainRunState.Paused && d.TotPages == 1024 && d.Vcpus == 2);
        Assert.Throws<HypervisorException>(() => _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1) { DomainId = g.Id }));
        Assert.Throws<HypervisorException>(() => _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 0)));
        Assert.Throws<HypervisorException>(() => _host.PopulatePhysmap(g.Id, 0x100000, 4000)); // beyond max memory
    }
}

public class ControlApiTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Fact]
    [Trait("Feature", "Credit Scheduler")]
    public void WeightsAndVcpuList()
    {
        var g = new Guest(_host, vcpus: 3);
        Assert.Equal(256, _host.GetSchedulerWeight(g.Id));
        _host.SetSchedulerWeight(g.Id, 512);
        Assert.Equal(512, _host.GetSchedulerWeight(g.Id));
        Assert.Throws<HypervisorException>(() => _host.SetSchedulerWeight(g.Id, 0));
        var vcpus = _host.ListVcpus(g.Id);
        Assert.Equal(3, vcpus.Count);
        Assert.True(vcpus[0].Online);
        Assert.False(vcpus[2].Online);
        Assert.Equal("credit", _host.GetHostInfo().Scheduler);
    }

    [Fact]
    public void NmiReachesTheEngine()
    {
        var g = new Guest(_host, vcpus: 1);
        _host.SendNmi(g.Id);
        _host.Unpause(g.Id);
        Assert.True(TestHosts.WaitUntil(() => g.Cpu().NmisInjected == 1));
        Assert.Throws<HypervisorException>(() => _host.SendNmi(g.Id, 4));
    }

    [Fact]
    public void GuestMemoryAccessFromTheHost()
    {
        var g = new Guest(_host);
        using (var m = _host.Dom0Services.MapGuestFrame(g.Id, 0x10))
        {
            m.Span[5] = 0x77;
            Assert.Equal(0x77, g.ReadBytes(0x10005, 1)[0]);
        }
        Assert.Throws<HypervisorException>(() => _host.Dom0Services.MapGuestFrame(g.Id, 0x9000));
        Assert.Throws<HypervisorException>(() => _host.WriteGuestMemory(g.Id, 0x3FFFFF, new byte[2]));
        Assert.Throws<HypervisorException>(() => _host.ReadGuestMemory(999, 0, new byte[1]));
        Assert.Throws<HypervisorException>(() => _host.SetHvmParam(g.Id, 200, 1));
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void FrameMappedByTheHostSurvivesBallooningUntilReleased()
    {
        var g = new Guest(_host);
        var m = _host.Dom0Services.MapGuestFrame(g.Id, 0x20);
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        Assert.True(g.Domain.RemovePage(0x20));
        Assert.Equal(free, _host.GetHostInfo().FreeMemoryBytes); // still referenced
        m.Span[0] = 1; // and still safe to touch
        m.Dispose();
        Assert.Equal(free + 4096, _host.GetHostInfo().FreeMemoryBytes);
    }
}
