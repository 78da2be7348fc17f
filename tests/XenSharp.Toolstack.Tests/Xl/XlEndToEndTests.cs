using System.Text;
using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Xl;

/// <summary>Runs the repository's ./xl as a user types it, against a daemon of its own
/// (XENSHARP_RUNDIR), and stops that daemon at the end.</summary>
public sealed class XlSession : IDisposable
{
    public string Root { get; }
    public string RunDir { get; }
    public string Work { get; }

    /// <summary>Variables xl (and the daemon it starts) runs with besides the run directory.</summary>
    public Dictionary<string, string> Environment { get; } = [];

    public XlSession()
    {
        string dir = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(dir, "XenSharp.slnx"))) dir = Path.GetDirectoryName(dir) ?? throw new InvalidOperationException("repository root not found");
        Root = dir;
        Work = Directory.CreateTempSubdirectory("xl-e2e").FullName;
        RunDir = Path.Combine(Work, "run");
    }

    public (int Code, string Out, string Err) Xl(params string[] args) => XlWithInput(null, args);

    /// <summary>Runs xl with <paramref name="input"/> on its standard input (then end of input).</summary>
    public (int Code, string Out, string Err) XlWithInput(string? input, params string[] args)
    {
        var psi = new ProcessStartInfo(Path.Combine(Root, "xl"))
        { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false, WorkingDirectory = Work };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSHARP_RUNDIR"] = RunDir;
        foreach (var (k, v) in Environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        if (input is not null) p.StandardInput.Write(input);
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(true); throw new TimeoutException($"xl {string.Join(' ', args)}"); }
        return (p.ExitCode, o, err.Result);
    }

    /// <summary>Runs xl and writes <paramref name="input"/> to its standard input (then end of input) once its
    /// output shows <paramref name="prompt"/>.</summary>
    public (int Code, string Out, string Err) XlTypingAfter(string prompt, string input, params string[] args)
    {
        var psi = new ProcessStartInfo(Path.Combine(Root, "xl"))
        { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false, WorkingDirectory = Work };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSHARP_RUNDIR"] = RunDir;
        foreach (var (k, v) in Environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        // A prompt that never comes ends xl, and with it the read below.
        using var limit = new Timer(_ => { try { p.Kill(true); } catch (InvalidOperationException) { } }, null, TimeSpan.FromMinutes(2), Timeout.InfiniteTimeSpan);
        var o = new StringBuilder();
        var buf = new char[256];
        bool typed = false;
        int n;
        while ((n = p.StandardOutput.Read(buf, 0, buf.Length)) > 0)
        {
            o.Append(buf, 0, n);
            if (!typed && o.ToString().Contains(prompt, StringComparison.Ordinal))
            {
                p.StandardInput.Write(input);
                p.StandardInput.Close();
                typed = true;
            }
        }
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(true); throw new TimeoutException($"xl {string.Join(' ', args)}"); }
        return (p.ExitCode, o.ToString(), err.Result);
    }

    /// <summary>Builds the console-echo test kernel (Guests/console-echo.c) with gcc.</summary>
    public string ConsoleEchoKernel()
    {
        string elf = Path.Combine(Work, "console-echo.elf");
        if (File.Exists(elf)) return elf;
        var psi = new ProcessStartInfo("gcc")
        { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-m32", "-O2", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-nostdlib", "-static", "-no-pie",
                     "-Wl,-Ttext-segment=0x100000", "-Wl,--build-id=none", "-Wl,-e,_start", "-o", elf,
                     Path.Combine(AppContext.BaseDirectory, "Guests", "console-echo.c") })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException("gcc failed: " + err);
        return elf;
    }

    public int? DaemonPid => File.Exists(Path.Combine(RunDir, "xensharpd.pid"))
        && int.TryParse(File.ReadAllText(Path.Combine(RunDir, "xensharpd.pid")).Trim(), out int pid) ? pid : null;

    public void Dispose()
    {
        int? pid = DaemonPid;
        try { Xl("daemon-stop"); } catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException) { }
        if (pid is { } p && Directory.Exists($"/proc/{p}"))
        {
            try { Process.GetProcessById(p).Kill(); } catch (ArgumentException) { }
        }
        try { Directory.Delete(Work, true); } catch (IOException) { }
    }
}

