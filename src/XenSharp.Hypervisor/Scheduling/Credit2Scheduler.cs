using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Xen's credit2: each vCPU has credit that running burns at a rate inversely proportional to its domain's weight;
/// the runqueue runs the vCPU with the most credit, and when the best one has none left every vCPU's credit is
/// reset. The slice lasts until the runner would fall below the next candidate (0.5–10 ms). Caps are a budget per
/// 10 ms replenishment period; soft affinity is preferred among candidates with credit, and a vCPU is left to an idle
/// pCPU of its soft affinity; a rate limit protects the
/// runner from preemption. One runqueue per cpupool (Xen's runqueue=all).
/// </summary>
internal sealed class Credit2Scheduler(Cpupool pool)
    : WeightedScheduler<Credit2Scheduler.VcpuData, Credit2Scheduler.DomData>, IScheduler
{
    public const long CreditInitNs = 10_000_000;
    public const long MinTimerNs = 500_000;
    public const long MaxTimerNs = 10_000_000;
    public const long BudgetPeriodNs = 10_000_000;
    public const long DefaultRatelimitNs = 1_000_000;
    public const int DefaultWeight = 256;

    internal sealed class VcpuData : WeightedVcpuData
    {
        public long Credit = CreditInitNs;
    }

    internal sealed class DomData : WeightedDomData
    {
        public int Weight = DefaultWeight;
        public int Cap;
        public long Budget;
    }

    private readonly List<Vcpu> _runq = new();
    protected override ICollection<Vcpu> RunQueue => _runq;
    private long _nextReplenish;
    private long _lastReplenish = -1;

    public string Name => "credit2";
    public uint SchedId => Schedulers.XEN_SCHEDULER_CREDIT2;
    public long RatelimitNs { get; private set; } = DefaultRatelimitNs;
    public bool ChargesCpuTime => true;

    public void AddPcpu(int cpu) { }
    public void RemovePcpu(int cpu) { }

    /// <summary>xl sched-credit2 -s -r: 0 or 100..500000 µs.</summary>
    public void SetPoolParams(long ratelimitNs)
    {
        if (ratelimitNs != 0 && (ratelimitNs < 100_000 || ratelimitNs > 500_000_000))
            throw new HypervisorException("ratelimit must be 0 or 100 to 500000 µs", Errno.EINVAL);
        RatelimitNs = ratelimitNs;
    }

    public (int Weight, int Cap) GetDomainParams(Domain d)
    {
        lock (_lock)
            return _doms.TryGetValue(d, out var x) ? (x.Weight, x.Cap) : throw CreditScheduler.NotHere(d);
    }

    public void SetDomainParams(Domain d, int? weight, int? cap)
    {
        if (weight is < 1 or > 65535)
            throw new HypervisorException("weight must be 1 to 65535", Errno.EINVAL);
        lock (_lock)
        {
            if (!_doms.TryGetValue(d, out var x))
                throw CreditScheduler.NotHere(d);
            if (cap is < 0 || cap > 100 * d.Vcpus.Length)
                throw new HypervisorException($"cap must be 0 to {100 * d.Vcpus.Length}", Errno.EINVAL);
            x.Weight = weight ?? x.Weight;
            if (cap is int c && c != x.Cap)
            {
                x.Cap = c;
                x.Budget = c * BudgetPeriodNs / 100;
            }
        }
        foreach (var v in d.Vcpus)
            Wake(v);
    }

    public override void Wake(Vcpu v)
    {
        long credit;
        lock (_lock)
        {
            if (!_all.Contains(v))
                return;
            var d = Data(v);
            if (v.IsRunning || d.Queued || !v.IsRunnable)
                return;
            d.Queued = true;
            _runq.Add(v);
            credit = d.Credit;
        }
        pool.Tickle(SchedUnit.Of(v), (cur, _) => cur.SchedData is SchedUnit { Priv: VcpuData c } && c.Credit < credit);
    }

    private bool Parked(Vcpu v) => _doms.TryGetValue(v.Domain, out var d) && d.Cap > 0 && d.Budget <= 0;

    private int MaxWeight() => _doms.Count == 0 ? DefaultWeight : _doms.Values.Max(d => d.Weight);

    public Vcpu? PickNext(int cpu, long now, out long untilNs)
    {
        lock (_lock)
        {
            if (now >= _nextReplenish)
            {
                // Budget for the time that really passed, so a late pCPU does not shrink the cap.
                long elapsed = _lastReplenish < 0 ? BudgetPeriodNs : Math.Min(now - _lastReplenish, CreditScheduler.MaxCarryNs);
                _lastReplenish = now;
                _nextReplenish = now + BudgetPeriodNs;
                foreach (var d in _doms.Values)
                    if (d.Cap > 0)
                        d.Budget = Math.Clamp(d.Budget + d.Cap * elapsed / 100, -CreditScheduler.MaxCarryNs, d.Cap * BudgetPeriodNs / 100);
            }
            _runq.RemoveAll(v =>
            {
                if (v.IsRunnable)
                    return false;
                Data(v).Queued = false;
                return true;
            });
            Vcpu? best = null, bestSoft = null, second = null;
            bool leftForSoft = false;
            foreach (var v in _runq)
            {
                var u = SchedUnit.Of(v);
                if (!u.CanRun(cpu) || Parked(v))
                    continue;
                // Xen tickles an idle pCPU of the vCPU's soft affinity and lets that one take it.
                bool prefers = u.Prefers(cpu, pool.Cpus);
                if (!prefers && pool.SoftIdlerFor(u, cpu))
                {
                    leftForSoft = true;
                    continue;
                }
                long c = Data(v).Credit;
                if (best is null || c > Data(best).Credit)
                {
                    second = best;
                    best = v;
                }
                else if (second is null || c > Data(second).Credit)
                    second = v;
                if (prefers && (bestSoft is null || c > Data(bestSoft).Credit))
                    bestSoft = v;
            }
            if (best is null)
            {
                untilNs = _doms.Values.Any(d => d.Cap > 0) ? _nextReplenish : long.MaxValue;
                if (leftForSoft)
                    untilNs = Math.Min(untilNs, now + CreditScheduler.SoftWaitNs); // in case the idle pCPU finds better work first
                return null;
            }
            // Soft affinity: among vCPUs that still have credit, one that prefers this pCPU goes first.
            var pick = bestSoft is not null && Data(bestSoft).Credit > 0 ? bestSoft : best;
            if (pick != best)
                second = best;
            if (Data(pick).Credit <= 0)
                ResetCredit();
            _runq.Remove(pick);
            var pd = Data(pick);
            pd.Queued = false;
            pick.IsRunning = true;
            long slice = MaxTimerNs;
            if (second is not null)
            {
                // Run until this vCPU's credit would drop to the next candidate's.
                long diff = pd.Credit - Data(second).Credit;
                int w = _doms.TryGetValue(pick.Domain, out var dw) ? dw.Weight : DefaultWeight;
                slice = Math.Clamp(diff * w / MaxWeight(), MinTimerNs, MaxTimerNs);
            }
            if (_doms.TryGetValue(pick.Domain, out var dom) && dom.Cap > 0)
                slice = Math.Min(slice, Math.Max(dom.Budget, 50_000));
            untilNs = now + slice;
            return pick;
        }
    }

    private void ResetCredit()
    {
        foreach (var v in _all)
        {
            var d = Data(v);
            d.Credit = Math.Min(d.Credit, 0) + CreditInitNs;
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
            if (_doms.TryGetValue(v.Domain, out var dom))
            {
                // Charged in full, a slice the host held up included: a forgiven debt would tilt the shares.
                d.Credit = Math.Max(d.Credit - ranNs * MaxWeight() / dom.Weight, -CreditScheduler.MaxCarryNs);
                if (dom.Cap > 0)
                    dom.Budget -= ranNs;
            }
            if (v.IsRunnable && !d.Queued)
            {
                d.Queued = true;
                _runq.Add(v);
                queued = true;
            }
        }
        if (queued)
            pool.Tickle(SchedUnit.Of(v), null);
    }
}
