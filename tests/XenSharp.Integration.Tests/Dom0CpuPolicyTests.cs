using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// What Debian's xl sets of a guest's CPU reaches the guest: an xl.cfg `cpuid=` line becomes the policy libxenguest
/// sends with XEN_DOMCTL_set_cpu_policy, and the Debian kernel's /proc/cpuinfo lacks the features it hid while a guest
/// without the line has them; `tsc_mode=` becomes XEN_DOMCTL_settscinfo, which a test kernel reads back from Xen's TSC
/// leaf (0x40000003), and the removed native_paravirt mode is refused by libxl before any domain is left behind.
/// </summary>
public sealed class Dom0CpuPolicyTests(XlHost xl) : IClassFixture<XlHost>
{
    private const string DebianXl = "/usr/lib/xen-4.17/bin/xl";

    [Fact]
    [Trait("Feature", "Dom0 stable libraries"), Trait("Feature", "x86/PVH")]
    public void DebianXlCpuidLineHidesFeaturesFromTheGuest()
    {
        Assert.True(File.Exists(DebianXl), $"{DebianXl} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        Assert.Equal(0, xl.Run("list").ExitCode); // starts the daemon
        string plain = LinuxPvhTests.WriteConfig(xl, store, "cpuplain", memory: 256);
        string hidden = LinuxPvhTests.WriteConfig(xl, store, "cpuhidden", memory: 256);
        // libxl's string form: the host's features less RDRAND (leaf 1 ECX) and BMI2 (leaf 7 EBX), both of which the
        // engine has.
        File.AppendAllText(hidden, "\ncpuid = \"host,rdrand=0,bmi2=0\"\n");
        // The older xend form, one register as 32 characters from bit 31 down: MOVBE (leaf 1 ECX bit 22) cleared,
        // the rest as the default policy has them. libxenguest sends only that leaf.
        string xend = LinuxPvhTests.WriteConfig(xl, store, "cpuxend", memory: 256);
        File.AppendAllText(xend, "\ncpuid = [ \"0x00000001:ecx=xxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxx\" ]\n");
        string[] names = ["cpuplain", "cpuhidden", "cpuxend"];
        try
        {
            foreach (var cfg in new[] { plain, hidden, xend })
                Create(cfg);
            string with = CpuFlags("cpuplain"), without = CpuFlags("cpuhidden"), noMovbe = CpuFlags("cpuxend");
            Assert.Contains(" rdrand ", with);
            Assert.Contains(" bmi2 ", with);
            Assert.Contains(" movbe ", with);
            Assert.DoesNotContain(" rdrand ", without);
            Assert.DoesNotContain(" bmi2 ", without);
            // Only those: what else the guest sees is the same.
            Assert.Equal(with.Replace(" rdrand ", " ").Replace(" bmi2 ", " "), without);
            Assert.Equal(with.Replace(" movbe ", " "), noMovbe);
        }
        finally
        {
            foreach (var name in names)
                xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "destroy", name);
        }
    }

    [Fact]
    [Trait("Feature", "Dom0 stable libraries"), Trait("Feature", "xl")]
    public void DebianXlTscModeReachesTheGuest()
    {
        Assert.True(File.Exists(DebianXl), $"{DebianXl} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
        string kernel = Repository.PathOf("tests", "guests", "build", "trigger.elf");
        Assert.True(File.Exists(kernel), "trigger.elf is not built (make -C tests/guests)");
        Assert.Equal(0, xl.Run("list").ExitCode);
        // The trigger kernel checks the TSC leaf's mode (EBX) and emulation flag (EAX bit 0) against tsc=N.
        foreach (var (mode, number) in new[] { ("always_emulate", 1), ("native", 2), ("default", 0) })
        {
            string name = $"tsc{number}";
            string cfg = Path.Combine(xl.RunDir, name + ".cfg");
            File.WriteAllText(cfg, $"""
                name = "{name}"
                type = "pvh"
                kernel = "{kernel}"
                cmdline = "tsc={number}"
                tsc_mode = "{mode}"
                memory = 32
                vcpus = 1
                """);
            Create(cfg);
            string log = Path.Combine(xl.RunDir, "console", name + ".log");
            Assert.True(XlHost.WaitUntil(() => Read(log).Contains("# waiting"), TimeSpan.FromMinutes(3)), $"{name} never got ready:\n{Read(log)}");
            Assert.Contains("PASS trigger.tsc_mode", Read(log));
            Assert.Contains($"mode {number} ", Read(log));
            var r = xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "destroy", name);
            Assert.True(r.ExitCode == 0, r.ToString());
        }

        // native_paravirt is gone from Xen 4.17: libxl refuses it and no domain is left.
        string removed = Path.Combine(xl.RunDir, "tsc3.cfg");
        File.WriteAllText(removed, File.ReadAllText(Path.Combine(xl.RunDir, "tsc0.cfg"))
            .Replace("\"default\"", "\"native_paravirt\"").Replace("tsc0", "tsc3"));
        var refused = xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "create", removed);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.DoesNotContain("tsc", xl.Run("list").Stdout);
    }

    private void Create(string cfg)
    {
        var r = xl.RunDom0(TimeSpan.FromMinutes(3), "xl", "create", cfg);
        Assert.True(r.ExitCode == 0, $"Debian's xl create {cfg}: {r}");
    }

    /// <summary>Waits for the guest's shell on the console the daemon logs, types at the pty it serves, and returns
    /// the flags line of /proc/cpuinfo, with a space at either end.</summary>
    private string CpuFlags(string name)
    {
        string log = Path.Combine(xl.RunDir, "console", name + ".log");
        Assert.True(XlHost.WaitUntil(() => Read(log).Contains("~ # "), LinuxPvhTests.BootLimit),
            $"{name} never reached its shell:\n{LinuxPvhTests.Tail(Read(log))}");
        string domid = xl.Run("domid", name).Stdout.Trim();
        string tty = xl.RunDom0("xenstore-read", $"/local/domain/{domid}/console/tty").Stdout.Trim();
        Assert.StartsWith("/dev/pts/", tty);
        using (var pty = new FileStream(tty, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1))
        {
            pty.Write("echo flags-of-$((6*7)):$(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2): end\r"u8);
            pty.Flush();
        }
        string line = "";
        Assert.True(XlHost.WaitUntil(() =>
        {
            int at = Read(log).LastIndexOf("flags-of-42:", StringComparison.Ordinal);
            if (at < 0) return false;
            int end = Read(log).IndexOf(": end", at, StringComparison.Ordinal);
            if (end < 0) return false;
            line = Read(log)[(at + "flags-of-42:".Length)..end];
            return true;
        }, TimeSpan.FromMinutes(2)), $"{name} did not answer:\n{LinuxPvhTests.Tail(Read(log))}");
        Assert.Contains(" fpu ", line + " ");
        return " " + line.Trim() + " ";
    }

    private static string Read(string path)
    {
        if (!File.Exists(path)) return "";
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var r = new StreamReader(f);
        return r.ReadToEnd();
    }
}
