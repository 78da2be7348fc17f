using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// One slice, in the scheduler's time base (ns of system time): when the scheduler picked the vCPU and the end it
/// granted (<see cref="UntilNs"/>), when the pCPU started and stopped running it, and, for a vCPU that had been
/// woken, when it was woken (0 otherwise). Grant and run differ only by what the host did to the pCPU thread.
/// <see cref="RanNs"/> is the CPU time the pCPU thread had in the slice (what credit and credit2 charge).
/// A slice asked to give way (a wake-up preempting it) records when the pCPU saw the request and when it then meant
/// to stop, the rate limit permitting (<see cref="PreemptNs"/>; long.MaxValue when no one asked).
/// </summary>
internal readonly record struct SliceRecord(int Cpu, Vcpu Vcpu, long WokenNs, long DecidedNs, long UntilNs, long StartNs, long EndNs,
    long RanNs, long PreemptSeenNs = long.MaxValue, long PreemptNs = long.MaxValue);

/// <summary>
/// The cpupools of the host and the pCPUs they own (Xen's cpupool.c): Pool-0 holds every pCPU at start with the
/// default scheduler; pools are created, destroyed and renamed, pCPUs and domains move between them. It routes the
/// hypervisor's scheduling calls (a vCPU added, woken, removed) to the scheduler of the vCPU's pool.
/// </summary>
internal sealed class Cpupools : IDisposable
{
    private readonly HostServices _host;
    private readonly object _lock = new();
    private readonly Pcpu?[] _pcpus;
    private readonly Cpupool?[] _poolOfCpu;
    private readonly bool[] _offline;
    private readonly SortedDictionary<int, Cpupool> _pools = new();
    private readonly Dictionary<Domain, Cpupool> _poolOfDomain = new();

    public Cpupools(HostServices host, int pcpus, string defaultScheduler, string? numaSysfsPath = null)
    {
        _host = host;
        NrPcpus = Math.Max(1, pcpus);
        DefaultScheduler = Schedulers.Names.Contains(defaultScheduler) ? defaultScheduler
            : throw new HypervisorException($"unknown scheduler '{defaultScheduler}' (known: {string.Join(", ", Schedulers.Names)})", Errno.EINVAL);
        _pcpus = new Pcpu?[NrPcpus];
        _poolOfCpu = new Cpupool?[NrPcpus];
        _offline = new bool[NrPcpus];
        Topology = new HostTopology(NrPcpus, numaSysfsPath);
        NodeAffinity = new NodeAffinityTable(this);
        Timer = new SliceTimer(host.Time, NrPcpus, cpu => PcpuAt(cpu)?.OnDeadline());
        var pool0 = NewPool(0, "Pool-0", DefaultScheduler);
        for (int c = 0; c < NrPcpus; c++)
            AssignCpu(pool0, c);
    }

    public int NrPcpus { get; }
    public string DefaultScheduler { get; }
    public HostTopology Topology { get; }
    public NodeAffinityTable NodeAffinity { get; }
    public SliceTimer Timer { get; }
    /// <summary>Called after every slice with the scheduler's decision and what became of it. For tracing (xentrace's role) and tests.</summary>
    public Action<SliceRecord>? Trace;
    /// <summary>Called with the time from each wake-up to the vCPU running.</summary>
    public Action<long>? WakeLatency;

    /// <summary>Pool-0's scheduler (what `xl info` reports).</summary>
    public string Name => Pool(0)?.Scheduler.Name ?? DefaultScheduler;

    internal void Register(Pcpu p) => _pcpus[p.Id] = p;
    internal Pcpu? PcpuAt(int cpu) => (uint)cpu < (uint)_pcpus.Length ? _pcpus[cpu] : null;
    internal Cpupool? PoolOfCpu(int cpu) => Volatile.Read(ref _poolOfCpu[cpu]);
    internal void OnWakeLatency(long ns) => WakeLatency?.Invoke(ns);

    public Cpupool? Pool(int id)
    {
        lock (_lock)
            return _pools.GetValueOrDefault(id);
    }

    public Cpupool[] All()
    {
        lock (_lock)
            return _pools.Values.ToArray();
    }

    public Cpupool PoolOf(Domain d)
    {
        lock (_lock)
            return _poolOfDomain.TryGetValue(d, out var p) ? p : _pools[0];
    }

    public IScheduler? SchedulerOf(Vcpu v)
    {
        lock (_lock)
            return _poolOfDomain.TryGetValue(v.Domain, out var p) ? p.Scheduler : null;
    }

    public int DomainCount(Cpupool p)
    {
        lock (_lock)
            return _poolOfDomain.Values.Count(x => x == p);
    }

    public Domain[] DomainsIn(Cpupool p)
    {
        lock (_lock)
            return _poolOfDomain.Where(kv => kv.Value == p).Select(kv => kv.Key).ToArray();
    }

