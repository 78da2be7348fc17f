using XenSharp.Store;

namespace XenSharp.Store.Tests;

[Trait("Feature", "Toolstack")]
public class TransactionTests
{
    private static uint Start(XsTestClient c)
    {
        string r = c.Call(XsType.TransactionStart, "");
        Assert.DoesNotContain("ERR", r);
        return uint.Parse(r.TrimEnd('\0'));
    }

    [Fact]
    public void ChangesAreInvisibleUntilCommit()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        using var other = d.Connect();
        uint tx = Start(c);
        Assert.NotEqual(0u, tx);
        Assert.Equal("OK\0", c.Write("/t/a", "1", tx));
        Assert.Equal("OK\0", c.CallTx(tx, XsType.Mkdir, "/t/dir"));
        Assert.Equal("1", c.CallTx(tx, XsType.Read, "/t/a"));
        Assert.Equal("a\0dir\0", c.CallTx(tx, XsType.Directory, "/t"));
        Assert.Equal("ERR:ENOENT", other.Call(XsType.Read, "/t/a"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Read, "/t/a"));
        Assert.Equal("OK\0", c.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.Equal("1", other.Call(XsType.Read, "/t/a"));
        Assert.Equal("a\0dir\0", other.Call(XsType.Directory, "/t"));
    }

