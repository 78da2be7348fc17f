using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's own QEMU (qemu-system-xen 7.2) as the qdisk backend: a disk with <c>backendtype=qdisk</c> is served by
/// <c>qemu-system-i386 -xen-domid N -xen-attach -M xenpv</c>, started by the toolstack with XenSharp's drop-in Xen
/// libraries as libxl starts it. Debian, booted once for the class from a raw root disk that XenSharp's own backend
/// serves, makes a file system on a qcow2 disk QEMU serves; the file reaches the image, which `qemu-img check` finds
/// clean. QEMU killed takes down nothing but its disks.
/// </summary>
public sealed partial class QemuQdiskTests(QemuQdiskTests.QdiskGuest guest) : IClassFixture<QemuQdiskTests.QdiskGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(10);

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "Blkfront"), Trait("Feature", "Dom0 stable libraries")]
    public void AFileSystemOnAQemuServedQcow2DiskReachesTheImage()
    {
        string made = guest.Ask(
            "mkdir -p /mnt/q && mkfs.ext4 -q -F /dev/xvdb && mount /dev/xvdb /mnt/q && " +
            "dd if=/dev/urandom of=/mnt/q/big bs=1048576 count=24 2>/dev/null && " +
            "echo md5-$(md5sum /mnt/q/big | cut -c1-32)-e\"\"nd; umount /mnt/q; sync", "-end", IoLimit);
        var m = Md5Line().Match(made);
        Assert.True(m.Success, $"no md5 from the guest:\n{made}");
        Assert.Contains("umount-0-end", guest.Ask("echo umount-$?-e\"\"nd", "-end"));

        // QEMU still has the image open (the guest flushed on umount): qemu-img reads it sharing the lock.
        var check = Tool.Run("qemu-img", "check", "-U", guest.QcowPath);
        Assert.True(check.Code == 0, $"qemu-img check: {check.Output}");
        string raw = Path.Combine(guest.Dir, "q.raw");
        Tool.Check("qemu-img", "convert", "-U", "-O", "raw", guest.QcowPath, raw);
        string dumped = Path.Combine(guest.Dir, "big.out");
        var dump = Tool.Run("debugfs", "-R", $"dump /big {dumped}", raw);
        Assert.True(File.Exists(dumped), $"debugfs dump: {dump.Output}");
        Assert.Equal(24L << 20, new FileInfo(dumped).Length);
        using (var s = File.OpenRead(dumped))
            Assert.Equal(m.Groups[1].Value, Convert.ToHexStringLower(MD5.HashData(s)));
        File.Delete(raw);
        File.Delete(dumped);
    }

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "Dom0 stable libraries")]
    public void QemuServesTheDiskWhereLibxlPutsIt()
    {
        string domid = guest.Xl("domid", QdiskGuest.Name).Stdout.Trim();
        string be = $"/local/domain/0/backend/qdisk/{domid}/51728";
        Assert.Equal(be, guest.Xenstore($"/local/domain/{domid}/device/vbd/51728/backend"));
        Assert.Equal($"qcow2:{guest.QcowPath}", guest.Xenstore($"{be}/params"));
        Assert.Equal("4", guest.Xenstore($"{be}/state"));                       // Connected
        Assert.Equal("running", guest.Xenstore($"/local/domain/0/device-model/{domid}/state"));
        // The root disk stays XenSharp's own backend's.
        Assert.Equal($"/local/domain/0/backend/vbd/{domid}/51712", guest.Xenstore($"/local/domain/{domid}/device/vbd/51712/backend"));

        int pid = int.Parse(guest.Xenstore($"/local/domain/0/libxl/{domid}/qdisk-backend-pid"));
        Assert.Equal("/usr/libexec/xen-qemu-system-i386", new FileInfo($"/proc/{pid}/exe").ResolveLinkTarget(false)?.FullName);
        string maps = File.ReadAllText($"/proc/{pid}/maps");
        foreach (var lib in new[] { "libxencall.so.1", "libxengnttab.so.1", "libxenevtchn.so.1", "libxenforeignmemory.so.1" })
            Assert.Contains(Path.Combine(Repository.PathOf("artifacts", "dom0", "lib"), lib), maps);
    }

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "QEMU backend hotplugging for xl")]
    public void AQemuDiskAttachedToTheRunningGuestComesAndGoes()
    {
        string image = Path.Combine(guest.Dir, "hot.qcow2");
        Tool.Check("qemu-img", "create", "-q", "-f", "qcow2", image, "32M");
        var attach = guest.Xl("block-attach", QdiskGuest.Name, $"format=qcow2,vdev=xvdc,access=rw,backendtype=qdisk,target={image}");
        Assert.True(attach.ExitCode == 0, attach.ToString());
        string made = guest.Ask("until [ -e /sys/block/xvdc ]; do sleep 1; done; " +
            "echo hot-$(cat /sys/block/xvdc/size)-$(printf qdisk-hot | dd of=/dev/xvdc conv=fsync 2>/dev/null; echo $?)-e\"\"nd",
            "-end", TimeSpan.FromMinutes(2));
        Assert.Contains($"hot-{(32 << 20) / 512}-0-end", made);
        string domid = guest.Xl("domid", QdiskGuest.Name).Stdout.Trim();
        Assert.Equal("4", guest.Xenstore($"/local/domain/0/backend/qdisk/{domid}/51744/state"));

        var detach = guest.Xl("block-detach", QdiskGuest.Name, "xvdc");
        Assert.True(detach.ExitCode == 0, detach.ToString());
        guest.Ask("while [ -e /sys/block/xvdc ]; do sleep 1; done; echo gone-e\"\"nd", "gone-end", TimeSpan.FromMinutes(2));
        Assert.Null(guest.XenstoreOrNull($"/local/domain/0/backend/qdisk/{domid}/51744/state"));
        Assert.Null(guest.XenstoreOrNull($"/local/domain/{domid}/device/vbd/51744/backend"));
        // What the guest wrote is in the image, which QEMU has let go of.
        string raw = Path.Combine(guest.Dir, "hot.raw");
        Tool.Check("qemu-img", "convert", "-O", "raw", image, raw);
        Assert.Equal("qdisk-hot"u8.ToArray(), File.ReadAllBytes(raw)[..9]);
        File.Delete(raw);
        var check = Tool.Run("qemu-img", "check", image);
        Assert.True(check.Code == 0, check.Output);
    }

    [Fact]
    [Trait("Feature", "Blkback"), Trait("Feature", "Dom0 stable libraries")]
    public void AKilledQemuTakesDownOnlyItsDomainsDisks()
    {
        // A second, tiny domain whose disk QEMU serves: its QEMU is killed, and the daemon and both domains go on.
        string image = Path.Combine(guest.Dir, "small.qcow2");
        Tool.Check("qemu-img", "create", "-q", "-f", "qcow2", image, "8M");
        var r = guest.Xl("create", "-p", Repository.PathOf("tests", "guests", "trigger.cfg"), "name=\"small\"",
            $"disk=['format=qcow2,vdev=xvdb,access=rw,backendtype=qdisk,target={image}']");
        Assert.True(r.ExitCode == 0, r.ToString());
        string domid = guest.Xl("domid", "small").Stdout.Trim();
        Assert.Equal("2", guest.Xenstore($"/local/domain/0/backend/qdisk/{domid}/51728/state")); // InitWait: QEMU has it
        int pid = int.Parse(guest.Xenstore($"/local/domain/0/libxl/{domid}/qdisk-backend-pid"));
        Process.GetProcessById(pid).Kill();
        var deadline = Stopwatch.StartNew();
        while (File.Exists($"/proc/{pid}/exe") && deadline.Elapsed < TimeSpan.FromSeconds(30))
            Thread.Sleep(100);

        var list = guest.Xl("list");
        Assert.Contains("small", list.Stdout);
        Assert.Contains(QdiskGuest.Name, list.Stdout);
        Assert.Contains("alive-end", guest.Ask("echo alive-e\"\"nd", "alive-end"));
        Assert.Equal(0, guest.Xl("destroy", "small").ExitCode);
        Assert.DoesNotContain("small", guest.Xl("list").Stdout);
        Assert.Null(guest.XenstoreOrNull($"/local/domain/0/libxl/{domid}"));
        var check = Tool.Run("qemu-img", "check", image);
        Assert.True(check.Code == 0, check.Output);
    }

    public sealed class QdiskGuest : IDisposable
    {
        public const string Name = "qdisk";
        private readonly XlHost _xl = new();
        private readonly GuestArtifacts _store = new();
        private readonly LinuxPvhTests.ConsoleSession _console;

        public string Dir => _xl.RunDir;
        public string QcowPath { get; }

        public XlResult Xl(params string[] args) => _xl.Run(TimeSpan.FromMinutes(2), args);

        public string Ask(string command, string expect, TimeSpan? limit = null) => _console.Ask(command, expect, limit ?? TimeSpan.FromMinutes(2));

        /// <summary>Reads a node with Debian's xenstore-read under ./dom0.</summary>
        public string Xenstore(string path) =>
            XenstoreOrNull(path) ?? throw new Xunit.Sdk.XunitException($"xenstore-read {path} failed");

        public string? XenstoreOrNull(string path)
        {
            var psi = new ProcessStartInfo(Repository.PathOf("dom0"))
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                WorkingDirectory = Repository.Root,
            };
            foreach (var a in new[] { "xenstore-read", path }) psi.ArgumentList.Add(a);
            psi.Environment["XENSHARP_RUNDIR"] = Dir;
            var r = XlHost.RunProcess(psi, TimeSpan.FromMinutes(2));
            return r.ExitCode == 0 ? r.Stdout.Trim() : null;
        }

        public QdiskGuest()
        {
            Assert.True(_store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {_store.DebianDir}");
            Assert.True(File.Exists("/usr/libexec/xen-qemu-system-i386"), "Debian's qemu-system-xen is missing (scripts/install-deps.sh)");
            Assert.True(File.Exists(Repository.PathOf("artifacts", "dom0", "lib", "libxengnttab.so.1")), "make -C src/dom0 first");
            string root = Path.Combine(Dir, "root.raw");
            File.Copy(_store.RootfsRawPath, root);
            QcowPath = Path.Combine(Dir, "q.qcow2");
            Tool.Check("qemu-img", "create", "-q", "-f", "qcow2", QcowPath, "64M");
            string cfg = Path.Combine(Dir, Name + ".cfg");
            File.WriteAllText(cfg, $"""
                name = "{Name}"
                type = "pvh"
                kernel = "{_store.KernelPath}"
                ramdisk = "{_store.DiskInitrdPath}"
                cmdline = "console=hvc0 root=/dev/xvda"
                memory = 512
                disk = [ 'format=raw,vdev=xvda,access=rw,target={root}', 'format=qcow2,vdev=xvdb,access=rw,backendtype=qdisk,target={QcowPath}' ]
                on_poweroff = "destroy"
                on_crash = "preserve"
                """);
            _console = new LinuxPvhTests.ConsoleSession(Dir, "create", "-c", cfg);
            _console.WaitFor(RootFilesystem.Prompt, LinuxPvhTests.BootLimit);
            _console.Ask("until [ -e /sys/block/xvdb ]; do sleep 1; done; echo disks-e\"\"nd", "disks-end", TimeSpan.FromMinutes(2));
        }

        public void Dispose()
        {
            _xl.Run("destroy", Name);
            _console.Dispose();
            _xl.Dispose();
        }
    }
}
