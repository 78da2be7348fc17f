using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Public.Compat;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// System time and the guest's view of it. System time is nanoseconds since the hypervisor started, from
/// the host's monotonic clock (the one the x86 engine derives RDTSC from). The guest TSC at a system time
/// is given by <see cref="ReadTsc"/> (by default the engine's formula: host ns × TSC kHz / 10^6); vcpu_time_info carries the matching tsc_to_system_mul/shift so that
/// pvclock's system_time + ((tsc - tsc_timestamp) &lt;&lt; shift) * mul &gt;&gt; 32 equals the system time.
/// </summary>
internal sealed unsafe class Time
{
    private readonly ulong _startHostNs = X86Engine.HostMonotonicNs();
    private readonly Func<long, ulong> _tscAt;

    public Time(ulong tscHz = X86Engine.DefaultTscKhz * 1000, Func<long, ulong>? tscAtSystemTime = null)
    {
        TscHz = tscHz;
        // By default the guest TSC is the engine's: host monotonic ns scaled to the TSC frequency, offset 0.
        _tscAt = tscAtSystemTime ?? (ns => X86Engine.ComputeTsc(_startHostNs + (ulong)ns, tscHz / 1000, 0));
        (TscToSystemMul, TscShift) = ComputeScale(tscHz);
        // Wall-clock time at system time 0.
        BootWallclockNs = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks * 100 - NowNs;
    }

    public ulong TscHz { get; }
    public uint TscToSystemMul { get; }
    public sbyte TscShift { get; }
    public long BootWallclockNs { get; }

    public long NowNs => (long)(X86Engine.HostMonotonicNs() - _startHostNs);

    public ulong ReadTsc(long ns) => _tscAt(ns);

    /// <summary>Finds mul and shift so that ((tsc &lt;&lt; shift) * mul) &gt;&gt; 32 converts TSC ticks to ns (mul in [2^31, 2^32)).</summary>
    public static (uint Mul, sbyte Shift) ComputeScale(ulong tscHz)
    {
        // ns per tick = mul * 2^shift / 2^32, with mul / 2^32 kept in [0.5, 1) for precision.
        double r = 1e9 / tscHz;
        int shift = 0;
        while (r >= 1)
        {
            r /= 2;
            shift++;
        }
        while (r < 0.5)
        {
            r *= 2;
            shift--;
        }
        return ((uint)(r * 4294967296.0), (sbyte)shift);
    }

    /// <summary>Converts a TSC delta to ns with the advertised scale (what a guest computes).</summary>
    public ulong ScaleDelta(ulong delta)
    {
        delta = TscShift >= 0 ? delta << TscShift : delta >> -TscShift;
        return (ulong)((UInt128)delta * TscToSystemMul >> 32);
    }

    /// <summary>Publishes a fresh vcpu_time_info in the vCPU's vcpu_info (version odd while writing).</summary>
    public void UpdateVcpuTime(Vcpu v)
    {
        var vi = v.VcpuInfo;
        if (vi is null)
            return;
        long now = NowNs;
        Publish(&vi->Time, now);
    }

    public void Publish(VcpuTimeInfo* t, long now)
    {
        uint ver = Volatile.Read(ref t->Version);
        Volatile.Write(ref t->Version, (ver | 1) + ((ver & 1) == 0 ? 0u : 2u));
        Interlocked.MemoryBarrier();
        t->TscTimestamp = ReadTsc(now);
        t->SystemTime = (ulong)now;
        t->TscToSystemMul = TscToSystemMul;
        t->TscShift = TscShift;
        t->Flags = Xen.XEN_PVCLOCK_TSC_STABLE_BIT;
        Interlocked.MemoryBarrier();
        Volatile.Write(ref t->Version, (Volatile.Read(ref t->Version) + 1) & ~1u);
    }

    /// <summary>Writes the wall-clock time of system time 0 into shared_info (wc_version odd while writing).</summary>
    public void UpdateWallclock(Domain d)
    {
        if (d.SharedInfo is null)
            return;
        var si = d.SharedInfo;
        long wc = BootWallclockNs + d.WallclockOffsetNs;
        if (d.Has32BitSharedInfo)
        {
            byte* b = (byte*)si;
            ref uint ver = ref *(uint*)(b + SharedInfo32.OffsetWcVersion);
            Volatile.Write(ref ver, ver | 1);
            Interlocked.MemoryBarrier();
            ulong s32 = (ulong)(wc / 1_000_000_000);
            *(uint*)(b + SharedInfo32.OffsetWcSec) = (uint)s32;
            *(uint*)(b + SharedInfo32.OffsetWcSecHi) = (uint)(s32 >> 32);
            *(uint*)(b + SharedInfo32.OffsetWcNsec) = (uint)(wc % 1_000_000_000);
            Interlocked.MemoryBarrier();
            Volatile.Write(ref ver, ver + 1);
            return;
        }
        Volatile.Write(ref si->WcVersion, si->WcVersion | 1);
        Interlocked.MemoryBarrier();
        ulong sec = (ulong)(wc / 1_000_000_000);
        si->WcSec = (uint)sec;
        si->WcSecHi = (uint)(sec >> 32);
        si->WcNsec = (uint)(wc % 1_000_000_000);
        Interlocked.MemoryBarrier();
        Volatile.Write(ref si->WcVersion, si->WcVersion + 1);
    }
}

