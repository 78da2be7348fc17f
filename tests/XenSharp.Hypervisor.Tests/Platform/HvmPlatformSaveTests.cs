using System.Runtime.InteropServices;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The platform's state in Xen's HVM save records: the sizes of the public layouts, and a context taken from
/// one HVM domain programming another's PIC, IOAPIC, interrupt wires and PCI links, PIT, RTC, HPET and PM timer.</summary>
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
        Assert.Equal(16, sizeof(HvmHwPciIrqs));
        Assert.Equal(8, sizeof(HvmHwIsaIrqs));
        Assert.Equal(8, sizeof(HvmHwPciLink));
        Assert.Equal(32, sizeof(HvmVmceVcpu));
    }

    [Fact]
    public unsafe void InterruptWiresAndLinkRoutesTravelWithTheContext()
    {
        var a = new HvmPlatformGuest(_host);
        Assert.Equal(0, a.Platform.Irq.SetPciLinkRoute((uint)PlatformIrq.PciIntxLink(4, 0), 10));
        Assert.Equal(0, a.Platform.Irq.SetPciLinkRoute((uint)PlatformIrq.PciIntxLink(5, 0), 11));
        a.Platform.Irq.SetPciIntxLevel(0, 0, 4, 0, true); // device 4 INTA held up across the save
        a.Platform.Irq.SetPciIntxLevel(0, 0, 31, 3, true); // the last wire (bit 127)
        a.Platform.Irq.SetIsaIrqLevel(7, true);
        var records = Records(_host.GetHvmContext(a.Id));
        var pci = MemoryMarshal.Read<HvmHwPciIrqs>(records.Single(r => r.Type == HvmSave.PCI_IRQ).Body);
        Assert.Equal(1UL << 16, pci.Low);
        Assert.Equal(1UL << 63, pci.High);
        Assert.Equal(1UL << 7, MemoryMarshal.Read<HvmHwIsaIrqs>(records.Single(r => r.Type == HvmSave.ISA_IRQ).Body).Wires);
        var link = MemoryMarshal.Read<HvmHwPciLink>(records.Single(r => r.Type == HvmSave.PCI_LINK).Body);
        Assert.Equal(10, link.Route[PlatformIrq.PciIntxLink(4, 0)]);
        Assert.Equal(11, link.Route[PlatformIrq.PciIntxLink(5, 0)]);

        var b = new HvmPlatformGuest(_host);
        _host.SetHvmContext(b.Id, _host.GetHvmContext(a.Id));
        Assert.Equal(10, b.Platform.Irq.LinkRoute(PlatformIrq.PciIntxLink(4, 0)));
        Assert.Equal(11, b.Platform.Irq.LinkRoute(PlatformIrq.PciIntxLink(5, 0)));
        Assert.True(b.Domain.Arch.Irq.Level(PlatformIrq.PciIntxGsi(4, 0)));
        Assert.True(b.Domain.Arch.Irq.Level(PlatformIrq.PciIntxGsi(31, 3)));
        Assert.True(b.Domain.Arch.Irq.Level(7));
        Assert.False(b.Domain.Arch.Irq.Level(PlatformIrq.PciIntxGsi(5, 0)));

        // The restored route takes effect: device 5's INTA reaches the 8259 on IRQ 11, and lowering the saved wire of
        // device 4 lowers IRQ 10 (its assert count came back as one).
        b.EnableLapic();
        b.InitPic();
        b.Out(0x4D1, 0x0C); // IRQs 10 and 11 level-triggered, as a BIOS sets them for PCI
        b.Platform.Irq.SetPciIntxLevel(0, 0, 4, 0, false);
        b.Platform.Irq.SetIsaIrqLevel(7, false);
        b.Platform.Irq.SetPciIntxLevel(0, 0, 5, 0, true);
        Assert.Equal(0x3B, b.Vcpu().Arch.Acknowledge());
        Assert.False(b.Domain.Arch.Irq.Level(PlatformIrq.PciIntxGsi(4, 0)));
    }

    [Fact]
    public void EachVcpusMachineCheckStateTravelsInAVmceRecord()
    {
        var a = new HvmPlatformGuest(_host, vcpus: 2);
        Assert.True(a.Vcpu(1).Arch.Vmce.TryWriteMsr(XenSharp.Public.ArchX86.XenMca.MSR_IA32_MC0_CTL2 + 1, 0x4000_0005));
        var records = Records(_host.GetHvmContext(a.Id)).Where(r => r.Type == HvmSave.VMCE_VCPU).ToList();
        Assert.Equal([(ushort)0, (ushort)1], records.Select(r => r.Instance));
        var vmce = MemoryMarshal.Read<HvmVmceVcpu>(records[1].Body);
        Assert.Equal(Vmce.GuestMcgCap, vmce.Caps);
        Assert.Equal(0x4000_0005UL, vmce.MciCtl2Bank1);

        var b = new HvmPlatformGuest(_host, vcpus: 2);
        _host.SetHvmContext(b.Id, _host.GetHvmContext(a.Id));
        Assert.True(b.Vcpu(1).Arch.Vmce.TryReadMsr(XenSharp.Public.ArchX86.XenMca.MSR_IA32_MC0_CTL2 + 1, out ulong ctl2));
        Assert.Equal(0x4000_0005UL, ctl2);

        // A capability the guest is not given (MCG_EXT_P, bit 9) is refused, as Xen's vmce_restore_vcpu does.
        var bad = new MemoryStream();
        foreach (var (type, instance, body) in Records(_host.GetHvmContext(a.Id)))
        {
            if (type == HvmSave.VMCE_VCPU) body[1] |= 2;
            var d = new HvmSaveDescriptor { Typecode = type, Instance = instance, Length = (uint)body.Length };
            bad.Write(MemoryMarshal.AsBytes(new ReadOnlySpan<HvmSaveDescriptor>(in d)));
            bad.Write(body);
        }
        var c = new HvmPlatformGuest(_host, vcpus: 2);
        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.SetHvmContext(c.Id, bad.ToArray())).Errno);
    }

    [Theory]
    [InlineData(0, 16)] // a route beyond the ISA IRQs
    [InlineData(4, 1)] // padding not zero
    public void APciLinkRecordXenRefusesIsRefused(int offset, byte value)
    {
        var a = new HvmPlatformGuest(_host);
        var bad = new MemoryStream();
        foreach (var (type, instance, body) in Records(_host.GetHvmContext(a.Id)))
        {
            if (type == HvmSave.PCI_LINK) body[offset] = value;
            var d = new HvmSaveDescriptor { Typecode = type, Instance = instance, Length = (uint)body.Length };
            bad.Write(MemoryMarshal.AsBytes(new ReadOnlySpan<HvmSaveDescriptor>(in d)));
            bad.Write(body);
        }
        var target = new HvmPlatformGuest(_host);
        var e = Assert.Throws<HypervisorException>(() => _host.SetHvmContext(target.Id, bad.ToArray()));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Equal(0, target.Platform.Irq.LinkRoute(0));
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
        foreach (var t in new[] { (HvmSave.PIC, 0), (HvmSave.PIC, 1), (HvmSave.IOAPIC, 0), (HvmSave.PCI_IRQ, 0), (HvmSave.ISA_IRQ, 0), (HvmSave.PCI_LINK, 0), (HvmSave.PIT, 0), (HvmSave.RTC, 0), (HvmSave.HPET, 0), (HvmSave.PMTIMER, 0) })
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
