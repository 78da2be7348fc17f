using System.Diagnostics;
using System.Text;
using System.Xml.Linq;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// libvirt's libxl driver on XenSharp: Debian's libvirtd with libvirt-daemon-driver-xen (Xen 4.17's libxenlight
/// linked in-process, over the drop-in stable libraries) runs under ./dom0 through scripts/dom0-libvirtd, and virsh
/// manages a Debian PVH guest through it: the host as libvirt sees it, an xl.cfg turned into domain XML, define,
/// start, the guest's console, a raw disk served by libxl's QEMU, dumpxml, suspend/resume, reboot, save/restore,
/// setmem, shutdown, destroy, undefine, and a transient guest created from XML. What virsh reports is checked
/// against XenSharp's own ./xl and against what the guest printed and wrote.
/// </summary>
public sealed class LibvirtTests
{
    private static readonly TimeSpan Settle = TimeSpan.FromMinutes(2);

    [Fact, Trait("Feature", "libvirt driver for xl"), Trait("Feature", "x86/PVH")]
    public void VirshManagesAPvhGuestThroughTheLibxlDriver()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        Assert.Equal(0, xl.Run("list").ExitCode); // starts the daemon
        using var libvirt = new LibvirtDaemon(xl);

        // The host: the hypervisor's version and the pCPUs as ./xl info gives them, Domain-0 running.
        var info = Fields(Ours(xl, "info").Stdout);
        Assert.Contains($"Running hypervisor: Xen {info["xen_version"]}", libvirt.Virsh("version"));
        Assert.Equal(info["nr_cpus"], Fields(libvirt.Virsh("nodeinfo"))["CPU(s)"]);
        Assert.Contains(VirshRows(libvirt.Virsh("list")), r => r is ["0", "Domain-0", "running"]);

        // domxml-from-native turns the xl.cfg ./xl itself runs into a PVH domain's XML.
        const string name = "lvguest";
        string disk = Path.Combine(xl.RunDir, "disk.raw");
        using (var f = File.Create(disk))
        {
            f.SetLength(4 << 20);
            f.Write("libvirt-disk-42"u8);
        }
        string cfg = LinuxPvhTests.WriteConfig(xl, store, name);
        File.AppendAllText(cfg, $"\ndisk = [ \"format=raw,vdev=xvda,access=rw,target={disk}\" ]\n");
        var xml = XDocument.Parse(libvirt.Virsh("domxml-from-native", "xen-xl", cfg)).Root!;
        Assert.Equal("xen", (string?)xml.Attribute("type"));
        Assert.Equal(name, (string?)xml.Element("name"));
        var os = xml.Element("os")!;
        Assert.Equal("xenpvh", (string?)os.Element("type")?.Attribute("machine"));
        Assert.Equal(store.KernelPath, (string?)os.Element("kernel"));
        Assert.Equal(store.ShellInitrdPath, (string?)os.Element("initrd"));
        Assert.Equal("console=hvc0", (string?)os.Element("cmdline"));
        Assert.Equal("524288", (string?)xml.Element("memory"));
        Assert.Equal("1", (string?)xml.Element("vcpu"));
        Assert.Equal("preserve", (string?)xml.Element("on_crash"));
        var source = xml.Element("devices")?.Element("disk");
        Assert.Equal(disk, (string?)source?.Element("source")?.Attribute("file"));
        Assert.Equal("xvda", (string?)source?.Element("target")?.Attribute("dev"));
        string xmlPath = Path.Combine(xl.RunDir, name + ".xml");
        xml.Save(xmlPath);

        // Defined, the guest is only libvirt's: shut off there, no domain in the hypervisor.
        libvirt.Virsh("define", xmlPath);
        Assert.Contains(VirshRows(libvirt.Virsh("list", "--all")), r => r is ["-", name, "shut", "off"]);
        Assert.DoesNotContain(XlRows(Ours(xl, "list").Stdout), r => r[0] == name);

        // Started, the guest is a domain both see alike, and it boots to its shell.
        libvirt.Virsh("start", name);
        int domid = Agree(xl, libvirt, name, running: true);
        string log = Path.Combine(xl.RunDir, "console", name + ".log");
        WaitForShell(log, 0);
        string boot = File.ReadAllText(log);
        Assert.Contains("Booting kernel on Xen PVH", boot);
        Assert.DoesNotContain("Kernel panic", boot);

