using XenSharp.Hypervisor;
using XenSharp.Toolstack.Config;
using DomainConfig = XenSharp.Toolstack.Config.DomainConfig;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>Cpupools and scheduler parameters (xl cpupool-*, sched-credit, sched-credit2, sched-rtds).</summary>
public sealed partial class Host
{
    private IScheduling Sched => _hv.Scheduling ?? throw new NotSupportedException("this hypervisor has no cpupools or schedulers");

    /// <summary>A pool by name or id, as xl's cpupool_qualifier_to_cpupoolid.</summary>
    private CpupoolInfo Pool(string pool)
    {
        var pools = Sched.ListCpupools();
        return pools.FirstOrDefault(p => p.Name == pool)
            ?? (int.TryParse(pool, out int id) ? pools.FirstOrDefault(p => p.PoolId == id) : null)
            ?? throw new ControlException($"unknown cpupool '{pool}'", 22);
    }

    /// <summary>The name of the pool a domain is in (Pool-0 when the platform has no pools).</summary>
    private string CpupoolName(uint domId)
    {
        if (_hv.Scheduling is not { } s) return "Pool-0";
        try
        {
            int id = s.DomainCpupool(domId);
            return s.ListCpupools().FirstOrDefault(p => p.PoolId == id)?.Name ?? "Pool-0";
        }
        catch (HypervisorException) { return "Pool-0"; }
    }

    private IReadOnlyList<int> CpupoolNumaSplit()
    {
        var ids = Sched.CpupoolNumaSplit();
        PublishCpupoolNames();
        return ids;
    }

    /// <summary>/local/pool/ID/name for every pool, where libxl looks a pool's name up (Xen's xen-init-dom0 writes
    /// Pool-0's, libxl the others').</summary>
    internal void PublishCpupoolNames()
    {
        if (_hv.Scheduling is not { } s) return;
        _xs.Rm("/local/pool");
        foreach (var p in s.ListCpupools())
            _xs.Write($"/local/pool/{p.PoolId}/name", p.Name);
    }

    // xl lists a pool's pCPUs one by one ("0,1,2"), not as ranges.
    private CpupoolEntry Entry(CpupoolInfo p) =>
        new(p.PoolId, p.Name, p.Scheduler, string.Join(',', p.Cpus.Order()), p.Cpus.Count, p.Domains);

    private IReadOnlyList<CpupoolEntry> CpupoolList(CpupoolListRequest r)
    {
        var pools = r.Pool is null ? Sched.ListCpupools()
            : [Sched.ListCpupools().FirstOrDefault(p => p.Name == r.Pool) ?? throw new ControlException($"Pool '{r.Pool}' does not exist", 22)];
        return pools.Select(Entry).ToList();
    }

    private CpupoolEntry CpupoolCreate(CpupoolCreateRequest r)
    {
        if (string.IsNullOrEmpty(r.Name)) throw new ControlException("Missing cpupool name!");
        if (Sched.ListCpupools().Any(p => p.Name == r.Name))
            throw new ControlException($"Pool name \"{r.Name}\" already exists", 17);
        // Without sched=, the host's scheduler (the one Pool-0 was made with), as xl asks libxl_get_scheduler.
        string sched = r.Scheduler ?? Sched.ListCpupools().First(p => p.PoolId == 0).Scheduler;
        if (!XenHypervisor.AvailableSchedulers.Contains(sched))
            throw new ControlException("Unknown scheduler", 22);
        var free = Sched.FreeCpus;
        IReadOnlyList<int> cpus;
        if (r.Cpus is not null && r.Nodes is not null)
            throw new ControlException("Only one of cpus= and nodes= may be given");
        if (r.Nodes is not null)
        {
            var nodes = CpuList.Parse(r.Nodes);
            cpus = free.Where(c => nodes.Contains(Sched.CpuNodes[c])).ToArray();
        }
        else if (r.Cpus is not null)
        {
            cpus = CpuList.Parse(r.Cpus, _hv.HostCpus);
            foreach (int c in cpus)
                if (!free.Contains(c)) throw new ControlException($"cpu {c} illegal or not free", 16);
        }
        else
        {
            // Without cpus= or nodes=, one free pCPU; an explicit empty list (cpus=[]) makes an empty pool.
            cpus = free.Take(1).ToArray();
            if (cpus.Count == 0) throw new ControlException("no free cpu found", 16);
        }
        if (r.Nodes is not null && cpus.Count == 0) throw new ControlException("no free cpu found", 16);
        int id = Sched.CreateCpupool(r.Name, sched, cpus);
        PublishCpupoolNames();
        return Entry(Sched.ListCpupools().First(p => p.PoolId == id));
    }

