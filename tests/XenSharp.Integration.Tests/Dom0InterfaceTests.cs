using System.Diagnostics;
using System.Text;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Xen's own userland on XenSharp: Debian's xl (Xen 4.17, over libxenctrl and libxenlight) run through ./dom0 with
/// the drop-in stable libraries must report the same facts as XenSharp's own xl, against one private daemon holding
/// Domain-0 and a paused guest. A small Domain-0 program (tests/native/dom0client.c) checks bad calls get Xen's
/// errno, event channels mask until unmasked, grants map, copy and unmap as through gntdev, pages are shared as
/// through gntalloc, Xen's C xenstored serves a guest's ring, and a killed program leaves nothing held in the daemon.
/// </summary>
public sealed class Dom0InterfaceTests : IClassFixture<Dom0InterfaceTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public string Client { get; }
        private readonly string _clientDir = Directory.CreateTempSubdirectory("dom0client-").FullName;

        public Host()
        {
            Assert.True(File.Exists(DebianXl), $"{DebianXl} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
            var cfg = Repository.PathOf("tests", "guests", "trigger.cfg");
            Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "trigger.elf")), "trigger.elf is not built (make -C tests/guests)");
            var r = Xl.Run("create", "-p", cfg, "name=\"held\"");
            Assert.True(r.ExitCode == 0, r.ToString());
            Client = Path.Combine(_clientDir, "dom0client");
            var (rc, output) = Run("gcc", "-O2", "-Wall", "-D__XEN_TOOLS__", "-o", Client,
                Repository.PathOf("tests", "native", "dom0client.c"), "-lxenctrl", "-lxencall", "-lxenevtchn", "-lxenforeignmemory", "-lxengnttab", "-lxenstore");
            Assert.True(rc == 0, output);
        }

        public void Dispose()
        {
            Xl.Dispose();
            try { Directory.Delete(_clientDir, recursive: true); } catch (IOException) { }
        }
    }

    private const string DebianXl = "/usr/lib/xen-4.17/bin/xl";
    private readonly Host _host;
    private XlHost Xl => _host.Xl;

    public Dom0InterfaceTests(Host host) => _host = host;

    private ProcessStartInfo Dom0Start(params string[] args) => Xl.Dom0StartInfo(args);

    /// <summary>Runs a program under ./dom0 and waits for it.</summary>
    private XlResult Dom0(params string[] args) => Xl.RunDom0(args);

    private XlResult Ours(params string[] args)
    {
        var r = Xl.Run(args);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private XlResult Theirs(params string[] args)
    {
        var r = Dom0(["xl", .. args]);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private static string[][] Rows(string text, int skipHeader = 1) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(skipHeader)
            .Select(l => l.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)).Where(f => f.Length > 0).ToArray();

    private static Dictionary<string, string> Fields(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.Contains(':'))
            .ToDictionary(l => l[..l.IndexOf(':')].Trim(), l => l[(l.IndexOf(':') + 1)..].Trim());

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void DebianXlUsesTheDropInLibraries()
    {
        var r = Dom0("sh", "-c", "command -v xl; echo $LD_LIBRARY_PATH; ldd " + DebianXl + " | grep -E 'libxen(call|evtchn|foreignmemory|gnttab)'");
        Assert.True(r.ExitCode == 0, r.ToString());
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(DebianXl, lines[0]);
        string libs = Repository.PathOf("artifacts", "dom0", "lib");
        foreach (var lib in new[] { "libxencall.so.1", "libxenevtchn.so.1", "libxenforeignmemory.so.1", "libxengnttab.so.1" })
            Assert.Contains(lines, l => l.Contains(lib) && l.Contains(Path.Combine(libs, lib)));
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlInfoAgrees()
    {
        var ours = Fields(Ours("info").Stdout);
        var theirs = Fields(Theirs("info").Stdout);
        foreach (var key in new[] { "nr_cpus", "max_cpu_id", "nr_nodes", "cores_per_socket", "threads_per_core", "virt_caps",
                     "total_memory", "free_memory", "outstanding_claims", "free_cpus", "xen_major", "xen_minor", "xen_extra",
                     "xen_version", "xen_caps", "xen_scheduler", "xen_pagesize", "platform_params", "xen_commandline" })
        {
            Assert.True(ours.ContainsKey(key), $"./xl info has no {key}");
            Assert.True(theirs.TryGetValue(key, out var v), $"Debian's xl info has no {key}");
            Assert.True(ours[key] == v, $"{key}: ./xl says '{ours[key]}', Debian's xl says '{v}'");
        }
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlListAgrees()
    {
        var ours = Rows(Ours("list").Stdout);
        var theirs = Rows(Theirs("list").Stdout);
        Assert.Equal(ours.Select(r => r[0]), theirs.Select(r => r[0]));
        Assert.Contains(theirs, r => r[0] == "held");
        foreach (var (o, t) in ours.Zip(theirs))
            // Name, ID, Mem, VCPUs, State; CPU time moves between the two runs.
            Assert.Equal(o[..5], t[..5]);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlVcpuListAgrees()
    {
        var ours = Rows(Ours("vcpu-list").Stdout);
        var theirs = Rows(Theirs("vcpu-list").Stdout);
        Assert.Equal(ours.Length, theirs.Length);
        Assert.Contains(theirs, r => r[0] == "held");
        foreach (var (o, t) in ours.Zip(theirs))
        {
            // Name ID VCPU CPU State Time(s) Hard / Soft
            Assert.Equal(o[..3], t[..3]);
            if (o[3] != "-")
                Assert.Equal(o[3], t[3]); // a vCPU that never ran has no pCPU in ./xl; Xen always names one
            Assert.Equal(o[4], t[4]);
            Assert.Equal(o[6..], t[6..]);
        }
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlDmesgAgrees()
    {
        var ours = Ours("dmesg").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var theirs = Theirs("dmesg").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(ours);
        // The ring may have grown in between: what ./xl read comes first, unchanged.
        Assert.True(theirs.Length >= ours.Length, $"Debian's xl dmesg:\n{string.Join('\n', theirs)}");
        Assert.Equal(ours, theirs[..ours.Length]);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlSchedulerParametersAgree()
    {
        string scheduler = Fields(Ours("info").Stdout)["xen_scheduler"];
        string command = scheduler == "credit2" ? "sched-credit2" : "sched-credit";
        var ours = Ours(command).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var theirs = Theirs(command).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(ours.Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries))),
            theirs.Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries))));
        Assert.Contains(theirs, l => l.StartsWith("held"));
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XlCpupoolListAgrees()
    {
        Assert.Equal(Rows(Ours("cpupool-list").Stdout), Rows(Theirs("cpupool-list").Stdout));
        Assert.Equal(Rows(Ours("cpupool-list", "-c").Stdout), Rows(Theirs("cpupool-list", "-c").Stdout));
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void BadCallsGetXensErrno()
    {
        var r = Dom0(_host.Client, "errors");
        Assert.True(r.ExitCode == 0, r.ToString());
        var got = Fields(r.Stdout.Replace(' ', ':'));
        Assert.Equal("3", got["getvcpuinfo-nodomain"]);   // ESRCH
        Assert.Equal("3", got["pause-nodomain"]);         // ESRCH, before the operation is looked at
        Assert.Equal("22", got["getvcpuinfo-novcpu"]);    // EINVAL
        Assert.Equal("13", got["domctl-version"]);        // EACCES: another interface version
        Assert.Equal("0:0", got["domctl-ok"]);            // domain 0 answers
        Assert.Equal("14", got["domctl-notbuffer"]);      // EFAULT: not a hypercall buffer
        Assert.Equal("38", got["vcpu-op"]);               // ENOSYS: a process has no vCPU
        Assert.Contains("held", Ours("list").Stdout);     // and the daemon is unharmed
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void EventChannelsMaskUntilUnmasked()
    {
        var r = Dom0(_host.Client, "events");
        Assert.True(r.ExitCode == 0, r.ToString());
        var got = Fields(r.Stdout.Replace(' ', ':'));
        Assert.Equal("1", got["b-after-bind"]);
        Assert.Equal("1", got["a-first"]);
        Assert.Equal("-1", got["a-while-masked"]);
        Assert.Equal("1", got["a-after-unmask"]);
        Assert.Equal("-1", got["a-nothing-left"]);
        Assert.Equal("107", got["notify-foreign"]);       // ENOTCONN: not this handle's port
        Assert.Equal("107", got["unbind-foreign"]);
        Assert.Equal("0", got["unbind-own"]);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void ForeignMappingsShowTheGuestsMemory()
    {
        // The guest kernel's first loaded segment, as the file holds it, is what its frames hold.
        var elf = File.ReadAllBytes(Repository.PathOf("tests", "guests", "build", "trigger.elf"));
        long phoff = BitConverter.ToInt64(elf, 0x20);
        int phentsize = BitConverter.ToUInt16(elf, 0x36);
        long offset = BitConverter.ToInt64(elf, (int)phoff + 0x08);
        long paddr = BitConverter.ToInt64(elf, (int)phoff + 0x18);
        Assert.Equal(1u, BitConverter.ToUInt32(elf, (int)phoff)); // PT_LOAD
        Assert.True(phentsize > 0 && paddr % 4096 == 0);
        string domid = Ours("domid", "held").Stdout.Trim();

        var r = Dom0(_host.Client, "map", domid, $"0x{paddr / 4096:x}", "2");
        Assert.True(r.ExitCode == 0, r.ToString());
        var pages = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < 2; i++)
        {
            string expected = string.Join(' ', elf.Skip((int)offset + i * 4096).Take(16).Select(b => b.ToString("x2")));
            Assert.Equal($"page {i} 0 {expected}", pages[i]);
        }

        // A frame with no RAM behind it fails alone (EINVAL); a domain that does not exist fails the map (ESRCH).
        var hole = Dom0(_host.Client, "map", domid, "0xfffff", "1");
        Assert.Equal("page 0 -22", hole.Stdout.Trim());
        var nodomain = Dom0(_host.Client, "map", "31000", "0x100", "1");
        Assert.Equal("map error 3", nodomain.Stdout.Trim());
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void KilledProgramLeavesNoBufferOrPortHeld()
    {
        int daemon = int.Parse(File.ReadAllText(Path.Combine(Xl.RunDir, "xensharpd.pid")).Trim());
        int Buffers() => File.ReadLines($"/proc/{daemon}/maps").Count(l => l.Contains("memfd:xencall-buffers"));
        string Status(int port)
        {
            var s = Dom0(_host.Client, "status", port.ToString());
            Assert.True(s.ExitCode == 0, s.ToString());
            return s.Stdout.Trim();
        }

        using var holder = Process.Start(Dom0Start(_host.Client, "hold", "0"))!;
        int port;
        try
        {
            holder.StandardInput.Close();
            string? line = holder.StandardOutput.ReadLine();
            if (line?.StartsWith("ready ") != true)
            {
                holder.Kill();
                Assert.Fail($"the holder said '{line}': {holder.StandardError.ReadToEnd()}");
            }
            port = int.Parse(line!["ready ".Length..]);
            Assert.Equal("status 1", Status(port));       // EVTCHNSTAT_unbound, held by the program
            Assert.True(Buffers() >= 1);
        }
        finally
        {
            holder.Kill();                                  // SIGKILL: no chance to close anything
            holder.WaitForExit();
        }
        // The daemon lets go when it sees the connection end; wait for that rather than for a time. (The probe's own
        // buffers come and go with it, so both must hold at once.)
        var deadline = Stopwatch.StartNew();
        string status;
        int buffers;
        do
        {
            Thread.Sleep(100);
            status = Status(port);
            buffers = Buffers();
        }
        while ((status != "status 0" || buffers > 0) && deadline.Elapsed < TimeSpan.FromSeconds(60));
        Assert.Equal("status 0", status);                 // EVTCHNSTAT_closed
        Assert.Equal(0, buffers);
        Assert.Contains("held", Ours("list").Stdout);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void GrantsMapCopyAndUnmapAsThroughGntdev()
    {
        // The guest's reserved xenstore grant (seeded for Domain-0 as libxl seeds it), checked against a foreign
        // mapping of the same frame.
        string domid = Ours("domid", "held").Stdout.Trim();
        var r = Dom0(_host.Client, "grants", domid);
        Assert.True(r.ExitCode == 0, r.ToString());
        var got = Fields(r.Stdout.Replace(' ', ':'));
        Assert.Equal("0", got["map"]);
        Assert.Equal("1", got["map-shared"]);          // a write through the grant map is in the guest's frame
        Assert.Equal("1", got["map-sees-guest"]);      // and the other way
        Assert.Equal("1", got["map-again"]);
        Assert.Equal("0", got["unmap-again"]);
        Assert.Equal("0", got["unmap"]);
        Assert.Equal("22", got["unmap-twice"]);        // EINVAL: no map of the handle's there any more
        Assert.Equal("22", got["map-badref"]);         // gntdev fails a map Xen refused with EINVAL
        Assert.Equal("22", got["map-nodomain"]);
        Assert.Equal("22", got["map-partly-bad"]);     // all or nothing
        Assert.Equal("0", got["copy"]);
        Assert.Equal("0:1", got["copy-from"]);
        Assert.Equal("0:1", got["copy-to"]);
        Assert.Equal("-3", got["copy-badref"]);        // GNTST_bad_gntref, for that segment only
        Assert.Equal("-2", got["copy-nodomain"]);      // GNTST_bad_domain
        Assert.Equal("22", got["copy-outside"]);       // a segment leaving its page fails the call
        Assert.Equal("119", got["notify-set"]);
        Assert.Equal("0", got["notify-unmap"]);
        Assert.Equal("0", got["notify-cleared"]);      // the unmap notification cleared the byte
        Assert.Equal("0", got["set-max"]);
        Assert.Equal("1:28", got["over-max"]);         // ENOSPC beyond xengnttab_set_max_grants
        Assert.Contains("held", Ours("list").Stdout);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void KilledProgramsGrantMapsAreUnmappedWithTheirNotification()
    {
        string domid = Ours("domid", "held").Stdout.Trim();
        string Peek()
        {
            var s = Dom0(_host.Client, "peek", domid, "300");
            Assert.True(s.ExitCode == 0, s.ToString());
            return s.Stdout.Trim();
        }

        using var holder = Process.Start(Dom0Start(_host.Client, "holdgrant", domid))!;
        try
        {
            holder.StandardInput.Close();
            string? line = holder.StandardOutput.ReadLine();
            if (line != "ready")
            {
                holder.Kill();
                Assert.Fail($"the holder said '{line}': {holder.StandardError.ReadToEnd()}");
            }
            Assert.Equal("byte 102", Peek());           // what the holder wrote through its grant map
        }
        finally
        {
            holder.Kill();                              // SIGKILL: the daemon must unmap for it
            holder.WaitForExit();
        }
        var deadline = Stopwatch.StartNew();
        string byteNow;
        do
        {
            Thread.Sleep(100);
            byteNow = Peek();
        }
        while (byteNow != "byte 0" && deadline.Elapsed < TimeSpan.FromSeconds(60));
        Assert.Equal("byte 0", byteNow);                // the unmap notification ran: the map is gone
        Assert.Contains("held", Ours("list").Stdout);
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void SharedPagesAreGrantedFromDomain0AsThroughGntalloc()
    {
        string domid = Ours("domid", "held").Stdout.Trim();
        var r = Dom0(_host.Client, "shares", domid);
        Assert.True(r.ExitCode == 0, r.ToString());
        var got = Fields(r.Stdout.Replace(' ', ':'));
        Assert.Equal("0", got["share"]);
        Assert.Equal("1", got["share-zeroed"]);
        Assert.Equal("1", got["share-refs"]);           // past the reserved entries, one per page
        Assert.Equal("1", got["share-mapped"]);         // Domain-0 maps its own grants back through gntdev
        Assert.Equal("1", got["share-both-ways"]);
        Assert.Equal("0", got["unshare"]);
        Assert.Equal("22", got["unshare-twice"]);
        Assert.Equal("22", got["map-after-unshare"]);   // the grant ended
        Assert.Equal("1:22", got["map-other-grantee"]); // granted to the guest, not to Domain-0
        Assert.Equal("22", got["share-reserved-domid"]);
        Assert.Equal("9", got["notify-seen"]);
        Assert.Equal("0", got["notify-unshare"]);
        Assert.Equal("0", got["notify-cleared"]);       // cleared on unshare; the mapping kept the page
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void KilledProgramsSharesEnd()
    {
        using var holder = Process.Start(Dom0Start(_host.Client, "holdshare"))!;
        string gref;
        try
        {
            holder.StandardInput.Close();
            string? line = holder.StandardOutput.ReadLine();
            if (line?.StartsWith("ready ") != true)
            {
                holder.Kill();
                Assert.Fail($"the holder said '{line}': {holder.StandardError.ReadToEnd()}");
            }
            gref = line!["ready ".Length..];
            Assert.Equal("mapped 0", Dom0(_host.Client, "mapref", "0", gref).Stdout.Trim());
        }
        finally
        {
            holder.Kill();
            holder.WaitForExit();
        }
        var deadline = Stopwatch.StartNew();
        string mapped;
        do
        {
            Thread.Sleep(100);
            mapped = Dom0(_host.Client, "mapref", "0", gref).Stdout.Trim();
        }
        while (mapped != "mapped 22" && deadline.Elapsed < TimeSpan.FromSeconds(60));
        Assert.Equal("mapped 22", mapped);              // the daemon ended the grant for it
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void DebiansXenstoredServesAGuestsRing()
    {
        // Xen's C xenstored under ./dom0, beside the daemon's own: Domain-0's connection is a port a holder keeps
        // unbound and a page of a file (what /proc/xen/xsd_port and xsd_kva give it in a Xen dom0, here through
        // libxensharp-procxen.so); the guest it is introduced to is reached by gntdev and bind_interdomain.
        string domid = Ours("domid", "held").Stdout.Trim();
        string dir = Directory.CreateTempSubdirectory("cxenstored-").FullName;
        using var holder = Process.Start(Dom0Start(_host.Client, "hold", "0"))!;
        Process? xenstored = null;
        try
        {
            holder.StandardInput.Close();
            string? line = holder.StandardOutput.ReadLine();
            Assert.True(line?.StartsWith("ready ") == true, $"the holder said '{line}'");
            File.WriteAllText(Path.Combine(dir, "xsd_port"), line!["ready ".Length..]);
            File.WriteAllBytes(Path.Combine(dir, "xsd_kva"), new byte[4096]);
            string socket = Path.Combine(dir, "socket");
            xenstored = Process.Start(Dom0Start("env", $"XENSTORED_PATH={socket}", $"XENSTORED_RUNDIR={dir}",
                $"XENSHARP_XSD_PORT={Path.Combine(dir, "xsd_port")}", $"XENSHARP_XSD_KVA={Path.Combine(dir, "xsd_kva")}",
                $"LD_PRELOAD={Repository.PathOf("artifacts", "dom0", "lib", "libxensharp-procxen.so")}",
                "/usr/lib/xen-4.17/bin/xenstored", "-N", "-F", Path.Combine(dir, "pid")))!;
            xenstored.StandardInput.Close();
            var stderr = xenstored.StandardError.ReadToEndAsync();
            var deadline = Stopwatch.StartNew();
            while (!File.Exists(socket) && !xenstored.HasExited && deadline.Elapsed < TimeSpan.FromSeconds(60))
                Thread.Sleep(100);
            Assert.True(File.Exists(socket), $"xenstored did not start: {(xenstored.HasExited ? stderr.Result : "")}");

            var r = Dom0("env", $"XENSTORED_PATH={socket}", _host.Client, "introduce", domid);
            Assert.True(r.ExitCode == 0, r.ToString());
            var got = Fields(r.Stdout.Replace(' ', ':'));
            Assert.Equal("0", got["introduce"]);
            Assert.Equal("1", got["is-introduced"]);
            Assert.Equal("2:7:from-c-xenstored", got["guest-reply"]); // XS_READ answered on the guest's ring
            Assert.Equal("0", got["release"]);
        }
        finally
        {
            if (xenstored is not null && !xenstored.HasExited) xenstored.Kill();
            xenstored?.WaitForExit();
            xenstored?.Dispose();
            holder.Kill();
            holder.WaitForExit();
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
        Assert.Contains("held", Ours("list").Stdout);
    }

    private static (int, string) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, o.Result + e.Result);
    }
}
