using System.Diagnostics;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

public sealed partial class XenToolsTests
{
    /// <summary>
    /// What Xen's xendomains script looks for in a dom0, given to it in a mount namespace of its own (the host keeps
    /// its files): its settings at /etc/default/xendomains (the script reads no other path), an empty /var/lock for
    /// its lock file, /dev/xen/privcmd to find (it only checks that the node exists; the drop-in libraries talk to
    /// the daemon), and Xen 4.17's xl where Debian's version wrapper (/usr/sbin/xl) is, since the wrapper picks the
    /// tools of the hypervisor version it reads from /sys/hypervisor, which a host without Xen does not have; ./dom0
    /// puts 4.17's tools first on PATH for the same reason.
    /// </summary>
    private const string XendomainsNamespace = """
        set -e
        x=$1; shift
        mount --bind "$x/xendomains" /etc/default/xendomains
        mount -t tmpfs none /var/lock
        mkdir -p "$x/dev/upper/xen" "$x/dev/work" "$x/olddev"
        : > "$x/dev/upper/xen/privcmd"
        mount --rbind /dev "$x/olddev"
        mount -t overlay overlay -o "lowerdir=/dev,upperdir=$x/dev/upper,workdir=$x/dev/work" /dev
        for m in pts shm mqueue; do if [ -d "$x/olddev/$m" ]; then mount --rbind "$x/olddev/$m" "/dev/$m"; fi; done
        mount --bind /usr/lib/xen-4.17/bin/xl /usr/lib/xen-common/bin/xen-utils-wrapper
        exec "$@"
        """;

    private XlResult Xendomains(string dir, string action)
    {
        var psi = new ProcessStartInfo("unshare")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            WorkingDirectory = Repository.Root,
        };
        foreach (var a in new[] { "--mount", "--propagation", "private", "sh", Path.Combine(dir, "ns.sh"), dir,
                     Repository.PathOf("dom0"), "/usr/lib/xen-4.17/bin/xendomains", action })
            psi.ArgumentList.Add(a);
        psi.Environment["XENSHARP_RUNDIR"] = _xl.RunDir;
        return XlHost.RunProcess(psi, TimeSpan.FromMinutes(10));
    }

    [Fact, Trait("Feature", "Dom0 init support for xl")]
    public void XendomainsSavesDomainsAtStopAndRestoresThemAtStart()
    {
        Assert.True(Environment.UserName == "root", "xendomains' dom0 files are given to it in a mount namespace, which needs root");
        string dir = Path.Combine(_xl.RunDir, "xendomains");
        string save = Path.Combine(dir, "save");
        Directory.CreateDirectory(Path.Combine(dir, "auto"));
        File.WriteAllText(Path.Combine(dir, "ns.sh"), XendomainsNamespace + "\n");
        File.WriteAllText(Path.Combine(dir, "xendomains"), $"""
            XENDOMAINS_SAVE={save}
            XENDOMAINS_RESTORE=true
            XENDOMAINS_AUTO={Path.Combine(dir, "auto")}
            XENDOMAINS_MIGRATE=""
            XENDOMAINS_SYSRQ=""
            XENDOMAINS_USLEEP=100000
            XENDOMAINS_CREATE_USLEEP=100000
            XENDOMAINS_SHUTDOWN_ALL=""
            XENDOMAINS_AUTO_ONLY=false
            XENDOMAINS_STOP_MAXWAIT=300

            """);
        // Domains Debian's xl made (libxl keeps their configuration, which xl save writes into the image): Debian's
        // Linux, which suspends when libxl asks through control/shutdown, and a test guest that suspends itself at
        // once and checks what it finds when resumed.
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string linux = Path.Combine(dir, "linux.cfg");
        File.WriteAllText(linux, $"""
            name = "penguin"
            type = "pvh"
            kernel = "{store.KernelPath}"
            ramdisk = "{store.ShellInitrdPath}"
            cmdline = "console=hvc0"
            memory = 256
            vcpus = 1
            """);
        Dom0("xl", "create", linux);
        Dom0("xl", "create", Repository.PathOf("tests", "guests", "suspend.cfg"), "name=\"kept\"",
            $"kernel=\"{Repository.PathOf("tests", "guests", "build", "suspend.elf")}\"");
        try
        {
            Assert.True(XlHost.WaitUntil(() => Regex.IsMatch(Dom0("xl", "list").Stdout, @"(?m)^kept\s+\d+\s+\d+\s+\d+\s+\S*s\S*"),
                TimeSpan.FromMinutes(3)), Dom0("xl", "list").Stdout + ConsoleLog("kept"));
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("penguin").Contains("~ # "), LinuxPvhTests.BootLimit), ConsoleLog("penguin"));

            var stop = Xendomains(dir, "stop");
            Assert.True(stop.ExitCode == 0, stop.ToString());
            Assert.Contains("Shutting down Xen domains:", stop.Stdout);
            Assert.Contains(" penguin(save)", stop.Stdout);
            Assert.Contains(" kept(save)", stop.Stdout);
            Assert.DoesNotContain("error occurred", stop.Stdout);
            // Saved in xl's format under the domain's name, and gone from the host.
            string image = Path.Combine(save, "kept");
            Assert.True(File.Exists(image), stop.ToString());
            using (var f = File.OpenRead(image))
            {
                var head = new byte[16];
                f.ReadExactly(head);
                Assert.Equal("Xen saved domain", System.Text.Encoding.ASCII.GetString(head));
            }
            Assert.NotEqual(0, _xl.RunDom0("xl", "domid", "kept").ExitCode);
            Assert.True(File.Exists(Path.Combine(save, "penguin")), stop.ToString());
            Assert.NotEqual(0, _xl.RunDom0("xl", "domid", "penguin").ExitCode);
            Assert.Contains("Freezing user space processes", ConsoleLog("penguin"));
            Assert.DoesNotContain("Restarting tasks", ConsoleLog("penguin"));

            var start = Xendomains(dir, "start");
            Assert.True(start.ExitCode == 0, start.ToString());
            Assert.Matches(@"Restoring Xen domains:( kept| penguin){2}", start.Stdout);
            Assert.DoesNotContain("error occurred", start.Stdout);
            Assert.False(File.Exists(image), "xendomains removes an image it restored");
            // Linux thaws where it froze, in its new domain.
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("penguin").Contains("Restarting tasks ... done."), TimeSpan.FromMinutes(3)),
                ConsoleLog("penguin"));
            Assert.Equal(0, _xl.RunDom0("xl", "domid", "penguin").ExitCode);
            // The guest carried on in a new domain from where it suspended, its memory and registers intact.
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("kept").Contains("DONE"), TimeSpan.FromMinutes(3)), ConsoleLog("kept"));
            var log = ConsoleLog("kept");
            Assert.Contains("# resumed: rc=0", log);
            Assert.Contains("PASS suspend.memory", log);
            Assert.Contains("PASS suspend.new_domid", log);
            Assert.Contains("failed=0", log);
        }
        finally
        {
            _xl.RunDom0("xl", "destroy", "kept");
            _xl.RunDom0("xl", "destroy", "penguin");
        }
    }
}