    private void CpupoolRename(CpupoolRenameRequest r)
    {
        var p = Pool(r.Pool);
        if (Sched.ListCpupools().Any(x => x.Name == r.NewName && x.PoolId != p.PoolId))
            throw new ControlException($"Can't rename cpupool '{r.Pool}': name '{r.NewName}' already exists", 17);
        Sched.RenameCpupool(p.PoolId, r.NewName);
        PublishCpupoolNames();
    }

    private void CpupoolCpu(CpupoolCpuRequest r)
    {
        var p = Pool(r.Pool);
        IReadOnlyList<int> cpus;
        if (r.Cpus.StartsWith("node:") || r.Cpus.StartsWith("nodes:"))
        {
            var nodes = CpuList.Parse(r.Cpus[(r.Cpus.IndexOf(':') + 1)..]);
            cpus = Enumerable.Range(0, _hv.HostCpus).Where(c => nodes.Contains(Sched.CpuNodes[c])).ToArray();
        }
        else
            cpus = CpuList.Parse(r.Cpus, _hv.HostCpus);
        foreach (int c in cpus)
        {
            if (c >= _hv.HostCpus) throw new ControlException($"cpu {c} does not exist", 22);
            if (r.Add)
            {
                if (!Sched.FreeCpus.Contains(c))
                {
                    if (p.Cpus.Contains(c)) continue;
                    throw new ControlException($"cpu {c} is not free (remove it from its cpupool first)", 16);
                }
                Sched.CpupoolAddCpu(p.PoolId, c);
            }
            else
            {
                if (!p.Cpus.Contains(c)) throw new ControlException($"cpu {c} is not in cpupool {p.Name}", 22);
                Sched.CpupoolRemoveCpu(p.PoolId, c);
            }
        }
    }

    /// <summary>The domains of a pool, by id (Domain-0 is the daemon itself and has no vCPUs in the hypervisor).</summary>
    private List<Domain> DomainsIn(int poolId)
    {
        List<Domain> doms;
        lock (_lock) doms = [.. _domains.Values.Where(d => d.Ready).OrderBy(d => d.DomId)];
        return doms.Where(d => { try { return Sched.DomainCpupool(d.DomId) == poolId; } catch (HypervisorException) { return false; } }).ToList();
    }

    private SchedResult SchedCredit(SchedCreditRequest r)
    {
        bool credit2 = r.Scheduler == "credit2";
        var s = Sched;
        if (r.PoolParams || r.TsliceMs is not null || r.RatelimitUs is not null || r.MigrationDelayUs is not null)
        {
            var pools = r.Pool is null ? s.ListCpupools().Where(p => p.Scheduler == r.Scheduler).ToList() : [Pool(r.Pool)];
            if (r.TsliceMs is not null || r.RatelimitUs is not null || r.MigrationDelayUs is not null)
            {
                if (r.Pool is null) pools = [Pool("Pool-0")];
                foreach (var p in pools)
                    if (credit2) s.SetCredit2PoolParams(p.PoolId, r.RatelimitUs ?? throw new ControlException("-r RATELIMIT needed"));
                    else s.SetCreditPoolParams(p.PoolId, r.TsliceMs, r.RatelimitUs, r.MigrationDelayUs);
                return new SchedResult([]);
            }
            return new SchedResult(pools.Select(p => PoolParams(p, credit2, [])).ToList());
        }
        if (r.Domain is not null)
        {
            var d = Resolve(r.Domain);
            if (r.Weight is not null || r.Cap is not null)
            {
                if (credit2) s.SetCredit2Params(d.DomId, r.Weight, r.Cap);
                else s.SetCreditParams(d.DomId, r.Weight, r.Cap);
                return new SchedResult([]);
            }
            return new SchedResult([new SchedPool("", 0, 0, [CreditRow(d, credit2)])]);
        }
        var all = s.ListCpupools().Where(p => p.Scheduler == r.Scheduler && (r.Pool is null || p.Name == r.Pool)).ToList();
        if (r.Pool is not null && all.Count == 0) Pool(r.Pool);
        return new SchedResult(all.Select(p => PoolParams(p, credit2, DomainsIn(p.PoolId).Select(d => CreditRow(d, credit2)).ToList())).ToList());
    }

