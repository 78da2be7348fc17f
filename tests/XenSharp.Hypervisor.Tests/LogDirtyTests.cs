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
