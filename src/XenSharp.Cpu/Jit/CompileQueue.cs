using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>
/// Compiles hot blocks on one background thread per engine while the vCPUs keep interpreting
/// them: translating a block and having .NET compile the IL costs thousands of interpreted runs,
/// which a boot (much code, little of it run often) would otherwise pay on the vCPU's thread.
/// </summary>
internal sealed class CompileQueue : IDisposable
{
    /// <summary>Hot blocks waiting; beyond this the longest-waiting one is let go (it is offered again
    /// if it runs again).</summary>
    private const int MaxQueued = 512;

    private readonly X86Engine _engine;
    // The newest first: when a boot makes blocks hot faster than they compile, the one the vCPU runs now is
    // worth more than one queued long ago, which may be code run in a burst (a loop at boot) and no more.
    private readonly List<DecodedBlock> _queue = new();
    private Thread? _thread;
    private bool _disposed;

    public CompileQueue(X86Engine engine) => _engine = engine;

    /// <summary>Queues <paramref name="b"/> unless it waits already; false when the queue is closed.
    /// <see cref="DecodedBlock.Queued"/> is written only here, under the lock: vCPUs that make a block hot
    /// together would otherwise each queue it and have it compiled twice.</summary>
    public bool TryEnqueue(DecodedBlock b)
    {
        lock (_queue)
        {
            if (_disposed) return false;
            if (b.Queued) return true;
            if (_queue.Count >= MaxQueued)
            {
                _queue[0].Queued = false;
                _queue.RemoveAt(0);
            }
            _queue.Add(b);
            b.Queued = true;
            if (_thread == null)
            {
                // Not below normal: a booting guest's vCPU waits on what this thread compiles (bench/README.md).
                _thread = new Thread(Loop) { IsBackground = true, Name = "xensharp-jit" };
                _thread.Start();
            }
            else if (_queue.Count == 1) Monitor.Pulse(_queue);
            return true;
        }
    }

    /// <summary>Blocks compiled together into one method at most, and the guest instructions they
    /// may hold: the .NET JIT's fixed cost per method is about that of a few dozen instructions'
    /// code, while very large methods cost more per instruction (register allocation).</summary>
    internal const int MaxBatch = 8, MaxBatchInsns = 160;

    private void Loop()
    {
        var batch = new List<DecodedBlock>(MaxBatch);
        while (true)
        {
            batch.Clear();
            lock (_queue)
            {
                while (_queue.Count == 0 && !_disposed) Monitor.Wait(_queue);
                if (_disposed) return;
                // The newest first; whatever else is waiting rides along, up to the batch's limits.
                int insns = 0;
                while (_queue.Count > 0 && batch.Count < MaxBatch)
                {
                    var b = _queue[^1];
                    if (batch.Count > 0 && insns + b.Count > MaxBatchInsns) break;
                    _queue.RemoveAt(_queue.Count - 1);
                    // Code rewritten meanwhile: the vCPU decodes it again and this copy is garbage.
                    if (!b.Valid || b.Compiled != null) continue;
                    batch.Add(b);
                    insns += b.Count;
                }
            }
            if (batch.Count == 0) continue;
            AddSuccessors(batch);
            try
            {
                CompileBatch(batch, _engine);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A translator defect costs these blocks their compiled form, never the process.
                foreach (var b in batch) Failed(b, _engine, ex);
            }
        }
    }

    /// <summary>Adds to <paramref name="batch"/> the blocks of the loops its 64-bit blocks are in: same-page successors
    /// they went to when interpreted (<see cref="DecodedBlock.NextFall"/>, <see cref="DecodedBlock.NextOther"/>), and
    /// theirs, that have run a quarter of the threshold and lead back to a block of the batch. The blocks of a loop
    /// become hot one by one; compiled into one method they branch into each other's bodies with the registers kept
    /// in locals rather than hopping from method to method. Code that only runs on from a hot block is left to become
    /// hot itself, so that a boot compiles no more than it did.</summary>
    private void AddSuccessors(List<DecodedBlock> batch)
    {
        int insns = 0;
        foreach (var b in batch) insns += b.Count;
        int hits = _engine.Jit.Threshold / 4;
        var found = new List<DecodedBlock>();
        for (int k = 0; k < batch.Count + found.Count && found.Count < MaxBatch; k++)
        {
            var b = k < batch.Count ? batch[k] : found[k - batch.Count];
            if (b.Bitness != 64) continue;
            Consider(b.NextFall);
            Consider(b.NextOther);
        }
        // Keep those from which a block of the batch is reached again.
        bool grew = true;
        var loop = new HashSet<DecodedBlock>(batch);
        while (grew)
        {
            grew = false;
            foreach (var s in found)
                if (!loop.Contains(s) && (s.NextFall is { } f && loop.Contains(f) || s.NextOther is { } o && loop.Contains(o)))
                    grew = loop.Add(s);
        }
        foreach (var s in found)
        {
            if (batch.Count >= MaxBatch || insns + s.Count > MaxBatchInsns) break;
            if (!loop.Contains(s)) continue;
            batch.Add(s);
            insns += s.Count;
        }

        void Consider(DecodedBlock? s)
        {
            if (s == null || found.Count >= MaxBatch) return;
            if (!s.Valid || s.Compiled != null || s.JitFailed || s.Bitness != 64 || s.Hits < hits || batch.Contains(s) || found.Contains(s)) return;
            found.Add(s);
        }
    }

