using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's unmodified kernel and busybox initramfs booted as a classic 64-bit PV domU (type = "pv", xl's default)
/// through the real `xl create -c`: the kernel runs in ring 3 on page tables the PV MMU validates, writes its own
/// page-table entries (writable page-table emulation), takes its timer and console events through the event callback,
/// brings up its second vCPU from a PV vcpu_guest_context, and reaches its shell on hvc0, where commands run; then
/// `xl sysrq` and `xl reboot` reach it through xenstore, the rebooted guest's shell through `xl console`, and
/// `xl shutdown` powers it off. One boot and its reboot.
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
        string cfg = WriteConfig(xl, store, "pv", vcpus: 2, destroyOnPoweroff: true, type: "pv");

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
            AssertShellRunsOnTwoVcpus(console, boot, "PV");

            // xl sysrq reaches the PV kernel through control/sysrq.
            Assert.True(xl.Run("sysrq", "pv", "s").ExitCode == 0);
            console.WaitFor("Emergency Sync complete", TimeSpan.FromMinutes(2));

            // xl reboot: Linux's reboot leaves by SCHEDOP_shutdown(reboot) and on_reboot's default restart builds the
            // PV domain again under a new domid; `xl console` reaches the second boot's shell.
            string first = DomId(xl);
            var reboot = xl.Run("reboot", "pv");
            Assert.True(reboot.ExitCode == 0, reboot.ToString());
            console.WaitFor("reboot: Restarting system", TimeSpan.FromMinutes(2));
            Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the guest rebooted");
            Assert.True(XlHost.WaitUntil(() => DomId(xl) is { } id && id != first, TimeSpan.FromMinutes(1)),
                "the PV guest was not built again after its reboot:\n" + xl.Run("list").Stdout);
            using var again = new ConsoleSession(xl.RunDir, "console", "pv");
            again.WaitForShell(BootLimit);
            Assert.Contains("guest-PV", again.Ask("echo guest-$(cat /sys/hypervisor/guest_type)", "guest-PV"));

            var shutdown = xl.Run(TimeSpan.FromMinutes(3), "shutdown", "-w", "pv");
            Assert.True(shutdown.ExitCode == 0, shutdown.ToString());
            Assert.True(again.WaitForExit(TimeSpan.FromMinutes(1)), "xl console did not return after the guest shut down");
            Assert.DoesNotMatch(@"(?m)^pv\s", xl.Run("list").Stdout);
        }
        finally
        {
            xl.Run("destroy", "pv");
        }
    }

    private static string? DomId(XlHost xl)
        => System.Text.RegularExpressions.Regex.Match(xl.Run("list").Stdout, @"(?m)^pv\s+(\d+)\s") is { Success: true } m
            ? m.Groups[1].Value : null;
}
