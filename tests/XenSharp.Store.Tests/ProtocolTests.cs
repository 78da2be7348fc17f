using System.Net.Sockets;
using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>Wire-level behaviour: replies, error names, malformed input.</summary>
[Trait("Feature", "Toolstack")]
public class ProtocolTests
{
    [Fact]
    public void BasicOperationsAndImplicitParents()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        Assert.Equal("OK\0", c.Write("/a/b/c", "hello"));
        Assert.Equal("hello", c.Call(XsType.Read, "/a/b/c"));
        Assert.Equal("", c.Call(XsType.Read, "/a/b"));
        Assert.Equal("b\0", c.Call(XsType.Directory, "/a"));
        Assert.Equal("OK\0", c.Call(XsType.Mkdir, "/a/m"));
        Assert.Equal("OK\0", c.Call(XsType.Mkdir, "/a/m"));              // existing: fine
        Assert.Equal("b\0m\0", c.Call(XsType.Directory, "/a"));
        Assert.Equal("n0\0", c.Call(XsType.GetPerms, "/a/b/c"));
        Assert.Equal("OK\0", c.Call(XsType.SetPerms, "/a/b/c", "r3", "w4", "b5", "n6"));
        Assert.Equal("r3\0w4\0b5\0n6\0", c.Call(XsType.GetPerms, "/a/b/c"));
        Assert.Equal("OK\0", c.Call(XsType.Rm, "/a/b"));
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Read, "/a/b/c"));
        Assert.Equal("OK\0", c.Call(XsType.Rm, "/a/b"));                // gone but parent exists: fine
        Assert.Equal("ERR:ENOENT", c.Call(XsType.Rm, "/a/b/c"));        // parent missing
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Rm, "/"));
        Assert.Equal("OK\0", c.Write("/bin", "\u0001\u0002"));
        Assert.Equal("OK\0", c.Write("/empty", ""));
        Assert.Equal("", c.Call(XsType.Read, "/empty"));
        Assert.Equal("/local/domain/0\0", c.Call(XsType.GetDomainPath, "0"));
        Assert.Contains("tool\0", c.Call(XsType.Directory, "/"));
        string deep = string.Concat(Enumerable.Range(0, 300).Select(i => "/d"));
        Assert.Equal("OK\0", c.Write(deep, "bottom"));                 // 300 parents created at once
        Assert.Equal("bottom", c.Call(XsType.Read, deep));
        Assert.Equal("OK\0", c.Call(XsType.Rm, "/d"));
    }

    [Theory]
    [InlineData("a b")]
    [InlineData("/a//b")]
    [InlineData("/a/")]
    [InlineData("/a\u00e9")]
    [InlineData("/a*")]
    public void BadPathsAreEinval(string path)
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        Assert.Equal("ERR:EINVAL", c.Write(path, "x"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Read, path));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.Watch, path, "t"));
    }

    [Fact]
    public void MalformedRequestsGetErrorsAndTheConnectionGoesOn()
    {
        using var d = new TempDaemon();
        using var c = d.Connect();
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request((XsType)99, [])));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.Error, XsTestClient.Args("EINVAL"))));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.WatchEvent, XsTestClient.Args("/a", "b"))));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.Read, Encoding.ASCII.GetBytes("/no-nul"))));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.Read, Encoding.ASCII.GetBytes("/a\0/b\0"))));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.Read, [])));
        Assert.Equal("ERR:EINVAL", XsTestClient.Text(c.Request(XsType.Write, Encoding.ASCII.GetBytes("/nonul"))));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.SetPerms, "/", "x1"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.SetPerms, "/", "r70000"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.SetPerms, "/"));
        Assert.Equal("ERR:EINVAL", c.Call(XsType.GetDomainPath, "abc"));
        Assert.Equal("OK\0", c.Write("/still", "works"));
    }

    [Fact]
    public void OversizedMessageClosesOnlyThatConnection()
    {
        using var d = new TempDaemon();
        using var good = d.Connect();
        using var bad = d.Connect();
        bad.SendRaw(XsTestClient.Msg(XsType.Write, 1, 0, new byte[4097]));
        Assert.Throws<EndOfStreamException>(() => bad.ReadMessage());
        Assert.Equal("OK\0", good.Write("/fine", "yes"));
        Assert.Equal("yes", good.Call(XsType.Read, "/fine"));
    }

    [Fact]
    public void LargeDirectoryNeedsDirectoryPart()
    {
        using var d = new TempDaemon();
        using (XenStoreTransaction t = d.Daemon.BeginTransaction())
        {
            for (int i = 0; i < 400; i++) t.Write($"/big/entry-number-{i:D4}", "");
            Assert.True(t.Commit());
        }
        using var c = d.Connect();
        Assert.Equal("ERR:E2BIG", c.Call(XsType.Directory, "/big"));
        var names = new List<string>();
        int offset = 0;
        string? gen = null;
        while (true)
        {
            string r = c.Call(XsType.DirectoryPart, "/big", offset.ToString());
            Assert.DoesNotContain("ERR", r);
            string[] parts = r.Split('\0');
            gen ??= parts[0];
            Assert.Equal(gen, parts[0]);
            bool end = r.EndsWith("\0\0");
            string[] chunk = parts[1..^1].Where(p => p.Length > 0).ToArray();
            names.AddRange(chunk);
            offset += chunk.Sum(n => n.Length + 1);
            if (end) break;
        }
        Assert.Equal(Enumerable.Range(0, 400).Select(i => $"entry-number-{i:D4}"), names);

        // libxenstore falls back to XS_DIRECTORY_PART by itself.
        var list = d.Tool("xenstore-list", "/big");
        Assert.Equal(0, list.Exit);
        Assert.Equal(400, list.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
    }

    [Fact]
    public void StuckClientDoesNotStallOthersAndIsDropped()
    {
        using var d = new TempDaemon(new XenStoreQuotas { MaxPendingOutputBytes = 256 * 1024 });
        using var stuck = d.Connect();
        stuck.Socket.ReceiveBufferSize = 4096;
        Assert.Equal("OK\0", stuck.Call(XsType.Watch, "/hot", "t"));
        using var c = d.Connect();
        // Events (each ~2 KiB, naming a long path) pile up for the client that never reads; the
        // others keep being served, and the stuck one is dropped rather than allowed to grow.
        string name = "/hot/" + new string('k', 2000);
        for (int i = 0; i < 1000; i++)
            Assert.Equal("OK\0", c.Write(name + (i % 10), "v"));
        Assert.Equal("v", c.Call(XsType.Read, name + "3"));
        int events = 0;
        Assert.Throws<EndOfStreamException>((Action)(() =>
        {
            while (true)
            {
                var m = stuck.ReadMessage();
                Assert.Equal(XsType.WatchEvent, m.Type);
                events++;
            }
        }));
        Assert.True(events < 1000);
    }

    [Fact]
    public void ManyClientsAtOnce()
    {
        using var d = new TempDaemon();
        Parallel.For(0, 16, i =>
        {
            using var c = d.Connect();
            for (int j = 0; j < 50; j++)
            {
                Assert.Equal("OK\0", c.Write($"/many/{i}/{j}", $"{i}-{j}"));
                Assert.Equal($"{i}-{j}", c.Call(XsType.Read, $"/many/{i}/{j}"));
            }
        });
        Assert.Equal(16, d.Daemon.Directory("/many")!.Length);
        Assert.All(Enumerable.Range(0, 16), i => Assert.Equal(50, d.Daemon.Directory($"/many/{i}")!.Length));
    }
}
