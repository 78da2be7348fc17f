using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>The shared-ring transport: messages larger than the ring, wrap-around, bad indexes.</summary>
[Trait("Feature", "Toolstack")]
public class RingTests
{
    [Fact]
    public void MessagesLargerThanTheRingPassInPieces()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/1");
        d.Daemon.SetPerms("/local/domain/1", new XsPermission(1, XsPerm.None));
        GuestClient g = d.Guest(1);
        for (int i = 0; i < 20; i++)
        {
            string value = new string((char)('a' + i), 1500 + i * 20);
            Assert.Equal("OK\0", g.Write("big" + i, value));
            Assert.Equal(value, g.Call(XsType.Read, "big" + i));
        }
        d.Daemon.Write("/local/domain/1/huge", new string('h', 4000));
        Assert.Equal(4000, g.Call(XsType.Read, "huge").Length);
    }

    [Fact]
    public void BadRingIndexIsFlaggedAndOtherGuestsCarryOn()
    {
        using var d = new TempDaemon();
        GuestClient bad = d.Guest(1);
        GuestClient good = d.Guest(2);
        TestRing ring = d.RingOf(1);
        ring.Field(2052) = 5000;               // req_prod far beyond req_cons + ring size
        d.Daemon.Signal(1);
        Assert.True(SpinWait.SpinUntil(() => ring.Field(2072) != 0, 60_000));
        Assert.Equal(2u, ring.Field(2072));    // XENSTORE_ERROR_RINGIDX
        Assert.Equal("/local/domain/2\0", good.Call(XsType.GetDomainPath, "2"));
    }

    [Fact]
    public void EventsForAGuestWaitForRoomOnTheRing()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/3");
        d.Daemon.SetPerms("/local/domain/3", new XsPermission(3, XsPerm.None));
        GuestClient g = d.Guest(3);
        Assert.Equal("OK\0", g.Call(XsType.Watch, "/local/domain/3/w", "tok"));
        Assert.Equal(("/local/domain/3/w", "tok"), g.NextEvent());
        // Far more events than rsp[] holds, produced while the guest is not reading.
        for (int i = 0; i < 200; i++) d.Daemon.Write($"/local/domain/3/w/node-with-a-long-name-{i:D3}", "x");
        for (int i = 0; i < 200; i++)
            Assert.Equal(($"/local/domain/3/w/node-with-a-long-name-{i:D3}", "tok"), g.NextEvent());
        Assert.Equal("x", g.Call(XsType.Read, "w/node-with-a-long-name-000"));
        Assert.True(d.RingOf(3).Notifications > 0);
    }

    [Fact]
    public unsafe void MappedRingServesAGuestPage()
    {
        using var d = new TempDaemon();
        TestRing page = d.NewRing();
        int kicks = 0;
        fixed (byte* p = page.Page)
        {
            var ring = new MappedXenStoreRing((nint)p, () => { Interlocked.Increment(ref kicks); page.Notify(); });
            var g = new GuestClient(page, d.Daemon.Introduce(20, ring));
            Assert.Equal("/local/domain/20\0", g.Call(XsType.GetDomainPath, "20"));
        }
        Assert.True(kicks > 0);
    }
}