    [Fact]
    public void ConflictingChangeMakesCommitFailWithEagain()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        using var other = d.Connect();
        Assert.Equal("OK\0", c.Write("/cfg/x", "0"));
        uint tx = Start(c);
        Assert.Equal("0", c.CallTx(tx, XsType.Read, "/cfg/x"));
        Assert.Equal("OK\0", c.Write("/cfg/y", "from-tx", tx));
        Assert.Equal("OK\0", other.Write("/cfg/x", "changed"));
        Assert.Equal("ERR:EAGAIN", c.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Read, "/cfg/y"));
        Assert.Equal("changed", c.Call(XsType.Read, "/cfg/x"));
        // The transaction is gone after EAGAIN.
        Assert.Equal("ERR:ENOENT", c.CallTx(tx, XsType.Read, "/cfg/x"));
    }

    [Fact]
    public void ReadsInATransactionSeeTheNodeAsFirstRead()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        using var other = d.Connect();
        Assert.Equal("OK\0", c.Write("/snap/x", "a"));
        uint tx = Start(c);
        Assert.Equal("a", c.CallTx(tx, XsType.Read, "/snap/x"));
        Assert.Equal("OK\0", other.Write("/snap/x", "b"));
        Assert.Equal("OK\0", other.Write("/snap/new", "n"));
        Assert.Equal("a", c.CallTx(tx, XsType.Read, "/snap/x"));
        Assert.Equal("OK\0", c.Write("/snap/x", "c", tx));
        Assert.Equal("c", c.CallTx(tx, XsType.Read, "/snap/x"));
        Assert.Equal("ERR:EAGAIN", c.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.Equal("b", c.Call(XsType.Read, "/snap/x"));
    }

    [Fact]
    public void UnrelatedTransactionsBothCommit()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/p/a", "0");
        d.Daemon.Write("/q/b", "0");
        using var c1 = d.Connect();
        using var c2 = d.Connect();
        uint t1 = Start(c1), t2 = Start(c2);
        Assert.Equal("OK\0", c1.Write("/p/a", "1", t1));
        Assert.Equal("OK\0", c2.Write("/q/b", "2", t2));
        Assert.Equal("OK\0", c1.CallTx(t1, XsType.TransactionEnd, "T"));
        Assert.Equal("OK\0", c2.CallTx(t2, XsType.TransactionEnd, "T"));
        Assert.Equal("1", d.Daemon.Read("/p/a"));
        Assert.Equal("2", d.Daemon.Read("/q/b"));
    }

    [Fact]
    public void AbortDiscardsAndRemovalInsideTransactionCommits()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        d.Daemon.Write("/r/keep", "k");
        d.Daemon.Write("/r/gone/deep", "g");
        uint tx = Start(c);
        Assert.Equal("OK\0", c.Write("/r/keep", "changed", tx));
        Assert.Equal("OK\0", c.CallTx(tx, XsType.TransactionEnd, "F"));
        Assert.Equal("k", d.Daemon.Read("/r/keep"));

        tx = Start(c);
        Assert.Equal("OK\0", c.CallTx(tx, XsType.Rm, "/r/gone"));
        Assert.Equal("ERR:ENOENT", c.CallTx(tx, XsType.Read, "/r/gone/deep"));
        Assert.Equal("g", c.Call(XsType.Read, "/r/gone/deep"));
        Assert.Equal("OK\0", c.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.False(d.Daemon.Exists("/r/gone"));
        Assert.False(d.Daemon.Exists("/r/gone/deep"));
        Assert.Equal(["keep"], d.Daemon.Directory("/r")!);
    }

    [Fact]
    public void BadTransactionUseGetsErrors()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        Assert.Equal("ERR:ENOENT", c.CallTx(77, XsType.Read, "/"));
        Assert.Equal("ERR:ENOENT", c.CallTx(77, XsType.TransactionEnd, "T"));
        uint tx = Start(c);
        Assert.Equal("ERR:EINVAL", c.CallTx(tx, XsType.TransactionEnd, "maybe"));
        Assert.Equal("ERR:EBUSY", c.CallTx(tx, XsType.TransactionStart, ""));
        // Another connection cannot use this connection's transaction.
        using var other = d.Connect();
        Assert.Equal("ERR:ENOENT", other.CallTx(tx, XsType.Read, "/"));
        Assert.Equal("OK\0", c.CallTx(tx, XsType.TransactionEnd, "T"));
    }

    [Fact]
    public void WatchersHearOfTransactionChangesOnlyAtCommit()
    {
        using var d = new TempDaemon();
        using var w = d.Connect();
        using var c = d.Connect();
        Assert.Equal("OK\0", w.Call(XsType.Watch, "/txw", "tok"));
        Assert.Equal(("/txw", "tok"), w.NextEvent());
        uint tx = Start(c);
        Assert.Equal("OK\0", c.Write("/txw/a", "1", tx));
        w.Call(XsType.Read, "/");               // a round trip: any event would have arrived first
        Assert.Empty(w.Events);
        Assert.Equal("OK\0", c.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.Equal(("/txw/a", "tok"), w.NextEvent());
    }

    [Fact]
    public void ToolstackTransactionsRetryOnConflict()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/counter", "0");
        using (XenStoreTransaction t = d.Daemon.BeginTransaction())
        {
            string v = t.Read("/counter")!;
            d.Daemon.Write("/counter", "5");       // someone else wins
            t.Write("/counter", (int.Parse(v) + 1).ToString());
            Assert.False(t.Commit());
        }
        using (XenStoreTransaction t = d.Daemon.BeginTransaction())
        {
            t.Write("/counter", (int.Parse(t.Read("/counter")!) + 1).ToString());
            t.Mkdir("/local/domain/9/device");
            t.SetPerms("/local/domain/9", new XsPermission(9, XsPerm.None));
            Assert.True(t.Commit());
        }
        Assert.Equal("6", d.Daemon.Read("/counter"));
        Assert.Equal(new XsPermission(9, XsPerm.None), d.Daemon.GetPerms("/local/domain/9")![0]);
    }

    [Fact]
    public void GuestTransactionOverRing()
    {
        using var d = new TempDaemon();
        d.Daemon.Mkdir("/local/domain/2");
        d.Daemon.SetPerms("/local/domain/2", new XsPermission(2, XsPerm.None));
        GuestClient g = d.Guest(2);
        string id = g.Call(XsType.TransactionStart, "").TrimEnd('\0');
        uint tx = uint.Parse(id);
        Assert.Equal("OK\0", g.Write("device/vif/0/state", "4", tx));
        Assert.False(d.Daemon.Exists("/local/domain/2/device"));
        Assert.Equal("OK\0", g.CallTx(tx, XsType.TransactionEnd, "T"));
        Assert.Equal("4", d.Daemon.Read("/local/domain/2/device/vif/0/state"));
    }

    [Fact]
    public void ConcurrentIncrementsWithRetryLoseNothing()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/count", "0");
        int conflicts = 0;
        Parallel.For(0, 6, _ =>
        {
            using var c = d.Connect();
            for (int i = 0; i < 40; i++)
            {
                while (true)
                {
                    uint tx = Start(c);
                    int v = int.Parse(c.CallTx(tx, XsType.Read, "/count"));
                    Assert.Equal("OK\0", c.Write("/count", (v + 1).ToString(), tx));
                    string end = c.CallTx(tx, XsType.TransactionEnd, "T");
                    if (end == "OK\0") break;
                    Assert.Equal("ERR:EAGAIN", end);
                    Interlocked.Increment(ref conflicts);
                }
            }
        });
        Assert.Equal("240", d.Daemon.Read("/count"));
    }
}
