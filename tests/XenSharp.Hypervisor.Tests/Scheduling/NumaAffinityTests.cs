using XenSharp.Hypervisor.Scheduling;
using SchedUnit = XenSharp.Hypervisor.Scheduling.SchedUnit;

namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>A made-up host's NUMA topology, as a sysfs node tree: node n holds the given CPUs.</summary>
internal sealed class FakeNumaHost : IDisposable
{
    public FakeNumaHost(params string[] cpusOfNode)
    {
        Path = Directory.CreateTempSubdirectory("xs-numa").FullName;
        for (int n = 0; n < cpusOfNode.Length; n++)
        {
            string dir = System.IO.Path.Combine(Path, $"node{n}");
            Directory.CreateDirectory(dir);
            File.WriteAllText(System.IO.Path.Combine(dir, "cpulist"), cpusOfNode[n] + "\n");
            // Two hops between different nodes, as a two-socket board's SLIT says.
            File.WriteAllText(System.IO.Path.Combine(dir, "distance"),
                string.Join(' ', Enumerable.Range(0, cpusOfNode.Length).Select(to => to == n ? 10 : 21)) + "\n");
        }
    }

    public string Path { get; }

    public XenHypervisor Host(int pcpus, string scheduler = "credit") => new(new HypervisorOptions
    {
        MachineMemoryBytes = 256UL << 20,
        Pcpus = pcpus,
        Scheduler = scheduler,
        NumaSysfsPath = Path,
    });

    public void Dispose() => Directory.Delete(Path, true);
}

/// <summary>
/// The host's NUMA topology from a sysfs tree, each domain's node affinity (derived from its vCPUs' affinities or set
/// with XEN_DOMCTL_setnodeaffinity), and what `xl info -n` reads of the host.
/// </summary>
[Trait("Feature", "NUMA scheduler affinity")]
public class NodeAffinityTests
{
    [Fact]
    public void TheTopologyComesFromTheSysfsTree()
    {
        using var numa = new FakeNumaHost("0-1", "2-3");
        using var host = numa.Host(pcpus: 4);
        Assert.Equal([0, 0, 1, 1], host.CpuNodes);
        Assert.Equal([new CpuTopologyInfo(0, 0, 0, 0), new(1, 1, 0, 0), new(2, 2, 1, 1), new(3, 3, 1, 1)], host.GetCpuTopology());
        var info = host.GetNumaInfo();
        Assert.Equal([0, 1], info.Select(n => n.Node));
        Assert.Equal([10, 21], info[0].Distances);
        Assert.Equal([21, 10], info[1].Distances);
        Assert.Equal(128UL << 20, info[0].MemSizeBytes);
        Assert.Equal(info[1].MemSizeBytes, info[1].MemFreeBytes);
        // More pCPUs than host CPUs: pCPU n is host CPU n modulo 4.
        using var big = numa.Host(pcpus: 6);
        Assert.Equal([0, 0, 1, 1, 0, 0], big.CpuNodes);
        // A node without CPUs (memory only) is no node of the scheduler's.
        using var sparse = new FakeNumaHost("0-1", "", "2-3");
        using var three = sparse.Host(pcpus: 4);
        Assert.Equal([0, 0, 2, 2], three.CpuNodes);
        Assert.Equal([0, 2], three.GetNumaInfo().Select(n => n.Node));
        Assert.Equal([21, 21, 10], three.GetNumaInfo()[1].Distances);
        // No tree: one node.
        using var flat = new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 2, NumaSysfsPath = "/nonexistent" });
        Assert.Equal([0, 0], flat.CpuNodes);
        Assert.Single(flat.GetNumaInfo());
    }

    [Fact]
    public void NodeAffinityFollowsTheVcpusUnlessSet()
    {
        using var numa = new FakeNumaHost("0-1", "2-3");
        using var host = numa.Host(pcpus: 4);
        var g = new Guest(host, vcpus: 2, ramMiB: 1);
        Assert.Equal([0, 1], host.GetDomainNodeAffinity(g.Id));
        Assert.True(host.IsDomainNodeAffinityAuto(g.Id));
        // Hard affinity alone narrows it.
        host.SetVcpuAffinity(g.Id, null, hard: [2, 3], soft: null);
        Assert.Equal([1], host.GetDomainNodeAffinity(g.Id));
        // Soft within hard narrows it further; the union over the vCPUs counts.
        host.SetVcpuAffinity(g.Id, null, hard: [0, 1, 2, 3], soft: [1]);
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        host.SetVcpuAffinity(g.Id, 1, hard: null, soft: [3]);
        Assert.Equal([0, 1], host.GetDomainNodeAffinity(g.Id));
        // Soft outside hard does not count: the hard affinity decides.
        host.SetVcpuAffinity(g.Id, null, hard: [2, 3], soft: [0]);
        Assert.Equal([1], host.GetDomainNodeAffinity(g.Id));

        // Set explicitly, it stays whatever the vCPUs do; every node means "follow the vCPUs" again.
        host.SetDomainNodeAffinity(g.Id, [0]);
        Assert.False(host.IsDomainNodeAffinityAuto(g.Id));
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        host.SetVcpuAffinity(g.Id, null, hard: [3], soft: null);
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        host.SetDomainNodeAffinity(g.Id, [1, 0]);
        Assert.True(host.IsDomainNodeAffinityAuto(g.Id));
        Assert.Equal([1], host.GetDomainNodeAffinity(g.Id));
        // Nodes the host does not have are dropped; none of its nodes is EINVAL and changes nothing.
        host.SetDomainNodeAffinity(g.Id, [0, 7]);
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetDomainNodeAffinity(g.Id, [5])).Errno);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetDomainNodeAffinity(g.Id, [])).Errno);
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        Assert.Equal(3, Assert.Throws<HypervisorException>(() => host.GetDomainNodeAffinity(99)).Errno);
    }

    [Fact]
    public void ADomainsPagesCountAgainstTheNodesOfItsAffinity()
    {
        using var numa = new FakeNumaHost("0-1", "2-3");
        using var host = numa.Host(pcpus: 4);
        var g = new Guest(host, vcpus: 1, ramMiB: 8);
        var before = host.GetNumaInfo();
        host.SetDomainNodeAffinity(g.Id, [1]);
        var after = host.GetNumaInfo();
        Assert.Equal(after[0].MemSizeBytes, after[0].MemFreeBytes);
        Assert.True(after[1].MemSizeBytes - after[1].MemFreeBytes >= 8UL << 20, $"node 1 free {after[1].MemFreeBytes} of {after[1].MemSizeBytes}");
        Assert.Equal(before[0].MemFreeBytes + before[1].MemFreeBytes, after[0].MemFreeBytes + after[1].MemFreeBytes);
    }

    [Fact]
    public void ADomainInANodesPoolHasThatNode()
    {
        using var numa = new FakeNumaHost("0-1", "2-3");
        using var host = numa.Host(pcpus: 4);
        var g = new Guest(host, vcpus: 2, ramMiB: 1);
        var ids = host.CpupoolNumaSplit();
        Assert.Equal(["Pool-node0", "Pool-node1"], ids.Select(i => host.GetCpupool(i).Name));
        Assert.Equal([2, 3], host.GetCpupool(ids[1]).Cpus);
        Assert.Equal([0], host.GetDomainNodeAffinity(g.Id));
        host.CpupoolMigrate(g.Id, ids[1]);
        Assert.Equal([1], host.GetDomainNodeAffinity(g.Id));
    }
}

