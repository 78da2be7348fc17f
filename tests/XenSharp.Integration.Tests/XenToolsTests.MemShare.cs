using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

public sealed partial class XenToolsTests
{
    /// <summary>The last "# round" line of a memshare guest once it has printed one more.</summary>
    private string NextShareRound(string name)
    {
        int seen = Regex.Matches(ConsoleLog(name), "# round ").Count;
        Assert.True(XlHost.WaitUntil(() => Regex.Matches(ConsoleLog(name), "# round ").Count > seen, TimeSpan.FromMinutes(2)),
            $"{name} stopped running\n{ConsoleLog(name)}");
        return Regex.Matches(ConsoleLog(name), @"# round \d+ id=\d+ written=\d+ wrong=\d+ bad=\d+")[^1].Value;
    }

    /// <summary>xen-memshare info's two figures: it prints the saved pages as "used" and the shared frames as "freed".</summary>
    private (long Saved, long Shared) MemshareInfo()
    {
        var m = Regex.Match(Dom0("xen-memshare", "info").Stdout, @"used = (\d+)\nfreed = (\d+)");
        Assert.True(m.Success);
        return (long.Parse(m.Groups[1].Value), long.Parse(m.Groups[2].Value));
    }

    [Fact, Trait("Feature", "Memory Sharing")]
    public void XenMemshareSharesIdenticalPagesCopyOnWrite()
    {
        int a = StartGuest("memshare", "sharer", "# ready id=1", "cmdline=\"id=1\"");
        int b = -1;
        try
        {
            b = StartGuest("memshare", "sharee", "# ready id=2", "cmdline=\"id=2\"");
            // Both run the same kernel: their 512 pattern pages sit at the same gfns (the guest is identity-mapped).
            var ready = Regex.Match(ConsoleLog("sharer"), @"# ready id=1 pages=0x([0-9a-f]+) count=(\d+)");
            Assert.True(ready.Success, ConsoleLog("sharer"));
            ulong first = Convert.ToUInt64(ready.Groups[1].Value, 16) >> 12, count = ulong.Parse(ready.Groups[2].Value);
            Assert.Contains($"pages=0x{ready.Groups[1].Value} count={count}", ConsoleLog("sharee"));
            Assert.Equal((0L, 0L), MemshareInfo());

            // Range sharing wants sharing on for the client (the source gets it by itself) and both domains paused.
            Dom0("xen-memshare", "enable", b.ToString());
            Assert.Contains("error executing xc_memshr_range_share: Invalid argument",
                Failing("xen-memshare", "range", a.ToString(), b.ToString(), $"0x{first:x}", $"0x{first + count - 1:x}"));
            Assert.Equal((0L, 0L), MemshareInfo());

            // One page by hand: each domain's copy nominated (a frame in the sharing state each, with its handle), a
            // wrong source handle refused, then the two shared: one frame left, one saved.
            string gfn5 = $"0x{first + 5:x}";
            var ha = Regex.Match(Dom0("xen-memshare", "nominate", a.ToString(), gfn5).Stdout, @"handle = (0x[0-9a-f]+)").Groups[1].Value;
            var hb = Regex.Match(Dom0("xen-memshare", "nominate", b.ToString(), gfn5).Stdout, @"handle = (0x[0-9a-f]+)").Groups[1].Value;
            Assert.NotEqual("", ha);
            Assert.NotEqual(ha, hb);
            Assert.Equal((0L, 2L), MemshareInfo());
            // XENMEM_SHARING_OP_S_HANDLE_INVALID, which xen-memshare words as a client handle problem (its two messages
            // are swapped, as are its info labels).
            Assert.Contains("problem with client handle",
                Failing("xen-memshare", "share", b.ToString(), gfn5, hb, a.ToString(), gfn5, "0x7777"));
            Dom0("xen-memshare", "share", b.ToString(), gfn5, hb, a.ToString(), gfn5, ha);
            Assert.Equal((1L, 1L), MemshareInfo());
            // Nominating the client's gfn again gives the frame it now maps: the source's handle.
            Assert.Contains($"handle = {ha}", Dom0("xen-memshare", "nominate", b.ToString(), gfn5).Stdout);

            // The rest of the range, with both paused.
            Assert.Equal(0, _xl.Run("pause", "sharer").ExitCode);
            Assert.Equal(0, _xl.Run("pause", "sharee").ExitCode);
            Dom0("xen-memshare", "range", a.ToString(), b.ToString(), $"0x{first:x}", $"0x{first + count - 1:x}");
            // Every pattern page of the client now maps the source's frame: count frames saved, count in the sharing state.
            Assert.Equal(((long)count, (long)count), MemshareInfo());
            Assert.Equal((int)(count * 4096 >> 20), XlInfoNumber("sharing_freed_memory"));
            Assert.Equal((int)(count * 4096 >> 20), XlInfoNumber("sharing_used_memory"));
            Assert.Contains("Audit returned 0 errors.", Dom0("xen-memshare", "audit").Stdout);
            Assert.Equal(0, _xl.Run("unpause", "sharer").ExitCode);
            Assert.Equal(0, _xl.Run("unpause", "sharee").ExitCode);

            // Both read their pages through the shared frames unchanged.
            Assert.Matches(@"id=1 written=0 wrong=0 bad=0", NextShareRound("sharer"));
            Assert.Matches(@"id=2 written=0 wrong=0 bad=0", NextShareRound("sharee"));

            // The source writes its first page: the write breaks the sharing of that page for the source only, whose
            // copy now holds its own data while the client still reads the pattern from the frame it keeps.
            Assert.Equal(0, _xl.Run("trigger", "sharer", "nmi").ExitCode);
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("sharer").Contains("written=1"), TimeSpan.FromMinutes(2)), ConsoleLog("sharer"));
            Assert.Matches(@"id=1 written=1 wrong=0 bad=0", NextShareRound("sharer"));
            Assert.Matches(@"id=2 written=0 wrong=0 bad=0", NextShareRound("sharee"));
            Assert.Equal(((long)count - 1, (long)count), MemshareInfo());

            // Then the client writes its own: the last gfn of that frame takes it back, and the frame leaves sharing.
            Assert.Equal(0, _xl.Run("trigger", "sharee", "nmi").ExitCode);
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("sharee").Contains("written=1"), TimeSpan.FromMinutes(2)), ConsoleLog("sharee"));
            Assert.Matches(@"id=2 written=1 wrong=0 bad=0", NextShareRound("sharee"));
            Assert.Matches(@"id=1 written=1 wrong=0 bad=0", NextShareRound("sharer"));
            Assert.Equal(((long)count - 1, (long)count - 1), MemshareInfo());
            Assert.Contains("Audit returned 0 errors.", Dom0("xen-memshare", "audit").Stdout);

            // The source goes first: the frames the client still maps outlive it, and go with the client.
            Assert.Equal(0, _xl.Run("destroy", "sharer").ExitCode);
            Assert.Equal((0L, (long)count - 1), MemshareInfo());
            Assert.Matches(@"id=2 written=1 wrong=0 bad=0", NextShareRound("sharee"));
            Assert.Equal(0, _xl.Run("destroy", "sharee").ExitCode);
            Assert.Equal((0L, 0L), MemshareInfo());
        }
        finally
        {
            _xl.Run("destroy", "sharer");
            _xl.Run("destroy", "sharee");
        }
    }
}
