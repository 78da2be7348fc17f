using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// pvshim=1 through the real `xl create -c`: Debian's unmodified xen-shim (Xen 4.17 built to run as a PVH guest
/// hosting one PV guest) boots as a PVH domain on XenSharp with the PV kernel and its command line as start-info
/// modules, builds its PV domain, and runs Debian's PV kernel inside it to its shell on hvc0, every hypercall the
/// shim forwards (event channels, grant tables, memory, vCPU, console, xenstore) served by XenSharp; then
/// `xl shutdown` reaches the PV kernel through xenstore and its power-off leaves through the shim. Two vCPUs, one boot.
/// </summary>
public class PvShimTests
{
    public const string Shim = "/usr/lib/xen-4.17/boot/xen-shim";

    [Fact]
    [Trait("Feature", "x86/PVH"), Trait("Feature", "x86/PV"), Trait("Feature", "xl")]
    public void DebianXenShimRunsDebianPvKernelToAShell()
    {
        Assert.True(File.Exists(Shim), $"{Shim} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string cfg = WriteConfig(xl, store, "shim", vcpus: 2, destroyOnPoweroff: true,
            extra: "pvshim = 1\npvshim_extra = \"loglvl=all\"");

        using var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg);
        try
        {
            string boot = console.WaitFor("~ # ", BootLimit);
            // The shim's own boot (its start info with the PV kernel as module 0), its PV domain built, then the
            // PV kernel's boot on the shim, as LinuxPvTests sees it on XenSharp directly.
            string[] stages =
            [
                "(XEN) Xen version 4.17",
                "cmdline:    'pv-shim console=xen,pv loglvl=all'",
                "mod[0].cmdline:    'console=hvc0'",
                "Bootloader: PVH Directboot",
                "*** Building a PV Dom1 ***",
                "Linux version 6.1",
                "Hypervisor detected: Xen PV",
                "Booting kernel on Xen",
                "Xen version: 4.17",
                "printk: console [hvc0] enabled",
                "Grant table initialized",
                "Run /init as init process",
                "init: Linux ",
            ];
            AssertStagesInOrder(boot, stages);
            Assert.DoesNotContain("Kernel panic", boot);
            Assert.DoesNotContain("Call Trace", boot);
            Assert.DoesNotContain("Panic on CPU", boot);

            // The guest's second vCPU came up through VCPUOP_up to the shim, which started its own second CPU for it
            // on XenSharp's second vCPU; a command runs there.
            AssertShellRunsOnTwoVcpus(console, boot, "PV");
            // The shim is Xen 4.17; XenSharp under it says 4.14.
            Assert.Contains("xenver-4.17", console.Ask("echo xenver-$(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)", "xenver-4.17"));
            // XenSharp runs the shim as a PVH domain.
            Assert.Matches(@"(?m)^shim\s+\d+\s+512\s+2\s", xl.Run("list").Stdout);

            var shutdown = xl.Run(TimeSpan.FromMinutes(3), "shutdown", "-w", "shim");
            Assert.True(shutdown.ExitCode == 0, shutdown.ToString());
            Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the guest shut down");
            Assert.DoesNotMatch(@"(?m)^shim\s", xl.Run("list").Stdout);
        }
        finally
        {
            xl.Run("destroy", "shim");
        }
    }
}
