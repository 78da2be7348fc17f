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
