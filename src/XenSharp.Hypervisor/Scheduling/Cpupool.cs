using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A cpupool: a set of pCPUs with its own scheduler instance, running the domains assigned to it.
/// The pCPU set changes only under the owner's lock; policies read <see cref="Cpus"/>, a snapshot.
/// </summary>
internal sealed class Cpupool
{
    public Cpupool(Cpupools owner, int id, string name)
    {
        Owner = owner;
        Id = id;
        Name = name;
    }

    public Cpupools Owner { get; }
    public int Id { get; }
    public string Name { get; set; }
    public IScheduler Scheduler { get; set; } = null!;
    /// <summary>The pool's pCPUs, ascending (replaced, never mutated).</summary>
    public volatile int[] Cpus = [];
    public int NrPcpus => Owner.NrPcpus;

    public bool Contains(int cpu) => Array.IndexOf(Cpus, cpu) >= 0;

    /// <summary>The vCPU running on <paramref name="cpu"/>, if any.</summary>
    public Vcpu? CurrentOn(int cpu) => Owner.PcpuAt(cpu)?.Current;

    public long RunStartOn(int cpu) => Owner.PcpuAt(cpu)?.RunStartNs ?? 0;

    public void Kick(int cpu) => Owner.PcpuAt(cpu)?.Kick();

    public void Preempt(int cpu) => Owner.PcpuAt(cpu)?.Preempt();

    /// <summary>
    /// A vCPU became ready (Xen's tickle): wake a pCPU of the pool it may run on that is not running anything,
    /// preferring its soft affinity; otherwise preempt the first pCPU (of its soft affinity first) whose current vCPU
    /// <paramref name="preempts"/> says it should displace.
    /// </summary>
    public void Tickle(SchedUnit u, Func<Vcpu, int, bool>? preempts)
    {
        var cpus = Cpus;
        // Woken by a timer an idle pCPU fired on its own thread: that pCPU runs it, no other thread need wake.
        if (Pcpu.FiringTimer is { Current: null } self && Contains(self.Id) && WouldTickle(u, self.Id))
        {
            self.Kick();
            return;
        }
        int fallback = -1;
        foreach (int c in cpus)
        {
            if (!u.Hard[c] || Owner.PcpuAt(c) is not { } p || p.Current is not null)
                continue;
            if (u.Soft[c])
            {
                p.Kick();
                return;
            }
            if (fallback < 0)
                fallback = c;
        }
        if (fallback >= 0)
        {
            Kick(fallback);
            return;
        }
        if (preempts is null)
            return;
        // A pCPU of its soft affinity first, then any it may run on (Xen's tickle balance steps).
        for (int step = 0; step < 2; step++)
            foreach (int c in cpus)
                if (u.Hard[c] && (step == 1 || u.Soft[c]) && CurrentOn(c) is { } cur && preempts(cur, c))
                {
                    Preempt(c);
                    return;
                }
    }

    /// <summary>Whether a wake-up of the unit would tickle <paramref name="cpu"/> (an idle pCPU of this pool): the first
    /// idle pCPU of its soft affinity, or failing one, of its hard affinity, as <see cref="Tickle"/> picks.</summary>
    public bool WouldTickle(SchedUnit u, int cpu)
    {
        int fallback = -1;
        foreach (int c in Cpus)
        {
            if (!u.Hard[c] || (c != cpu && Owner.PcpuAt(c) is not { Current: null }))
                continue;
            if (u.Soft[c])
                return c == cpu;
            if (fallback < 0)
                fallback = c;
        }
        return fallback == cpu;
    }

    /// <summary>
    /// Another pCPU of the pool that is in the vCPU's soft and hard affinity is idle, so it, not <paramref name="cpu"/>
    /// (outside the soft affinity), should run the vCPU.
    /// </summary>
    public bool SoftIdlerFor(SchedUnit u, int cpu)
    {
        foreach (int c in Cpus)
            if (c != cpu && u.Soft[c] && u.Hard[c] && Owner.PcpuAt(c) is { Current: null })
                return true;
        return false;
    }
}
