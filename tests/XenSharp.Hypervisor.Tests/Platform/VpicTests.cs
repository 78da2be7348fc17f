namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The dual 8259 (vPIC) programmed as Linux and BIOSes do, its interrupts taken by vCPU 0 through LINT0.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class VpicTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static byte Isr(HvmPlatformGuest g, ushort cmd)
    {
        g.Out(cmd, 0x0B); // OCW3: read ISR
        byte isr = g.In(cmd);
        g.Out(cmd, 0x0A); // back to IRR
        return isr;
    }

    [Fact]
    public void AMasterIrqArrivesWithItsVectorAndIsRetiredByEoi()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        var v = g.Vcpu();
        Assert.False(v.Arch.HasPendingInterrupt);
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        g.Platform.Irq.SetIsaIrqLevel(1, false);
        Assert.Equal(0x02, g.In(0x20)); // IRR shows the latched edge
        Assert.True(v.Arch.HasPendingInterrupt);
        Assert.Equal(0x31, v.Arch.Acknowledge());
        Assert.Equal(0x02, Isr(g, 0x20));
        Assert.Equal(0, g.In(0x20)); // IRR cleared by the acknowledge of an edge
        Assert.False(v.Arch.HasPendingInterrupt);
        g.Out(0x20, 0x20); // non-specific EOI
        Assert.Equal(0, Isr(g, 0x20));
    }

    [Fact]
    public void ASlaveIrqGoesThroughTheCascadeAndNeedsEoiOnBothChips()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Platform.Irq.SetIsaIrqLevel(12, true);
        g.Platform.Irq.SetIsaIrqLevel(12, false);
        Assert.Equal(0x3C, g.Vcpu().Arch.Acknowledge());
        Assert.Equal(0x04, Isr(g, 0x20));
        Assert.Equal(0x10, Isr(g, 0xA0));
        // While IRQ 12 is in service, a lower-priority master IRQ 3 waits; IRQ 1 (higher) does not.
        g.Platform.Irq.SetIsaIrqLevel(3, true);
        Assert.False(g.Vcpu().Arch.HasPendingInterrupt);
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        Assert.Equal(0x31, g.Vcpu().Arch.Acknowledge());
        g.Out(0x20, 0x20); // EOI for IRQ 1
        g.Out(0xA0, 0x20);
        g.Out(0x20, 0x20);
        Assert.Equal(0x33, g.Vcpu().Arch.Acknowledge());
    }

    [Fact]
    public void AMaskedEdgeWaitsInIrrUntilUnmasked()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Out(0x21, 0x10); // mask IRQ 4
        Assert.Equal(0x10, g.In(0x21));
        g.Platform.Irq.SetIsaIrqLevel(4, true);
        g.Platform.Irq.SetIsaIrqLevel(4, false);
        Assert.False(g.Platform.Pic.IntOutput);
        g.Out(0x21, 0x00);
        Assert.Equal(0x34, g.Vcpu().Arch.Acknowledge());
    }

    [Fact]
    public void ALevelTriggeredIrqComesBackAfterEoiWhileItsLineIsUp()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Out(0x4D1, 0xFF);
        Assert.Equal(0xDE, g.In(0x4D1)); // IRQ 8 and 13 stay edge
        g.Out(0x4D0, 0xFF);
        Assert.Equal(0xF8, g.In(0x4D0)); // IRQ 0, 1 and 2 stay edge
        g.Out(0x4D1, 0x08); // IRQ 11 level
        g.Platform.Irq.SetIsaIrqLevel(11, true);
        Assert.Equal(0x3B, g.Vcpu().Arch.Acknowledge());
        g.Out(0xA0, 0x20);
        g.Out(0x20, 0x20);
        Assert.Equal(0x3B, g.Vcpu().Arch.Acknowledge()); // still asserted
        g.Platform.Irq.SetIsaIrqLevel(11, false);
        g.Out(0xA0, 0x20);
        g.Out(0x20, 0x20);
        Assert.False(g.Platform.Pic.IntOutput);
        Assert.Equal(0, g.In(0xA0) & 0x08);
    }

    [Fact]
    public void AutoEoiLeavesNothingInService()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic(autoEoi: true);
        g.Platform.Irq.SetIsaIrqLevel(5, true);
        Assert.Equal(0x35, g.Vcpu().Arch.Acknowledge());
        Assert.Equal(0, Isr(g, 0x20));
    }

    [Fact]
    public void PollReadsTheHighestRequestAndAcknowledgesIt()
    {
        var g = new HvmPlatformGuest(_host);
        g.InitPic();
        g.Platform.Irq.SetIsaIrqLevel(6, true);
        g.Platform.Irq.SetIsaIrqLevel(4, true);
        g.Out(0x20, 0x0C); // OCW3 poll
        Assert.Equal(0x84, g.In(0x20));
        Assert.Equal(0x10, Isr(g, 0x20));
        g.Out(0x20, 0x64); // specific EOI for IRQ 4
        g.Out(0x20, 0x0C);
        Assert.Equal(0x86, g.In(0x20));
        g.Out(0x20, 0x66);
        g.Out(0x20, 0x0C);
        Assert.Equal(0x00, g.In(0x20)); // nothing waiting
    }

    [Fact]
    public void SetPriorityRotatesWhichIrqWins()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Out(0x20, 0xC4); // OCW2 set priority: IRQ 4 lowest, so IRQ 5 highest
        g.Platform.Irq.SetIsaIrqLevel(3, true);
        g.Platform.Irq.SetIsaIrqLevel(6, true);
        Assert.Equal(0x36, g.Vcpu().Arch.Acknowledge());
    }

    [Fact]
    public void SpecialMaskModeLetsALowerIrqInWhileAHigherIsInService()
    {
        var g = new HvmPlatformGuest(_host);
        g.EnableLapic();
        g.InitPic();
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        Assert.Equal(0x31, g.Vcpu().Arch.Acknowledge());
        g.Platform.Irq.SetIsaIrqLevel(6, true);
        Assert.False(g.Platform.Pic.IntOutput);
        g.Out(0x21, 0x02); // mask the in-service IRQ 1
        g.Out(0x20, 0x68); // OCW3: set special mask mode
        Assert.Equal(0x36, g.Vcpu().Arch.Acknowledge());
    }

    [Fact]
    public void WithoutExtIntOnLint0ThePicDoesNotReachTheVcpu()
    {
        var g = new HvmPlatformGuest(_host);
        g.Vcpu().Arch.Vlapic.MmioWrite(X86.Vlapic.DefaultBase + X86.Vlapic.SVR, 4, 0x1FF); // LINT0 stays masked
        g.InitPic();
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        Assert.True(g.Platform.Pic.IntOutput);
        Assert.False(g.Vcpu().Arch.HasPendingInterrupt);
    }

    [Fact]
    public void ThroughIoapicPin0InVirtualWireModeThePicReachesTheVcpu()
    {
        // As hvmloader leaves it for SeaBIOS: LINT0 masked, IOAPIC pin 0 ExtINT to APIC ID 0 (Xen's vlapic_accept_pic_intr).
        var g = new HvmPlatformGuest(_host);
        g.Vcpu().Arch.Vlapic.MmioWrite(X86.Vlapic.DefaultBase + X86.Vlapic.SVR, 4, 0x1FF);
        g.Vcpu().Arch.Vlapic.MmioWrite(X86.Vlapic.DefaultBase + X86.Vlapic.LVT_LINT0, 4, 0x10700);
        g.Write(0xFEC00000, 0x10);
        g.Write(0xFEC00010, 0x700);
        g.Write(0xFEC00000, 0x11);
        g.Write(0xFEC00010, 0);
        g.InitPic();
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        Assert.True(g.Vcpu().Arch.HasPendingInterrupt);
        Assert.Equal(0x31, g.Vcpu().Arch.Acknowledge());

        // Pin 0 masked, or aimed at another APIC: nothing.
        g.Platform.Irq.SetIsaIrqLevel(1, false);
        g.Out(0x20, 0x20);
        g.Write(0xFEC00000, 0x10);
        g.Write(0xFEC00010, 0x10700);
        g.Platform.Irq.SetIsaIrqLevel(3, true);
        Assert.True(g.Platform.Pic.IntOutput);
        Assert.False(g.Vcpu().Arch.HasPendingInterrupt);
        g.Write(0xFEC00010, 0x700);
        g.Write(0xFEC00000, 0x11);
        g.Write(0xFEC00010, 2u << 24);
        Assert.False(g.Vcpu().Arch.HasPendingInterrupt);
    }
}
