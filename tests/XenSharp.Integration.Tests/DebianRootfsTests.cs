using System.Diagnostics;
using System.Text;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// The Debian root file system image that ./test's artifacts step builds (rootfs.raw, rootfs.qcow2)
/// and the initramfs that mounts it (initrd-disk.img): well-formed, holding what it should, and
/// booting Debian's kernel to a shell on it, here under QEMU with a virtio disk.
/// </summary>
public class DebianRootfsTests
{
    private static GuestArtifacts Store()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        return store;
    }

    [Fact]
    public void ImagesPassTheirCheckers()
    {
        var store = Store();
        var (check, checkOut) = Run("qemu-img", $"check {store.RootfsQcow2Path}");
        Assert.True(check == 0, checkOut);
        Assert.Contains("file format: qcow2", Run("qemu-img", $"info {store.RootfsQcow2Path}").Output);
        var (fsck, fsckOut) = Run("e2fsck", $"-fn {store.RootfsRawPath}");
        Assert.True(fsck == 0, fsckOut);
        // Both files are the same file system.
        var (cmp, cmpOut) = Run("qemu-img", $"compare -f raw -F qcow2 {store.RootfsRawPath} {store.RootfsQcow2Path}");
        Assert.True(cmp == 0, cmpOut);
    }

    [Fact]
    public void ImageHoldsInitShellFioAndE2fsprogs()
    {
        var store = Store();
        Assert.Contains("Type: symlink", Debugfs(store, "stat /sbin/init"));
        Assert.Contains("/bin/busybox", Debugfs(store, "stat /sbin/init"));
        Assert.Contains("Type: regular", Debugfs(store, "stat /bin/busybox"));
        Assert.Contains("Type: regular", Debugfs(store, "stat /usr/bin/fio"));
        Assert.Contains("Type: regular", Debugfs(store, "stat /sbin/mke2fs"));
        Assert.Contains("::sysinit:/etc/init.d/rcS", Debugfs(store, "cat /etc/inittab"));
        Assert.Contains("root:x:0:0:", Debugfs(store, "cat /etc/passwd"));
        // fio's libraries came along with it.
        Assert.Contains("librados.so.2", Debugfs(store, "ls /usr/lib/x86_64-linux-gnu"));
        Assert.Contains("fio", store.RootfsPackages);
        Assert.Contains("e2fsprogs", store.RootfsPackages);
        Assert.DoesNotContain("python3", store.RootfsPackages);
    }

    [Fact]
    public void DiskInitramfsHoldsItsModulesAndInit()
    {
        var store = Store();
        var (rc, listing) = Run("sh", $"-c \"gzip -dc {store.DiskInitrdPath} | cpio -it --quiet\"");
        Assert.Equal(0, rc);
        var names = listing.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
        Assert.Contains("init", names);
        Assert.Contains("bin/busybox", names);
        foreach (var module in GuestArtifacts.DiskModules)
            Assert.Contains($"lib/modules/{module}.ko", names);
        Assert.Contains("switch_root", GuestArtifacts.DiskInit);
    }

    /// <summary>The real judge: the kernel, initrd-disk.img and rootfs.qcow2 as QEMU's virtio disk
    /// come up to the image's shell prompt, with / the read-write ext4 disk and fio working on it.</summary>
    [Fact]
    public void BootsUnderQemuToAShellThatRunsFio()
    {
        var store = Store();
        var psi = new ProcessStartInfo("qemu-system-x86_64",
            $"-accel tcg -m 256 -nodefaults -display none -serial stdio -monitor none -no-reboot " +
            // -snapshot keeps the cached image as it is: writes go to a temporary overlay.
            $"-snapshot -drive file={store.RootfsQcow2Path},if=virtio,format=qcow2 " +
            $"-kernel {store.KernelPath} -initrd {store.DiskInitrdPath} " +
            "-append \"console=ttyS0 root=/dev/vda quiet panic=-1\"")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var qemu = Process.Start(psi)!;
        var output = new StringBuilder();
        // The prompt ends no line, so the console is read as it comes rather than line by line.
        async Task Pump(StreamReader from)
        {
            var buffer = new char[4096];
            int n;
            while ((n = await from.ReadAsync(buffer)) > 0)
                lock (output) output.Append(buffer, 0, n);
        }
        var pumps = Task.WhenAll(Pump(qemu.StandardOutput), Pump(qemu.StandardError));
        try
        {
            WaitFor(qemu, output, RootFilesystem.Prompt, 0, TimeSpan.FromMinutes(3));
            var mark = Length(output);
            qemu.StandardInput.Write(
                "fio --version; grep ' / ' /proc/mounts; " +
                "fio --name=check --filename=/root/fio.dat --size=2m --bs=64k --rw=write --ioengine=psync --end_fsync=1; " +
                "echo done-$((6 * 7))\n");
            qemu.StandardInput.Flush();
            var after = WaitFor(qemu, output, "done-42", mark, TimeSpan.FromMinutes(2));
            Assert.Matches(@"fio-3\.\d+", after);
            Assert.Matches(@"/dev/vda / ext4 rw", after);
            Assert.Contains("Run status group 0", after);
            Assert.DoesNotContain("err=", after.Replace("err= 0", ""));
            qemu.StandardInput.Write("poweroff\n");
            qemu.StandardInput.Flush();
            Assert.True(qemu.WaitForExit(60_000), "QEMU did not power off:\n" + Tail(output));
        }
        finally
        {
            if (!qemu.HasExited) qemu.Kill();
        }
    }

    /// <summary>apt-cache depends output as apt prints it: the first of alternatives is taken, a
    /// virtual package becomes its first provider, and an alternative nothing provides falls through.</summary>
    [Fact]
    public void DependencyWalkTakesOneChoiceForEachDependency()
    {
        const string output = """
            fio
              Depends: libc6
             |Depends: libaio1
              Depends: libaio1t64
              PreDepends: <awk>
                mawk
                gawk
             |Depends: <nothing-provides-this>
              Depends: zlib1g
              Suggests: gnuplot
            libc6
              Depends: libgcc-s1
            <awk>
            """;
        var graph = DebianPackages.DependencyGraph(output.ReplaceLineEndings("\n"));
        Assert.Equal(["libc6", "libaio1", "mawk", "zlib1g"], graph["fio"]);
        Assert.Equal(["libgcc-s1"], graph["libc6"]);
    }

    /// <summary>The library check that guards the image reads DT_NEEDED as readelf does.</summary>
    [Fact]
    public void ElfNeededMatchesReadelf()
    {
        foreach (var binary in new[] { "/usr/bin/qemu-img", "/usr/sbin/mke2fs", "/bin/ls" })
        {
            var (rc, dynamic) = Run("readelf", $"-d {binary}");
            Assert.Equal(0, rc);
            var expected = System.Text.RegularExpressions.Regex.Matches(dynamic, @"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
                .Select(m => m.Groups[1].Value).ToList();
            Assert.NotEmpty(expected);
            Assert.Equal(expected, ElfFile.Needed(binary));
        }
        Assert.Empty(ElfFile.Needed(new GuestArtifacts().BusyboxPath)); // static
        Assert.Empty(ElfFile.Needed("/etc/passwd"));
    }

    [Fact]
    public void DiskModulesLoadAfterWhatTheyDependOn()
    {
        var store = Store();
        Assert.Equal(["crc16", "jbd2", "mbcache"], ElfFile.ModuleDepends(Path.Combine(store.ModulesDir, "ext4.ko")).Order());
        for (var i = 0; i < GuestArtifacts.DiskModules.Length; i++)
            foreach (var dep in ElfFile.ModuleDepends(Path.Combine(store.ModulesDir, GuestArtifacts.DiskModules[i] + ".ko")))
                Assert.Contains(dep, GuestArtifacts.DiskModules[..i]);
    }

    private static int Length(StringBuilder output) { lock (output) return output.Length; }

    private static string Tail(StringBuilder output)
    {
        lock (output) return output.ToString()[Math.Max(0, output.Length - 3000)..];
    }

    /// <summary>Waits until <paramref name="text"/> appears after <paramref name="from"/> and returns
    /// the output from there; fails with the console's tail if QEMU exits or time runs out.</summary>
    private static string WaitFor(Process qemu, StringBuilder output, string text, int from, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            string seen;
            lock (output) seen = output.ToString(from, output.Length - from);
            if (seen.Contains(text)) return seen;
            Assert.False(qemu.HasExited, $"QEMU exited before '{text}':\n{Tail(output)}");
            Assert.True(DateTime.UtcNow < deadline, $"no '{text}' on the console:\n{Tail(output)}");
            Thread.Sleep(100);
        }
    }

    private static string Debugfs(GuestArtifacts store, string request)
    {
        var (rc, output) = Run("debugfs", $"-R \"{request}\" {store.RootfsRawPath}");
        Assert.True(rc == 0, output);
        return output;
    }

    private static (int ExitCode, string Output) Run(string file, string args)
    {
        var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var err = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + err.Result);
    }
}
