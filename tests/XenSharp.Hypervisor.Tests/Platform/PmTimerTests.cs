using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The ACPI PM timer at Xen's PM_TMR_BLK and the PM1a event block with its SCI.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class PmTimerTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Fact]
    public void TheCounterAdvances()
    {
        var g = new HvmPlatformGuest(_host);
        uint first = (uint)g.In(PmTimer.TimerPort, 4);
        Assert.True(TestHosts.WaitUntil(() => (uint)g.In(PmTimer.TimerPort, 4) != first));
        uint a = (uint)g.In(PmTimer.TimerPort, 4), b = (uint)g.In(PmTimer.TimerPort, 4);
        Assert.True(b - a < 0x8000_0000u, "the counter went backwards");
    }

    [Fact]
    public void TheMsbFlipSetsTmrStsAndRaisesTheSciWhileEnabled()
    {
        var g = new HvmPlatformGuest(_host);
        // Restore a counter a few thousand ticks short of bit 31 flipping, with TMR_EN set.
        g.Platform.PmTimer.Load(new HvmHwPmtimer { TmrVal = 0x7FFF_F000, Pm1aEn = PmTimer.TmrSts });
        Assert.Equal((ulong)PmTimer.TmrSts, g.In(PmTimer.EventBlockPort + 2, 2));
        Assert.True(TestHosts.WaitUntil(() => (g.In(PmTimer.EventBlockPort, 2) & PmTimer.TmrSts) != 0), "TMR_STS never set");
        Assert.True(TestHosts.WaitUntil(() => g.Domain.Arch.Irq.Level(PmTimer.SciIrq)));
        g.Out(PmTimer.EventBlockPort, 2, PmTimer.TmrSts); // write 1 to clear
        Assert.Equal(0UL, g.In(PmTimer.EventBlockPort, 2) & PmTimer.TmrSts);
        Assert.False(g.Domain.Arch.Irq.Level(PmTimer.SciIrq));
        Assert.True(g.In(PmTimer.TimerPort, 4) >= 0x8000_0000UL);
    }

    [Fact]
    public void SaveCarriesTheCounterAndRegisters()
    {
        var g = new HvmPlatformGuest(_host);
        g.Out(PmTimer.EventBlockPort + 2, 2, 0x0100); // PWRBTN_EN
        var s = g.Platform.PmTimer.Save();
        Assert.Equal(0x0100, s.Pm1aEn);
        var h = new HvmPlatformGuest(_host);
        h.Platform.PmTimer.Load(s with { TmrVal = 0x1234_0000 });
        Assert.InRange(h.In(PmTimer.TimerPort, 4), 0x1234_0000UL, 0x7FFF_FFFFUL);
        Assert.Equal(0x0100UL, h.In(PmTimer.EventBlockPort + 2, 2));
    }

    [Fact]
    public void ThePowerAndSleepTriggersPressTheButtonsAndRaiseTheSciWhenEnabled()
    {
        var g = new HvmPlatformGuest(_host);
        _host.SendTrigger(g.Id, Public.Domctl.XEN_DOMCTL_SENDTRIGGER_POWER, 0);
        Assert.Equal((ulong)PmTimer.PwrbtnSts, g.In(PmTimer.EventBlockPort, 2) & PmTimer.PwrbtnSts);
        Assert.False(g.Domain.Arch.Irq.Level(PmTimer.SciIrq)); // not enabled yet
        g.Out(PmTimer.EventBlockPort + 2, 2, PmTimer.PwrbtnSts);
        Assert.True(g.Domain.Arch.Irq.Level(PmTimer.SciIrq));
        g.Out(PmTimer.EventBlockPort, 2, PmTimer.PwrbtnSts); // write 1 to clear
        Assert.False(g.Domain.Arch.Irq.Level(PmTimer.SciIrq));

        _host.SendTrigger(g.Id, Public.Domctl.XEN_DOMCTL_SENDTRIGGER_SLEEP, 0);
        Assert.Equal((ulong)PmTimer.SlpbtnSts, g.In(PmTimer.EventBlockPort, 2) & (PmTimer.SlpbtnSts | PmTimer.PwrbtnSts));
        Assert.False(g.Domain.Arch.Irq.Level(PmTimer.SciIrq)); // SLPBTN_EN is clear
    }

    [Fact]
    public void WithADeviceModelThePm1aControlPortIsTheIoreqServersAndTheEventBlockStaysOurs()
    {
        var g = new HvmPlatformGuest(_host);
        Assert.True(g.Domain.Arch.PortIo.TryFind(0xB004, out _, out _));
        _host.ReleaseAcpiSleepControl(g.Id);
        Assert.False(g.Domain.Arch.PortIo.TryFind(0xB004, out _, out _));
        Assert.False(g.Domain.Arch.HasAcpiSleepControl);
        // An S5 written there is no longer the hypervisor's to act on (with no server, it is dropped).
        HvmIo.PortWrite(g.Vcpu(), 0xB004, 2, (1 << 13) | (7 << 10));
        Assert.Null(g.Domain.ShutdownReason);
        Assert.True(g.Domain.Arch.PortIo.TryFind(PmTimer.EventBlockPort, out _, out _));
        // A toolstack that gives the register back (its own FADT) gets it at the port it names.
        _host.SetAcpiSleepControl(g.Id, 0xB004, 7);
        Assert.True(g.Domain.Arch.PortIo.TryFind(0xB004, out var h, out _));
        Assert.Same(g.Domain.Arch.Pm1a, h);
    }
}