/// <summary>
/// credit honours soft affinity in Xen's two balance steps: among vCPUs of the same class the one preferring the pCPU
/// goes first, one that only may run there goes first only with a better class, and never while a pCPU of its soft
/// affinity is idle.
/// </summary>
[Trait("Feature", "NUMA scheduler affinity")]
[Trait("Feature", "Credit Scheduler")]
[Collection("Scheduler measurements")]
public class CreditSoftAffinityTests
{
    private const long Ms = 1_000_000;

    /// <summary>Two one-vCPU domains, runnable without a pCPU taking part, so decisions are driven at chosen times.</summary>
    private static (XenHypervisor Host, CreditScheduler Sched, Common.Vcpu A, Common.Vcpu B) Driven(int[]? hardA = null)
    {
        var host = SchedGuests.Host(pcpus: 2);
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host);
        host.SetVcpuAffinity(a, 0, hard: hardA, soft: [1]);
        host.SetVcpuAffinity(b, 0, hard: null, soft: [0]);
        foreach (var id in new[] { a, b })
        {
            host.FindDomain(id)!.State = DomainRunState.Running;
            host.FindDomain(id)!.PauseCount = 0;
        }
        return (host, (CreditScheduler)host.Scheduler.Pool(0)!.Scheduler, host.FindDomain(a)!.Vcpus[0], host.FindDomain(b)!.Vcpus[0]);
    }

    [Fact]
    public void OfTwoBoostedVcpusEachPcpuTakesTheOneThatPrefersIt()
    {
        var (host, sched, a, b) = Driven();
        using var owner = host;
        // Woken b first, then a: a heads the queue (a BOOST goes to the front), yet pCPU 0 takes b.
        sched.Wake(b);
        sched.Wake(a);
        long t = 1_000 * Ms;
        Assert.Same(b, sched.PickNext(0, t, out _));
        Assert.Same(a, sched.PickNext(1, t, out _));
    }

    [Fact]
    public void ABetterClassGoesFirstOutsideItsSoftAffinity()
    {
        var (host, sched, a, b) = Driven();
        using var owner = host;
        long t = 1_000 * Ms;
        // b runs on pCPU 0 and burns past its credit (OVER); a wakes BOOSTed.
        sched.Wake(b);
        Assert.Same(b, sched.PickNext(0, t, out _));
        sched.Descheduled(b, 0, 2 * Ms, t + 2 * Ms);
        sched.Wake(a);
        // pCPU 0 (outside a's soft affinity, and no pCPU of it idle) steals the BOOSTed a over its own OVER b.
        Assert.Same(a, sched.PickNext(0, t + 2 * Ms, out _));
        sched.Descheduled(a, 0, 3 * Ms, t + 5 * Ms);
        Assert.Same(b, sched.PickNext(0, t + 5 * Ms, out _));
        sched.Descheduled(b, 0, Ms, t + 6 * Ms);
        // Both OVER, a ahead in the queue: pCPU 0 takes b, which prefers it.
        Assert.Same(b, sched.PickNext(0, t + 6 * Ms, out _));
        // With only a left, pCPU 0 runs it rather than nothing.
        Assert.Same(a, sched.PickNext(0, t + 6 * Ms, out _));
    }

    [Fact]
    public void ASoftAffinityOutsideTheHardOneIsNoPreference()
    {
        // a may run only on pCPU 0 and "prefers" pCPU 1: no preference, so queue order decides between equals.
        var (host, sched, a, b) = Driven(hardA: [0]);
        using var owner = host;
        sched.Wake(b);
        sched.Wake(a);
        long t = 1_000 * Ms;
        Assert.Same(a, sched.PickNext(0, t, out _));
        Assert.Same(b, sched.PickNext(0, t, out _));
    }

    [Fact]
    public void AVcpuIsLeftForAnIdlePcpuOfItsSoftAffinity()
    {
        var (host, sched, a, b) = Driven();
        using var owner = host;
        // pCPU 1 exists and is idle (its thread is never started: the decisions are driven here).
        var p1 = new Pcpu(host.Services, host.Scheduler, 1);
        sched.Wake(a);
        long t = 1_000 * Ms;
        Assert.Null(sched.PickNext(0, t, out long until));
        Assert.InRange(until, t, t + CreditScheduler.SoftWaitNs);
        // Once pCPU 1 is busy, pCPU 0 takes it.
        p1.CurrentVcpu = b;
        Assert.Same(a, sched.PickNext(0, t + Ms, out _));
        Assert.Equal(0, SchedUnit.Of(a).Migrations);
    }

    [Fact]
    public void LiveEveryVcpuRunsOnThePcpuItPrefers()
    {
        using var host = SchedGuests.Host(pcpus: 2);
        var trace = SchedGuests.Decisions(host);
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host);
        host.SetVcpuAffinity(a, 0, hard: null, soft: [1]);
        host.SetVcpuAffinity(b, 0, hard: null, soft: [0]);
        host.SetCreditPoolParams(0, tsliceMs: 2);
        host.Unpause(a);
        host.Unpause(b);
        Assert.True(TestHosts.WaitUntil(() => trace.Count(r => r.Vcpu.Domain.DomainId == a) >= 10 && trace.Count(r => r.Vcpu.Domain.DomainId == b) >= 10));
        var slices = trace.ToArray();
        Assert.All(slices, r => Assert.Equal(r.Vcpu.Domain.DomainId == a ? 1 : 0, r.Cpu));
        Assert.Equal([1], host.GetVcpuSchedInfo(a)[0].SoftAffinity);
    }
}

