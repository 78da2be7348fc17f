using CsCheck;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// How the fuzz targets run: CsCheck samples mutations of a seed corpus; each case runs under a hang
/// guard and an allocation budget, and any exception the parser does not document fails the case.
/// <c>XENSHARP_FUZZ_ITERATIONS=N</c> runs N cases per target instead of the default, and
/// <c>XENSHARP_FUZZ_SECONDS=S</c> runs each target for S seconds; CsCheck prints the seed of a
/// failing case, which <c>CsCheck_Seed=SEED</c> replays.
/// </summary>
internal static class Fuzz
{
    /// <summary>A case that has not finished by then is taken to loop forever.</summary>
    public static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    /// <summary>Exceptions that are a parser's bug whatever the input, even when wrapped in its own type.</summary>
    private static readonly Type[] Bugs =
    [
        typeof(IndexOutOfRangeException), typeof(NullReferenceException), typeof(ArgumentException),
        typeof(OverflowException), typeof(InvalidCastException), typeof(OutOfMemoryException),
        typeof(DivideByZeroException), typeof(InvalidOperationException), typeof(KeyNotFoundException),
    ];

    /// <summary>Runs <paramref name="check"/> on <paramref name="gen"/>'s cases: the default number, or what the
    /// environment asks for.</summary>
    public static void Run<T>(Gen<T> gen, int defaultIterations, Action<T> check, Func<T, string> print)
    {
        int seconds = EnvInt("XENSHARP_FUZZ_SECONDS");
        long iterations = EnvInt("XENSHARP_FUZZ_ITERATIONS") is > 0 and var n ? n : defaultIterations;
        // One thread: the suite shares the machine; a long run by hand can still use CsCheck_Threads.
        int threads = EnvInt("CsCheck_Threads") is > 0 and var t ? t : 1;
        gen.Sample(c => Guarded(() => check(c)), iter: seconds > 0 ? -1 : iterations, time: seconds > 0 ? seconds : -1,
            threads: threads, print: print);
    }

    /// <summary>Text of a failing case as a C# literal, short enough to read.</summary>
    public static string Quote(string text)
    {
        var sb = new System.Text.StringBuilder("\"");
        foreach (char c in text.Length > 4000 ? text[..4000] : text)
            sb.Append(c switch
            {
                '"' => "\\\"", '\\' => "\\\\", '\n' => "\\n", '\t' => "\\t",
                _ when char.IsControl(c) || c > '~' => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        return sb.Append(text.Length > 4000 ? "\"…" : "\"").ToString();
    }

    private static int EnvInt(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int v) ? v : 0;

    /// <summary>Runs a case on a thread of its own so that a hang fails it instead of the whole run.</summary>
    private static void Guarded(Action check)
    {
        var task = Task.Factory.StartNew(check, TaskCreationOptions.LongRunning);
        if (Task.WaitAny([task], HangGuard) < 0)
            throw new TimeoutException($"the case did not finish within {HangGuard.TotalSeconds} s: a parser loops");
        task.GetAwaiter().GetResult();
    }

    /// <summary>
    /// Calls <paramref name="parse"/>, which may return or throw <typeparamref name="TDocumented"/> with a
    /// message for the user; anything else, a documented exception that wraps a bug, or allocating more
    /// than <paramref name="allocationBudget"/> bytes on the way fails the case.
    /// </summary>
    public static TDocumented? Expect<TDocumented>(Action parse, long allocationBudget) where TDocumented : Exception
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        TDocumented? error = null;
        try { parse(); }
        catch (TDocumented e) { error = e; }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (allocated > allocationBudget)
            throw new FuzzFailure($"allocated {allocated} bytes (budget {allocationBudget})" + (error is null ? "" : $" before failing with: {error.Message}"));
        if (error is null) return null;
        if (string.IsNullOrWhiteSpace(error.Message))
            throw new FuzzFailure($"{typeof(TDocumented).Name} without a message", error);
        for (var inner = error.InnerException; inner is not null; inner = inner.InnerException)
            if (Bugs.Any(b => b.IsInstanceOfType(inner)) && RaisedInXenSharp(inner))
                throw new FuzzFailure($"{typeof(TDocumented).Name} wraps a bug: {error.Message}", error);
        return error;
    }

    /// <summary>Whether the first frame outside the runtime is XenSharp's own code. A third-party decoder that
    /// meets corrupt data with an IndexOutOfRangeException is contained by the wrapper, not a XenSharp bug; its
    /// message is the wrapper's to make clear.</summary>
    private static bool RaisedInXenSharp(Exception e)
    {
        foreach (var frame in new System.Diagnostics.StackTrace(e).GetFrames())
        {
            string? assembly = frame.GetMethod()?.DeclaringType?.Assembly.GetName().Name;
            if (assembly is null || assembly.StartsWith("System.")) continue;
            return assembly.StartsWith("XenSharp");
        }
        return false; // raised and wrapped within the runtime's own libraries (System.Text.Json does so)
    }
}

/// <summary>A property a fuzz case broke.</summary>
internal sealed class FuzzFailure(string message, Exception? inner = null) : Exception(message, inner);
