namespace XenSharp.Toolstack.Control;

/// <summary>
/// XENSHARP_MIGRATE_TRACE=1: each step of a migration's downtime (the source's stop, its last pages and state, the
/// target's restore, device connection, and every turn of xl's handshake) as a line on the standard error of the
/// process that took it, <c>migrate-trace MICROS WHO: STEP [cpu US jit N US gc N US]</c>, MICROS on the clock every
/// process of this host shares, so the lines of both daemons and both xl processes can be put in one order. The
/// bracket says what the process had spent by then: the CPU time of the thread that took the step, the methods the
/// runtime compiled and its time compiling, the garbage collections and their pauses; between two lines of one
/// thread, their differences tell work from waiting for a core on a loaded host. Off by default.
/// </summary>
public static class MigrationTrace
{
    public static readonly bool On = Environment.GetEnvironmentVariable("XENSHARP_MIGRATE_TRACE") is "1";

    /// <summary>Microseconds since 1970.</summary>
    public static long Now() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;

    /// <summary>XENSHARP_MIGRATE_TRACE=jit as well: every method the runtime compiles, as a line of its own
    /// (<c>migrate-trace MICROS jit: METHOD</c>), to find what a first migration still compiles in the downtime.</summary>
    private static readonly JitListener? Jit = Environment.GetEnvironmentVariable("XENSHARP_MIGRATE_TRACE_JIT") is "1" && On ? new JitListener() : null;

    public static void Mark(string who, string step, long at = 0)
    {
        if (!On) return;
        _ = Jit;
        long when = at == 0 ? Now() : at;
        long jitUs = (long)System.Runtime.JitInfo.GetCompilationTime().TotalMicroseconds;
        long gcUs = (long)GC.GetTotalPauseDuration().TotalMicroseconds;
        int gcs = GC.CollectionCount(0);
        Console.Error.WriteLine(
            $"migrate-trace {when} {who}: {step} [cpu {ThreadCpuMicros()} jit {System.Runtime.JitInfo.GetCompiledMethodCount()} {jitUs} gc {gcs} {gcUs}]");
    }

    private static long ThreadCpuMicros() => clock_gettime(CLOCK_THREAD_CPUTIME_ID, out var ts) == 0 ? ts.Sec * 1_000_000 + ts.Nsec / 1000 : -1;

    private const int CLOCK_THREAD_CPUTIME_ID = 3;

    private struct Timespec
    {
        public long Sec, Nsec;
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int clock_gettime(int clock, out Timespec ts);

    private sealed class JitListener : System.Diagnostics.Tracing.EventListener
    {
        protected override void OnEventSourceCreated(System.Diagnostics.Tracing.EventSource source)
        {
            if (source.Name == "Microsoft-Windows-DotNETRuntime")
                EnableEvents(source, System.Diagnostics.Tracing.EventLevel.Verbose, (System.Diagnostics.Tracing.EventKeywords)0x10);
        }

        protected override void OnEventWritten(System.Diagnostics.Tracing.EventWrittenEventArgs e)
        {
            if (e.EventName != "MethodJittingStarted_V1" || e.Payload is not { Count: >= 6 } p) return;
            Console.Error.WriteLine($"migrate-trace {(e.TimeStamp.ToUniversalTime() - DateTime.UnixEpoch).Ticks / 10} jit: {p[4]}.{p[5]} [thread {e.OSThreadId}]");
        }
    }
}
