using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's kernel and its xen-netfront as the judge of the PV network backend, inside a network namespace the
/// class makes (a bridge xenbr0 with 10.99.0.1/24, dnsmasq serving DHCP on it when installed), so nothing touches
/// the host's own network. The daemon is started inside that namespace, so the vif's TAP device and Xen's own
/// vif-bridge hotplug script (run by the toolstack) act there; xl and its console talk to it from outside through
/// its Unix sockets. One guest with two vCPUs is booted for the class: netfront takes two queues, the guest gets an
/// address, pings the host side, and files of 64 MiB cross the vif both ways over TCP (busybox nc) unchanged.
/// </summary>
public sealed partial class LinuxNetworkTests(LinuxNetworkTests.NetGuest guest) : IClassFixture<LinuxNetworkTests.NetGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);
    private const int FileBytes = 64 << 20;

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    private string GuestMd5(string path)
    {
        var m = Md5Line().Match(guest.Console.Ask($"echo md5-$(md5sum <{path} | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        return m.Groups[1].Value;
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void TheGuestGetsAnAddressAndReachesTheHostSide()
    {
        Assert.StartsWith("10.99.0.", guest.GuestIp);
        string reply = guest.Console.Ask("ping -c 3 10.99.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ping-0-end", reply);
        Assert.Contains("3 packets received", reply);
        var host = guest.InNamespace("busybox", "ping", "-c", "2", "-W", "10", guest.GuestIp);
        Assert.True(host.ExitCode == 0, host.ToString());
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void TheVifIsOnTheBridgeAndConnected()
    {
        string vif = $"vif{guest.DomId}.0";
        var brif = guest.InNamespace("ls", "/sys/class/net/xenbr0/brif");
        Assert.Contains(vif, brif.Stdout);
        string be = $"/local/domain/0/backend/vif/{guest.DomId}/0";
        Assert.Equal("connected", guest.XenstoreRead($"{be}/hotplug-status"));
        Assert.Equal("4", guest.XenstoreRead($"{be}/state"));
        string fe = $"/local/domain/{guest.DomId}/device/vif/0";
        Assert.Equal("00:16:3e:5a:00:01", guest.XenstoreRead($"{fe}/mac"));
        // netfront took a queue per vCPU, each with the offered split event channels.
        Assert.Equal("2", guest.XenstoreRead($"{fe}/multi-queue-num-queues"));
        for (int q = 0; q < 2; q++)
        {
            Assert.NotEqual("", guest.XenstoreRead($"{fe}/queue-{q}/tx-ring-ref"));
            Assert.NotEqual(guest.XenstoreRead($"{fe}/queue-{q}/event-channel-tx"), guest.XenstoreRead($"{fe}/queue-{q}/event-channel-rx"));
        }
        Assert.Contains("00:16:3e:5a:00:01", guest.Console.Ask("cat /sys/class/net/eth0/address; echo mac-e\"\"nd", "mac-end"));
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void EachQueueCarriesFlowsBothWays()
    {
        Assert.Contains("rx-0 rx-1 tx-0 tx-1", guest.Console.Ask("echo $(ls /sys/class/net/eth0/queues); echo q-e\"\"nd", "q-end"));
        // Sixteen connections, each its own flow: netfront spreads them over its queues by their hash, and the backend
        // its frames towards the guest by its own, so each queue's rings carry some both ways (all on one queue by
        // chance: one in 2^15).
        using var listener = guest.StartInNamespace("python3", "-c",
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n" +
            "s.bind(('10.99.0.1',5006))\ns.listen(16)\nfor i in range(16):\n c,_=s.accept()\n while c.recv(65536): pass\n c.close()\n");
        guest.WaitForListener(5006);
        var before = QueueInterrupts();
        string reply = guest.Console.Ask("for i in $(seq 16); do head -c 200000 /dev/urandom | nc 10.99.0.1 5006 || echo conn-fa\"\"iled; done; echo conns-e\"\"nd",
            "conns-end", IoLimit);
        Assert.DoesNotContain("conn-failed", reply);
        Assert.True(listener.WaitForExit(IoLimit), "the host's listener did not see sixteen connections");
        var after = QueueInterrupts();
        foreach (string irq in (string[])["q0-tx", "q0-rx", "q1-tx", "q1-rx"])
            Assert.True(after.GetValueOrDefault(irq) > before.GetValueOrDefault(irq), $"{irq} saw no event: {string.Join(", ", after)} in {guest.Console.Ask("cat /proc/interrupts; echo all-e\"\"nd", "all-end")}");
    }

    /// <summary>The guest's interrupt counts of netfront's per-queue event channels of vif 0 (netfront names them
    /// vif0-qN-tx and vif0-qN-rx), over all vCPUs, by qN-tx and qN-rx.</summary>
    private Dictionary<string, long> QueueInterrupts()
    {
        string reply = guest.Console.Ask("grep -- -q /proc/interrupts; echo irq-e\"\"nd", "irq-end");
        var counts = new Dictionary<string, long>();
        foreach (Match m in Regex.Matches(reply, @"^\s*\d+:((?:\s+\d+)+)\s.*?\b(?:vif0|eth0)-(q\d+-[rt]x)\s*$", RegexOptions.Multiline))
            counts[m.Groups[2].Value] = m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Sum(long.Parse);
        return counts;
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void AFileGoesFromTheGuestToTheHostUnchanged()
    {
        string received = Path.Combine(guest.RunDir, "from-guest.bin");
        guest.Console.Ask($"dd if=/dev/urandom of=/tmp/out.bin bs=65536 count={FileBytes / 65536} 2>/dev/null; echo made-e\"\"nd", "made-end", IoLimit);
        string sent = GuestMd5("/tmp/out.bin");
        using var listener = guest.StartInNamespace("sh", "-c", $"exec busybox nc -l -p 5001 > {received}");
        guest.WaitForListener(5001);
        var (packets, bytes) = guest.FramesIntoTheHost();
        string reply = guest.Console.Ask("nc 10.99.0.1 5001 </tmp/out.bin; echo sent-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("sent-0-end", reply);
        Assert.True(listener.WaitForExit(IoLimit), "the host's nc did not see the end of the file");
        Assert.Equal(FileBytes, new FileInfo(received).Length);
        Assert.Equal(sent, Convert.ToHexStringLower(MD5.HashData(File.ReadAllBytes(received))));
        // netfront used GSO: the frames it handed the host were on average larger than the link's MTU.
        var (packets2, bytes2) = guest.FramesIntoTheHost();
        Assert.True(bytes2 - bytes > 1514 * (packets2 - packets), $"{packets2 - packets} frames of {bytes2 - bytes} bytes: no GSO");
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void AFileGoesFromTheHostToTheGuestUnchanged()
    {
        string file = Path.Combine(guest.RunDir, "to-guest.bin");
        var data = new byte[FileBytes];
        new Random(1234).NextBytes(data);
        File.WriteAllBytes(file, data);
        // The listener's stdin is a pipe that stays open: busybox nc ends its sending half at stdin's end.
        guest.Console.Ask("(sleep 900 | nc -l -p 5002 >/tmp/in.bin) & echo listening-e\"\"nd", "listening-end");
        var (packets, bytes) = guest.FramesOutOfTheHost();
        XlResult send = null!;
        for (int attempt = 0; attempt < 30; attempt++)
        {
            send = guest.InNamespace("sh", "-c", $"busybox nc {guest.GuestIp} 5002 < {file}", IoLimit);
            if (send.ExitCode == 0) break;
            Thread.Sleep(1000); // the guest's nc is not listening yet
        }
        Assert.True(send.ExitCode == 0, send.ToString());
        Assert.Contains("done-end", guest.Console.Ask(
            "while [ $(wc -c </tmp/in.bin) -lt " + FileBytes + " ]; do sleep 1; done; echo done-e\"\"nd", "done-end", IoLimit));
        Assert.Equal(Convert.ToHexStringLower(MD5.HashData(data)), GuestMd5("/tmp/in.bin"));
        // netfront took GSO: the host's segments reached it on average larger than the link's MTU.
        var (packets2, bytes2) = guest.FramesOutOfTheHost();
        Assert.True(bytes2 - bytes > 1514 * (packets2 - packets), $"{packets2 - packets} frames of {bytes2 - bytes} bytes: no GSO towards the guest");
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void AFailingHotplugScriptFailsCreateAndLeavesNothingBehind()
    {
        string script = Path.Combine(guest.RunDir, "bad-hotplug");
        File.WriteAllText(script, "#!/bin/sh\nxenstore-write \"$XENBUS_PATH/hotplug-error\" \"no uplink for $vif\" \"$XENBUS_PATH/hotplug-status\" error\nexit 1\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        string cfg = LinuxPvhTests.WriteConfig(guest.Host, new GuestArtifacts(), "badvif", memory: 128);
        File.AppendAllText(cfg, $"\nvif = [ 'mac=00:16:3e:5a:00:02,bridge=xenbr0,script={script}' ]\n");
        var r = guest.Host.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Stderr.Contains($"{script} online failed: no uplink for vif"), r.ToString());
        Assert.DoesNotContain("badvif", guest.Host.Run("list").Stdout);
        // Only the class's guest has a vif left in the namespace.
        var links = guest.InNamespace("ip", "-o", "link");
        Assert.Equal([$"vif{guest.DomId}.0"], Regex.Matches(links.Stdout, @"\bvif\d+\.\d+").Select(m => m.Value));
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void AMissingBridgeOrABadMacIsNamedByFileAndLine()
    {
        string cfg = LinuxPvhTests.WriteConfig(guest.Host, new GuestArtifacts(), "nobridge", memory: 128);
        int line = File.ReadAllLines(cfg).Length + 1;
        File.AppendAllText(cfg, "\nvif = [ 'mac=00:16:3e:5a:00:03,bridge=nosuchbr' ]\n");
        var r = guest.Host.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Stderr.Contains($"{cfg}:{line}: vif 0: bridge nosuchbr does not exist on this host"), r.ToString());
        Assert.DoesNotContain("nobridge", guest.Host.Run("list").Stdout);

        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("mac=00:16:3e:5a:00:03,bridge=nosuchbr", "mac=00:16:3e:5a:00"));
        r = guest.Host.Run("create", cfg);
        Assert.NotEqual(0, r.ExitCode);
        Assert.True(r.Stderr.Contains($"{cfg}:{line}: invalid mac address `00:16:3e:5a:00'"), r.ToString());
    }

    [Fact]
    [Trait("Feature", "Netfront"), Trait("Feature", "Netback")]
    public void AVifAttachedToTheRunningGuestWorksAndGoesAgainOnDetach()
    {
        const string mac = "00:16:3e:5a:00:0a";
        string dom = guest.DomId;
        var attach = guest.Host.Run("network-attach", "net", $"mac={mac}", "bridge=xenbr0");
        Assert.True(attach.ExitCode == 0, attach.ToString());
        string vif = $"vif{dom}.1";
        Assert.Contains(vif, guest.InNamespace("ls", "/sys/class/net/xenbr0/brif").Stdout);

        // netfront finds the new device and names it; the guest takes its lease on it and pings through it.
        // arp_ignore=1: the host's ARP for the new address is answered by the new interface alone.
        string reply = guest.Console.Ask(
            $"IF=; until [ -n \"$IF\" ]; do IF=$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5); sleep 1; done; " +
            "echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore; ip link set $IF up; echo if-$IF-e\"\"nd", "-end", TimeSpan.FromMinutes(2));
        Assert.Matches(@"if-eth\d+-end", reply);
        reply = guest.Dhcp
            ? guest.Console.Ask("udhcpc -i $IF -n -q -t 20 -T 3 -s /tmp/dh >/dev/null 2>&1; echo ip-$(ip -4 -o addr show $IF | awk '{print $4}')-e\"\"nd",
                "-end", TimeSpan.FromMinutes(3))
            : guest.Console.Ask("ip addr add 10.99.0.3/24 dev $IF; echo ip-$(ip -4 -o addr show $IF | awk '{print $4}')-e\"\"nd", "-end");
        var m = Regex.Match(reply, @"ip-(10\.99\.0\.\d+)/24-end");
        Assert.True(m.Success, $"the attached vif got no address: {reply}");
        Assert.NotEqual(guest.GuestIp, m.Groups[1].Value);
        reply = guest.Console.Ask("ping -c 3 -I $IF 10.99.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("ping-0-end", reply);

        var list = guest.Host.Run("network-list", "net");
        Assert.True(list.ExitCode == 0, list.ToString());
        var rows = list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path", rows[0]);
        Assert.Equal(3, rows.Length);
        Assert.Matches($@"^1\s+0\s+{mac}\s+1\s+4\s+-?\d+\s+-?\d+/-?\d+\s+/local/domain/0/backend/vif/{dom}/1\s*$", rows[2]);

        var detach = guest.Host.Run("network-detach", "net", mac);
        Assert.True(detach.ExitCode == 0, detach.ToString());
        reply = guest.Console.Ask("until [ ! -e /sys/class/net/$IF ]; do sleep 1; done; echo 0 >/proc/sys/net/ipv4/conf/all/arp_ignore; echo gone-e\"\"nd",
            "gone-end", TimeSpan.FromMinutes(2));
        Assert.DoesNotContain(vif, guest.InNamespace("ip", "-o", "link").Stdout);
        Assert.Equal("", guest.XenstoreRead($"/local/domain/0/backend/vif/{dom}/1/state"));
        list = guest.Host.Run("network-list", "net");
        Assert.Equal(2, list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var again = guest.Host.Run("network-detach", "net", "1");
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("Unknown device 1.", again.Stderr);
        // eth0 still works.
        Assert.Contains("ping-0-end", guest.Console.Ask("ping -c 1 10.99.0.1; echo ping-$?-e\"\"nd", "-end", IoLimit));
    }

    [Fact]
    [Trait("Feature", "Netback")]
    public void ARateLimitedVifSendsNoFasterThanItsRate()
    {
        // A vif attached with rate=10Mb/s@20ms (25000 bytes per 20 ms) on a subnet of its own (10.99.1.0/24 beside
        // the bridge's address), so that the guest's route to the listener goes through it alone.
        const string mac = "00:16:3e:5a:00:0b";
        const int bytes = 4 << 20;
        const double bytesPerSecond = 10e6 / 8;
        string result = Path.Combine(guest.RunDir, "rate.txt");
        guest.InNamespace("ip", "addr", "add", "10.99.1.1/24", "dev", "xenbr0").Check();
        try
        {
            guest.Host.Run("network-attach", "net", "devid=2", $"mac={mac}", "bridge=xenbr0", "rate=10Mb/s@20ms").Check();
            guest.Console.Ask(
                $"RIF=; until [ -n \"$RIF\" ]; do RIF=$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5); sleep 1; done; " +
                $"ip link set $RIF up; ip addr add 10.99.1.2/24 dev $RIF; dd if=/dev/urandom of=/tmp/rate.bin bs=65536 count={bytes / 65536} 2>/dev/null; " +
                "echo rif-e\"\"nd", "rif-end", TimeSpan.FromMinutes(2));
            // The host's listener times the stream from its first byte to its end.
            using var listener = guest.StartInNamespace("python3", "-c",
                "import socket,sys,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n" +
                "s.bind(('10.99.1.1',5004))\ns.listen()\nc,_=s.accept()\nn=0\nt=None\nwhile True:\n b=c.recv(65536)\n if not b: break\n" +
                " t=t or time.monotonic()\n n+=len(b)\nopen(sys.argv[1],'w').write('%d %.3f' % (n, time.monotonic()-t))\n", result);
            guest.WaitForListener(5004);
            string reply = guest.Console.Ask("nc 10.99.1.1 5004 </tmp/rate.bin; echo sent-$?-e\"\"nd", "-end", IoLimit);
            Assert.Contains("sent-0-end", reply);
            Assert.True(listener.WaitForExit(IoLimit), "the host's listener did not see the end of the stream");
            var parts = File.ReadAllText(result).Split(' ');
            Assert.Equal(bytes, int.Parse(parts[0]));
            double seconds = double.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
            // A functional bound, not a speed measurement: at 10 Mb/s the file cannot have gone in less than 90 %
            // of its time at that rate (the credit's burst of 128 KiB is 3 % of it).
            double expected = bytes / bytesPerSecond;
            Assert.True(seconds >= 0.9 * expected, $"{bytes} bytes in {seconds:0.000} s: faster than 10 Mb/s allows ({expected:0.000} s)");
            Assert.Equal("25000,20000", guest.XenstoreRead($"/local/domain/0/backend/vif/{guest.DomId}/2/rate"));
        }
        finally
        {
            guest.Host.Run("network-detach", "net", mac);
            guest.InNamespace("ip", "addr", "del", "10.99.1.1/24", "dev", "xenbr0");
        }
    }

    /// <summary>The namespace, its bridge and DHCP server, the daemon inside it, and the guest of the class at its
    /// shell with eth0 up and addressed.</summary>
    public sealed class NetGuest : IDisposable
    {
        private readonly XlHost _xl = new();
        private readonly string _ns = $"xsnet{Environment.ProcessId}";
        private Process? _dnsmasq;

        public XlHost Host => _xl;
        public string RunDir => _xl.RunDir;
        public string GuestIp { get; } = "";
        /// <summary>Whether dnsmasq serves DHCP on the bridge (else addresses are static).</summary>
        public bool Dhcp { get; }
        internal LinuxPvhTests.ConsoleSession Console { get; } = null!;
        public string DomId => _xl.Run("domid", "net").Stdout.Trim();

        public NetGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            Assert.True(File.Exists("/etc/xen/scripts/vif-bridge"), "Xen's hotplug scripts (xen-utils-common) are not installed");
            Run("ip", "netns", "add", _ns);
            try
            {
                InNamespace("ip", "link", "set", "lo", "up").Check();
                InNamespace("ip", "link", "add", "xenbr0", "type", "bridge").Check();
                InNamespace("ip", "addr", "add", "10.99.0.1/24", "dev", "xenbr0").Check();
                InNamespace("ip", "link", "set", "xenbr0", "up").Check();
                bool dhcp = Dhcp = File.Exists("/usr/sbin/dnsmasq");
                if (dhcp)
                    _dnsmasq = StartInNamespace("dnsmasq", "--keep-in-foreground", "--no-resolv", "--port=0", "--interface=xenbr0",
                        "--bind-interfaces", "--dhcp-range=10.99.0.50,10.99.0.99,255.255.255.0,1h", "--leasefile-ro", "--user=root");
                // The daemon starts with the first xl command; run that one inside the namespace.
                var first = InNamespace("dotnet", XlHost.XlDll, "list");
                Assert.True(first.ExitCode == 0, first.ToString());

                string cfg = LinuxPvhTests.WriteConfig(_xl, store, "net", vcpus: 2);
                File.AppendAllText(cfg, "\nvif = [ 'mac=00:16:3e:5a:00:01,bridge=xenbr0' ]\n");
                Console = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg);
                Console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
                Console.Ask("until [ -e /sys/class/net/eth0 ]; do sleep 1; done; ip link set eth0 up; echo eth0-e\"\"nd", "eth0-end", TimeSpan.FromMinutes(2));
                string reply;
                if (dhcp)
                {
                    Console.Ask("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface\\nexit 0\\n' >/tmp/dh; chmod +x /tmp/dh; echo dh-e\"\"nd", "dh-end");
                    reply = Console.Ask("udhcpc -i eth0 -n -q -t 20 -T 3 -s /tmp/dh >/dev/null 2>&1; echo ip-$(ip -4 -o addr show eth0 | awk '{print $4}')-e\"\"nd",
                        "-end", TimeSpan.FromMinutes(3));
                }
                else
                    reply = Console.Ask("ip addr add 10.99.0.2/24 dev eth0; echo ip-$(ip -4 -o addr show eth0 | awk '{print $4}')-e\"\"nd", "-end");
                var m = Regex.Match(reply, @"ip-(10\.99\.0\.\d+)/24-end");
                Assert.True(m.Success, $"eth0 got no address: {reply}");
                GuestIp = m.Groups[1].Value;
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        private static void Run(string file, params string[] args)
        {
            var r = Exec(file, args, null, TimeSpan.FromSeconds(30));
            Assert.True(r.ExitCode == 0, $"{file} {string.Join(' ', args)}: {r}");
        }

        /// <summary>A command inside the namespace, with xl's environment (its run directory).</summary>
        public XlResult InNamespace(params string[] command) => InNamespace(command, TimeSpan.FromSeconds(60));

        public XlResult InNamespace(string file, string a, string b, TimeSpan limit) => InNamespace([file, a, b], limit);

        private XlResult InNamespace(string[] command, TimeSpan limit) =>
            Exec("ip", ["netns", "exec", _ns, .. command], _xl.RunDir, limit);

        /// <summary>A long-running command inside the namespace; its standard input stays open until it is disposed.</summary>
        public Process StartInNamespace(params string[] command) => StartIn(_ns, command);

        /// <summary>A long-running command inside the namespace <paramref name="ns"/>, as <see cref="StartInNamespace"/>.</summary>
        internal static Process StartIn(string ns, params string[] command)
        {
            var psi = new ProcessStartInfo("ip") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in (string[])["netns", "exec", ns, .. command]) psi.ArgumentList.Add(a);
            var p = Process.Start(psi)!;
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            return p;
        }

        /// <summary>Frames and bytes the guest's vif has handed the host so far (the TAP interface's receive counters).</summary>
        public (long Packets, long Bytes) FramesIntoTheHost()
        {
            var r = InNamespace("cat", $"/sys/class/net/vif{DomId}.0/statistics/rx_packets", $"/sys/class/net/vif{DomId}.0/statistics/rx_bytes");
            var n = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse).ToArray();
            Assert.True(n.Length == 2, r.ToString());
            return (n[0], n[1]);
        }

        /// <summary>Frames and bytes the host has handed the guest's vif so far (the TAP interface's transmit counters).</summary>
        public (long Packets, long Bytes) FramesOutOfTheHost()
        {
            var r = InNamespace("cat", $"/sys/class/net/vif{DomId}.0/statistics/tx_packets", $"/sys/class/net/vif{DomId}.0/statistics/tx_bytes");
            var n = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse).ToArray();
            Assert.True(n.Length == 2, r.ToString());
            return (n[0], n[1]);
        }

        public void WaitForListener(int port)
        {
            for (int i = 0; i < 100; i++)
            {
                if (InNamespace("ss", "-ltn").Stdout.Contains($":{port} ")) return;
                Thread.Sleep(100);
            }
            Assert.Fail($"nothing listens on port {port} in the namespace");
        }

        /// <summary>A node as Xen's xenstore-read sees it, through the daemon's xenstored socket.</summary>
        public string XenstoreRead(string path)
        {
            var psi = new Dictionary<string, string> { ["XENSTORED_PATH"] = Path.Combine(_xl.RunDir, "xenstored", "socket") };
            var r = Exec("xenstore-read", [path], _xl.RunDir, TimeSpan.FromSeconds(30), psi);
            return r.Stdout.Trim();
        }

        internal static XlResult Exec(string file, string[] args, string? runDir, TimeSpan limit, Dictionary<string, string>? env = null)
        {
            var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            if (runDir is not null) psi.Environment["XENSHARP_RUNDIR"] = runDir;
            foreach (var (k, v) in env ?? []) psi.Environment[k] = v;
            return XlHost.RunProcess(psi, limit);
        }

        public void Dispose()
        {
            Console?.Dispose();
            _xl.Run("destroy", "net");
            _xl.Dispose();
            if (_dnsmasq is { } d)
            {
                if (!d.HasExited) d.Kill(entireProcessTree: true);
                d.WaitForExit();
                d.Dispose();
            }
            Exec("ip", ["netns", "del", _ns], null, TimeSpan.FromSeconds(30));
        }
    }
}

internal static class XlResultChecks
{
    public static void Check(this XlResult r) => Assert.True(r.ExitCode == 0, r.ToString());
}
