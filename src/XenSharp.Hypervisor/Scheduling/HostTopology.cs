namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// The host's NUMA topology as Xen's cpu_to_node and node distance tables: which node each pCPU belongs to, and how
/// far nodes are from each other. pCPU n runs on host CPU n modulo the host's CPU count, so it takes that CPU's node
/// from a sysfs node directory (node*/cpulist, node*/distance; /sys/devices/system/node by default). A host without
/// that directory is one node.
/// </summary>
internal sealed class HostTopology
{
    public const string DefaultSysfsPath = "/sys/devices/system/node";
    /// <summary>The SLIT distances Xen reports when the firmware gives none.</summary>
    public const int LocalDistance = 10, RemoteDistance = 20;

    private readonly Dictionary<(int, int), int> _distance;

    public HostTopology(int pcpus, string? sysfsPath = null)
        : this(pcpus, ReadSysfs(sysfsPath ?? DefaultSysfsPath, out var distance), distance)
    {
    }

    /// <summary>A topology given as host CPU → node (and optionally node distances), e.g. for a made-up host.</summary>
    public HostTopology(int pcpus, IReadOnlyDictionary<int, int> nodeOfHostCpu, IReadOnlyDictionary<(int, int), int>? distance = null)
    {
        int hostCpus = nodeOfHostCpu.Count == 0 ? Math.Max(1, Environment.ProcessorCount) : nodeOfHostCpu.Keys.Max() + 1;
        NodeOfCpu = new int[pcpus];
        for (int i = 0; i < pcpus; i++)
            NodeOfCpu[i] = nodeOfHostCpu.TryGetValue(i % hostCpus, out int n) ? n : 0;
        var nodes = NodeOfCpu.Distinct().Order().ToArray();
        Nodes = nodes.Length == 0 ? [0] : nodes;
        _distance = distance is null ? [] : new Dictionary<(int, int), int>(distance);
    }

    public int[] NodeOfCpu { get; }
    /// <summary>The nodes that have pCPUs, ascending.</summary>
    public int[] Nodes { get; }
    /// <summary>One more than the highest node (the size of a node map, Xen's max node id + 1).</summary>
    public int NodeCount => Nodes[^1] + 1;

    public IEnumerable<int> CpusOfNode(int node) => Enumerable.Range(0, NodeOfCpu.Length).Where(c => NodeOfCpu[c] == node);

    public int Distance(int from, int to) =>
        _distance.TryGetValue((from, to), out int d) ? d : from == to ? LocalDistance : RemoteDistance;

    private static Dictionary<int, int> ReadSysfs(string root, out Dictionary<(int, int), int> distance)
    {
        var map = new Dictionary<int, int>();
        distance = [];
        try
        {
            foreach (var dir in Directory.EnumerateDirectories(root, "node*"))
            {
                if (!int.TryParse(Path.GetFileName(dir).AsSpan(4), out int node))
                    continue;
                var list = File.ReadAllText(Path.Combine(dir, "cpulist")).Trim();
                if (list.Length != 0)
                    foreach (int cpu in CpuList.Parse(list))
                        map[cpu] = node;
                // node*/distance: this node's distance to node 0, 1, ... in order.
                string dpath = Path.Combine(dir, "distance");
                if (File.Exists(dpath))
                {
                    var parts = File.ReadAllText(dpath).Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                    for (int to = 0; to < parts.Length; to++)
                        if (int.TryParse(parts[to], out int d))
                            distance[(node, to)] = d;
                }
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        catch (FormatException) { }
        return map;
    }
}
