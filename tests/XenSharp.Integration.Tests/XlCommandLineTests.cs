using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>The xl command line as a user types it, against a private daemon.</summary>
public sealed class XlCommandLineTests : IClassFixture<XlCommandLineTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;

    public XlCommandLineTests(Host host) => _xl = host.Xl;

    [Fact, Trait("Feature", "xl")]
    public void HelpListsTheCommands()
    {
        var r = _xl.Run("help");
        Assert.True(r.ExitCode == 0, r.ToString());
        foreach (var command in new[] { "create", "list", "destroy", "shutdown", "reboot", "pause", "unpause", "console",
                     "info", "dmesg", "vcpu-list", "vcpu-pin", "vcpu-set", "mem-set", "mem-max", "rename", "domid", "domname",
                     "uptime", "top", "debug-keys", "sysrq", "trigger", "help" })
            Assert.Matches($@"(?m)^ {Regex.Escape(command)}\s+\S", r.Stdout);
    }

    [Fact, Trait("Feature", "xl")]
    public void UnknownCommandFails()
    {
        var r = _xl.Run("no-such-command");
        Assert.NotEqual(0, r.ExitCode);
    }

    [Fact, Trait("Feature", "xl")]
    public void ListShowsDomain0InXensLayout()
    {
        var r = _xl.Run("list");
        Assert.True(r.ExitCode == 0, r.ToString());
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)", lines[0]);
        Assert.Matches(@"^Domain-0\s+0\s+\d+\s+\d+\s+\S+\s+\d+\.\d", lines[1]);
    }

    [Fact, Trait("Feature", "xl")]
    public void MalformedConfigNamesTheLine()
    {
        var cfg = Path.Combine(_xl.RunDir, "bad.cfg");
        File.WriteAllText(cfg, "name = \"bad\"\nmemory = 32\nvcpus = = 2\n");
        var r = _xl.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("bad.cfg:3", r.Stdout + r.Stderr);
    }

    [Fact, Trait("Feature", "xl")]
    public void MissingKernelIsAClearError()
    {
        var cfg = Path.Combine(_xl.RunDir, "nokernel.cfg");
        File.WriteAllText(cfg, "name = \"nokernel\"\ntype = \"pvh\"\nkernel = \"/nonexistent/vmlinuz\"\nmemory = 32\n");
        var r = _xl.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("/nonexistent/vmlinuz", r.Stdout + r.Stderr);
        Assert.DoesNotContain("nokernel", _xl.Run("list").Stdout);
    }
}
