using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// A credit scheduler after Xen's credit1: vCPUs earn credit in proportion to their domain's weight every
/// accounting period and burn it while running; vCPUs with credit left (UNDER) run before those without
/// (OVER), round-robin within each class; a vCPU woken from blocking is BOOSTed to the front once.
/// </summary>
internal sealed class CreditScheduler : IScheduler
{
    public const long DefaultSliceNs = 30_000_000;
    public const long AccountingPeriodNs = 30_000_000;
    public const int DefaultWeight = 256;

    private sealed class VcpuData
    {
        public long Credit;
        public bool Queued;
        public bool Boost;
    }

    private readonly object _lock = new();
    private readonly LinkedList<Vcpu> _runq = new();
    private readonly List<Vcpu> _all = new();
    private readonly SemaphoreSlim _work = new(0);
    private long _lastAccounting;
    private int _idle;

    private readonly int _pcpus;

    public CreditScheduler(int pcpus) => _pcpus = Math.Max(1, pcpus);

    public string Name => "credit";
    public long SliceNs { get; set; } = DefaultSliceNs;

    private static VcpuData Data(Vcpu v) => (VcpuData)(v.SchedData ??= new VcpuData());

    public void AddVcpu(Vcpu v)
    {
        lock (_lock)
        {
            Data(v);
            _all.Add(v);
        }
    }

    public void RemoveVcpu(Vcpu v)
    {
        lock (_lock)
        {
            _all.Remove(v);
            _runq.Remove(v);
            Data(v).Queued = false;
        }
    }

    public void Wake(Vcpu v)
    {
        lock (_lock)
        {
            var d = Data(v);
            if (v.IsRunning || d.Queued || !v.IsRunnable || !_all.Contains(v))
                return;
            d.Queued = true;
            d.Boost = true;
            _runq.AddFirst(v);
        }
        Signal();
    }

    private void Signal()
    {
        if (Volatile.Read(ref _idle) > 0)
            _work.Release();
    }

    public Vcpu? PickNext(int pcpu, long now, out long sliceNs)
    {
        sliceNs = SliceNs;
        lock (_lock)
        {
            if (now - _lastAccounting >= AccountingPeriodNs)
                Account(now);
            LinkedListNode<Vcpu>? pick = null;
            for (var n = _runq.First; n is not null; n = n.Next)
            {
                var d = Data(n.Value);
                if (!n.Value.IsRunnable)
                    continue;
                if (d.Boost || d.Credit > 0)
                {
                    pick = n;
                    break;
                }
                pick ??= n; // an OVER vCPU only if no UNDER one is found
            }
            // Drop queued vCPUs that stopped being runnable (paused, shut down).
            for (var n = _runq.First; n is not null;)
            {
                var next = n.Next;
                if (!n.Value.IsRunnable && n != pick)
                {
                    Data(n.Value).Queued = false;
                    _runq.Remove(n);
                }
                n = next;
            }
            if (pick is null)
                return null;
            var v = pick.Value;
            _runq.Remove(pick);
            var data = Data(v);
            data.Queued = false;
            data.Boost = false;
            v.IsRunning = true;
            return v;
        }
    }

    private void Account(long now)
    {
        _lastAccounting = now;
        var domains = _all.GroupBy(v => v.Domain).ToList();
        if (domains.Count == 0)
            return;
        long total = domains.Sum(g => (long)g.Key.Weight);
        foreach (var g in domains)
        {
            long share = AccountingPeriodNs * _pcpus * g.Key.Weight / Math.Max(1, total);
            long perVcpu = share / Math.Max(1, g.Count());
            foreach (var v in g)
            {
                var d = Data(v);
                // Credit is capped so an idle vCPU cannot hoard it.
                d.Credit = Math.Min(d.Credit + perVcpu, AccountingPeriodNs);
            }
        }
    }

    public void Descheduled(Vcpu v, long ranNs)
    {
        bool queued = false;
        lock (_lock)
        {
            var d = Data(v);
            d.Credit -= ranNs;
            v.IsRunning = false;
            if (v.IsRunnable && !d.Queued && _all.Contains(v))
            {
                d.Queued = true;
                _runq.AddLast(v);
                queued = true;
            }
        }
        if (queued)
            Signal();
    }

    public void WaitForWork(int pcpu, int timeoutMs)
    {
        Interlocked.Increment(ref _idle);
        try
        {
            lock (_lock)
                if (_runq.Count > 0)
                    return;
            _work.Wait(timeoutMs);
        }
        finally
        {
            Interlocked.Decrement(ref _idle);
        }
    }

    public void WakeAll() => _work.Release(64);
}
