using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Boots each freestanding test kernel of tests/guests through `xl create -c`, as a user would, and
/// reads its report: every check must PASS (or SKIP with a reason), ending with its DONE line.
/// </summary>
public sealed partial class GuestConformanceTests : IClassFixture<GuestConformanceTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;

    public GuestConformanceTests(Host host) => _xl = host.Xl;

    [GeneratedRegex(@"^(PASS|FAIL|SKIP) ([a-z0-9_.]+)(?::\s*(.*))?$", RegexOptions.Multiline)]
    private static partial Regex ReportLine();

    [GeneratedRegex(@"^DONE passed=(\d+) failed=(\d+) skipped=(\d+)\s*$", RegexOptions.Multiline)]
    private static partial Regex DoneLine();

    internal sealed record GuestReport(string Name, IReadOnlyList<(string Verdict, string Check, string Detail)> Checks, int Passed, int Failed, int Skipped);

    internal GuestReport Boot(string guest, params string[] overrides)
    {
        var cfg = Repository.PathOf("tests", "guests", guest + ".cfg");
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", guest + ".elf")), $"{guest}.elf is not built (make -C tests/guests)");
        var r = _xl.Run(TimeSpan.FromMinutes(3), ["create", "-c", cfg, .. overrides]);
        var text = r.Stdout.Replace("\r", "");
        var done = DoneLine().Match(text);
        if (!done.Success)
            Assert.Fail($"{guest} never reported DONE\n{r}{Witnesses(guest)}");
        var checks = ReportLine().Matches(text).Select(m => (m.Groups[1].Value, m.Groups[2].Value, m.Groups[3].Value)).ToList();
        var report = new GuestReport(guest, checks, int.Parse(done.Groups[1].Value), int.Parse(done.Groups[2].Value), int.Parse(done.Groups[3].Value));
        var failures = checks.Where(c => c.Item1 == "FAIL").Select(c => $"{c.Item2}: {c.Item3}").ToList();
        Assert.True(report.Failed == 0 && failures.Count == 0, $"{guest}: {report.Failed} failed\n  " + string.Join("\n  ", failures) + "\n" + r);
        int shown = checks.Count(c => c.Item1 == "PASS");
        if (report.Passed != shown)
            Assert.Fail($"{guest} reported {report.Passed} passed, its console shows {shown} PASS lines\n{r}{Witnesses(guest)}");
        Assert.True(report.Passed > 0, $"{guest} passed nothing\n{r}");
        // The guest powered off with on_poweroff="destroy": nothing of it may remain.
        Assert.DoesNotContain(guest, _xl.Run("list").Stdout);
        return report;
    }

    /// <summary>What else saw the guest's output when xl console missed some: the daemon's log of its console (what the
    /// backend took from the ring) and the hypervisor's console (its CONSOLEIO_write copies), so a loss can be placed.</summary>
    private string Witnesses(string guest)
    {
        string log = Path.Combine(_xl.RunDir, "console", guest + ".log");
        string logged = File.Exists(log) ? File.ReadAllText(log) : "(none)";
        string dmesg = _xl.Run("dmesg").Stdout;
        static string Tail(string s, int n) => s.Length > n ? s[^n..] : s;
        return $"\n--- console log (tail)\n{Tail(logged, 3000)}\n--- xl dmesg (tail)\n{Tail(dmesg, 3000)}";
    }

    private static void NoSkips(GuestReport report, params string[] allowed)
    {
        var skipped = report.Checks.Where(c => c.Verdict == "SKIP" && !allowed.Any(a => c.Check.StartsWith(a))).ToList();
        Assert.True(skipped.Count == 0, $"{report.Name} skipped: " + string.Join("; ", skipped.Select(s => $"{s.Check}: {s.Detail}")));
    }

    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "PV Console (xenconsoled)")]
    public void Hello() => NoSkips(Boot("hello"));




    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "Dynamic memory control")]
    public void Memory() => NoSkips(Boot("memory"));

    /// <summary>A 64-bit PV kernel (type = "pv"): built by the PV builder, it runs in ring 3 on validated page tables
    /// and checks the PV MMU's updates and refusals, its trap table, HYPERVISOR_iret and an event upcall.</summary>
    [Fact, Trait("Feature", "x86/PV")]
    public void PvMmu() => NoSkips(Boot("pvmmu"));

    /// <summary>A 32-bit PAE PV kernel (the compat ABI): built by the compat PV builder, it runs in ring 1 on PAE
    /// tables under an L3 and checks the INT $0x82 hypercall page, the compat mmuext_op and update_va_mapping, the
    /// refusals a 32-bit guest gets, its trap table, HYPERVISOR_iret and an event upcall in the 32-bit layouts.</summary>
    [Fact, Trait("Feature", "x86/PV")]
    public void PvMmu32() => NoSkips(Boot("pvmmu32"));

    /// <summary>The hypercall ABI of a 32-bit PV guest: xen_version, memory_op, the grant table (setup_table's 32-bit
    /// frame list of machine frames, mapped and written), event channels, vcpu_op's 32-bit runstate, set_timer_op.</summary>
    [Fact, Trait("Feature", "x86/PV")]
    public void PvAbi32() => NoSkips(Boot("pvabi32"));

    /// <summary>What a 32-bit PV guest has of Xen's at the top of its space and from its user space: the compat M2P
    /// at 0xF5800000 (XENMEM_machphys_mapping, the table against the p2m, Xen's read-only superpage slots in its top
    /// L2 and the refusals to change, map or write them), INT $0x80 as a direct trap, SYSENTER and SYSCALL through
    /// CALLBACKTYPE_sysenter and syscall32 with Xen's frames, and #GP for each when the guest has not allowed it.</summary>
    [Fact, Trait("Feature", "x86/PV")]
    public void PvSys32() => NoSkips(Boot("pvsys32"));

    /// <summary>memory = 32, maxmem = 64: the memory map covers maxmem, the guest runs populate-on-demand
    /// from a cache of its target and balloons down to it.</summary>
    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "Populate-on-demand memory")]
    public void PopulateOnDemand() => NoSkips(Boot("pod"));

    /// <summary>A guest that touches more than its PoD cache holds is crashed by the hypervisor; the daemon
    /// and its other guests carry on.</summary>
    [Fact, Trait("Feature", "Populate-on-demand memory")]
    public void PopulateOnDemandCacheRunningDryCrashesTheGuestAlone()
    {
        var cfg = Repository.PathOf("tests", "guests", "pod.cfg");
        var r = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", cfg, "extra=\"crash=1\"");
        var text = r.Stdout.Replace("\r", "");
        Assert.Contains("# touching", text);
        Assert.DoesNotContain("DONE", text);
        Assert.DoesNotContain("FAIL", text);
        Assert.Contains("out of PoD memory", _xl.Run("dmesg").Stdout);
        // on_crash = "destroy": the domain is gone, and the daemon still builds and runs guests.
        AssertCrashedAndGone("pod");
        NoSkips(Boot("pod"));
    }

    /// <summary>A guest crashed with on_crash = "destroy" is gone within 30 s, and the daemon still answers.</summary>
    private void AssertCrashedAndGone(string name)
    {
        XlResult list;
        for (int i = 0; (list = _xl.Run("list")).Stdout.Contains(name) && i < 300; i++)
            Thread.Sleep(100);
        Assert.Equal(0, list.ExitCode);
        Assert.DoesNotContain(name, list.Stdout);
    }

    /// <summary>Code run 20,000 times (so decoded, cached and compiled) in a frame the guest then gives back with
    /// decrease_reservation: the next fetch from it finds no RAM and the domain is crashed, as Xen crashes a guest
    /// fetching from a gfn with no p2m entry; nothing the engine kept of that code runs.</summary>
    [Fact, Trait("Feature", "x86/PVH")]
    public void CodeInAGivenBackFrameDoesNotRunAgain()
    {
        var cfg = Repository.PathOf("tests", "guests", "codefree.cfg");
        var r = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", cfg);
        var text = r.Stdout.Replace("\r", "");
        Assert.Contains("PASS codefree.ran", text);
        Assert.Contains("PASS codefree.decrease_reservation", text);
        Assert.Contains("# calling the code in the given-back frame", text);
        Assert.DoesNotContain("FAIL", text);
        Assert.Contains("instruction fetch from non-RAM guest-physical", _xl.Run("dmesg").Stdout);
        AssertCrashedAndGone("codefree");
    }

    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "Event Channel 2-level ABI")]
    public void EventChannels2Level() => NoSkips(Boot("evtchn2l"));

    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "Event Channel FIFO ABI")]
    public void EventChannelsFifo() => NoSkips(Boot("evtchnfifo"));


    [Fact, Trait("Feature", "x86/PVH")]
    public void Time() => NoSkips(Boot("time"));

    [Fact, Trait("Feature", "Hypervisor emulated platform devices")]
    public void HvmPlatform() => NoSkips(Boot("hvmplat"));

    [Fact, Trait("Feature", "x86/PVH")]
    public void BadPointers() => NoSkips(Boot("badptr"));

    [Fact, Trait("Feature", "x86/PVH")]
    public void XenVersion() => NoSkips(Boot("xen_version"));

    /// <summary>The same hypercall checks from 32-bit kernels, through Xen's compat ABI.</summary>
    [Theory, Trait("Feature", "x86/PVH"), Trait("Feature", "Event Channel 2-level ABI"), Trait("Feature", "Event Channel FIFO ABI"), Trait("Feature", "Grant Table v1")]
    [InlineData("xen_version32")]
    [InlineData("memory32")]
    [InlineData("evtchn2l32")]
    [InlineData("evtchnfifo32")]
    [InlineData("gnttab32")]
    [InlineData("time32")]
    public void Compat32(string guest) => NoSkips(Boot(guest));

    [Fact, Trait("Feature", "x86/PVH"), Trait("Feature", "Grant Table v1"), Trait("Feature", "Grant Table v2")]
    public void GrantTables() => NoSkips(Boot("gnttab"));

    [Fact, Trait("Feature", "x86 system architecture emulation"), Trait("Feature", "Hypervisor emulated LAPIC")]
    public void Smp() => NoSkips(Boot("smp"));

    /// <summary>One vCPU balloons out a page the other keeps storing to; pages populated meanwhile stay zero.</summary>
    [Fact, Trait("Feature", "Dynamic memory control")]
    public void BalloonUnderARunningSibling() => NoSkips(Boot("balloon"));

    [Fact, Trait("Feature", "x86 instruction emulation"), Trait("Feature", "x86 system architecture emulation")]
    public void Cpu32() => NoSkips(Boot("cpu32"));

    [Fact, Trait("Feature", "x86 instruction emulation"), Trait("Feature", "x86 system architecture emulation")]
    public void Cpu64() => NoSkips(Boot("cpu64"));

    /// <summary>Task switches, call gates, segment limits, debug registers and virtual-8086 mode, from inside guests.</summary>
    [Theory, Trait("Feature", "x86 system architecture emulation")]
    [InlineData("tasks32")]
    [InlineData("gates32")]
    [InlineData("limits32")]
    [InlineData("debug")]
    [InlineData("debug32")]
    [InlineData("vm86_32")]
    public void SystemArchitecture(string guest) => NoSkips(Boot(guest));
}
