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

    /// <summary>Queues <paramref name="b"/>; false when the queue is closed.</summary>
    public bool TryEnqueue(DecodedBlock b)
    {
        lock (_queue)
        {
            if (_disposed) return false;
            if (_queue.Count >= MaxQueued)
            {
                _queue[0].Queued = false;
                _queue.RemoveAt(0);
            }
            _queue.Add(b);
            if (_thread == null)
            {
                _thread = new Thread(Loop) { IsBackground = true, Name = "xensharp-jit", Priority = ThreadPriority.BelowNormal };
                _thread.Start();
            }
            else if (_queue.Count == 1) Monitor.Pulse(_queue);
            return true;
        }
    }

    private void Loop()
    {
        while (true)
        {
            DecodedBlock b;
            lock (_queue)
            {
                while (_queue.Count == 0 && !_disposed) Monitor.Wait(_queue);
                if (_disposed) return;
                b = _queue[^1];
                _queue.RemoveAt(_queue.Count - 1);
            }
            // Code rewritten meanwhile: the vCPU decodes it again and this copy is garbage.
            if (!b.Valid) continue;
            try
            {
                Compile(b, _engine, run: true);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A translator defect costs this block its compiled form, never the process.
                Failed(b, _engine, ex);
            }
        }
    }

    /// <summary>Translates <paramref name="b"/> and publishes the code; with <paramref name="run"/>
    /// the code is also called once with no vCPU (it returns at once), so that .NET compiles it
    /// on this thread rather than on the first vCPU to enter it.</summary>
    public static Action<X86Vcpu>? Compile(DecodedBlock b, X86Engine engine, bool run)
    {
        try
        {
            var code = BlockTranslator.Compile(b);
            if (run) code(null!);
            Volatile.Write(ref b.Compiled, code);
            Interlocked.Increment(ref engine.CompiledCount);
            return code;
        }
        catch (Exception ex) when (ex is NotSupportedException or InvalidProgramException)
        {
            Failed(b, engine, ex);
            return null;
        }
    }

    /// <summary>The block stays interpreted; the interpreter is the reference anyway.</summary>
    internal static void Failed(DecodedBlock b, X86Engine engine, Exception ex)
    {
        b.JitFailed = true;
        Interlocked.Increment(ref engine.JitFailureCount);
        engine.LastJitFailure = ex.Message;
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
