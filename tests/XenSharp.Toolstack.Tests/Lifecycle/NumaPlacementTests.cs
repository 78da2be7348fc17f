using System.Text.Json;
using XenSharp.Hypervisor;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>libxl's candidate choice on made-up hosts.</summary>
[Trait("Feature", "NUMA scheduler affinity")]
public class NumaCandidateTests
{
    private static readonly int[] FourNodes = [0, 0, 1, 1, 2, 2, 3, 3];
    private static readonly int[] AllCpus = [0, 1, 2, 3, 4, 5, 6, 7];

    private static Dictionary<int, long> Free(params long[] kb) => kb.Select((k, n) => (k, n)).ToDictionary(x => x.n, x => x.k);

    [Fact]
    public void TheNodeWithFewestVcpusAndMostMemoryWins()
    {
        // Node 1 runs two vCPUs, node 2 one, nodes 0 and 3 none; node 3 has the most free memory.
        IReadOnlyCollection<int>[] placed = [[2, 3], [2], [4, 5]];
        var c = NumaPlacement.Choose(FourNodes, AllCpus, Free(1000, 1000, 1000, 1200), 500, 2, placed)!;
        Assert.Equal([3], c.Nodes);
        Assert.Equal([6, 7], c.Cpus);
        Assert.Equal((1200, 0), (c.FreeMemKb, c.Vcpus));
        // Node 0 runs 2 vCPUs, node 2 three, nodes 1 and 3 five. Free memory weighs three times as much as vCPUs, each
        // as a difference relative to the larger: 10% more memory does not make up for 3 vCPUs against 2
        // (3 × 0.09 < 1/3), 20% more does (3 × 0.17 > 1/3).
        IReadOnlyCollection<int>[] load = [[0], [0], [4], [4], [4], .. Enumerable.Repeat<IReadOnlyCollection<int>>([2], 5), .. Enumerable.Repeat<IReadOnlyCollection<int>>([6], 5)];
        Assert.Equal([0], NumaPlacement.Choose(FourNodes, AllCpus, Free(1000, 1000, 1100, 1000), 500, 2, load)!.Nodes);
        Assert.Equal([2], NumaPlacement.Choose(FourNodes, AllCpus, Free(1000, 1000, 1200, 1000), 500, 2, load)!.Nodes);
    }

    [Fact]
    public void TheFewestNodesThatFitMemoryAndVcpusWin()
    {
        // 1500 KB fits no single node but nodes 0+3 (the freest pair).
        var c = NumaPlacement.Choose(FourNodes, AllCpus, Free(800, 600, 700, 900), 1500, 2, [])!;
        Assert.Equal([0, 3], c.Nodes);
        Assert.Equal([0, 1, 6, 7], c.Cpus);
        // Three vCPUs need two nodes' pCPUs even when memory fits one.
        Assert.Equal(2, NumaPlacement.Choose(FourNodes, AllCpus, Free(800, 600, 700, 900), 100, 3, [])!.Nodes.Count);
        // Only the pool's pCPUs count.
        Assert.Equal([1], NumaPlacement.Choose(FourNodes, [2, 3, 4], Free(800, 600, 700, 900), 100, 2, [])!.Nodes);
        // Nothing fits: no placement.
        Assert.Null(NumaPlacement.Choose(FourNodes, AllCpus, Free(800, 600, 700, 900), 4000, 2, []));
        Assert.Null(NumaPlacement.Choose(FourNodes, AllCpus, Free(800, 600, 700, 900), 100, 9, []));
    }
}

