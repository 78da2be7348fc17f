using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The MC146818 RTC read as Linux's mc146818_get_time does (waiting out update-in-progress), set as
/// hwclock does (SET, write, clear SET), its interrupts, and the CMOS RAM.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class RtcTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static byte Cmos(HvmPlatformGuest g, int index)
    {
        g.Out(0x70, (byte)index);
        return g.In(0x71);
    }

    private static void SetCmos(HvmPlatformGuest g, int index, byte value)
    {
        g.Out(0x70, (byte)index);
        g.Out(0x71, value);
    }

    private static int Bcd(byte b) => (b >> 4) * 10 + (b & 0xF);

    /// <summary>Linux's mc146818_get_time: wait for UIP to clear, read the clock, read again if a second passed.</summary>
    private static DateTime ReadClock(HvmPlatformGuest g)
    {
        while (true)
        {
            Assert.True(TestHosts.WaitUntil(() => (Cmos(g, Rtc.RegA) & Rtc.AUip) == 0), "UIP never cleared");
            byte sec = Cmos(g, 0), min = Cmos(g, 2), hour = Cmos(g, 4), day = Cmos(g, 7), mon = Cmos(g, 8), year = Cmos(g, 9);
            byte century = Cmos(g, 0x32);
            if (Cmos(g, 0) != sec)
                continue;
            bool binary = (Cmos(g, Rtc.RegB) & Rtc.BDm) != 0;
            int F(byte b) => binary ? b : Bcd(b);
            return new DateTime(Bcd(century) * 100 + F(year), F(mon), F(day), F(hour), F(min), F(sec), DateTimeKind.Utc);
        }
    }

    [Fact]
    public void TheClockIsTheDomainsWallClockPlusItsOffset()
    {
        var g = new HvmPlatformGuest(_host, timeOffsetSeconds: 7200);
        Assert.Equal(Rtc.B24h, Cmos(g, Rtc.RegB)); // BCD, 24-hour
        Assert.Equal(0x26, Cmos(g, Rtc.RegA) & 0x7F);
        Assert.Equal(Rtc.DVrt, Cmos(g, Rtc.RegD));
        var expected = DateTime.UtcNow.AddHours(2);
        var clock = ReadClock(g);
        Assert.InRange((clock - expected).TotalSeconds, -10, 10);
    }

    [Fact]
    public void BinaryAnd12HourFormatsFollowRegisterB()
    {
        var g = new HvmPlatformGuest(_host);
        SetCmos(g, Rtc.RegB, Rtc.BDm); // binary, 12-hour
        byte hour = Cmos(g, 4);
        int h = hour & 0x7F;
        Assert.InRange(h, 1, 12);
        int utcHour = DateTime.UtcNow.Hour;
        Assert.True((hour & 0x80) != 0 == utcHour >= 12 || DateTime.UtcNow.Minute == 0, $"PM bit of {hour:x2} at {utcHour}h");
        Assert.InRange(Cmos(g, 9), 0, 99);
    }

    [Fact]
    public void SettingTheTimeAsHwclockDoesChangesIt()
    {
        var g = new HvmPlatformGuest(_host);
        SetCmos(g, Rtc.RegB, (byte)(Cmos(g, Rtc.RegB) | Rtc.BSet));
        SetCmos(g, 0, 0x30);
        SetCmos(g, 2, 0x45);
        SetCmos(g, 4, 0x13);
        SetCmos(g, 7, 0x24);
        SetCmos(g, 8, 0x12);
        SetCmos(g, 9, 0x99);
        SetCmos(g, 0x32, 0x19);
        Assert.Equal(0x30, Cmos(g, 0)); // frozen while SET
        SetCmos(g, Rtc.RegB, (byte)(Cmos(g, Rtc.RegB) & ~Rtc.BSet));
        var clock = ReadClock(g);
        Assert.InRange((clock - new DateTime(1999, 12, 24, 13, 45, 30, DateTimeKind.Utc)).TotalSeconds, 0, 10);
        Assert.Equal(0x19, Cmos(g, 0x32));
    }

    [Fact]
    public void UpdateEndedInterruptReachesTheIoapicAndRegisterCClearsOnRead()
    {
        var g = new HvmPlatformGuest(_host);
        var lapic = g.EnableLapic();
        g.Route(8, 0x58);
        Cmos(g, Rtc.RegC);
        SetCmos(g, Rtc.RegB, (byte)(Cmos(g, Rtc.RegB) | Rtc.BUie));
        Assert.True(TestHosts.WaitUntil(() => HvmPlatformGuest.InIrr(lapic, 0x58), 5000), "no update-ended interrupt");
        byte c = Cmos(g, Rtc.RegC);
        Assert.Equal(Rtc.CIrqf | Rtc.CUf, c & (Rtc.CIrqf | Rtc.CUf));
        Assert.Equal(0, Cmos(g, Rtc.RegC) & Rtc.CIrqf);
        Assert.False(g.Domain.Arch.Irq.Level(8));
    }

    [Fact]
    public void PeriodicInterruptAtTheRateOfRegisterA()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        SetCmos(g, Rtc.RegA, 0x26); // 1024 Hz
        SetCmos(g, Rtc.RegB, (byte)(Cmos(g, Rtc.RegB) | Rtc.BPie));
        var v = g.Vcpu();
        for (int i = 0; i < 3; i++)
        {
            Assert.True(TestHosts.WaitUntil(() => v.Arch.HasPendingInterrupt), $"periodic interrupt {i} did not arrive");
            Assert.Equal(0x38, v.Arch.Acknowledge());
            Assert.Equal(Rtc.CIrqf | Rtc.CPf, Cmos(g, Rtc.RegC) & (Rtc.CIrqf | Rtc.CPf));
            g.Out(0xA0, 0x20);
            g.Out(0x20, 0x20);
        }
    }

    [Fact]
    public void AlarmWithDontCareBytesFiresEachSecond()
    {
        var g = new HvmPlatformGuest(_host);
        SetCmos(g, 1, 0xC0);
        SetCmos(g, 3, 0xC0);
        SetCmos(g, 5, 0xC0);
        Cmos(g, Rtc.RegC);
        SetCmos(g, Rtc.RegB, (byte)(Cmos(g, Rtc.RegB) | Rtc.BAie));
        Assert.True(TestHosts.WaitUntil(() => (Cmos(g, Rtc.RegC) & Rtc.CAf) != 0, 5000), "no alarm");
    }

    [Fact]
    public void CmosRamKeepsWhatIsWrittenAndTheIndexIgnoresTheNmiBit()
    {
        var g = new HvmPlatformGuest(_host);
        SetCmos(g, 0x40, 0xAB);
        SetCmos(g, 0x80 | 0x41, 0xCD);
        Assert.Equal(0xAB, Cmos(g, 0x80 | 0x40));
        Assert.Equal(0xCD, Cmos(g, 0x41));
        SetCmos(g, Rtc.RegD, 0);
        Assert.Equal(Rtc.DVrt, Cmos(g, Rtc.RegD)); // read-only
        Assert.Equal(0xFFUL, g.In(0x70, 1)); // the index is write-only
    }
}