    private SchedPool PoolParams(CpupoolInfo p, bool credit2, IReadOnlyList<SchedDomain> domains)
    {
        var pp = credit2 ? Sched.GetCredit2PoolParams(p.PoolId) : Sched.GetCreditPoolParams(p.PoolId);
        return new SchedPool(p.Name, pp.TsliceMs, pp.RatelimitUs, domains, pp.MigrationDelayUs);
    }

    private SchedDomain CreditRow(Domain d, bool credit2)
    {
        var c = credit2 ? Sched.GetCredit2Params(d.DomId) : Sched.GetCreditParams(d.DomId);
        return new SchedDomain(d.Config.Name, d.DomId, c.Weight, c.Cap);
    }

    private SchedResult SchedRtds(SchedRtdsRequest r)
    {
        var s = Sched;
        if (r.Domain is not null)
        {
            var d = Resolve(r.Domain);
            bool setting = r.Periods.Count > 0 || r.Budgets.Count > 0 || r.Extratimes.Count > 0;
            if (setting)
            {
                if (r.Vcpus.Count == 0)
                    s.SetRtdsParams(d.DomId, null, r.Periods.FirstOrDefault() is var p and > 0 ? p : null,
                        r.Budgets.FirstOrDefault() is var b and > 0 ? b : null, r.Extratimes.Count > 0 ? r.Extratimes[0] : null);
                else
                    for (int i = 0; i < r.Vcpus.Count; i++)
                        s.SetRtdsParams(d.DomId, r.Vcpus[i], i < r.Periods.Count ? r.Periods[i] : null,
                            i < r.Budgets.Count ? r.Budgets[i] : null, i < r.Extratimes.Count ? r.Extratimes[i] : null);
                return new SchedResult([]);
            }
            var rows = s.GetRtdsParams(d.DomId).Where(v => r.AllVcpus || r.Vcpus.Count == 0 || r.Vcpus.Contains(v.Vcpu));
            if (!r.AllVcpus && r.Vcpus.Count == 0)
                rows = rows.Take(1);
            return new SchedResult([new SchedPool("", 0, 0, rows.Select(v => RtdsRow(d, v, r.AllVcpus || r.Vcpus.Count > 0)).ToList())]);
        }
        var pools = s.ListCpupools().Where(p => p.Scheduler == "rtds" && (r.Pool is null || p.Name == r.Pool)).ToList();
        if (r.Pool is not null && pools.Count == 0) Pool(r.Pool);
        return new SchedResult(pools.Select(p => new SchedPool(p.Name, 0, 0, DomainsIn(p.PoolId)
            .SelectMany(d => s.GetRtdsParams(d.DomId).Where(v => r.AllVcpus || v.Vcpu == 0).Select(v => RtdsRow(d, v, r.AllVcpus))).ToList())).ToList());
    }

    private static SchedDomain RtdsRow(Domain d, RtdsVcpuParams v, bool perVcpu) =>
        new(d.Config.Name, d.DomId, 0, 0, perVcpu ? v.Vcpu : -1, v.PeriodUs, v.BudgetUs, v.Extratime);

