using System.Diagnostics;
using System.Text;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Xen's own xenconsoled in Domain-0: with the daemon started as `xensharpd --xenconsoled external`
/// ($XENSHARP_XENCONSOLED), Debian's /usr/lib/xen-4.17/bin/xenconsoled under ./dom0 serves the console of a PVH guest
/// Debian's xl builds, as on Xen where it is the only one. It maps the ring through the reserved console grant
/// (gntdev), binds the port through libxenevtchn and finds domains with getdomaininfo and @introduceDomain: what the
/// guest prints lands in xenconsoled's guest log, what is typed into the pty it names in console/tty reaches the
/// guest's shell, and on @releaseDomain it lets go of the domain's ring mapping and its log; a guest ./xl builds keeps
/// the daemon's console.
/// </summary>
public sealed class Dom0XenconsoledTests
{
    private const string DebianXl = "/usr/lib/xen-4.17/bin/xl";
    private const string Xenconsoled = "/usr/lib/xen-4.17/bin/xenconsoled";

    [Fact]
    [Trait("Feature", "Dom0 stable libraries"), Trait("Feature", "PV Console (xenconsoled)"), Trait("Feature", "x86/PVH")]
    public void DebiansXenconsoledServesAGuestDebiansXlBuilt()
    {
        Assert.True(File.Exists(DebianXl) && File.Exists(Xenconsoled), "xen-utils-4.17 is missing (see scripts/install-deps.sh)");
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        using var xl = new XlHost();
        xl.Environment["XENSHARP_XENCONSOLED"] = "external";
        Assert.Equal(0, xl.Run("list").ExitCode); // starts the daemon, leaving outside consoles to xenconsoled
        string cfg = LinuxPvhTests.WriteConfig(xl, store, "xcguest");
        string logDir = Path.Combine(xl.RunDir, "xenconsoled");
        Directory.CreateDirectory(logDir);

        using var daemon = Process.Start(xl.Dom0StartInfo(Xenconsoled, "-i", "--log=all", $"--log-dir={logDir}"))!;
        var output = new StringBuilder();
        daemon.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        daemon.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        daemon.BeginOutputReadLine();
        daemon.BeginErrorReadLine();
        daemon.StandardInput.Close();
        string Said() { lock (output) return output.ToString(); }
        try
        {
            // --log=all: it opens the hypervisor's log first, reading the console ring through readconsole.
            string hvLog = Path.Combine(logDir, "hypervisor.log");
            Assert.True(XlHost.WaitUntil(() => File.Exists(hvLog) && File.ReadAllText(hvLog).Contains("(XEN) Xen version") || daemon.HasExited,
                TimeSpan.FromMinutes(1)) && !daemon.HasExited, $"xenconsoled did not start: {Said()}");

            var r = xl.RunDom0(TimeSpan.FromMinutes(3), "xl", "create", cfg);
            Assert.True(r.ExitCode == 0, r.ToString());
            string domid = xl.Run("domid", "xcguest").Stdout.Trim();
            string guestLog = Path.Combine(logDir, "guest-xcguest.log");
            string Log() => File.Exists(guestLog) ? ReadShared(guestLog) : "";
            Assert.True(XlHost.WaitUntil(() => Log().Contains("~ # "), LinuxPvhTests.BootLimit),
                $"the guest's shell never reached xenconsoled's log:\n{LinuxPvhTests.Tail(Log())}\nxenconsoled: {Said()}");
            Assert.Contains("Booting kernel on Xen PVH", Log());
            Assert.DoesNotContain("Kernel panic", Log());
            // The daemon left the console alone: no log of its own for the domain.
            Assert.False(File.Exists(Path.Combine(xl.RunDir, "console", "xcguest.log")), "the daemon served the console too");

            // xenconsoled's pty (raw, as it makes it) carries input to the guest's shell.
            string tty = xl.RunDom0("xenstore-read", $"/local/domain/{domid}/console/tty").Stdout.Trim();
            Assert.StartsWith("/dev/pts/", tty);
            using (var pty = new FileStream(tty, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1))
            {
                pty.Write("echo typed-$((6*7)) $(cat /sys/hypervisor/type)\r"u8);
                pty.Flush();
                Assert.True(XlHost.WaitUntil(() => Log().Contains("typed-42 xen"), TimeSpan.FromMinutes(2)),
                    $"what was typed into {tty} did not reach the guest:\n{LinuxPvhTests.Tail(Log())}");
            }

            // The ring is mapped from the domain's memory (its memfd) into xenconsoled while the domain lives.
            int pid = daemon.Id;
            string memory = $"/memfd:xensharp-d{domid} ";
            Assert.Contains(memory, File.ReadAllText($"/proc/{pid}/maps"));
            Assert.True(HasOpen(pid, guestLog));

            // xl destroy: @releaseDomain, and xenconsoled unmaps the ring, unbinds the port and closes the log.
            r = xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "destroy", "xcguest");
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.True(XlHost.WaitUntil(() => !File.ReadAllText($"/proc/{pid}/maps").Contains(memory) && !HasOpen(pid, guestLog),
                TimeSpan.FromMinutes(1)), "xenconsoled kept the dead domain's ring mapped or its log open");
            Assert.DoesNotContain("xcguest", xl.Run("list").Stdout);

            // A guest ./xl builds keeps the daemon's console: its port is bound already, so xenconsoled's
            // bind_interdomain is refused (EINVAL, as Xen refuses a port that is not unbound) and it serves nothing.
            string trigger = Repository.PathOf("tests", "guests", "trigger.cfg");
            r = xl.Run(TimeSpan.FromMinutes(2), "create", trigger, "name=\"ours\"");
            Assert.True(r.ExitCode == 0, r.ToString());
            string ours = Path.Combine(xl.RunDir, "console", "ours.log");
            Assert.True(XlHost.WaitUntil(() => File.Exists(ours) && ReadShared(ours).Contains("# waiting"), TimeSpan.FromMinutes(2)),
                "the daemon did not serve the console of the guest ./xl built");
            // xenconsoled maps the ring by grant before it binds the port (and keeps the page for a later try): once
            // the mapping shows, it has tried.
            string oursMemory = $"/memfd:xensharp-d{xl.Run("domid", "ours").Stdout.Trim()} ";
            XlHost.WaitUntil(() => File.ReadAllText($"/proc/{pid}/maps").Contains(oursMemory), TimeSpan.FromSeconds(30));
            Assert.False(File.Exists(Path.Combine(logDir, "guest-ours.log")), "xenconsoled took a console the daemon serves");
            Assert.Contains("# waiting", ReadShared(ours));
            Assert.Equal(0, xl.Run("destroy", "ours").ExitCode);
            Assert.False(daemon.HasExited, $"xenconsoled exited: {Said()}");
        }
        finally
        {
            if (!daemon.HasExited) daemon.Kill(entireProcessTree: true);
            daemon.WaitForExit();
        }
    }

    private static string ReadShared(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var r = new StreamReader(f);
        return r.ReadToEnd();
    }

    /// <summary>Whether process <paramref name="pid"/> has <paramref name="path"/> open.</summary>
    private static bool HasOpen(int pid, string path)
    {
        foreach (var fd in Directory.EnumerateFiles($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget == path) return true;
            }
            catch (IOException) { }
        }
        return false;
    }
}