    /// <summary>Compiles <paramref name="batch"/> into one method on this thread and publishes each
    /// block's entry; when that fails, each block is compiled alone so one bad block costs only itself.</summary>
    internal static void CompileBatch(List<DecodedBlock> batch, X86Engine engine)
    {
        if (batch.Count > 1)
        {
            try
            {
                long t0 = Profile.Now();
                var method = BlockTranslator.CompileBatch(batch, out int il, out int warm, engine.RejectIlForTests);
                long t1 = Profile.Now();
                // .NET compiles it here rather than on the first vCPU to enter it.
                method.Prepare();
                Profile.Add(batch, il, t0, t1);
                for (int k = 0; k < method.Count; k++) Publish(batch, k, method, engine);
                Interlocked.Add(ref engine.WarmBranchCount, warm);
                return;
            }
            catch (Exception ex) when (ex is NotSupportedException or InvalidProgramException)
            {
                // Below: one at a time, to find the block at fault.
            }
        }
        foreach (var b in batch) Compile(b, engine);
    }

    /// <summary>Makes body <paramref name="body"/> of <paramref name="method"/> the code of block <paramref name="body"/>
    /// of <paramref name="batch"/>: the links of its branches into other bodies first, the entry word last.</summary>
    private static void Publish(IReadOnlyList<DecodedBlock> batch, int body, CompiledMethod method, X86Engine engine)
    {
        var b = batch[body];
        foreach (var w in method.WarmLinks)
            if (w.Body == body) b.SetLink(w.Slot, batch[w.Target]);
        b.Compiled = method;
        Volatile.Write(ref b.Entry, method.EntryOf(body));
        Interlocked.Increment(ref engine.CompiledCount);
    }

    /// <summary>Translates <paramref name="b"/>, has .NET compile it on this thread (a call with no vCPU, which
    /// returns at once) and publishes the code. IL that .NET rejects fails here, before any vCPU can enter it: a
    /// published block is entered through links from other compiled blocks too, where a rejection would surface
    /// only after those had run.</summary>
    public static bool Compile(DecodedBlock b, X86Engine engine)
    {
        try
        {
            long t0 = Profile.Now();
            var method = BlockTranslator.CompileBatch([b], out int il, out int warm, engine.RejectIlForTests);
            long t1 = Profile.Now();
            method.Prepare();
            Profile.Add([b], il, t0, t1);
            Publish([b], 0, method, engine);
            Interlocked.Add(ref engine.WarmBranchCount, warm);
            return true;
        }
        catch (Exception ex) when (ex is NotSupportedException or InvalidProgramException)
        {
            Failed(b, engine, ex);
            return false;
        }
    }

    /// <summary>The block stays interpreted; the interpreter is the reference anyway.</summary>
    internal static void Failed(DecodedBlock b, X86Engine engine, Exception ex)
    {
        b.JitFailed = true;
        Interlocked.Increment(ref engine.JitFailureCount);
        engine.LastJitFailure = ex.Message;
    }

    /// <summary>With XENSHARP_ENGINE_STATS=path the compiler thread appends what its work costs: methods,
    /// blocks, guest instructions and IL bytes compiled, and its own CPU time split between translating
    /// to IL and the .NET JIT compiling that IL. Only the compiler thread counts.</summary>
    private static class Profile
    {
        private static readonly string? Path = Environment.GetEnvironmentVariable("XENSHARP_ENGINE_STATS") is { Length: > 0 } p ? p : null;
        private static long s_methods, s_blocks, s_insns, s_il, s_translateNs, s_jitNs, s_nextDump = 64;

        public static long Now() => Path == null ? 0 : ThreadCpuNs();

        /// <summary>Accounts a method translated between <paramref name="t0"/> and <paramref name="t1"/> and compiled by .NET until now.</summary>
        public static void Add(IReadOnlyList<DecodedBlock> blocks, int il, long t0, long t1)
        {
            if (Path == null) return;
            long t2 = ThreadCpuNs();
            s_methods++; s_blocks += blocks.Count; s_il += il; s_translateNs += t1 - t0; s_jitNs += t2 - t1;
            foreach (var b in blocks) s_insns += b.Count;
            if (s_methods < s_nextDump) return;
            s_nextDump = s_methods * 2;
            File.AppendAllText(Path, $"jit: {s_methods} methods, {s_blocks} blocks, {s_insns} insns, {s_il} IL bytes; cpu {s_translateNs / 1e9:F2}s translating, " +
                $"{s_jitNs / 1e9:F2}s in the .NET JIT ({(s_translateNs + s_jitNs) / 1e3 / s_blocks:F0} us a block, {(s_translateNs + s_jitNs) / 1e3 / s_insns:F1} us an instruction)\n");
        }

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "clock_gettime")]
        private static extern int ClockGetTime(int clock, out TimeSpec ts);
        private struct TimeSpec { public long Sec, Nsec; }
        private static long ThreadCpuNs() => ClockGetTime(3, out var ts) == 0 ? ts.Sec * 1_000_000_000 + ts.Nsec : 0;
    }

    public void Dispose()
    {
        lock (_queue)
        {
            _disposed = true;
            _queue.Clear();
            Monitor.PulseAll(_queue);
        }
    }
}
