namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>credit2: weights share one pCPU, a cap holds, soft affinity is preferred, parameters are checked.</summary>
[Trait("Feature", "Credit2 Scheduler")]
[Collection("Scheduler measurements")]
public class Credit2SchedulerTests
{
    [Fact]
    public void WeightsOf256And512ShareOnePcpuOneToTwo()
    {
        using var host = SchedGuests.Host(pcpus: 1, scheduler: "credit2");
        ushort a = SchedGuests.Spinner(host), b = SchedGuests.Spinner(host);
        host.SetCredit2Params(b, weight: 512);
        Assert.Equal(new CreditParams(256, 0), host.GetCredit2Params(a));
        host.Unpause(a);
        host.Unpause(b);
        var t = SchedGuests.Measure(host, 2000, a, b);
        // credit2's shares are looser than credit's here (its credit resets and 0.5 ms minimum slices meet a loaded host).
        Assert.InRange((double)t[0] / t[1], 0.5 * 0.80, 0.5 * 1.20);
    }

    [Fact]
    public void ACapOf25PercentHolds()
    {
        using var host = SchedGuests.Host(pcpus: 1, scheduler: "credit2");
        ushort a = SchedGuests.Spinner(host);
        host.SetCredit2Params(a, cap: 25);
        host.Unpause(a);
        var t = SchedGuests.Measure(host, 2000, a);
        Assert.InRange(t[0] * 100.0 / 2e9, 22.0, 28.0);
    }

    [Fact]
    public void SoftAffinityIsPreferredAndRateLimitIsChecked()
    {
        using var host = SchedGuests.Host(pcpus: 2, scheduler: "credit2");
        var trace = SchedGuests.Trace(host);
        ushort a = SchedGuests.Spinner(host);
        host.SetVcpuAffinity(a, 0, hard: null, soft: [1]);
        host.Unpause(a);
        Assert.True(TestHosts.WaitUntil(() => trace.Count(e => e.Dom == a) >= 10));
        Assert.All(trace.Where(e => e.Dom == a), e => Assert.Equal(1, e.Cpu));
        Assert.Equal([1], host.GetVcpuSchedInfo(a)[0].SoftAffinity);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetCredit2PoolParams(0, 50)).Errno);
        host.SetCredit2PoolParams(0, 2000);
        Assert.Equal(2000, host.GetCredit2PoolParams(0).RatelimitUs);
    }
}
