using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Scheduling
{
    /// <summary>
    /// Each domain's NUMA node affinity (Xen's d->node_affinity): the nodes its memory should come from. Unless set
    /// explicitly, it follows the vCPUs: the nodes of the pCPUs of the domain's pool that are in the union of their
    /// hard affinities and, where that meets them, their soft affinities too. Setting every node of the host goes
    /// back to following the vCPUs, as in Xen.
    /// </summary>
    internal sealed class NodeAffinityTable(Cpupools pools)
    {
        private readonly Dictionary<Domain, int[]> _explicit = new();

        public bool IsAuto(Domain d)
        {
            lock (_explicit)
                return !_explicit.ContainsKey(d);
        }

        public int[] Of(Domain d)
        {
            lock (_explicit)
                if (_explicit.TryGetValue(d, out var nodes))
                    return nodes;
            return Derived(d);
        }

        private int[] Derived(Domain d)
        {
            var pool = pools.PoolOf(d);
            var topo = pools.Topology;
            var hard = new HashSet<int>();
            var soft = new HashSet<int>();
            foreach (var v in d.Vcpus)
            {
                if (v.SchedData is not SchedUnit u)
                    continue;
                hard.UnionWith(u.Hard.Cpus);
                soft.UnionWith(u.Soft.Cpus);
            }
            hard.IntersectWith(pool.Cpus);
            soft.IntersectWith(hard);
            var cpus = soft.Count > 0 ? soft : hard;
            return cpus.Select(c => topo.NodeOfCpu[c]).Distinct().Order().ToArray();
        }

        /// <summary>XEN_DOMCTL_setnodeaffinity: EINVAL when no given node is one of the host's.</summary>
        public void Set(Domain d, IEnumerable<int> nodes)
        {
            var topo = pools.Topology;
            var wanted = nodes.Distinct().ToArray();
            var present = wanted.Where(n => topo.Nodes.Contains(n)).Order().ToArray();
            if (present.Length == 0)
                throw new HypervisorException("a node affinity needs at least one of the host's nodes", Errno.EINVAL);
            lock (_explicit)
            {
                if (topo.Nodes.All(present.Contains))
                    _explicit.Remove(d);
                else
                    _explicit[d] = present;
            }
        }

        public void Forget(Domain d)
        {
            lock (_explicit)
                _explicit.Remove(d);
        }
    }
}

namespace XenSharp.Hypervisor
{
    /// <summary>One pCPU as `xl info -n` lists it (libxl_cputopology).</summary>
    public sealed record CpuTopologyInfo(int Cpu, int Core, int Socket, int Node);

    /// <summary>One node as `xl info -n` lists it (libxl_numainfo): memory in bytes, distances to every node.</summary>
    public sealed record NumaNodeInfo(int Node, ulong MemSizeBytes, ulong MemFreeBytes, IReadOnlyList<int> Distances);

    /// <summary>The domain's node affinity (XEN_DOMCTL_getnodeaffinity/setnodeaffinity) and the host's NUMA tables (XEN_SYSCTL_cputopoinfo/numainfo).</summary>
    public sealed partial class XenHypervisor
    {
        /// <summary>
        /// XEN_DOMCTL_getnodeaffinity: the nodes the domain's memory should come from — set explicitly, or derived from
        /// its vCPUs' affinities (`xl list -n`).
        /// </summary>
        public IReadOnlyList<int> GetDomainNodeAffinity(ushort domid) => Scheduler.NodeAffinity.Of(Guest(domid));

        /// <summary>
        /// XEN_DOMCTL_setnodeaffinity: fixes the domain's node affinity; every node of the host means "follow the
        /// vCPUs again". EINVAL when none of the nodes is the host's.
        /// </summary>
        public void SetDomainNodeAffinity(ushort domid, IEnumerable<int> nodes)
        {
            ArgumentNullException.ThrowIfNull(nodes);
            Scheduler.NodeAffinity.Set(Guest(domid), nodes);
        }

        /// <summary>Whether the domain's node affinity follows its vCPUs (Xen's d->auto_node_affinity).</summary>
        public bool IsDomainNodeAffinityAuto(ushort domid) => Scheduler.NodeAffinity.IsAuto(Guest(domid));

        /// <summary>
        /// The node of each of <paramref name="pcpus"/> pCPUs on this host, read as a hypervisor started with
        /// <see cref="HypervisorOptions.NumaSysfsPath"/> = <paramref name="sysfsPath"/> reads it (for tools that parse
        /// CPU lists before they reach the hypervisor).
        /// </summary>
        public static IReadOnlyList<int> ReadCpuNodes(int pcpus, string? sysfsPath = null) => new HostTopology(pcpus, sysfsPath).NodeOfCpu;

        /// <summary>XEN_SYSCTL_cputopoinfo: each pCPU's core, socket and node (one socket per node, one core per pCPU).</summary>
        public IReadOnlyList<CpuTopologyInfo> GetCpuTopology()
        {
            var topo = Scheduler.Topology;
            var nodes = topo.Nodes;
            return Enumerable.Range(0, topo.NodeOfCpu.Length).Select(c =>
            {
                int node = topo.NodeOfCpu[c];
                return new CpuTopologyInfo(c, c, Array.IndexOf(nodes, node), node);
            }).ToList();
        }

        /// <summary>
        /// XEN_SYSCTL_numainfo: each node's memory and distances. Machine memory is one host reservation; it is shared
        /// out among the nodes by their pCPUs, and a domain's pages count against the nodes of its node affinity.
        /// </summary>
        public IReadOnlyList<NumaNodeInfo> GetNumaInfo()
        {
            var topo = Scheduler.Topology;
            ulong total = (ulong)Frames.FrameCount << FrameTable.PageShift;
            int cpus = topo.NodeOfCpu.Length;
            var size = new ulong[topo.NodeCount];
            var used = new double[topo.NodeCount];
            foreach (int n in topo.Nodes)
                size[n] = total * (ulong)topo.CpusOfNode(n).Count() / (ulong)cpus;
            foreach (var d in AllDomains())
            {
                if (d.DomainId == 0 || d.Vcpus.Length == 0)
                    continue;
                var nodes = Scheduler.NodeAffinity.Of(d);
                if (nodes.Length == 0)
                    continue;
                double share = (double)((ulong)d.TotPages << FrameTable.PageShift) / nodes.Length;
                foreach (int n in nodes)
                    used[n] += share;
            }
            // Nodes without pCPUs are left out, as xl leaves out the invalid entries of numainfo.
            return topo.Nodes.Select(n => new NumaNodeInfo(n, size[n],
                (ulong)Math.Max(0, (double)size[n] - used[n]),
                Enumerable.Range(0, topo.NodeCount).Select(to => topo.Distance(n, to)).ToArray())).ToList();
        }
    }
}
