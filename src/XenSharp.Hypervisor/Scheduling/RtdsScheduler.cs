using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Xen's RTDS: each vCPU gets <c>budget</c> of CPU time every <c>period</c>, scheduled earliest deadline first
/// (the deadline is the end of the current period). A vCPU whose budget is spent waits for its next period unless
/// it has extratime, in which case it may use otherwise idle time, below every vCPU that still has budget.
/// Budgets are replenished at period boundaries, which also end the running slice so a replenished vCPU with an
/// earlier deadline preempts.
/// </summary>
internal sealed class RtdsScheduler(Cpupool pool) : IScheduler
{
    public const long DefaultPeriodNs = 10_000_000;
    public const long DefaultBudgetNs = 4_000_000;
    /// <summary>Budgets smaller than this are not worth a slice (Xen's RTDS_MIN_BUDGET is 10 µs).</summary>
    private const long MinBudgetNs = 10_000;
    public const int HistoryLength = 512;

    internal sealed class VcpuData
    {
        public long PeriodNs = DefaultPeriodNs;
        public long BudgetNs = DefaultBudgetNs;
        public bool Extratime = true;
        public long CurBudget;
        public long Deadline;
        public bool Queued;
        public bool RanOnBudget;
        /// <summary>CPU time the vCPU had in each of its last completed periods (a ring).</summary>
        public readonly long[] History = new long[HistoryLength];
        public int HistoryCount;
        public long ConsumedThisPeriod;
    }

    private readonly object _lock = new();
    private readonly List<Vcpu> _runq = new();
    private readonly List<Vcpu> _all = new();

    public string Name => "rtds";
    public uint SchedId => Schedulers.XEN_SCHEDULER_RTDS;
    public long RatelimitNs => 0;

    internal static VcpuData Data(Vcpu v) => (VcpuData)SchedUnit.Of(v).Priv!;

    public void AddPcpu(int cpu) { }
    public void RemovePcpu(int cpu) { }

    public (long PeriodNs, long BudgetNs, bool Extratime) GetParams(Vcpu v)
    {
        lock (_lock)
        {
            if (!_all.Contains(v))
                throw CreditScheduler.NotHere(v.Domain);
            var d = Data(v);
            return (d.PeriodNs, d.BudgetNs, d.Extratime);
        }
    }

    /// <summary>xl sched-rtds -p/-b/-e. Xen's bounds: 10 µs ≤ budget ≤ period, period at most about 4295 s.</summary>
    public void SetParams(Vcpu v, long? periodNs, long? budgetNs, bool? extratime)
    {
        lock (_lock)
        {
            if (!_all.Contains(v))
                throw CreditScheduler.NotHere(v.Domain);
            var d = Data(v);
            long p = periodNs ?? d.PeriodNs, b = budgetNs ?? d.BudgetNs;
            if (p < MinBudgetNs || b < MinBudgetNs || b > p || p > 4_294_967_295_000)
                throw new HypervisorException("RTDS needs 10 µs <= budget <= period", Errno.EINVAL);
            d.PeriodNs = p;
            d.BudgetNs = b;
            d.Extratime = extratime ?? d.Extratime;
            // The new parameters take effect with a fresh period.
            d.Deadline = 0;
        }
        Wake(v);
    }

    /// <summary>The end of the vCPU's current period (0 before its first); earlier periods end a whole number of periods before.</summary>
    public long CurrentDeadline(Vcpu v)
    {
        lock (_lock)
            return Data(v).Deadline;
    }

    /// <summary>The CPU time of the vCPU's completed periods, oldest first (up to <see cref="HistoryLength"/>).</summary>
    public long[] History(Vcpu v)
    {
        lock (_lock)
        {
            var d = Data(v);
            int n = Math.Min(d.HistoryCount, HistoryLength);
            var r = new long[n];
            for (int i = 0; i < n; i++)
                r[i] = d.History[(d.HistoryCount - n + i) % HistoryLength];
            return r;
        }
    }

    public void AddVcpu(Vcpu v)
    {
        lock (_lock)
        {
            SchedUnit.Of(v).Priv = new VcpuData();
            _all.Add(v);
        }
        Wake(v);
    }

    public void RemoveVcpu(Vcpu v)
    {
        lock (_lock)
        {
            if (!_all.Remove(v))
                return;
            _runq.Remove(v);
            Data(v).Queued = false;
        }
    }

    private static void UpdateDeadline(VcpuData d, long now)
    {
        if (d.Deadline == 0)
        {
            d.Deadline = now + d.PeriodNs;
            d.CurBudget = d.BudgetNs;
            d.ConsumedThisPeriod = 0;
            return;
        }
        if (now < d.Deadline)
            return;
        d.History[d.HistoryCount++ % HistoryLength] = d.ConsumedThisPeriod;
        long missed = (now - d.Deadline) / d.PeriodNs;
        for (long i = 0; i < Math.Min(missed, 4); i++)
            d.History[d.HistoryCount++ % HistoryLength] = 0;
        d.Deadline += (missed + 1) * d.PeriodNs;
        d.CurBudget = d.BudgetNs;
        d.ConsumedThisPeriod = 0;
    }

    public void Wake(Vcpu v)
    {
        long deadline;
        lock (_lock)
        {
            if (!_all.Contains(v))
                return;
            var d = Data(v);
            if (v.IsRunning || d.Queued || !v.IsRunnable)
                return;
            UpdateDeadline(d, Time(v));
            d.Queued = true;
            _runq.Add(v);
            deadline = d.CurBudget > 0 ? d.Deadline : long.MaxValue;
        }
        pool.Tickle(SchedUnit.Of(v), (cur, _) => cur.SchedData is SchedUnit { Priv: VcpuData c } && (!c.RanOnBudget || c.Deadline > deadline));
    }

    private static long Time(Vcpu v) => v.Domain.Host.Time.NowNs;

    public Vcpu? PickNext(int cpu, long now, out long untilNs)
    {
        lock (_lock)
        {
            long nextEvent = long.MaxValue;
            foreach (var v in _all)
            {
                var d = Data(v);
                UpdateDeadline(d, now);
                nextEvent = Math.Min(nextEvent, d.Deadline);
            }
            Vcpu? best = null, extra = null;
            for (int i = _runq.Count - 1; i >= 0; i--)
            {
                var v = _runq[i];
                var d = Data(v);
                if (!v.IsRunnable)
                {
                    d.Queued = false;
                    _runq.RemoveAt(i);
                    continue;
                }
                if (!SchedUnit.Of(v).CanRun(cpu))
                    continue;
                if (d.CurBudget >= MinBudgetNs)
                {
                    if (best is null || d.Deadline < Data(best).Deadline)
                        best = v;
                }
                else if (d.Extratime && (extra is null || d.Deadline < Data(extra).Deadline))
                    extra = v;
            }
            var pick = best ?? extra;
            if (pick is null)
            {
                untilNs = nextEvent; // a replenishment may make a queued vCPU eligible
                return null;
            }
            _runq.Remove(pick);
            var pd = Data(pick);
            pd.Queued = false;
            pd.RanOnBudget = pick == best;
            pick.IsRunning = true;
            untilNs = pick == best ? Math.Min(now + pd.CurBudget, nextEvent) : nextEvent;
            return pick;
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
            d.ConsumedThisPeriod += ranNs;
            if (d.RanOnBudget)
                d.CurBudget = Math.Max(0, d.CurBudget - ranNs);
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
