using XenSharp.Cpu;
using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>The timers an HVM vCPU reads without an exit (<see cref="IX86Vcpu.DirectPortReads"/>): the PIT and the ACPI
/// PM timer answer as through the exit, in step with the state the exits change; ports whose reads move an interrupt
/// line or belong to the device model still exit, and a PVH domain, which has no PIT, reads none this way.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class DirectPortReadTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1, EngineFactory = m => new X86Engine(m) });
    public void Dispose() => _host.Dispose();

    private static ulong Read(IDirectPortReads reads, ushort port, int size)
    {
        Assert.True(reads.TryRead(port, size, out ulong value), $"port 0x{port:x} exits");
        return value;
    }

    [Fact]
    public void PitAndPmTimerReadsAreAnsweredInTheVcpu()
    {
        var g = new HvmPlatformGuest(_host);
        var reads = ((IX86Vcpu)g.Vcpu().Engine!).DirectPortReads;
        Assert.NotNull(reads);

        // The PM timer counts as through the exit, and only its low bytes come back for a narrower read.
        uint first = (uint)Read(reads, PmTimer.TimerPort, 4);
        Assert.True(TestHosts.WaitUntil(() => (uint)Read(reads, PmTimer.TimerPort, 4) != first));
        Assert.InRange(Read(reads, PmTimer.TimerPort, 2), 0UL, 0xFFFFUL);
        Assert.True((uint)g.In(PmTimer.TimerPort, 4) - first < 0x8000_0000u);

        // Channel 2 as a calibration loop runs it: programmed through exits, polled directly.
        g.Out(0x61, 0x01);
        g.Out(0x43, 0xB0); // channel 2, LSB then MSB, mode 0
        g.Out(0x42, 0xFF);
        g.Out(0x42, 0xFF);
        Assert.Equal(0x01UL, Read(reads, 0x61, 1) & 0x03);
        g.Out(0x43, 0x80); // latch channel 2
        int count = (int)Read(reads, 0x42, 1) | ((int)Read(reads, 0x42, 1) << 8);
        Assert.InRange(count, 1, 0xFFFF);
        Assert.True(TestHosts.WaitUntil(() => (Read(reads, 0x61, 1) & 0x20) != 0), "channel 2's output never went high");

        // Reads that move the SCI, the PIC's, the RTC's (register C lowers IRQ 8) and the device model's exit.
        foreach (ushort port in new ushort[] { PmTimer.EventBlockPort, 0x20, 0x21, 0x71, 0x3F8, 0x1F7 })
            Assert.False(reads.TryRead(port, 1, out _), $"port 0x{port:x} read without an exit");
    }

    [Fact]
    public void APvhDomainHasNoDirectReads()
    {
        var g = new HvmPlatformGuest(_host, kind: DomainKind.Pvh);
        Assert.Null(((IX86Vcpu)g.Vcpu().Engine!).DirectPortReads);
    }
}
