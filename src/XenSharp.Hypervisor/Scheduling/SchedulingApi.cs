using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;

namespace XenSharp.Hypervisor
{
    /// <summary>One cpupool (a row of `xl cpupool-list`).</summary>
    public sealed record CpupoolInfo(int PoolId, string Name, string Scheduler, IReadOnlyList<int> Cpus, int Domains);

    /// <summary>A domain's credit or credit2 parameters (`xl sched-credit[2] -d`): weight, and cap in percent of one pCPU (0 = none).</summary>
    public sealed record CreditParams(int Weight, int Cap);

    /// <summary>A cpupool's credit parameters (`xl sched-credit -s`); credit2 has only the rate limit (TsliceMs is 0).</summary>
    public sealed record CreditPoolParams(int TsliceMs, int RatelimitUs, int MigrationDelayUs = 0);

    /// <summary>One vCPU's RTDS parameters (`xl sched-rtds -d -v`).</summary>
    public sealed record RtdsVcpuParams(int Vcpu, long PeriodUs, long BudgetUs, bool Extratime);

    /// <summary>A minor frame of an ARINC653 schedule: the vCPU of the domain with this handle (UUID) runs for RuntimeNs.</summary>
    public sealed record Arinc653Entry(Guid DomainHandle, int Vcpu, long RuntimeNs);

    /// <summary>An ARINC653 schedule (struct xen_sysctl_arinc653_schedule): a major frame and its minor frames in order.</summary>
    public sealed record Arinc653Schedule(long MajorFrameNs, IReadOnlyList<Arinc653Entry> Entries);

    /// <summary>A vCPU as `xl vcpu-list` shows it: where it runs (or last ran; -1 never), its state and affinities.</summary>
    public sealed record VcpuSchedInfo(ushort DomainId, int Vcpu, int Cpu, bool Online, bool Running, bool Blocked,
        long CpuTimeNs, IReadOnlyList<int> HardAffinity, IReadOnlyList<int> SoftAffinity);

    /// <summary>xl's cpu lists: "all", "0-3,6", "^2" exclusions.</summary>
    public static class CpuList
    {
        /// <summary>Parses a list; "all" needs <paramref name="nrCpus"/>.</summary>
        public static IReadOnlyList<int> Parse(string text, int nrCpus = 0)
        {
            var set = new SortedSet<int>();
            foreach (var raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                bool exclude = raw.StartsWith('^');
                var item = exclude ? raw[1..] : raw;
                IEnumerable<int> cpus;
                if (item == "all")
                    cpus = Enumerable.Range(0, nrCpus);
                else
                {
                    var parts = item.Split('-');
                    if (parts.Length is < 1 or > 2 || !int.TryParse(parts[0], out int lo) || lo < 0)
                        throw new FormatException($"invalid cpu list entry '{raw}'");
                    int hi = lo;
                    if (parts.Length == 2 && (!int.TryParse(parts[1], out hi) || hi < lo))
                        throw new FormatException($"invalid cpu range '{raw}'");
                    cpus = Enumerable.Range(lo, hi - lo + 1);
                }
                foreach (int c in cpus)
                    if (exclude)
                        set.Remove(c);
                    else
                        set.Add(c);
            }
            return set.ToArray();
        }

        /// <summary>Formats as xl prints it: "all" for every pCPU of <paramref name="nrCpus"/>, "none" for none, else ranges.</summary>
        public static string Format(IReadOnlyCollection<int> cpus, int nrCpus = -1)
        {
            if (cpus.Count == 0)
                return "none";
            var sorted = cpus.Distinct().Order().ToArray();
            if (nrCpus > 0 && sorted.Length == nrCpus && sorted[0] == 0 && sorted[^1] == nrCpus - 1)
                return "all";
            var parts = new List<string>();
            for (int i = 0; i < sorted.Length;)
            {
                int j = i;
                while (j + 1 < sorted.Length && sorted[j + 1] == sorted[j] + 1)
                    j++;
                parts.Add(j == i ? $"{sorted[i]}" : $"{sorted[i]}-{sorted[j]}");
                i = j + 1;
            }
            return string.Join(",", parts);
        }
    }

