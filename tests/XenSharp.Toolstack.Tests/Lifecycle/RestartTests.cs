using XenSharp.Public;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>
/// Restarts by on_crash/on_reboot, in process and on a clock the test moves: each comes only after
/// the pause, and xl destroy ends the guest whatever point of a restart it lands in.
/// </summary>
public sealed class RestartTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-restart").FullName;
    private readonly XenStored _xs = new();
    private readonly HeldHypervisor _hv = new();
    private readonly ManualTime _time = new();
    private readonly Host _host;

    public RestartTests()
    {
        File.WriteAllBytes(Path.Combine(_dir, "k.elf"), TestImages.Elf(new byte[4096], 0x100000));
        _host = new Host(_hv, _xs, new RunPaths(_dir), _time);
    }

    public void Dispose()
    {
        _host.Dispose();
        _hv.Dispose();
        _xs.Dispose();
        Directory.Delete(_dir, true);
    }

    /// <summary>The xl.cfg key and its restart action: on_reboot acts on a reboot, on_crash on a crash.</summary>
    public static TheoryData<string, string> Actions => new()
    {
        { "on_crash", "restart" },
        { "on_crash", "coredump-restart" },
        { "on_crash", "rename-restart" },
        { "on_reboot", "restart" },
    };

    private static ShutdownReason ReasonFor(string key) => key == "on_reboot" ? ShutdownReason.Reboot : ShutdownReason.Crash;

    private CreateResult Create(string name, string extra = "")
    {
        string cfg = $"name=\"{name}\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\n{extra}";
        var r = _host.Handle(new CreateRequest(cfg, Path.Combine(_dir, name + ".cfg"), _dir, [], false));
        Assert.True(r.Ok, r.Error);
        return System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!;
    }

    private IReadOnlyList<DomainInfo> List() =>
        System.Text.Json.JsonSerializer.Deserialize<IReadOnlyList<DomainInfo>>(_host.Handle(new ListRequest([], false)).Result!.Value, ControlJson.Options)!;

    private IReadOnlyList<string> Names() => [.. List().Select(d => d.Name)];

    private static void WaitFor(Func<bool> cond, string what)
    {
        Wait.Until(cond);
        Assert.True(cond(), what);
    }

    /// <summary>Shuts the guest's running domain down and waits until its restart is pausing.</summary>
    private uint ShutDownIntoThePause(string name, string key)
    {
        uint id = List().Single(d => d.Name == name).DomId;
        _host.ShutdownFromOutside(id, ReasonFor(key));
        WaitFor(() => _time.Waiting == 1, "the restart never paused");
        return id;
    }

    /// <summary>Time moves well past any pause; then nothing may have been built (a restart would
    /// have been queued right away, so a short settle shows it).</summary>
    private void AssertNoRestart(string name, int created)
    {
        _time.Advance(Host.RestartPause * 10);
        Thread.Sleep(200);
        Assert.Equal(0, _time.Waiting);
        Assert.Equal(created, _hv.Created);
        Assert.DoesNotContain(name, Names());
        // The name is free again: nothing is reserved for a restart.
        Create(name);
    }

    [Theory]
    [MemberData(nameof(Actions))]
    public void EachRestartComesOnlyAfterThePause(string key, string action)
    {
        Create("g", $"{key}=\"{action}\"\n");
        for (int round = 1; round <= 3; round++)
        {
            ShutDownIntoThePause("g", key);
            Assert.DoesNotContain("g", Names());
            Assert.Equal(round, _hv.Created);
            _time.Advance(Host.RestartPause - TimeSpan.FromMilliseconds(1));
            Assert.Equal(1, _time.Waiting);
            Assert.Equal(round, _hv.Created);
            _time.Advance(TimeSpan.FromMilliseconds(1));
            WaitFor(() => Names().Contains("g"), "the guest did not restart after the pause");
            Assert.Equal(round + 1, _hv.Created);
        }
        if (action == "rename-restart")
            Assert.Equal(3, Names().Count(n => n.StartsWith("g--incoming-", StringComparison.Ordinal)));
    }

    [Theory]
    [MemberData(nameof(Actions))]
    public void DestroyByNameDuringThePauseEndsTheGuest(string key, string action)
    {
        Create("g", $"{key}=\"{action}\"\n");
        ShutDownIntoThePause("g", key);
        var r = _host.Handle(new DestroyRequest("g", false));
        Assert.True(r.Ok, r.Error);
        Assert.Contains("(XEN) g: restart cancelled", _hv.ReadConsole(false));
        AssertNoRestart("g", 1);
    }

    [Theory]
    [MemberData(nameof(Actions))]
    public void DestroyByTheOldDomIdDuringThePauseEndsTheGuest(string key, string action)
    {
        Create("g", $"{key}=\"{action}\"\n");
        uint old = ShutDownIntoThePause("g", key);
        var r = _host.Handle(new DestroyRequest(old.ToString(), false));
        Assert.True(r.Ok, r.Error);
        // The domain that domid named goes too: for rename-restart, the one kept under its new name.
        Assert.Equal(["Domain-0"], Names());
        AssertNoRestart("g", 1);
    }

    public static TheoryData<string, bool> BuildCases => new()
    {
        { "restart", false }, { "restart", true }, { "rename-restart", false }, { "rename-restart", true },
    };

    [Theory]
    [MemberData(nameof(BuildCases))]
    public async Task DestroyWhileTheNextDomainIsBuiltEndsTheGuest(string action, bool byDomId)
    {
        Create("g", $"on_crash=\"{action}\"\n");
        using var building = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        _hv.Creating = _ => { building.Set(); release.Wait(); };
        try
        {
            uint old = ShutDownIntoThePause("g", "on_crash");
            _time.Advance(Host.RestartPause);
            Assert.True(building.Wait(TimeSpan.FromSeconds(30)), "the restart never began building");

            using var sent = new ManualResetEventSlim();
            var destroy = Task.Run(() =>
            {
                sent.Set();
                return _host.Handle(new DestroyRequest(byDomId ? old.ToString() : "g", false));
            });
            sent.Wait();
            Thread.Sleep(50); // lets the destroy reach the build's lock before the build goes on
            release.Set();
            var r = await destroy;
            Assert.True(r.Ok, r.Error);
            Assert.DoesNotContain("g", Names());
        }
        finally
        {
            _hv.Creating = null;
            release.Set();
        }
        AssertNoRestart("g", 2);
    }

    [Theory]
    [InlineData("g")]
    [InlineData("domid")]
    public void DestroyBeforeTheShutdownIsHandledEndsTheGuest(string target)
    {
        var c = Create("g", "on_crash=\"restart\"\n");
        _hv.HoldNotices();
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Crash);
        var r = _host.Handle(new DestroyRequest(target == "domid" ? c.DomId.ToString() : target, false));
        Assert.True(r.Ok, r.Error);
        _hv.ReleaseNotices();
        AssertNoRestart("g", 1);
    }

    [Fact]
    public async Task DestroyDuringTheCoreDumpEndsTheGuest()
    {
        var c = Create("g", "on_crash=\"coredump-restart\"\n");
        string dom = $"/local/domain/{c.DomId}";
        Task<ControlResponse>? destroy = null;
        // At the dump's first page, xl destroy comes; the dump goes on only once the destroy has begun.
        _hv.Reading = id =>
        {
            if (id != c.DomId || destroy is not null) return;
            destroy = Task.Run(() => _host.Handle(new DestroyRequest("g", false)));
            WaitFor(() => !_xs.Exists(dom), "the destroy did not begin");
        };
        _host.ShutdownFromOutside(c.DomId, ShutdownReason.Crash);
        WaitFor(() => destroy is not null, "the core dump did not begin");
        var r = await destroy!;
        Assert.True(r.Ok, r.Error);
        WaitFor(() => _hv.ReadConsole(false).Contains("core dump cut short"), "the core dump was not cut short");
        AssertNoRestart("g", 1);
    }

    [Fact]
    public void TheOldDomIdNamesTheRestartedGuestForAWhile()
    {
        var g = Create("g", "on_crash=\"restart\"\n");
        var h = Create("h", "on_crash=\"restart\"\n");
        ShutDownIntoThePause("g", "on_crash");
        _time.Advance(Host.RestartPause);
        WaitFor(() => Names().Contains("g"), "g did not restart");
        ShutDownIntoThePause("h", "on_crash");
        _time.Advance(Host.RestartPause);
        WaitFor(() => Names().Contains("h"), "h did not restart");

        // A destroy that read g's domid before the restart still ends g.
        var r = _host.Handle(new DestroyRequest(g.DomId.ToString(), false));
        Assert.True(r.Ok, r.Error);
        Assert.DoesNotContain("g", Names());

        // Long after, an old domid names nothing, as in Xen, and h runs on.
        _time.Advance(Host.RetiredDomIdKept);
        r = _host.Handle(new DestroyRequest(h.DomId.ToString(), false));
        Assert.Equal($"{h.DomId} is an invalid domain identifier (rc=-6)", r.Error);
        Assert.Contains("h", Names());
    }

    [Fact]
    public void APendingRestartKeepsItsName()
    {
        Create("g", "on_crash=\"restart\"\n");
        Create("other");
        ShutDownIntoThePause("g", "on_crash");
        string cfg = "name=\"g\"\ntype=\"pvh\"\nkernel=\"k.elf\"\nmemory=16\n";
        var r = _host.Handle(new CreateRequest(cfg, Path.Combine(_dir, "g2.cfg"), _dir, [], false));
        Assert.Equal("domain with name \"g\" already exists.", r.Error);
        Assert.Equal("domain with name \"g\" already exists.", _host.Handle(new RenameRequest("other", "g")).Error);
        _time.Advance(Host.RestartPause);
        WaitFor(() => Names().Contains("g"), "g did not restart");
    }

    [Fact]
    public void StoppingTheDaemonDuringThePauseRestartsNothing()
    {
        Create("g", "on_crash=\"restart\"\n");
        ShutDownIntoThePause("g", "on_crash");
        _host.Dispose();
        WaitFor(() => _time.Waiting == 0, "the pause outlived the daemon");
        _time.Advance(Host.RestartPause * 10);
        Thread.Sleep(200);
        Assert.Equal(1, _hv.Created);
    }
}
