using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// A frame freed under a running vCPU: the vCPU keeps writing to a page its soft TLB holds while the page is
/// taken away and its machine memory given to another domain, which must never see those writes.
/// </summary>
public class StaleTranslationTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    private const ulong Target = 0x400, Counter = 0x3000;

    private uint ReadCounter(ushort id)
    {
        var b = new byte[4];
        _host.ReadGuestMemory(id, Counter, b);
        return BitConverter.ToUInt32(b);
    }

    [Fact]
    public void AFrameFreedUnderARunningVcpuReachesAnotherDomainOnlyAfterItsTlbForgotIt()
    {
        var frames = _host.Frames;
        ushort a = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 8192, 1));
        // Fill the extent shared_info started, so that the target page is alone in an extent of its own: freeing it
        // gives the whole extent back to the pool, where the next domain finds it.
        _host.PopulatePhysmap(a, 0, (ulong)(frames.ExtentFrames - frames.AllocatedFrames));
        _host.PopulatePhysmap(a, Target, 1);
        var da = _host.FindDomain(a)!;
        Assert.True(da.P2m.TryLookup(Target, out uint stale, out _));
        Assert.True(da.P2m.TryLookup(0, out uint low, out _));
        Assert.NotEqual(low / (uint)frames.ExtentFrames, stale / (uint)frames.ExtentFrames);

        // mov eax, 0xA5A5A5A5; loop: mov [Target page], eax; inc dword [Counter]; jmp loop
        byte[] code =
        [
            0xB8, 0xA5, 0xA5, 0xA5, 0xA5,
            0xA3, 0x00, 0x00, 0x40, 0x00,
            0xFF, 0x05, 0x00, 0x30, 0x00, 0x00,
            0xEB, 0xF3,
        ];
        _host.WriteGuestMemory(a, 0x1000, code);
        _host.SetVcpuRegisters(a, 0, new Registers { Rip = 0x1000, Rsp = 0x8000, Rflags = 2 }, PvhEntryState.Flat32());
        _host.Unpause(a);
        Assert.True(TestHosts.WaitUntil(() => ReadCounter(a) > 100_000), _host.ReadDmesg());

        // The next domain exists already (its shared_info and grant frames in an extent of its own).
        ushort b = _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 16384, 1));
        var db = _host.FindDomain(b)!;

        // The page goes while the loop writes to it through its soft TLB. The frame waits in quarantine until the
        // vCPU has been kicked out of its loop and flushed.
        Assert.True(da.RemovePage(Target));
        Assert.True(TestHosts.WaitUntil(() => frames.QuarantinedFrames == 0));

        // The other domain takes RAM: beyond its first extent, the freed one is the first it gets.
        _host.PopulatePhysmap(b, 0, 2 * (ulong)frames.ExtentFrames);
        ulong? reusedGfn = null;
        for (ulong g = 0; g < 2 * (ulong)frames.ExtentFrames; g++)
            if (db.P2m.TryLookup(g, out uint m, out _) && m == stale)
                reusedGfn = g;
        Assert.True(reusedGfn is not null, "the freed frame did not go to the next domain");

        // The first domain keeps running its loop (its stores to the page now go nowhere) ...
        uint c0 = ReadCounter(a);
        Assert.True(TestHosts.WaitUntil(() => ReadCounter(a) > c0 + 100_000), _host.ReadDmesg());
        // ... and the second domain's page is still all zero.
        var page = new byte[FrameTable.PageSize];
        _host.ReadGuestMemory(b, reusedGfn.Value << FrameTable.PageShift, page);
        int dirty = page.AsSpan().IndexOfAnyExcept((byte)0);
        Assert.True(dirty < 0, $"domain {b} sees domain {a}'s write at offset {dirty}");
        _host.Destroy(a);
        _host.Destroy(b);
    }
}
