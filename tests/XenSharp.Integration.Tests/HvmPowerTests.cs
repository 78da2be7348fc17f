namespace XenSharp.Integration.Tests;

/// <summary>
/// The power paths of an HVM guest that run through its device model, as on Xen, with the <c>hvmacpi</c> test kernel
/// (<c>type="hvm"</c>, <c>firmware_override</c>, Debian's QEMU started by the toolstack): an ACPI S5 written to QEMU's
/// PIIX4 PM1a_CNT and a reset through QEMU's 0xCF9 reach the hypervisor as QEMU's XEN_DMOP_remote_shutdown, and
/// <c>on_poweroff</c>/<c>on_reboot</c> follow; a reboot restarts the domain with a new QEMU, as libxl does. Without PV
/// drivers, <c>xl shutdown</c> refuses and <c>xl shutdown -F</c> presses the ACPI power button in the PM1a event block
/// the hypervisor emulates (XEN_DOMCTL_SENDTRIGGER_POWER, as libxl sends it).
/// </summary>
public sealed class HvmPowerTests : IDisposable
{
    private readonly XlHost _xl = new();

    public void Dispose() => _xl.Dispose();

    private static string Cfg => Repository.PathOf("tests", "guests", "hvmacpi.cfg");

    /// <summary>Creates the guest paused (its QEMU runs already), notes its domid and QEMU, and unpauses it.</summary>
    private (string DomId, string Qemu) Create(string name, string mode)
    {
        Assert.True(File.Exists(Repository.PathOf("tests", "guests", "build", "hvmacpi.elf")), "hvmacpi.elf is not built (make -C tests/guests)");
        var created = _xl.Run(TimeSpan.FromMinutes(2), "create", "-p", Cfg, $"name=\"{name}\"", $"extra=\"mode={mode}\"");
        Assert.True(created.ExitCode == 0, created.ToString());
        string domid = _xl.Run("domid", name).Stdout.Trim();
        string qemu = _xl.RunDom0("xenstore-read", $"/local/domain/0/libxl/{domid}/dm-pid").Stdout.Trim();
        Assert.True(qemu.Length > 0 && Alive(qemu), $"domain {domid} has no QEMU (dm-pid '{qemu}')");
        Assert.Equal(0, _xl.Run("unpause", name).ExitCode);
        return (domid, qemu);
    }

    /// <summary>The QEMU of each domain the daemon built, from its log ("dN: device model QEMU running, pid P").</summary>
    private Dictionary<string, string> DeviceModelsLogged() =>
        System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(Path.Combine(_xl.RunDir, "xensharpd.log")),
                @"d(\d+): device model QEMU running, pid (\d+)")
            .ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);

    private static bool Alive(string pid) => Directory.Exists($"/proc/{pid}");

    private bool Gone(string name) => !_xl.Run("list").Stdout.Split('\n').Any(l => l.StartsWith(name + " ", StringComparison.Ordinal));

    [Fact]
    [Trait("Feature", "x86/HVM")]
    public void AnAcpiS5ThroughQemusPiix4PowersTheDomainOff()
    {
        var (domid, qemu) = Create("s5", "poweroff");
        Assert.True(XlHost.WaitUntil(() => Gone("s5"), TimeSpan.FromMinutes(3)), "the domain did not power off:\n" + _xl.Run("dmesg").Stdout);
        string log = _xl.Run("dmesg").Stdout;
        Assert.Contains($"(d{domid}) # S5 through PIIX4 PM1a_CNT", log);
        // The runtime's own poweroff (after DONE) is not what ended it.
        Assert.DoesNotContain($"(d{domid}) DONE", log);
        Assert.DoesNotContain($"(d{domid}) FAIL", log);
        Assert.True(XlHost.WaitUntil(() => !Alive(qemu), TimeSpan.FromSeconds(30)), "the domain's QEMU still runs");
    }

    [Fact]
    [Trait("Feature", "x86/HVM")]
    public void AResetThroughQemuRestartsTheDomainWithANewDeviceModel()
    {
        var (first, firstQemu) = Create("reset", "reset");
        // Each incarnation resets itself again, so the guest restarts over and over: wait for a later one to run.
        string? later = null;
        Assert.True(XlHost.WaitUntil(() =>
        {
            var m = System.Text.RegularExpressions.Regex.Match(_xl.Run("dmesg").Stdout, @"\(d(\d+)\) # reset through 0xcf9");
            for (; m.Success; m = m.NextMatch())
                if (int.Parse(m.Groups[1].Value) > int.Parse(first)) { later = m.Groups[1].Value; return true; }
            return false;
        }, TimeSpan.FromMinutes(3)), "the domain was not restarted:\n" + _xl.Run("dmesg").Stdout);
        string log = _xl.Run("dmesg").Stdout;
        Assert.Contains($"(d{first}) # reset through 0xcf9", log);
        Assert.DoesNotContain($"(d{first}) DONE", log);
        // The later incarnation ran with a QEMU of its own (it found QEMU's PIIX4 before resetting), and the first
        // domain's QEMU ended with it.
        var models = DeviceModelsLogged();
        Assert.Equal(firstQemu, models[first]);
        Assert.NotEqual(firstQemu, models[later!]);
        Assert.True(XlHost.WaitUntil(() => !Alive(firstQemu), TimeSpan.FromSeconds(30)), "the first domain's QEMU still runs");
        Assert.Equal(0, _xl.Run("destroy", "reset").ExitCode);
        Assert.True(XlHost.WaitUntil(() => DeviceModelsLogged().Values.All(p => !Alive(p)), TimeSpan.FromSeconds(30)),
            "xl destroy left a QEMU running");
    }

    [Fact]
    [Trait("Feature", "x86/HVM")]
    public void WithoutPvDriversXlShutdownFallsBackToTheAcpiPowerButton()
    {
        var (domid, _) = Create("button", "button");
        Assert.True(XlHost.WaitUntil(() => _xl.Run("dmesg").Stdout.Contains($"(d{domid}) # waiting for the power button"), TimeSpan.FromMinutes(2)),
            "the guest did not get ready:\n" + _xl.Run("dmesg").Stdout);
        var refused = _xl.Run("shutdown", "button");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("PV control interface not available", refused.Stderr);
        var fallback = _xl.Run("shutdown", "-F", "button");
        Assert.True(fallback.ExitCode == 0, fallback.ToString());
        Assert.True(XlHost.WaitUntil(() => Gone("button"), TimeSpan.FromMinutes(3)), "the domain did not power off:\n" + _xl.Run("dmesg").Stdout);
        string log = _xl.Run("dmesg").Stdout;
        Assert.Contains($"(d{domid}) # power button pressed", log);
        Assert.Contains($"(d{domid}) # S5 through PIIX4 PM1a_CNT", log);
        Assert.DoesNotContain($"(d{domid}) DONE", log);
    }
}
