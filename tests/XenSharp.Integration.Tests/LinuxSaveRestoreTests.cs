using XenSharp.Artifacts;
using static XenSharp.Integration.Tests.LinuxPvhTests;

namespace XenSharp.Integration.Tests;

/// <summary>
/// xl save and xl restore of Debian's kernel as a PVH guest: xl save asks it to suspend through xenstore
/// (control/shutdown = suspend), writes the file and destroys it; Xen's verify-stream-v2 accepts the file; after
/// xl restore the same shell answers on the console with a file it wrote to its RAM-backed root before the save, runs
/// a child process, and the restored domain saves and restores again.
/// </summary>
public class LinuxSaveRestoreTests
{
    [Fact]
    [Trait("Feature", "xl save/restore"), Trait("Feature", "x86/PVH")]
    public void DebianGuestIsSavedAndRestoredWithItsState()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        string initrd = Path.Combine(xl.RunDir, "initrd.img");
        store.BuildInitramfs(initrd, GuestArtifacts.ShellInit, GuestArtifacts.XenModules);
        string cfg = WriteConfig(xl, store, "sr", ramdisk: initrd, memory: 256);
        string file = Path.Combine(xl.RunDir, "sr.save");
        string marker = $"state-{Guid.NewGuid():N}";
        try
        {
            using (var console = new ConsoleSession(xl.RunDir, "create", "-c", cfg))
            {
                console.WaitFor("~ # ", BootLimit);
                console.Ask($"echo {marker} > /marker; echo written", "written");
                var save = xl.Run(TimeSpan.FromMinutes(5), "save", "sr", file);
                Assert.True(save.ExitCode == 0, save + "\n" + xl.Run("dmesg").Stdout);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl create -c did not return after the domain was saved");
            }
            Assert.DoesNotContain("sr", xl.Run("list").Stdout);
            var (rc, output) = XlSaveRestoreTests.Verify(file);
            Assert.True(rc == 0, output);

            for (int round = 1; round <= 2; round++)
            {
                var restore = xl.Run(TimeSpan.FromMinutes(5), "restore", file);
                Assert.True(restore.ExitCode == 0, $"round {round}: {restore}\n{xl.Run("dmesg").Stdout}");
                Assert.Contains("sr", xl.Run("list").Stdout);
                using var console = new ConsoleSession(xl.RunDir, "console", "sr");
                console.Ask("cat /marker", marker + "\r\n~ # ", TimeSpan.FromMinutes(2));
                // A child process and its SIGCHLD: the signal frame holds the FPU state XRSTOR must take back.
                console.Ask("sleep 1; echo slept-$((6*7))", "slept-42\r\n~ # ");
                if (round == 2) break;
                // The restored domain is saved again, over the same file.
                var again = xl.Run(TimeSpan.FromMinutes(5), "save", "sr", file);
                Assert.True(again.ExitCode == 0, again + "\n" + xl.Run("dmesg").Stdout);
                Assert.True(console.WaitForExit(TimeSpan.FromMinutes(1)), "xl console did not return after the domain was saved");
                (rc, output) = XlSaveRestoreTests.Verify(file);
                Assert.True(rc == 0, output);
            }
        }
        finally
        {
            xl.Run("destroy", "sr");
        }
    }
}
