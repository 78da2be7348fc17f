using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's kernel with memory = 128 and maxmem = 256: it boots populate-on-demand over a memory map of
/// maxmem, its balloon driver gives back the difference, and `xl mem-set` moves it up to maxmem and back down
/// while the guest stays alive and sees its memory change.
/// </summary>
public sealed partial class LinuxBalloonTests
{
    /// <summary>The balloon driver's sysfs: target_kb (from memory/target) and info/current_kb (what it holds).</summary>
    private const string Balloon = "/sys/devices/system/xen_memory/xen_memory0";
    private static readonly TimeSpan BalloonLimit = TimeSpan.FromMinutes(5);

    [GeneratedRegex(@"MemTotal-(\d+)-kB")]
    private static partial Regex MemTotalLine();

    [GeneratedRegex(@"balloon-at-(\d+)-kB")]
    private static partial Regex BalloonLine();

    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "Populate-on-demand memory"), Trait("Feature", "Dynamic memory control")]
    public void GuestBalloonsToItsTargetAndFollowsMemSetUpToMaxmem()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = LinuxPvhTests.WriteConfig(xl, store, "balloon", memory: 128, maxmem: 256);

        using var console = new LinuxPvhTests.ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            string boot = console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
            var seen = new System.Text.StringBuilder(boot);
            // The kernel sees the whole of maxmem as RAM.
            Assert.Matches(@"BIOS-e820: \[mem 0x0+100000-0x0*fffffff\] usable", boot);

            // At boot the balloon driver gives back what lies above memory/target (less the pages the kernel
            // keeps out of its RAM count, libxl's static-max minus what the guest found).
            long target128 = WaitForBalloon(console, "-le 131072", seen);
            Assert.InRange(target128, 128 * 1024 - 1024, 128 * 1024);
            long memTotal128 = MemTotalKb(console, seen);
            Assert.InRange(memTotal128, 64 * 1024, 128 * 1024);
            Assert.InRange(ListedMemMb(xl), 128, 129);

            Assert.Equal(0, xl.Run("mem-set", "balloon", "256m").ExitCode);
            Assert.Equal(target128 + 128 * 1024, WaitForBalloon(console, "-gt 200000", seen));
            long memTotal256 = MemTotalKb(console, seen);
            Assert.Equal(128 * 1024, memTotal256 - memTotal128);
            Assert.InRange(ListedMemMb(xl), 256, 257);

            Assert.Equal(0, xl.Run("mem-set", "balloon", "128m").ExitCode);
            Assert.Equal(target128, WaitForBalloon(console, "-le 131072", seen));
            Assert.Equal(memTotal128, MemTotalKb(console, seen));
            Assert.InRange(ListedMemMb(xl), 128, 129);

            seen.Append(console.Ask("echo still-alive-$((6*7))", "still-alive-42"));
            Assert.DoesNotContain("Kernel panic", seen.ToString());
            Assert.DoesNotContain("Out of memory", seen.ToString());
            Assert.DoesNotContain("out of PoD memory", xl.Run("dmesg").Stdout);
        }
        finally
        {
            var destroyed = xl.Run("destroy", "balloon");
            Assert.True(destroyed.ExitCode == 0, destroyed.ToString());
        }
    }

    /// <summary>Waits in the guest until the balloon driver's target passes <paramref name="targetTest"/> (memory/target
    /// arrived) and it holds that target (current_kb = target_kb); returns the target.</summary>
    private static long WaitForBalloon(LinuxPvhTests.ConsoleSession console, string targetTest, System.Text.StringBuilder seen)
    {
        // The typed line never contains the reply's "-kB" (the shell joins "-k" and "B").
        string reply = console.Ask(
            $"until [ $(cat {Balloon}/target_kb) {targetTest} ] && [ $(cat {Balloon}/info/current_kb) -eq $(cat {Balloon}/target_kb) ]; do sleep 1; done; " +
            $"echo balloon-at-$(cat {Balloon}/info/current_kb)-k\"\"B", "-kB", BalloonLimit);
        seen.Append(reply);
        var m = BalloonLine().Match(reply);
        Assert.True(m.Success, reply);
        return long.Parse(m.Groups[1].Value);
    }

    private static long MemTotalKb(LinuxPvhTests.ConsoleSession console, System.Text.StringBuilder seen)
    {
        string reply = console.Ask("echo MemTotal-$(sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)-k\"\"B", "-kB");
        seen.Append(reply);
        var m = MemTotalLine().Match(reply);
        Assert.True(m.Success, reply);
        return long.Parse(m.Groups[1].Value);
    }

    /// <summary>The Mem column of `xl list` for the guest.</summary>
    private static long ListedMemMb(XlHost xl)
    {
        var r = xl.Run("list", "balloon");
        Assert.Equal(0, r.ExitCode);
        var row = r.Stdout.Split('\n').Single(l => l.StartsWith("balloon "));
        return long.Parse(row.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2]);
    }
}
