using XenSharp.Xl;
using XenSharp.Xl.Commands;

namespace XenSharp.Toolstack.Tests.Xl;

public class CommandLineTests
{
    private static readonly OptionSpec[] CreateOptions = CommandTable.Lookup("create")!.Options;

    [Fact]
    public void OptionsMayFollowOperandsAndCluster()
    {
        var p = ParsedArgs.Parse("create", ["guest.cfg", "-cp", "memory=256", "--defconfig=x.cfg"], CreateOptions);
        Assert.True(p.Has('c'));
        Assert.True(p.Has('p'));
        Assert.Equal("x.cfg", p.Value('f'));
        Assert.Equal(["guest.cfg", "memory=256"], p.Operands);
    }

    [Fact]
    public void ShortOptionValuesAttachedOrSeparateAndDoubleDashEndsOptions()
    {
        Assert.Equal("a.cfg", ParsedArgs.Parse("create", ["-fa.cfg"], CreateOptions).Value('f'));
        Assert.Equal("a.cfg", ParsedArgs.Parse("create", ["-f", "a.cfg"], CreateOptions).Value('f'));
        Assert.Equal("a.cfg", ParsedArgs.Parse("create", ["--def", "a.cfg"], CreateOptions).Value('f'));
        Assert.Equal(["-c"], ParsedArgs.Parse("create", ["--", "-c"], CreateOptions).Operands);
    }

    [Theory]
    [InlineData("-z", "invalid option -- 'z'")]
    [InlineData("--bogus", "unrecognized option '--bogus'")]
    [InlineData("-f", "option requires an argument -- 'f'")]
    [InlineData("--quiet=1", "option '--quiet' doesn't allow an argument")]
    public void BadOptionsAreUsageErrors(string arg, string message)
    {
        Assert.Equal(message, Assert.Throws<UsageException>(() => ParsedArgs.Parse("create", [arg], CreateOptions)).Message);
    }

    [Theory]
    [InlineData("512", 512 * 1024)]
    [InlineData("512m", 512 * 1024)]
    [InlineData("1g", 1024 * 1024)]
    [InlineData("2048k", 2048)]
    [InlineData("1048576b", 1024)]
    public void MemorySizesDefaultToMegabytes(string text, long kb)
    {
        Assert.Equal(kb, DomainCommands.ParseMemory(text));
    }

    [Fact]
    public void HelpListsEveryCommandOfTheTable()
    {
        var w = new StringWriter();
        Help.Print(w, null);
        string text = w.ToString();
        Assert.StartsWith("Usage xl [-vfNtT] <subcommand> [args]", text);
        foreach (var name in new[] { "create", "list", "destroy", "shutdown", "reboot", "pause", "unpause", "console",
                     "info", "dmesg", "vcpu-list", "vcpu-pin", "vcpu-set", "mem-set", "mem-max", "rename", "domid",
                     "domname", "uptime", "top", "debug-keys", "sysrq", "trigger", "help" })
            Assert.Contains($"\n {name.PadRight(19)} ", text);
    }

    [Fact]
    public void CommandHelpShowsUsageAndOptions()
    {
        var w = new StringWriter();
        Help.Print(w, "shutdown");
        Assert.StartsWith("Usage: xl [-vf] shutdown [options] <-a|Domain>\n\nIssue a shutdown signal to a domain.\n\nOptions:\n", w.ToString());
    }

    [Fact]
    public void MissingOperandsPrintXlsMessage()
    {
        var o = new StringWriter();
        var e = new StringWriter();
        Assert.Equal(2, XlMain.Run(["destroy"], o, e));
        Assert.StartsWith("'xl destroy' requires at least 1 argument.\n", e.ToString());
        Assert.Equal(1, XlMain.Run(["frobnicate"], o, e));
        Assert.Contains("command not implemented", e.ToString());
    }

    [Fact]
    public void CreateDryRunPrintsLibxlJsonWithoutADaemon()
    {
        string dir = Directory.CreateTempSubdirectory("xl-dry").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "g.cfg"), "name=\"g\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=64\n");
            var o = new StringWriter();
            var e = new StringWriter();
            Assert.Equal(0, XlMain.Run(["-N", "create", Path.Combine(dir, "g.cfg"), "vcpus=2"], o, e));
            var json = System.Text.Json.Nodes.JsonNode.Parse(o.ToString())!;
            Assert.Equal("g", (string)json["c_info"]!["name"]!);
            Assert.Equal("pvh", (string)json["c_info"]!["type"]!);
            Assert.Equal(2, (int)json["b_info"]!["max_vcpus"]!);
            Assert.Equal(65536, (long)json["b_info"]!["target_memkb"]!);
            Assert.Equal(Path.Combine(dir, "k.elf"), (string)json["b_info"]!["kernel"]!);
            Assert.Contains($"Parsing config from {Path.Combine(dir, "g.cfg")}", e.ToString());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void CreateReportsMissingAndBadFilesWithoutADaemon()
    {
        string dir = Directory.CreateTempSubdirectory("xl-bad").FullName;
        try
        {
            var o = new StringWriter();
            var e = new StringWriter();
            string missing = Path.Combine(dir, "none.cfg");
            Assert.Equal(1, XlMain.Run(["-N", "create", missing], o, e));
            Assert.Contains($"Failed to read config file: {missing}: No such file or directory", e.ToString());

            string bad = Path.Combine(dir, "bad.cfg");
            File.WriteAllText(bad, "name=\"g\"\ntype=\"pvh\"\nmemory=[1\n");
            e = new StringWriter();
            Assert.Equal(1, XlMain.Run(["-N", "create", bad], o, e));
            Assert.Contains($"{bad}:4: config parsing error near `end of file': syntax error", e.ToString());
        }
        finally { Directory.Delete(dir, true); }
    }
}
