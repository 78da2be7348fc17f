using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Where a vCPU's time goes, for profiling: with XENSHARP_ENGINE_STATS=path each vCPU counts
/// block dispatches (compiled or interpreted), decodes, exits and interrupt deliveries, and the RIPs of
/// interpreted blocks, and appends them to that file every five seconds. Off by default: the checks are on
/// a static readonly flag the .NET JIT folds away.</summary>
internal sealed partial class X86Vcpu
{
    private static readonly string? StatsPath = Environment.GetEnvironmentVariable("XENSHARP_ENGINE_STATS") is { Length: > 0 } p ? p : null;
    internal static readonly bool Stats = StatsPath != null;

    private sealed class StatCounters
    {
        public long ChainCalls, IndirectCalls, ChainNull, IndirectNull, BackHops, BackUnlinked, BackStop, BackOther, Chained, TlbFlushAll, TlbFlushNonGlobal, TlbFlushPage, JumpFlushSup, JumpFlushUser, RunCalls, Dispatches, Compiled, Interpreted, InterpretedInsns, Decodes, Lookups, LookupsUser, Revalidated, SuccessorHits, Events, Faults, Exits, Singles, JitExecs, JitExecs32;
        public readonly long[] ExitReasons = new long[32];
        public readonly Dictionary<ulong, long> InterpretedAt = new();
        public readonly Dictionary<ulong, long> SingleAt = new();
        public readonly Dictionary<ulong, long> BackOtherAt = new();
        public readonly Dictionary<ulong, long> PortAt = new();
        public readonly Dictionary<ulong, long> DispatchAt = new();
        /// <summary>Instructions compiled code handed to the interpreter, by instruction form (Iced's Code).</summary>
        public readonly Dictionary<ulong, long> JitExecOf = new();
        /// <summary>Indexed by the reason code the dump prints (1 failed, 2 queued, 3 invalid, 4 cold, 5 other).</summary>
        public readonly long[] NotCompiledWhy = new long[6];
        public long NextDump = Environment.TickCount64 + 5000;
        public ulong LastRetired;
        public long LastTick = Environment.TickCount64;
        public long LastCpuNs = ThreadCpuNs();
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec ts);
    private struct TimeSpec { public long Sec, Nsec; }
    /// <summary>CLOCK_THREAD_CPUTIME_ID: the engine's rate per second of its own CPU, whatever else the host runs.</summary>
    private static long ThreadCpuNs() => ClockGetTime(3, out var ts) == 0 ? ts.Sec * 1_000_000_000 + ts.Nsec : 0;

    private StatCounters? _stats;
    /// <summary>Instructions compiled code handed to the interpreter (<see cref="JitExec"/>), all and in 32-bit code,
    /// since the vCPU started: what a boot's firmware and boot loader still leave to the interpreter.</summary>
    private long _jitExecsTotal, _jitExecs32Total;

    private void StatJitExec(ref DecodedInsn d)
    {
        var s = S;
        s.JitExecs++;
        Bump(s.JitExecOf, (ulong)d.I.Code);
        _jitExecsTotal++;
        if (Bitness == 32) { s.JitExecs32++; _jitExecs32Total++; }
    }
    private StatCounters S => _stats ??= new StatCounters();

    /// <summary>One hash lookup per count: the counters run on every dispatch of a fork/exec loop's
    /// interpreted kernel code (millions a second), where two lookups each made the daemon 72% slower
    /// and the run loop look twice its size in a profile.</summary>
    private static void Bump(Dictionary<ulong, long> counts, ulong key)
        => System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(counts, key, out _)++;

    private void StatDispatch(DecodedBlock b)
    {
        var s = S;
        s.Dispatches++;
        Bump(s.DispatchAt, b.Ip);
    }

    /// <summary>Why compiled code came back to the run loop rather than entering a successor itself.</summary>
    private void StatBackInRunLoop()
    {
        var s = S;
        s.Compiled++;
        if (Abort != 0 || Stop) s.BackStop++;
        else if (_hops <= 0) s.BackHops++;
        else if (_linkFrom != null) s.BackUnlinked++;
        else
        {
            s.BackOther++;
            Bump(s.BackOtherAt, Rip);
        }
    }

    private void StatInterpreted(DecodedBlock b, int n, bool single)
    {
        var s = S;
        s.Interpreted++;
        s.InterpretedInsns += n;
        if (single) { s.Singles++; Bump(s.SingleAt, b.Ip); }
        else
        {
            Bump(s.InterpretedAt, b.Ip);
            int why = b.JitFailed ? 1 : b.Compiled == null && b.Queued ? 2 : !b.Valid ? 3 : b.Compiled == null ? 4 : 5;
            s.NotCompiledWhy[why]++;
        }
    }

