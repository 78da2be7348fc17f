using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// A guest firing random hypercalls for a minute (tests/guests/fuzz.c) must leave the hypervisor,
/// the daemon and the domains beside it intact: neighbours booted meanwhile still pass all their
/// checks, the fuzzer itself survives to report, and xl still answers.
/// </summary>
public sealed partial class HypercallFuzzTests : IDisposable
{
    private readonly XlHost _xl = new();

    public void Dispose() => _xl.Dispose();

    [GeneratedRegex(@"^DONE passed=(\d+) failed=(\d+) skipped=(\d+)\s*$", RegexOptions.Multiline)]
    private static partial Regex DoneLine();

    /// <summary>The report in the hypervisor's console, where the fuzzer's random console_io writes may
    /// precede it on the same line.</summary>
    [GeneratedRegex(@"DONE passed=(\d+) failed=(\d+) skipped=(\d+)\s*$", RegexOptions.Multiline)]
    private static partial Regex DoneInLine();

    [GeneratedRegex(@"^fuzz\s+(\d+)\s", RegexOptions.Multiline)]
    private static partial Regex FuzzListed();

    private static string Cfg(string guest)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", guest + ".elf")), $"{guest}.elf is not built (make -C tests/guests)");
        return Repository.PathOf("tests", "guests", guest + ".cfg");
    }

    private void BootNeighbour(string guest)
    {
        var r = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", Cfg(guest));
        var text = r.Stdout.Replace("\r", "");
        var done = DoneLine().Match(text);
        Assert.True(done.Success, $"neighbour {guest} never reported DONE while the fuzzer ran\n{r}");
        Assert.True(done.Groups[2].Value == "0" && !text.Contains("\nFAIL "), $"neighbour {guest} failed checks while the fuzzer ran\n{r}");
    }

    [Fact, Trait("Feature", "x86/PVH")]
    public void RandomHypercallsForAMinuteLeaveEverythingIntact()
    {
        var created = _xl.Run("create", Cfg("fuzz"));
        Assert.True(created.ExitCode == 0, created.ToString());

        // Keep booting neighbours for as long as the fuzzer runs (60 s of its own time).
        var neighbours = new[] { "evtchn2l", "gnttab" };
        int booted = 0;
        string? fuzzId = null;
        var limit = Stopwatch.StartNew();
        while (true)
        {
            var list = _xl.Run("list");
            Assert.True(list.ExitCode == 0, $"xl list failed while the fuzzer ran\n{list}");
            // xl starts a daemon when none answers: the one holding the fuzzer is gone.
            Assert.False(list.Stderr.Contains("starting xensharpd"), $"the daemon died while the fuzzer ran\n{DaemonLog()}");
            var listed = FuzzListed().Match(list.Stdout);
            if (!listed.Success) break;
            fuzzId ??= listed.Groups[1].Value;
            Assert.True(limit.Elapsed < TimeSpan.FromMinutes(5), $"the fuzzer never finished\n{list}\n{ConsoleLog()}");
            BootNeighbour(neighbours[booted++ % neighbours.Length]);
        }
        var log = ConsoleLog().Replace("\r", "");
        // The report goes to both of the fuzzer's consoles. Its PV console can go quiet partway (a known,
        // unexplained loss of the PV console under the fuzzer's own hypercalls, while the guest runs on), so
        // when the PV console's log lacks it, the report is read from its lines in the hypervisor's console.
        var report = log;
        var done = DoneLine().Match(report);
        if (!DoneLine().IsMatch(FuzzLog()) && fuzzId is not null)
        {
            string prefix = $"(d{fuzzId}) ";
            report = string.Join('\n', _xl.Run("dmesg").Stdout.Replace("\r", "").Split('\n')
                .Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).Select(l => l[prefix.Length..]));
            done = DoneInLine().Match(report);
        }
        Assert.True(done.Success, $"the fuzzer did not survive to report DONE\n{log}");
        Assert.True(done.Groups[2].Value == "0", $"the fuzzer reported failures\n{log}");
        Assert.Contains("PASS fuzz.survived", report);
        Assert.True(booted >= 2, $"only {booted} neighbours ran beside the fuzzer\n{log}");

        var info = _xl.Run("info");
        Assert.True(info.ExitCode == 0, $"the daemon no longer answers xl info\n{info}");
        var after = _xl.Run("list");
        Assert.True(after.ExitCode == 0, after.ToString());
        Assert.Matches(@"(?m)^Domain-0\s+0\s", after.Stdout);
        BootNeighbour("evtchn2l");
    }

    private string DaemonLog()
    {
        var path = Path.Combine(_xl.RunDir, "xensharpd.log");
        return File.Exists(path) ? File.ReadAllText(path) : $"(no {path})";
    }

    /// <summary>The fuzzer's PV console log.</summary>
    private string FuzzLog()
    {
        var path = Path.Combine(_xl.RunDir, "console", "fuzz.log");
        return File.Exists(path) ? File.ReadAllText(path).Replace("\r", "") : $"(no {path})";
    }

    /// <summary>The fuzzer's console and the hypervisor's log, which says how a domain ended.</summary>
    private string ConsoleLog()
    {
        var console = FuzzLog();
        var daemon = DaemonLog().Split('\n');
        return $"{console}\n--- xl dmesg\n{_xl.Run("dmesg").Stdout}\n--- xensharpd.log (end)\n{string.Join('\n', daemon[Math.Max(0, daemon.Length - 40)..])}";
    }
}
