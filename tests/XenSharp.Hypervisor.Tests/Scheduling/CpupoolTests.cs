namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>cpupools: Pool-0 at start, create/rename/add/remove/migrate/destroy, each pool with its own scheduler.</summary>
[Trait("Feature", "CPU Pools")]
public class CpupoolTests
{
    [Fact]
    public void Pool0HoldsEveryPcpuAtStart()
    {
        using var host = SchedGuests.Host(pcpus: 2);
        var p = Assert.Single(host.ListCpupools());
        Assert.Equal(new[] { 0, 1 }, p.Cpus);
        Assert.Equal(("Pool-0", "credit", 0), (p.Name, p.Scheduler, p.PoolId));
        Assert.Empty(host.GetFreeCpus());
        Assert.Equal(2, host.CpuNodes.Count);
    }

    [Fact]
    public void ADomainMovedToAPoolRunsOnlyOnItsPcpusUnderItsScheduler()
    {
        using var host = SchedGuests.Host(pcpus: 2);
        var trace = SchedGuests.Trace(host);
        ushort a = SchedGuests.Spinner(host);
        host.Unpause(a);
        Assert.Equal(16, Assert.Throws<HypervisorException>(() => host.CreateCpupool("rt", "credit2", [1])).Errno);
        host.CpupoolRemoveCpu(0, 1);
        Assert.Equal([1], host.GetFreeCpus());
        int id = host.CreateCpupool("rt", "credit2", [1]);
        Assert.Equal(17, Assert.Throws<HypervisorException>(() => host.CreateCpupool("rt", "credit", [])).Errno);
        host.CpupoolMigrate(a, id);
        Assert.Equal(id, host.GetDomainCpupool(a));
        Assert.Equal(1, host.GetCpupool(id).Domains);
        Assert.Equal(256, host.GetCredit2Params(a).Weight);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.GetCreditParams(a)).Errno);
        trace.Clear();
        Assert.True(TestHosts.WaitUntil(() => trace.Count(e => e.Dom == a) >= 5));
        Assert.All(trace.Where(e => e.Dom == a).Skip(1), e => Assert.Equal(1, e.Cpu));
        Assert.Equal(16, Assert.Throws<HypervisorException>(() => host.DestroyCpupool(id)).Errno);
        Assert.Equal(16, Assert.Throws<HypervisorException>(() => host.CpupoolRemoveCpu(id, 1)).Errno);
        host.RenameCpupool(id, "rt2");
        Assert.Equal("rt2", host.GetCpupool(id).Name);
        host.CpupoolMigrate(a, 0);
        host.DestroyCpupool(id);
        Assert.Equal([1], host.GetFreeCpus());
        host.CpupoolAddCpu(0, 1);
        Assert.Equal(new[] { 0, 1 }, host.GetCpupool(0).Cpus);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.DestroyCpupool(0)).Errno);
        Assert.Equal(2, Assert.Throws<HypervisorException>(() => host.RenameCpupool(7, "x")).Errno);
    }

    [Fact]
    public void HardAffinityPinsAVcpu()
    {
        using var host = SchedGuests.Host(pcpus: 2);
        var trace = SchedGuests.Trace(host);
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host);
        host.SetVcpuAffinity(a, 0, hard: [1], soft: null);
        host.SetVcpuAffinity(b, null, hard: [1], soft: null);
        host.Unpause(a);
        host.Unpause(b);
        Assert.True(TestHosts.WaitUntil(() => trace.Count(e => e.Dom == a) >= 5 && trace.Count(e => e.Dom == b) >= 5));
        Assert.All(trace, e => Assert.Equal(1, e.Cpu));
        var info = host.GetVcpuSchedInfo(a)[0];
        Assert.Equal([1], info.HardAffinity);
        Assert.Equal([0, 1], info.SoftAffinity);
        Assert.Equal([host.CpuNodes[1]], host.GetDomainNodeAffinity(a));
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetVcpuAffinity(a, 0, hard: [5], soft: null)).Errno);
    }

    [Fact]
    public void NumaSplitMakesAPoolPerNode()
    {
        using var host = SchedGuests.Host(pcpus: 2);
        var ids = host.CpupoolNumaSplit();
        var nodes = host.CpuNodes.Distinct().Count();
        Assert.Equal(nodes, ids.Count);
        Assert.StartsWith("Pool-node", host.GetCpupool(0).Name);
        Assert.Equal(2, host.ListCpupools().Sum(p => p.Cpus.Count));
        Assert.Equal(16, Assert.Throws<HypervisorException>(() => host.CpupoolNumaSplit().Count + (nodes == 1 ? throw new HypervisorException("", 16) : 0)).Errno);
    }

    [Fact]
    public void CpuListsParseAndFormatAsXlDoes()
    {
        Assert.Equal([0, 1, 2, 3, 6], CpuList.Parse("0-3,6"));
        Assert.Equal([0, 1, 3], CpuList.Parse("all,^2", 4));
        Assert.Equal("0-3,6", CpuList.Format([6, 0, 1, 2, 3]));
        Assert.Equal("all", CpuList.Format([0, 1], 2));
        Assert.Equal("none", CpuList.Format([]));
        Assert.Throws<FormatException>(() => CpuList.Parse("3-1"));
    }
}
