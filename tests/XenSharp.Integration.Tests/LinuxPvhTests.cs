using System.Diagnostics;
using System.Text;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's unmodified kernel (bzImage, xz payload) with the busybox initramfs, booted as a PVH domU
/// through the real `xl create -c` and a private daemon, checked by what it prints on hvc0 and by a
/// command typed at its shell.
/// </summary>
public class LinuxPvhTests
{
    internal static readonly TimeSpan BootLimit = TimeSpan.FromMinutes(10);

    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "x86-64"), Trait("Feature", "PV Console (xenconsoled)")]
    public void DebianKernelBootsToAShellOnHvc0()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = WriteConfig(xl, store, "linux");

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            string boot = console.WaitFor("~ # ", BootLimit);
            // Stages in boot order: the banner, Xen detected as PVH, event channels with the HVM
            // callback vector, the Xen console, grant tables, the Xen clocksource, userspace.
            string[] stages =
            [
                "Linux version 6.1",
                "Booting kernel on Xen PVH",
                "Xen version: 4.14",
                "xen:events: Xen HVM callback vector for event delivery is enabled",
                "printk: console [hvc0] enabled",
                "Grant table initialized",
                "clocksource: Switched to clocksource xen",
                "Run /init as init process",
                "init: Linux ",
            ];
            AssertStagesInOrder(boot, stages);
            Assert.DoesNotContain("Kernel panic", boot);
            Assert.DoesNotContain("Call Trace", boot);

            Assert.Contains("result-42 xen", console.Ask("echo result-$((6*7)) $(cat /sys/hypervisor/type)", "result-42 xen"));
            // IA32_ARCH_CAPABILITIES says RDCL_NO: the kernel runs without page-table isolation.
            Assert.Contains("Not_affected-meltdown-42",
                console.Ask("echo $(tr ' ' _ </sys/devices/system/cpu/vulnerabilities/meltdown)-meltdown-$((6*7))", "-meltdown-42"));
        }
        finally
        {
            var destroyed = xl.Run("destroy", "linux");
            Assert.True(destroyed.ExitCode == 0, destroyed.ToString());
        }
    }

    /// <summary>Two vCPUs: the AP is started by INIT-SIPI-SIPI through the vLAPIC and runs its own
    /// Xen timer and IPIs; `poweroff -f` then goes through ACPI S5 and on_poweroff destroys the domain.</summary>
    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "Hypervisor emulated LAPIC")]
    public void DebianKernelBringsUpTwoVcpusAndPowersOffThroughAcpi()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = WriteConfig(xl, store, "smp", vcpus: 2, destroyOnPoweroff: true);

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            string boot = console.WaitFor("~ # ", BootLimit);
            Assert.DoesNotContain("Kernel panic", boot);
            AssertShellRunsOnTwoVcpus(console, boot, "PVH");

            console.Send("poweroff -f\r");
            console.WaitFor("reboot: Power down", TimeSpan.FromMinutes(2));
            Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the guest powered off");
            var list = xl.Run("list");
            Assert.Equal(0, list.ExitCode);
            Assert.DoesNotContain("smp", list.Stdout);
        }
        finally
        {
            xl.Run("destroy", "smp");
        }
    }

    /// <summary>xl shutdown: the toolstack writes control/shutdown in xenstore, the guest's watch fires
    /// and it powers off (the initramfs is built from the current init script).</summary>
    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "xl")]
    public void DebianKernelHonoursXlShutdownThroughXenstore()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string initrd = Path.Combine(xl.RunDir, "initrd.img");
        store.BuildInitramfs(initrd, GuestArtifacts.ShellInit, GuestArtifacts.XenModules);
        string cfg = WriteConfig(xl, store, "sd", ramdisk: initrd, destroyOnPoweroff: true);

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            console.WaitFor("~ # ", BootLimit);
            var shutdown = xl.Run(TimeSpan.FromMinutes(3), "shutdown", "-w", "sd");
            Assert.True(shutdown.ExitCode == 0, shutdown.ToString());
            Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the guest shut down");
            Assert.DoesNotContain("sd", xl.Run("list").Stdout);
        }
        finally
        {
            xl.Run("destroy", "sd");
        }
    }

    /// <summary>xl sysrq: the toolstack writes control/sysrq, Linux's xenbus watch takes the key (clearing the
    /// node in a transaction) and runs the SysRq handler, whose output shows on hvc0. (Linux binds VIRQ_DEBUG only
    /// with 2-level event channels, so `xl debug-keys q` is checked in the hypervisor's ring.)</summary>
    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "xl"), Trait("Feature", "Hypervisor 'debug keys'")]
    public void DebianKernelAnswersXlSysrqThroughXenstore()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = WriteConfig(xl, store, "sysrq");

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            console.WaitFor("~ # ", BootLimit);
            var r = xl.Run("sysrq", "sysrq", "h");
            Assert.True(r.ExitCode == 0, r.ToString());
            string help = console.WaitFor("show-blocked-tasks(w)", TimeSpan.FromMinutes(2));
            Assert.Contains("sysrq: HELP : loglevel(0-9)", help);

            var bad = xl.Run("sysrq", "sysrq", "hh");
            Assert.NotEqual(0, bad.ExitCode);
            Assert.Contains("sysrq arg must be a single character", bad.Stderr);

            // Further keys work too (the guest cleared the node after each), under the kernel's own sysrq mask:
            // Debian's default leaves the dump keys off and sync on.
            Assert.True(xl.Run("sysrq", "sysrq", "m").ExitCode == 0);
            console.WaitFor("sysrq: This sysrq operation is disabled.", TimeSpan.FromMinutes(2));
            Assert.True(xl.Run("sysrq", "sysrq", "s").ExitCode == 0);
            console.WaitFor("Emergency Sync complete", TimeSpan.FromMinutes(2));

            // The 'q' debug key reports the domain in the hypervisor's console ring.
            Assert.True(xl.Run("debug-keys", "q").ExitCode == 0);
            Assert.Matches(@"\(XEN\) Notifying guest \d+:0 \(virq 1, port \d+\)", xl.Run("dmesg").Stdout);
        }
        finally
        {
            var destroyed = xl.Run("destroy", "sysrq");
            Assert.True(destroyed.ExitCode == 0, destroyed.ToString());
        }
    }

    /// <summary>An xl.cfg for Debian's kernel as a PVH (or <paramref name="type"/>) domU with its console on hvc0 and no
    /// earlyprintk (hvc0 then replays the kernel log from its first line); <paramref name="extra"/> is appended.</summary>
    internal static string WriteConfig(XlHost xl, GuestArtifacts store, string name, int vcpus = 1, string? ramdisk = null,
        bool destroyOnPoweroff = false, int memory = 512, int? maxmem = null, string type = "pvh", string extra = "")
    {
        string cfg = Path.Combine(xl.RunDir, name + ".cfg");
        File.WriteAllText(cfg, $"""
            name = "{name}"
            type = "{type}"
            kernel = "{store.KernelPath}"
            ramdisk = "{ramdisk ?? store.ShellInitrdPath}"
            cmdline = "console=hvc0"
            memory = {memory}
            {(maxmem is { } max ? $"maxmem = {max}" : "")}
            vcpus = {vcpus}
            {(destroyOnPoweroff ? "on_poweroff = \"destroy\"" : "")}
            on_crash = "preserve"
            """ + (extra.Length > 0 ? "\n" + extra : ""));
        return cfg;
    }

    /// <summary>A two-vCPU guest at its shell: both CPUs up, a command run on the second, arithmetic, a fork, and the
    /// guest type Linux reports in /sys/hypervisor.</summary>
    internal static void AssertShellRunsOnTwoVcpus(ConsoleSession console, string boot, string guestType)
    {
        Assert.Contains("smp: Brought up 1 node, 2 CPUs", boot);
        Assert.Contains("cpus-2 1-on-1",
            console.Ask("echo cpus-$(grep -c ^processor /proc/cpuinfo) $(taskset -c 1 cat /proc/self/stat | cut -d' ' -f39)-on-1", "1-on-1"));
        Assert.Contains("result-42 xen", console.Ask("echo result-$((6*7)) $(cat /sys/hypervisor/type)", "result-42 xen"));
        // A fork and an exec: copy-on-write write-protects the parent's entries in its page tables.
        Assert.Contains("forked-42", console.Ask("(sh -c 'echo forked-$((40+2))')", "forked-42"));
        Assert.Contains($"guest-{guestType}", console.Ask("echo guest-$(cat /sys/hypervisor/guest_type)", $"guest-{guestType}"));
    }

    internal static string Tail(string s) => s.Length <= 4000 ? s : s[^4000..];

    /// <summary>Each of <paramref name="stages"/> appears in <paramref name="boot"/>, in that order.</summary>
    internal static void AssertStagesInOrder(string boot, IEnumerable<string> stages)
    {
        int at = 0;
        foreach (var stage in stages)
        {
            int i = boot.IndexOf(stage, at, StringComparison.Ordinal);
            Assert.True(i >= 0, $"the console never showed \"{stage}\" (in order); it shows:\n{Tail(boot)}");
            at = i;
        }
    }

    /// <summary>xl with its standard input kept open, so that the test can type at the guest's console.</summary>
    internal sealed class ConsoleSession : IDisposable
    {
        private readonly Process _p;
        private readonly OutputLog _out = new();

        public ConsoleSession(string runDir, params string[] args)
        {
            var psi = new ProcessStartInfo("dotnet")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                WorkingDirectory = Repository.Root,
            };
            psi.ArgumentList.Add(XlHost.XlDll);
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.Environment["XENSHARP_RUNDIR"] = runDir;
            _p = Process.Start(psi)!;
            Pump(_p.StandardOutput);
            Pump(_p.StandardError);
        }

        private void Pump(StreamReader r) => new Thread(() =>
        {
            var buf = new char[4096];
            int n;
            while ((n = r.Read(buf, 0, buf.Length)) > 0)
                _out.Append(new string(buf, 0, n));
        }) { IsBackground = true }.Start();

        /// <summary>Waits until <paramref name="text"/> appears after what earlier waits consumed and
        /// returns the output up to and including it.</summary>
        public string WaitFor(string text, TimeSpan limit)
        {
            string? got = _out.TryWaitFor(text, limit, () => _p.HasExited);
            if (got is null)
                Assert.Fail($"\"{text}\" did not appear within {limit} (xl {(_p.HasExited ? $"exited {_p.ExitCode}" : "running")}); output:\n{_out.Tail()}");
            return got;
        }

        /// <summary>Types a command line at the shell and waits for <paramref name="expect"/>. busybox asks
        /// the terminal for the cursor position (ESC[6n) after each prompt and may swallow keys typed
        /// while it waits for an answer that never comes, so the line is typed once more if needed.</summary>
        public string Ask(string command, string expect, TimeSpan? limit = null)
        {
            Thread.Sleep(1000);
            for (int attempt = 0; ; attempt++)
            {
                Send(command + "\r");
                try { return WaitFor(expect, limit ?? TimeSpan.FromSeconds(attempt == 0 ? 30 : 90)); }
                catch (Xunit.Sdk.FailException) when (attempt == 0) { Send("\u0015"); }
            }
        }

        /// <summary>For a console attached after the guest may have printed its prompt: presses Enter until a shell
        /// prompt answers.</summary>
        public void WaitForShell(TimeSpan limit)
        {
            var deadline = DateTime.UtcNow + limit;
            do
            {
                Send("\r");
                if (_out.TryWaitFor("~ # ", TimeSpan.FromSeconds(10), () => _p.HasExited) is not null)
                    return;
            } while (DateTime.UtcNow < deadline && !_p.HasExited);
            Assert.Fail($"no shell prompt within {limit} (xl {(_p.HasExited ? $"exited {_p.ExitCode}" : "running")}); output:\n{_out.Tail()}");
        }

        public bool WaitForExit(TimeSpan limit) => _p.WaitForExit(limit);

        public void Send(string keys)
        {
            _p.StandardInput.Write(keys);
            _p.StandardInput.Flush();
        }

        public void Dispose()
        {
            if (!_p.HasExited) _p.Kill(entireProcessTree: true);
            _p.WaitForExit();
            _p.Dispose();
        }
    }
}
