using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// User-mode networking (passt) judged by Debian's kernel and xen-netfront. The class makes a network namespace
/// with no bridge (a veth uplink 10.98.0.2/24 and a default route through 10.98.0.1, which passt copies for the
/// guest) and starts the daemon inside it, so a vif without bridge= becomes a user-mode vif. One guest is booted:
/// it gets its address from passt's DHCP, fetches a file from a server on the namespace's loopback through the
/// gateway address, and a host port forwarded with <c>forward=</c> reaches a listener in the guest.
/// </summary>
public sealed partial class LinuxUserNetworkTests(LinuxUserNetworkTests.UserNetGuest guest) : IClassFixture<LinuxUserNetworkTests.UserNetGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);
    private const int FileBytes = 64 << 20;
    private const int ForwardedPort = 18090, GuestPort = 5003, LoopbackPort = 18091;

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    private string GuestMd5(string path)
    {
        var m = Md5Line().Match(guest.Console.Ask($"echo md5-$(md5sum <{path} | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        return m.Groups[1].Value;
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void TheGuestGetsTheHostsAddressFromPasstAndNoTapIsMade()
    {
        Assert.Equal("10.98.0.2", guest.GuestIp);
        string be = $"/local/domain/0/backend/vif/{guest.DomId}/0";
        Assert.Equal("user", guest.XenstoreRead($"{be}/network"));
        Assert.Equal("4", guest.XenstoreRead($"{be}/state"));
        var links = guest.InNamespace("ip", "-o", "link");
        Assert.DoesNotMatch(@"\bvif\d+\.\d+", links.Stdout);
        Assert.Contains("default via 10.98.0.1", guest.Console.Ask("ip route; echo route-e\"\"nd", "route-end"));
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void AFileFromTheHostsLoopbackReachesTheGuestThroughTheGateway()
    {
        string file = Path.Combine(guest.RunDir, "loopback.bin");
        var data = new byte[FileBytes];
        new Random(4321).NextBytes(data);
        File.WriteAllBytes(file, data);
        // Bound to 127.0.0.1 only: the guest reaches it because passt maps the gateway address to the host's loopback.
        using var server = guest.StartInNamespace("python3", "-c",
            "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n" +
            $"s.bind(('127.0.0.1',{LoopbackPort}))\ns.listen()\nc,_=s.accept()\nc.sendall(open(sys.argv[1],'rb').read())\nc.close()\n",
            file);
        guest.WaitForListener(LoopbackPort);
        // nc's stdin stays open (a pipe from sleep), so the guest does not half-close before the file has come.
        guest.Console.Ask($"(sleep 900 | nc 10.98.0.1 {LoopbackPort} >/tmp/lo.bin) & echo fetching-e\"\"nd", "fetching-end");
        string reply = guest.Console.Ask(
            "while [ $(wc -c </tmp/lo.bin) -lt " + FileBytes + " ]; do sleep 1; done; echo got-$(wc -c </tmp/lo.bin)-e\"\"nd", "-end", IoLimit);
        Assert.Contains($"got-{FileBytes}-end", reply);
        Assert.Equal(Convert.ToHexStringLower(MD5.HashData(data)), GuestMd5("/tmp/lo.bin"));
        Assert.True(server.WaitForExit(IoLimit), "the host's server did not finish");
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void AForwardedHostPortReachesAListenerInTheGuest()
    {
        string file = Path.Combine(guest.RunDir, "forwarded.bin");
        var data = new byte[FileBytes];
        new Random(5678).NextBytes(data);
        File.WriteAllBytes(file, data);
        // passt accepts on the host port whether or not the guest listens, and resets the host's connection when the
        // guest refuses it; so the sender starts only once the guest's socket is in LISTEN (state 0A in /proc/net/tcp or tcp6).
        guest.Console.Ask($"(sleep 900 | nc -l -p {GuestPort} >/tmp/fw.bin) & " +
            $"until grep -qs ':{GuestPort:X4} 0*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 1; done; echo listening-e\"\"nd",
            "listening-end", TimeSpan.FromMinutes(1));
        var send = guest.InNamespace("sh", "-c", $"busybox nc 127.0.0.1 {ForwardedPort} < {file}", IoLimit);
        Assert.True(send.ExitCode == 0, send.ToString());
        Assert.Contains("done-end", guest.Console.Ask(
            "while [ $(wc -c </tmp/fw.bin) -lt " + FileBytes + " ]; do sleep 1; done; echo done-e\"\"nd", "done-end", IoLimit));
        Assert.Equal(Convert.ToHexStringLower(MD5.HashData(data)), GuestMd5("/tmp/fw.bin"));
    }

    /// <summary>The namespace, the daemon inside it, and the guest of the class at its shell with eth0 addressed by passt.</summary>
    public sealed class UserNetGuest : IDisposable
    {
        private readonly XlHost _xl = new();
        private readonly NetworkNamespace _net = null!;

        public string RunDir => _xl.RunDir;
        public string GuestIp { get; } = "";
        internal LinuxPvhTests.ConsoleSession Console { get; } = null!;
        public string DomId => _xl.Run("domid", "usernet").Stdout.Trim();

        public UserNetGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/usr/bin/passt"), "passt is not installed (scripts/install-deps.sh)");
            try
            {
                _net = new NetworkNamespace("xsusr", _xl.RunDir);
                // An uplink with a carrier: a veth pair whose both ends stay in the namespace.
                Check(InNamespace("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"));
                Check(InNamespace("ip", "addr", "add", "10.98.0.2/24", "dev", "uplink0"));
                Check(InNamespace("ip", "link", "set", "uplink1", "up"));
                Check(InNamespace("ip", "link", "set", "uplink0", "up"));
                Check(InNamespace("ip", "route", "add", "default", "via", "10.98.0.1"));
                _net.StartDaemon();

                string cfg = LinuxPvhTests.WriteConfig(_xl, store, "usernet");
                File.AppendAllText(cfg, $"\nvif = [ 'mac=00:16:3e:5a:01:01,forward=tcp:{ForwardedPort}:{GuestPort}' ]\n");
                Console = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg);
                Console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
                Console.Ask("until [ -e /sys/class/net/eth0 ]; do sleep 1; done; ip link set eth0 up; echo eth0-e\"\"nd", "eth0-end", TimeSpan.FromMinutes(2));
                Console.Ask("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\\nexit 0\\n' >/tmp/dh; chmod +x /tmp/dh; echo dh-e\"\"nd", "dh-end");
                string reply = Console.Ask("udhcpc -i eth0 -n -q -t 20 -T 3 -s /tmp/dh >/dev/null 2>&1; echo ip-$(ip -4 -o addr show eth0 | awk '{print $4}')-e\"\"nd",
                    "-end", TimeSpan.FromMinutes(3));
                var m = Regex.Match(reply, @"ip-(10\.98\.0\.\d+)/24-end");
                Assert.True(m.Success, $"eth0 got no address from passt: {reply}");
                GuestIp = m.Groups[1].Value;
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        private static void Check(XlResult r) => Assert.True(r.ExitCode == 0, r.ToString());

        public XlResult InNamespace(params string[] command) => InNamespace(command, TimeSpan.FromSeconds(60));

        public XlResult InNamespace(string file, string a, string b, TimeSpan limit) => InNamespace([file, a, b], limit);

        private XlResult InNamespace(string[] command, TimeSpan limit) => _net.Run(command, limit);

        public Process StartInNamespace(params string[] command) => _net.Start(command);

        public void WaitForListener(int port) => _net.WaitForListener(port);

        public string XenstoreRead(string path) => NetworkNamespace.XenstoreRead(_xl.RunDir, path);

        public void Dispose()
        {
            Console?.Dispose();
            _xl.Run("destroy", "usernet");
            _xl.Dispose();
            _net?.Dispose();
        }
    }
}