[CollectionDefinition("xl")]
public sealed class XlCollection : ICollectionFixture<XlSession>;

[Collection("xl")]
public sealed class XlEndToEndTests(XlSession s)
{
    private string Guest(string name, string extra = "")
    {
        File.WriteAllBytes(Path.Combine(s.Work, "guest.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        string cfg = Path.Combine(s.Work, name + ".cfg");
        File.WriteAllText(cfg, $"# test guest\nname = \"{name}\"\ntype = \"pvh\"\nkernel = \"guest.elf\"\nmemory = 16\nvcpus = 2\n{extra}");
        return cfg;
    }

    private static readonly Regex ListRow = new(@"^(?<name>\S+)\s+(?<id>\d+)\s+(?<mem>\d+)\s+(?<vcpus>\d+)\s+(?<state>[r-][b-][p-][s-][-rscwS?][d-])\s+(?<time>\d+\.\d)$");

    private Dictionary<string, Match> List()
    {
        var (code, o, e) = s.Xl("list");
        Assert.True(code == 0, e);
        var lines = o.TrimEnd('\n').Split('\n');
        Assert.Equal("Name                                        ID   Mem VCPUs\tState\tTime(s)", lines[0]);
        return lines.Skip(1).Select(l => ListRow.Match(l)).Select(m => { Assert.True(m.Success); return m; })
            .ToDictionary(m => m.Groups["name"].Value);
    }

    [Fact, Trait("Feature", "xl"), Trait("Feature", "JSON output support for xl")]
    public void CreateListDestroy()
    {
        string cfg = Guest("e2e");
        var (code, _, err) = s.Xl("create", cfg);
        Assert.True(code == 0, err);
        Assert.Contains($"Parsing config from {cfg}", err);

        var rows = List();
        Assert.Equal("0", rows["Domain-0"].Groups["id"].Value);
        Assert.Equal("r-----", rows["Domain-0"].Groups["state"].Value);
        var g = rows["e2e"];
        Assert.Equal("16", g.Groups["mem"].Value);
        Assert.Equal("2", g.Groups["vcpus"].Value);
        string id = g.Groups["id"].Value;

        var (_, json, _) = s.Xl("list", "-l", "e2e");
        var arr = JsonNode.Parse(json)!.AsArray();
        Assert.Equal(int.Parse(id), (int)arr[0]!["domid"]!);
        Assert.Equal("e2e", (string)arr[0]!["config"]!["c_info"]!["name"]!);
        Assert.Equal(16384, (long)arr[0]!["config"]!["b_info"]!["target_memkb"]!);

        Assert.Equal(id, s.Xl("domid", "e2e").Out.Trim());
        Assert.Equal("e2e", s.Xl("domname", id).Out.Trim());

        (code, _, err) = s.Xl("destroy", "e2e");
        Assert.True(code == 0, err);
        Assert.False(List().ContainsKey("e2e"));
        (code, _, err) = s.Xl("destroy", "e2e");
        Assert.Equal(1, code);
        Assert.Contains("e2e is an invalid domain identifier (rc=-6)", err);
    }

    [Fact]
    public void CreatePausedWithOverridesThenUnpause()
    {
        string cfg = Guest("ovr");
        var (code, _, err) = s.Xl("create", "-p", cfg, "memory=32", "name=\"ovr2\"");
        Assert.True(code == 0, err);
        var row = List()["ovr2"];
        Assert.Equal("32", row.Groups["mem"].Value);
        Assert.Equal('p', row.Groups["state"].Value[2]);
        Assert.Equal(0, s.Xl("unpause", "ovr2").Code);
        Assert.Equal('-', List()["ovr2"].Groups["state"].Value[2]);
        Assert.Equal(0, s.Xl("destroy", "ovr2").Code);
    }

    [Fact]
    public void BadConfigurationsAndMissingFiles()
    {
        string missing = Path.Combine(s.Work, "missing.cfg");
        var (code, _, err) = s.Xl("create", missing);
        Assert.Equal(1, code);
        Assert.Contains($"Failed to read config file: {missing}: No such file or directory", err);

        string bad = Path.Combine(s.Work, "bad.cfg");
        File.WriteAllText(bad, "name = \"bad\"\ntype = \"pvh\"\nmemory = = 4\n");
        (code, _, err) = s.Xl("create", bad);
        Assert.Equal(1, code);
        Assert.Contains($"{bad}:3: config parsing error near `=': syntax error", err);

        string action = Path.Combine(s.Work, "action.cfg");
        File.WriteAllText(action, "name = \"a\"\ntype = \"pvh\"\nkernel = \"guest.elf\"\non_crash = \"explode\"\n");
        (code, _, err) = s.Xl("create", action);
        Assert.Equal(1, code);
        Assert.Contains($"{action}:4: Unknown on_crash action \"explode\" specified", err);

        string noKernel = Path.Combine(s.Work, "nokernel.cfg");
        File.WriteAllText(noKernel, "name = \"nk\"\ntype = \"pvh\"\nkernel = \"absent.elf\"\nfrobnicate = 1\n");
        (code, _, err) = s.Xl("create", noKernel);
        Assert.Equal(1, code);
        Assert.Contains($"{noKernel}:4: warning: unknown key `frobnicate' ignored", err);
        Assert.Contains($"kernel: {Path.Combine(s.Work, "absent.elf")}: No such file or directory", err);
        Assert.False(List().ContainsKey("nk"));
    }

    [Fact]
    public void PathsThatAreNotRegularFilesSaySo()
    {
        string dir = Directory.CreateDirectory(Path.Combine(s.Work, "a-directory")).FullName;
        var (code, _, err) = s.Xl("create", dir);
        Assert.Equal(1, code);
        Assert.Contains($"Failed to read config file: {dir}: Is a directory", err);

        // A device that never ends and a FIFO nobody writes: an error at once, not a read forever.
        (code, _, err) = s.Xl("create", "/dev/zero");
        Assert.Equal(1, code);
        Assert.Contains("Failed to read config file: /dev/zero: not a regular file", err);
        string fifo = Path.Combine(s.Work, "a-fifo");
        if (!File.Exists(fifo)) Assert.Equal(0, System.Diagnostics.Process.Start("mkfifo", [fifo])!.WaitForExitAsync().Wait(60_000) ? 0 : 1);
        (code, _, err) = s.Xl("create", fifo);
        Assert.Equal(1, code);
        Assert.Contains($"Failed to read config file: {fifo}: not a regular file", err);

        string cfg = Path.Combine(s.Work, "dirkernel.cfg");
        File.WriteAllText(cfg, $"name = \"dk\"\ntype = \"pvh\"\nkernel = \"{dir}\"\nmemory = 16\n");
        (code, _, err) = s.Xl("create", cfg);
        Assert.Equal(1, code);
        Assert.Contains($"kernel: {dir}: Is a directory", err);
        File.WriteAllText(cfg, $"name = \"dk\"\ntype = \"pvh\"\nkernel = \"/dev/zero\"\nmemory = 16\n");
        (code, _, err) = s.Xl("create", cfg);
        Assert.Equal(1, code);
        Assert.Contains("kernel: /dev/zero: not a regular file", err);
        Assert.False(List().ContainsKey("dk"));
    }

    [Fact]
    public void HelloExampleCreatesWhenTheTestKernelIsBuilt()
    {
        string cfg = Path.Combine(s.Root, "examples", "hello-pvh.cfg");
        string elf = Path.Combine(s.Root, "tests", "guests", "build", "hello.elf");
        // Paused, so the domain is still there to list: the hello kernel powers off within a second.
        var (code, _, err) = s.Xl("create", "-p", cfg);
        if (File.Exists(elf))
        {
            Assert.True(code == 0, err);
            Assert.True(List().ContainsKey("hello"));
            Assert.Equal(0, s.Xl("destroy", "hello").Code);
        }
        else
        {
            Assert.Equal(1, code);
            Assert.Contains($"kernel: {elf}: No such file or directory", err);
        }
    }

    private string EchoGuest(string name)
    {
        string elf = s.ConsoleEchoKernel();
        string cfg = Path.Combine(s.Work, name + ".cfg");
        File.WriteAllText(cfg, $"name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{elf}\"\nmemory = 16\non_poweroff = \"destroy\"\n");
        return cfg;
    }

    /// <summary>xl dump-core writes Xen's dump-core format, read back by a C program built on Xen's own
    /// headers (vcpu_guest_context_t, the XEN_ELFNOTE_DUMPCORE_* notes) and by binutils' readelf.</summary>
    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void DumpCoreWritesXensFormat()
    {
        string cfg = EchoGuest("core1");
        Assert.Equal(0, s.Xl("create", cfg).Code);
        try
        {
            string log = Path.Combine(s.RunDir, "console", "core1.log");
            var wait = System.Diagnostics.Stopwatch.StartNew();
            while (!(File.Exists(log) && File.ReadAllText(log).Contains("hello from the console ring")) && wait.Elapsed < TimeSpan.FromSeconds(60))
                Thread.Sleep(50);
            string core = Path.Combine(s.Work, "core1.core");
            var (code, _, err) = s.Xl("dump-core", "core1", core);
            Assert.True(code == 0, err);
            // The guest runs on after the dump.
            Assert.Equal('-', List()["core1"].Groups["state"].Value[2]);

            var readelf = Tool("readelf", "-h", "-S", core);
            Assert.Contains("CORE (Core file)", readelf);
            foreach (var section in new[] { ".note.Xen", ".xen_prstatus", ".xen_shared_info", ".xen_pfn", ".xen_pages" })
                Assert.Contains(section, readelf);

            string checker = Path.Combine(s.Work, "corecheck");
            Tool("gcc", "-O2", "-D__XEN_TOOLS__", "-o", checker, Path.Combine(AppContext.BaseDirectory, "Guests", "corecheck.c"));
            var facts = Tool(checker, core, "hello from the console ring").Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split(' ', 2)).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.Select(p => p[1]).ToList());
            string One(string key) => Assert.Single(facts[key]);
            Assert.Equal("0", One("phnum"));
            Assert.Equal("0", One("none"));
            Assert.Equal("0xf00febee", One("magic")); // XC_CORE_MAGIC_HVM: a translated guest
            Assert.Equal("1", One("vcpus"));
            Assert.Equal("4096", One("pagesize"));
            Assert.Equal("4.14.0", One("xen"));
            Assert.Equal("0.1", One("format"));
            Assert.Equal("1", One("prstatus_ok"));
            Assert.Equal("1", One("shared_info"));
            Assert.Equal("1", One("pages_ok"));
            long pages = long.Parse(One("pages"));
            Assert.Equal(pages, long.Parse(One("pfns")));
            Assert.InRange(pages, 16 * 256, 16 * 256 + 64); // 16 MiB of RAM and the special pages
            // The guest's vCPU is in its kernel (loaded at 1 MiB), online, and its greeting is in the page it was loaded to.
            ulong rip = Convert.ToUInt64(One("rip0"), 16);
            Assert.InRange(rip, 0x100000UL, 0x1fffffUL);
            Assert.True((Convert.ToUInt64(One("flags0"), 16) & 0x20) != 0, "VGCF_online is clear");
            Assert.Contains(facts["found"], f => Convert.ToUInt64(f, 16) is >= 0x100 and < 0x200);
        }
        finally { s.Xl("destroy", "core1"); }
    }

