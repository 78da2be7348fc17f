using System.Reflection;

namespace XenSharp.Toolstack.Tests.Xl;

/// <summary>xl is a client: it and everything it references know the control protocol and the xl.cfg model,
/// never the hypervisor, the engine, xenstored, the backends or the daemon's toolstack.</summary>
public sealed class XlIsAClientTests
{
    private static readonly string[] ServerSide =
        ["XenSharp.Toolstack", "XenSharp.Hypervisor", "XenSharp.Cpu", "XenSharp.Store", "XenSharp.Backends", "xensharpd"];

    /// <summary>The XenSharp assemblies xl loads, following references from xl itself.</summary>
    private static HashSet<string> XenSharpClosure(Assembly root)
    {
        var seen = new HashSet<string> { root.GetName().Name! };
        var queue = new Queue<Assembly>([root]);
        while (queue.TryDequeue(out var a))
            foreach (var r in a.GetReferencedAssemblies())
                if ((r.Name!.StartsWith("XenSharp.", StringComparison.Ordinal) || r.Name == "xensharpd") && seen.Add(r.Name))
                    queue.Enqueue(Assembly.Load(r));
        return seen;
    }

    [Fact]
    public void XlReferencesOnlyTheClientSideAndTheAbi()
    {
        var xl = typeof(XenSharp.Xl.CommandTable).Assembly;
        Assert.Equal("xl", xl.GetName().Name);
        var closure = XenSharpClosure(xl);
        Assert.Contains("XenSharp.Toolstack.Client", closure); // the walk really follows references
        foreach (var server in ServerSide)
            Assert.DoesNotContain(server, closure);
        Assert.Equal(["XenSharp.Public", "XenSharp.Toolstack.Client", "xl"], closure.Order());
    }

    [Fact]
    public void TheDaemonsToolstackIsBuiltOnTheSameClientSide()
    {
        var closure = XenSharpClosure(typeof(XenSharp.Toolstack.Lifecycle.Host).Assembly);
        Assert.Contains("XenSharp.Toolstack.Client", closure);
        Assert.Contains("XenSharp.Hypervisor", closure);
    }
}