        // dumpxml of the running guest: its domid, and the console pty libxl found in xenstore.
        var live = XDocument.Parse(libvirt.Virsh("dumpxml", name)).Root!;
        Assert.Equal(domid.ToString(), (string?)live.Attribute("id"));
        string? tty = (string?)live.Element("devices")?.Element("console")?.Attribute("tty");
        var stored = xl.RunDom0(TimeSpan.FromMinutes(1), "xenstore-read", $"/local/domain/{domid}/console/tty");
        Assert.True(stored.ExitCode == 0, stored.ToString());
        Assert.Equal(stored.Stdout.Trim(), tty);

        // virsh console reaches the guest's shell through that pty.
        AskThroughConsole(xl, libvirt, name, "virsh-$((6*7)) $(cat /sys/hypervisor/type)", "virsh-42 xen");
        Assert.Contains("virsh-42 xen", File.ReadAllText(log));

        // The raw disk is libxl's QEMU's (qdisk): the guest reads what the host wrote there and writes its own.
        AskThroughConsole(xl, libvirt, name,
            "$(head -c 15 /dev/xvda) $(printf guest-wrote-$((6*7)) | dd of=/dev/xvda bs=512 seek=1 conv=fsync 2>/dev/null && echo dd-$((6*7)))",
            "libvirt-disk-42 dd-42");
        using (var f = File.OpenRead(disk))
        {
            var written = new byte[14];
            f.Position = 512;
            f.ReadExactly(written);
            Assert.Equal("guest-wrote-42", Encoding.ASCII.GetString(written));
        }

        // suspend and resume pause and unpause the domain, as ./xl list shows.
        libvirt.Virsh("suspend", name);
        Assert.Equal("paused", libvirt.Virsh("domstate", name).Trim());
        Assert.Contains("p", XlRows(Ours(xl, "list").Stdout).Single(r => r[0] == name)[4]);
        libvirt.Virsh("resume", name);
        Assert.Equal("running", libvirt.Virsh("domstate", name).Trim());
        Assert.DoesNotContain("p", XlRows(Ours(xl, "list").Stdout).Single(r => r[0] == name)[4]);

        // reboot: the guest restarts itself and libvirt builds it again as a new domain (on_reboot = restart).
        int mark = File.ReadAllText(log).Length;
        libvirt.Virsh("reboot", name);
        Assert.True(XlHost.WaitUntil(() => VirshRows(libvirt.Virsh("list")).Any(r => r.Length > 1 && r[1] == name && int.Parse(r[0]) > domid), Settle),
            $"libvirt built no new domain after the reboot; its console:\n{LinuxPvhTests.Tail(File.ReadAllText(log))}");
        domid = Agree(xl, libvirt, name, running: true);
        WaitForShell(log, mark);

        // save writes the guest to a file and ends the domain; restore brings it back, its shell still there.
        string saved = Path.Combine(xl.RunDir, name + ".save");
        libvirt.Virsh("save", name, saved);
        Assert.Equal("shut off", libvirt.Virsh("domstate", name).Trim());
        Agree(xl, libvirt, name, running: false);
        libvirt.Virsh("restore", saved);
        int restored = Agree(xl, libvirt, name, running: true);
        Assert.True(restored > domid, $"domid {restored} after {domid}");
        domid = restored;
        AskThroughConsole(xl, libvirt, name, "restored-$((6*7))", "restored-42");
        File.Delete(saved);

        // setmem sets the balloon target; the guest's balloon driver gives the memory back.
        libvirt.Virsh("setmem", name, "262144");
        Assert.True(XlHost.WaitUntil(() => XlRows(Ours(xl, "list").Stdout).Single(r => r[0] == name)[2] == "256", Settle),
            $"the guest did not balloon down to 256 MiB:\n{Ours(xl, "list").Stdout}");

        // shutdown asks the guest through xenstore; it powers off and libvirt sees the domain die.
        int before = File.ReadAllText(log).Length;
        libvirt.Virsh("shutdown", name);
        Assert.True(XlHost.WaitUntil(() => libvirt.Virsh("domstate", name).Trim() == "shut off", Settle),
            $"the guest did not shut off; its console:\n{LinuxPvhTests.Tail(File.ReadAllText(log))}");
        Agree(xl, libvirt, name, running: false);
        Assert.Contains("reboot: ", File.ReadAllText(log)[before..]);

