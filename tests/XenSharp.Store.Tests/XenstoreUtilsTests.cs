using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>Debian's xenstore-utils, unchanged, against the daemon on a temporary socket.</summary>
[Trait("Feature", "Toolstack")]
public class XenstoreUtilsTests
{
    /// <summary>Xen's own xenstored test suite (xen-utils-4.17's test-xenstore): every case passes,
    /// the transaction with a conflict included.</summary>
    [Fact]
    public void XensTestXenstorePasses()
    {
        using var d = new TempDaemon();
        var list = d.Tool("/usr/lib/xen-4.17/bin/test-xenstore", "--list-tests");
        Assert.Equal(0, list.Exit);
        var names = list.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(':')[0].Trim()).ToArray();
        Assert.Contains("ta err", names);
        var run = d.Tool("/usr/lib/xen-4.17/bin/test-xenstore");
        Assert.True(run.Exit == 0, $"test-xenstore exited {run.Exit}:\n{run.Out}{run.Err}");
        var ran = run.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(':')[0].Trim()).ToArray();
        Assert.Equal(names, ran.Where(names.Contains));
        Assert.DoesNotContain("failed", run.Out);
    }

    [Fact]
    public void WriteReadListRemove()
    {
        using var d = new TempDaemon();
        Assert.Equal(0, d.Tool("xenstore-write", "/vm/a/name", "guest1", "/vm/a/mem", "512").Exit);
        var r = d.Tool("xenstore-read", "/vm/a/name");
        Assert.Equal((0, "guest1\n"), (r.Exit, r.Out));
        Assert.Equal("guest1", d.Daemon.Read("/vm/a/name"));

        var list = d.Tool("xenstore-list", "/vm/a");
        Assert.Equal(0, list.Exit);
        Assert.Equal(["name", "mem"], list.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries));

        var ls = d.Tool("xenstore-ls", "/vm");
        Assert.Equal(0, ls.Exit);
        Assert.Contains("name = \"guest1\"", ls.Out);
        Assert.Contains("mem = \"512\"", ls.Out);

        Assert.Equal(0, d.Tool("xenstore-exists", "/vm/a/mem").Exit);
        Assert.Equal(0, d.Tool("xenstore-rm", "/vm/a/mem").Exit);
        Assert.NotEqual(0, d.Tool("xenstore-exists", "/vm/a/mem").Exit);
        Assert.NotEqual(0, d.Tool("xenstore-read", "/vm/a/mem").Exit);
        Assert.Null(d.Daemon.Read("/vm/a/mem"));
        Assert.Equal(["name"], d.Daemon.Directory("/vm/a")!);
    }

    [Fact]
    public void ToolstackWritesAreSeenByTools()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/local/domain/3/name", "web");
        var r = d.Tool("xenstore-read", "/local/domain/3/name");
        Assert.Equal("web\n", r.Out);
        var ls = d.Tool("xenstore-ls", "-f", "/local");
        Assert.Contains("/local/domain/3/name = \"web\"", ls.Out);
    }

    [Fact]
    public void WatchReceivesInitialAndChangeEvents()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/vm/w/state", "1");
        using var watch = d.StartTool("xenstore-watch", "-n", "3", "/vm/w");
        // The first event (the watch path itself) proves the watch is registered.
        string? first = watch.StandardOutput.ReadLine();
        Assert.Equal("/vm/w", first);
        Assert.Equal(0, d.Tool("xenstore-write", "/vm/w/state", "2").Exit);
        Assert.Equal(0, d.Tool("xenstore-rm", "/vm/w/state").Exit);
        Assert.Equal("/vm/w/state", watch.StandardOutput.ReadLine());
        Assert.Equal("/vm/w/state", watch.StandardOutput.ReadLine());
        Assert.True(watch.WaitForExit(10_000));
        Assert.Equal(0, watch.ExitCode);
    }

    [Fact]
    public void ChmodSetsPermissionsSeenByLsAndToolstack()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/local/domain/5/device/vif/0/state", "1");
        Assert.Equal(0, d.Tool("xenstore-chmod", "/local/domain/5/device", "n0", "r5", "b7").Exit);
        Assert.Equal(
            [new XsPermission(0, XsPerm.None), new XsPermission(5, XsPerm.Read), new XsPermission(7, XsPerm.Both)],
            d.Daemon.GetPerms("/local/domain/5/device")!);
        var ls = d.Tool("xenstore-ls", "-p", "/local/domain/5");
        Assert.Equal(0, ls.Exit);
        Assert.Matches(@"device = """"[ .]*\(n0,r5,b7\)", ls.Out);

        // -r applies the modes to the whole subtree.
        Assert.Equal(0, d.Tool("xenstore-chmod", "-r", "/local/domain/5/device", "b5").Exit);
        Assert.Equal([new XsPermission(5, XsPerm.Both)], d.Daemon.GetPerms("/local/domain/5/device/vif/0/state")!);
    }
}
