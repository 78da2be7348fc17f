using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// The PV block and network backends with a classic PV guest as their frontend: Debian's kernel as a 64-bit PV domU,
/// whose blkfront and netfront grant their frames by machine frame number (a PV guest is not translated). One guest,
/// booted once for the class inside a network namespace with a bridge (as <see cref="LinuxNetworkTests"/> does), gets
/// an ext4 file system made on the host as a qcow2 disk (xvda), a raw disk (xvdb) and a vif on the bridge. It mounts
/// the file system, reads and writes both disks, and pings the host side.
/// </summary>
public sealed partial class LinuxPvDeviceTests(LinuxPvDeviceTests.PvDeviceGuest guest) : IClassFixture<LinuxPvDeviceTests.PvDeviceGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    private static string HostMd5(string path) => Convert.ToHexStringLower(MD5.HashData(File.ReadAllBytes(path)));

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void ThePvGuestMountsTheQcow2FileSystemAndWhatItWritesReachesTheImage()
    {
        string mounted = guest.Console.Ask(
            "mkdir -p /mnt && mount -t ext4 /dev/xvda /mnt && cat /mnt/hello.txt && grep ' /mnt ' /proc/mounts; echo mounted-e\"\"nd",
            "mounted-end", IoLimit);
        Assert.Contains(PvDeviceGuest.HelloText, mounted);
        Assert.Contains("/dev/xvda /mnt ext4 rw", mounted);
        string wrote = guest.Console.Ask(
            "echo written-by-pv-$((6*7)) >/mnt/guest.txt && umount /mnt; echo umount-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("umount-0-end", wrote);
        // The file the guest wrote is in the qcow2 image's file system, as the host's e2fsprogs read it.
        string raw = Path.Combine(guest.RunDir, "fs-after.raw");
        PvDeviceGuest.Tool("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", guest.QcowPath, raw);
        string cat = PvDeviceGuest.Tool("debugfs", "-R", "cat /guest.txt", raw);
        Assert.Contains("written-by-pv-42", cat);
    }

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void ThePvGuestReadsTheRawDiskExactlyAndItsWritesReachTheFile()
    {
        var m = Md5Line().Match(guest.Console.Ask("echo md5-$(md5sum </dev/xvdb | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        Assert.Equal(HostMd5(guest.RawPath), m.Groups[1].Value);

        string reply = guest.Console.Ask(
            "yes XenSharpPv | head -c 65536 | dd of=/dev/xvdb bs=4096 seek=512 conv=fsync 2>/dev/null; sync; echo written-$?-e\"\"nd",
            "-end", IoLimit);
        Assert.Contains("written-0-end", reply);
        byte[] expected = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("XenSharpPv\n", 65536 / 11 + 1)))[..65536];
        using var f = new FileStream(guest.RawPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var got = new byte[65536];
        f.Position = 2 << 20;
        f.ReadExactly(got);
        Assert.Equal(expected, got);
    }

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void ThePvGuestPingsTheHostSideOverItsVif()
    {
        string reply = guest.Console.Ask("ping -c 3 10.97.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ping-0-end", reply);
        Assert.Contains("3 packets received", reply);
        var host = guest.InNamespace("busybox", "ping", "-c", "2", "-W", "10", PvDeviceGuest.GuestIp);
        Assert.True(host.ExitCode == 0, host.ToString());
        Assert.Equal("4", guest.XenstoreRead($"/local/domain/0/backend/vif/{guest.DomId}/0/state"));
    }

    /// <summary>The namespace with its bridge, the daemon inside it, and the PV guest of the class at its shell with
    /// both disks present and eth0 addressed.</summary>
    public sealed class PvDeviceGuest : IDisposable
    {
        public const string GuestIp = "10.97.0.2";
        public const string HelloText = "hello-from-the-host-file-system";
        public const int RawBytes = 8 << 20;
        private readonly XlHost _xl = new();
        private readonly NetworkNamespace _net = null!;

        public string RunDir => _xl.RunDir;
        public string RawPath { get; }
        public string QcowPath { get; }
        internal LinuxPvhTests.ConsoleSession Console { get; } = null!;
        public string DomId => _xl.Run("domid", "pvdev").Stdout.Trim();

        public PvDeviceGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/etc/xen/scripts/vif-bridge"), "Xen's hotplug scripts (xen-utils-common) are not installed");

            // An ext4 file system made without root (mkfs.ext4 -d), as a qcow2 image; and a raw disk of a known pattern.
            string tree = Directory.CreateDirectory(Path.Combine(RunDir, "fs-tree")).FullName;
            File.WriteAllText(Path.Combine(tree, "hello.txt"), HelloText + "\n");
            string fsRaw = Path.Combine(RunDir, "fs.raw");
            Tool("mkfs.ext4", "-q", "-F", "-d", tree, fsRaw, "16M");
            QcowPath = Path.Combine(RunDir, "fs.qcow2");
            Tool("qemu-img", "convert", "-f", "raw", "-O", "qcow2", fsRaw, QcowPath);
            RawPath = Path.Combine(RunDir, "raw.img");
            File.WriteAllBytes(RawPath, LinuxBlockTests.BlockGuest.Pattern(3, RawBytes));

            // The shell initramfs with ext4 beside the Xen front-ends, loaded in dependency order.
            string initrd = Path.Combine(RunDir, "initrd-pv.img");
            string[] modules = ["crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", .. GuestArtifacts.XenModules];
            store.BuildInitramfs(initrd, GuestArtifacts.ShellInit.Replace(
                "for m in /lib/modules/*.ko; do", $"for m in {string.Join(' ', modules.Select(m => $"/lib/modules/{m}.ko"))}; do"), modules);

            try
            {
                _net = new NetworkNamespace("xspv", RunDir);
                _net.AddBridge("xenbr0", "10.97.0.1/24");
                _net.StartDaemon();

                string cfg = Path.Combine(RunDir, "pvdev.cfg");
                File.WriteAllText(cfg, $"""
                    name = "pvdev"
                    type = "pv"
                    kernel = "{store.KernelPath}"
                    ramdisk = "{initrd}"
                    cmdline = "console=hvc0"
                    memory = 512
                    vcpus = 2
                    on_crash = "preserve"
                    disk = [ 'format=qcow2,vdev=xvda,access=rw,target={QcowPath}', 'format=raw,vdev=xvdb,access=rw,target={RawPath}' ]
                    vif = [ 'mac=00:16:3e:5a:02:01,bridge=xenbr0' ]
                    """);
                Console = new LinuxPvhTests.ConsoleSession(RunDir, "create", "-c", cfg);
                Console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
                Console.Ask("until [ -e /sys/block/xvda ] && [ -e /sys/block/xvdb ] && [ -e /sys/class/net/eth0 ]; do sleep 1; done; echo devs-e\"\"nd",
                    "devs-end", TimeSpan.FromMinutes(2));
                string reply = Console.Ask($"ip link set eth0 up; ip addr add {GuestIp}/24 dev eth0; echo ip-$(ip -4 -o addr show eth0 | awk '{{print $4}}')-e\"\"nd", "-end");
                Assert.Contains($"ip-{GuestIp}/24-end", reply);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public XlResult InNamespace(params string[] command) => _net.Run(command);

        public string XenstoreRead(string path) => NetworkNamespace.XenstoreRead(RunDir, path);

        /// <summary>Runs a host tool and gives its standard output; it must succeed.</summary>
        internal static string Tool(string file, params string[] args)
        {
            var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {err.Result}");
            return output;
        }

        public void Dispose()
        {
            Console?.Dispose();
            _xl.Run("destroy", "pvdev");
            _xl.Dispose();
            _net?.Dispose();
        }
    }
}
