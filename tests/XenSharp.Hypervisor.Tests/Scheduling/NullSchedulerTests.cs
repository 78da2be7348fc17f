namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>null: one vCPU per pCPU, never moved; a vCPU without a free pCPU waits for one.</summary>
[Trait("Feature", "Null Scheduler")]
[Collection("Scheduler measurements")]
public class NullSchedulerTests
{
    [Fact]
    public void VcpusStayOnTheirPcpuAndAThirdWaitsForOne()
    {
        using var host = SchedGuests.Host(pcpus: 2, scheduler: "null");
        var trace = SchedGuests.Trace(host);
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host), c = SchedGuests.Spinner(host);
        host.Unpause(a);
        host.Unpause(b);
        host.Unpause(c);
        // Both running (past code translation) before they are moved about.
        Assert.True(TestHosts.WaitUntil(() => host.GetDomainInfo(a).IsRunningNow && host.GetDomainInfo(b).IsRunningNow));
        // Pausing and unpausing takes the vCPUs off and back on: they must come back to the same pCPU.
        for (int i = 0; i < 5; i++)
        {
            host.Pause(a);
            host.Unpause(a);
            host.Pause(b);
            host.Unpause(b);
        }
        Thread.Sleep(200);
        Assert.Equal(0, host.GetDomainInfo(c).CpuTimeNs);
        var cpuOfA = trace.Where(e => e.Dom == a).Select(e => e.Cpu).Distinct().ToArray();
        var cpuOfB = trace.Where(e => e.Dom == b).Select(e => e.Cpu).Distinct().ToArray();
        Assert.Single(cpuOfA);
        Assert.Single(cpuOfB);
        Assert.NotEqual(cpuOfA[0], cpuOfB[0]);
        host.Destroy(a);
        Assert.True(TestHosts.WaitUntil(() => host.GetDomainInfo(c).CpuTimeNs > 0 || host.GetDomainInfo(c).IsRunningNow));
        Assert.Equal(cpuOfA[0], host.GetVcpuSchedInfo(c)[0].Cpu);
        Assert.All(trace.Where(e => e.Dom == c), e => Assert.Equal(cpuOfA[0], e.Cpu));
        Assert.All(trace.Where(e => e.Dom == b), e => Assert.Equal(cpuOfB[0], e.Cpu));
        // The scheduler's own count of starts on another pCPU than the last one.
        Assert.All(new[] { b, c }, d => Assert.Equal(0, XenSharp.Hypervisor.Scheduling.SchedUnit.Of(host.FindDomain(d)!.Vcpus[0]).Migrations));
    }
}
