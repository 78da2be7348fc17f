using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Open vSwitch as the vif's switch, judged by Debian's kernel and xen-netfront. The class makes a network namespace
/// and runs Debian's ovsdb-server and ovs-vswitchd inside it with a private run directory (OVS_RUNDIR, which the
/// daemon and so Xen's own vif-openvswitch hotplug script inherit) and the userspace datapath (netdev), which needs
/// no kernel module; its bridge ovsbr0 has the host address 10.96.0.1/24 on its internal port. One guest is booted
/// with <c>bridge=ovsbr0,script=vif-openvswitch</c>: its vif is a port of the bridge carrying Xen's external ids,
/// the guest pings the bridge's address and files cross both ways over TCP unchanged, and a vif attached with
/// <c>bridge=ovsbr0.10</c> is an access port of VLAN 10, reaching the host on VLAN 10 and not on VLAN 20.
/// </summary>
public sealed partial class LinuxOpenvSwitchTests(LinuxOpenvSwitchTests.OvsGuest guest) : IClassFixture<LinuxOpenvSwitchTests.OvsGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);
    private const int FileBytes = 64 << 20;
    private const string Mac = "00:16:3e:5b:00:01";

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    private string GuestMd5(string path)
    {
        var m = Md5Line().Match(guest.Console.Ask($"echo md5-$(md5sum <{path} | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        return m.Groups[1].Value;
    }

    [Fact]
    [Trait("Feature", "Open vSwitch integration for xl"), Trait("Feature", "Netback")]
    public void TheVifIsAPortOfTheOvsBridgeWithXensIds()
    {
        string vif = $"vif{guest.DomId}.0";
        Assert.Contains(vif, guest.Ovs("list-ports", "ovsbr0").Stdout.Split('\n'));
        Assert.Equal($"\"{Mac}\"", guest.Ovs("get", "interface", vif, "external-ids:attached-mac").Stdout.Trim());
        Assert.Equal("ovs", guest.Ovs("get", "interface", vif, "external-ids:xen-vm-name").Stdout.Trim());
        string be = $"/local/domain/0/backend/vif/{guest.DomId}/0";
        Assert.Equal("connected", guest.XenstoreRead($"{be}/hotplug-status"));
        Assert.Equal("ovsbr0", guest.XenstoreRead($"{be}/bridge"));
        Assert.EndsWith("/vif-openvswitch", guest.XenstoreRead($"{be}/script"));
        Assert.Equal("4", guest.XenstoreRead($"{be}/state"));
    }

    [Fact]
    [Trait("Feature", "Open vSwitch integration for xl"), Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void TheGuestReachesTheBridgesAddressAndFilesCrossBothWays()
    {
        string reply = guest.Console.Ask("ping -c 3 10.96.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ping-0-end", reply);
        Assert.Contains("3 packets received", reply);

        // Guest → host.
        string received = Path.Combine(guest.RunDir, "from-guest.bin");
        guest.Console.Ask($"dd if=/dev/urandom of=/tmp/out.bin bs=65536 count={FileBytes / 65536} 2>/dev/null; echo made-e\"\"nd", "made-end", IoLimit);
        string sent = GuestMd5("/tmp/out.bin");
        using (var listener = guest.StartInNamespace("sh", "-c", $"exec busybox nc -l -p 5101 > {received}"))
        {
            guest.WaitForListener(5101);
            reply = guest.Console.Ask("nc 10.96.0.1 5101 </tmp/out.bin; echo sent-$?-e\"\"nd", "-end", IoLimit);
            Assert.Contains("sent-0-end", reply);
            Assert.True(listener.WaitForExit(IoLimit), "the host's nc did not see the end of the file");
        }
        Assert.Equal(FileBytes, new FileInfo(received).Length);
        Assert.Equal(sent, Convert.ToHexStringLower(MD5.HashData(File.ReadAllBytes(received))));

        // Host → guest.
        string file = Path.Combine(guest.RunDir, "to-guest.bin");
        var data = new byte[FileBytes];
        new Random(5678).NextBytes(data);
        File.WriteAllBytes(file, data);
        guest.Console.Ask("(sleep 900 | nc -l -p 5102 >/tmp/in.bin) & echo listening-e\"\"nd", "listening-end");
        XlResult send = null!;
        for (int attempt = 0; attempt < 30; attempt++)
        {
            send = guest.InNamespace(["sh", "-c", $"busybox nc 10.96.0.2 5102 < {file}"], IoLimit);
            if (send.ExitCode == 0) break;
            Thread.Sleep(1000); // the guest's nc is not listening yet
        }
        Assert.True(send.ExitCode == 0, send.ToString());
        Assert.Contains("done-end", guest.Console.Ask(
            "while [ $(wc -c </tmp/in.bin) -lt " + FileBytes + " ]; do sleep 1; done; echo done-e\"\"nd", "done-end", IoLimit));
        Assert.Equal(Convert.ToHexStringLower(MD5.HashData(data)), GuestMd5("/tmp/in.bin"));
    }

    [Fact]
    [Trait("Feature", "Open vSwitch integration for xl"), Trait("Feature", "Netback")]
    public void AVlanTaggedVifReachesItsVlanOnly()
    {
        // Two internal ports of the bridge, on VLANs 10 and 20 (10.96.10.1/24 and 10.96.20.1/24); a vif attached with
        // bridge=ovsbr0.10 is an access port of VLAN 10: the guest, with an address in each subnet on it, reaches
        // the first, and its ARP requests for the second never leave VLAN 10.
        const string mac = "00:16:3e:5b:00:0a";
        string dom = guest.DomId;
        guest.Ovs("add-port", "ovsbr0", "vlan10", "tag=10", "--", "set", "interface", "vlan10", "type=internal").Check();
        guest.Ovs("add-port", "ovsbr0", "vlan20", "tag=20", "--", "set", "interface", "vlan20", "type=internal").Check();
        try
        {
            guest.InNamespace("ip", "addr", "add", "10.96.10.1/24", "dev", "vlan10").Check();
            guest.InNamespace("ip", "addr", "add", "10.96.20.1/24", "dev", "vlan20").Check();
            guest.InNamespace("ip", "link", "set", "vlan10", "up").Check();
            guest.InNamespace("ip", "link", "set", "vlan20", "up").Check();
            var attach = guest.Host.Run("network-attach", "ovs", $"mac={mac}", "bridge=ovsbr0.10", "script=vif-openvswitch");
            Assert.True(attach.ExitCode == 0, attach.ToString());
            string vif = $"vif{dom}.1";
            Assert.Equal("10", guest.Ovs("get", "port", vif, "tag").Stdout.Trim());
            Assert.Equal("ovsbr0.10", guest.XenstoreRead($"/local/domain/0/backend/vif/{dom}/1/bridge"));

            string reply = guest.Console.Ask(
                $"TIF=; until [ -n \"$TIF\" ]; do TIF=$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5); sleep 1; done; " +
                "ip link set $TIF up; ip addr add 10.96.10.2/24 dev $TIF; ip addr add 10.96.20.2/24 dev $TIF; echo tif-$TIF-e\"\"nd",
                "-end", TimeSpan.FromMinutes(2));
            Assert.Matches(@"tif-eth\d+-end", reply);
            reply = guest.Console.Ask("ping -c 3 -W 5 10.96.10.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
            Assert.Contains("ping-0-end", reply);
            var fromHost = guest.InNamespace("busybox", "ping", "-c", "2", "-W", "5", "10.96.10.2");
            Assert.True(fromHost.ExitCode == 0, fromHost.ToString());
            reply = guest.Console.Ask("ping -c 3 -W 3 10.96.20.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
            Assert.Contains("ping-1-end", reply);
            Assert.Contains("0 packets received", reply);

            var detach = guest.Host.Run("network-detach", "ovs", mac);
            Assert.True(detach.ExitCode == 0, detach.ToString());
            // vif-openvswitch offline took the port off the bridge.
            Assert.DoesNotContain(vif, guest.Ovs("list-ports", "ovsbr0").Stdout.Split('\n'));
            guest.Console.Ask("until [ ! -e /sys/class/net/$TIF ]; do sleep 1; done; echo gone-e\"\"nd", "gone-end", TimeSpan.FromMinutes(2));
        }
        finally
        {
            guest.Host.Run("network-detach", "ovs", mac);
            guest.Ovs("--if-exists", "del-port", "vlan10");
            guest.Ovs("--if-exists", "del-port", "vlan20");
        }
    }

    [Fact]
    [Trait("Feature", "Open vSwitch integration for xl")]
    public void AMissingOvsBridgeIsNamedByFileAndLine()
    {
        string cfg = LinuxPvhTests.WriteConfig(guest.Host, new GuestArtifacts(), "noovsbr", memory: 128);
        int line = File.ReadAllLines(cfg).Length + 1;
        File.AppendAllText(cfg, "\nvif = [ 'mac=00:16:3e:5b:00:03,bridge=ovsbr9.10,script=vif-openvswitch' ]\n");
        var r = guest.Host.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Stderr.Contains($"{cfg}:{line}: vif 0: Open vSwitch bridge ovsbr9 does not exist on this host"), r.ToString());
        Assert.DoesNotContain("noovsbr", guest.Host.Run("list").Stdout);

        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("bridge=ovsbr9.10", "bridge=ovsbr0.x"));
        r = guest.Host.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Stderr.Contains($"{cfg}:{line}: vif 0: bridge `ovsbr0.x' is not BRIDGE[.VLAN][:TRUNK[:TRUNK...]]"), r.ToString());
    }

    /// <summary>The namespace, Open vSwitch inside it, the daemon inside it, and the guest of the class at its shell
    /// with eth0 up and addressed 10.96.0.2/24.</summary>
    public sealed class OvsGuest : IDisposable
    {
        private readonly XlHost _xl = new();
        private readonly NetworkNamespace _net = null!;
        /// <summary>OVS's database, sockets and logs (outside xl's run directory, which goes first at the end).</summary>
        private readonly string _ovsDir = Directory.CreateTempSubdirectory("xensharp-ovs-").FullName;

        public XlHost Host => _xl;
        public string RunDir => _xl.RunDir;
        internal LinuxPvhTests.ConsoleSession Console { get; } = null!;
        public string DomId => _xl.Run("domid", "ovs").Stdout.Trim();

        public OvsGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/etc/xen/scripts/vif-openvswitch"), "Xen's hotplug scripts (xen-utils-common) are not installed");
            Assert.True(File.Exists("/usr/sbin/ovs-vswitchd"), "Open vSwitch (openvswitch-switch) is not installed");
            try
            {
                _net = new NetworkNamespace("xsovs", _xl.RunDir, OvsEnvironment);
                NetworkNamespace.Exec("ovsdb-tool", ["create", Path.Combine(_ovsDir, "conf.db"), "/usr/share/openvswitch/vswitch.ovsschema"],
                    null, TimeSpan.FromSeconds(30), OvsEnvironment).Check();
                InNamespace("ovsdb-server", Path.Combine(_ovsDir, "conf.db"), $"--remote=punix:{_ovsDir}/db.sock", "--detach",
                    $"--pidfile={_ovsDir}/ovsdb-server.pid", $"--log-file={_ovsDir}/ovsdb-server.log", $"--unixctl={_ovsDir}/ovsdb-server.ctl").Check();
                Ovs("--no-wait", "init").Check();
                // The userspace datapath: no kernel module; its ports are read through packet sockets, which take
                // whole TCP segments only with userspace TSO.
                Ovs("--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true").Check();
                InNamespace("ovs-vswitchd", $"unix:{_ovsDir}/db.sock", "--detach", $"--pidfile={_ovsDir}/ovs-vswitchd.pid",
                    $"--log-file={_ovsDir}/ovs-vswitchd.log", $"--unixctl={_ovsDir}/ovs-vswitchd.ctl").Check();
                Ovs("add-br", "ovsbr0", "--", "set", "bridge", "ovsbr0", "datapath_type=netdev").Check();
                InNamespace("ip", "addr", "add", "10.96.0.1/24", "dev", "ovsbr0").Check();
                InNamespace("ip", "link", "set", "ovsbr0", "up").Check();
                // The daemon starts with the first xl command; run that one inside the namespace with OVS's run
                // directory, which the hotplug scripts it runs inherit.
                _net.StartDaemon();

                string cfg = LinuxPvhTests.WriteConfig(_xl, store, "ovs");
                File.AppendAllText(cfg, $"\nvif = [ 'mac={Mac},bridge=ovsbr0,script=vif-openvswitch' ]\n");
                Console = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg);
                Console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
                string reply = Console.Ask("until [ -e /sys/class/net/eth0 ]; do sleep 1; done; ip link set eth0 up; " +
                    "ip addr add 10.96.0.2/24 dev eth0; echo ip-$(ip -4 -o addr show eth0 | awk '{print $4}')-e\"\"nd", "-end", TimeSpan.FromMinutes(2));
                Assert.True(reply.Contains("ip-10.96.0.2/24-end"), $"eth0 got no address: {reply}");
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        private Dictionary<string, string> OvsEnvironment => new()
        {
            ["OVS_RUNDIR"] = _ovsDir, ["OVS_DBDIR"] = _ovsDir, ["OVS_LOGDIR"] = _ovsDir, ["OVS_SYSCONFDIR"] = _ovsDir,
        };

        /// <summary>ovs-vsctl against the class's own switch.</summary>
        public XlResult Ovs(params string[] args) => InNamespace(["ovs-vsctl", "--timeout=30", .. args], TimeSpan.FromSeconds(60));

        /// <summary>A command inside the namespace, with xl's and OVS's environment.</summary>
        public XlResult InNamespace(params string[] command) => InNamespace(command, TimeSpan.FromSeconds(60));

        public XlResult InNamespace(string[] command, TimeSpan limit) => _net.Run(command, limit);

        public Process StartInNamespace(params string[] command) => _net.Start(command);

        public void WaitForListener(int port) => _net.WaitForListener(port);

        public string XenstoreRead(string path) => NetworkNamespace.XenstoreRead(_xl.RunDir, path);

        private void Stop(string daemon)
        {
            string pidFile = Path.Combine(_ovsDir, daemon + ".pid");
            if (!File.Exists(pidFile) || !int.TryParse(File.ReadAllText(pidFile).Trim(), out int pid)) return;
            try
            {
                using var p = Process.GetProcessById(pid);
                p.Kill();
                p.WaitForExit(10_000);
            }
            catch (ArgumentException) { } // already gone
        }

        public void Dispose()
        {
            Console?.Dispose();
            _xl.Run("destroy", "ovs");
            _xl.Dispose();
            Stop("ovs-vswitchd");
            Stop("ovsdb-server");
            _net?.Dispose();
            Directory.Delete(_ovsDir, recursive: true);
        }
    }
}
