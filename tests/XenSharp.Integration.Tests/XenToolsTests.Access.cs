using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

public sealed partial class XenToolsTests
{
    /// <summary>Runs xen-access in one mode until it has printed <paramref name="expected"/>, then stops it with
    /// SIGINT as a user would (it lifts what it set and disables the ring); returns what it printed.
    /// <paramref name="exitCode"/> is the code xen-access itself ends with (see the altp2m test).</summary>
    private (string Stdout, string Stderr) XenAccess(int domid, string mode, string expected, Action? whileRunning = null, int exitCode = 0,
        TimeSpan? wait = null)
    {
        // xen-access prints with stdio, fully buffered into a pipe: stdbuf makes it line-buffered (same process).
        using var p = Process.Start(_xl.Dom0StartInfo("stdbuf", "-oL", "xen-access", domid.ToString(), mode))!;
        p.StandardInput.Close();
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        string Out() { lock (stdout) return stdout.ToString(); }
        string Err() { lock (stderr) return stderr.ToString(); }
        try
        {
            Assert.True(XlHost.WaitUntil(() => Out().Contains(expected) || p.HasExited, wait ?? TimeSpan.FromMinutes(2)) && !p.HasExited,
                $"xen-access {mode} never printed \"{expected}\"\n{Out()}\n{Err()}");
            whileRunning?.Invoke();
            using (var kill = Process.Start("kill", ["-INT", p.Id.ToString()]))
                kill.WaitForExit();
            Assert.True(p.WaitForExit(TimeSpan.FromMinutes(1)), $"xen-access {mode} did not stop\n{Err()}");
            p.WaitForExit();
            Assert.True(p.ExitCode == (exitCode & 0xFF), $"xen-access {mode} exited with {p.ExitCode}\n{Out()}\n{Err()}");
            Assert.Contains($"xenaccess exit code {exitCode}", Err());
            return (Out(), Err());
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }

    /// <summary>The last "# round" line of the access guest, once it has printed one more.</summary>
    private string NextRound(string name)
    {
        int seen = Regex.Matches(ConsoleLog(name), "# round ").Count;
        Assert.True(XlHost.WaitUntil(() => Regex.Matches(ConsoleLog(name), "# round ").Count > seen, TimeSpan.FromMinutes(2)),
            $"{name} stopped running\n{ConsoleLog(name)}");
        return Regex.Matches(ConsoleLog(name), @"# round \d+ ok=\d breakpoints=\d+ bad=\d+")[^1].Value;
    }

    [Fact, Trait("Feature", "Virtual Machine Introspection")]
    public void XenAccessReportsTheGuestsWritesExecsAndBreakpoints()
    {
        int domid = StartGuest("access", "inspected", "# ready write=");
        try
        {
            var ready = Regex.Match(ConsoleLog("inspected"), @"# ready write=0x([0-9a-f]+) exec=0x([0-9a-f]+) breakpoint=0x([0-9a-f]+)");
            Assert.True(ready.Success, ConsoleLog("inspected"));
            ulong write = Convert.ToUInt64(ready.Groups[1].Value, 16), exec = Convert.ToUInt64(ready.Groups[2].Value, 16),
                breakpoint = Convert.ToUInt64(ready.Groups[3].Value, 16);
            Assert.Equal(0UL, exec & 0xFFF); // the exec target starts a page of its own

            // write: every page is made read-only; the guest's write to its data page is reported, from the byte it
            // wrote, with the vCPU paused until xen-access answered, then once only (xen-access gave the page rwx).
            // The guest is identity-mapped, so the page of an address is its gfn. A second agent is refused meanwhile.
            string busy = "";
            var (written, _) = XenAccess(domid, "write", $"PAGE ACCESS: -w- for GFN {write >> 12:x} (offset {write & 0xFFF:x6})",
                () => busy = Failing("xen-access", domid.ToString(), "write"));
            Assert.Contains("xenaccess is (or was) active on this domain", busy);
            var line = written.Split('\n').Where(l => l.Contains($"for GFN {write >> 12:x} ")).ToArray();
            Assert.Single(line);
            Assert.Contains("(vcpu 0 [p], altp2m view 0)", line[0]);
            Assert.DoesNotContain("--x", written);
            Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("inspected"));

            // exec: every page loses execute; the call into the target's page is reported at its first byte.
            var (executed, _) = XenAccess(domid, "exec", $"PAGE ACCESS: --x for GFN {exec >> 12:x} (offset 000000)");
            Assert.Single(executed.Split('\n').Where(l => l.Contains($"for GFN {exec >> 12:x} ")));
            Assert.DoesNotContain("-w-", executed);
            Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("inspected"));

            // breakpoint: each INT3 the guest runs is reported at its address, then re-injected into the guest, whose
            // own #BP handler counts it with the return address past the INT3 (its rounds check that).
            var (breaks, _) = XenAccess(domid, "breakpoint", $"Breakpoint: rip={breakpoint:x16}, gfn={breakpoint >> 12:x} (vcpu 0)");
            var reported = breaks.Split('\n').Where(l => l.StartsWith("Breakpoint:", StringComparison.Ordinal)).ToArray();
            Assert.NotEmpty(reported);
            Assert.All(reported, l => Assert.Equal($"Breakpoint: rip={breakpoint:x16}, gfn={breakpoint >> 12:x} (vcpu 0)", l));
            var before = Regex.Match(NextRound("inspected"), @"breakpoints=(\d+) bad=(\d+)");
            Assert.Equal("0", before.Groups[2].Value);
            // With xen-access gone, nothing is intercepted or restricted any more and the guest runs on unharmed.
            var after = Regex.Match(NextRound("inspected"), @"ok=1 breakpoints=(\d+) bad=0");
            Assert.True(after.Success, ConsoleLog("inspected"));
            Assert.True(int.Parse(after.Groups[1].Value) > int.Parse(before.Groups[1].Value));
        }
        finally
        {
            _xl.Run("destroy", "inspected");
        }
    }

    /// <summary>xen-access sets the access of every gfn below the domain's highest one in its view, one hypercall
    /// each: a PVH domain's special pages sit just below 4 GiB, so about a million of them before the first event.</summary>
    private static readonly TimeSpan Altp2mSetup = TimeSpan.FromMinutes(10);

    [Fact, Trait("Feature", "Alternative p2m")]
    public void XenAccessAltp2mModesRestrictAViewAndStepThroughTheDefaultOne()
    {
        int domid = StartGuest("access", "viewed", "# ready write=", "altp2m=\"external\"");
        try
        {
            var ready = Regex.Match(ConsoleLog("viewed"), @"# ready write=0x([0-9a-f]+) exec=0x([0-9a-f]+)");
            Assert.True(ready.Success, ConsoleLog("viewed"));
            ulong write = Convert.ToUInt64(ready.Groups[1].Value, 16), exec = Convert.ToUInt64(ready.Groups[2].Value, 16);

            // altp2m_write: xen-access makes view 1 with every page read-only and switches the vCPU to it. Each write
            // is reported from view 1; xen-access answers by switching the vCPU to view 0 with single-step on, the
            // write completes there, the step is reported (from view 0) and the vCPU goes back to view 1. So the
            // guest's data page is reported round after round (the view keeps its restriction), and its writes land.
            // xen-access ends by turning single-step off for vCPUs 0-31 and keeps the last answer as its exit code:
            // -EINVAL for vCPU 31 of this one-vCPU domain, as on Xen, hence "exit code -1".
            string writeLine = $"PAGE ACCESS: -w- for GFN {write >> 12:x} (offset {write & 0xFFF:x6})";
            var (written, _) = XenAccess(domid, "altp2m_write", writeLine, () =>
            {
                Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("viewed"));
                Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("viewed"));
            }, exitCode: -1, wait: Altp2mSetup);
            var reports = written.Split('\n').Where(l => l.StartsWith(writeLine, StringComparison.Ordinal)).ToArray();
            Assert.True(reports.Length >= 2, written);
            Assert.All(reports, l => Assert.EndsWith("(vcpu 0 [p], altp2m view 1)", l));
            Assert.DoesNotContain("--x", written);
            Assert.Matches(@"Singlestep: rip=[0-9a-f]{16}, vcpu 0, altp2m 0\n\tSwitching altp2m to view 1!", written);
            Assert.DoesNotContain(", altp2m 1\n", written);
            // With xen-access gone the views are gone and the guest runs on unrestricted.
            Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("viewed"));

            // altp2m_exec: view 1 takes execute away from every page; each instruction fetched in it is reported and
            // stepped in view 0, so the call into the exec target's own page is reported at its first byte.
            var (executed, _) = XenAccess(domid, "altp2m_exec", $"PAGE ACCESS: --x for GFN {exec >> 12:x} (offset 000000)", exitCode: -1, wait: Altp2mSetup);
            Assert.Contains("(vcpu 0 [p], altp2m view 1)", executed);
            Assert.DoesNotContain("-w-", executed);
            Assert.Contains("Switching altp2m to view 1!", executed);
            Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("viewed"));
        }
        finally
        {
            _xl.Run("destroy", "viewed");
        }
    }

    [Fact, Trait("Feature", "Alternative p2m")]
    public void Altp2mIsRefusedUnlessTheConfigurationAllowsIt()
    {
        int domid = StartGuest("access", "plain", "# ready write=");
        try
        {
            // HVM_PARAM_ALTP2M is XEN_ALTP2M_disabled: HVMOP_altp2m_set_domain_state answers -EINVAL.
            var err = Failing("xen-access", domid.ToString(), "altp2m_write");
            Assert.Contains("Error -1 enabling altp2m on domain!", err);
            Assert.Matches(@"ok=1 breakpoints=\d+ bad=0", NextRound("plain"));
        }
        finally
        {
            _xl.Run("destroy", "plain");
        }
    }

    [Fact, Trait("Feature", "Argo: Inter-domain message delivery by hypercall")]
    public void ArgoIsOffByDefault()
    {
        var r = _xl.Run("create", Repository.PathOf("tests", "guests", "argo.cfg"), "name=\"argoless\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("argoless").Contains("DONE"), TimeSpan.FromMinutes(2)), ConsoleLog("argoless"));
        Assert.Contains("PASS argo.off_by_default", ConsoleLog("argoless"));
        Assert.Contains("failed=0", ConsoleLog("argoless"));
    }
}
