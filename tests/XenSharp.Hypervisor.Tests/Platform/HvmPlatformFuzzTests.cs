using static XenSharp.Tests.FuzzSeeds;
using System.Runtime.InteropServices;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>Garbage programming of every platform device — random writes and reads of every size to their ports and
/// registers, and random saved records — leaves the devices answering and the daemon standing.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class HvmPlatformFuzzTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static readonly ushort[] Ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
        0xB000, 0xB001, 0xB002, 0xB003, 0xB008, 0xB009, 0xB00A, 0xB00B];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void RandomProgrammingNeverThrows(int seed) => WithSeeds(seed, RandomProgramming);

    private void RandomProgramming(int seed)
    {
        var g = new HvmPlatformGuest(_host, vcpus: 2);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_HPET_ENABLED, 1);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_TIMER_MODE, (ulong)(seed % 4));
        g.EnableLapic();
        var rng = new Random(seed);
        int[] sizes = [1, 2, 4, 8];
        for (int i = 0; i < 20_000; i++)
        {
            int size = sizes[rng.Next(4)];
            ulong value = (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40);
            switch (rng.Next(6))
            {
                case 0: g.Out(Ports[rng.Next(Ports.Length)], size, value); break;
                case 1: g.In(Ports[rng.Next(Ports.Length)], size); break;
                case 2: g.Write(Vioapic.DefaultBase + (ulong)rng.Next(0x100), value, size); break;
                case 3: g.Read(Vioapic.DefaultBase + (ulong)rng.Next(0x100), size); break;
                case 4: g.Write(Hpet.Base + (ulong)rng.Next(Hpet.Length), value, size); break;
                default:
                    g.Platform.Irq.SetIsaIrqLevel((uint)rng.Next(20), rng.Next(2) == 0);
                    g.Platform.Irq.SetPciIntxLevel(0, 0, (uint)rng.Next(34), (uint)rng.Next(5), rng.Next(2) == 0);
                    g.Platform.Irq.SetPciLinkRoute((uint)rng.Next(5), (uint)rng.Next(17));
                    var v = g.Vcpu(rng.Next(2));
                    if (v.Arch.HasPendingInterrupt)
                        v.Arch.Acknowledge();
                    if (rng.Next(4) == 0)
                        g.LapicEoi(v.Id);
                    break;
            }
        }
        // Still a PIC after all that: reinitialise and take an interrupt.
        g.Vcpu().Arch.Vlapic.MmioWrite(Vlapic.DefaultBase + Vlapic.LVT_LINT0, 4, 0x700);
        g.Out(0x4D0, 0);
        g.InitPic();
        for (uint irq = 0; irq < 16; irq++)
            g.Platform.Irq.SetIsaIrqLevel(irq, false);
        for (uint dev = 0; dev < 32; dev++)
            for (uint intx = 0; intx < 4; intx++)
                g.Platform.Irq.SetPciIntxLevel(0, 0, dev, intx, false);
        g.Out(0x43, 0x30); // PIT channel 0 quiet
        g.Out(0x70, Rtc.RegB);
        g.Out(0x71, Rtc.B24h);
        g.Write(Hpet.Base + 0x10, 0, 8);
        while (g.Vcpu().Arch.HasPendingInterrupt && g.Vcpu().Arch.Acknowledge() >= 0) { }
        for (int k = 0; k < 4; k++)
            g.Out(0x20, 0x20);
        for (int k = 0; k < 4; k++)
            g.Out(0xA0, 0x20);
        g.Out(0x21, 0xFD); // only IRQ 1
        g.Out(0xA1, 0xFF);
        g.Platform.Irq.SetIsaIrqLevel(1, true);
        Assert.Equal(0x31, g.Vcpu().Arch.Acknowledge());
        _host.Destroy(g.Id); // a longer run goes on with a fresh guest
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    public void RandomSavedRecordsLoadWithoutHarm(int seed) => WithSeeds(seed, RandomSavedRecords);

    private unsafe void RandomSavedRecords(int seed)
    {
        var rng = new Random(seed);
        var g = new HvmPlatformGuest(_host);
        foreach (var (type, size) in new (ushort, int)[] { (HvmSave.PIC, sizeof(HvmHwVpic)), (HvmSave.IOAPIC, sizeof(HvmHwVioapic)),
                     (HvmSave.PIT, sizeof(HvmHwPit)), (HvmSave.RTC, sizeof(HvmHwRtc)), (HvmSave.HPET, sizeof(HvmHwHpet)), (HvmSave.PMTIMER, sizeof(HvmHwPmtimer)) })
        {
            for (int i = 0; i < 200; i++)
            {
                var body = new byte[size];
                rng.NextBytes(body);
                Assert.True(g.Platform.TryLoad(type, (ushort)(type == HvmSave.PIC ? i & 1 : 0), body));
                for (int p = 0; p < 8; p++)
                    g.In(Ports[rng.Next(Ports.Length)], 1);
                g.Read(Hpet.Base + (ulong)rng.Next(0x100) * 8, 8);
            }
        }
        g.Platform.Save((_, _, body) => Assert.NotEmpty(body));
        _host.Destroy(g.Id);
    }
}
