using System.Runtime.CompilerServices;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A physical CPU: a host thread that asks the scheduler of its cpupool for a vCPU, runs it in the engine until its
/// slice ends, a preemption or an exit takes it off, handles its exits, and accounts its time (Xen's schedule()):
/// the CPU time its thread had, which on a loaded host is less than the slice's wall time.
/// </summary>
internal sealed class Pcpu
{
    /// <summary>Slack for a slice end seen a hair early (the slice timer and the engine read the clock separately).</summary>
    private const long SliceSlackNs = 20_000;

    private readonly HostServices _host;
    private readonly Cpupools _pools;
    private readonly Thread _thread;
    /// <summary>The longest an idle pCPU sleeps without being kicked (a safety net: kicks are what wake it).</summary>
    private const long IdleMaxNs = 500_000_000;

    private readonly object _idleLock = new();
    // What an idle pCPU sleeps on: armed for its next guest timer (or IdleMaxNs), and for now by a kick.
    private readonly HostTimer _sleep = new();
    private readonly Func<object, TimerKind, long, bool> _takeTimer;
    private volatile bool _stop;
    private volatile bool _preempt;
    private bool _kicked;
    // The pCPU sleeps on _sleep (under _idleLock): a kick must arm it to wake the thread.
    private bool _sleeping;
    // When the pCPU went idle (for _takeTimer).
    private long _idleSince;
    /// <summary>The pCPU whose thread is firing a guest timer it took from the wheel: the guest's wake-up tickles it
    /// rather than another idle pCPU, so that the thread already awake runs the guest.</summary>
    [ThreadStatic] internal static Pcpu? FiringTimer;
    /// <summary>The vCPU this thread is running: a kick from its own exit handling needs no exit request.</summary>
    [ThreadStatic] internal static Vcpu? RunningHere;
    // What the running slice did with a preemption request, for the trace.
    private long _preemptSeen, _preemptAt;
    // The thread's CPU clock at the end of the last slice (-1 after idling): one clock read per switch, the work of
    // the switch itself going to the next slice.
    private long _cpuMark = -1;

