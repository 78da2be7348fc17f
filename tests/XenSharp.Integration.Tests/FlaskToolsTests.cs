using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// FLASK judged by Xen's own tools from Debian's xen-utils-4.17, run unmodified through ./dom0 against a daemon started
/// with Xen's flask= option (XENSHARP_FLASK): flask-loadpolicy loads the tests' policy as Debian's checkpolicy compiles
/// it, flask-getenforce/flask-setenforce and xl getenforce/setenforce switch modes, a guest gets its label from xl.cfg's
/// seclabel (Debian's xl list -Z shows it), and Debian's xl pause of that guest, which the policy denies, is reported in
/// xl dmesg as Xen's avc line when permissive and refused with EACCES when enforcing. Debian's xl create labels the
/// domains it builds (init_seclabel, then seclabel through FLASK_RELABEL_DOMAIN) as the policy allows.
/// </summary>
public sealed class FlaskToolsTests : IDisposable
{
    private readonly XlHost _xl = new();

    public void Dispose() => _xl.Dispose();

    private XlResult Dom0(params string[] args)
    {
        var r = _xl.RunDom0(args);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private XlResult Xl(params string[] args)
    {
        var r = _xl.Run(args);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    /// <summary>tests/flask/xensharp-test.te, after Xen's classes and permissions (policy/flask/xen-abi.te), compiled by
    /// checkpolicy for Xen (policy version 30).</summary>
    private string CompilePolicy() => CompileTestPolicy(_xl);

    internal static string CompileTestPolicy(XlHost xl)
    {
        string source = Path.Combine(xl.RunDir, "xensharp-test.te"), output = Path.Combine(xl.RunDir, "xensharp-test.pol");
        File.WriteAllText(source, File.ReadAllText(Repository.PathOf("policy", "flask", "xen-abi.te"))
            + File.ReadAllText(Repository.PathOf("tests", "flask", "xensharp-test.te")));
        var r = XlHost.RunProcess(new ProcessStartInfo("checkpolicy", ["-t", "xen", "-c", "30", "-o", output, source])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
        }, TimeSpan.FromMinutes(1));
        Assert.True(r.ExitCode == 0, r.ToString());
        return output;
    }

    private string Create(string name, string label)
    {
        Xl("create", "-p", Repository.PathOf("tests", "guests", "trigger.cfg"), $"name=\"{name}\"", $"seclabel=\"{label}\"");
        return Xl("domid", name).Stdout.Trim();
    }

    [Fact, Trait("Feature", "XSM & FLASK")]
    public void EnforcingRefusesWhatPermissiveReported()
    {
        _xl.Environment["XENSHARP_FLASK"] = "permissive";
        string policy = CompilePolicy();
        Xl("list"); // starts the daemon with the option
        Assert.Equal("Permissive", _xl.RunDom0("flask-getenforce").Stdout.Trim());
        // The daemon started with its built-in policy, which the tests' policy replaces.
        Assert.Contains("Flask:  Starting in permissive mode.", Dom0("xl", "dmesg").Stdout);
        Dom0("flask-loadpolicy", policy);

        string locked = Create("locked", "system_u:system_r:locked_t");
        string free = Create("free", "system_u:system_r:domU_t");
        var labels = Dom0("xl", "list", "-Z").Stdout;
        Assert.Matches(@"(?m)^Domain-0\s+0\s.*\ssystem_u:system_r:dom0_t$", labels);
        Assert.Matches($@"(?m)^locked\s+{locked}\s.*\ssystem_u:system_r:locked_t$", labels);
        Assert.Matches($@"(?m)^free\s+{free}\s.*\ssystem_u:system_r:domU_t$", labels);

        // Permissive: the pause the policy denies happens, and Xen's avc line says so.
        var pause = Dom0("xl", "pause", locked);
        Assert.DoesNotContain("Permission denied", pause.Stderr);
        Dom0("xl", "unpause", locked);
        string denial = $"avc:  denied  {{ pause }} for source=d0 target=d{locked} scontext=system_u:system_r:dom0_t "
            + "tcontext=system_u:system_r:locked_t tclass=domain";
        Assert.Single(Denials());

        // Enforcing: refused with EACCES (Debian's xl reports libxl's error and carries on), others still allowed.
        Dom0("flask-setenforce", "1");
        Assert.Equal("Enforcing", _xl.RunDom0("flask-getenforce").Stdout.Trim());
        Assert.Equal("Enforcing", _xl.RunDom0("xl", "getenforce").Stdout.Trim()); // xl's exit status is the mode
        Assert.Contains($"Domain {locked}:Pausing domain: Permission denied", _xl.RunDom0("xl", "pause", locked).Stderr);
        Assert.DoesNotContain("Permission denied", Dom0("xl", "pause", free).Stderr);
        Dom0("xl", "unpause", free);
        Assert.Equal(2, Denials().Count);

        // The policy's boolean, by name, through Xen's tools.
        Assert.Equal("guest_grants: 0", Dom0("flask-get-bool", "guest_grants").Stdout.Trim());
        Dom0("flask-set-bool", "guest_grants", "1");
        Assert.Equal("guest_grants: 1", Dom0("flask-get-bool", "guest_grants").Stdout.Trim());

        // xl's own commands: back to permissive, reload; the labels survive the reload.
        Dom0("xl", "setenforce", "0");
        Assert.Equal("Permissive", _xl.RunDom0("xl", "getenforce").Stdout.Trim());
        Dom0("xl", "loadpolicy", policy);
        Assert.Matches($@"(?m)^locked\s+{locked}\s.*\ssystem_u:system_r:locked_t$", Dom0("xl", "list", "-Z").Stdout);
        Assert.DoesNotContain("Permission denied", Dom0("xl", "pause", locked).Stderr);

        // A label the policy does not know fails the creation, as libxl's does.
        var bad = _xl.Run("create", "-p", Repository.PathOf("tests", "guests", "trigger.cfg"), "name=\"bad\"",
            "seclabel=\"system_u:system_r:nonexistent_t\"");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("Invalid seclabel: system_u:system_r:nonexistent_t", bad.Stderr);

        List<string> Denials() => Dom0("xl", "dmesg").Stdout.Split('\n').Where(l => l.Contains(denial)).ToList();
    }

    [Fact, Trait("Feature", "XSM & FLASK")]
    public void DebianXlBuildsUnderInitSeclabelAndRunsUnderSeclabel()
    {
        _xl.Environment["XENSHARP_FLASK"] = "enforcing";
        string policy = CompilePolicy();
        Xl("list");
        Dom0("flask-loadpolicy", policy);
        string trigger = Repository.PathOf("tests", "guests", "trigger.cfg");
        string kernel = $"kernel=\"{Repository.PathOf("tests", "guests", "build", "trigger.elf")}\"";

        // Debian's libxl: XEN_DOMCTL_createdomain with the init label's SSID, then FLASK_RELABEL_DOMAIN to seclabel,
        // which the policy allows from domU_t to locked_t only.
        Dom0("xl", "create", "-p", trigger, kernel, "name=\"relabelled\"",
            "init_seclabel=\"system_u:system_r:domU_t\"", "seclabel=\"system_u:system_r:locked_t\"");
        string domid = Xl("domid", "relabelled").Stdout.Trim();
        Assert.Matches($@"(?m)^relabelled\s+{domid}\s.*\ssystem_u:system_r:locked_t$", Dom0("xl", "list", "-Z").Stdout);
        Assert.Contains("Permission denied", _xl.RunDom0("xl", "pause", domid).Stderr);

        var back = _xl.RunDom0("xl", "create", "-p", trigger, kernel, "name=\"back\"",
            "init_seclabel=\"system_u:system_r:locked_t\"", "seclabel=\"system_u:system_r:domU_t\"");
        Assert.True(back.ExitCode != 0, back.ToString());
        Assert.Contains("XSM operation failed!", back.Stderr);
        Assert.Matches(@"avc:  denied  \{ transition \} for source=d0 target=d\d+ scontext=system_u:system_r:locked_t "
            + "tcontext=system_u:system_r:domU_t tclass=domain", Dom0("xl", "dmesg").Stdout);

        // XenSharp's own toolstack applies the two labels the same way.
        Xl("create", "-p", trigger, "name=\"ours\"", "init_seclabel=\"system_u:system_r:domU_t\"",
            "seclabel=\"system_u:system_r:locked_t\"");
        string ours = Xl("domid", "ours").Stdout.Trim();
        Assert.Matches($@"(?m)^ours\s+{ours}\s.*\ssystem_u:system_r:locked_t$", Dom0("xl", "list", "-Z").Stdout);
    }

    [Fact, Trait("Feature", "XSM & FLASK")]
    public void AGuestsOwnHypercallItsLabelForbidsIsRefusedWhenEnforcing()
    {
        _xl.Environment["XENSHARP_FLASK"] = "enforcing";
        string policy = CompilePolicy();
        Xl("list");
        Dom0("flask-loadpolicy", policy);
        string cfg = Repository.PathOf("tests", "guests", "evtchn2l.cfg");
        const string label = "seclabel=\"system_u:system_r:sandbox_t\"";

        // sandbox_t may not set its own HVM parameters: the test guest's HVMOP_set_param of its callback gets EACCES.
        string refused = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", cfg, label).Stdout.Replace("\r", "");
        Assert.Contains("FAIL evtchn2l.callback_vector: shared_info/HVM_PARAM_CALLBACK_IRQ rc -13", refused);
        Assert.Matches(@"avc:  denied  \{ setparam \} for source=d\d+ scontext=system_u:system_r:sandbox_t "
            + "tcontext=system_u:system_r:sandbox_t tclass=hvm", Dom0("xl", "dmesg").Stdout);

        // Permissive: the same guest passes everything, the denial only reported.
        Dom0("flask-setenforce", "0");
        string allowed = _xl.Run(TimeSpan.FromMinutes(3), "create", "-c", cfg, label).Stdout.Replace("\r", "");
        Assert.Matches(@"(?m)^DONE passed=[1-9]\d* failed=0 skipped=0$", allowed);
        Assert.DoesNotContain("FAIL ", allowed);
    }

    [Fact, Trait("Feature", "XSM & FLASK")]
    public void WithoutTheOptionXenToolsFindFlaskDisabled()
    {
        Xl("list");
        Assert.Equal("Flask XSM Disabled", _xl.RunDom0("xl", "getenforce").Stdout.Trim());
        // xsm_op answers ENOSYS, as under Xen's dummy XSM (the tools' messages are theirs, errno and all).
        Assert.Contains("Unable to get enforcing mode", _xl.RunDom0("flask-getenforce").Stderr);
        Assert.Contains("Unable to load new Flask policy", _xl.RunDom0("flask-loadpolicy", CompilePolicy()).Stderr);
        var create = Xl("create", "-p", Repository.PathOf("tests", "guests", "trigger.cfg"), "name=\"plain\"",
            "seclabel=\"system_u:system_r:locked_t\"");
        Assert.Contains("XSM Disabled: seclabel not supported", create.Stderr);
        string domid = Xl("domid", "plain").Stdout.Trim();
        Assert.Matches($@"(?m)^plain\s+{domid}\s.*\s-$", Dom0("xl", "list", "-Z").Stdout);
        Dom0("xl", "pause", domid);
        Assert.DoesNotMatch(new Regex("avc:"), Dom0("xl", "dmesg").Stdout);
    }
}
