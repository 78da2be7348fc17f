using XenSharp.Hypervisor.Common;
using static XenSharp.Public.Hvm.Params;

namespace XenSharp.Hypervisor.X86;

/// <summary>The values of HVM_PARAM_TIMER_MODE (xl.cfg timer_mode; Xen's HVMPTM_*).</summary>
internal enum TimerMode : byte
{
    DelayForMissedTicks = 0,
    NoDelayForMissedTicks = 1,
    NoMissedTicksPending = 2,
    OneMissedTickPending = 3,
}

/// <summary>
/// A platform timer's tick source (Xen's periodic_time in vpt.c): one-shot or periodic on system time, firing its
/// device's callback once per delivered tick. When the timer thread comes late and periods were missed, the domain's
/// timer_mode decides what the guest gets: modes 0 and 1 keep every missed tick pending and hand them over one at a
/// time at a catch-up pace, mode 2 drops them, mode 3 keeps at most one. Guest time is not slowed for missed ticks
/// (modes 0 and 1 differ in Xen only in that), so both count ticks the same here.
/// </summary>
internal sealed class Vpt(Domain domain, Action<long> tick) : IDeviceTimer
{
    /// <summary>More missed ticks than this are dropped: a guest paused for minutes should not see a storm.</summary>
    private const int MaxPending = 1000;

    private readonly object _lock = new();
    private long _deadline = long.MaxValue, _period;
    private int _pending;

    public Domain Domain { get; } = domain;

    public bool Running { get { lock (_lock) return _deadline != long.MaxValue || _pending > 0; } }
    public long Period { get { lock (_lock) return _period; } }

    /// <summary>Arms the timer: first tick at <paramref name="firstDeadline"/>, then every
    /// <paramref name="period"/> ns (0: one shot).</summary>
    public void Start(long firstDeadline, long period)
    {
        lock (_lock)
        {
            _deadline = firstDeadline;
            _period = Math.Max(period, 0);
            _pending = 0;
        }
        Domain.Host.Timers.Schedule(firstDeadline, this, TimerKind.Device);
    }

    public void Stop()
    {
        lock (_lock)
        {
            _deadline = long.MaxValue;
            _pending = 0;
        }
    }

    public void OnTimer(long now)
    {
        long next;
        lock (_lock)
        {
            if (_pending > 0 && _deadline > now)
            {
                // A catch-up firing for ticks missed earlier.
                _pending--;
                next = _pending > 0 ? Math.Min(_deadline, now + CatchUpDelay()) : _deadline;
            }
            else
            {
                if (_deadline > now)
                    return; // stale entry
                if (_period == 0)
                {
                    _deadline = long.MaxValue;
                    next = long.MaxValue;
                }
                else
                {
                    long missed = (now - _deadline) / _period;
                    _deadline += (missed + 1) * _period;
                    var mode = (TimerMode)Domain.Arch.Params[HVM_PARAM_TIMER_MODE];
                    _pending = mode switch
                    {
                        TimerMode.NoMissedTicksPending => 0,
                        TimerMode.OneMissedTickPending => missed > 0 ? 1 : 0,
                        _ => (int)Math.Min(_pending + missed, MaxPending),
                    };
                    next = _pending > 0 ? Math.Min(_deadline, now + CatchUpDelay()) : _deadline;
                }
            }
        }
        if (next != long.MaxValue)
            Domain.Host.Timers.Schedule(next, this, TimerKind.Device);
        tick(now);
    }

    // Missed ticks go at a quarter of the period, so the guest sees separate interrupts it can count.
    private long CatchUpDelay() => Math.Max(_period / 4, 10_000);
}
