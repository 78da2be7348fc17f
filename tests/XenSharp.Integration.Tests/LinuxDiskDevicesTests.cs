using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian booted once for the class from a raw copy of the artifacts' root file system (xvda), with disks to
/// work on: a raw and a qcow2 disk that grow on the host while the guest has them mounted, a read-only disk and
/// an empty cdrom drive. Disks attached later carry a file system the guest makes back to the host, and what
/// `xl create` must refuse (a missing image, an image another domain writes) leaves no domain behind.
/// </summary>
public sealed partial class LinuxDiskDevicesTests(LinuxDiskDevicesTests.DiskGuest guest) : IClassFixture<LinuxDiskDevicesTests.DiskGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(10);

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void DebianRunsFromARawRootDisk()
    {
        string mounts = guest.Ask("grep ' / ' /proc/mounts; echo mounts-e\"\"nd", "mounts-end");
        Assert.Contains("/dev/xvda / ext4 rw", mounts);
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback"), Trait("Feature", "QEMU backend hotplugging for xl")]
    public void AFileSystemMadeOnAHotAttachedDiskReachesTheHost()
    {
        string image = Path.Combine(guest.Dir, "hot.img");
        using (var f = File.Create(image)) f.SetLength(80 << 20);
        var attach = guest.Xl("block-attach", DiskGuest.Name, "format=raw,vdev=xvdf,access=rw,target=" + image);
        Assert.True(attach.ExitCode == 0, attach.ToString());
        guest.Ask("until [ -e /sys/block/xvdf ]; do sleep 1; done; echo hot-e\"\"nd", "hot-end", TimeSpan.FromMinutes(2));
        string made = guest.Ask(
            "mkdir -p /mnt/f && mkfs.ext4 -q -F /dev/xvdf && mount /dev/xvdf /mnt/f && " +
            "dd if=/dev/urandom of=/mnt/f/big bs=1048576 count=64 2>/dev/null && " +
            "echo md5-$(md5sum /mnt/f/big | cut -c1-32)-e\"\"nd; umount /mnt/f", "-end", IoLimit);
        var m = Md5Line().Match(made);
        Assert.True(m.Success, $"no md5 from the guest:\n{made}");
        Assert.Contains("umount-0-end", guest.Ask("echo umount-$?-e\"\"nd", "-end"));

        var detach = guest.Xl("block-detach", DiskGuest.Name, "xvdf");
        Assert.True(detach.ExitCode == 0, detach.ToString());
        guest.Ask("while [ -e /sys/block/xvdf ]; do sleep 1; done; echo gone-e\"\"nd", "gone-end", TimeSpan.FromMinutes(2));

        // e2fsprogs on the host reads the guest's file out of the image.
        string dumped = Path.Combine(guest.Dir, "big.out");
        var dump = Tool.Run("debugfs", "-R", $"dump /big {dumped}", image);
        Assert.True(File.Exists(dumped), $"debugfs dump: {dump.Output}");
        Assert.Equal(64L << 20, new FileInfo(dumped).Length);
        using (var s = File.OpenRead(dumped))
            Assert.Equal(m.Groups[1].Value, Convert.ToHexStringLower(MD5.HashData(s)));
    }

    [Fact]
    [Trait("Feature", "Online resize of virtual disks"), Trait("Feature", "Blkfront")]
    public void DisksGrownWithQemuImgWhileMountedGrowInTheGuest()
    {
        string ready = guest.Ask(
            "mkdir -p /mnt/b /mnt/c && mkfs.ext4 -q -F /dev/xvdb && mkfs.ext4 -q -F /dev/xvdc && " +
            "mount /dev/xvdb /mnt/b && mount /dev/xvdc /mnt/c && echo kept > /mnt/b/f && echo kept > /mnt/c/f && sync && " +
            "echo sizes-$(cat /sys/block/xvdb/size)-$(cat /sys/block/xvdc/size)-e\"\"nd", "-end", IoLimit);
        Assert.Contains($"sizes-{DiskGuest.GrowBytes / 512}-{DiskGuest.GrowBytes / 512}-end", ready);

        Tool.Check("qemu-img", "resize", "-q", "-f", "raw", guest.RawGrowPath, "48M");
        Tool.Check("qemu-img", "resize", "-q", "-f", "qcow2", guest.QcowGrowPath, "48M");
        const int Sectors = (48 << 20) / 512;
        string grown = guest.Ask(
            $"until [ $(cat /sys/block/xvdb/size) = {Sectors} ] && [ $(cat /sys/block/xvdc/size) = {Sectors} ]; do sleep 1; done; " +
            $"echo grown-$(dd if=/dev/xvdc bs=512 skip={Sectors - 1} count=1 2>/dev/null | wc -c)-$(cat /mnt/b/f /mnt/c/f | tr '\\n' '-')e\"\"nd",
            "-end", TimeSpan.FromMinutes(3));
        Assert.Contains("grown-512-kept-kept-end", grown);
        // blkfront re-read sectors when the backend wrote its state again.
        Assert.Contains($"Setting capacity to {Sectors}", guest.Ask("dmesg | grep 'Setting capacity'; echo cap-e\"\"nd", "cap-end"));
        guest.Ask("umount /mnt/b /mnt/c; echo u-e\"\"nd", "u-end");
        var check = Tool.Run("qemu-img", "check", guest.QcowGrowPath);
        Assert.True(check.Code == 0, $"qemu-img check after the resize: {check.Output}");
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void TheReadOnlyDiskRefusesWritesInTheGuest()
    {
        string before = Md5(guest.ReadOnlyPath);
        string reply = guest.Ask(
            "echo ro-$(cat /sys/block/xvdd/ro); dd if=/dev/zero of=/dev/xvdd bs=512 count=1 conv=fsync; echo dd-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ro-1", reply);
        Assert.DoesNotContain("dd-0-end", reply);
        Assert.Equal(before, Md5(guest.ReadOnlyPath));
    }

    [Fact]
    [Trait("Feature", "xl"), Trait("Feature", "Blkback")]
    public void AMissingOrBusyImageIsAClearCreateErrorAndLeavesNoDomain()
    {
        string missing = Path.Combine(guest.Dir, "missing.qcow2");
        var r = guest.Xl("create", guest.Config("half", $"format=qcow2,vdev=xvda,access=rw,target={missing}"));
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains($"disk xvda: {missing}", r.Stderr);

        var busy = guest.Xl("create", guest.Config("half", $"format=raw,vdev=xvda,access=rw,target={guest.RootPath}"));
        Assert.NotEqual(0, busy.ExitCode);
        Assert.Contains($"File {guest.RootPath} is mounted in a guest domain", busy.Stderr);
        var reader = guest.Xl("create", guest.Config("half", $"format=raw,vdev=xvda,access=ro,target={guest.RootPath}"));
        Assert.Contains("is mounted read-write in a guest domain", reader.Stderr);
        var attach = guest.Xl("block-attach", DiskGuest.Name, $"format=raw,vdev=xvdg,access=rw,target={guest.RootPath}");
        Assert.Equal(0, attach.ExitCode); // the same domain may use its own image twice, as the block script allows

        // A specification xl cannot read is refused with the file and the line of disk=.
        string bad = guest.Config("half", "format=raw,vdev=hde,access=rw,target=/dev/null");
        var parse = guest.Xl("create", bad);
        Assert.NotEqual(0, parse.ExitCode);
        Assert.Contains($"{bad}:7: config parsing error in disk specification: invalid or unsupported virtual disk identifier: near `hde'", parse.Stderr);

        Assert.DoesNotContain("half", guest.Xl("list").Stdout);
        Assert.Equal(0, guest.Xl("block-detach", DiskGuest.Name, "xvdg").ExitCode);
    }

    /// <summary>A shell function reading one xenstore node through the guest kernel's /dev/xen/xenbus: an XS_READ
    /// message (type 2, request and transaction 0, the path's length with its NUL) and the reply after its header.</summary>
    private const string XsRead =
        @"xsread() { exec 3<>/dev/xen/xenbus; printf ""\002\0\0\0\0\0\0\0\0\0\0\0\\$(printf %03o $((${#1}+1)))\0\0\0%s\0"" ""$1"" >&3; " +
        @"dd bs=4096 count=1 <&3 2>/dev/null | tail -c +17; exec 3<&-; }";

    /// <summary>What the guest reads of its cdrom drive (xvde, device 51776) in xenstore: the backend's sectors and params.</summary>
    private string GuestSeesDrive()
    {
        guest.Ask(XsRead + "; echo def-e\"\"nd", "def-end");
        return guest.Ask("b=$(xsread device/vbd/51776/backend); echo drive-$(xsread $b/sectors)-$(xsread $b/params)-e\"\"nd", "-end");
    }

    [Fact]
    [Trait("Feature", "CD-ROM media change")]
    public void CdInsertAndEjectAreSeenByTheGuest()
    {
        string iso = Path.Combine(guest.Dir, "disc.iso");
        File.WriteAllBytes(iso, new byte[2 << 20]);
        Assert.Contains("drive-0--end", GuestSeesDrive());

        var insert = guest.Xl("cd-insert", DiskGuest.Name, "xvde", iso);
        Assert.True(insert.ExitCode == 0, insert.ToString());
        // The backend opens the medium on its own thread: the guest waits for the new size.
        guest.Ask(XsRead + "; b=$(xsread device/vbd/51776/backend); until [ \"$(xsread $b/sectors)\" = 4096 ]; do sleep 1; done; echo in-e\"\"nd",
            "in-end", TimeSpan.FromMinutes(2));
        Assert.Contains($"drive-4096-{iso}-end", GuestSeesDrive());

        Assert.Contains("Virtual device not found", guest.Xl("cd-insert", DiskGuest.Name, "xvda", iso).Stderr);
        Assert.Contains("Cannot stat file", guest.Xl("cd-insert", DiskGuest.Name, "xvde", iso + ".none").Stderr);
        var eject = guest.Xl("cd-eject", DiskGuest.Name, "xvde");
        Assert.True(eject.ExitCode == 0, eject.ToString());
        guest.Ask("until [ \"$(xsread $b/sectors)\" = 0 ]; do sleep 1; done; echo out-e\"\"nd", "out-end", TimeSpan.FromMinutes(2));
        Assert.Contains("drive-0--end", GuestSeesDrive());
        // Linux's blkfront binds no PV cdrom in an HVM-type (PVH) guest, as under Xen: no xvde block device.
        Assert.Contains("cd-0-end", guest.Ask("echo cd-$(ls /sys/block | grep -c xvde)-e\"\"nd", "-end"));
    }

    [GeneratedRegex(@"VBD BlkBack 51760 \[[^\]]*\]\s+OO:\s+\d+\s+RD:\s+(\d+)\s+WR:\s+(\d+)\s+RSECT:\s+(\d+)\s+WSECT:\s+(\d+)")]
    private static partial Regex XentopXvdd();

    [Fact]
    [Trait("Feature", "Blkback")]
    public void XentopCountsTheReadsOfTheGuest()
    {
        // 4 MiB read past the guest's page cache: at least 8192 sectors, and nothing written to a read-only disk.
        Assert.Contains("dd-0-end", guest.Ask("dd if=/dev/xvdd of=/dev/null bs=1M iflag=direct 2>/dev/null; echo dd-$?-e\"\"nd", "-end", IoLimit));
        Match m = Match.Empty;
        string last = "";
        Assert.True(XlHost.WaitUntil(() =>
        {
            var top = guest.Dom0("xentop", "-b", "-i", "1", "-x");
            last = top.ToString();
            m = XentopXvdd().Match(top.Stdout);
            return m.Success && long.Parse(m.Groups[3].Value) >= 8192;
        }, TimeSpan.FromSeconds(60)), $"xentop does not show xvdd's reads:\n{last}");
        Assert.True(long.Parse(m.Groups[1].Value) >= 4, last);
        Assert.Equal("0", m.Groups[2].Value);
        Assert.Equal("0", m.Groups[4].Value);
    }

    private static string Md5(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(MD5.HashData(s));
    }

    /// <summary>The guest of the class and its images.</summary>
    public sealed class DiskGuest : IDisposable
    {
        public const string Name = "disks";
        public const int GrowBytes = 16 << 20;
        private readonly XlHost _xl = new();
        private readonly GuestArtifacts _store = new();
        private readonly LinuxPvhTests.ConsoleSession _console;

        public string Dir => _xl.RunDir;
        public string RootPath { get; }
        public string RawGrowPath { get; }
        public string QcowGrowPath { get; }
        public string ReadOnlyPath { get; }

        public XlResult Xl(params string[] args) => _xl.Run(TimeSpan.FromMinutes(2), args);

        /// <summary>Runs a program of Xen's userland against the class's daemon.</summary>
        public XlResult Dom0(params string[] args) => _xl.RunDom0(args);

        public string Ask(string command, string expect, TimeSpan? limit = null) => _console.Ask(command, expect, limit ?? TimeSpan.FromMinutes(2));

        /// <summary>A configuration like examples/debian-disk.cfg, named <paramref name="name"/>, with these disks.</summary>
        public string Config(string name, params string[] disks)
        {
            string cfg = Path.Combine(Dir, name + ".cfg");
            File.WriteAllText(cfg, $"""
                name = "{name}"
                type = "pvh"
                kernel = "{_store.KernelPath}"
                ramdisk = "{_store.DiskInitrdPath}"
                cmdline = "console=hvc0 root=/dev/xvda"
                memory = 512
                disk = [ {string.Join(", ", disks.Select(d => $"'{d}'"))} ]
                on_poweroff = "destroy"
                on_crash = "preserve"
                """);
            return cfg;
        }

        public DiskGuest()
        {
            Assert.True(_store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {_store.DebianDir}");
            RootPath = Path.Combine(Dir, "root.raw");
            File.Copy(_store.RootfsRawPath, RootPath);
            RawGrowPath = Path.Combine(Dir, "grow.raw");
            QcowGrowPath = Path.Combine(Dir, "grow.qcow2");
            ReadOnlyPath = Path.Combine(Dir, "ro.img");
            Tool.Check("qemu-img", "create", "-q", "-f", "raw", RawGrowPath, "16M");
            Tool.Check("qemu-img", "create", "-q", "-f", "qcow2", QcowGrowPath, "16M");
            File.WriteAllBytes(ReadOnlyPath, LinuxBlockTests.BlockGuest.Pattern(9, 4 << 20));
            string cfg = Config(Name,
                $"format=raw,vdev=xvda,access=rw,target={RootPath}",
                $"format=raw,vdev=xvdb,access=rw,target={RawGrowPath}",
                $"format=qcow2,vdev=xvdc,access=rw,target={QcowGrowPath}",
                $"format=raw,vdev=xvdd,access=r,target={ReadOnlyPath}",
                "vdev=xvde,devtype=cdrom");
            _console = new LinuxPvhTests.ConsoleSession(Dir, "create", "-c", cfg);
            _console.WaitFor(RootFilesystem.Prompt, LinuxPvhTests.BootLimit);
            _console.Ask("until [ -e /sys/block/xvdb ] && [ -e /sys/block/xvdc ] && [ -e /sys/block/xvdd ]; do sleep 1; done; echo disks-e\"\"nd",
                "disks-end", TimeSpan.FromMinutes(2));
        }

        public void Dispose()
        {
            _xl.Run("destroy", Name);
            _console.Dispose();
            _xl.Dispose();
        }
    }
}

/// <summary>Host tools the disk tests run (qemu-img, e2fsprogs).</summary>
internal static class Tool
{
    public static (int Code, string Output) Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + stderr.Result);
    }

    public static void Check(string tool, params string[] args)
    {
        var r = Run(tool, args);
        Assert.True(r.Code == 0, $"{tool} {string.Join(' ', args)}: {r.Output}");
    }
}
