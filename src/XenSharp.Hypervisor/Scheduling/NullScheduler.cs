using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Xen's null scheduler: each vCPU is assigned one pCPU of the pool (in its hard affinity, soft preferred) and only
/// ever runs there; a vCPU for which no pCPU is free waits until one is. There is no time slicing and no migration.
/// </summary>
internal sealed class NullScheduler(Cpupool pool) : IScheduler
{
    private readonly object _lock = new();
    private readonly Dictionary<int, Vcpu?> _assigned = new();
    private readonly List<Vcpu> _waiting = new();
    private readonly Dictionary<Vcpu, int> _cpuOf = new();

    public string Name => "null";
    public uint SchedId => Schedulers.XEN_SCHEDULER_NULL;
    public long RatelimitNs => 0;

    /// <summary>The pCPU the vCPU is assigned to, or -1 while it waits for one.</summary>
    public int AssignedCpu(Vcpu v)
    {
        lock (_lock)
            return _cpuOf.TryGetValue(v, out int c) ? c : -1;
    }

    public void AddPcpu(int cpu)
    {
        lock (_lock)
        {
            _assigned[cpu] = null;
            AssignWaiters();
        }
    }

    public void RemovePcpu(int cpu)
    {
        lock (_lock)
        {
            if (_assigned.Remove(cpu, out var v) && v is not null)
            {
                _cpuOf.Remove(v);
                _waiting.Add(v);
            }
            AssignWaiters();
        }
    }

    public void AddVcpu(Vcpu v)
    {
        lock (_lock)
        {
            _waiting.Add(v);
            AssignWaiters();
        }
    }

    public void RemoveVcpu(Vcpu v)
    {
        lock (_lock)
        {
            _waiting.Remove(v);
            if (_cpuOf.Remove(v, out int c))
            {
                _assigned[c] = null;
                AssignWaiters();
            }
        }
    }

    /// <summary>The hard affinity changed: a vCPU whose pCPU is no longer allowed gives it up.</summary>
    public void AffinityChanged(Vcpu v)
    {
        lock (_lock)
        {
            if (_cpuOf.TryGetValue(v, out int c) && !SchedUnit.Of(v).CanRun(c))
            {
                _cpuOf.Remove(v);
                _assigned[c] = null;
                _waiting.Add(v);
            }
            AssignWaiters();
        }
    }

    private void AssignWaiters()
    {
        for (int i = 0; i < _waiting.Count; i++)
        {
            var v = _waiting[i];
            var u = SchedUnit.Of(v);
            int cpu = -1;
            foreach (var (c, owner) in _assigned.OrderBy(kv => kv.Key))
            {
                if (owner is not null || !u.CanRun(c))
                    continue;
                if (u.Soft[c])
                {
                    cpu = c;
                    break;
                }
                if (cpu < 0)
                    cpu = c;
            }
            if (cpu < 0)
                continue;
            _assigned[cpu] = v;
            _cpuOf[v] = cpu;
            _waiting.RemoveAt(i--);
            pool.Kick(cpu);
        }
    }

    public void Wake(Vcpu v)
    {
        int cpu;
        lock (_lock)
            cpu = _cpuOf.TryGetValue(v, out int c) ? c : -1;
        if (cpu >= 0)
            pool.Kick(cpu);
    }

    public Vcpu? PickNext(int cpu, long now, out long untilNs)
    {
        untilNs = long.MaxValue;
        lock (_lock)
        {
            if (!_assigned.TryGetValue(cpu, out var v) || v is null || !v.IsRunnable || v.IsRunning)
                return null;
            v.IsRunning = true;
            // No slicing: the vCPU runs until it blocks, is paused or is kicked; a long slice just bounds a check.
            untilNs = now + 1_000_000_000;
            return v;
        }
    }

    public void Descheduled(Vcpu v, int cpu, long ranNs, long now)
    {
        lock (_lock)
            v.IsRunning = false;
    }
}