    public int[] FreeCpus()
    {
        lock (_lock)
            return Enumerable.Range(0, NrPcpus).Where(c => _poolOfCpu[c] is null && !_offline[c]).ToArray();
    }

    // ---- physical CPU hotplug (Xen's cpu_up/cpu_down with cpupool0's notifier) ----

    public bool IsOnline(int cpu) => (uint)cpu < (uint)NrPcpus && !_offline[cpu];

    public int OnlineCpus
    {
        get { lock (_lock) return Enumerable.Range(0, NrPcpus).Count(c => !_offline[c]); }
    }

    /// <summary>Takes a pCPU offline: it leaves Pool-0 (its vCPUs move to the pool's other pCPUs) and runs nothing until
    /// brought back. pCPU 0 stays, as in Xen; a pCPU of another pool, or the last one of a pool with domains, is busy.</summary>
    public void OfflineCpu(int cpu)
    {
        lock (_lock)
        {
            if (cpu <= 0 || cpu >= NrPcpus)
                throw new HypervisorException($"pCPU {cpu} cannot be taken offline", Errno.EINVAL);
            if (_offline[cpu])
                throw new HypervisorException($"pCPU {cpu} is already offline", Errno.EEXIST);
            if (_poolOfCpu[cpu] is { } pool)
            {
                if (pool.Id != 0)
                    throw new HypervisorException($"pCPU {cpu} belongs to cpupool '{pool.Name}'", Errno.EBUSY);
                if (pool.Cpus.Length == 1 && _poolOfDomain.ContainsValue(pool))
                    throw new HypervisorException($"pCPU {cpu} is the last one of cpupool '{pool.Name}', which has domains", Errno.EBUSY);
                ReleaseCpu(pool, cpu);
            }
            _offline[cpu] = true;
            _host.Log($"CPU {cpu} offline");
        }
    }

    /// <summary>Brings a pCPU back online, into Pool-0 as Xen's cpupool notifier places it.</summary>
    public void OnlineCpu(int cpu)
    {
        lock (_lock)
        {
            if (cpu < 0 || cpu >= NrPcpus)
                throw new HypervisorException($"there is no pCPU {cpu} (the host has {NrPcpus})", Errno.EINVAL);
            if (!_offline[cpu])
                throw new HypervisorException($"pCPU {cpu} is already online", Errno.EEXIST);
            _offline[cpu] = false;
            if (Pool(0) is { } pool0)
                AssignCpu(pool0, cpu);
            _host.Log($"CPU {cpu} online");
        }
    }

    // ---- the hypervisor's scheduling calls ----

    public void AddVcpu(Vcpu v)
    {
        v.SchedData ??= new SchedUnit(NrPcpus);
        Cpupool pool;
        lock (_lock)
        {
            if (!_poolOfDomain.TryGetValue(v.Domain, out pool!))
                _poolOfDomain[v.Domain] = pool = _pools[0];
        }
        pool.Scheduler.AddVcpu(v);
    }

    public void RemoveVcpu(Vcpu v)
    {
        Cpupool? pool;
        lock (_lock)
        {
            _poolOfDomain.TryGetValue(v.Domain, out pool);
            if (v == v.Domain.Vcpus[^1])
                _poolOfDomain.Remove(v.Domain);
        }
        if (v == v.Domain.Vcpus[^1])
            NodeAffinity.Forget(v.Domain);
        pool?.Scheduler.RemoveVcpu(v);
    }

    public void Wake(Vcpu v)
    {
        if (v.SchedData is not SchedUnit u)
            return;
        Interlocked.CompareExchange(ref u.WokenAtNs, _host.Time.NowNs, 0);
        SchedulerOf(v)?.Wake(v);
    }

    // ---- pool management (sysctl cpupool_op) ----

    private Cpupool NewPool(int id, string name, string scheduler)
    {
        var pool = new Cpupool(this, id, name);
        pool.Scheduler = Schedulers.Create(scheduler, pool)
            ?? throw new HypervisorException($"unknown scheduler '{scheduler}' (known: {string.Join(", ", Schedulers.Names)})", Errno.EINVAL);
        _pools[id] = pool;
        return pool;
    }

    private void AssignCpu(Cpupool pool, int cpu)
    {
        pool.Cpus = pool.Cpus.Append(cpu).Order().ToArray();
        pool.Scheduler.AddPcpu(cpu);
        Volatile.Write(ref _poolOfCpu[cpu], pool);
        PcpuAt(cpu)?.Kick();
    }

    private void ValidateName(string name, Cpupool? except)
    {
        if (string.IsNullOrWhiteSpace(name))
            throw new HypervisorException("a cpupool needs a name", Errno.EINVAL);
        if (_pools.Values.Any(p => p != except && p.Name == name))
            throw new HypervisorException($"a cpupool named '{name}' exists already", Errno.EEXIST);
    }

