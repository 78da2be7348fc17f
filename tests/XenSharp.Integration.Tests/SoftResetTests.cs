namespace XenSharp.Integration.Tests;

/// <summary>
/// Soft reset (on_soft_reset, SHUTDOWN_soft_reset) through xl: the softreset test kernel shuts itself down for a
/// soft reset and, reset in place by the toolstack, checks from inside that it runs on in the same domain with its
/// memory intact, its event channels closed and the 2-level ABI back, shared_info unmapped, vcpu_info back in
/// shared_info, and xenstore and the console connected again on fresh ports. As a PVH and as an HVM guest, with
/// on_soft_reset given and left to xl's default; with on_soft_reset="destroy" the domain goes instead.
/// </summary>
public sealed class SoftResetTests : IClassFixture<SoftResetTests.Host>
{
    public sealed class Host : IDisposable
    {
        public XlHost Xl { get; } = new();
        public void Dispose() => Xl.Dispose();
    }

    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);
    private readonly XlHost _xl;

    public SoftResetTests(Host host) => _xl = host.Xl;

    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    private static string Guest => Repository.PathOf("tests", "guests", "build", "softreset.elf");

    private string DomId(string name) =>
        _xl.Run("domid", name) is { ExitCode: 0 } r ? r.Stdout.Trim() : "";

    private void RunsToTheEnd(string name, params string[] extra)
    {
        Assert.True(File.Exists(Guest), "softreset.elf is not built (make -C tests/guests)");
        // Kept once powered off, so that its domid can be compared.
        var r = _xl.Run(["create", Repository.PathOf("tests", "guests", "softreset.cfg"), $"name=\"{name}\"",
            "on_poweroff=\"preserve\"", .. extra]);
        Assert.True(r.ExitCode == 0, r.ToString());
        string before = "";
        Assert.True(XlHost.WaitUntil(() => (before = DomId(name)) != "", TimeSpan.FromSeconds(30)), "the domain never appeared");
        try
        {
            Assert.True(XlHost.WaitUntil(() => ConsoleLog(name).Contains("DONE"), Limit), "the guest did not finish\n" + ConsoleLog(name));
            string log = ConsoleLog(name);
            Assert.Contains("# soft reset", log);
            Assert.Contains("# started again: rc=0", log);
            foreach (var check in new[] { "marker", "memory", "same_domain", "ipi_closed", "unbound_closed",
                         "store_reconnected", "console_reconnected", "shared_info_gfn_is_ram", "shared_info_moved",
                         "ipi_2l_delivered", "register_vcpu_info_again", "fifo_init_again" })
                Assert.Contains($"PASS softreset.{check}", log);
            Assert.Contains("failed=0", log);
            // The same domain all along: reset in place, not rebuilt.
            Assert.Equal(before, DomId(name));
        }
        finally
        {
            _xl.Run("destroy", name);
        }
    }

    [Fact, Trait("Feature", "Soft-reset for PV guests"), Trait("Feature", "x86/PVH")]
    public void PvhGuestRunsOnInPlaceWithItsMemory() => RunsToTheEnd("sr-pvh", "on_soft_reset=\"soft-reset\"");

    [Fact, Trait("Feature", "Soft-reset for PV guests"), Trait("Feature", "x86/HVM")]
    public void HvmGuestRunsOnInPlaceWithItsMemory() =>
        RunsToTheEnd("sr-hvm", "type=\"hvm\"", $"firmware_override=\"{Guest}\"");

    /// <summary>xl's default for on_soft_reset is soft-reset.</summary>
    [Fact, Trait("Feature", "Soft-reset for PV guests")]
    public void SoftResetIsTheDefault() => RunsToTheEnd("sr-default");

    private const string DebianXl = "/usr/lib/xen-4.17/bin/xl";

    /// <summary>Debian's xl (libxl's soft reset: QEMU's state saved, XEN_DOMCTL_soft_reset, the domain made and
    /// connected again, a new QEMU restoring the state) resets the HVM guest, whose console the daemon binds again
    /// as xenconsoled does. libxl soft-resets only HVM domains.</summary>
    [Fact, Trait("Feature", "Soft-reset for PV guests"), Trait("Feature", "Dom0 stable libraries"), Trait("Feature", "x86/HVM")]
    public void DebianXlSoftResetsAnHvmGuest()
    {
        Assert.True(File.Exists(DebianXl), $"{DebianXl} is missing (xen-utils-4.17; see scripts/install-deps.sh)");
        Assert.True(File.Exists(Guest), "softreset.elf is not built (make -C tests/guests)");
        string cfg = Path.Combine(_xl.RunDir, "sr-deb.cfg");
        File.WriteAllText(cfg, $"""
            name = "sr-deb"
            type = "hvm"
            firmware_override = "{Guest}"
            memory = 64
            vcpus = 1
            vga = "none"
            on_poweroff = "preserve"
            on_crash = "preserve"
            """);
        try
        {
            var r = _xl.RunDom0(TimeSpan.FromMinutes(3), "xl", "create", cfg);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("sr-deb").Contains("DONE"), Limit), "the guest did not finish\n" + ConsoleLog("sr-deb"));
            string log = ConsoleLog("sr-deb");
            Assert.Contains("# started again: rc=0", log);
            foreach (var check in new[] { "marker", "memory", "same_domain", "ipi_closed", "store_reconnected",
                         "console_reconnected", "shared_info_gfn_is_ram", "ipi_2l_delivered", "fifo_init_again" })
                Assert.Contains($"PASS softreset.{check}", log);
            Assert.Contains("failed=0", log);
        }
        finally
        {
            _xl.RunDom0(TimeSpan.FromMinutes(2), "xl", "destroy", "sr-deb");
        }
    }

    [Fact, Trait("Feature", "Soft-reset for PV guests")]
    public void DestroyActionEndsTheDomain()
    {
        Assert.True(File.Exists(Guest), "softreset.elf is not built (make -C tests/guests)");
        var r = _xl.Run("create", Repository.PathOf("tests", "guests", "softreset.cfg"), "name=\"sr-destroy\"", "on_soft_reset=\"destroy\"");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(XlHost.WaitUntil(() => ConsoleLog("sr-destroy").Contains("# soft reset"), Limit), "the guest never asked\n" + ConsoleLog("sr-destroy"));
        Assert.True(XlHost.WaitUntil(() => DomId("sr-destroy") == "", Limit), "the domain stayed");
        Assert.DoesNotContain("# started again", ConsoleLog("sr-destroy"));
    }
}
