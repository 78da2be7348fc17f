namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// Which NUMA node each pCPU belongs to. pCPU n runs on host CPU n modulo the host's CPU count, so it takes that
/// CPU's node from /sys/devices/system/node (a host without that directory is one node).
/// </summary>
internal sealed class HostTopology
{
    public HostTopology(int pcpus)
    {
        var hostNode = ReadHostNodes();
        int hostCpus = Math.Max(1, Environment.ProcessorCount);
        NodeOfCpu = new int[pcpus];
        for (int i = 0; i < pcpus; i++)
            NodeOfCpu[i] = hostNode.TryGetValue(i % hostCpus, out int n) ? n : 0;
        var nodes = NodeOfCpu.Distinct().Order().ToArray();
        Nodes = nodes.Length == 0 ? [0] : nodes;
    }

    public int[] NodeOfCpu { get; }
    public int[] Nodes { get; }

    public IEnumerable<int> CpusOfNode(int node) => Enumerable.Range(0, NodeOfCpu.Length).Where(c => NodeOfCpu[c] == node);

    private static Dictionary<int, int> ReadHostNodes()
    {
        var map = new Dictionary<int, int>();
        try
        {
            foreach (var dir in Directory.EnumerateDirectories("/sys/devices/system/node", "node*"))
            {
                if (!int.TryParse(Path.GetFileName(dir).AsSpan(4), out int node))
                    continue;
                var list = File.ReadAllText(Path.Combine(dir, "cpulist")).Trim();
                if (list.Length == 0)
                    continue;
                foreach (int cpu in CpuList.Parse(list))
                    map[cpu] = node;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return map;
    }
}
