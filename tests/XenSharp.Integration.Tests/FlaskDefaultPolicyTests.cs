using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// XenSharp's built-in FLASK policy (policy/flask/xen-default.te), which the daemon loads when it starts with Xen's
/// flask= option and no policy has been loaded, judged by Debian's xl, flask-* tools and test guests against an
/// enforcing daemon: Domain-0 builds and runs domU_t guests, an unlabelled guest becomes domU_t, two domU_t guests set
/// up a channel and grants while an isolated_domU_t guest and a domU_t guest are refused both, a nomigrate_t guest
/// runs but cannot be dumped or saved, prot_domU_t follows its boolean, and flask-loadpolicy replaces the policy.
/// </summary>
public sealed class FlaskDefaultPolicyTests : IClassFixture<FlaskDefaultPolicyTests.Enforcing>
{
    /// <summary>One daemon for the class, enforcing the default policy.</summary>
    public sealed class Enforcing : IDisposable
    {
        public XlHost Xl { get; } = new();

        public Enforcing()
        {
            Xl.Environment["XENSHARP_FLASK"] = "enforcing";
            var r = Xl.Run("list");
            Assert.True(r.ExitCode == 0, r.ToString());
        }

        public void Dispose() => Xl.Dispose();
    }

    private readonly XlHost _xl;
    private readonly int _earlierLines;

    public FlaskDefaultPolicyTests(Enforcing host)
    {
        _xl = host.Xl;
        // The daemon is the class's: this test's denials are those after the lines the others left, domids being reused.
        _earlierLines = Dmesg().Split('\n').Length - 1;
    }

    private static XlResult Ok(XlResult r)
    {
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private XlResult Dom0(params string[] args) => Ok(_xl.RunDom0(args));
    private XlResult Xl(params string[] args) => Ok(_xl.Run(args));
    private string Dmesg() => Dom0("xl", "dmesg").Stdout;
    private string Labels() => Dom0("xl", "list", "-Z").Stdout;

    private static string Trigger => Repository.PathOf("tests", "guests", "trigger.cfg");
    private static string TriggerKernel => $"kernel=\"{Repository.PathOf("tests", "guests", "build", "trigger.elf")}\"";

    /// <summary>Debian's xl create -p of the trigger test kernel; its domid.</summary>
    private string DebianCreate(string name, params string[] extra)
    {
        Dom0(["xl", "create", "-p", Trigger, TriggerKernel, $"name=\"{name}\"", .. extra]);
        return Xl("domid", name).Stdout.Trim();
    }

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    private List<string> Denials(string domid) =>
        Dmesg().Split('\n').Skip(_earlierLines).Where(l => l.Contains("avc:  denied") && (l.Contains($"target=d{domid} ") || l.Contains($"source=d{domid} "))).ToList();

    [Fact, Trait("Feature", "FLASK default policy")]
    public void DomainZeroBuildsAndRunsDomUGuestsUnderTheBuiltInPolicy()
    {
        Assert.Equal("Enforcing", _xl.RunDom0("flask-getenforce").Stdout.Trim());
        Assert.Equal("Enforcing", _xl.RunDom0("xl", "getenforce").Stdout.Trim());
        Assert.Contains("Flask:  Starting in enforcing mode.", Dmesg());

        // Debian's xl: one guest labelled domU_t, one without a label (libxl gives it the domU initial SID), and one
        // by XenSharp's own xl without a label.
        string labelled = DebianCreate("labelled", "seclabel=\"system_u:system_r:domU_t\"");
        string unlabelled = DebianCreate("unlabelled");
        Xl("create", "-p", Trigger, "name=\"ours\"");
        string ours = Xl("domid", "ours").Stdout.Trim();
        string labels = Labels();
        Assert.Matches(@"(?m)^Domain-0\s+0\s.*\ssystem_u:system_r:dom0_t$", labels);
        Assert.Matches($@"(?m)^labelled\s+{labelled}\s.*\ssystem_u:system_r:domU_t$", labels);
        Assert.Matches($@"(?m)^unlabelled\s+{unlabelled}\s.*\ssystem_u:system_r:domU_t$", labels);
        Assert.Matches($@"(?m)^ours\s+{ours}\s.*\ssystem_u:system_r:domU_t$", labels);

        // Domain-0 manages them: pause, unpause, memory, vCPU affinity, its HVM context, destroy.
        foreach (var d in new[] { labelled, unlabelled })
        {
            Dom0("xl", "unpause", d);
            Assert.DoesNotContain("Permission denied", Dom0("xl", "pause", d).Stderr);
            Assert.DoesNotContain("Permission denied", Dom0("xl", "unpause", d).Stderr);
            Assert.DoesNotContain("Permission denied", Dom0("xl", "vcpu-pin", d, "0", "all").Stderr);
            Assert.DoesNotContain("Permission denied", Dom0("xl", "mem-max", d, "40m").Stderr);
            Assert.Contains($"HVM save record for domain {d}", Dom0("xen-hvmctx", d).Stdout);
            Assert.Empty(Denials(d));
            Dom0("xl", "destroy", d);
        }
        Xl("destroy", "ours");
        Assert.DoesNotMatch($@"(?m)^(labelled|unlabelled)\s", Dom0("xl", "list").Stdout);

        // A guest's calls on itself are checked against its self label: the event channel test kernel passes every
        // check as domU_t, as without FLASK.
        string evtchn = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", Repository.PathOf("tests", "guests", "evtchn2l.cfg"),
            "name=\"evtchn-domU\"").Stdout.Replace("\r", "");
        Assert.Matches(@"(?m)^DONE passed=[1-9]\d* failed=0 skipped=0$", evtchn);

        // The device model's label is a domain label Domain-0 may build.
        string dm = DebianCreate("devmodel", "seclabel=\"system_u:system_r:dm_dom_t\"");
        Assert.Matches($@"(?m)^devmodel\s+{dm}\s.*\ssystem_u:system_r:dm_dom_t$", Labels());
        Dom0("xl", "destroy", dm);
        Assert.Empty(Denials(dm));
    }

