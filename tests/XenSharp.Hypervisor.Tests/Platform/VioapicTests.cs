using XenSharp.Hypervisor.X86;
using static XenSharp.Hypervisor.Tests.Platform.HvmPlatformGuest;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The vIOAPIC at 0xFEC00000: its identification registers, routes as an OS programs them, remote IRR and
/// the vLAPIC's EOI for level-triggered pins, masking, destinations.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class VioapicTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong Level = 1UL << 15, Masked = 1UL << 16, RemoteIrr = 1UL << 14, Logical = 1UL << 11;

    [Fact]
    public void VersionIdAndPinsAreXens()
    {
        var g = new HvmPlatformGuest(_host);
        g.Write(Vioapic.DefaultBase, 1);
        Assert.Equal(0x002F0011UL, g.Read(Vioapic.DefaultBase + 0x10)); // version 0x11, 48 entries
        g.Write(Vioapic.DefaultBase, 0);
        g.Write(Vioapic.DefaultBase + 0x10, 0x0F000000);
        Assert.Equal(0x0F000000UL, g.Read(Vioapic.DefaultBase + 0x10));
        for (int pin = 0; pin < 48; pin++)
            Assert.Equal(Masked, g.RedirectionEntry(pin)); // all masked after reset
        g.Write(Vioapic.DefaultBase, 0x10 + 2 * 48);
        Assert.Equal(0xFFFFFFFFUL, g.Read(Vioapic.DefaultBase + 0x10)); // past the last pin
    }

    [Fact]
    public void ALevelPciInterruptHoldsRemoteIrrUntilEoiAndComesBackWhileAsserted()
    {
        var g = new HvmPlatformGuest(_host);
        var lapic = g.EnableLapic();
        uint gsi = PlatformIrq.PciIntxGsi(3, 0);
        g.Route((int)gsi, 0x50 | Level);
        g.Platform.Irq.SetPciIntxLevel(0, 0, 3, 0, true);
        Assert.True(InIrr(lapic, 0x50));
        Assert.True(InTmr(lapic, 0x50));
        Assert.NotEqual(0UL, g.RedirectionEntry((int)gsi) & RemoteIrr);
        Assert.Equal(0x50, lapic.Acknowledge());
        g.LapicEoi();
        Assert.True(InIrr(lapic, 0x50)); // the line is still up: delivered again
        Assert.Equal(0x50, lapic.Acknowledge());
        g.Platform.Irq.SetPciIntxLevel(0, 0, 3, 0, false);
        g.LapicEoi();
        Assert.False(InIrr(lapic, 0x50));
        Assert.Equal(0UL, g.RedirectionEntry((int)gsi) & RemoteIrr);
    }

    [Fact]
    public void TheTimerIrqArrivesOnGsi2AsAnEdge()
    {
        var g = new HvmPlatformGuest(_host);
        var lapic = g.EnableLapic();
        g.Route(2, 0x30);
        g.Platform.Irq.SetIsaIrqLevel(0, true);
        g.Platform.Irq.SetIsaIrqLevel(0, false);
        Assert.True(InIrr(lapic, 0x30));
        Assert.False(InTmr(lapic, 0x30));
        Assert.Equal(0UL, g.RedirectionEntry(2) & RemoteIrr);
    }

    [Fact]
    public void AMaskedEdgeIsLostAndAMaskedLevelDeliversWhenUnmasked()
    {
        var g = new HvmPlatformGuest(_host);
        var lapic = g.EnableLapic();
        g.Route(5, 0x45 | Masked);
        g.Platform.Irq.SetIsaIrqLevel(5, true);
        g.Platform.Irq.SetIsaIrqLevel(5, false);
        g.Route(5, 0x45);
        Assert.False(InIrr(lapic, 0x45));
        g.Route(10, 0x4A | Level | Masked);
        g.Platform.Irq.SetIsaIrqLevel(10, true);
        Assert.False(InIrr(lapic, 0x4A));
        g.Route(10, 0x4A | Level);
        Assert.True(InIrr(lapic, 0x4A));
    }

    [Fact]
    public void DestinationsPickTheVcpu()
    {
        var g = new HvmPlatformGuest(_host, vcpus: 2);
        var l0 = g.EnableLapic(0);
        var l1 = g.EnableLapic(1);
        g.Route(20, 0x60 | (2UL << 56)); // physical APIC id 2: vCPU 1
        g.Platform.Irq.SetPciIntxLevel(0, 0, 1, 0, true); // device 1 INTA: GSI 20
        Assert.True(InIrr(l1, 0x60));
        Assert.False(InIrr(l0, 0x60));
        l0.MmioWrite(Vlapic.DefaultBase + Vlapic.LDR, 4, 0x01000000);
        l1.MmioWrite(Vlapic.DefaultBase + Vlapic.LDR, 4, 0x02000000);
        g.Route(21, 0x61 | Logical | (1UL << 56)); // logical flat mask 1: vCPU 0
        g.Platform.Irq.SetPciIntxLevel(0, 0, 1, 1, true);
        Assert.True(InIrr(l0, 0x61));
        Assert.False(InIrr(l1, 0x61));
    }

    [Fact]
    public void PciLinksRouteIntxToThe8259()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Out(0x4D1, 0x04); // IRQ 10 level, as a BIOS sets it for PCI
        Assert.Equal(0, g.Platform.Irq.SetPciLinkRoute((uint)PlatformIrq.PciIntxLink(4, 0), 10));
        g.Platform.Irq.SetPciIntxLevel(0, 0, 4, 0, true);
        Assert.Equal(0x3A, g.Vcpu().Arch.Acknowledge());
        g.Platform.Irq.SetPciIntxLevel(0, 0, 4, 0, false);
        g.Out(0xA0, 0x20);
        g.Out(0x20, 0x20);
        Assert.False(g.Platform.Pic.IntOutput);
        Assert.Equal(-XenSharp.Public.Errno.EINVAL, g.Platform.Irq.SetPciLinkRoute(4, 1));
        Assert.Equal(-XenSharp.Public.Errno.EINVAL, g.Platform.Irq.SetPciLinkRoute(0, 16));
        Assert.Equal(-XenSharp.Public.Errno.EINVAL, g.Platform.Irq.SetPciIntxLevel(0, 0, 32, 0, true));
        Assert.Equal(-XenSharp.Public.Errno.EINVAL, g.Platform.Irq.SetIsaIrqLevel(16, true));
    }

    [Fact]
    public void APvhDomainHasNoPlatformDevices()
    {
        var g = new HvmPlatformGuest(_host, kind: DomainKind.Pvh);
        Assert.Null(g.Domain.Arch.Platform);
        Assert.Equal(1u, g.Domain.Arch.EmulationFlags);
        Assert.Equal(0xFFUL, g.In(0x21, 1));
        Assert.Equal(0xFFFFFFFFUL, g.Read(Vioapic.DefaultBase + 0x10));
        Assert.Equal(0xFFFFFFFFUL, g.In(0xB008, 4));
    }
}
