using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>Node permissions as Xen's xenstored applies them to guests on their rings.</summary>
[Trait("Feature", "Toolstack")]
public class PermissionTests
{
    [Fact]
    public void GuestSeesOnlyWhatPermissionsAllow()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/secret", "x");                  // inherits n0 from the root
        GuestClient g = d.Guest(1);
        Assert.Equal("ERR:EACCES", g.Call(XsType.Read, "/secret"));
        Assert.Equal("ERR:EACCES", g.Write("/secret", "y"));
        Assert.Equal("ERR:EACCES", g.Call(XsType.Read, "/secret/below"));   // cannot even learn it is missing
        Assert.Equal("ERR:EACCES", g.Write("/elsewhere/new", "1"));        // no write access to the parent

        d.Daemon.SetPerms("/secret", new XsPermission(0, XsPerm.None), new XsPermission(1, XsPerm.Read));
        Assert.Equal("x", g.Call(XsType.Read, "/secret"));
        Assert.Equal("ERR:EACCES", g.Write("/secret", "y"));
        Assert.Equal("ERR:ENOENT", g.Call(XsType.Read, "/secret/below"));

        // The default (first entry) applies to domains without an entry of their own.
        d.Daemon.SetPerms("/secret", new XsPermission(0, XsPerm.Read));
        Assert.Equal("x", g.Call(XsType.Read, "/secret"));
        d.Daemon.SetPerms("/secret", new XsPermission(0, XsPerm.Both), new XsPermission(1, XsPerm.None));
        Assert.Equal("ERR:EACCES", g.Call(XsType.Read, "/secret"));
        Assert.Equal("x", d.Daemon.Read("/secret"));
    }

    [Fact]
    public void OwnerHasFullAccessAndNewNodesBelongToTheirCreator()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/1");
        d.Daemon.SetPerms("/local/domain/1", new XsPermission(1, XsPerm.None));
        GuestClient g = d.Guest(1);

        // Relative paths are under the domain's home; parents are created implicitly.
        Assert.Equal("OK\0", g.Write("data/a/b", "v"));
        Assert.Equal("v", d.Daemon.Read("/local/domain/1/data/a/b"));
        Assert.Equal(new XsPermission(1, XsPerm.None), d.Daemon.GetPerms("/local/domain/1/data/a")![0]);
        Assert.Equal("n1\0", g.Call(XsType.GetPerms, "data/a/b"));

        // The owner may change access but not give the node away.
        Assert.Equal("OK\0", g.Call(XsType.SetPerms, "data", "n1", "r2"));
        Assert.Equal("ERR:EPERM", g.Call(XsType.SetPerms, "data", "n2"));
        Assert.Equal([new XsPermission(1, XsPerm.None), new XsPermission(2, XsPerm.Read)], d.Daemon.GetPerms("/local/domain/1/data")!);

        GuestClient other = d.Guest(2);
        Assert.Equal("", other.Call(XsType.Read, "/local/domain/1/data"));
        Assert.Equal("ERR:EACCES", other.Write("/local/domain/1/data", "z"));
        Assert.Equal("ERR:EACCES", other.Call(XsType.SetPerms, "/local/domain/1/data", "b2"));
        Assert.Equal("ERR:EACCES", other.Call(XsType.Read, "/local/domain/1/data/a"));
    }

    [Fact]
    public void Dom0CreatedNodesStayDom0sAndGuestChildrenInheritEntries()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/4/device");
        d.Daemon.SetPerms("/local/domain/4/device", new XsPermission(0, XsPerm.None), new XsPermission(4, XsPerm.Both));
        GuestClient g = d.Guest(4);
        Assert.Equal("OK\0", g.Write("device/vbd/768/state", "1"));
        // Created by the guest: the guest owns it, the other entries are inherited.
        Assert.Equal("n4\0b4\0", g.Call(XsType.GetPerms, "device/vbd/768/state"));
        d.Daemon.Write("/local/domain/4/device/vif", "");
        Assert.Equal([new XsPermission(0, XsPerm.None), new XsPermission(4, XsPerm.Both)], d.Daemon.GetPerms("/local/domain/4/device/vif")!);
    }

    [Fact]
    public void RemovingNeedsWriteAccessAndTakesTheSubtree()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/ro/a/b", "1");
        d.Daemon.SetPerms("/ro", new XsPermission(0, XsPerm.Read));
        GuestClient g = d.Guest(1);
        Assert.Equal("ERR:EACCES", g.Call(XsType.Rm, "/ro"));
        Assert.Equal("1", d.Daemon.Read("/ro/a/b"));
        d.Daemon.SetPerms("/ro", new XsPermission(0, XsPerm.Both));
        Assert.Equal("OK\0", g.Call(XsType.Rm, "/ro"));
        Assert.False(d.Daemon.Exists("/ro/a/b"));
        Assert.False(d.Daemon.Exists("/ro/a"));
        Assert.DoesNotContain("ro", d.Daemon.Directory("/")!);
    }

    [Fact]
    [Trait("Feature", "Device Model Stub Domains")]
    public void TargetRelationGivesAStubDomainItsGuestsRights()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/local/domain/7/device-model/state", "running");
        d.Daemon.SetPerms("/local/domain/7", new XsPermission(7, XsPerm.None));
        d.Daemon.SetPerms("/local/domain/7/device-model", new XsPermission(7, XsPerm.None));
        d.Daemon.SetPerms("/local/domain/7/device-model/state", new XsPermission(7, XsPerm.None));
        d.Guest(7);
        GuestClient stub = d.Guest(8);
        Assert.Equal("ERR:EACCES", stub.Call(XsType.Read, "/local/domain/7/device-model/state"));

        using var c = d.Connect();
        Assert.Equal("OK\0", c.Call(XsType.SetTarget, "8", "7"));
        Assert.Equal("running", stub.Call(XsType.Read, "/local/domain/7/device-model/state"));
        Assert.Equal("OK\0", stub.Write("/local/domain/7/device-model/state", "paused"));
        Assert.Equal("paused", d.Daemon.Read("/local/domain/7/device-model/state"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.SetTarget, "9", "7"));
        Assert.Equal("ERR:EACCES", stub.Call(XsType.SetTarget, "8", "7"));
    }

    [Fact]
    public void GuestsCannotUsePrivilegedOperations()
    {
        using var d = new TempDaemon();
        GuestClient g = d.Guest(3);
        Assert.Equal("ERR:EACCES", g.Call(XsType.Introduce, "5", "1234", "3"));
        Assert.Equal("ERR:EACCES", g.Call(XsType.Release, "3"));
        Assert.Equal("ERR:EACCES", g.Call(XsType.Control, "check"));
        Assert.Equal("ERR:EACCES", g.Call(XsType.IsDomainIntroduced, "3"));
        Assert.Equal("/local/domain/3\0", g.Call(XsType.GetDomainPath, "3"));
        Assert.True(d.Daemon.IsIntroduced(3));
    }
}
