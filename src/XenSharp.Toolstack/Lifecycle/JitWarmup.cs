using System.Reflection;
using System.Runtime.CompilerServices;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Compiles, on a background thread, the methods a migration runs while the guest is stopped (the source's last
/// pages and state, the target's ring and device connection, rename and unpause), so that a daemon's first migration
/// does not compile them in the guest's downtime: the first call of a .NET method is its JIT compilation, tens of
/// milliseconds for such a path on a loaded host. Nothing runs: the methods are only prepared.
/// </summary>
internal sealed class JitWarmup
{
    private static readonly Lock Done = new();
    private static readonly HashSet<Type> Prepared = [];
    private readonly CancellationTokenSource _cancel = new();
    private readonly Task _task;

    private JitWarmup(Type[] types)
    {
        var token = _cancel.Token;
        _task = Task.Run(() => Prepare(types, token));
    }

    /// <summary>Starts preparing the methods of <paramref name="types"/> and their nested types (each type once per
    /// process), in the order given, each type's nested types right after it: the types of the downtime's own path
    /// come first, as a loaded host may not leave time for more.</summary>
    public static JitWarmup Start(params Type[] types) => new(types);

    /// <summary>The hypervisor's types by name, for those the toolstack cannot name (internal to it); a name that
    /// is not there is left out.</summary>
    public static IEnumerable<Type> HypervisorTypes(params string[] names)
    {
        var assembly = typeof(XenSharp.Hypervisor.XenHypervisor).Assembly;
        foreach (string name in names)
            if (assembly.GetType("XenSharp.Hypervisor." + name) is { } t)
                yield return t;
    }

    /// <summary>Waits for it to end, at most <paramref name="upTo"/>.</summary>
    public void Wait(TimeSpan upTo)
    {
        try { _task.Wait(upTo); }
        catch (AggregateException) { }
    }

    /// <summary>Stops it between two methods: what is left is compiled when it runs.</summary>
    public void Stop() => _cancel.Cancel();

    private static void Prepare(Type[] types, CancellationToken token)
    {
        var stack = new Stack<Type>(Enumerable.Reverse(types));
        while (stack.TryPop(out var type))
        {
            lock (Done)
                if (!Prepared.Add(type)) continue;
            foreach (var nested in Enumerable.Reverse(type.GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic)))
                if (!nested.ContainsGenericParameters) stack.Push(nested);
            const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static |
                BindingFlags.DeclaredOnly;
            foreach (var m in type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all)))
            {
                if (token.IsCancellationRequested) return;
                if (m.IsAbstract || m.ContainsGenericParameters || (m.MethodImplementationFlags & MethodImplAttributes.InternalCall) != 0 ||
                    (m.Attributes & MethodAttributes.PinvokeImpl) != 0)
                    continue;
                try { RuntimeHelpers.PrepareMethod(m.MethodHandle); }
                catch (Exception e) when (e is ArgumentException or NotSupportedException or InvalidOperationException or TypeLoadException
                                              or BadImageFormatException or MissingMethodException) { }
            }
        }
    }
}