        // Started again it is a new domain; destroy ends it at once.
        libvirt.Virsh("start", name);
        int second = Agree(xl, libvirt, name, running: true);
        Assert.True(second > domid, $"domid {second} after {domid}");
        libvirt.Virsh("destroy", name);
        Assert.Equal("shut off", libvirt.Virsh("domstate", name).Trim());
        Agree(xl, libvirt, name, running: false);

        // undefine forgets it.
        libvirt.Virsh("undefine", name);
        Assert.DoesNotContain(VirshRows(libvirt.Virsh("list", "--all")), r => r.Length > 1 && r[1] == name);

        // create starts a transient guest from XML; destroyed, it is gone from both lists.
        const string transient = "lvtransient";
        xml.Element("name")!.Value = transient;
        xml.Element("uuid")?.Remove();
        xml.Element("devices")?.Element("disk")?.Remove();
        xml.Save(xmlPath);
        libvirt.Virsh("create", xmlPath);
        Agree(xl, libvirt, transient, running: true);
        libvirt.Virsh("destroy", transient);
        Assert.DoesNotContain(VirshRows(libvirt.Virsh("list", "--all")), r => r.Length > 1 && r[1] == transient);
        Agree(xl, libvirt, transient, running: false);
    }

    /// <summary>Waits until the guest's console log shows its shell's prompt after <paramref name="from"/>.</summary>
    private static void WaitForShell(string log, int from)
    {
        string Text() => File.Exists(log) ? File.ReadAllText(log) : "";
        Assert.True(XlHost.WaitUntil(() => Text().Length > from && Text()[from..].Contains("~ # "), LinuxPvhTests.BootLimit),
            $"the guest never reached its shell; its console:\n{LinuxPvhTests.Tail(Text())}");
    }

    /// <summary>Runs <paramref name="command"/> in the guest's shell through virsh console and waits for
    /// <paramref name="answer"/>; Ctrl-] then leaves the console. A failure shows the guest's console log too.</summary>
    private static void AskThroughConsole(XlHost xl, LibvirtDaemon libvirt, string name, string command, string answer)
    {
        using var console = PtySession.Command(xl.RunDir, "virsh", "-c", libvirt.Uri, "console", name);
        try
        {
            console.WaitFor("Escape character is", TimeSpan.FromMinutes(1));
            // The output that answers the first Enter can go to the previous session's stream, which libvirtd's
            // reader thread (blocked in read() on the pty) ends only after one more read; Enter is pressed again then.
            string? prompt = null;
            for (int i = 0; i < 6 && prompt is null; i++)
            {
                console.Type("\r");
                prompt = console.TryWaitFor("~ # ", TimeSpan.FromSeconds(10));
            }
            Assert.True(prompt is not null, $"no shell prompt on the console; screen:\n{console.Tail()}");
            console.Type($"echo {command}\r");
            console.WaitFor(answer, TimeSpan.FromMinutes(1));
            console.WaitFor("~ # ", TimeSpan.FromMinutes(1));
        }
        catch (Xunit.Sdk.XunitException e)
        {
            string log = Path.Combine(xl.RunDir, "console", name + ".log");
            Assert.Fail($"{e.Message}\nthe guest's console log:\n{(File.Exists(log) ? LinuxPvhTests.Tail(File.ReadAllText(log)) : "(none)")}");
        }
        // virsh takes the escape only as the first byte of a read, so one that shared a read with the terminal's
        // answer to the prompt's cursor query is sent again.
        bool exited = false;
        for (int i = 0; i < 5 && !exited; i++)
        {
            console.Type("\u001d");
            exited = console.WaitForExit(TimeSpan.FromSeconds(10));
        }
        Assert.True(exited, $"virsh console did not end on Ctrl-]; screen:\n{console.Tail()}");
    }

    /// <summary>Waits until virsh list and ./xl list agree on the guest: running in both with the same domid, 512 MiB
    /// and one vCPU in ./xl; or in neither. Returns the domid (-1 when not running).</summary>
    private static int Agree(XlHost xl, LibvirtDaemon libvirt, string name, bool running)
    {
        var deadline = DateTime.UtcNow + Settle;
        while (true)
        {
            var theirs = VirshRows(libvirt.Virsh("list")).FirstOrDefault(r => r.Length > 1 && r[1] == name);
            var ours = XlRows(Ours(xl, "list").Stdout).FirstOrDefault(r => r[0] == name);
            if (!running && theirs is null && ours is null)
                return -1;
            if (running && theirs is [var id, _, "running"] && ours is [_, var xlId, "512", "1", ..] && id == xlId)
                return int.Parse(id);
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"virsh list and ./xl list did not agree that {name} is {(running ? "running" : "gone")}:\n" +
                    $"virsh: {(theirs is null ? "(none)" : string.Join(' ', theirs))}\n./xl: {(ours is null ? "(none)" : string.Join(' ', ours))}");
            Thread.Sleep(500);
        }
    }

    private static XlResult Ours(XlHost xl, params string[] args)
    {
        var r = xl.Run(args);
        Assert.True(r.ExitCode == 0, $"./xl {string.Join(' ', args)}: {r}");
        return r;
    }

    /// <summary>virsh list's rows below its header and rule: id, name, state words.</summary>
    private static string[][] VirshRows(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(2)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(f => f.Length >= 3).ToArray();

    private static string[][] XlRows(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1)
            .Select(l => l.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)).Where(f => f.Length >= 5).ToArray();

    private static Dictionary<string, string> Fields(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.Contains(':'))
            .GroupBy(l => l[..l.IndexOf(':')].Trim())
            .ToDictionary(g => g.Key, g => g.First()[(g.First().IndexOf(':') + 1)..].Trim());

    /// <summary>libvirtd run by scripts/dom0-libvirtd against one test's daemon, all its state in that daemon's run
    /// directory. Disposing stops it (SIGTERM, then SIGKILL).</summary>
    private sealed class LibvirtDaemon : IDisposable
    {
        private const string Libvirtd = "/usr/sbin/libvirtd";
        private const string Driver = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_libxl.so";
        private readonly Process _p;
        private readonly StringBuilder _output = new();
        private readonly string _dir;

        public string Uri { get; }

        public LibvirtDaemon(XlHost xl)
        {
            Assert.True(File.Exists(Libvirtd) && File.Exists(Driver) && File.Exists("/usr/bin/virsh"),
                "libvirt-daemon, libvirt-daemon-driver-xen and libvirt-clients are needed (see scripts/install-deps.sh)");
            _dir = Path.Combine(xl.RunDir, "libvirt");
            string socket = Path.Combine(_dir, "run", "libvirt-sock");
            Uri = $"xen:///system?socket={socket}";
            var psi = new ProcessStartInfo(Repository.PathOf("scripts", "dom0-libvirtd"))
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = Repository.Root,
            };
            psi.ArgumentList.Add(_dir);
            psi.Environment["XENSHARP_RUNDIR"] = xl.RunDir;
            _p = Process.Start(psi)!;
            _p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.AppendLine(e.Data); };
            _p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.AppendLine(e.Data); };
            _p.BeginOutputReadLine();
            _p.BeginErrorReadLine();
            if (!XlHost.WaitUntil(() => _p.HasExited || (File.Exists(socket) && Run("list").ExitCode == 0), TimeSpan.FromMinutes(3)) || _p.HasExited)
                Assert.Fail($"libvirtd did not come up:\n{Output()}");
        }

        private string Output()
        {
            string log = Path.Combine(_dir, "libvirtd.log");
            lock (_output)
                return _output + (File.Exists(log) ? "--- libvirtd.log\n" + LinuxPvhTests.Tail(File.ReadAllText(log)) : "");
        }

        public XlResult Run(params string[] args)
        {
            var psi = new ProcessStartInfo("virsh")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
            };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(Uri);
            foreach (var a in args) psi.ArgumentList.Add(a);
            return XlHost.RunProcess(psi, TimeSpan.FromMinutes(3));
        }

        /// <summary>Runs virsh and returns its output; a failure fails the test with libvirtd's log.</summary>
        public string Virsh(params string[] args)
        {
            var r = Run(args);
            if (r.ExitCode != 0)
                Assert.Fail($"virsh {string.Join(' ', args)}: {r}\n{Output()}");
            return r.Stdout;
        }

        public void Dispose()
        {
            // The script execs libvirtd in its own process (./dom0, unshare and sh all exec), so this is libvirtd.
            if (!_p.HasExited)
            {
                using (var kill = Process.Start("kill", ["-TERM", _p.Id.ToString()]))
                    kill.WaitForExit();
                if (!_p.WaitForExit(TimeSpan.FromSeconds(30)))
                    _p.Kill(entireProcessTree: true);
            }
            _p.WaitForExit();
            _p.Dispose();
        }
    }
}
