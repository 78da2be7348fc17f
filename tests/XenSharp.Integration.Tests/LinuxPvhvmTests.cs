using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace XenSharp.Integration.Tests;

/// <summary>
/// PVHVM as libxl sets it up for <c>type="hvm"</c>: Debian's kernel boots from a <c>grub-mkrescue</c> CD under
/// hvmloader and SeaBIOS, with a raw disk as <c>hda</c> and a nic with <c>model=e1000</c> on a bridge. Each is both an
/// emulated device of QEMU (the IDE disk; the e1000 on the TAP device vifD.0-emu, which the nic's vif-bridge script put
/// on the bridge) and a PV device (vbd, vif). Linux finds Xen's platform PCI device, writes the unplug request to its
/// port, QEMU takes the emulated disk and NIC away, and blkfront and netfront serve the guest: the disk is /dev/xvda and
/// eth0 is netfront's. <c>xl reboot</c> goes through control/shutdown, Linux resets through QEMU, QEMU reports the
/// reboot to the hypervisor (XEN_DMOP_remote_shutdown), and the guest comes back in a new domain with a new QEMU;
/// <c>xl shutdown</c> then makes Linux power off through ACPI S5, which QEMU's PIIX4 reports the same way, and the
/// domain and its QEMU end. The daemon runs in a network namespace of the class with its bridge; one guest is booted
/// for the class (and once more by the reboot), and the tests run in the order written.
/// </summary>
[TestCaseOrderer("XenSharp.Integration.Tests.LinuxPvhvmTests+Order", "XenSharp.Integration.Tests")]
public sealed partial class LinuxPvhvmTests(LinuxPvhvmTests.PvhvmGuest guest) : IClassFixture<LinuxPvhvmTests.PvhvmGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    [Fact]
    [Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM"), Trait("Feature", "Blkfront")]
    public void TheEmulatedDiskIsUnpluggedAndBlkfrontServesItAsXvda()
    {
        Assert.Contains("unplug emulated disks", guest.BootLog);
        // QEMU gave up the IDE disk; the CD-ROM, which is never unplugged, stays.
        var blocks = guest.Qmp("query-block")!.AsArray().Select(b => (string?)b!["device"]).ToList();
        Assert.DoesNotContain("ide0-hd0", blocks);
        Assert.Contains("ide-5632", blocks);

        string size = guest.Serial.Ask("echo size-$(cat /sys/block/xvda/size)-e\"\"nd", "-end");
        Assert.Contains($"size-{PvhvmGuest.DiskBytes / 512}-end", size);
        var m = Md5Line().Match(guest.Serial.Ask("echo md5-$(md5sum </dev/xvda | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        Assert.Equal(Convert.ToHexStringLower(MD5.HashData(File.ReadAllBytes(guest.DiskPath))), m.Groups[1].Value);
        // No emulated disk is left to the guest: only blkfront's.
        string disks = guest.Serial.Ask("echo disks-$(ls /sys/block | tr '\\n' ' ')-e\"\"nd", "-end");
        Assert.Matches(@"disks-(loop\d+ |ram\d+ )*xvda (loop\d+ |ram\d+ )*-end", disks);
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM"), Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void TheEmulatedNicIsUnpluggedAndNetfrontServesTheVif()
    {
        Assert.Contains("unplug emulated NICs", guest.BootLog);
        // Both halves were on the bridge once xl create returned: the vif for netfront and QEMU's TAP device for the
        // e1000, put there by vif-bridge.
        var ports = guest.BridgePortsAtCreate.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains($"vif{guest.DomId}.0", ports);
        Assert.Contains($"vif{guest.DomId}.0-emu", ports);
        // QEMU took the e1000 off its PCI bus, and with it its TAP device; the vif stays.
        var devices = guest.Qmp("query-pci")!.AsArray().SelectMany(b => b!["devices"]!.AsArray()).ToList();
        Assert.DoesNotContain(devices, d => (string?)d!["qdev_id"] == "nic0");
        Assert.Equal([$"vif{guest.DomId}.0"], guest.InNamespace("ls", "/sys/class/net/xenbr0/brif").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));

        string driver = guest.Serial.Ask("echo drv-$(basename $(readlink /sys/class/net/eth0/device/driver))-e\"\"nd", "-end");
        Assert.Contains("drv-vif-end", driver);
        string ping = guest.Serial.Ask("ip link set eth0 up; ip addr add 10.97.0.2/24 dev eth0; ping -c 2 -W 10 10.97.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ping-0-end", ping);
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM")]
    public void XlRebootGoesThroughControlShutdownAndRestartsTheDomainWithANewQemu()
    {
        string first = guest.DomId;
        string firstQemu = guest.XenstoreRead($"/local/domain/0/libxl/{first}/dm-pid");
        Assert.Equal("1", guest.XenstoreRead($"/local/domain/{first}/control/feature-reboot"));
        var r = guest.Xl("reboot", "pvhvm");
        Assert.True(r.ExitCode == 0, r.ToString());
        // Linux restarts through the reset QEMU serves; QEMU reports the reboot, and on_reboot's restart builds the
        // guest again with a QEMU of its own, from whose serial port the guest's second boot comes.
        guest.Serial.WaitFor("reboot: Restarting system", TimeSpan.FromMinutes(3));
        guest.WaitForRestart(first);
        Assert.NotEqual(first, guest.DomId);
        string secondQemu = guest.XenstoreRead($"/local/domain/0/libxl/{guest.DomId}/dm-pid");
        Assert.NotEqual(firstQemu, secondQemu);
        Assert.True(XlHost.WaitUntil(() => !Directory.Exists($"/proc/{firstQemu}"), TimeSpan.FromSeconds(30)), "the first domain's QEMU still runs");
        Assert.Contains("unplug emulated disks", guest.BootLog);
        Assert.Contains("xvda-end", guest.Serial.Ask("ls /sys/block/xvda >/dev/null && echo xvda-e\"\"nd", "xvda-end"));
    }

    [Fact]
    [Trait("Feature", "x86/PVHVM"), Trait("Feature", "x86/HVM")]
    public void XlShutdownGoesThroughControlShutdownAndAcpiThroughQemu()
    {
        Assert.Equal("1", guest.XenstoreRead($"/local/domain/{guest.DomId}/control/feature-poweroff"));
        string qemu = guest.XenstoreRead($"/local/domain/0/libxl/{guest.DomId}/dm-pid");
        Assert.True(Directory.Exists($"/proc/{qemu}"), $"no QEMU with pid {qemu}");
        var r = guest.Xl("shutdown", "pvhvm");
        Assert.True(r.ExitCode == 0, r.ToString());
        guest.Serial.WaitFor("ACPI: PM: Preparing to enter system sleep state S5", TimeSpan.FromMinutes(3));
        guest.Serial.WaitFor("reboot: Power down", TimeSpan.FromMinutes(2));
        Assert.True(XlHost.WaitUntil(() => !guest.Xl("list").Stdout.Contains("pvhvm "), TimeSpan.FromMinutes(2)),
            "the domain did not end:\n" + guest.Xl("list").Stdout);
        Assert.True(XlHost.WaitUntil(() => !Directory.Exists($"/proc/{qemu}"), TimeSpan.FromSeconds(30)), "its QEMU still runs");
    }

    /// <summary>Runs the class's tests in the order they are written: the shutdown ends the guest they share.</summary>
    public sealed class Order() : DeclaredOrder(
        nameof(TheEmulatedDiskIsUnpluggedAndBlkfrontServesItAsXvda),
        nameof(TheEmulatedNicIsUnpluggedAndNetfrontServesTheVif),
        nameof(XlRebootGoesThroughControlShutdownAndRestartsTheDomainWithANewQemu),
        nameof(XlShutdownGoesThroughControlShutdownAndAcpiThroughQemu));

    /// <summary>The guest of the class, booted once: its CD image and disk made on the host, its serial port on a Unix
    /// socket, the daemon and QEMU in a network namespace with the bridge xenbr0 (10.97.0.1/24).</summary>
    public sealed class PvhvmGuest : IDisposable
    {
        public const int DiskBytes = 4 << 20;
        private static readonly TimeSpan BootLimit = TimeSpan.FromMinutes(12);
        private readonly XlHost _xl = new();
        private readonly NetworkNamespace _net = null!;

        public string DiskPath { get; }
        internal SerialSocket Serial { get; private set; } = null!;
        public string DomId { get; private set; } = "";
        /// <summary>The serial output of the last boot up to the shell.</summary>
        public string BootLog { get; private set; } = "";
        private string SocketPath => Path.Combine(_xl.RunDir, "serial.sock");
        /// <summary>The bridge's ports right after <c>xl create</c>, before the guest ran far enough to unplug anything.</summary>
        public string BridgePortsAtCreate { get; } = "";

        public PvhvmGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/usr/lib/grub/i386-pc/modinfo.sh") && File.Exists("/usr/bin/xorriso"),
                "grub-mkrescue needs grub-pc-bin, xorriso and mtools (scripts/install-deps.sh)");
            Assert.True(File.Exists("/etc/xen/scripts/vif-bridge"), "Xen's hotplug scripts (xen-utils-common) are not installed");
            DiskPath = Path.Combine(_xl.RunDir, "disk.img");
            var disk = new byte[DiskBytes];
            for (int i = 0; i < disk.Length; i++) disk[i] = (byte)(i * 7 + i / 4096);
            File.WriteAllBytes(DiskPath, disk);
            string iso = GrubRescueImage.Debian(store, _xl.RunDir);

            try
            {
                _net = new NetworkNamespace("xspvhvm", _xl.RunDir);
                _net.AddBridge("xenbr0", "10.97.0.1/24");
                _net.StartDaemon();   // and with it the QEMU it starts

                string socket = SocketPath;
                string cfg = Path.Combine(_xl.RunDir, "pvhvm.cfg");
                File.WriteAllText(cfg, $"""
                    name = "pvhvm"
                    type = "hvm"
                    memory = 256
                    vcpus = 1
                    serial = "unix:{socket},server=on,wait=off"
                    disk = [ "{iso},raw,hdc,cdrom", "{DiskPath},raw,hda,rw" ]
                    vif = [ "mac=00:16:3e:5a:00:09,bridge=xenbr0,model=e1000" ]
                    boot = "d"
                    on_crash = "preserve"
                    """);
                var created = _xl.Run(TimeSpan.FromMinutes(2), "create", cfg);
                Assert.True(created.ExitCode == 0, created.ToString());
                Serial = new SerialSocket(socket, TimeSpan.FromSeconds(30));
                BridgePortsAtCreate = InNamespace("ls", "/sys/class/net/xenbr0/brif").Stdout;
                DomId = _xl.Run("domid", "pvhvm").Stdout.Trim();
                WaitForShell();
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        private void WaitForShell()
        {
            BootLog = Serial.WaitFor("~ # ", BootLimit);
            Serial.Ask("until [ -e /sys/block/xvda ] && [ -e /sys/class/net/eth0 ]; do sleep 1; done; echo pv-e\"\"nd", "pv-end", TimeSpan.FromMinutes(2));
        }

        /// <summary>After a reboot: the guest's next domain, its QEMU's serial socket, and its shell.</summary>
        public void WaitForRestart(string previous)
        {
            string next = "";
            Assert.True(XlHost.WaitUntil(() => (next = _xl.Run("domid", "pvhvm").Stdout.Trim()) is { Length: > 0 } && next != previous
                    && XenstoreRead($"/local/domain/0/device-model/{next}/state") == "running", TimeSpan.FromMinutes(2)),
                "the guest was not restarted:\n" + _xl.Run("list").Stdout);
            DomId = next;
            Serial.Dispose();
            Serial = new SerialSocket(SocketPath, TimeSpan.FromSeconds(30));
            WaitForShell();
        }

        public XlResult Xl(params string[] args) => _xl.Run(args);

        public System.Text.Json.Nodes.JsonNode? Qmp(string command)
        {
            using var qmp = new QmpClient(Path.Combine(_xl.RunDir, $"qmp-libxl-{DomId}"));
            return qmp.Execute(command);
        }

        public XlResult InNamespace(params string[] command) => _net.Run(command);

        public string XenstoreRead(string path) => NetworkNamespace.XenstoreRead(_xl.RunDir, path);

        public void Dispose()
        {
            _xl.Run("destroy", "pvhvm");
            Serial?.Dispose();
            _xl.Dispose();
            _net?.Dispose();
        }
    }
}
