using System.Collections.Concurrent;
using System.Diagnostics;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// Where an HVM guest's port I/O and MMIO go, for profiling: with XENSHARP_HVMIO_STATS=path each access is counted by
/// kind, port or address and who served it (a device in the hypervisor, a synchronous ioreq round trip to the device
/// model, the buffered ring, the in-process server, nobody), with the time the vCPU waited on the round trips, and the
/// totals are written to that file every five seconds. Off by default: the checks are on a static readonly flag the
/// .NET JIT folds away.
/// </summary>
internal static class HvmIoStats
{
    private static readonly string? Path = Environment.GetEnvironmentVariable("XENSHARP_HVMIO_STATS") is { Length: > 0 } p ? p : null;
    public static readonly bool On = Path != null;

    public enum Kind : byte { PioRead, PioWrite, MmioRead, MmioWrite, RepPio, RepMmio }
    public enum Who : byte { Hypervisor, Ioreq, Buffered, InProcess, Nobody }

    private sealed class Counter
    {
        public long Count, Iterations, WaitTicks;
    }

    private static readonly ConcurrentDictionary<(Kind, ulong, Who), Counter> Counters = new();
    private static long _nextDump = Environment.TickCount64 + 5000;

    /// <summary>Counts one access (or one repeated access of <paramref name="iterations"/>) and the ticks waited.</summary>
    public static void Count(Kind kind, ulong address, Who who, long waitTicks = 0, ulong iterations = 1)
    {
        var c = Counters.GetOrAdd((kind, address, who), _ => new Counter());
        Interlocked.Increment(ref c.Count);
        Interlocked.Add(ref c.Iterations, (long)iterations);
        Interlocked.Add(ref c.WaitTicks, waitTicks);
        long now = Environment.TickCount64;
        if (now >= Volatile.Read(ref _nextDump) && Interlocked.Exchange(ref _nextDump, now + 5000) <= now)
            Dump();
    }

    private static void Dump()
    {
        var w = new System.Text.StringBuilder();
        w.Append($"--- {DateTime.UtcNow:HH:mm:ss} cumulative\n");
        var rows = Counters.ToArray();
        foreach (var g in rows.GroupBy(r => r.Key.Item3))
            w.Append($"{g.Key}: {g.Sum(r => r.Value.Count)} accesses, {g.Sum(r => r.Value.Iterations)} iterations, waited {g.Sum(r => r.Value.WaitTicks) * 1000.0 / Stopwatch.Frequency:F0} ms\n");
        foreach (var r in rows.OrderByDescending(r => r.Value.Count).Take(60))
            w.Append($"  {r.Key.Item1} 0x{r.Key.Item2:x} {r.Key.Item3}: {r.Value.Count} ({r.Value.Iterations} it), waited {r.Value.WaitTicks * 1000.0 / Stopwatch.Frequency:F1} ms\n");
        File.AppendAllText(Path!, w.ToString());
    }
}
