using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// Log-dirty mode (XEN_DOMCTL_shadow_op) under the freestanding guest tests/guests/dirty.c, which keeps writing a
/// counter page and a region while only reading another: PEEK sees the written pages and not the read ones, CLEAN
/// hands the bits over and clears them, and a page written again after a CLEAN is seen again (the engine keeps no
/// writable translation across it).
/// </summary>
[Trait("Feature", "xl migrate")]
public partial class LogDirtyTests : IDisposable
{
    private readonly XenHypervisor _host = new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });
    public void Dispose() => _host.Dispose();

    [GeneratedRegex(@"# dirty region=([0-9a-f]+) pages=(\d+) untouched=([0-9a-f]+) counter=([0-9a-f]+)")]
    private static partial Regex Banner();

    [Fact]
    public void WrittenPagesAreLoggedAndCleanedAndLoggedAgain()
    {
        ushort id = PvhTestGuest.Boot(_host, "dirty", out _);
        _host.Unpause(id);
        Match m = Match.Empty;
        Assert.True(TestHosts.WaitUntil(() => (m = Banner().Match(Output(id))).Success, 30_000), "no banner:\n" + Output(id));
        ulong region = Hex(m.Groups[1].Value) >> 12, untouched = Hex(m.Groups[3].Value) >> 12, counter = Hex(m.Groups[4].Value);
        int pages = int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        var bits = new ulong[(8192 + 63) / 64]; // the guest's 32 MiB

        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, bits)).Errno);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, bits);
        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, bits)).Errno);
        WaitForCounterToMove(id, counter);

        var (_, dirtied) = _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, bits);
        Assert.True(IsSet(bits, counter >> 12), "the counter page is not dirty");
        Assert.True(dirtied > 0);
        for (ulong g = 0; g < 4; g++)
            Assert.False(IsSet(bits, untouched + g), $"page {g} of the region the guest only reads is dirty");

        // CLEAN with the guest paused: the bits come out once and nothing is left.
        _host.Pause(id);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_CLEAN, bits);
        Assert.True(IsSet(bits, counter >> 12));
        int regionDirty = Enumerable.Range(0, pages).Count(p => IsSet(bits, region + (ulong)p));
        Assert.True(regionDirty > 0, "no page of the written region is dirty");
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, bits);
        Assert.False(IsSet(bits, counter >> 12), "PEEK after CLEAN still shows the counter page");
        Assert.Equal(0, Enumerable.Range(0, pages).Count(p => IsSet(bits, region + (ulong)p)));

        // Running again, the same pages are written through translations made before the CLEAN: seen again.
        _host.Unpause(id);
        WaitForCounterToMove(id, counter);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, bits);
        Assert.True(IsSet(bits, counter >> 12), "a write after CLEAN was not logged");

        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_OFF, bits);
        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_CLEAN, bits)).Errno);
        WaitForCounterToMove(id, counter);
        Assert.DoesNotContain("FAIL ", Output(id));
    }

    /// <summary>Pages far above the guest's RAM (a special page near 4 GiB) are logged, handed over by a bitmap that
    /// reaches them, and cleared by a CLEAN whose bitmap stops short of them, as Xen clears the whole log.</summary>
    [Fact]
    public void HighPagesAreLoggedAndCleanedByAShortBitmap()
    {
        ushort id = PvhTestGuest.Boot(_host, "dirty", out _);
        const ulong high = 0xFEFFF, higher = 0xFFFFF;
        _host.SetMaxMemory(id, 64 << 10);
        _host.PopulatePhysmap(id, high, 1);
        _host.PopulatePhysmap(id, higher, 1);
        var all = new ulong[(higher + 64) / 64];
        var low = new ulong[(8192 + 63) / 64];
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, all);

        _host.WriteGuestMemory(id, high << 12, [1]);
        _host.WriteGuestMemory(id, 5 << 12, [1]);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_CLEAN, all);
        Assert.True(IsSet(all, high) && IsSet(all, 5), "a written page is missing from the log");
        Assert.False(IsSet(all, higher));
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, all);
        Assert.DoesNotContain(all, w => w != 0);

        // A bitmap of the first 32 MiB still clears the pages above it.
        _host.WriteGuestMemory(id, higher << 12, [1]);
        _host.WriteGuestMemory(id, high << 12, [1]);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, all);
        Assert.True(IsSet(all, higher) && IsSet(all, high));
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_CLEAN, low);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, all);
        Assert.DoesNotContain(all, w => w != 0);

        // Off and on again: the new log starts empty.
        _host.WriteGuestMemory(id, higher << 12, [1]);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_OFF, all);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, all);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_PEEK, all);
        Assert.DoesNotContain(all, w => w != 0);
        _host.WriteGuestMemory(id, 7 << 12, [1]);
        _host.ShadowOp(id, XEN_DOMCTL_SHADOW_OP_CLEAN, all);
        Assert.True(IsSet(all, 7));
    }

    private void WaitForCounterToMove(ushort id, ulong counter)
    {
        ulong first = Counter(id, counter);
        Assert.True(TestHosts.WaitUntil(() => Counter(id, counter) != first, 30_000), "the guest's counter does not move");
    }

    private ulong Counter(ushort id, ulong gpa)
    {
        var b = new byte[8];
        _host.ReadGuestMemory(id, gpa, b);
        return BitConverter.ToUInt64(b);
    }

    private static bool IsSet(ulong[] bits, ulong gfn) => (bits[gfn >> 6] & (1UL << (int)(gfn & 63))) != 0;
    private static ulong Hex(string s) => ulong.Parse(s, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    private string Output(ushort id) => Encoding.ASCII.GetString(_host.ReadConsoleHistory(id));
}
