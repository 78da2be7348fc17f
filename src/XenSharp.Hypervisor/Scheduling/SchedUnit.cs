using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>A set of pCPUs (Xen's cpumask_t).</summary>
internal sealed class CpuMask
{
    private readonly bool[] _bits;

    public CpuMask(int size, bool all = false)
    {
        _bits = new bool[size];
        if (all)
            Array.Fill(_bits, true);
    }

    public int Size => _bits.Length;
    public bool this[int cpu] => (uint)cpu < (uint)_bits.Length && _bits[cpu];
    public void Set(int cpu, bool on = true) => _bits[cpu] = on;
    public bool IsFull => Array.TrueForAll(_bits, b => b);
    public IEnumerable<int> Cpus { get { for (int i = 0; i < _bits.Length; i++) if (_bits[i]) yield return i; } }

    public static CpuMask From(int size, IEnumerable<int> cpus)
    {
        var m = new CpuMask(size);
        foreach (int c in cpus)
        {
            if ((uint)c >= (uint)size)
                throw new HypervisorException($"there is no pCPU {c} (the host has {size})", Public.Errno.EINVAL);
            m._bits[c] = true;
        }
        return m;
    }
}

/// <summary>
/// The scheduler's view of one vCPU (Xen's sched_unit): its affinities, where it last ran, and what the policy of
/// its cpupool keeps about it.
/// </summary>
internal sealed class SchedUnit
{
    public SchedUnit(int pcpus)
    {
        Hard = new CpuMask(pcpus, all: true);
        Soft = new CpuMask(pcpus, all: true);
    }

    public CpuMask Hard;
    public CpuMask Soft;
    /// <summary>The pCPU the vCPU runs or last ran on, -1 before it first ran.</summary>
    public volatile int Processor = -1;
    /// <summary>How often it started on another pCPU than last time.</summary>
    public int Migrations;
    /// <summary>When it was last woken (0 when it has run since).</summary>
    public long WokenAtNs;
    public long LastWakeLatencyNs = -1;
    /// <summary>The policy's own data, owned by the scheduler of the vCPU's cpupool.</summary>
    public object? Priv;

    public static SchedUnit Of(Vcpu v) => (SchedUnit)v.SchedData!;

    /// <summary>May run on <paramref name="cpu"/> (hard affinity).</summary>
    public bool CanRun(int cpu) => Hard[cpu];

    /// <summary>
    /// Prefers <paramref name="cpu"/> (soft affinity). A soft affinity that has no pCPU of the pool within the hard
    /// affinity is no preference at all, as in Xen.
    /// </summary>
    public bool Prefers(int cpu, int[] poolCpus)
    {
        if (Soft[cpu])
            return true;
        foreach (int c in poolCpus)
            if (Soft[c] && Hard[c])
                return false;
        return true;
    }
}
