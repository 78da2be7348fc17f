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
        var missing = _xl.RunDom0("xenhypfs", "cat", "/buildinfo/nothing");
        Assert.NotEqual(0, missing.ExitCode);
        var readOnly = _xl.RunDom0("xenhypfs", "write", "/buildinfo/version/major", "5");
        Assert.NotEqual(0, readOnly.ExitCode);
        Assert.Contains("Permission denied", readOnly.Stdout + readOnly.Stderr);
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

            var garbage = _xl.RunDom0("xl", "set-parameters", "console_timestamps=sometimes");
            Assert.NotEqual(0, garbage.ExitCode);
            Assert.Contains("Invalid argument", garbage.Stderr);
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

    [GeneratedRegex(@"^\(XEN\) \[\s*\d+\.\d{6}\]  key 'h'")]
    private static partial Regex BootStamp();

    [GeneratedRegex(@"^\(XEN\) \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]  key 'h'")]
    private static partial Regex DateMsStamp();
}
