namespace XenSharp.Integration.Tests;

/// <summary>`xl trigger`, `xl debug-keys` and device/TSC configuration through the real xl, against a private daemon.</summary>
public sealed class XlTriggerAndDebugKeysTests : IClassFixture<XlTriggerAndDebugKeysTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;

    public XlTriggerAndDebugKeysTests(Host host) => _xl = host.Xl;

    private static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > until)
                return false;
            Thread.Sleep(200);
        }
        return true;
    }

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    [Fact, Trait("Feature", "xl"), Trait("Feature", "Hypervisor 'debug keys'"), Trait("Feature", "x86/PVH")]
    public void TriggerNmiAndDebugKeyQReachTheGuest()
    {
        var cfg = Repository.PathOf("tests", "guests", "trigger.cfg");
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "trigger.elf")), "trigger.elf is not built (make -C tests/guests)");
        var r = _xl.Run("create", cfg, "tsc_mode=\"always_emulate\"", "cmdline=\"tsc=1\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(WaitUntil(() => ConsoleLog("trigger").Contains("# waiting"), TimeSpan.FromMinutes(3)), "the guest never got ready\n" + ConsoleLog("trigger"));

        // Triggers Xen has no path for here fail as libxl reports them; the domain is unharmed.
        var power = _xl.Run("trigger", "trigger", "power");
        Assert.NotEqual(0, power.ExitCode);
        Assert.Contains("Send trigger 'power' failed: Invalid argument", power.Stderr);
        var bogus = _xl.Run("trigger", "trigger", "bogus");
        Assert.NotEqual(0, bogus.ExitCode);
        Assert.Contains("Invalid trigger \"bogus\"", bogus.Stderr);
        var novcpu = _xl.Run("trigger", "trigger", "nmi", "3");
        Assert.Contains("Send trigger 'nmi' failed: No such process", novcpu.Stderr);

        var nmi = _xl.Run("trigger", "trigger", "nmi");
        Assert.True(nmi.ExitCode == 0, nmi.ToString());
        var keys = _xl.Run("debug-keys", "q");
        Assert.True(keys.ExitCode == 0, keys.ToString());

        Assert.True(WaitUntil(() => !_xl.Run("list").Stdout.Contains("trigger"), TimeSpan.FromMinutes(3)), "the guest did not finish\n" + ConsoleLog("trigger"));
        var log = ConsoleLog("trigger");
        Assert.Contains("PASS trigger.tsc_mode", log);
        Assert.Contains("PASS trigger.nmi", log);
        Assert.Contains("PASS trigger.virq_debug", log);
        Assert.Contains("failed=0", log);

        var dmesg = _xl.Run("dmesg").Stdout;
        Assert.Contains("(XEN) 'q' pressed -> dumping domain info", dmesg);
        Assert.Matches(@"\(XEN\) Notifying guest \d+:0 \(virq 1, port \d+\)", dmesg);
    }

    [Fact, Trait("Feature", "xl"), Trait("Feature", "Hypervisor 'debug keys'")]
    public void DebugKeysPrintIntoTheConsoleRing()
    {
        var r = _xl.Run("debug-keys", "hm");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("", r.Stdout);
        var dmesg = _xl.Run("dmesg").Stdout;
        Assert.Contains("(XEN) 'h' pressed -> showing installed handlers", dmesg);
        Assert.Contains("(XEN)  key 'r' (ascii '72') => dump run queues", dmesg);
        Assert.Contains("(XEN) Physical memory information:", dmesg);
        Assert.NotEqual(0, _xl.Run("trigger", "nosuchdomain", "nmi").ExitCode);
    }

    [Fact, Trait("Feature", "xl")]
    public void DisksAndVifsAreParsed()
    {
        var cfg = Path.Combine(_xl.RunDir, "devices.cfg");
        File.WriteAllText(cfg, $"name = \"devices\"\ntype = \"pvh\"\nkernel = \"{Repository.PathOf("tests", "guests", "build", "hello.elf")}\"\n" +
            "disk = [ 'phy:/dev/vg/root,xvda,w' ]\nvif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]\n");
        var r = _xl.Run("create", "-n", cfg);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.DoesNotContain("warning: disk", r.Stderr);
        Assert.DoesNotContain("warning: vif", r.Stderr);
        Assert.Contains("\"pdev_path\": \"/dev/vg/root\"", r.Stdout);
        Assert.Contains("\"bridge\": \"xenbr0\"", r.Stdout);

        File.WriteAllText(cfg, "name = \"devices\"\ntype = \"pvh\"\nkernel = \"/k\"\n\ndisk = [ '/dev/sdb' ]\n");
        r = _xl.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("devices.cfg:5: config parsing error in disk specification: no vdev specified", r.Stderr);
    }

    [Fact, Trait("Feature", "xl")]
    public void NativeParavirtTscModeIsRefusedAsLibxlDoes()
    {
        var cfg = Repository.PathOf("tests", "guests", "hello.cfg");
        var r = _xl.Run("create", cfg, "name=\"tscpv\"", "tsc_mode=\"native_paravirt\"");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed", r.Stderr);
        Assert.DoesNotContain("tscpv", _xl.Run("list").Stdout);
    }
}
