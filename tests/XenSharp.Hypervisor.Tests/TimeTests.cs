using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.VcpuOp;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "x86/PVH")]
public unsafe class TimeTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static long VcpuOp<T>(Guest g, int cmd, uint vcpu, T arg, int caller = 0) where T : unmanaged
    {
        g.Write(Guest.Scratch, arg);
        return g.Call(Xen.__HYPERVISOR_vcpu_op, (ulong)cmd, vcpu, Guest.Scratch, vcpu: caller);
    }

    private static uint BindTimer(Guest g, uint vcpu)
    {
        var b = new EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = vcpu };
        Assert.Equal(0, Evtchn.Op(g, EventChannel.EVTCHNOP_bind_virq, ref b));
        return b.Port;
    }

    private static bool Pending(Guest g, uint port) => (g.Domain.SharedInfo->EvtchnPending[port / 64] & (1UL << (int)(port % 64))) != 0;

    [Fact]
    public void SystemTimeIsMonotonic()
    {
        long last = _host.SystemTimeNs;
        for (int i = 0; i < 10000; i++)
        {
            long now = _host.SystemTimeNs;
            Assert.True(now >= last);
            last = now;
        }
    }

    [Theory]
    [InlineData(1_000_000_000UL)]
    [InlineData(2_000_000_000UL)]
    [InlineData(3_300_000_000UL)]
    [InlineData(100_000_000UL)]
    [InlineData(25_000_000_000UL)]
    public void ScaleConvertsTicksToNanoseconds(ulong hz)
    {
        var t = new Time(hz);
        ulong ticks = hz * 3; // three seconds
        ulong ns = t.ScaleDelta(ticks);
        Assert.InRange((long)ns, 3_000_000_000L - 3_000, 3_000_000_000L + 3_000);
        Assert.True(t.TscToSystemMul >= 0x80000000u);
    }

    [Fact]
    public void PvclockInVcpuInfoGivesSystemTime()
    {
        var g = new Guest(_host);
        var t = g.Vcpu().VcpuInfo->Time;
        Assert.Equal(0u, t.Version & 1);
        Assert.NotEqual(0u, t.TscToSystemMul);
        Assert.Equal(Xen.XEN_PVCLOCK_TSC_STABLE_BIT, t.Flags);
        var time = g.Domain.Host.Time;
        long before = time.NowNs;
        ulong tsc = time.ReadTsc(before);
        ulong guestNs = t.SystemTime + time.ScaleDelta(tsc - t.TscTimestamp);
        Assert.InRange((long)guestNs, before - 1000, before + 1000);
    }

    [Fact]
    public void HvmGetTimeReturnsSystemTime()
    {
        var g = new Guest(_host);
        long before = _host.SystemTimeNs;
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, Public.Hvm.HvmOp.HVMOP_get_time, Guest.Scratch));
        long now = (long)g.Read<ulong>(Guest.Scratch);
        Assert.True(now >= before && now <= _host.SystemTimeNs);
    }

    [Fact]
    public void SingleshotTimerDeliversVirqTimer()
    {
        var g = new Guest(_host);
        uint port = BindTimer(g, 0);
        long deadline = _host.SystemTimeNs + 1_000_000;
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_singleshot_timer, 0, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)deadline }));
        Assert.True(TestHosts.WaitUntil(() => Pending(g, port)));
        Assert.True(_host.SystemTimeNs >= deadline);
        Assert.Equal(long.MaxValue, g.Vcpu().SingleshotDeadline);
    }

    [Fact]
    public void APastDeadlineIsPendingWhenTheHypercallReturns()
    {
        var g = new Guest(_host);
        uint port = BindTimer(g, 0);
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_singleshot_timer, 0, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)(_host.SystemTimeNs - 1000) }));
        Assert.True(Pending(g, port));
        Assert.Equal(1u, g.Vcpu().VirqTimerPending);
        Assert.Equal(long.MaxValue, g.Vcpu().SingleshotDeadline);
        // set_timer_op likewise.
        g.Domain.SharedInfo->EvtchnPending[port / 64] &= ~(1UL << (int)(port % 64));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_set_timer_op, (ulong)(_host.SystemTimeNs - 1000)));
        Assert.True(Pending(g, port));
        Assert.Equal(2u, g.Vcpu().VirqTimerPending);
    }

    [Fact]
    public void PastDeadlineFiresAndFutureFlagRefusesIt()
    {
        var g = new Guest(_host);
        uint port = BindTimer(g, 0);
        ulong past = (ulong)(_host.SystemTimeNs - 1000);
        Assert.Equal(-Errno.ETIME, VcpuOp(g, VCPUOP_set_singleshot_timer, 0, new VcpuSetSingleshotTimer { TimeoutAbsNs = past, Flags = VCPU_SSHOTTMR_future }));
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_singleshot_timer, 0, new VcpuSetSingleshotTimer { TimeoutAbsNs = past }));
        Assert.True(TestHosts.WaitUntil(() => Pending(g, port)));
        // Only the vCPU itself may arm its singleshot timer.
        Assert.Equal(-Errno.EINVAL, VcpuOp(g, VCPUOP_set_singleshot_timer, 1, new VcpuSetSingleshotTimer { TimeoutAbsNs = past }));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, Guest.Bad));
    }

    [Fact]
    public void ABlockedVcpuWhoseTimerWasStoppedStaysAsleep()
    {
        // An idle guest with nothing due stops its singleshot timer and blocks; a PVH vCPU has no periodic timer
        // unless it asks for one. The stopped deadline's entry, left in the timer wheel, must not wake it.
        var g = new Guest(_host);
        uint port = BindTimer(g, 0);
        BindTimer(g, 1);
        Assert.Equal(0, g.Vcpu().PeriodicPeriod);
        long stopped = _host.SystemTimeNs + 20_000_000;
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_singleshot_timer, 0, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)stopped }));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_block));
        Assert.True(g.Vcpu().Blocked);
        // vCPU 1's timer, due after the stopped one, shows when the wheel has gone past it.
        long witness = _host.SystemTimeNs + 60_000_000;
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_singleshot_timer, 1, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)witness }, caller: 1));
        Assert.True(TestHosts.WaitUntil(() => g.Vcpu(1).VirqTimerPending == 1));
        Assert.True(_host.SystemTimeNs > stopped);
        Assert.True(g.Vcpu().Blocked);
        Assert.Equal(0u, g.Vcpu().VirqTimerPending);
        Assert.False(Pending(g, port));
    }

    [Fact]
    public void PeriodicTimerKeepsFiring()
    {
        var g = new Guest(_host);
        BindTimer(g, 1);
        Assert.Equal(-Errno.EINVAL, VcpuOp(g, VCPUOP_set_periodic_timer, 1, new VcpuSetPeriodicTimer { PeriodNs = 1000 }));
        Assert.Equal(0, VcpuOp(g, VCPUOP_set_periodic_timer, 1, new VcpuSetPeriodicTimer { PeriodNs = 1_000_000 }));
        Assert.True(TestHosts.WaitUntil(() => g.Vcpu(1).VirqTimerPending >= 3));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_stop_periodic_timer, 1, 0));
        Assert.Equal(0, g.Vcpu(1).PeriodicPeriod);
    }

    [Fact]
    public void SetTimerOpArmsAndCancels()
    {
        var g = new Guest(_host);
        uint port = BindTimer(g, 0);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_set_timer_op, (ulong)(_host.SystemTimeNs + 1_000_000)));
        Assert.True(TestHosts.WaitUntil(() => Pending(g, port)));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_set_timer_op, (ulong)(_host.SystemTimeNs + 1_000_000_000)));
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_set_timer_op, 0));
        Assert.Equal(long.MaxValue, g.Vcpu().SingleshotDeadline);
    }

    [Fact]
    public void PollBlocksUntilItsTimeout()
    {
        var g = new Guest(_host);
        uint port = Evtchn.BindIpi(g, 0);
        g.Write(Guest.Scratch + 0x100, port);
        var p = new SchedPoll { Ports = Guest.Scratch + 0x100, NrPorts = 1, Timeout = (ulong)(_host.SystemTimeNs + 2_000_000) };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
        Assert.True(TestHosts.WaitUntil(() => !g.Vcpu().Blocked));

        // Waiting forever ends when the polled port is raised, even masked.
        p.Timeout = 0;
        g.Domain.SharedInfo->EvtchnMask[0] |= 1UL << (int)port;
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
        Assert.True(g.Vcpu().Blocked);
        Assert.Equal(0, Evtchn.Send(g, port));
        Assert.False(g.Vcpu().Blocked);

        // Already pending: returns at once without blocking.
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
        Assert.False(g.Vcpu().Blocked);
        g.Write(Guest.Scratch + 0x100, 999u);
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
        p.Ports = Guest.Bad;
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
        p.NrPorts = 1000;
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
    }
    [Fact]
    public void APortRaisedWhilePollIsGoingToSleepStillWakesIt()
    {
        // hvmloader's xenbus waits with SCHEDOP_poll and no timeout: a wakeup lost between poll's pending check and
        // its sleep hangs it for ever. Race the two many times; a masked port leaves only the poll path to wake it.
        var g = new Guest(_host);
        uint port = Evtchn.BindIpi(g, 0);
        g.Write(Guest.Scratch + 0x100, port);
        g.Domain.SharedInfo->EvtchnMask[0] |= 1UL << (int)port;
        var p = new SchedPoll { Ports = Guest.Scratch + 0x100, NrPorts = 1, Timeout = 0 };
        const int Rounds = 200_000;
        using var start = new Barrier(2);
        var sender = new Thread(() =>
        {
            for (int i = 0; i < Rounds; i++)
            {
                start.SignalAndWait();
                g.Domain.Evtchn.SetPending(port);
            }
        });
        sender.IsBackground = true;
        sender.Start();
        for (int i = 0; i < Rounds; i++)
        {
            Interlocked.And(ref g.Domain.SharedInfo->EvtchnPending[0], ~(1UL << (int)port));
            start.SignalAndWait();
            Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_poll, ref p));
            Assert.True(SpinWait.SpinUntil(() => !g.Vcpu().Blocked && Pending(g, port), 60_000), $"round {i}: the raised port did not wake the poll");
        }
        sender.Join();
    }
}
