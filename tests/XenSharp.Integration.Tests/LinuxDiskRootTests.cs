using System.Diagnostics;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// `examples/debian-disk.cfg` as a user runs it: Debian's kernel boots as PVH with its root file system on a
/// qcow2 PV disk (the artifacts' Debian image), a file written there survives a poweroff and a second boot,
/// and the image the guest shut down cleanly passes `qemu-img check`. Both boots are the test: a root disk
/// is only proven by booting from it again.
/// </summary>
public sealed class LinuxDiskRootTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);
    private readonly XlHost _xl = new();
    private readonly GuestArtifacts _store = new();

    public void Dispose()
    {
        _xl.Run("destroy", "diskroot");
        _xl.Dispose();
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void DebianBootsFromAQcow2RootDiskAndKeepsWhatItWrote()
    {
        Assert.True(_store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {_store.DebianDir}");
        string image = Path.Combine(_xl.RunDir, "root.qcow2");
        File.Copy(_store.RootfsQcow2Path, image);
        // The example's own lines, with the disk pointed at this test's copy and poweroff ending the domain.
        string example = File.ReadAllText(Path.Combine(Repository.Root, "examples", "debian-disk.cfg"));
        string cfg = Path.Combine(_xl.RunDir, "diskroot.cfg");
        File.WriteAllText(cfg, string.Join('\n', example.Split('\n').Select(line =>
            line.StartsWith("name", StringComparison.Ordinal) ? "name = \"diskroot\"" :
            line.StartsWith("disk", StringComparison.Ordinal) ? $"disk = [ 'format=qcow2,vdev=xvda,access=rw,target={image}' ]" :
            line.StartsWith("on_poweroff", StringComparison.Ordinal) ? "on_poweroff = \"destroy\"" : line)));

        using (var first = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg))
        {
            first.WaitFor(RootFilesystem.Prompt, Limit);
            string mounts = first.Ask("grep ' / ' /proc/mounts; echo mounts-e\"\"nd", "mounts-end", Limit);
            Assert.Contains("/dev/xvda / ext4 rw", mounts);
            string wrote = first.Ask("echo kept-$((6*7)) > /root/mark && sync && echo wrote-e\"\"nd", "wrote-end", Limit);
            Assert.Contains("wrote-end", wrote);
            // Typed like Ask types: busybox may swallow a line typed while it waits for its ESC[6n answer.
            bool exited = false;
            for (int attempt = 0; attempt < 3 && !exited; attempt++)
            {
                Thread.Sleep(1000);
                first.Send("poweroff\r");
                exited = first.WaitForExit(TimeSpan.FromSeconds(60));
            }
            Assert.True(exited, "the guest did not power off");
        }
        Assert.True(WaitGone(), "the domain outlived its poweroff");
        var check = QemuImg("check", image);
        Assert.True(check.Code == 0, $"qemu-img check after a clean poweroff: {check.Output}");

        using var second = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg);
        second.WaitFor(RootFilesystem.Prompt, Limit);
        string read = second.Ask("cat /root/mark; echo read-e\"\"nd", "read-end", Limit);
        Assert.Contains("kept-42", read);
    }

    private bool WaitGone()
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < Limit)
        {
            if (!_xl.Run("list").Stdout.Contains("diskroot"))
                return true;
            Thread.Sleep(200);
        }
        return false;
    }

    private static (int Code, string Output) QemuImg(params string[] args)
    {
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }
}
