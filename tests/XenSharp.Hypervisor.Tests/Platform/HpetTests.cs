using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;
using static XenSharp.Hypervisor.Tests.Platform.HvmPlatformGuest;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The HPET as Linux's hpet driver programs it: capabilities, the main counter, a one-shot and a periodic
/// comparator on an IOAPIC GSI, the legacy replacement route, and xl.cfg hpet=0.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class HpetTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong B = Hpet.Base;

    private HvmPlatformGuest Guest(bool hpet = true)
    {
        var g = new HvmPlatformGuest(_host);
        if (hpet)
            _host.SetHvmParam(g.Id, Params.HVM_PARAM_HPET_ENABLED, 1);
        return g;
    }

    [Fact]
    public void CapabilitiesAreXens()
    {
        var g = Guest();
        ulong cap = g.Read(B, 8);
        Assert.Equal(0x8086UL, (cap >> 16) & 0xFFFF);
        Assert.Equal(2UL, (cap >> 8) & 0x1F); // three timers
        Assert.NotEqual(0UL, cap & (1 << 13)); // 64-bit counter
        Assert.NotEqual(0UL, cap & (1 << 15)); // legacy route capable
        Assert.Equal(16_000_000UL, cap >> 32); // fs per tick
        Assert.Equal(cap >> 32, g.Read(B + 4, 4)); // a 32-bit read of the high half
        ulong t0 = g.Read(B + 0x100, 8);
        Assert.Equal(0x00F00000UL, t0 >> 32); // GSIs 20-23
        Assert.NotEqual(0UL, t0 & (1 << 4)); // periodic capable
        Assert.NotEqual(0UL, t0 & (1 << 5)); // 64-bit capable
    }

    [Fact]
    public void TheMainCounterRunsOnlyWhileEnabledAndIsWritableWhileHalted()
    {
        var g = Guest();
        g.Write(B + 0xF0, 0x1_0000_0000, 8);
        Assert.Equal(0x1_0000_0000UL, g.Read(B + 0xF0, 8));
        g.Write(B + 0x10, 1, 8); // ENABLE_CNF
        Assert.True(TestHosts.WaitUntil(() => g.Read(B + 0xF0, 8) > 0x1_0000_0000UL));
        g.Write(B + 0xF0, 5, 8); // ignored while running
        Assert.True(g.Read(B + 0xF0, 8) > 0x1_0000_0000UL);
        g.Write(B + 0x10, 0, 8);
        ulong halted = g.Read(B + 0xF0, 8);
        Thread.Sleep(2);
        Assert.Equal(halted, g.Read(B + 0xF0, 8));
    }

    [Fact]
    public void AOneShotComparatorInterruptsOnItsGsi()
    {
        var g = Guest();
        var lapic = g.EnableLapic();
        g.Route(20, 0x70);
        g.Write(B + 0x100, (20 << 9) | (1 << 2), 8); // route GSI 20, interrupts enabled, one-shot, edge
        g.Write(B + 0x108, 62_500, 8); // 1 ms
        g.Write(B + 0x10, 1, 8);
        Assert.True(TestHosts.WaitUntil(() => InIrr(lapic, 0x70)), "timer 0 did not interrupt");
    }

    [Fact]
    public void APeriodicLevelComparatorSetsIsrUntilCleared()
    {
        var g = Guest();
        var lapic = g.EnableLapic();
        g.Route(21, 0x71 | (1UL << 15));
        // Timer 1: periodic, level, VAL_SET so the comparator write also sets the period: 300 ms, so that the next
        // period cannot set the status again between the clearing write and the check of the line below.
        g.Write(B + 0x120, (21 << 9) | (1 << 2) | (1 << 3) | (1 << 1) | (1 << 6), 8);
        g.Write(B + 0x128, 300 * 62_500, 8);
        g.Write(B + 0x10, 1, 8);
        Assert.True(TestHosts.WaitUntil(() => InIrr(lapic, 0x71)), "timer 1 did not interrupt");
        Assert.Equal(2UL, g.Read(B + 0x20, 8) & 2);
        Assert.Equal(0x71, lapic.Acknowledge());
        g.Write(B + 0x20, 2, 8); // clear the level
        Assert.False(g.Domain.Arch.Irq.Level(21));
        g.LapicEoi();
        Assert.True(TestHosts.WaitUntil(() => (g.Read(B + 0x20, 8) & 2) != 0), "the periodic timer stopped");
    }

    [Fact]
    public void LegacyReplacementTakesIrq0FromThePit()
    {
        var g = Guest();
        g.EnableLapic();
        g.InitPic();
        g.Out(0x21, 0xFE); // only IRQ 0
        g.Write(B + 0x100, (1 << 2) | (1 << 3) | (1 << 6), 8); // timer 0 periodic
        g.Write(B + 0x108, 62_500, 8);
        g.Write(B + 0x10, 3, 8); // ENABLE_CNF | LEG_RT_CNF
        Assert.True(g.Platform.Pit.LegacyReplaced);
        Assert.True(g.Platform.Rtc.LegacyReplaced);
        Assert.True(TestHosts.WaitUntil(() => g.Vcpu().Arch.HasPendingInterrupt), "timer 0 did not reach IRQ 0");
        Assert.Equal(0x30, g.Vcpu().Arch.Acknowledge());
        g.Write(B + 0x10, 1, 8);
        Assert.False(g.Platform.Pit.LegacyReplaced);
    }

    [Fact]
    public void WithoutTheHpetParamItsRangeIsUnclaimed()
    {
        var g = Guest(hpet: false);
        Assert.Equal(ulong.MaxValue, g.Read(B, 8));
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_HPET_ENABLED, 1);
        Assert.Equal(0x8086UL, (g.Read(B, 8) >> 16) & 0xFFFF);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_HPET_ENABLED, 0);
        Assert.Equal(0xFFFFFFFFUL, g.Read(B, 4));
    }
}
