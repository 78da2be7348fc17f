using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>Debian's xenstore-utils, unchanged, against the daemon on a temporary socket.</summary>
[Trait("Feature", "Toolstack")]
public class XenstoreUtilsTests
{
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
}