    private string Tool(string file, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} exited {p.ExitCode}: {err.Result}");
        return o;
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void CreateWithConsoleRunsTheGuestEchoesInputAndHonoursPoweroff()
    {
        string cfg = EchoGuest("echo1");
        var (code, o, err) = s.XlWithInput("xyq", "create", "-c", cfg);
        Assert.True(code == 0, err);
        Assert.Contains("hello from the console ring", o);
        Assert.Contains("<x<y", o);
        Assert.Contains("bye", o);

        // on_poweroff="destroy": the guest's ACPI poweroff removed it.
        Assert.False(List().ContainsKey("echo1"));
        string log = File.ReadAllText(Path.Combine(s.RunDir, "console", "echo1.log"));
        Assert.Equal("hello from the console ring\r\n<x<ybye\r\n", log);
        var (_, dmesg, _) = s.Xl("dmesg");
        Assert.Matches(@"\(d\d+\) console-echo: started", dmesg);
        Assert.Matches(@"\(d\d+\) console-echo: powering off", dmesg);
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void ConsoleAttachesAndCtrlRightBracketDetaches()
    {
        string cfg = EchoGuest("echo2");
        Assert.Equal(0, s.Xl("create", cfg).Code);
        // Attach once the guest has written its greeting (kept for the first client), so that the
        // detach key cannot arrive before there is anything to show.
        string log = Path.Combine(s.RunDir, "console", "echo2.log");
        var wait = System.Diagnostics.Stopwatch.StartNew();
        while (!(File.Exists(log) && File.ReadAllText(log).Contains("hello from the console ring")) && wait.Elapsed < TimeSpan.FromSeconds(60))
            Thread.Sleep(50);
        // Ctrl-] is typed once the greeting shows, as a person would.
        var (code, o, err) = s.XlTypingAfter("hello from the console ring", "\u001d", "console", "echo2");
        Assert.True(code == 0, err);
        Assert.Contains("hello from the console ring", o);
        Assert.True(List().ContainsKey("echo2"));
        Assert.Equal(0, s.Xl("destroy", "echo2").Code);
        Assert.False(List().ContainsKey("echo2"));
    }

    [Fact]
    public void InfoAndDmesgAndHelp()
    {
        var (code, o, _) = s.Xl("info");
        Assert.Equal(0, code);
        Assert.Matches(@"(?m)^nr_cpus                : \d+$", o);
        Assert.Matches(@"(?m)^xen_version            : 4\.14", o);
        (code, o, _) = s.Xl("dmesg");
        Assert.Equal(0, code);
        Assert.Contains("(XEN) Xen version 4.14", o);
        (code, o, _) = s.Xl("help");
        Assert.Equal(0, code);
        Assert.Contains(" create              Create a domain from config file <filename>", o);
    }
}

/// <summary>The daemon's own life: started by the first xl command that needs it, stopped cleanly.</summary>
[Collection("xl")]
public sealed class XlDaemonTests
{
    [Fact]
    public void FirstUseStartsTheDaemonAndDaemonStopLeavesNothingBehind()
    {
        using var s = new XlSession();
        var (code, _, err) = s.Xl("list");
        Assert.True(code == 0, err);
        Assert.Contains("xl: starting xensharpd", err);
        int pid = s.DaemonPid ?? throw new Xunit.Sdk.XunitException("no pid file");
        Assert.True(File.Exists(Path.Combine(s.RunDir, "xl.sock")));
        Assert.True(File.Exists(Path.Combine(s.RunDir, "xenstored", "socket")));

        // A second command reuses the running daemon.
        (code, _, err) = s.Xl("list");
        Assert.Equal(0, code);
        Assert.DoesNotContain("starting", err);

        File.WriteAllBytes(Path.Combine(s.Work, "k.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        File.WriteAllText(Path.Combine(s.Work, "d.cfg"), "name=\"d\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\n");
        (code, _, err) = s.Xl("create", Path.Combine(s.Work, "d.cfg"));
        Assert.True(code == 0, err);

        (code, _, err) = s.Xl("daemon-stop");
        Assert.Equal(0, code);
        Assert.Contains("xl: xensharpd stopped", err);
        Wait.Until(() => !Directory.Exists($"/proc/{pid}"), 50);
        Assert.False(Directory.Exists($"/proc/{pid}"));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xl.sock")));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xenstored", "socket")));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xensharpd.pid")));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xensharpd.lock")));
        Assert.Contains("stopping, destroying 1 domain(s)", File.ReadAllText(Path.Combine(s.RunDir, "xensharpd.log")));
    }

    [Fact]
    public void SigtermStopsTheDaemonCleanly()
    {
        using var s = new XlSession();
        Assert.Equal(0, s.Xl("list").Code);
        int pid = s.DaemonPid ?? throw new Xunit.Sdk.XunitException("no pid file");
        using (var kill = Process.Start("kill", ["-TERM", pid.ToString()])) kill.WaitForExit();
        Wait.Until(() => !Directory.Exists($"/proc/{pid}"), 50);
        Assert.False(Directory.Exists($"/proc/{pid}"));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xl.sock")));
        Assert.False(File.Exists(Path.Combine(s.RunDir, "xensharpd.pid")));
        Assert.EndsWith("xensharpd: stopped\n", File.ReadAllText(Path.Combine(s.RunDir, "xensharpd.log")));
    }
}