    /// <summary>
    /// libxl's automatic NUMA placement (numa_place_domain), for a domain with neither cpus= nor cpus_soft=: the best
    /// nodes of its pool (<see cref="NumaPlacement"/>) become its node affinity and its vCPUs' soft affinity. A host of
    /// one node has nothing to choose; when no set of nodes fits, the domain stays unplaced, as libxl leaves it.
    /// </summary>
    private void PlaceOnNumaNodes(uint domId, DomainConfig c, IHypervisorDomain hvd)
    {
        if (_hv.Scheduling is not { } s) return;
        var cpuNodes = s.CpuNodes;
        if (cpuNodes.Distinct().Count() < 2) return;
        int poolId = s.DomainCpupool(domId);
        var pool = s.ListCpupools().First(p => p.PoolId == poolId);
        var freeKb = s.NumaInfo.ToDictionary(n => n.Node, n => (long)(n.MemFreeBytes / 1024));
        List<Domain> others;
        lock (_lock) others = [.. _domains.Values.Where(d => d.DomId != domId)];
        var placed = new List<IReadOnlyCollection<int>>();
        foreach (var d in others)
        {
            IReadOnlyList<VcpuSchedInfo> vcpus;
            try { vcpus = s.GetVcpuSchedInfo(d.DomId); }
            catch (HypervisorException) { continue; } // gone meanwhile
            foreach (var v in vcpus.Where(v => v.Online))
            {
                var both = v.SoftAffinity.Intersect(v.HardAffinity).ToArray();
                placed.Add(both.Length > 0 ? both : [.. v.HardAffinity]);
            }
        }
        var best = NumaPlacement.Choose(cpuNodes, pool.Cpus, freeKb, c.MaxMemKb, c.MaxVcpus, placed);
        if (best is null) return;
        s.SetNodeAffinity(domId, best.Nodes);
        for (int v = 0; v < c.MaxVcpus; v++)
            hvd.SetVcpuAffinity(v, null, best.Cpus);
    }

    /// <summary>The domain's node affinity as `xl list -n` prints it: "all" for every node of the host, else ranges.</summary>
    private string NodeAffinityText(uint domId)
    {
        if (_hv.Scheduling is not { } s) return "all";
        try
        {
            var affinity = s.GetNodeAffinity(domId);
            return s.CpuNodes.Distinct().All(affinity.Contains) ? "all" : CpuList.Format(affinity);
        }
        catch (HypervisorException) { return "all"; }
    }

    /// <summary>`xl info -n`: the pCPUs' topology and the nodes' memory and distances.</summary>
    private (IReadOnlyList<CpuTopologyEntry> Cpus, IReadOnlyList<NumaNodeEntry> Nodes) NumaTables()
    {
        if (_hv.Scheduling is not { } s)
            return ([.. Enumerable.Range(0, _hv.HostCpus).Select(c => new CpuTopologyEntry(c, c, 0, 0))], []);
        return ([.. s.CpuTopology.Select(t => new CpuTopologyEntry(t.Cpu, t.Core, t.Socket, t.Node))],
            [.. s.NumaInfo.Select(n => new NumaNodeEntry(n.Node, n.MemSizeBytes, n.MemFreeBytes, n.Distances))]);
    }

    /// <summary>xl.cfg pool=, cpu_weight= and cap=: the domain joins its pool before it first runs.</summary>
    private void ApplySchedulingConfig(uint domId, DomainConfig c)
    {
        if (_hv.Scheduling is not { } s) return;
        if (c.Pool is not null)
            s.CpupoolMigrate(domId, Pool(c.Pool).PoolId);
        var sched = s.ListCpupools().First(p => p.PoolId == s.DomainCpupool(domId)).Scheduler;
        int? weight = c.CpuWeight == 256 ? null : c.CpuWeight;
        int? cap = c.Cap == 0 ? null : c.Cap;
        if (weight is null && cap is null) return;
        if (sched == "credit") s.SetCreditParams(domId, weight, cap);
        else if (sched == "credit2") s.SetCredit2Params(domId, weight, cap);
    }
}