    /// <summary>Scheduler, cpupool and affinity control (sysctl cpupool_op/scheduler_op, domctl scheduler_op and vcpuaffinity).</summary>
    public sealed partial class XenHypervisor
    {
        /// <summary>The schedulers a cpupool can use, by the names xl uses.</summary>
        public static IReadOnlyList<string> AvailableSchedulers => Schedulers.Names;

        /// <summary>NUMA node of each pCPU (index = pCPU).</summary>
        public IReadOnlyList<int> CpuNodes => Scheduler.Topology.NodeOfCpu;

        private Cpupool PoolFor(Domain d) => Scheduler.PoolOf(d);

        private T SchedOf<T>(Domain d, string what) where T : class, IScheduler =>
            PoolFor(d).Scheduler as T ?? throw new HypervisorException(
                $"domain {d.DomainId} is in cpupool '{PoolFor(d).Name}', which uses {PoolFor(d).Scheduler.Name}, not {what}", Errno.EINVAL);

        private T PoolSched<T>(int poolId, string what) where T : class, IScheduler
        {
            var p = Scheduler.Get(poolId);
            return p.Scheduler as T ?? throw new HypervisorException($"cpupool '{p.Name}' uses {p.Scheduler.Name}, not {what}", Errno.EINVAL);
        }

        // ---- cpupools ----

        public IReadOnlyList<CpupoolInfo> ListCpupools() => Scheduler.All().Select(PoolInfo).ToList();

        public CpupoolInfo GetCpupool(int poolId) => PoolInfo(Scheduler.Get(poolId));

        private CpupoolInfo PoolInfo(Cpupool p) => new(p.Id, p.Name, p.Scheduler.Name, p.Cpus, Scheduler.DomainCount(p));

        /// <summary>pCPUs in no cpupool.</summary>
        public IReadOnlyList<int> GetFreeCpus() => Scheduler.FreeCpus();

        /// <summary>`xl cpupool-create`: a pool with its own scheduler over free pCPUs; returns its id (the next free one unless given).</summary>
        public int CreateCpupool(string name, string scheduler, IEnumerable<int> cpus, int? poolId = null)
        {
            int id = Scheduler.Create(name, scheduler, cpus, poolId).Id;
            Services.StartPcpus();
            return id;
        }

        /// <summary>`xl cpupool-destroy`: only an empty pool other than Pool-0; its pCPUs become free.</summary>
        public void DestroyCpupool(int poolId) => Scheduler.Destroy(poolId);

        public void RenameCpupool(int poolId, string newName) => Scheduler.Rename(poolId, newName);

        /// <summary>`xl cpupool-cpu-add`: a free pCPU joins the pool.</summary>
        public void CpupoolAddCpu(int poolId, int cpu) => Scheduler.AddCpu(poolId, cpu);

        /// <summary>`xl cpupool-cpu-remove`: the pCPU leaves the pool (not the last one of a pool with domains) and becomes free.</summary>
        public void CpupoolRemoveCpu(int poolId, int cpu) => Scheduler.RemoveCpu(poolId, cpu);

        /// <summary>`xl cpupool-migrate`: moves a domain to another pool; it gets that scheduler's default parameters.</summary>
        public void CpupoolMigrate(ushort domid, int poolId)
        {
            var d = Guest(domid);
            Scheduler.MoveDomain(d, poolId, () => Pause(domid), () => Unpause(domid));
        }

        public int GetDomainCpupool(ushort domid) => PoolFor(FindDomain(domid) ?? throw new HypervisorException($"no domain {domid}", Errno.ESRCH)).Id;

