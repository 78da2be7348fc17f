using XenSharp.Store;

namespace XenSharp.Store.Tests;

[Trait("Feature", "Toolstack")]
public class WatchTests
{
    [Fact]
    public void WatchFiresForItsSubtreeOnly()
    {
        using var d = new TempDaemon();
        using var w = d.Connect();
        using var c = d.Connect();
        Assert.Equal("OK\0", w.Call(XsType.Watch, "/vm/1", "t1"));
        Assert.Equal(("/vm/1", "t1"), w.NextEvent());   // the initial event
        c.Write("/vm/1/name", "a");
        c.Write("/vm/10/name", "b");                     // a sibling with a common prefix: no event
        c.Write("/vm/1", "");
        Assert.Equal(("/vm/1/name", "t1"), w.NextEvent());
        Assert.Equal(("/vm/1", "t1"), w.NextEvent());
        w.Call(XsType.Read, "/");
        Assert.Empty(w.Events);
    }

    [Fact]
    public void RemovingAnAncestorFiresWatchesInsideIt()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/a/b/c", "1");
        using var w = d.Connect();
        Assert.Equal("OK\0", w.Call(XsType.Watch, "/a/b/c", "deep"));
        Assert.Equal(("/a/b/c", "deep"), w.NextEvent());
        d.Daemon.Rm("/a");
        Assert.Equal(("/a/b/c", "deep"), w.NextEvent());
    }

    [Fact]
    public void DuplicateAndUnknownWatchesAreErrors()
    {
        using var d = new TempDaemon();
        using var w = d.Connect();
        Assert.Equal("OK\0", w.Call(XsType.Watch, "/x", "t"));
        Assert.Equal("ERR:EEXIST", w.Call(XsType.Watch, "/x", "t"));
        Assert.Equal("OK\0", w.Call(XsType.Watch, "/x", "t2"));     // same path, other token
        Assert.Equal("OK\0", w.Call(XsType.Unwatch, "/x", "t"));
        Assert.Equal("ERR:ENOENT", w.Call(XsType.Unwatch, "/x", "t"));
        Assert.Equal("ERR:EINVAL", w.Call(XsType.Watch, "/x"));
        while (w.Events.Count > 0) w.Events.Dequeue();
        d.Daemon.Write("/x", "1");
        Assert.Equal(("/x", "t2"), w.NextEvent());
        w.Call(XsType.Read, "/");
        Assert.Empty(w.Events);

        Assert.Equal("OK\0", w.Call(XsType.ResetWatches));
        d.Daemon.Write("/x", "2");
        w.Call(XsType.Read, "/");
        Assert.Empty(w.Events);
    }

    [Fact]
    public void SpecialWatchesReportDomainIntroductionAndRelease()
    {
        using var d = new TempDaemon();
        using var w = d.Connect();
        Assert.Equal("OK\0", w.Call(XsType.Watch, "@introduceDomain", "in"));
        Assert.Equal("OK\0", w.Call(XsType.Watch, "@releaseDomain", "out"));
        Assert.Equal(("@introduceDomain", "in"), w.NextEvent());
        Assert.Equal(("@releaseDomain", "out"), w.NextEvent());
        d.Guest(5);
        Assert.Equal(("@introduceDomain", "in"), w.NextEvent());
        d.Daemon.Write("/local/domain/5/name", "x");  // no event: not a special watch's business
        Assert.True(d.Daemon.Release(5));
        Assert.Equal(("@releaseDomain", "out"), w.NextEvent());
        w.Call(XsType.Read, "/");
        Assert.Empty(w.Events);
    }

    [Fact]
    public void GuestRelativeWatchGetsRelativePathsAndOnlyReadableNodes()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/3");
        d.Daemon.SetPerms("/local/domain/3", new XsPermission(0, XsPerm.None), new XsPermission(3, XsPerm.Read));
        GuestClient g = d.Guest(3);
        Assert.Equal("OK\0", g.Call(XsType.Watch, "control", "ctl"));
        Assert.Equal(("control", "ctl"), g.NextEvent());
        d.Daemon.Write("/local/domain/3/control/shutdown", "poweroff");
        Assert.Equal(("control/shutdown", "ctl"), g.NextEvent());

        // A node the guest may not read stays silent.
        d.Daemon.Write("/local/domain/3/control/hidden", "x");
        d.Daemon.SetPerms("/local/domain/3/control/hidden", new XsPermission(0, XsPerm.None));
        g.Call(XsType.Read, "control/shutdown"); // drain what came before
        while (g.Events.Count > 0) g.Events.Dequeue();
        d.Daemon.Write("/local/domain/3/control/hidden", "y");
        d.Daemon.Write("/local/domain/3/control/shutdown", "reboot");
        Assert.Equal(("control/shutdown", "ctl"), g.NextEvent());

        Assert.Equal("OK\0", g.Call(XsType.Watch, "/local/domain/3/data", "abs"));
        Assert.Equal(("/local/domain/3/data", "abs"), g.NextEvent());
    }

    [Fact]
    public void ToolstackWatchCallbacks()
    {
        using var d = new TempDaemon();
        var seen = new System.Collections.Concurrent.BlockingCollection<string>();
        using (d.Daemon.Watch("/local/domain/1/device", seen.Add))
        {
            Assert.True(seen.TryTake(out string? first, 10_000));
            Assert.Equal("/local/domain/1/device", first);
            using var c = d.Connect();
            c.Write("/local/domain/1/device/vbd/51712/state", "4");
            Assert.True(seen.TryTake(out string? ev, 10_000));
            Assert.Equal("/local/domain/1/device/vbd/51712/state", ev);
        }
        d.Daemon.Write("/local/domain/1/device/x", "1");
        // Callbacks run in order: once a new watch's initial event is in, anything the removed
        // watch wrongly produced would already have been delivered.
        var later = new System.Collections.Concurrent.BlockingCollection<string>();
        using (d.Daemon.Watch("/elsewhere", later.Add))
            Assert.True(later.TryTake(out _, 10_000));
        Assert.Empty(seen);
    }
}
