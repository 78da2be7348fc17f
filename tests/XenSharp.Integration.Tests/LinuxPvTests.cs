using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's unmodified kernel and busybox initramfs booted as a classic 64-bit PV domU (type = "pv", xl's default)
/// through the real `xl create -c`: the kernel runs in ring 3 on page tables the PV MMU validates, writes its own
/// page-table entries (writable page-table emulation), takes its timer and console events through the event callback,
/// brings up its second vCPU from a PV vcpu_guest_context, and reaches its shell on hvc0, where commands run; then
/// `xl shutdown` powers it off through xenstore. One boot.
/// </summary>
public class LinuxPvTests
{
    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "PV Console (xenconsoled)"), Trait("Feature", "xl")]
    public void DebianKernelBootsAsPvDomUWithTwoVcpusToAShellAndShutsDown()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = Path.Combine(xl.RunDir, "pv.cfg");
        File.WriteAllText(cfg, $"""
            name = "pv"
            type = "pv"
            kernel = "{store.KernelPath}"
            ramdisk = "{store.ShellInitrdPath}"
            cmdline = "console=hvc0"
            memory = 512
            vcpus = 2
            on_poweroff = "destroy"
            on_crash = "preserve"
            """);

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            string boot = console.WaitFor("~ # ", BootLimit);
            // Stages in boot order: the banner, Xen PV detected, the kernel's page tables built (through direct
            // entry writes), event channels, the Xen console, grant tables, userspace.
            string[] stages =
            [
                "Linux version 6.1",
                "Hypervisor detected: Xen PV",
                "Booting kernel on Xen",
                "Xen version: 4.14",
                "xen:events: Using FIFO-based ABI",
                "printk: console [hvc0] enabled",
                "Grant table initialized",
                "Run /init as init process",
                "init: Linux ",
            ];
            AssertStagesInOrder(boot, stages);
            Assert.DoesNotContain("Kernel panic", boot);
            Assert.DoesNotContain("Call Trace", boot);
            Assert.DoesNotContain("multicall(s) failed", boot);

            // The second vCPU was started with VCPUOP_initialise from a PV vcpu_guest_context.
            Assert.Contains("smp: Brought up 1 node, 2 CPUs", boot);
            Assert.Contains("cpus-2 1-on-1",
                console.Ask("echo cpus-$(grep -c ^processor /proc/cpuinfo) $(taskset -c 1 cat /proc/self/stat | cut -d' ' -f39)-on-1", "1-on-1"));
            Assert.Contains("result-42 xen", console.Ask("echo result-$((6*7)) $(cat /sys/hypervisor/type)", "result-42 xen"));
            // A fork and an exec: copy-on-write write-protects the parent's entries in its page tables.
            Assert.Contains("forked-42", console.Ask("(sh -c 'echo forked-$((40+2))')", "forked-42"));
            Assert.Contains("guest-PV", console.Ask("echo guest-$(cat /sys/hypervisor/guest_type)", "guest-PV"));

            var shutdown = xl.Run(TimeSpan.FromMinutes(3), "shutdown", "-w", "pv");
            Assert.True(shutdown.ExitCode == 0, shutdown.ToString());
            Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the guest shut down");
            Assert.DoesNotMatch(@"(?m)^pv\s", xl.Run("list").Stdout);
        }
        finally
        {
            xl.Run("destroy", "pv");
        }
    }
}