    public Pcpu(HostServices host, Cpupools pools, int id)
    {
        _host = host;
        _pools = pools;
        Id = id;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"pcpu{id}" };
        _takeTimer = TakesTimer;
        pools.Register(this);
    }

    public int Id { get; }
    public volatile Vcpu? CurrentVcpu;
    public Vcpu? Current => CurrentVcpu;
    /// <summary>When the current vCPU started running.</summary>
    public long RunStartNs;

    public void Start() => _thread.Start();

    public void Stop()
    {
        _stop = true;
        CurrentVcpu?.Engine?.RequestExit();
        Kick();
        if (_thread.IsAlive && Thread.CurrentThread != _thread)
            _thread.Join();
        if (!_thread.IsAlive)
            _sleep.Dispose();
    }

    /// <summary>Makes an idle pCPU (or one about to idle) look for work again.</summary>
    public void Kick()
    {
        lock (_idleLock)
        {
            _kicked = true;
            if (_sleeping)
            {
                _sleeping = false;
                _sleep.ArmIn(0);
            }
        }
    }

    /// <summary>Asks for a reschedule: the running vCPU leaves once it has had the scheduler's rate limit.</summary>
    public void Preempt()
    {
        _preempt = true;
        CurrentVcpu?.Engine?.RequestExit();
        Kick();
    }

    /// <summary>The slice timer fired.</summary>
    public void OnDeadline()
    {
        CurrentVcpu?.Engine?.RequestExit();
        Kick();
    }

    private void IdleWait(long until)
    {
        lock (_idleLock)
        {
            if (_kicked || _stop)
            {
                _kicked = false;
                return;
            }
            // Also clears the deadline of the slice that just ended: firing it would only wake this idle pCPU.
            _pools.Timer.Set(Id, until);
        }
        // The next guest timer, if it is a blocked vCPU's that this pCPU may run, is this pCPU's to fire: it sleeps
        // until then itself, and the timer thread does not wake for it.
        _idleSince = _host.Time.NowNs;
        Vcpu? taken = _host.Timers.TryTakeHead(_takeTimer, out var owner, out long due) ? (Vcpu)owner! : null;
        bool sleep;
        lock (_idleLock)
        {
            sleep = _sleeping = !_kicked && !_stop;
            if (sleep)
                _sleep.ArmIn(Math.Min(due - _host.Time.NowNs, IdleMaxNs));
        }
        if (sleep)
            _sleep.Wait();
        lock (_idleLock)
        {
            _sleeping = false;
            _kicked = false;
        }
        if (taken is not null)
            FireTaken(taken, due);
    }

    /// <summary>Whether an idle pCPU takes this wheel entry: a singleshot timer due within its longest sleep, of a
    /// blocked vCPU of its pool whose wake-up would be sent to this pCPU (so that the guest runs where it would have).</summary>
    private bool TakesTimer(object owner, TimerKind kind, long when)
        => kind == TimerKind.Singleshot && owner is Vcpu { Blocked: true, SchedData: SchedUnit u } v && u.CanRun(Id)
            && when - _idleSince <= IdleMaxNs && !v.Domain.IsDying && _pools.PoolOfCpu(Id) is { } pool
            && _pools.PoolOf(v.Domain) == pool && pool.WouldTickle(u, Id);

    /// <summary>Fires a guest timer this pCPU took from the wheel, or gives it back if the pCPU woke before it.</summary>
    private void FireTaken(Vcpu v, long due)
    {
        if (Volatile.Read(ref v.SingleshotDeadline) != due)
            return; // moved or stopped since: the wheel has its new deadline
        long now = _host.Time.NowNs;
        if (due > now || _stop)
        {
            _host.Timers.Schedule(due, v, TimerKind.Singleshot);
            return;
        }
        if (v.Domain.IsDying)
            return;
        FiringTimer = this;
        try
        {
            TimeOps.Fire(v, TimerKind.Singleshot, now);
        }
        finally
        {
            FiringTimer = null;
        }
        // The wake-up kicked this pCPU, which now looks for work anyway.
        lock (_idleLock)
            _kicked = false;
    }

    private void Loop()
    {
        while (!_stop)
        {
            if (RunNext() is long idleUntil)
            {
                _cpuMark = -1;
                IdleWait(idleUntil);
            }
        }
    }

    /// <summary>Runs one slice of the vCPU the scheduler picks, or returns until when to idle. A method of its own,
    /// never inlined, so that no frame of the idle loop keeps the last vCPU reachable: a destroyed domain's engine
    /// (its decoded and compiled code) would stay in memory for as long as this pCPU idles.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private long? RunNext()
    {
        var pool = _pools.PoolOfCpu(Id);
        if (pool is null)
            return long.MaxValue;
        var sched = pool.Scheduler;
        _preempt = false;
        long now = _host.Time.NowNs;
        var v = sched.PickNext(Id, now, out long until);
        if (v is null)
            return until;
        var unit = SchedUnit.Of(v);
        if (unit.Processor != Id)
        {
            if (unit.Processor >= 0)
                Interlocked.Increment(ref unit.Migrations);
            unit.Processor = Id;
        }
        long cpuStart = _cpuMark >= 0 ? _cpuMark : ThreadCpuClock.NowNs();
        long start = _host.Time.NowNs;
        long woken = Interlocked.Exchange(ref unit.WokenAtNs, 0);
        if (woken != 0)
        {
            unit.LastWakeLatencyNs = start - woken;
            _pools.OnWakeLatency(start - woken);
        }
        RunStartNs = start;
        if (_host.TraceBuffers.Enabled)
            _host.TraceBuffers.SwitchIn(Id, v, start);
        _preemptSeen = _preemptAt = long.MaxValue;
        CurrentVcpu = v;
        RunningHere = v;
        _host.Frames.Enter(v.Translations);
        try
        {
            Run(v, pool, start, until, sched.RatelimitNs);
        }
        catch (Exception e)
        {
            // A fault in exit handling takes down the guest, never the host.
            _host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id} crashed the exit handler: {e}");
            _host.ShutdownDomain(v.Domain, Public.Sched.SHUTDOWN_crash);
        }
        long end = _host.Time.NowNs;
        long cpuEnd = _cpuMark = ThreadCpuClock.NowNs();
        CurrentVcpu = null;
        RunningHere = null;
        // The vCPU ran for the CPU time the pCPU thread had; the rest of the slice the host took from the thread,
        // so the guest sees it as steal (runnable). Proportional policies charge that CPU time, so their shares
        // and caps do not depend on the host's load; real-time ones charge the slot of wall time they granted.
        long ran = cpuStart < 0 || cpuEnd < 0 ? end - start : Math.Clamp(cpuEnd - cpuStart, 0, end - start);
        Interlocked.Add(ref v.CpuTimeNs, ran);
        var after = !v.IsUp ? Runstate.Offline : v.Blocked ? Runstate.Blocked : Runstate.Runnable;
        v.SetRunstate(after, end);
        if (_host.TraceBuffers.Enabled)
            _host.TraceBuffers.SwitchOut(Id, v, after, end);
        if (ran < end - start)
            lock (v.RunstateTime)
            {
                v.RunstateTime[(int)Runstate.Running] -= end - start - ran;
                v.RunstateTime[(int)Runstate.Runnable] += end - start - ran;
            }
        try
        {
            if (v.Engine is not null && !v.Domain.IsDying)
                VcpuOps.WriteRunstateArea(v, end);
        }
        catch (Exception e)
        {
            _host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id}: runstate update failed: {e.Message}");
        }
        _host.Frames.Leave(v.Translations);
        _pools.Trace?.Invoke(new SliceRecord(Id, v, woken, now, until, start, end, ran, _preemptSeen, _preemptAt));
        sched.Descheduled(v, Id, sched.ChargesCpuTime ? ran : end - start, end);
        return null;
    }

    private void Run(Vcpu v, Cpupool pool, long now, long sliceEnd, long ratelimit)
    {
        var cpu = v.Engine;
        if (cpu is null)
            return;
        // A release of this pCPU from its pool between the pick and CurrentVcpu's publication found no vCPU to ask to
        // exit (and its preempt request was cleared by the pick): seen here, the slice ends before it starts.
        Interlocked.MemoryBarrier();
        if (_pools.PoolOfCpu(Id) != pool)
            return;
        v.DescheduleRequested = false;
        v.SetRunstate(Runstate.Running, now);
        if (v.PendingContext is { } ctx)
        {
            v.PendingContext = null;
            cpu.SetSpecialRegisters(ctx.Sregs);
            cpu.SetRegisters(ctx.Regs);
        }
        VcpuOps.WriteRunstateArea(v, now);
        VcpuOps.WriteTimeArea(v);
        _host.Time.UpdateVcpuTime(v);
        _pools.Timer.Set(Id, sliceEnd);
        while (!_stop && v.IsRunnable && !v.DescheduleRequested)
        {
            if (v.PendingNmi)
            {
                v.PendingNmi = false;
                cpu.InjectNmi();
            }
            if (v.Pv is null && v.Arch.Vmce.TakePending())
                cpu.InjectException(X86.Vmce.Vector);
            // Between exits: frames freed since the last flush may be reused only once this vCPU forgot them.
            _host.Frames.Sync(v.Translations);
            v.Pv?.BeforeRun();
            v.Domain.MonitorIfAny?.BeforeRun(v, cpu);
            ref readonly var exit = ref cpu.Run();
            if (exit.Reason == Cpu.VcpuExitReason.Preempted)
            {
                long t = _host.Time.NowNs;
                if (t >= sliceEnd - SliceSlackNs)
                    break;
                if (_preempt)
                {
                    // Rate limit: a preempted vCPU keeps the CPU for at least the scheduler's minimum run time.
                    _preempt = false;
                    _preemptSeen = Math.Min(_preemptSeen, t);
                    if (t - now >= ratelimit)
                    {
                        _preemptAt = t;
                        break;
                    }
                    sliceEnd = Math.Min(sliceEnd, now + ratelimit);
                    _preemptAt = Math.Min(_preemptAt, sliceEnd);
                    _pools.Timer.Set(Id, sliceEnd);
                }
                if (_pools.PoolOfCpu(Id) != pool)
                    break; // the pCPU left the pool
                continue; // a kick: re-check pause/deschedule state and carry on
            }
            if (!VmExit.Handle(v, cpu, exit))
                break;
        }
    }
}
