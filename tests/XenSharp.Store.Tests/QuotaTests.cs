using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>Guests cannot exceed their quotas; dom0 is exempt.</summary>
[Trait("Feature", "Toolstack")]
public class QuotaTests
{
    private static (TempDaemon, GuestClient) Setup(XenStoreQuotas q, uint dom = 1)
    {
        var d = new TempDaemon(q);
        d.Daemon.Mkdir($"/local/domain/{dom}");
        d.Daemon.SetPerms($"/local/domain/{dom}", new XsPermission(dom, XsPerm.None));
        return (d, d.Guest(dom));
    }

    [Fact]
    public void NodesPerDomain()
    {
        var (d, g) = Setup(new XenStoreQuotas { NodesPerDomain = 6 });
        using (d)
        {
            // The home node already counts as the guest's.
            for (int i = 0; i < 5; i++) Assert.Equal("OK\0", g.Write($"n{i}", "v"));
            Assert.Equal("ERR:ENOSPC", g.Write("n5", "v"));
            Assert.Equal("ERR:ENOSPC", g.Write("deep/a/b", "v"));
            Assert.False(d.Daemon.Exists("/local/domain/1/deep"));
            Assert.Equal("OK\0", g.Write("n0", "rewrite"));        // changing existing nodes is fine
            Assert.Equal("OK\0", g.Call(XsType.Rm, "n4"));
            Assert.Equal("OK\0", g.Write("n5", "v"));
            d.Daemon.Write("/local/domain/1/by-dom0", "x");          // dom0 is not limited
        }
    }

    [Fact]
    public void EntrySizeAndPathLength()
    {
        var (d, g) = Setup(new XenStoreQuotas { MaxEntrySize = 100, MaxRelativePathLength = 64 });
        using (d)
        {
            Assert.Equal("OK\0", g.Write("ok", new string('a', 100)));
            Assert.Equal("ERR:ENOSPC", g.Write("big", new string('a', 101)));
            Assert.False(d.Daemon.Exists("/local/domain/1/big"));
            d.Daemon.Write("/local/domain/1/dom0big", new string('b', 3000));
            Assert.Equal(3000, g.Call(XsType.Read, "dom0big").Length);

            Assert.Equal("OK\0", g.Write(new string('p', 64), "x"));
            Assert.Equal("ERR:EINVAL", g.Write(new string('p', 65), "x"));
            Assert.Equal("ERR:EINVAL", g.Write("/local/domain/1/" + new string('p', 65), "x"));
        }
    }

    [Fact]
    public void PermissionEntriesPerNode()
    {
        var (d, g) = Setup(new XenStoreQuotas { PermissionsPerNode = 3 });
        using (d)
        {
            Assert.Equal("OK\0", g.Write("p", ""));
            Assert.Equal("OK\0", g.Call(XsType.SetPerms, "p", "n1", "r2", "r3"));
            Assert.Equal("ERR:ENOSPC", g.Call(XsType.SetPerms, "p", "n1", "r2", "r3", "r4"));
            Assert.Equal("n1\0r2\0r3\0", g.Call(XsType.GetPerms, "p"));
        }
    }

    [Fact]
    public void WatchesAndTransactions()
    {
        var (d, g) = Setup(new XenStoreQuotas { WatchesPerDomain = 2, TransactionsPerDomain = 2 });
        using (d)
        {
            Assert.Equal("OK\0", g.Call(XsType.Watch, "a", "1"));
            Assert.Equal("OK\0", g.Call(XsType.Watch, "b", "2"));
            Assert.Equal("ERR:E2BIG", g.Call(XsType.Watch, "c", "3"));
            Assert.Equal("OK\0", g.Call(XsType.Unwatch, "a", "1"));
            Assert.Equal("OK\0", g.Call(XsType.Watch, "c", "3"));

            string t1 = g.Call(XsType.TransactionStart, "");
            string t2 = g.Call(XsType.TransactionStart, "");
            Assert.DoesNotContain("ERR", t1 + t2);
            Assert.Equal("ERR:ENOSPC", g.Call(XsType.TransactionStart, ""));
            Assert.Equal("OK\0", g.CallTx(uint.Parse(t1.TrimEnd('\0')), XsType.TransactionEnd, "F"));
            Assert.DoesNotContain("ERR", g.Call(XsType.TransactionStart, ""));

            // dom0 over the socket is exempt.
            using var c = d.Connect();
            for (int i = 0; i < 5; i++) Assert.Equal("OK\0", c.Call(XsType.Watch, "/w" + i, "t"));
        }
    }

    [Fact]
    public void OutstandingRequestsHoldBackAGuestThatDoesNotRead()
    {
        var (d, g) = Setup(new XenStoreQuotas { OutstandingRequests = 2 });
        using (d)
        {
            d.Daemon.Write("/local/domain/1/big", new string('z', 600));
            d.Daemon.SetPerms("/local/domain/1/big", new XsPermission(1, XsPerm.None));
            // Queue many requests whose replies overflow the response ring several times over,
            // then read them all: every reply arrives, in order, intact.
            var batch = new List<byte>();
            for (uint i = 1; i <= 20; i++)
                batch.AddRange(XsTestClient.Msg(XsType.Read, 1000 + i, 0, XsTestClient.Args("big")));
            g.WriteBytes(batch.ToArray());
            for (uint i = 1; i <= 20; i++)
            {
                var m = g.TryReadMessage(60_000);
                Assert.NotNull(m);
                Assert.Equal((XsType.Read, 1000 + i), (m.Value.Type, m.Value.ReqId));
                Assert.Equal(new string('z', 600), Encoding.ASCII.GetString(m.Value.Payload));
            }
        }
    }
}
