namespace XenSharp.Xl;

/// <summary>
/// The NUMA node of each host CPU, read from the sysfs node tree as xensharpd reads it, so that a dry
/// run (`xl create -n`) resolves node: and nodes: in cpus= as the daemon would, without a daemon.
/// </summary>
internal static class HostNodes
{
    public const string SysfsPath = "/sys/devices/system/node";

    /// <summary>Node of CPU 0..<paramref name="cpus"/>-1 (0 where the tree says nothing, or has no nodes).</summary>
    public static IReadOnlyList<int> CpuNodes(int cpus, string root = SysfsPath)
    {
        var nodeOfCpu = new int[cpus];
        try
        {
            foreach (var dir in Directory.EnumerateDirectories(root, "node*"))
            {
                if (!int.TryParse(Path.GetFileName(dir).AsSpan(4), out int node)) continue;
                foreach (var range in File.ReadAllText(Path.Combine(dir, "cpulist")).Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
                {
                    var ends = range.Split('-');
                    int first = int.Parse(ends[0]), last = ends.Length > 1 ? int.Parse(ends[1]) : first;
                    for (int cpu = first; cpu <= last; cpu++)
                        if (cpu < cpus) nodeOfCpu[cpu] = node;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException) { }
        return nodeOfCpu;
    }
}
