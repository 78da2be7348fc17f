using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>
/// Compiles hot blocks on one background thread per engine while the vCPUs keep interpreting
/// them: translating a block and having .NET compile the IL costs thousands of interpreted runs,
/// which a boot (much code, little of it run often) would otherwise pay on the vCPU's thread.
/// </summary>
internal sealed class CompileQueue : IDisposable
{
    /// <summary>Hot blocks waiting beyond this are refused and offered again on a later run.</summary>
    private const int MaxQueued = 512;

    private readonly X86Engine _engine;
    private readonly Queue<DecodedBlock> _queue = new();
    private Thread? _thread;
    private bool _disposed;

    public CompileQueue(X86Engine engine) => _engine = engine;

    /// <summary>Queues <paramref name="b"/>; false when the queue is full or closed.</summary>
    public bool TryEnqueue(DecodedBlock b)
    {
        lock (_queue)
        {
            if (_disposed || _queue.Count >= MaxQueued) return false;
            _queue.Enqueue(b);
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
                b = _queue.Dequeue();
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
