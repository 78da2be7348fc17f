using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>The daemon's domain lifecycle, in process: create, xenstore, shutdown actions, destroy.</summary>
public sealed class HostTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-host").FullName;
    private readonly XenStored _xs = new();
    private readonly HeldHypervisor _hv = new();
    private readonly Host _host;

    public HostTests()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(new byte[4096], 0x100000));
        _host = new Host(_hv, _xs, new RunPaths(_dir));
    }

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        Directory.Delete(_dir, true);
    }

    private CreateResult Create(string name, string extra = "", bool paused = false)
    {
        string cfg = $"name=\"{name}\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\nvcpus=2\n{extra}";
        var r = _host.Handle(new CreateRequest(cfg, Path.Combine(_dir, name + ".cfg"), _dir, [], paused));
        Assert.True(r.Ok, r.Error);
        return System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!;
    }

    private IReadOnlyList<DomainInfo> List() =>
        System.Text.Json.JsonSerializer.Deserialize<IReadOnlyList<DomainInfo>>(_host.Handle(new ListRequest([], false)).Result!.Value, ControlJson.Options)!;

    private static void WaitFor(Func<bool> cond)
    {
        Wait.Until(cond);
        Assert.True(cond());
    }

    [Fact]
    public void ADomainTheHypervisorNoLongerHasIsNotListed()
    {
        var web = Create("web");
        Create("db");
        // Destroyed by Debian's xl: gone from the hypervisor before the destruction's notice reaches the toolstack.
        _hv.Vanish(web.DomId);
        Assert.Equal(["Domain-0", "db"], List().Select(d => d.Name));
    }

    [Fact]
    public void CreateWritesLibxlsXenstoreNodesAndDestroyRemovesThem()
    {
        var c = Create("web");
        string dom = $"/local/domain/{c.DomId}";
        Assert.Equal("web", _xs.Read($"{dom}/name"));
        Assert.Equal(c.DomId.ToString(), _xs.Read($"{dom}/domid"));
        Assert.Equal("16384", _xs.Read($"{dom}/memory/target"));
        Assert.Equal("16384", _xs.Read($"{dom}/memory/static-max"));
        Assert.Equal("online", _xs.Read($"{dom}/cpu/1/availability"));
        Assert.Equal("1", _xs.Read($"{dom}/control/platform-feature-xs_reset_watches"));
        Assert.Equal(((ulong)0xFEFFC).ToString(), _xs.Read($"{dom}/store/ring-ref"));
        Assert.Equal(((ulong)0xFEFFF).ToString(), _xs.Read($"{dom}/console/ring-ref"));
        string vm = _xs.Read($"{dom}/vm")!;
        Assert.Equal("web", _xs.Read($"{vm}/name"));
        Assert.Equal([new XsPermission(0, XsPerm.None), new XsPermission(c.DomId, XsPerm.Read)], _xs.GetPerms(dom));
        Assert.Equal([new XsPermission(c.DomId, XsPerm.None)], _xs.GetPerms($"{dom}/control/shutdown"));
        Assert.True(_xs.IsIntroduced(c.DomId));
        Assert.Contains(List(), d => d.Name == "web" && d.VcpuOnline == 2 && !d.Paused);

        Assert.True(_host.Handle(new DestroyRequest("web", false)).Ok);
        Assert.False(_xs.Exists(dom));
        Assert.False(_xs.Exists(vm));
        Assert.False(_xs.IsIntroduced(c.DomId));
        Assert.Equal(["Domain-0"], List().Select(d => d.Name));
    }

    [Fact]
    public void HvmWithAPhys32FirmwareOverrideIsBuiltLikePvh()
    {
        string cfg = "name=\"h\"\ntype=\"hvm\"\nfirmware_override=\"k.elf\"\nmemory=16\n";
        var r = _host.Handle(new CreateRequest(cfg, Path.Combine(_dir, "h.cfg"), _dir, [], false));
        Assert.True(r.Ok, r.Error);
        var h = List().Single(d => d.Name == "h");
        Assert.Equal("hvm", h.Type);
        Assert.Equal("hvm", _xs.Read($"/libxl/{h.DomId}/type"));
    }

    [Fact]
    public void PausedCreateAndUnpause()
    {
        Create("p", paused: true);
        Assert.True(List().Single(d => d.Name == "p").Paused);
        Assert.True(_host.Handle(new UnpauseRequest("p")).Ok);
        Assert.False(List().Single(d => d.Name == "p").Paused);
    }

    [Fact]
    public void NamesAreUniqueAndDomain0IsNotATarget()
    {
        Create("a");
        var again = _host.Handle(new CreateRequest("name=\"a\"\ntype=\"pvh\"\nkernel=\"k.elf\"\n", "a.cfg", _dir, [], false));
        Assert.False(again.Ok);
        Assert.Equal("domain with name \"a\" already exists.", again.Error);
        Assert.Equal("Domain 0 cannot be the target of this operation", _host.Handle(new DestroyRequest("0", false)).Error);
        Assert.Equal("zz is an invalid domain identifier (rc=-6)", _host.Handle(new PauseRequest("zz")).Error);
    }

    [Fact]
    public void MissingKernelAndBadConfigLeaveNothingBehind()
    {
        var r = _host.Handle(new CreateRequest("name=\"m\"\ntype=\"pvh\"\nkernel=\"nope.elf\"\n", "m.cfg", _dir, [], false));
        Assert.False(r.Ok);
        Assert.Equal($"kernel: {Path.Combine(_dir, "nope.elf")}: No such file or directory", r.Error);
        File.WriteAllText(Path.Combine(_dir, "junk.elf"), "not a kernel");
        r = _host.Handle(new CreateRequest("name=\"j\"\ntype=\"pvh\"\nkernel=\"junk.elf\"\n", "j.cfg", _dir, [], false));
        Assert.False(r.Ok);
        Assert.Contains("not an ELF kernel", r.Error);
        Assert.Equal(["Domain-0"], List().Select(d => d.Name));
        Assert.Null(_xs.Directory("/local/domain")!.FirstOrDefault(x => x != "0"));
    }

    [Fact]
    public void RenameUpdatesXenstore()
    {
        var c = Create("old");
        Assert.True(_host.Handle(new RenameRequest("old", "new")).Ok);
        Assert.Equal("new", _xs.Read($"/local/domain/{c.DomId}/name"));
        Assert.Contains(List(), d => d.Name == "new");
    }

    [Fact]
    public void ShutdownWithoutPvControlNeedsFallback()
    {
        var c = Create("s");
        var r = _host.Handle(new ShutdownRequest("s", ShutdownKind.Poweroff, false));
        Assert.False(r.Ok);
        Assert.StartsWith("PV control interface not available", r.Error);
        // A guest that wrote feature-poweroff gets control/shutdown.
        _xs.Write($"/local/domain/{c.DomId}/control/feature-poweroff", "1");
        Assert.True(_host.Handle(new ShutdownRequest("s", ShutdownKind.Poweroff, false)).Ok);
        Assert.Equal("poweroff", _xs.Read($"/local/domain/{c.DomId}/control/shutdown"));
    }

    [Fact]
    public void ShutdownOfAGuestWithItsEventCallbackNeedsNoFeatureKey()
    {
        // A restored or migrated guest does not write control/feature-poweroff again: as libxl, its event callback says
        // it has PV drivers.
        var c = Create("cb");
        _hv.Domain(c.DomId).SetHvmParam(XenSharp.Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | 0xF3);
        Assert.True(_host.Handle(new ShutdownRequest("cb", ShutdownKind.Reboot, false)).Ok);
        Assert.Equal("reboot", _xs.Read($"/local/domain/{c.DomId}/control/shutdown"));
    }

    [Fact]
    public void OnPoweroffDestroyRemovesTheDomain()
    {
        var c = Create("off");
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Poweroff);
        // The domain leaves the list first, then its xenstore nodes go.
        WaitFor(() => List().All(d => d.Name != "off") && !_xs.Exists($"/local/domain/{c.DomId}"));
    }

    [Fact]
    public void OnRebootRestartBuildsANewDomainWithTheSameNameAndUuid()
    {
        var c = Create("rb");
        var before = List().Single(d => d.Name == "rb");
        Assert.True(_host.Handle(new ShutdownRequest("rb", ShutdownKind.Reboot, AcpiFallback: true)).Ok);
        WaitFor(() => List().Any(d => d.Name == "rb" && d.DomId != c.DomId) && !_xs.Exists($"/local/domain/{c.DomId}"));
        var after = List().Single(d => d.Name == "rb");
        Assert.Equal(before.Uuid, after.Uuid);
        Assert.False(_xs.Exists($"/local/domain/{c.DomId}"));
        Assert.Equal("rb", _xs.Read($"/local/domain/{after.DomId}/name"));
    }

    [Fact]
    public void OnCrashPreserveKeepsTheDomainShutDown()
    {
        var c = Create("keep", "on_crash=\"preserve\"\n");
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Crash);
        WaitFor(() => List().Single(d => d.Name == "keep").Shutdown);
        var d = List().Single(d => d.Name == "keep");
        Assert.Equal(3, d.ShutdownReason);
        Assert.True(_host.Handle(new DestroyRequest("keep", false)).Ok);
    }

    [Fact]
    public void OnCrashCoredumpDestroyWritesTheDumpThenDestroys()
    {
        var c = Create("dump", "on_crash=\"coredump-destroy\"\n");
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Crash);
        WaitFor(() => List().All(d => d.Name != "dump") && !_xs.Exists($"/local/domain/{c.DomId}"));
        var core = new FileInfo(Path.Combine(_dir, "dump", "dump.core"));
        Assert.True(core.Exists);
        // Xen's dump-core format: a 64-bit ELF core holding at least the guest's 16 MiB of RAM.
        var head = new byte[18];
        using (var f = core.OpenRead()) f.ReadExactly(head);
        Assert.Equal([0x7f, (byte)'E', (byte)'L', (byte)'F', 2], head[..5]);
        Assert.Equal(4, BitConverter.ToUInt16(head, 16)); // ET_CORE
        Assert.True(core.Length > 16L << 20, $"{core.Length} bytes");
    }

    [Fact]
    public async Task DestroyDuringACoreDumpCutsItShort()
    {
        var c = Create("dump", "on_crash=\"coredump-destroy\"\n");
        string dom = $"/local/domain/{c.DomId}";
        Task<ControlResponse>? destroy = null;
        // At the dump's first page, xl destroy comes; the dump goes on only once the destroy has begun.
        _hv.Reading = id =>
        {
            if (id != c.DomId || destroy is not null) return;
            destroy = Task.Run(() => _host.Handle(new DestroyRequest("dump", false)));
            WaitFor(() => !_xs.Exists(dom));
        };
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Crash);
        WaitFor(() => destroy is not null);
        var r = await destroy!;
        Assert.True(r.Ok, r.Error);
        WaitFor(() => _hv.ReadConsole(false).Contains($"d{c.DomId}: core dump cut short: the domain was destroyed"));
        Assert.DoesNotContain($"d{c.DomId}: core dumped", _hv.ReadConsole(false));
        Assert.True(new FileInfo(Path.Combine(_dir, "dump", "dump.core")).Length < 16L << 20);
        Assert.DoesNotContain("dump", List().Select(d => d.Name));
    }

    [Fact]
    public void MemoryAndVcpuSettingsReachXenstore()
    {
        var c = Create("m");
        Assert.True(_host.Handle(new MemSetRequest("m", 8192)).Ok);
        Assert.Equal("8192", _xs.Read($"/local/domain/{c.DomId}/memory/target"));
        Assert.False(_host.Handle(new MemSetRequest("m", 1 << 30)).Ok);
        Assert.True(_host.Handle(new VcpuSetRequest("m", 1, false)).Ok);
        Assert.Equal("offline", _xs.Read($"/local/domain/{c.DomId}/cpu/1/availability"));
        Assert.True(_host.Handle(new MemMaxRequest("m", 32768)).Ok);
        Assert.Equal("32768", _xs.Read($"/local/domain/{c.DomId}/memory/static-max"));
        Assert.True(_host.Handle(new SysrqRequest("m", 's')).Ok);
        Assert.Equal("s", _xs.Read($"/local/domain/{c.DomId}/control/sysrq"));
    }

    [Fact]
    public void DisposeDestroysEveryDomain()
    {
        Create("x1");
        Create("x2");
        _host.Dispose();
        Assert.Null(_xs.Directory("/local/domain")!.FirstOrDefault(x => x != "0"));
    }
}
