using System.Diagnostics;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Xen's own toolstack builds and runs a guest on XenSharp: Debian's xl (Xen 4.17's libxenlight and libxenguest over
/// the drop-in stable libraries) creates the Debian kernel and initramfs as a PVH domain with `xl create -c`, its
/// xenconsole client shows the guest's shell on the pty the daemon serves, and Debian's xl pause, unpause, mem-set,
/// shutdown and destroy act on it, while XenSharp's ./xl list and Debian's xl list agree throughout.
/// </summary>
public sealed class Dom0CreateTests
{
    private const string DebianXl = "/usr/lib/xen-4.17/bin/xl";
    private static readonly TimeSpan Settle = TimeSpan.FromMinutes(2);

    [Fact]
    [Trait("Feature", "Dom0 stable libraries"), Trait("Feature", "x86/PVH"), Trait("Feature", "PV Console (xenconsoled)")]
    public void DebianXlCreatesRunsAndEndsAPvhGuest()
    {
        Assert.True(File.Exists(DebianXl), $"{DebianXl} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        Assert.Equal(0, xl.Run("list").ExitCode); // starts the daemon
        string cfg = LinuxPvhTests.WriteConfig(xl, store, "d0guest");

        // xl create -c: libxl builds the domain, xenconsole attaches to the pty the daemon named in console/tty.
        using (var console = PtySession.Command(xl.RunDir, Repository.PathOf("dom0"), "xl", "create", "-c", cfg))
        {
            string boot = console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
            Assert.Contains("Booting kernel on Xen PVH", boot);
            Assert.DoesNotContain("Kernel panic", boot);
            console.Type("echo result-$((6*7)) $(cat /sys/hypervisor/type)\r");
            console.WaitFor("result-42 xen", TimeSpan.FromMinutes(1));
            console.WaitFor("~ # ", TimeSpan.FromMinutes(1));
            // xenconsole's escape detaches, and xl create returns. It counts only as a read of that byte alone, so
            // one that shared a read with the terminal's answer to the prompt's cursor query is sent again.
            bool exited = false;
            for (int i = 0; i < 5 && !exited; i++)
            {
                console.Type("\u001d");
                exited = console.WaitForExit(TimeSpan.FromSeconds(10));
            }
            Assert.True(exited, $"xl create -c did not return after the console detached; screen:\n{console.Tail()}");
            Assert.Equal(0, console.ExitCode);
        }

        var first = ListsAgree(xl, r => r.Any(x => x[0] == "d0guest"));
        int domid = int.Parse(first.Single(r => r[0] == "d0guest")[1]);
        Assert.Equal("512", first.Single(r => r[0] == "d0guest")[2]);

        Theirs(xl, "pause", "d0guest");
        ListsAgree(xl, r => r.Any(x => x[0] == "d0guest" && x[4].Contains('p')));
        Theirs(xl, "unpause", "d0guest");
        ListsAgree(xl, r => r.Any(x => x[0] == "d0guest" && !x[4].Contains('p')));

        // The guest's balloon driver follows memory/target down.
        Theirs(xl, "mem-set", "d0guest", "256m");
        ListsAgree(xl, r => r.Any(x => x[0] == "d0guest" && x[2] == "256"));

        // The guest powers off; xl create's monitor destroys it (on_poweroff's default) and the daemon lets it go.
        Theirs(xl, "shutdown", "-w", "d0guest");
        ListsAgree(xl, r => r.All(x => x[0] != "d0guest"));
        // The daemon logged the console as xenconsoled logs it: the shell's answer is there.
        Assert.Contains("result-42 xen", File.ReadAllText(Path.Combine(xl.RunDir, "console", "d0guest.log")));

        // Domain ids increase; xl destroy ends a running guest at once.
        Theirs(xl, "create", cfg);
        var second = ListsAgree(xl, r => r.Any(x => x[0] == "d0guest"));
        Assert.True(int.Parse(second.Single(r => r[0] == "d0guest")[1]) > domid);
        Theirs(xl, "destroy", "d0guest");
        ListsAgree(xl, r => r.All(x => x[0] != "d0guest"));
        Assert.Equal(0, xl.Run("list").ExitCode);
    }

    /// <summary>Waits until Debian's xl list and ./xl list show the same rows (name, id, memory, vCPUs, state) and
    /// those rows satisfy <paramref name="wanted"/>; returns them. CPU time is left out: it moves between the two.</summary>
    private static string[][] ListsAgree(XlHost xl, Func<string[][], bool> wanted)
    {
        var deadline = DateTime.UtcNow + Settle;
        string last = "";
        while (true)
        {
            var ours = Rows(xl.Run("list").Stdout);
            var theirs = Rows(Dom0(xl, "xl", "list").Stdout);
            bool same = ours.Length == theirs.Length && ours.Zip(theirs).All(p => p.First.Take(5).SequenceEqual(p.Second.Take(5)));
            if (same && wanted(theirs))
                return theirs;
            last = $"./xl list:\n{string.Join('\n', ours.Select(r => string.Join(' ', r)))}\nDebian's xl list:\n{string.Join('\n', theirs.Select(r => string.Join(' ', r)))}";
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"the lists did not come to agree as expected within {Settle}:\n{last}");
            Thread.Sleep(500);
        }
    }

    private static string[][] Rows(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1)
            .Select(l => l.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)).Where(f => f.Length >= 5).ToArray();

    private static XlResult Theirs(XlHost xl, params string[] args)
    {
        var r = Dom0(xl, ["xl", .. args]);
        Assert.True(r.ExitCode == 0, $"Debian's xl {string.Join(' ', args)}: {r}");
        return r;
    }

    /// <summary>Runs a program under ./dom0 against the test's daemon, its stdin closed.</summary>
    private static XlResult Dom0(XlHost xl, params string[] args) => xl.RunDom0(TimeSpan.FromMinutes(3), args);
}
