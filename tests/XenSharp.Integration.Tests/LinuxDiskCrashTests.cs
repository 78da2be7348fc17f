using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// The daemon killed with SIGKILL while Debian writes to its qcow2 root disk: the image left behind is a
/// consistent qcow2 (`qemu-img check` finds no corruption) and a file the guest wrote and synced before the
/// kill is all there, byte for byte, once the file system's journal is replayed on the host.
/// </summary>
public sealed partial class LinuxDiskCrashTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(10);
    private readonly XlHost _xl = new();
    private readonly GuestArtifacts _store = new();

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    public void Dispose() => _xl.Dispose();

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "Blkfront")]
    public void KillingTheDaemonMidWriteLeavesAConsistentQcow2WithEveryFlushedWrite()
    {
        Assert.True(_store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {_store.DebianDir}");
        string image = Path.Combine(_xl.RunDir, "root.qcow2");
        File.Copy(_store.RootfsQcow2Path, image);
        string cfg = Path.Combine(_xl.RunDir, "crash.cfg");
        File.WriteAllText(cfg, $"""
            name = "crash"
            type = "pvh"
            kernel = "{_store.KernelPath}"
            ramdisk = "{_store.DiskInitrdPath}"
            cmdline = "console=hvc0 root=/dev/xvda"
            memory = 512
            disk = [ 'format=qcow2,vdev=xvda,access=rw,target={image}' ]
            """);

        string flushedMd5;
        using (var console = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg))
        {
            console.WaitFor(RootFilesystem.Prompt, LinuxPvhTests.BootLimit);
            // 8 MiB written and synced: it must survive whatever happens next.
            string synced = console.Ask(
                "dd if=/dev/urandom of=/root/flushed bs=65536 count=128 2>/dev/null && sync && " +
                "echo md5-$(md5sum /root/flushed | cut -c1-32)-e\"\"nd", "-end", Limit);
            var m = Md5Line().Match(synced);
            Assert.True(m.Success, $"no md5 from the guest:\n{synced}");
            flushedMd5 = m.Groups[1].Value;
            // Then writes that go on until the end: 4 MiB files written again and again, each fsynced.
            string going = console.Ask(
                "(i=0; while true; do i=$((i + 1)); dd if=/dev/urandom of=/root/junk$((i % 8)) bs=65536 count=64 conv=fsync 2>/dev/null; done) & " +
                "until [ -s /root/junk2 ]; do sleep 1; done; echo going-e\"\"nd",
                "going-end", Limit);
            Assert.Contains("going-end", going);
            // The kill lands while the image file is being written: wait until it changes again.
            var written = File.GetLastWriteTimeUtc(image);
            var clock = Stopwatch.StartNew();
            while (File.GetLastWriteTimeUtc(image) == written && clock.Elapsed < Limit) Thread.Sleep(10);
            Assert.NotEqual(written, File.GetLastWriteTimeUtc(image));
            int pid = int.Parse(File.ReadAllText(Path.Combine(_xl.RunDir, "xensharpd.pid")).Trim());
            using var daemon = Process.GetProcessById(pid);
            daemon.Kill(); // SIGKILL: no flush, no cleanup
            daemon.WaitForExit();
        }

        var check = Tool.Run("qemu-img", "check", image);
        // 0: clean; 3: leaked clusters only (allocated, not yet referenced), which lose no data.
        Assert.True(check.Code is 0 or 3, $"qemu-img check after SIGKILL (exit {check.Code}): {check.Output}");
        Assert.DoesNotContain("ERROR", check.Output);

        string raw = Path.Combine(_xl.RunDir, "root.raw");
        Tool.Check("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw);
        // The journal holds what sync committed: e2fsck replays it (exit 1: "errors corrected").
        var fsck = Tool.Run("e2fsck", "-fy", raw);
        Assert.True(fsck.Code is 0 or 1, $"e2fsck: {fsck.Output}");
        string dumped = Path.Combine(_xl.RunDir, "flushed.out");
        var dump = Tool.Run("debugfs", "-R", $"dump /root/flushed {dumped}", raw);
        Assert.True(File.Exists(dumped), $"debugfs: {dump.Output}");
        using var s = File.OpenRead(dumped);
        Assert.Equal(flushedMd5, Convert.ToHexStringLower(MD5.HashData(s)));
    }
}
