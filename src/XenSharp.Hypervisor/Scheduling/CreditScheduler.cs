using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Xen's credit scheduler (credit1): every accounting period the pool's CPU time is shared out as credit among the
/// active domains by weight, and burnt by running. vCPUs with credit left (UNDER) run before those without (OVER),
/// round-robin within each class; a vCPU woken from blocking is BOOSTed to the front once and preempts an unboosted
/// one after the rate limit. A cap limits a domain to a percentage of one pCPU per period even when CPU is idle.
/// With a migration delay, a vCPU that ran on another pCPU within that delay is left for it (its cache is hot there).
/// Soft affinity is honoured in two balance steps, as Xen's csched_load_balance and cpu_pick do.
/// </summary>
internal sealed class CreditScheduler(Cpupool pool)
    : WeightedScheduler<CreditScheduler.VcpuData, CreditScheduler.DomData>, IScheduler
{
    public const long DefaultTsliceNs = 30_000_000;
    public const long DefaultRatelimitNs = 1_000_000;
    public const long AccountingPeriodNs = 30_000_000;
    public const int DefaultWeight = 256;
    /// <summary>
    /// How much credit (or cap budget) a vCPU may carry either way. Time a host stall adds to a slice is charged in
    /// full, and a debt forgiven or a credit dropped would tilt the shares, so only absurd amounts are cut.
    /// </summary>
    public const long MaxCarryNs = 1_000_000_000;

    internal sealed class VcpuData : WeightedVcpuData
    {
        public long Credit;
        public bool Boost;
        /// <summary>When it last left a pCPU.</summary>
        public long LastRunEndNs;
        /// <summary>The vCPU's run-queue node, kept across queueings: an idle guest is queued at every wake-up, and the
        /// scheduler allocates nothing for it.</summary>
        public LinkedListNode<Vcpu>? Node;
    }

    internal sealed class DomData : WeightedDomData
    {
        public int Weight = DefaultWeight;
        public int Cap;
        public long CapBudget;
    }

    private readonly LinkedList<Vcpu> _runq = new();
    protected override ICollection<Vcpu> RunQueue => _runq;
    private long _nextAccounting;
    /// <summary>CPU time charged to the pool's vCPUs since the last accounting.</summary>
    private long _burnt;
    private long _lastAccounting = -1;

    public string Name => "credit";
    public uint SchedId => Schedulers.XEN_SCHEDULER_CREDIT;
    public long TsliceNs { get; private set; } = DefaultTsliceNs;
    public long RatelimitNs { get; private set; } = DefaultRatelimitNs;
    public long MigrationDelayNs { get; private set; }
    public bool ChargesCpuTime => true;
    /// <summary>How soon a pCPU that left a vCPU to an idle pCPU of its soft affinity looks again.</summary>
    public const long SoftWaitNs = 1_000_000;
    /// <summary>XEN_SYSCTL_CSCHED_MGR_DLY_MAX_US.</summary>
    public const long MaxMigrationDelayNs = 100_000_000;

    public void AddPcpu(int cpu) { }
    public void RemovePcpu(int cpu) { }

    /// <summary>
    /// xl sched-credit -s -t/-r/-m. Xen's bounds: tslice 1..1000 ms, ratelimit 0 or 100..500000 µs and at most
    /// tslice, migration delay 0..100 ms.
    /// </summary>
    public void SetPoolParams(long? tsliceNs, long? ratelimitNs, long? migrationDelayNs = null)
    {
        long t = tsliceNs ?? TsliceNs, r = ratelimitNs ?? RatelimitNs, m = migrationDelayNs ?? MigrationDelayNs;
        if (m < 0 || m > MaxMigrationDelayNs)
            throw new HypervisorException("the migration delay must be 0 to 100000 µs", Errno.EINVAL);
        if (t < 1_000_000 || t > 1_000_000_000)
            throw new HypervisorException("tslice must be 1 to 1000 ms", Errno.EINVAL);
        if (r != 0 && (r < 100_000 || r > 500_000_000 || r > t))
            throw new HypervisorException("ratelimit must be 0, or 100 to 500000 µs and not above tslice", Errno.EINVAL);
        lock (_lock)
        {
            TsliceNs = t;
            RatelimitNs = r;
            MigrationDelayNs = m;
        }
    }

    public (int Weight, int Cap) GetDomainParams(Domain d)
    {
        lock (_lock)
            return _doms.TryGetValue(d, out var x) ? (x.Weight, x.Cap) : throw NotHere(d);
    }

    /// <summary>xl sched-credit -d -w/-c: weight 1..65535, cap 0 (none) .. 100 × vCPUs.</summary>
    public void SetDomainParams(Domain d, int? weight, int? cap)
    {
        if (weight is < 1 or > 65535)
            throw new HypervisorException("weight must be 1 to 65535", Errno.EINVAL);
        lock (_lock)
        {
            if (!_doms.TryGetValue(d, out var x))
                throw NotHere(d);
            if (cap is < 0 || cap > 100 * d.Vcpus.Length)
                throw new HypervisorException($"cap must be 0 to {100 * d.Vcpus.Length}", Errno.EINVAL);
            x.Weight = weight ?? x.Weight;
            if (cap is int c && c != x.Cap)
            {
                x.Cap = c;
                x.CapBudget = c * AccountingPeriodNs / 100;
            }
        }
        foreach (var v in d.Vcpus)
            Wake(v);
    }

    internal static HypervisorException NotHere(Domain d) =>
        new($"domain {d.DomainId} is not in a cpupool of this scheduler", Errno.EINVAL);

    public override void Wake(Vcpu v)
    {
        lock (_lock)
        {
            if (!_all.Contains(v))
                return;
            var d = Data(v);
            if (v.IsRunning || d.Queued || !v.IsRunnable)
                return;
            d.Queued = true;
            d.Boost = true;
            _runq.AddFirst(NodeOf(v, d));
        }
        // BOOST preempts anything not boosted itself.
        pool.Tickle(SchedUnit.Of(v), (cur, _) => cur.SchedData is SchedUnit { Priv: VcpuData { Boost: false } });
    }

    /// <summary>The vCPU's own node, free to be queued (a node still in the queue would mean it is queued twice: then a
    /// new one, as before).</summary>
    private static LinkedListNode<Vcpu> NodeOf(Vcpu v, VcpuData d) =>
        d.Node is { List: null } n ? n : d.Node = new LinkedListNode<Vcpu>(v);

    /// <summary>The domain's vCPUs in this pool that are runnable (a loop, not a query: accounting runs on every
    /// wake-up of an idle host, and allocates nothing).</summary>
    private int ActiveVcpus(Domain dom)
    {
        int n = 0;
        foreach (var v in dom.Vcpus)
            if (v.IsRunnable && _all.Contains(v))
                n++;
        return n;
    }

    private bool Parked(Vcpu v) => _doms.TryGetValue(v.Domain, out var d) && d.Cap > 0 && d.CapBudget <= 0;

    public Vcpu? PickNext(int cpu, long now, out long untilNs)
    {
        lock (_lock)
        {
            if (now >= _nextAccounting)
                Account(now);
            // Xen's two balance steps: the best vCPU (BOOST, UNDER, OVER; queue order within a class) that prefers this
            // pCPU (soft affinity) first; one that only may run here (hard affinity) goes first only if its class is
            // better, as credit steals only work of a higher priority, and never while a pCPU of its soft affinity is
            // idle: that one takes it (Xen would have queued it there and tickled it).
            LinkedListNode<Vcpu>? soft = null, hard = null;
            int softClass = 3, hardClass = 3;
            long hotUntil = long.MaxValue;
            bool leftForSoft = false;
            for (var n = _runq.First; n is not null;)
            {
                var next = n.Next;
                var v = n.Value;
                if (!v.IsRunnable)
                {
                    // Queued vCPUs that stopped being runnable (paused, shut down) leave the queue.
                    Data(v).Queued = false;
                    _runq.Remove(n);
                }
                else if (SchedUnit.Of(v) is var u && u.CanRun(cpu) && !Parked(v) && !HotElsewhere(v, cpu, now, ref hotUntil))
                {
                    var d = Data(v);
                    int cls = d.Boost ? 0 : d.Credit > 0 ? 1 : 2;
                    if (u.Prefers(cpu, pool.Cpus))
                    {
                        if (cls < softClass)
                        {
                            soft = n;
                            softClass = cls;
                            if (cls == 0)
                                break;
                        }
                    }
                    else if (cls < hardClass)
                    {
                        if (pool.SoftIdlerFor(u, cpu))
                            leftForSoft = true;
                        else
                        {
                            hard = n;
                            hardClass = cls;
                        }
                    }
                }
                n = next;
            }
            var pick = hard is not null && hardClass < softClass ? hard : soft;
            if (leftForSoft)
                hotUntil = Math.Min(hotUntil, now + SoftWaitNs); // in case the idle pCPU finds better work first
            if (pick is null)
            {
                // A parked vCPU may run again at the next accounting, a hot one may move; with nothing queued the pCPU
                // sleeps until woken (accounting catches up when a vCPU is next picked), so idle hosts stay idle.
                untilNs = _runq.Count == 0 ? hotUntil : Math.Min(_nextAccounting, hotUntil);
                return null;
            }
            var pv = pick.Value;
            _runq.Remove(pick);
            var data = Data(pv);
            data.Queued = false;
            data.Boost = false;
            pv.IsRunning = true;
            long slice = TsliceNs;
            if (_doms.TryGetValue(pv.Domain, out var dom) && dom.Cap > 0)
                slice = Math.Min(slice, Math.Max(dom.CapBudget, 50_000));
            untilNs = now + slice;
            return pv;
        }
    }

    /// <summary>Xen's cache-hot test: the vCPU left another pCPU less than the migration delay ago.</summary>
    private bool HotElsewhere(Vcpu v, int cpu, long now, ref long hotUntil)
    {
        int last = SchedUnit.Of(v).Processor;
        if (MigrationDelayNs == 0 || last < 0 || last == cpu)
            return false;
        long cool = Data(v).LastRunEndNs + MigrationDelayNs;
        if (now >= cool)
            return false;
        hotUntil = Math.Min(hotUntil, cool);
        return true;
    }

    private void Account(long now)
    {
        _nextAccounting = now + AccountingPeriodNs;
        // Caps are a share of the host's clock; credit is the CPU time the pool's vCPUs burnt in the period, handed
        // out again by weight (Xen hands out whole pCPU periods; here the host decides how much CPU a pCPU thread
        // gets, and what is earned must match what is burnt, or every vCPU drifts into UNDER and weights stop counting).
        long elapsed = _lastAccounting < 0 ? AccountingPeriodNs : Math.Min(now - _lastAccounting, MaxCarryNs);
        long burnt = Math.Min(_burnt, MaxCarryNs);
        _burnt = 0;
        _lastAccounting = now;
        // Only active domains (with a runnable vCPU) share the period, so idle ones do not dilute the weights.
        long total = 0;
        foreach (var (dom, d) in _doms)
        {
            if (d.Cap > 0)
                // An overrun is paid back in full (unused budget is not saved up beyond one period).
                d.CapBudget = Math.Clamp(d.CapBudget + d.Cap * elapsed / 100, -MaxCarryNs, d.Cap * AccountingPeriodNs / 100);
            if (ActiveVcpus(dom) > 0)
                total += d.Weight;
        }
        if (total == 0)
            return;
        foreach (var (dom, d) in _doms)
        {
            int active = ActiveVcpus(dom);
            if (active == 0)
                continue;
            long perVcpu = burnt * d.Weight / total / active;
            foreach (var v in dom.Vcpus)
            {
                if (!v.IsRunnable || v.SchedData is not SchedUnit { Priv: VcpuData vd })
                    continue;
                // Only runnable vCPUs earn, so what one carries is what it is owed (or owes); the bound is for the absurd.
                vd.Credit = Math.Clamp(vd.Credit + perVcpu, -MaxCarryNs, MaxCarryNs);
            }
        }
    }

    public void Descheduled(Vcpu v, int cpu, long ranNs, long now)
    {
        bool queued = false;
        lock (_lock)
        {
            v.IsRunning = false;
            if (!_all.Contains(v))
                return;
            var d = Data(v);
            d.Credit -= ranNs;
            _burnt += ranNs;
            d.LastRunEndNs = now;
            if (_doms.TryGetValue(v.Domain, out var dom) && dom.Cap > 0)
                dom.CapBudget -= ranNs;
            if (v.IsRunnable && !d.Queued)
            {
                d.Queued = true;
                _runq.AddLast(NodeOf(v, d));
                queued = true;
            }
        }
        if (queued)
            pool.Tickle(SchedUnit.Of(v), null);
    }
}
