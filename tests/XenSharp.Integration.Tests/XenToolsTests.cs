using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Xen's own tools from Debian's xen-utils-4.17, run unmodified through ./dom0, judge the hypervisor features they
/// exist for: xenhypfs reads the hypervisor file system and writes its runtime parameters, Debian's xl sets them and
/// sends debug keys, and what they change shows in the console ring as Xen's would.
/// </summary>
public sealed partial class XenToolsTests : IClassFixture<XenToolsTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();

        public Host()
        {
            var r = Xl.Run("create", "-p", Repository.PathOf("tests", "guests", "trigger.cfg"), "name=\"watched\"");
            Assert.True(r.ExitCode == 0, r.ToString());
        }

        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;

    public XenToolsTests(Host host) => _xl = host.Xl;

    private XlResult Dom0(params string[] args)
    {
        var r = _xl.RunDom0(args);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    [Fact, Trait("Feature", "Build info")]
    public void XenhypfsReadsTheVersionXlInfoReports()
    {
        var root = Dom0("xenhypfs", "ls", "/").Stdout;
        Assert.Matches(@"<dir>\s+r-\s+buildinfo", root);
        Assert.Matches(@"<dir>\s+r-\s+params", root);

        string major = Dom0("xenhypfs", "cat", "/buildinfo/version/major").Stdout.Trim();
        string minor = Dom0("xenhypfs", "cat", "/buildinfo/version/minor").Stdout.Trim();
        string extra = Dom0("xenhypfs", "cat", "/buildinfo/version/extra").Stdout.Trim();
        var info = Dom0("xl", "info").Stdout;
        Assert.Contains($"xen_major              : {major}", info);
        Assert.Contains($"xen_minor              : {minor}", info);
        Assert.Contains($"xen_extra              : {extra}", info);

        var tree = Dom0("xenhypfs", "tree").Stdout;
        foreach (var leaf in new[] { "changeset", "compile_by", "compile_date", "compile_domain", "compiler", "major", "minor", "extra", "console_timestamps" })
            Assert.Contains(leaf, tree);
        Assert.Contains(Dom0("xenhypfs", "cat", "/buildinfo/changeset").Stdout.Trim(), Dom0("xl", "info").Stdout);
    }

    [Fact, Trait("Feature", "Build info")]
    public void XenhypfsRefusesWhatXenRefuses()
    {
        Failing("xenhypfs", "cat", "/buildinfo/nothing");
        Assert.Contains("Permission denied", Failing("xenhypfs", "write", "/buildinfo/version/major", "5"));
        Assert.Equal("4", Dom0("xenhypfs", "cat", "/buildinfo/version/major").Stdout.Trim());
    }

    [Fact, Trait("Feature", "Runtime parameters"), Trait("Feature", "Hypervisor 'debug keys'")]
    public void SetParametersTimestampsTheConsoleRing()
    {
        try
        {
            Dom0("xl", "set-parameters", "console_timestamps=boot");
            Assert.Equal("boot", Dom0("xenhypfs", "cat", "/params/console_timestamps").Stdout.Trim());
            Dom0("xl", "debug-keys", "h");
            var stamped = Dom0("xl", "dmesg").Stdout.Split('\n').Where(l => l.Contains("=> show this message")).ToArray();
            Assert.NotEmpty(stamped);
            Assert.Matches(BootStamp(), stamped[^1]);

            Assert.Contains("Invalid argument", Failing("xl", "set-parameters", "console_timestamps=sometimes"));
            Assert.Equal("boot", Dom0("xenhypfs", "cat", "/params/console_timestamps").Stdout.Trim());

            Dom0("xenhypfs", "write", "/params/console_timestamps", "datems");
            Dom0("xl", "debug-keys", "h");
            var dated = Dom0("xl", "dmesg").Stdout.Split('\n').Where(l => l.Contains("=> show this message")).ToArray();
            Assert.Matches(DateMsStamp(), dated[^1]);
        }
        finally
        {
            _xl.RunDom0("xl", "set-parameters", "console_timestamps=none");
        }
        Assert.Equal("none", Dom0("xenhypfs", "cat", "/params/console_timestamps").Stdout.Trim());
    }

    [Fact, Trait("Feature", "Hypervisor 'debug keys'")]
    public void DebianXlSendsDebugKeys()
    {
        Dom0("xl", "debug-keys", "q");
        var ring = _xl.Run("dmesg").Stdout;
        int domid = int.Parse(_xl.Run("domid", "watched").Stdout.Trim());
        Assert.Contains($"'q' pressed -> dumping domain info", ring);
        Assert.Matches($@"General information for domain {domid}:", ring);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void LsevtchnShowsTheChannelsXenstoreNames()
    {
        string domid = _xl.Run("domid", "watched").Stdout.Trim();
        var channels = Dom0("lsevtchn", domid).Stdout;
        foreach (var node in new[] { "store/port", "console/port" })
        {
            string port = Dom0("xenstore-read", $"/local/domain/{domid}/{node}").Stdout.Trim();
            Assert.Matches($@"(?m)^\s*{port}: VCPU 0: (Interdomain \(Connected\) - Remote Domain 0, Port \d+|Unbound)", channels);
        }
        Assert.Contains("No such process", Failing("lsevtchn", "4000"));
    }

    [Fact, Trait("Feature", "xentrace")]
    public void XentraceRecordsTheSchedulerAsXenalyzeReadsIt()
    {
        string trace = Path.Combine(_xl.RunDir, "sched.trace");
        using var xentrace = Process.Start(_xl.Dom0StartInfo("xentrace", "-D", "-e", "0x0002f000", "-S", "16", trace))!;
        xentrace.StandardInput.Close();
        var said = new StringBuilder();
        var ready = new ManualResetEventSlim();
        xentrace.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (said) said.AppendLine(e.Data);
            if (e.Data.Contains("change evtmask")) ready.Set();
        };
        xentrace.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (said) said.AppendLine(e.Data); };
        xentrace.BeginErrorReadLine();
        xentrace.BeginOutputReadLine();
        try
        {
            Assert.True(ready.Wait(TimeSpan.FromMinutes(2)), $"xentrace did not start tracing: {said}");
            var r = _xl.Run("create", "-p", Repository.PathOf("tests", "guests", "hello.cfg"), "name=\"traced\"");
            Assert.True(r.ExitCode == 0, r.ToString());
            int domid = int.Parse(_xl.Run("domid", "traced").Stdout.Trim());
            Assert.Equal(0, _xl.Run("unpause", "traced").ExitCode);
            Assert.True(XlHost.WaitUntil(() => _xl.Run("domid", "traced").ExitCode != 0, TimeSpan.FromMinutes(2)), "the traced guest did not finish");

            // xentrace reads the buffers one last time when interrupted.
            using (var kill = Process.Start("kill", ["-INT", xentrace.Id.ToString()]))
                kill.WaitForExit();
            Assert.True(xentrace.WaitForExit(TimeSpan.FromMinutes(1)), $"xentrace did not stop: {said}");
            xentrace.WaitForExit();

            var summary = XlHost.RunProcess(new ProcessStartInfo("xenalyze", ["--summary", trace])
            {
                RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            }, TimeSpan.FromMinutes(1));
            Assert.True(summary.ExitCode == 0, summary.ToString());
            string all = summary.Stdout + summary.Stderr;
            Assert.Contains($"Creating domain {domid}", all);
            Assert.Contains($"|-- Domain {domid} --|", all);
            Assert.Matches(@"running:\s+[1-9]\d*\s", all);
        }
        finally
        {
            if (!xentrace.HasExited) xentrace.Kill();
        }
    }

    [Fact, Trait("Feature", "Blkback")]
    public void XentopShowsADiskWhileItIsAttached()
    {
        string image = Path.Combine(_xl.RunDir, "top.img");
        using (var f = File.Create(image)) f.SetLength(16 << 20);
        Assert.Equal(0, _xl.Run("block-attach", "watched", $"format=raw,vdev=xvdb,access=rw,target={image}").ExitCode);
        try
        {
            Assert.True(XlHost.WaitUntil(() => Vbds() == 1, TimeSpan.FromSeconds(30)), Dom0("xentop", "-b", "-i", "1").Stdout);
            Assert.Matches(@"VBD BlkBack 51728 \[[^\]]*\]\s+OO:\s+0\s+RD:\s+0\s+WR:\s+0", Dom0("xentop", "-b", "-i", "1", "-x").Stdout);
        }
        finally
        {
            _xl.Run("block-detach", "watched", "xvdb");
        }
        Assert.True(XlHost.WaitUntil(() => Vbds() == 0, TimeSpan.FromSeconds(30)), Dom0("xentop", "-b", "-i", "1").Stdout);
    }

    /// <summary>The VBDS column of xentop's line for the watched guest.</summary>
    private int Vbds()
    {
        var lines = Dom0("xentop", "-b", "-i", "1").Stdout.Split('\n');
        var header = lines.First(l => l.Contains("NAME")).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var row = lines.First(l => l.TrimStart().StartsWith("watched ", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return int.Parse(row[Array.IndexOf(header, "VBDS")]);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XenHvmctxShowsTheBootVcpuTheBuilderSetUp()
    {
        string domid = _xl.Run("domid", "watched").Stdout.Trim();
        // The builder's own account of the paused guest: its entry point and where start_info lies (rbx, PVH's ABI).
        string log = File.ReadAllText(Path.Combine(_xl.RunDir, "xensharpd.log"));
        var built = Regex.Match(log, $@"d{domid}: watched built: entry 0x([0-9a-f]+), start info 0x([0-9a-f]+)");
        Assert.True(built.Success, log);
        var ctx = Dom0("xen-hvmctx", domid).Stdout;
        Assert.Contains($"HVM save record for domain {domid}", ctx);
        Assert.Matches($@"rip 0x0*{built.Groups[1].Value}\b", ctx);
        Assert.Matches($@"rbx 0x0*{built.Groups[2].Value}\b", ctx);
        Assert.Contains("can't get record length for dom 4000", Failing("xen-hvmctx", "4000"));
    }

    /// <summary>Runs a program that must fail; returns what it said.</summary>
    private string Failing(params string[] args)
    {
        var r = _xl.RunDom0(args);
        Assert.True(r.ExitCode != 0, r.ToString());
        return r.Stdout + r.Stderr;
    }

    private int XlInfoNumber(string field) =>
        int.Parse(Dom0("xl", "info").Stdout.Split('\n').Single(l => l.StartsWith(field + " ", StringComparison.Ordinal)).Split(':')[1].Trim());

    private int Pool0Cpus() =>
        int.Parse(Dom0("xl", "cpupool-list").Stdout.Split('\n').Single(l => l.StartsWith("Pool-0", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);

    [Fact, Trait("Feature", "Physical CPU Hotplug")]
    public void HptoolTakesAPcpuOfflineAndBack()
    {
        int cpus = XlInfoNumber("nr_cpus");
        Assert.True(cpus >= 2, $"the daemon has {cpus} pCPU(s); pCPU hotplug needs a second one (pCPU 0 stays online)");
        int last = cpus - 1;
        try
        {
            var off = Dom0("xen-hptool", "cpu-offline", last.ToString());
            Assert.Contains($"CPU {last} offlined successfully", off.Stdout);
            Assert.Equal(cpus - 1, XlInfoNumber("nr_cpus"));
            Assert.Contains($"nr_cpus                : {cpus - 1}", _xl.Run("info").Stdout);
            Assert.Equal(cpus - 1, Pool0Cpus());
            Assert.DoesNotContain($"\n{last,3}:", Dom0("xl", "info", "-n").Stdout);
            // Xen's errno: already offline, the boot pCPU, and an offline pCPU cannot join a pool.
            Assert.Contains("error 17", Failing("xen-hptool", "cpu-offline", last.ToString()));
            Assert.Contains("error 22", Failing("xen-hptool", "cpu-offline", "0"));
            Assert.NotEqual(0, _xl.Run("cpupool-cpu-add", "Pool-0", last.ToString()).ExitCode);
        }
        finally
        {
            _xl.RunDom0("xen-hptool", "cpu-online", last.ToString());
        }
        Assert.Equal(cpus, XlInfoNumber("nr_cpus"));
        Assert.Equal(cpus, Pool0Cpus());
        Assert.Contains("error 17", Failing("xen-hptool", "cpu-online", last.ToString()));
    }

    [GeneratedRegex(@"^\(XEN\) \[\s*\d+\.\d{6}\]  key 'h'")]
    private static partial Regex BootStamp();

    [GeneratedRegex(@"^\(XEN\) \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]  key 'h'")]
    private static partial Regex DateMsStamp();
}