    public Cpupool Create(string name, string scheduler, IEnumerable<int> cpus, int? id = null)
    {
        var list = cpus.Distinct().ToArray();
        lock (_lock)
        {
            ValidateName(name, null);
            int pid = id ?? Enumerable.Range(1, int.MaxValue - 1).First(i => !_pools.ContainsKey(i));
            if (pid < 0 || _pools.ContainsKey(pid))
                throw new HypervisorException($"cpupool {pid} exists already", Errno.EEXIST);
            foreach (int c in list)
                CheckFree(c);
            if (!Schedulers.Names.Contains(scheduler))
                throw new HypervisorException($"unknown scheduler '{scheduler}' (known: {string.Join(", ", Schedulers.Names)})", Errno.EINVAL);
            var pool = NewPool(pid, name, scheduler);
            foreach (int c in list)
                AssignCpu(pool, c);
            _host.Log($"cpupool {pid} '{name}' created ({scheduler})");
            return pool;
        }
    }

    private void CheckFree(int cpu)
    {
        if ((uint)cpu >= (uint)NrPcpus)
            throw new HypervisorException($"there is no pCPU {cpu} (the host has {NrPcpus})", Errno.EINVAL);
        if (_offline[cpu])
            throw new HypervisorException($"pCPU {cpu} is offline", Errno.EBUSY);
        if (_poolOfCpu[cpu] is { } owner)
            throw new HypervisorException($"pCPU {cpu} belongs to cpupool '{owner.Name}'", Errno.EBUSY);
    }

    public Cpupool Get(int id) => Pool(id) ?? throw new HypervisorException($"no cpupool {id}", Errno.ENOENT);

    public void Destroy(int id)
    {
        lock (_lock)
        {
            var pool = Get(id);
            if (id == 0)
                throw new HypervisorException("Pool-0 cannot be destroyed", Errno.EINVAL);
            if (_poolOfDomain.ContainsValue(pool))
                throw new HypervisorException($"cpupool '{pool.Name}' still has domains", Errno.EBUSY);
            foreach (int c in pool.Cpus)
                ReleaseCpu(pool, c);
            _pools.Remove(id);
            _host.Log($"cpupool {id} '{pool.Name}' destroyed");
        }
    }

    public void Rename(int id, string name)
    {
        lock (_lock)
        {
            var pool = Get(id);
            ValidateName(name, pool);
            pool.Name = name;
        }
    }

    public void AddCpu(int id, int cpu)
    {
        lock (_lock)
        {
            var pool = Get(id);
            CheckFree(cpu);
            AssignCpu(pool, cpu);
        }
    }

    public void RemoveCpu(int id, int cpu)
    {
        lock (_lock)
        {
            var pool = Get(id);
            if (!pool.Contains(cpu))
                throw new HypervisorException($"pCPU {cpu} is not in cpupool '{pool.Name}'", Errno.EINVAL);
            if (pool.Cpus.Length == 1 && _poolOfDomain.ContainsValue(pool))
                throw new HypervisorException($"pCPU {cpu} is the last one of cpupool '{pool.Name}', which has domains", Errno.EBUSY);
            ReleaseCpu(pool, cpu);
        }
    }

    private void ReleaseCpu(Cpupool pool, int cpu)
    {
        Volatile.Write(ref _poolOfCpu[cpu], null);
        pool.Cpus = pool.Cpus.Where(c => c != cpu).ToArray();
        pool.Scheduler.RemovePcpu(cpu);
        // The vCPU on it leaves at its next exit check and is requeued for the pool's other pCPUs.
        PcpuAt(cpu)?.Preempt();
    }

    /// <summary>Moves a domain into another pool: paused, off every pCPU, then into the new scheduler with its defaults.</summary>
    public void MoveDomain(Domain d, int id, Action pause, Action unpause)
    {
        var to = Get(id);
        if (d.IsHost)
            throw new HypervisorException("Domain-0 stays in Pool-0", Errno.EINVAL);
        var from = PoolOf(d);
        if (from == to)
            return;
        if (to.Cpus.Length == 0)
            throw new HypervisorException($"cpupool '{to.Name}' has no pCPUs", Errno.EINVAL);
        pause();
        try
        {
            foreach (var v in d.Vcpus)
                from.Scheduler.RemoveVcpu(v);
            lock (_lock)
                _poolOfDomain[d] = to;
            foreach (var v in d.Vcpus)
            {
                var u = SchedUnit.Of(v);
                u.Priv = null;
                to.Scheduler.AddVcpu(v);
            }
        }
        finally
        {
            unpause();
        }
        _host.Log($"domain {d.DomainId} moved from cpupool '{from.Name}' to '{to.Name}'");
    }

    public void Dispose() => Timer.Dispose();
}
