namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// libxl's automatic NUMA placement: for a domain whose configuration gives neither cpus= nor cpus_soft=, the set of
/// nodes to prefer. Candidates are sets of nodes of the domain's cpupool with enough free memory for the domain and at
/// least as many pCPUs as it has vCPUs; the fewest nodes win, and among as many nodes the one with more free memory
/// and fewer vCPUs already running there (free memory weighing three times as much, each as a normalised difference).
/// The domain's vCPUs then get the candidate's pCPUs as soft affinity, and the domain the nodes as node affinity.
/// </summary>
internal static class NumaPlacement
{
    /// <summary>A set of nodes, its pCPUs in the pool, their free memory and the vCPUs that run there already.</summary>
    public sealed record Candidate(IReadOnlyList<int> Nodes, IReadOnlyList<int> Cpus, long FreeMemKb, int Vcpus);

    /// <summary>Node sets beyond this many nodes are not enumerated (2^16 subsets at most).</summary>
    private const int MaxNodes = 16;

    /// <summary>
    /// The best candidate, or null when none fits (libxl then leaves the domain unplaced).
    /// <paramref name="cpuNodes"/>: the node of each pCPU; <paramref name="poolCpus"/>: the pCPUs of the domain's
    /// pool; <paramref name="freeKbOfNode"/>: each node's free memory; <paramref name="placedVcpus"/>: for every vCPU
    /// of the other domains, the pCPUs it runs on (its soft affinity within its hard one, or the hard one).
    /// </summary>
    public static Candidate? Choose(IReadOnlyList<int> cpuNodes, IReadOnlyCollection<int> poolCpus,
        IReadOnlyDictionary<int, long> freeKbOfNode, long memKb, int vcpus, IReadOnlyList<IReadOnlyCollection<int>> placedVcpus)
    {
        var nodes = poolCpus.Where(c => c < cpuNodes.Count).Select(c => cpuNodes[c]).Distinct().Order().ToArray();
        if (nodes.Length == 0 || nodes.Length > MaxNodes)
            return null;
        for (int size = 1; size <= nodes.Length; size++)
        {
            Candidate? best = null;
            foreach (var set in Subsets(nodes, size))
            {
                var cpus = poolCpus.Where(c => c < cpuNodes.Count && set.Contains(cpuNodes[c])).Order().ToArray();
                long free = set.Sum(n => freeKbOfNode.GetValueOrDefault(n));
                if (cpus.Length < vcpus || free < memKb)
                    continue;
                int running = placedVcpus.Count(a => a.Any(cpus.Contains));
                var c = new Candidate(set, cpus, free, running);
                if (best is null || Better(c, best))
                    best = c;
            }
            if (best is not null)
                return best;
        }
        return null;
    }

    /// <summary>libxl's comparison: 3 × the normalised lead in free memory plus the normalised lead in fewer vCPUs.</summary>
    public static bool Better(Candidate a, Candidate b) =>
        3 * NormalisedDiff(b.FreeMemKb, a.FreeMemKb) + NormalisedDiff(a.Vcpus, b.Vcpus) < 0;

    private static double NormalisedDiff(double x, double y)
    {
        double m = Math.Max(x, y);
        return m == 0 ? 0 : (x - y) / m;
    }

    private static IEnumerable<int[]> Subsets(int[] items, int size, int start = 0)
    {
        if (size == 0)
        {
            yield return [];
            yield break;
        }
        for (int i = start; i <= items.Length - size; i++)
            foreach (var rest in Subsets(items, size - 1, i + 1))
                yield return [items[i], .. rest];
    }
}
