using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

[Trait("Feature", "Toolstack")]
public class DomainTests
{
    [Fact]
    public void IntroduceOverTheWireMapsTheRingThroughTheProvider()
    {
        using var d = new TempDaemon();
        TestRing ring = d.NewRing();
        (uint, ulong, uint)? asked = null;
        d.Daemon.RingProvider = (dom, mfn, port) => { asked = (dom, mfn, port); return ring; };
        using var c = d.Connect();
        Assert.Equal("F\0", c.Call(XsType.IsDomainIntroduced, "12"));
        Assert.Equal("T\0", c.Call(XsType.IsDomainIntroduced, "0"));
        Assert.Equal("OK\0", c.Call(XsType.Introduce, "12", "4660", "7"));
        Assert.Equal((12u, 4660ul, 7u), asked);
        Assert.Equal("T\0", c.Call(XsType.IsDomainIntroduced, "12"));
        Assert.Equal("OK\0", c.Call(XsType.Introduce, "12", "4660", "7"));   // again, same ring: fine
        Assert.Equal("ERR:EEXIST", c.Call(XsType.Introduce, "12", "999", "7"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Introduce, "12", "x", "7"));
        Assert.Equal("/local/domain/12\0", c.Call(XsType.GetDomainPath, "12"));
        Assert.Equal("OK\0", c.Call(XsType.Resume, "12"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Resume, "13"));

        // The daemon advertises its features in the page and answers the guest there.
        Assert.Equal(2u, ring.Field(2064));
        d.Daemon.Write("/local/domain/12/name", "g");
        d.Daemon.SetPerms("/local/domain/12/name", new XsPermission(12, XsPerm.None));
        var dom = GetDomain(d, 12, ring);
        Assert.Equal("g", dom.Call(XsType.Read, "name"));
    }

    // The host routes the guest's event channel kicks to the handle of a domain introduced over the wire.
    private static GuestClient GetDomain(TempDaemon d, uint domId, TestRing ring) =>
        new(ring, d.Daemon.GetDomain(domId)!);

    [Fact]
    public void ReleaseRemovesTheDomainsNodesAndConnection()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/6");
        d.Daemon.SetPerms("/local/domain/6", new XsPermission(6, XsPerm.None));
        d.Daemon.Write("/vm/6/uuid", "u");
        GuestClient g = d.Guest(6);
        Assert.Equal("OK\0", g.Write("data/x", "1"));
        Assert.Equal("OK\0", g.Call(XsType.Watch, "data", "t"));

        using var c = d.Connect();
        Assert.Equal("OK\0", c.Call(XsType.Release, "6"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Release, "6"));
        Assert.Equal("F\0", c.Call(XsType.IsDomainIntroduced, "6"));
        Assert.False(d.Daemon.Exists("/local/domain/6"));
        Assert.False(d.Daemon.Exists("/local/domain/6/data/x"));
        Assert.Equal("u", d.Daemon.Read("/vm/6/uuid"));       // dom0's nodes stay
    }

    [Fact]
    public void RingThatCannotBeMappedIsAnErrorForTheClientOnly()
    {
        using var d = new TempDaemon();
        d.Daemon.RingProvider = (dom, mfn, port) => throw new InvalidOperationException("no such frame");
        using var c = d.Connect();
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Introduce, "30", "99999999", "1"));
        Assert.Equal("F\0", c.Call(XsType.IsDomainIntroduced, "30"));
        d.Daemon.RingProvider = (dom, mfn, port) => null;   // no ring: the domain is still known
        Assert.Equal("OK\0", c.Call(XsType.Introduce, "30", "5", "1"));
        Assert.Equal("T\0", c.Call(XsType.IsDomainIntroduced, "30"));
    }

    [Fact]
    public void ControlCommands()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        Assert.Equal("OK\0", c.Call(XsType.Control, "check"));
        Assert.Contains("Nodes per Domain: 1000", c.Call(XsType.Control, "quota"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Control, "no-such-command"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Control));
    }

    [Fact]
    public void ToolstackBuildsADomainHomeWithoutASocket()
    {
        using var store = new XenStored();
        using (XenStoreTransaction t = store.BeginTransaction())
        {
            t.Mkdir("/local/domain/1");
            t.SetPerms("/local/domain/1", new XsPermission(0, XsPerm.None), new XsPermission(1, XsPerm.Read));
            t.Write("/local/domain/1/name", "guest");
            t.Write("/local/domain/1/memory/target", "524288");
            Assert.True(t.Commit());
        }
        Assert.Equal(["name", "memory"], store.Directory("/local/domain/1")!);
        Assert.Equal("524288", store.Read("/local/domain/1/memory/target"));
        Assert.Null(store.Read("/local/domain/1/none"));
        Assert.Null(store.Directory("/nothing"));
        Assert.Equal(Encoding.UTF8.GetBytes("guest"), store.ReadBytes("/local/domain/1/name"));
        var ex = Assert.Throws<XenStoreException>(() => store.Write("/bad//path", "x"));
        Assert.Equal(XsError.EINVAL, ex.Error);
        Assert.Equal("/local/domain/4", XenStored.GetDomainPath(4));
    }
}