internal enum TimerKind { Singleshot, Periodic, Poll, Slice, Lapic, Watchdog, CodeAging, Device }

/// <summary>A timer of an emulated platform device (the PIT, RTC, HPET, PM timer): fired on the timer thread while
/// its domain lives. Entries may be stale; the device re-checks its own deadline.</summary>
internal interface IDeviceTimer
{
    Domain Domain { get; }
    void OnTimer(long now);
}

/// <summary>
/// The hypervisor's timer wheel: deadlines in a queue ordered by time, and one host thread that sleeps on a kernel
/// timer (<see cref="HostTimer"/>) armed for the earliest of them. Guests re-arm their timers far more often than
/// those timers fire (Linux moves its singleshot timer on every interrupt and every entry to idle), so an entry an
/// owner has since moved or stopped is dropped from the head of the queue as soon as it is seen there, and the kernel
/// timer follows the new head: re-arming wakes no thread, and the thread wakes only for a deadline still current.
/// Entries may still be stale when they fire; each firing re-checks the owner's current deadline.
/// </summary>
internal sealed class Timers : IDisposable
{
    private readonly Time _time;
    private readonly Action<object, TimerKind, long> _fire;
    private readonly Func<object, TimerKind, long, bool> _isCurrent;
    private readonly PriorityQueue<(object Owner, TimerKind Kind), long> _queue = new();
    private readonly HostTimer _timer = new();
    private readonly Thread _thread;
    // The deadline the kernel timer is armed for (long.MaxValue: disarmed).
    private long _armed = long.MaxValue;
    private bool _stop;
    private long _singleshotsFired;

    /// <param name="isCurrent">Whether an entry still names its owner's deadline (false: it was moved or stopped and
    /// the entry may be dropped unfired); every entry is current without it.</param>
    public Timers(Time time, Action<object, TimerKind, long> fire, Func<object, TimerKind, long, bool>? isCurrent = null)
    {
        _time = time;
        _fire = fire;
        _isCurrent = isCurrent ?? ((_, _, _) => true);
        _thread = new Thread(Loop) { IsBackground = true, Name = "xen-timers" };
        _thread.Start();
    }

    /// <summary>Singleshot entries this thread fired (not those an idle pCPU took and fired itself).</summary>
    public long SingleshotsFired => Volatile.Read(ref _singleshotsFired);

    public void Schedule(long deadlineNs, object owner, TimerKind kind)
    {
        lock (_queue)
        {
            _queue.Enqueue((owner, kind), deadlineNs);
            ArmForHeadLocked();
        }
    }

    /// <summary>Takes the earliest current entry out of the wheel if <paramref name="accept"/> wants it, and re-arms the
    /// kernel timer for what is left. An idle pCPU takes its next guest timer this way and sleeps until it itself, so
    /// that a guest's timer interrupt wakes one thread (the pCPU that runs the guest) rather than this one and then the
    /// pCPU. The taker fires the entry or gives it back with <see cref="Schedule"/>.</summary>
    public bool TryTakeHead(Func<object, TimerKind, long, bool> accept, out object? owner, out long when)
    {
        lock (_queue)
        {
            while (_queue.TryPeek(out var e, out when))
            {
                if (!_isCurrent(e.Owner, e.Kind, when))
                {
                    _queue.Dequeue();
                    continue;
                }
                if (!accept(e.Owner, e.Kind, when))
                    break;
                _queue.Dequeue();
                owner = e.Owner;
                ArmForHeadLocked();
                return true;
            }
        }
        owner = null;
        when = long.MaxValue;
        return false;
    }

    /// <summary>Drops stale entries from the head and arms the kernel timer for the first current one.</summary>
    private void ArmForHeadLocked()
    {
        long head = long.MaxValue;
        while (_queue.TryPeek(out var e, out long when))
        {
            if (_isCurrent(e.Owner, e.Kind, when))
            {
                head = when;
                break;
            }
            _queue.Dequeue();
        }
        if (head == _armed || _stop)
            return;
        _armed = head;
        if (head == long.MaxValue)
            _timer.Disarm();
        else
            _timer.ArmIn(head - _time.NowNs);
    }

