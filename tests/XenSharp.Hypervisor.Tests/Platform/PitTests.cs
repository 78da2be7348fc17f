using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The 8254 PIT as Linux's and SeaBIOS's TSC calibration use channel 2, as an OS reads counts through latch
/// and read-back commands, and channel 0 interrupting through the 8259 with each timer_mode.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class PitTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    /// <summary>Linux's pit_calibrate_tsc and SeaBIOS's tsctimer_setup: gate channel 2 on with the speaker off, mode 0
    /// with a full count, then poll port 0x61 bit 5 until the count runs out.</summary>
    [Fact]
    public void Channel2CalibrationLoopSeesTheOutputGoHigh()
    {
        var g = new HvmPlatformGuest(_host);
        g.Out(0x61, (byte)((g.In(0x61) & ~0x02) | 0x01));
        g.Out(0x43, 0xB0); // channel 2, LSB then MSB, mode 0, binary
        g.Out(0x42, 0xFF);
        g.Out(0x42, 0xFF);
        Assert.Equal(0x01, g.In(0x61) & 0x03);
        int prev = 0x10000, polls = 0;
        bool high = TestHosts.WaitUntil(() =>
        {
            polls++;
            if ((g.In(0x61) & 0x20) != 0)
                return true;
            g.Out(0x43, 0x80); // latch channel 2
            int count = g.In(0x42) | (g.In(0x42) << 8);
            Assert.True(count <= prev, $"mode 0 counts down: {count} after {prev}");
            prev = count;
            return false;
        });
        Assert.True(high, "channel 2's output never went high");
    }

    [Fact]
    public void ReadBackLatchesStatusThenCount()
    {
        var g = new HvmPlatformGuest(_host);
        g.Out(0x43, 0x74); // channel 1, word, mode 2
        g.Out(0x41, 0x34);
        g.Out(0x41, 0x12);
        g.Out(0x43, 0xC4); // read-back: latch count and status of channel 1
        byte status = g.In(0x41);
        Assert.Equal(0x34, status & 0x3F); // access 3, mode 2, binary
        int count = g.In(0x41) | (g.In(0x41) << 8);
        Assert.InRange(count, 1, 0x1234);
        // A latched count stays put while the counter runs on; a second latch before it is read changes nothing.
        g.Out(0x43, 0x40);
        byte lo = g.In(0x41);
        g.Out(0x43, 0x40);
        byte hi = g.In(0x41);
        Assert.InRange(lo | (hi << 8), 1, 0x1234);
        // LSB-only access: one byte per read, reload from one write.
        g.Out(0x43, 0x52); // channel 1, LSB, mode 1
        g.Out(0x41, 0x80);
        g.Out(0x43, 0xE4); // read-back status only
        Assert.Equal(0x12, g.In(0x41) & 0x3F);
        Assert.Equal(0xFFUL, g.In(0x43, 1)); // the control word is write-only
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Channel0TicksArriveThroughThePicInEveryTimerMode(int timerMode)
    {
        var g = new HvmPlatformGuest(_host);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_TIMER_MODE, (ulong)timerMode);
        g.EnableLapic();
        g.InitPic();
        g.Out(0x43, 0x34); // channel 0, word, mode 2: Linux's periodic tick
        g.Out(0x40, 0xA9); // 1193: 1 kHz
        g.Out(0x40, 0x04);
        var v = g.Vcpu();
        for (int tick = 0; tick < 3; tick++)
        {
            Assert.True(TestHosts.WaitUntil(() => v.Arch.HasPendingInterrupt), $"tick {tick} did not arrive");
            Assert.Equal(0x30, v.Arch.Acknowledge());
            g.Out(0x20, 0x20);
        }
    }

    [Fact]
    public void ATimerModeBeyondXensIsRefused()
    {
        var g = new HvmPlatformGuest(_host);
        var e = Assert.Throws<HypervisorException>(() => _host.SetHvmParam(g.Id, Params.HVM_PARAM_TIMER_MODE, 4));
        Assert.Equal(XenSharp.Public.Errno.EINVAL, e.Errno);
    }

    [Fact]
    public void OneShotMode0InterruptsOnce()
    {
        var g = new HvmPlatformGuest(_host);
        var lapic = g.EnableLapic();
        g.Route(2, 0x40);
        g.Out(0x43, 0x30);
        g.Out(0x40, 0x00);
        g.Out(0x40, 0x10); // 4096 ticks, about 3.4 ms
        Assert.True(TestHosts.WaitUntil(() => HvmPlatformGuest.InIrr(lapic, 0x40)));
    }

    [Fact]
    public void SaveAndLoadKeepTheProgramming()
    {
        var g = new HvmPlatformGuest(_host);
        g.Out(0x43, 0xB6); // channel 2, word, mode 3
        g.Out(0x42, 0x00);
        g.Out(0x42, 0x20);
        g.Out(0x61, 0x03);
        var saved = g.Platform.Pit.Save();
        Assert.Equal(0x2000u, saved.Channel2.Count);
        Assert.Equal(3, saved.Channel2.Mode);
        Assert.Equal(1u, saved.SpeakerDataOn);
        var h = new HvmPlatformGuest(_host);
        h.Platform.Pit.Load(saved);
        Assert.Equal(0x03, h.In(0x61) & 0x03);
        h.Out(0x43, 0xE8); // read-back status of channel 2
        Assert.Equal(0x36, h.In(0x42) & 0x3F);
    }
}