    [Fact, Trait("Feature", "FLASK default policy")]
    public void AnIsolatedGuestIsKeptApartWhileTwoDomUGuestsTalk()
    {
        string cfg = Repository.PathOf("tests", "guests", "peers.cfg");

        // Two domU_t guests: a channel from one to the other, each copies the other's grant, each signals the other.
        Xl("create", "-p", cfg, "name=\"talk-a\"", "cmdline=\"peer=+1\"");
        string a = Xl("domid", "talk-a").Stdout.Trim();
        Xl("create", "-p", cfg, "name=\"talk-b\"", "cmdline=\"peer=-1\"");
        string b = Xl("domid", "talk-b").Stdout.Trim();
        Assert.Equal(int.Parse(a) + 1, int.Parse(b)); // the guests find each other by these
        Xl("unpause", a);
        Xl("unpause", b);
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("talk-a").Contains("DONE") && ConsoleLog("talk-b").Contains("DONE"),
            TimeSpan.FromMinutes(3)), ConsoleLog("talk-a") + ConsoleLog("talk-b"));
        foreach (var (log, self, peer) in new[] { (ConsoleLog("talk-a"), a, b), (ConsoleLog("talk-b"), b, a) })
        {
            // Both logs: one guest's failure to find the channel is often the other's to offer it.
            Assert.True(log.Contains("failed=0"), ConsoleLog("talk-a") + ConsoleLog("talk-b"));
            Assert.Contains("PASS peers.grant_copy", log);
            Assert.Contains("PASS peers.signalled", log);
            Assert.Contains($"# d{self} and d{peer} talked", log);
        }
        Assert.Contains("PASS peers.alloc_unbound", ConsoleLog("talk-a"));
        Assert.Contains("PASS peers.bind_interdomain", ConsoleLog("talk-b"));
        Assert.Empty(Denials(a));
        Assert.Empty(Denials(b));

        // isolated_domU_t and domU_t: each side's port for the other is refused with EACCES, each copy of the other's
        // grant with GNTST_permission_denied, and Xen's avc lines say which rule refused them.
        Xl("create", "-p", cfg, "name=\"apart-a\"", "cmdline=\"peer=+1 expect=deny\"", "seclabel=\"system_u:system_r:isolated_domU_t\"");
        string i = Xl("domid", "apart-a").Stdout.Trim();
        Xl("create", "-p", cfg, "name=\"apart-b\"", "cmdline=\"peer=-1 expect=deny\"");
        string u = Xl("domid", "apart-b").Stdout.Trim();
        Assert.Equal(int.Parse(i) + 1, int.Parse(u));
        Xl("unpause", i);
        Xl("unpause", u);
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("apart-a").Contains("kept apart") && ConsoleLog("apart-b").Contains("kept apart"),
            TimeSpan.FromMinutes(3)), ConsoleLog("apart-a") + ConsoleLog("apart-b"));
        string labels = Labels();
        Assert.Matches($@"(?m)^apart-a\s+{i}\s.*\ssystem_u:system_r:isolated_domU_t$", labels);
        Assert.Matches($@"(?m)^apart-b\s+{u}\s.*\ssystem_u:system_r:domU_t$", labels);
        foreach (var name in new[] { "apart-a", "apart-b" })
        {
            string log = ConsoleLog(name);
            Assert.Contains("PASS peers.channel_refused", log);
            Assert.Contains("PASS peers.grant_copy_refused", log);
            Assert.DoesNotContain("FAIL ", log);
        }
        string dmesg = Dmesg();
        Assert.Contains($"avc:  denied  {{ bind }} for source=d{i} target=d{u} scontext=system_u:object_r:isolated_domU_t_channel "
            + "tcontext=system_u:system_r:domU_t tclass=event", dmesg);
        Assert.Contains($"avc:  denied  {{ bind }} for source=d{u} target=d{i} scontext=system_u:object_r:domU_t_channel "
            + "tcontext=system_u:system_r:isolated_domU_t tclass=event", dmesg);
        Assert.Contains($"avc:  denied  {{ copy }} for source=d{i} target=d{u} scontext=system_u:system_r:isolated_domU_t "
            + "tcontext=system_u:system_r:domU_t tclass=grant", dmesg);
        Assert.Contains($"avc:  denied  {{ copy }} for source=d{u} target=d{i} scontext=system_u:system_r:domU_t "
            + "tcontext=system_u:system_r:isolated_domU_t tclass=grant", dmesg);
        Xl("destroy", "apart-a");
        Xl("destroy", "apart-b");
    }

    [Fact, Trait("Feature", "FLASK default policy")]
    public void ANomigrateGuestRunsButDomainZeroCannotReadIt()
    {
        // Only through its build label: Debian's xl builds it as nomigrate_t_building and relabels it.
        var direct = _xl.RunDom0("xl", "create", "-p", Trigger, TriggerKernel, "name=\"direct\"", "seclabel=\"system_u:system_r:nomigrate_t\"");
        Assert.NotEqual(0, direct.ExitCode);
        Assert.Contains("domain creation fail: Permission denied", direct.Stderr);
        Assert.Contains("avc:  denied  { create } for current=d0 scontext=system_u:system_r:dom0_t "
            + "tcontext=system_u:system_r:nomigrate_t tclass=domain", Dmesg());

        string nm = DebianCreate("nomigrate", "init_seclabel=\"system_u:system_r:nomigrate_t_building\"",
            "seclabel=\"system_u:system_r:nomigrate_t\"");
        Assert.Matches($@"(?m)^nomigrate\s+{nm}\s.*\ssystem_u:system_r:nomigrate_t$", Labels());
        Dom0("xl", "unpause", nm);
        Assert.DoesNotContain("Permission denied", Dom0("xl", "pause", nm).Stderr);
        Assert.Empty(Denials(nm));

        // Its memory, registers and CPU policy are not Domain-0's to read: no dump, no save.
        var dump = _xl.RunDom0("xl", "dump-core", nm, Path.Combine(_xl.RunDir, "nomigrate.core"));
        Assert.NotEqual(0, dump.ExitCode);
        Assert.Contains("Permission denied", dump.Stderr);
        var save = _xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "save", "-p", nm, Path.Combine(_xl.RunDir, "nomigrate.save"));
        Assert.NotEqual(0, save.ExitCode);
        Assert.Contains("Permission denied", save.Stderr);
        Assert.NotEqual(0, _xl.RunDom0("xen-hvmctx", nm).ExitCode);
        var denials = Denials(nm);
        foreach (var (perm, tclass) in new[] { ("map_read", "mmu"), ("getvcpucontext", "domain"), ("gethvmc", "hvm"), ("get_cpu_policy", "domain2") })
            Assert.Contains(denials, l => l.Contains($"{{ {perm} }} for source=d0 target=d{nm} scontext=system_u:system_r:dom0_t "
                + $"tcontext=system_u:system_r:nomigrate_t tclass={tclass}"));

        // Still Domain-0's to run and to end.
        Assert.Matches($@"(?m)^nomigrate\s+{nm}\s", Dom0("xl", "list").Stdout);
        Dom0("xl", "destroy", nm);

        // prot_domU_t: built while prot_doms_locked is off, refused once it is set.
        string prot = DebianCreate("prot", "seclabel=\"system_u:system_r:prot_domU_t\"");
        Dom0("xl", "destroy", prot);
        Assert.Equal("prot_doms_locked: 0", Dom0("flask-get-bool", "prot_doms_locked").Stdout.Trim());
        Dom0("flask-set-bool", "prot_doms_locked", "1");
        try
        {
            var locked = _xl.RunDom0("xl", "create", "-p", Trigger, TriggerKernel, "name=\"prot2\"", "seclabel=\"system_u:system_r:prot_domU_t\"");
            Assert.NotEqual(0, locked.ExitCode);
            Assert.Contains("avc:  denied  { create } for current=d0 scontext=system_u:system_r:dom0_t "
                + "tcontext=system_u:system_r:prot_domU_t tclass=domain", Dmesg());
        }
        finally
        {
            Dom0("flask-set-bool", "prot_doms_locked", "0");
        }
    }

    [Fact, Trait("Feature", "FLASK default policy")]
    public void FlaskLoadpolicyReplacesTheBuiltInPolicyAndLateStartsWithoutOne()
    {
        using var permissive = new XlHost();
        permissive.Environment["XENSHARP_FLASK"] = "permissive";
        Ok(permissive.Run("list"));
        Assert.Equal("Permissive", permissive.RunDom0("flask-getenforce").Stdout.Trim());
        Assert.Contains("Flask:  Starting in permissive mode.", Ok(permissive.RunDom0("xl", "dmesg")).Stdout);
        // The built-in policy has no locked_t: the label is refused until the tests' policy replaces it.
        var refused = permissive.Run("create", "-p", Trigger, "name=\"locked\"", "seclabel=\"system_u:system_r:locked_t\"");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("Invalid seclabel: system_u:system_r:locked_t", refused.Stderr);
        Ok(permissive.RunDom0("flask-loadpolicy", FlaskToolsTests.CompileTestPolicy(permissive)));
        Ok(permissive.Run("create", "-p", Trigger, "name=\"locked\"", "seclabel=\"system_u:system_r:locked_t\""));
        string locked = Ok(permissive.Run("domid", "locked")).Stdout.Trim();
        Assert.Matches($@"(?m)^locked\s+{locked}\s.*\ssystem_u:system_r:locked_t$", Ok(permissive.RunDom0("xl", "list", "-Z")).Stdout);

        // flask=late: enforcing, but nothing loaded until a policy comes.
        using var late = new XlHost();
        late.Environment["XENSHARP_FLASK"] = "late";
        Ok(late.Run("list"));
        Assert.Equal("Enforcing", late.RunDom0("flask-getenforce").Stdout.Trim());
        Assert.Contains("Flask:  Access controls disabled until policy is loaded.", Ok(late.RunDom0("xl", "dmesg")).Stdout);
        Assert.DoesNotMatch(new Regex("Starting in"), Ok(late.RunDom0("xl", "dmesg")).Stdout);
    }
}