        /// <summary>
        /// `xl cpupool-numa-split`: with only Pool-0 present, Pool-0 keeps the first node's pCPUs and is renamed
        /// Pool-node0 (after its node), and every other node gets a pool Pool-nodeN with its pCPUs and Pool-0's scheduler.
        /// Returns the pool ids, node order. Pool-0's domains stay in it.
        /// </summary>
        public IReadOnlyList<int> CpupoolNumaSplit()
        {
            var pools = Scheduler.All();
            if (pools.Length != 1)
                throw new HypervisorException("cpupool-numa-split needs Pool-0 to be the only cpupool", Errno.EBUSY);
            var pool0 = pools[0];
            var topo = Scheduler.Topology;
            var ids = new List<int> { 0 };
            int firstNode = topo.Nodes[0];
            foreach (int node in topo.Nodes.Skip(1))
            {
                var cpus = topo.CpusOfNode(node).ToArray();
                foreach (int c in cpus)
                    Scheduler.RemoveCpu(0, c);
                ids.Add(CreateCpupool($"Pool-node{node}", pool0.Scheduler.Name, cpus));
            }
            Scheduler.Rename(0, $"Pool-node{firstNode}");
            return ids;
        }

        // ---- credit and credit2 ----

        public CreditParams GetCreditParams(ushort domid)
        {
            var (w, c) = SchedOf<CreditScheduler>(Guest(domid), "credit").GetDomainParams(Guest(domid));
            return new CreditParams(w, c);
        }

        /// <summary>`xl sched-credit -d D -w W -c C`; null leaves a value unchanged.</summary>
        public void SetCreditParams(ushort domid, int? weight = null, int? cap = null) =>
            SchedOf<CreditScheduler>(Guest(domid), "credit").SetDomainParams(Guest(domid), weight, cap);

        public CreditPoolParams GetCreditPoolParams(int poolId)
        {
            var s = PoolSched<CreditScheduler>(poolId, "credit");
            return new CreditPoolParams((int)(s.TsliceNs / 1_000_000), (int)(s.RatelimitNs / 1000), (int)(s.MigrationDelayNs / 1000));
        }

        /// <summary>`xl sched-credit -s -p POOL -t TSLICE_MS -r RATELIMIT_US -m MIGRATION_DELAY_US`.</summary>
        public void SetCreditPoolParams(int poolId, int? tsliceMs = null, int? ratelimitUs = null, int? migrationDelayUs = null) =>
            PoolSched<CreditScheduler>(poolId, "credit").SetPoolParams(tsliceMs * 1_000_000L, ratelimitUs * 1000L, migrationDelayUs * 1000L);

        public CreditParams GetCredit2Params(ushort domid)
        {
            var (w, c) = SchedOf<Credit2Scheduler>(Guest(domid), "credit2").GetDomainParams(Guest(domid));
            return new CreditParams(w, c);
        }

        /// <summary>`xl sched-credit2 -d D -w W -c C`.</summary>
        public void SetCredit2Params(ushort domid, int? weight = null, int? cap = null) =>
            SchedOf<Credit2Scheduler>(Guest(domid), "credit2").SetDomainParams(Guest(domid), weight, cap);

        public CreditPoolParams GetCredit2PoolParams(int poolId) =>
            new(0, (int)(PoolSched<Credit2Scheduler>(poolId, "credit2").RatelimitNs / 1000));

        /// <summary>`xl sched-credit2 -s -p POOL -r RATELIMIT_US`.</summary>
        public void SetCredit2PoolParams(int poolId, int ratelimitUs) =>
            PoolSched<Credit2Scheduler>(poolId, "credit2").SetPoolParams(ratelimitUs * 1000L);

        // ---- RTDS ----

        public IReadOnlyList<RtdsVcpuParams> GetRtdsParams(ushort domid)
        {
            var d = Guest(domid);
            var s = SchedOf<RtdsScheduler>(d, "rtds");
            return d.Vcpus.Select(v =>
            {
                var (p, b, e) = s.GetParams(v);
                return new RtdsVcpuParams(v.Id, p / 1000, b / 1000, e);
            }).ToList();
        }

