using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// The crash test kernel restarted by on_crash/on_reboot, through the real xl against a private
/// daemon: it shuts down as soon as it runs, so it restarts in a loop. Restarts come a pause apart,
/// and xl destroy, by name or by a domid the loop had, ends the loop whichever moment it lands in.
/// </summary>
public sealed partial class RestartLoopTests : IClassFixture<RestartLoopTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;

    /// <summary>What the daemon waits before each restart.</summary>
    private static readonly TimeSpan Pause = XenSharp.Toolstack.Lifecycle.Host.RestartPause;

    public RestartLoopTests(Host host) => _xl = host.Xl;

    [GeneratedRegex(@"\(XEN\) created domain (\d+)")]
    private static partial Regex CreatedLine();

    public static TheoryData<string, string, string> Loops => new()
    {
        { "on_crash", "restart", "crash" },
        { "on_crash", "coredump-restart", "crash" },
        { "on_crash", "rename-restart", "crash" },
        { "on_reboot", "restart", "reboot" },
    };

    [Theory, Trait("Feature", "xl"), Trait("Feature", "x86/PVH")]
    [MemberData(nameof(Loops))]
    public void RestartsArePacedAndDestroyEndsTheLoop(string key, string action, string reason)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "crash.elf")), "crash.elf is not built (make -C tests/guests)");
        string name = $"loop-{reason}-{action}";
        string[] create = ["create", Repository.PathOf("tests", "guests", "crash.cfg"), $"name=\"{name}\"",
            $"{key}=\"{action}\"", $"cmdline=\"reason={reason}\""];
        Run("dmesg", "-c");
        string daemon = DaemonPid();
        try
        {
            var domids = RestartsArePaced(create);
            DestroyEndsTheLoop(create, name, domids);
        }
        finally
        {
            // A failed check must not leave a loop running into the next case.
            foreach (var line in _xl.Run("list").Stdout.Split('\n'))
                if (line.StartsWith(name, StringComparison.Ordinal))
                    _xl.Run("destroy", line.Split(' ', 2)[0]);
        }

        // rename-restart kept each old domain under a new name, as xl does; the cleanup above took them.
        Assert.DoesNotContain(Names(), n => n.StartsWith(name, StringComparison.Ordinal));
        Assert.Equal(daemon, DaemonPid());
    }

    /// <summary>Each restart waits the pause, so a window holds at most one domain per pause, and
    /// one more. Returns the domids built.</summary>
    private List<uint> RestartsArePaced(string[] create)
    {
        var clock = Stopwatch.StartNew();
        Run(create);
        var domids = new List<uint>();
        while (domids.Count < 4 && clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            Thread.Sleep(250);
            domids.AddRange(Created(Run("dmesg", "-c").Stdout));
        }
        var window = clock.Elapsed;
        Assert.True(domids.Count >= 4, $"the guest restarted {domids.Count - 1} times in {window}");
        int most = (int)(window / Pause) + 1;
        Assert.True(domids.Count <= most,
            $"{domids.Count} domains were built in {window.TotalSeconds:0.0} s: pausing {Pause.TotalSeconds} s before each restart allows {most}");
        return domids;
    }

    /// <summary>xl destroy at several moments of the loop, by name and by the domid built last,
    /// always succeeds, and nothing restarts afterwards.</summary>
    private void DestroyEndsTheLoop(string[] create, string name, List<uint> domids)
    {
        (double Seconds, bool ByDomId)[] rounds = [(0, false), (0.4, true), (0.8, false), (1.3, true)];
        foreach (var (seconds, byDomId) in rounds)
        {
            if (domids.Count == 0)
            {
                Run(create);
                WaitUntil(() => { domids.AddRange(Created(Run("dmesg", "-c").Stdout)); return domids.Count > 0; }, "the guest was not built");
            }
            Thread.Sleep(TimeSpan.FromSeconds(seconds));
            if (byDomId) domids.AddRange(Created(Run("dmesg", "-c").Stdout));
            string target = byDomId ? domids[^1].ToString() : name;
            var r = _xl.Run("destroy", target);
            string when = $"xl destroy {target}, {seconds} s into a round of {name}";
            Assert.True(r.ExitCode == 0, $"{when}\n{r}");
            Assert.DoesNotContain("invalid domain identifier", r.Stderr);

            // For two pauses (a pending restart would come after one), no domain has the name and none is built.
            Run("dmesg", "-c");
            for (int i = 0; i < 2; i++)
            {
                Thread.Sleep(Pause);
                Assert.DoesNotContain(name, Names());
            }
            var later = Run("dmesg").Stdout;
            Assert.True(Created(later).Count == 0, $"{when}: a domain was built afterwards\n{later}");
            domids.Clear();
        }
    }

    private XlResult Run(params string[] args)
    {
        var r = _xl.Run(args);
        Assert.True(r.ExitCode == 0, $"xl {string.Join(' ', args)}\n{r}");
        return r;
    }

    private static List<uint> Created(string dmesg) => [.. CreatedLine().Matches(dmesg).Select(m => uint.Parse(m.Groups[1].Value))];

    /// <summary>The first column of xl list: every domain's name.</summary>
    private List<string> Names() =>
        [.. Run("list").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(l => l.Split(' ', 2)[0])];

    /// <summary>The daemon's pid: the same one throughout means it never died (xl would start another).</summary>
    private string DaemonPid() => File.ReadAllText(Path.Combine(_xl.RunDir, "xensharpd.pid")).Trim();

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, what);
            Thread.Sleep(200);
        }
    }
}
