using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>Per-vCPU state every weighted policy keeps: whether the vCPU sits in the run queue.</summary>
internal class WeightedVcpuData
{
    public bool Queued;
}

/// <summary>Per-domain state every weighted policy keeps: how many of its vCPUs the pool holds.</summary>
internal class WeightedDomData
{
    public int Vcpus;
}

/// <summary>
/// The membership bookkeeping that credit and credit2 share: the pool's vCPUs, their data on the
/// <see cref="SchedUnit"/>, and one record per domain that lives as long as one of its vCPUs does.
/// </summary>
internal abstract class WeightedScheduler<TVcpu, TDom>
    where TVcpu : WeightedVcpuData, new()
    where TDom : WeightedDomData, new()
{
    protected readonly object _lock = new();
    protected readonly List<Vcpu> _all = new();
    protected readonly Dictionary<Domain, TDom> _doms = new();

    /// <summary>The policy's run queue, whatever its order.</summary>
    protected abstract ICollection<Vcpu> RunQueue { get; }

    protected static TVcpu Data(Vcpu v) => (TVcpu)SchedUnit.Of(v).Priv!;

    public abstract void Wake(Vcpu v);

    public void AddVcpu(Vcpu v)
    {
        lock (_lock)
        {
            SchedUnit.Of(v).Priv = new TVcpu();
            _all.Add(v);
            if (!_doms.TryGetValue(v.Domain, out var d))
                _doms[v.Domain] = d = new TDom();
            d.Vcpus++;
        }
        Wake(v);
    }

    public void RemoveVcpu(Vcpu v)
    {
        lock (_lock)
        {
            if (!_all.Remove(v))
                return;
            RunQueue.Remove(v);
            Data(v).Queued = false;
            if (_doms.TryGetValue(v.Domain, out var d) && --d.Vcpus == 0)
                _doms.Remove(v.Domain);
        }
    }
}