    private void Loop()
    {
        var due = new List<(object, TimerKind)>();
        while (true)
        {
            _timer.Wait();
            lock (_queue)
            {
                if (_stop)
                    return;
                long now = _time.NowNs;
                while (_queue.TryPeek(out var e, out long when) && when <= now)
                {
                    _queue.Dequeue();
                    if (_isCurrent(e.Owner, e.Kind, when))
                        due.Add(e);
                }
                // The timer expired (or a signal ended the wait early): arm it again for what is left.
                _armed = long.MinValue;
                ArmForHeadLocked();
            }
            long at = _time.NowNs;
            foreach (var (owner, kind) in due)
            {
                if (kind == TimerKind.Singleshot)
                    Interlocked.Increment(ref _singleshotsFired);
                try { _fire(owner, kind, at); }
                catch { /* a timer callback must not stop the wheel */ }
            }
            due.Clear();
        }
    }

    public void Dispose()
    {
        lock (_queue)
        {
            if (_stop)
                return;
            _stop = true;
        }
        _timer.ArmIn(1);
        _thread.Join();
        _timer.Dispose();
    }
}

/// <summary>set_timer_op and the per-vCPU timers VCPUOP_set_singleshot_timer/set_periodic_timer arm.</summary>
internal static class TimeOps
{
    public static long SetTimerOp(Vcpu v, in HypercallArgs a)
    {
        // A 32-bit caller passes the 64-bit time in two registers, low half first (Xen's compat_set_timer_op).
        long deadline = v.Compat ? (long)(((ulong)(int)(uint)a.A2 << 32) | (uint)a.A1) : (long)a.A1;
        if (deadline == 0)
            v.SingleshotDeadline = long.MaxValue;
        else
            ArmSingleshot(v, deadline);
        return 0;
    }

    public static void ArmSingleshot(Vcpu v, long deadline)
    {
        if (deadline <= v.Domain.Host.Time.NowNs)
        {
            // Already due: the event is pending when the hypercall returns, as Xen sends it at once (or its timer
            // softirq does before the vCPU resumes), rather than from the wheel's thread a thread switch later.
            v.SingleshotDeadline = long.MaxValue;
            SendTimerVirq(v);
            return;
        }
        v.SingleshotDeadline = deadline;
        v.Domain.Host.Timers.Schedule(deadline, v, TimerKind.Singleshot);
    }

    public static void ArmPeriodic(Vcpu v, long period)
    {
        v.PeriodicPeriod = period;
        v.PeriodicNext = v.Domain.Host.Time.NowNs + period;
        v.Domain.Host.Timers.Schedule(v.PeriodicNext, v, TimerKind.Periodic);
    }

    /// <summary>A timer came due (on the timer thread).</summary>
    public static void Fire(Vcpu v, TimerKind kind, long now)
    {
        switch (kind)
        {
            case TimerKind.Singleshot:
                // The wheel and a pCPU that took the entry may both hold this deadline (a guest can re-arm the same
                // time): whoever clears it sends the event, once.
                long deadline = Volatile.Read(ref v.SingleshotDeadline);
                if (deadline <= now && Interlocked.CompareExchange(ref v.SingleshotDeadline, long.MaxValue, deadline) == deadline)
                    SendTimerVirq(v);
                break;
            case TimerKind.Periodic:
                if (v.PeriodicPeriod > 0 && v.PeriodicNext <= now)
                {
                    SendTimerVirq(v);
                    v.PeriodicNext = Math.Max(v.PeriodicNext + v.PeriodicPeriod, now + 1);
                    v.Domain.Host.Timers.Schedule(v.PeriodicNext, v, TimerKind.Periodic);
                }
                break;
            case TimerKind.Poll:
                if (v.PollPorts is not null && v.PollDeadline <= now)
                    v.Unblock();
                break;
            case TimerKind.Slice:
                v.Engine?.RequestExit();
                break;
            case TimerKind.Lapic:
                v.Arch.Vlapic.OnTimer(now);
                break;
        }
    }

    /// <summary>Whether a timer-wheel entry still names its vCPU's deadline: re-arming or stopping a singleshot,
    /// periodic or poll timer leaves the old entry behind, and the wheel drops it instead of waking for it.</summary>
    public static bool IsCurrent(object owner, TimerKind kind, long when) => owner is not Vcpu v || kind switch
    {
        TimerKind.Singleshot => Volatile.Read(ref v.SingleshotDeadline) == when,
        TimerKind.Periodic => Volatile.Read(ref v.PeriodicNext) == when,
        TimerKind.Poll => Volatile.Read(ref v.PollDeadline) == when,
        _ => true,
    };

    private static void SendTimerVirq(Vcpu v)
    {
        v.Domain.Host.Time.UpdateVcpuTime(v);
        Interlocked.Increment(ref v.VirqTimerPending);
        v.Domain.Evtchn.SendVirq(v, Xen.VIRQ_TIMER);
    }
}