        /// <summary>`xl sched-rtds -d D [-v V|all] -p PERIOD_US -b BUDGET_US -e 0|1`; vcpu null means all of them.</summary>
        public void SetRtdsParams(ushort domid, int? vcpu, long? periodUs, long? budgetUs, bool? extratime = null)
        {
            var d = Guest(domid);
            var s = SchedOf<RtdsScheduler>(d, "rtds");
            var targets = vcpu is int i
                ? [d.GetVcpu((uint)i) ?? throw new HypervisorException($"domain {domid} has no vCPU {i}", Errno.EINVAL)]
                : d.Vcpus;
            foreach (var v in targets)
                s.SetParams(v, periodUs * 1000, budgetUs * 1000, extratime);
        }

        // ---- ARINC653 ----

        /// <summary>Installs the ARINC653 schedule of a pool (xc_sched_arinc653_schedule_set); a new major frame starts now.</summary>
        public void SetArinc653Schedule(int poolId, Arinc653Schedule schedule)
        {
            ArgumentNullException.ThrowIfNull(schedule);
            PoolSched<Arinc653Scheduler>(poolId, "arinc653").SetSchedule(schedule.MajorFrameNs,
                schedule.Entries.Select(e => new Arinc653Scheduler.Entry(e.DomainHandle, e.Vcpu, e.RuntimeNs)).ToArray(), Time.NowNs);
            Services.StartPcpus();
        }

        public Arinc653Schedule GetArinc653Schedule(int poolId)
        {
            var (major, entries) = PoolSched<Arinc653Scheduler>(poolId, "arinc653").GetSchedule();
            return new Arinc653Schedule(major, entries.Select(e => new Arinc653Entry(e.DomainHandle, e.VcpuId, e.RuntimeNs)).ToList());
        }

        // ---- affinity ----

        /// <summary>
        /// `xl vcpu-pin D V HARD [SOFT]`: sets the hard and/or soft affinity (null leaves it) of one vCPU, or of all when
        /// <paramref name="vcpu"/> is null. A vCPU running outside its new hard affinity moves at once.
        /// </summary>
        public void SetVcpuAffinity(ushort domid, int? vcpu, IEnumerable<int>? hard, IEnumerable<int>? soft)
        {
            var d = Guest(domid);
            int n = Scheduler.NrPcpus;
            var h = hard is null ? null : CpuMask.From(n, hard);
            var s = soft is null ? null : CpuMask.From(n, soft);
            if (h is not null && !h.Cpus.Any())
                throw new HypervisorException("a hard affinity needs at least one pCPU", Errno.EINVAL);
            var targets = vcpu is int i
                ? [d.GetVcpu((uint)i) ?? throw new HypervisorException($"domain {domid} has no vCPU {i}", Errno.EINVAL)]
                : d.Vcpus;
            foreach (var v in targets)
            {
                var u = SchedUnit.Of(v);
                if (h is not null)
                    u.Hard = h;
                if (s is not null)
                    u.Soft = s;
                if (PoolFor(d).Scheduler is NullScheduler ns)
                    ns.AffinityChanged(v);
                if (v.IsRunning && u.Processor >= 0 && !u.Hard[u.Processor])
                    Scheduler.PcpuAt(u.Processor)?.Preempt();
                Scheduler.Wake(v);
            }
        }

        /// <summary>`xl vcpu-list`: every vCPU of the domain with where it runs and its affinities.</summary>
        public IReadOnlyList<VcpuSchedInfo> GetVcpuSchedInfo(ushort domid)
        {
            var d = Guest(domid);
            return d.Vcpus.Select(v =>
            {
                var u = SchedUnit.Of(v);
                return new VcpuSchedInfo(d.DomainId, v.Id, u.Processor, v.IsUp, v.IsRunning, v.Blocked,
                    Interlocked.Read(ref v.CpuTimeNs), u.Hard.Cpus.ToArray(), u.Soft.Cpus.ToArray());
            }).ToList();
        }
    }
}