/// <summary>
/// Automatic placement at `xl create` on a two-node host (pCPUs 0-1 on node 0, 2-3 on node 1, 128 MiB each): a domain
/// with neither cpus= nor cpus_soft= prefers the least loaded node that fits; `xl list -n`, `xl vcpu-list` and
/// `xl info -n` show it.
/// </summary>
[Trait("Feature", "NUMA scheduler affinity")]
public sealed class NumaPlacementTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-numa").FullName;
    private readonly XenStored _xs = new();
    private readonly XenHypervisorPlatform _hv;
    private readonly Host _host;

    public NumaPlacementTests()
    {
        string sys = Path.Combine(_dir, "node");
        foreach (var (node, cpus, dist) in new[] { (0, "0-1", "10 21"), (1, "2-3", "21 10") })
        {
            Directory.CreateDirectory(Path.Combine(sys, $"node{node}"));
            File.WriteAllText(Path.Combine(sys, $"node{node}", "cpulist"), cpus + "\n");
            File.WriteAllText(Path.Combine(sys, $"node{node}", "distance"), dist + "\n");
        }
        _hv = new XenHypervisorPlatform(new XenHypervisor(new HypervisorOptions
        {
            MachineMemoryBytes = 256UL << 20,
            Pcpus = 4,
            NumaSysfsPath = sys,
        }));
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        _host = new Host(_hv, _xs, new RunPaths(Path.Combine(_dir, "run")));
    }

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        Directory.Delete(_dir, true);
    }

    private T Ask<T>(ControlRequest<T> request)
    {
        var r = _host.Handle(request);
        Assert.True(r.Ok, r.Error);
        return JsonSerializer.Deserialize<T>(r.Result!.Value, ControlJson.Options)!;
    }

    private uint Create(string name, int memMb, string extra = "")
    {
        string cfg = $"name=\"{name}\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory={memMb}\nvcpus=2\n{extra}";
        return Ask(new CreateRequest(cfg, Path.Combine(_dir, name + ".cfg"), _dir, [], true)).DomId;
    }

    private string NodeAffinity(string name) => Ask(new ListRequest([name], false)).Single().NodeAffinity;

    private (string Hard, string Soft)[] Affinities(string name) =>
        Ask(new VcpuListRequest([name])).Select(v => (v.Hard, v.Soft)).ToArray();

    [Fact]
    public void DomainsArePlacedOnTheLeastLoadedNodeThatFits()
    {
        Create("a", 16);
        Assert.Equal("0", NodeAffinity("a"));
        Assert.All(Affinities("a"), a => Assert.Equal(("all", "0-1"), a));
        // Node 0 now runs a's two vCPUs and holds its memory: b goes to node 1.
        Create("b", 16);
        Assert.Equal("1", NodeAffinity("b"));
        Assert.All(Affinities("b"), a => Assert.Equal(("all", "2-3"), a));
        // More memory than a node has free: both nodes, which is every node.
        Create("big", 150);
        Assert.Equal("all", NodeAffinity("big"));
        Assert.All(Affinities("big"), a => Assert.Equal(("all", "all"), a));
        // cpus= turns placement off; the node affinity follows the hard affinity.
        Create("pinned", 16, "cpus=\"node:1\"");
        Assert.Equal("1", NodeAffinity("pinned"));
        Assert.All(Affinities("pinned"), a => Assert.Equal(("2-3", "all"), a));
        Create("soft", 16, "cpus_soft=\"3\"");
        Assert.Equal("1", NodeAffinity("soft"));
        Assert.All(Affinities("soft"), a => Assert.Equal(("all", "3"), a));
        // A node the host does not have is refused, naming the line.
        var r = _host.Handle(new CreateRequest("name=\"bad\"\ntype=\"pvh\"\nkernel=\"k.elf\"\ncpus=\"node:2\"\n", Path.Combine(_dir, "bad.cfg"), _dir, [], true));
        Assert.False(r.Ok);
        Assert.Equal($"{Path.Combine(_dir, "bad.cfg")}:4: node 2 does not exist (the host has 2 nodes)", r.Error);
        // vcpu-pin takes node: too.
        Ask(new VcpuPinRequest("a", -1, "node:1", null));
        Assert.All(Affinities("a"), a => Assert.Equal(("2-3", "0-1"), a));
        Assert.Equal("0", NodeAffinity("a")); // placed explicitly: it stays
    }

    [Fact]
    public void InfoListsTheTopology()
    {
        var h = Ask(new InfoRequest());
        Assert.Equal(2, h.NrNodes);
        Assert.Equal([(0, 0), (1, 0), (2, 1), (3, 1)], h.CpuTopology.Select(c => (c.Cpu, c.Node)));
        Assert.Equal([0, 1], h.NumaNodes.Select(n => n.Node));
        Assert.Equal([21, 10], h.NumaNodes[1].Distances);
        Assert.Equal(128UL << 20, h.NumaNodes[0].MemSizeBytes);
        Create("a", 16);
        h = Ask(new InfoRequest());
        Assert.True(h.NumaNodes[0].MemFreeBytes <= (128UL - 16) << 20, $"node 0 has {h.NumaNodes[0].MemFreeBytes} bytes free");
        Assert.Equal(128UL << 20, h.NumaNodes[1].MemFreeBytes);
    }
}
