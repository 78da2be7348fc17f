using Xunit.Abstractions;
using SchedUnit = XenSharp.Hypervisor.Scheduling.SchedUnit;

namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>
/// credit: 256 and 512 share one pCPU 1:2 within ±5% over 10 s of CPU time as the scheduler accounts it. In a
/// collection of its own, so it runs beside the credit2 measurement (each host has its own pCPU thread).
/// </summary>
[Trait("Feature", "Credit Scheduler")]
[Collection("Credit weights")]
public class CreditWeightTests(ITestOutputHelper output)
{
    [Fact]
    public void WeightsOf256And512ShareOnePcpuOneToTwoOverTenSeconds()
    {
        var (ratio, ns) = SchedGuests.WeightRatio("credit", 10_000);
        output.WriteLine($"256:512 = {ns[0]}:{ns[1]} ns, ratio {ratio:F4}");
        Assert.True(ratio is >= 0.5 * 0.95 and <= 0.5 * 1.05, $"256:512 got {ns[0]}:{ns[1]} ns, ratio {ratio:F4}");
    }
}

[CollectionDefinition("Credit weights")]
public class CreditWeights;

/// <summary>credit: weights share one pCPU, caps hold with idle time to spare, a woken vCPU is boosted onto the CPU.</summary>
[Trait("Feature", "Credit Scheduler")]
[Collection("Scheduler measurements")]
public class CreditSchedulerTests
{
    [Fact]
    public void ACapOf25PercentHoldsOnAnOtherwiseIdlePcpu()
    {
        using var host = SchedGuests.Host(pcpus: 1);
        ushort a = SchedGuests.Spinner(host);
        host.SetCreditParams(a, cap: 25);
        host.Unpause(a);
        var t = SchedGuests.Measure(host, 2000, a);
        Assert.InRange(t[0] * 100.0 / 2e9, 22.0, 28.0);
    }

    [Fact]
    public void BadParametersAreRejected()
    {
        using var host = SchedGuests.Host(pcpus: 1);
        ushort a = SchedGuests.Spinner(host);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetCreditParams(a, weight: 0)).Errno);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetCreditParams(a, cap: 101)).Errno);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.SetCreditPoolParams(0, tsliceMs: 0)).Errno);
        Assert.Equal(22, Assert.Throws<HypervisorException>(() => host.GetCredit2Params(a)).Errno);
        host.SetCreditPoolParams(0, tsliceMs: 10, ratelimitUs: 500);
        Assert.Equal(new CreditPoolParams(10, 500), host.GetCreditPoolParams(0));
    }

    [Fact]
    public void ABlockedVcpuRunsWithinAMillisecondOfItsEvent()
    {
        using var host = SchedGuests.Host(pcpus: 1);
        var gb = new Guest(host, vcpus: 1, ramMiB: 1);
        var ga = new Guest(host, vcpus: 1, ramMiB: 1);
        ushort busy = SchedGuests.Spinner(host, gb.Id);
        ushort w = SchedGuests.Waiter(host, ga.Id);
        var latencies = WakeLatencies(host, ga, gb, 30);
        Assert.True(latencies[latencies.Length / 2] <= 1_000_000, $"median wake-up latency {latencies[latencies.Length / 2]} ns");
    }

    /// <summary>Wakes the waiter <paramref name="n"/> times with an event from the busy domain; the sorted latencies.</summary>
    internal static long[] WakeLatencies(XenHypervisor host, Guest waiterGuest, Guest sender, int n)
    {
        ushort w = waiterGuest.Id;
        var waiter = host.FindDomain(w)!;
        host.SetHvmParam(w, Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | SchedGuests.UpcallVector);
        uint pa = Evtchn.AllocUnbound(waiterGuest, sender.Id);
        uint pb = Evtchn.BindInterdomain(sender, w, pa);
        var latencies = new List<long>();
        host.Unpause(sender.Id);
        host.Unpause(w);
        var v = waiter.Vcpus[0];
        for (int i = 0; i < n; i++)
        {
            Assert.True(TestHosts.WaitUntil(() => v.Blocked && !v.IsRunning));
            Thread.Sleep(2);
            uint before = SchedGuests.ReadCounter(host, w);
            Assert.Equal(0, Evtchn.Send(sender, pb));
            Assert.True(TestHosts.WaitUntil(() => SchedGuests.ReadCounter(host, w) != before));
            latencies.Add(SchedUnit.Of(v).LastWakeLatencyNs);
            // What the guest's upcall handler does: consume the event, so the vCPU halts again.
            unsafe
            {
                waiter.SharedInfo->EvtchnPending[(int)(pa / 64)] &= ~(1UL << (int)(pa % 64));
                v.VcpuInfo->EvtchnPendingSel = 0;
                v.VcpuInfo->EvtchnUpcallPending = 0;
            }
        }
        latencies.Sort();
        return latencies.ToArray();
    }
}
