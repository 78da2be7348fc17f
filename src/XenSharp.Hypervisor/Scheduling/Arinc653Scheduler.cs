using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Xen's ARINC 653 scheduler: a fixed, repeating major frame of minor frames, each giving one vCPU (named by domain
/// handle and vCPU id) the CPU for its runtime; time left at the end of the frame, and a minor frame whose vCPU
/// cannot run, is idle. As in Xen it schedules one pCPU — the pool's first — and is meant for single-vCPU domains.
/// The schedule is set as a whole (XEN_SYSCTL_SCHEDOP_putinfo) and starts a new major frame at once.
/// </summary>
internal sealed class Arinc653Scheduler(Cpupool pool) : IScheduler
{
    /// <summary>ARINC653_MAX_DOMAINS_PER_SCHEDULE.</summary>
    public const int MaxEntries = 64;

    internal readonly record struct Entry(Guid DomainHandle, int VcpuId, long RuntimeNs);

    private readonly object _lock = new();
    private readonly List<Vcpu> _all = new();
    private Entry[] _schedule = [];
    private Vcpu?[] _resolved = [];
    private long _majorFrameNs;
    private long _frameStart = -1;

    public string Name => "arinc653";
    public uint SchedId => Schedulers.XEN_SCHEDULER_ARINC653;
    public long RatelimitNs => 0;

    /// <summary>When the current major frame started (ns of system time), -1 before the schedule first ran.</summary>
    public long FrameStartNs { get { lock (_lock) return _frameStart; } }

    public (long MajorFrameNs, Entry[] Entries) GetSchedule()
    {
        lock (_lock)
            return (_majorFrameNs, _schedule.ToArray());
    }

    /// <summary>Installs a schedule, checked as Xen checks one: 1..64 entries, positive runtimes summing to at most the major frame.</summary>
    public void SetSchedule(long majorFrameNs, IReadOnlyList<Entry> entries, long now)
    {
        if (majorFrameNs <= 0)
            throw new HypervisorException("the major frame must be positive", Errno.EINVAL);
        if (entries.Count is < 1 or > MaxEntries)
            throw new HypervisorException($"a schedule has 1 to {MaxEntries} minor frames", Errno.EINVAL);
        long sum = 0;
        foreach (var e in entries)
        {
            if (e.RuntimeNs <= 0 || e.VcpuId < 0)
                throw new HypervisorException("every minor frame needs a positive runtime and a vCPU id", Errno.EINVAL);
            sum += e.RuntimeNs;
        }
        if (sum > majorFrameNs)
            throw new HypervisorException("the minor frames are longer than the major frame", Errno.EINVAL);
        lock (_lock)
        {
            _schedule = entries.ToArray();
            _majorFrameNs = majorFrameNs;
            _frameStart = now;
            Resolve();
        }
        Kick();
    }

    private void Resolve()
    {
        _resolved = new Vcpu?[_schedule.Length];
        for (int i = 0; i < _schedule.Length; i++)
            _resolved[i] = _all.FirstOrDefault(v => v.Domain.Handle == _schedule[i].DomainHandle && v.Id == _schedule[i].VcpuId);
    }

    private void Kick()
    {
        var cpus = pool.Cpus;
        if (cpus.Length > 0)
            pool.Preempt(cpus[0]);
    }

    public void AddPcpu(int cpu) => Kick();
    public void RemovePcpu(int cpu) => Kick();

    public void AddVcpu(Vcpu v)
    {
        lock (_lock)
        {
            _all.Add(v);
            Resolve();
        }
    }

    public void RemoveVcpu(Vcpu v)
    {
        lock (_lock)
        {
            _all.Remove(v);
            Resolve();
        }
    }

    public void Wake(Vcpu v) => Kick();

    public Vcpu? PickNext(int cpu, long now, out long untilNs)
    {
        untilNs = long.MaxValue;
        var cpus = pool.Cpus;
        if (cpus.Length == 0 || cpu != cpus[0])
            return null;
        lock (_lock)
        {
            if (_schedule.Length == 0 || _frameStart < 0)
                return null;
            if (now >= _frameStart + _majorFrameNs)
                _frameStart += (now - _frameStart) / _majorFrameNs * _majorFrameNs;
            long end = _frameStart;
            for (int i = 0; i < _schedule.Length; i++)
            {
                end += _schedule[i].RuntimeNs;
                if (now >= end)
                    continue;
                untilNs = end;
                var v = _resolved[i];
                if (v is null || !v.IsRunnable || v.IsRunning)
                    return null;
                v.IsRunning = true;
                return v;
            }
            untilNs = _frameStart + _majorFrameNs; // the idle rest of the major frame
            return null;
        }
    }

    public void Descheduled(Vcpu v, int cpu, long ranNs, long now)
    {
        lock (_lock)
            v.IsRunning = false;
    }
}