/// <summary>credit2 leaves a vCPU to an idle pCPU of its soft affinity, as Xen's tickled pCPU takes it.</summary>
[Trait("Feature", "NUMA scheduler affinity")]
[Trait("Feature", "Credit2 Scheduler")]
[Collection("Scheduler measurements")]
public class Credit2SoftAffinityTests
{
    [Fact]
    public void AVcpuIsLeftForAnIdlePcpuOfItsSoftAffinity()
    {
        const long Ms = 1_000_000;
        using var host = SchedGuests.Host(pcpus: 2, scheduler: "credit2");
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host);
        host.SetVcpuAffinity(a, 0, hard: null, soft: [1]);
        foreach (var id in new[] { a, b })
        {
            host.FindDomain(id)!.State = DomainRunState.Running;
            host.FindDomain(id)!.PauseCount = 0;
        }
        var sched = (Credit2Scheduler)host.Scheduler.Pool(0)!.Scheduler;
        var va = host.FindDomain(a)!.Vcpus[0];
        var p1 = new Pcpu(host.Services, host.Scheduler, 1);
        sched.Wake(va);
        long t = 1_000 * Ms;
        Assert.Null(sched.PickNext(0, t, out long until));
        Assert.InRange(until, t, t + CreditScheduler.SoftWaitNs);
        p1.CurrentVcpu = host.FindDomain(b)!.Vcpus[0];
        Assert.Same(va, sched.PickNext(0, t + Ms, out _));
    }
}
