using System.Text;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>
/// The freestanding guest tests/guests/hvmplat.c on the real x86 engine in an HVM domain: PIT ticks through the 8259
/// and the IOAPIC, PIT channel 2 counting down, the RTC's time and periodic interrupt, HPET comparator interrupts on
/// a GSI and through the legacy route, and the PM timer advancing. In a PVH domain the same kernel finds no
/// platform and only skips.
/// </summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class HvmPlatformGuestTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    private string Run(DomainKind kind, out ShutdownReason? reason)
    {
        ushort id = PvhTestGuest.Boot(_host, "hvmplat", out _, kind);
        if (kind == DomainKind.Hvm)
        {
            // What the toolstack sets for hpet=1 and timer_mode="no_delay_for_missed_ticks".
            _host.SetHvmParam(id, Params.HVM_PARAM_HPET_ENABLED, 1);
            _host.SetHvmParam(id, Params.HVM_PARAM_TIMER_MODE, 1);
        }
        ShutdownReason? r = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == id) r = e.Reason; };
        _host.Unpause(id);
        bool done = TestHosts.WaitUntil(() => r is not null, 120_000);
        string output = Encoding.ASCII.GetString(_host.ReadConsoleHistory(id));
        Assert.True(done, "the guest did not finish:\n" + output);
        reason = r;
        return output;
    }

    [Fact]
    public void AnHvmGuestTakesPlatformTimerInterruptsThroughPicAndIoapic()
    {
        string output = Run(DomainKind.Hvm, out var reason);
        Assert.Equal(ShutdownReason.Poweroff, reason);
        Assert.Contains("DONE passed=", output);
        Assert.DoesNotContain("FAIL ", output);
        Assert.DoesNotContain("SKIP ", output);
        foreach (var check in new[] { "pic_imr", "pit_through_pic", "pit_reaches_a_busy_loop", "ioapic_version", "ioapic_pins", "pit_through_ioapic",
                     "pit_channel2_countdown", "rtc_time_bcd", "rtc_reg_d_valid", "rtc_periodic_through_ioapic", "hpet_period_fs",
                     "hpet_periodic_through_ioapic", "hpet_counter_runs", "hpet_legacy_route_irq0", "pm_timer_advances" })
            Assert.Contains("PASS hvmplat." + check + "\n", output);
    }

    [Fact]
    public void APvhGuestSeesNoPlatform()
    {
        string output = Run(DomainKind.Pvh, out var reason);
        Assert.Equal(ShutdownReason.Poweroff, reason);
        Assert.Contains("SKIP hvmplat.all: no emulated platform", output);
        Assert.DoesNotContain("FAIL ", output);
    }
}
