using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A physical CPU: a host thread that asks the scheduler for a vCPU, runs it in the engine until its slice
/// ends or it must leave the CPU, handles its exits, and accounts its time (Xen's schedule() loop).
/// </summary>
internal sealed class Pcpu
{
    private readonly XenHypervisor _host;
    private readonly IScheduler _sched;
    private readonly Thread _thread;
    private volatile bool _stop;

    public Pcpu(XenHypervisor host, IScheduler sched, int id)
    {
        _host = host;
        _sched = sched;
        Id = id;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"pcpu{id}" };
    }

    public int Id { get; }
    public Vcpu? Current { get; private set; }

    public void Start() => _thread.Start();

    public void Stop()
    {
        _stop = true;
        Current?.Engine?.RequestExit();
        _sched.WakeAll();
        if (_thread.IsAlive && Thread.CurrentThread != _thread)
            _thread.Join();
    }

    private void Loop()
    {
        while (!_stop)
        {
            var v = _sched.PickNext(Id, _host.Time.NowNs, out long slice);
            if (v is null)
            {
                _sched.WaitForWork(Id, 100);
                continue;
            }
            Current = v;
            long start = _host.Time.NowNs;
            try
            {
                Run(v, start, slice);
            }
            catch (Exception e)
            {
                // A fault in exit handling takes down the guest, never the host.
                _host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id} crashed the exit handler: {e}");
                _host.ShutdownDomain(v.Domain, Public.Sched.SHUTDOWN_crash);
            }
            long end = _host.Time.NowNs;
            Current = null;
            Interlocked.Add(ref v.CpuTimeNs, end - start);
            v.SetRunstate(!v.IsUp ? Runstate.Offline : v.Blocked ? Runstate.Blocked : Runstate.Runnable, end);
            try
            {
                if (v.Engine is not null && !v.Domain.IsDying)
                    VcpuOps.WriteRunstateArea(v, end);
            }
            catch (Exception e)
            {
                _host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id}: runstate update failed: {e.Message}");
            }
            _sched.Descheduled(v, end - start);
        }
    }

    private void Run(Vcpu v, long now, long slice)
    {
        var cpu = v.Engine;
        if (cpu is null)
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
        long sliceEnd = now + slice;
        _host.Timers.Schedule(sliceEnd, v, TimerKind.Slice);
        while (!_stop && v.IsRunnable && !v.DescheduleRequested)
        {
            if (v.PendingNmi)
            {
                v.PendingNmi = false;
                cpu.InjectNmi();
            }
            ref readonly var exit = ref cpu.Run();
            if (exit.Reason == Cpu.VcpuExitReason.Preempted)
            {
                if (_host.Time.NowNs >= sliceEnd)
                    break;
                continue; // a kick: re-check pause/deschedule state and carry on
            }
            if (!VmExit.Handle(v, cpu, exit))
                break;
        }
    }
}