    private void StatExit(VcpuExitReason r)
    {
        var s = S;
        s.Exits++;
        s.ExitReasons[(int)r & 31]++;
        if (r == VcpuExitReason.Io) Bump(s.PortAt, _exit.Port | (_exit.IsWrite ? 0x10000UL : 0));
        long now = Environment.TickCount64;
        if (now < s.NextDump) return;
        s.NextDump = now + 5000;
        long cpuNs = ThreadCpuNs();
        double secs = (cpuNs - s.LastCpuNs) / 1e9;
        var w = new System.Text.StringBuilder();
        w.Append($"vcpu{Id} {(now - s.LastTick) / 1000.0:F1}s wall, {secs:F2}s cpu, per cpu-second: retired {(_retired - s.LastRetired) / secs / 1e6:F1} M/s, runs {s.RunCalls / secs:F0}/s, dispatches {s.Dispatches / secs:F0}/s, " +
            $"compiled {s.Compiled / secs:F0}/s (+{s.Chained / secs:F0}/s chained: {(s.ChainCalls - s.ChainNull) / secs:F0}/s direct hops through the helper (32-bit code, exits not linked yet) of {s.ChainCalls / secs:F0}/s asked, {(s.IndirectCalls - s.IndirectNull) / secs:F0}/s indirect of {s.IndirectCalls / secs:F0}/s asked, the rest 64-bit direct hops and branches within a method), interpreted {s.Interpreted / secs:F0}/s ({s.InterpretedInsns / secs:F0} insns/s, singles {s.Singles / secs:F0}/s), " +
            $"lookups {s.Lookups / secs:F0}/s (user {s.LookupsUser / secs:F0}/s, slot taken back {s.Revalidated / secs:F0}/s, successor shortcuts {s.SuccessorHits / secs:F0}/s), decodes {s.Decodes / secs:F0}/s, interpreter calls from compiled code {s.JitExecs / secs:F0}/s (32-bit {s.JitExecs32 / secs:F0}/s; since start {_jitExecsTotal}, 32-bit {_jitExecs32Total}), events {s.Events / secs:F0}/s, faults {s.Faults / secs:F0}/s, exits {s.Exits / secs:F0}/s\n  compiled code back in the run loop: hop budget {s.BackHops / secs:F0}/s, unlinked exit {s.BackUnlinked / secs:F0}/s, stop {s.BackStop / secs:F0}/s, other {s.BackOther / secs:F0}/s\n  flushes: tlb all {s.TlbFlushAll / secs:F0}/s, non-global {s.TlbFlushNonGlobal / secs:F0}/s, page {s.TlbFlushPage / secs:F0}/s; jump cache sup {s.JumpFlushSup / secs:F0}/s, user {s.JumpFlushUser / secs:F0}/s\n  exits:");
        for (int i = 0; i < 32; i++) if (s.ExitReasons[i] > 0) w.Append($" {(VcpuExitReason)i}={s.ExitReasons[i] / secs:F0}/s");
        w.Append("\n  ports (0x1xxxx writes):");
        foreach (var kv in s.PortAt.OrderByDescending(kv => kv.Value).Take(10)) w.Append($" {kv.Key:x}={kv.Value / secs:F0}/s");
        w.Append("\n  not compiled (1 failed, 2 queued, 3 invalid, 4 cold, 5 other):");
        for (int why = 1; why < s.NotCompiledWhy.Length; why++)
            if (s.NotCompiledWhy[why] > 0) w.Append($" {why}={s.NotCompiledWhy[why] / secs:F0}/s");
        w.Append("\n  handed to the interpreter by compiled code:");
        foreach (var kv in s.JitExecOf.OrderByDescending(kv => kv.Value).Take(30)) w.Append($" {(Iced.Intel.Code)kv.Key}={kv.Value / secs:F0}/s");
        w.Append("\n  interpreted at:");
        foreach (var kv in s.InterpretedAt.OrderByDescending(kv => kv.Value).Take(25)) w.Append($" {kv.Key:x}={kv.Value / secs:F0}");
        w.Append("\n  back in the run loop for other reasons, at:");
        foreach (var kv in s.BackOtherAt.OrderByDescending(kv => kv.Value).Take(25)) w.Append($" {kv.Key:x}={kv.Value / secs:F0}");
        w.Append("\n  single at:");
        foreach (var kv in s.SingleAt.OrderByDescending(kv => kv.Value).Take(15)) w.Append($" {kv.Key:x}={kv.Value / secs:F0}");
        w.Append("\n  dispatched at:");
        foreach (var kv in s.DispatchAt.OrderByDescending(kv => kv.Value).Take(3000)) w.Append($" {kv.Key:x}={kv.Value}");
        w.Append('\n');
        File.AppendAllText(StatsPath!, w.ToString());
        var fresh = new StatCounters { LastRetired = _retired, LastTick = now, LastCpuNs = cpuNs };
        _stats = fresh;
    }
}
