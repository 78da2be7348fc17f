using System.Collections.Concurrent;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;
using static XenSharp.Public.VcpuOp;

namespace XenSharp.Hypervisor.Tests;

/// <summary>The timer wheel and the slice timer sleep on a kernel timer that follows their earliest deadline: a
/// deadline moved earlier must still fire, one moved later or stopped must not fire at its old time.</summary>
public unsafe class TimerWheelTests : IDisposable
{
    private const long Ms = 1_000_000;
    private const long Hour = 3_600_000 * Ms;

    private readonly Time _time = new();
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private sealed class Owner(string name)
    {
        public volatile bool Current = true;
        public override string ToString() => name;
    }

    [Fact]
    public void AnEarlierDeadlineFiresAndAMovedOneDoesNot()
    {
        var fired = new ConcurrentQueue<string>();
        using var timers = new Timers(_time, (o, _, _) => fired.Enqueue(o.ToString()!), (o, _, _) => ((Owner)o).Current);
        var late = new Owner("late");
        var first = new Owner("first");
        var moved = new Owner("moved") { Current = false }; // its owner already moved it elsewhere
        var last = new Owner("last");
        timers.Schedule(_time.NowNs + Hour, late, TimerKind.Device);
        // Armed for an hour: each earlier deadline must re-arm the kernel timer.
        long now = _time.NowNs;
        timers.Schedule(now + 10 * Ms, first, TimerKind.Device);
        timers.Schedule(now + 15 * Ms, moved, TimerKind.Device);
        timers.Schedule(now + 30 * Ms, last, TimerKind.Device);
        Assert.True(TestHosts.WaitUntil(() => fired.Contains("last")));
        Assert.Equal(["first", "last"], fired);
    }

    [Fact]
    public void EntriesFireInDeadlineOrder()
    {
        var fired = new ConcurrentQueue<int>();
        using var timers = new Timers(_time, (o, _, _) => fired.Enqueue((int)o));
        long now = _time.NowNs;
        for (int i = 4; i >= 0; i--)
            timers.Schedule(now + (i + 1) * 5 * Ms, i, TimerKind.Device);
        Assert.True(TestHosts.WaitUntil(() => fired.Count == 5));
        Assert.Equal([0, 1, 2, 3, 4], fired);
    }

    [Fact]
    public void AnEntryTakenFromTheHeadDoesNotFireAndTheRestStillDo()
    {
        var fired = new ConcurrentQueue<string>();
        using var timers = new Timers(_time, (o, _, _) => fired.Enqueue(o.ToString()!), (o, _, _) => ((Owner)o).Current);
        var moved = new Owner("moved") { Current = false };
        var taken = new Owner("taken");
        var device = new Owner("device");
        var last = new Owner("last");
        long now = _time.NowNs;
        timers.Schedule(now + 1000 * Ms, moved, TimerKind.Singleshot);
        timers.Schedule(now + 1500 * Ms, taken, TimerKind.Singleshot);
        timers.Schedule(now + 2000 * Ms, device, TimerKind.Device);
        timers.Schedule(now + 2500 * Ms, last, TimerKind.Singleshot);
        // Only the first current entry may be taken, and only if the taker wants it.
        Assert.False(timers.TryTakeHead((_, kind, _) => kind == TimerKind.Device, out _, out _));
        Assert.True(timers.TryTakeHead((_, kind, _) => kind == TimerKind.Singleshot, out var owner, out long when));
        Assert.Same(taken, owner);
        Assert.Equal(now + 1500 * Ms, when);
        Assert.True(TestHosts.WaitUntil(() => fired.Contains("last")));
        Assert.Equal(["device", "last"], fired);
        Assert.Equal(1, timers.SingleshotsFired);
    }

    [Fact]
    public void SliceTimerFiresTheEarliestAndNotACleared()
    {
        var fired = new ConcurrentQueue<int>();
        using var slices = new SliceTimer(_time, 3, cpu => fired.Enqueue(cpu));
        slices.Set(0, _time.NowNs + Hour);
        slices.Set(1, _time.NowNs + 300 * Ms);
        slices.Set(1, long.MaxValue); // the slice ended early: pCPU 1 idles
        slices.Set(2, _time.NowNs + 400 * Ms);
        Assert.True(TestHosts.WaitUntil(() => fired.Contains(2)));
        slices.Set(0, _time.NowNs + Ms); // moved from an hour away to now
        Assert.True(TestHosts.WaitUntil(() => fired.Contains(0)));
        Assert.Equal([2, 0], fired);
    }

    [Fact]
    public void ASingleshotTimerMovedLaterFiresAtItsNewDeadline()
    {
        var g = new Guest(_host);
        var b = new EvtchnBindVirq { Virq = Xen.VIRQ_TIMER, Vcpu = 0 };
        Assert.Equal(0, Evtchn.Op(g, EventChannel.EVTCHNOP_bind_virq, ref b));
        long first = _host.SystemTimeNs + 300 * Ms, second = _host.SystemTimeNs + 600 * Ms;
        g.Write(Guest.Scratch, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)first });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, Guest.Scratch));
        g.Write(Guest.Scratch, new VcpuSetSingleshotTimer { TimeoutAbsNs = (ulong)second });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, Guest.Scratch));
        Assert.True(TestHosts.WaitUntil(() => (g.Domain.SharedInfo->EvtchnPending[b.Port / 64] & (1UL << (int)(b.Port % 64))) != 0));
        Assert.True(_host.SystemTimeNs >= second);
        Assert.Equal(1u, g.Vcpu().VirqTimerPending);
    }
}
