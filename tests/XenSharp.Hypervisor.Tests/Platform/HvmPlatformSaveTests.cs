using System.Runtime.InteropServices;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The platform's state in Xen's HVM save records: the sizes of the public layouts, and a context taken from
/// one HVM domain programming another's PIC, IOAPIC, PIT, RTC, HPET and PM timer.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class HvmPlatformSaveTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Fact]
    public unsafe void RecordLayoutsHaveXensSizes()
    {
        Assert.Equal(8, sizeof(HvmHwVpic));
        Assert.Equal(16 + 48 * 8, sizeof(HvmHwVioapic));
        Assert.Equal(16, sizeof(HvmHwPitChannel));
        Assert.Equal(56, sizeof(HvmHwPit));
        Assert.Equal(24, sizeof(HvmHwRtc));
        Assert.Equal(16, (int)Marshal.OffsetOf<HvmHwRtc>(nameof(HvmHwRtc.RtcOffset)));
        Assert.Equal(0x400 + 3 * 8, sizeof(HvmHwHpet));
        Assert.Equal(8, sizeof(HvmHwPmtimer));
    }

    private static List<(ushort Type, ushort Instance, byte[] Body)> Records(byte[] ctx)
    {
        var list = new List<(ushort, ushort, byte[])>();
        for (int o = 0; o < ctx.Length;)
        {
            var d = MemoryMarshal.Read<HvmSaveDescriptor>(ctx.AsSpan(o));
            list.Add((d.Typecode, d.Instance, ctx.AsSpan(o + 8, (int)d.Length).ToArray()));
            o += 8 + (int)d.Length;
        }
        return list;
    }

    [Fact]
    public void APlatformContextLoadsIntoAnotherDomain()
    {
        var a = new HvmPlatformGuest(_host);
        _host.SetHvmParam(a.Id, Params.HVM_PARAM_HPET_ENABLED, 1);
        a.InitPic(0x20, 0x28);
        a.Out(0x21, 0xB8);
        a.Out(0x4D1, 0x0C);
        a.Route(9, 0x59 | (1UL << 15) | (4UL << 56));
        a.Out(0x43, 0x34);
        a.Out(0x40, 0x00);
        a.Out(0x40, 0x80);
        a.Out(0x70, Rtc.RegB);
        a.Out(0x71, Rtc.B24h | Rtc.BDm);
        a.Write(Hpet.Base + 0x100, (22 << 9) | (1 << 1), 8);
        a.Write(Hpet.Base + 0x108, 0x1234_5678_9ABC, 8);
        a.Out(PmTimer.EventBlockPort + 2, 2, 0x0100);
        byte[] ctx = _host.GetHvmContext(a.Id);
        var types = Records(ctx).Select(r => (r.Type, r.Instance)).ToList();
        foreach (var t in new[] { (HvmSave.PIC, 0), (HvmSave.PIC, 1), (HvmSave.IOAPIC, 0), (HvmSave.PIT, 0), (HvmSave.RTC, 0), (HvmSave.HPET, 0), (HvmSave.PMTIMER, 0) })
            Assert.Contains(((ushort)t.Item1, (ushort)t.Item2), types);

        var b = new HvmPlatformGuest(_host);
        _host.SetHvmContext(b.Id, ctx);
        Assert.Equal(0xB8, b.In(0x21));
        Assert.Equal(0x0C, b.In(0x4D1));
        Assert.Equal(0x59 | (1UL << 15) | (4UL << 56), b.RedirectionEntry(9));
        b.Out(0x43, 0xE2); // read-back status of channel 0
        Assert.Equal(0x34, b.In(0x40) & 0x3F);
        b.Out(0x70, Rtc.RegB);
        Assert.Equal(Rtc.B24h | Rtc.BDm, b.In(0x71));
        Assert.Equal(0x1234_5678_9ABCUL, b.Read(Hpet.Base + 0x108, 8));
        Assert.Equal((22UL << 9) | (1 << 1) | 0x30, b.Read(Hpet.Base + 0x100, 8) & 0xFFFF); // with the capability bits
        Assert.Equal(0x0100UL, b.In(PmTimer.EventBlockPort + 2, 2));
        // The slave's vectors came along: IRQ 9 arrives as 0x29.
        b.EnableLapic();
        b.Out(0xA1, 0xFD); // only IRQ 9 on the slave
        b.Out(0x21, 0xFB); // only the cascade on the master: the restored PIT ticks on IRQ 0
        b.Platform.Irq.SetIsaIrqLevel(9, true);
        Assert.Equal(0x29, b.Vcpu().Arch.Acknowledge());
    }

    [Fact]
    public void APlatformRecordOfTheWrongSizeIsRefused()
    {
        var a = new HvmPlatformGuest(_host);
        var records = Records(_host.GetHvmContext(a.Id));
        var bad = new MemoryStream();
        foreach (var (type, instance, body) in records)
        {
            var b = type == HvmSave.PIT ? body[..^4] : body;
            var d = new HvmSaveDescriptor { Typecode = type, Instance = instance, Length = (uint)b.Length };
            bad.Write(MemoryMarshal.AsBytes(new ReadOnlySpan<HvmSaveDescriptor>(in d)));
            bad.Write(b);
        }
        var target = new HvmPlatformGuest(_host);
        var e = Assert.Throws<HypervisorException>(() => _host.SetHvmContext(target.Id, bad.ToArray()));
        Assert.Equal(Errno.EINVAL, e.Errno);
    }
}
