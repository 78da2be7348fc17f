using System.Collections.Concurrent;

namespace XenSharp.Backends;

/// <summary>Work a backend has queued on its I/O thread.</summary>
public interface IBackendWork
{
    /// <summary>Runs on the I/O thread. An exception here ends only this piece of work's device.</summary>
    void RunQueued();
}

/// <summary>
/// A host thread that does a kind of backend's work, so that a guest's notification costs its pCPU no
/// more than a flag and a wake-up: event-channel callbacks and xenstore watches only queue the device
/// (<see cref="Schedule"/>), and the ring processing, log writes and xenbus transitions run here.
/// </summary>
public sealed class BackendIoThread : IDisposable
{
    private readonly ConcurrentQueue<IBackendWork> _queue = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _thread;
    private volatile bool _stopping;

    public BackendIoThread(string name)
    {
        Name = name;
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>The thread's name ("backend-KIND").</summary>
    public string Name { get; }

    /// <summary>True on this I/O thread.</summary>
    public bool IsCurrent => Thread.CurrentThread == _thread;

    /// <summary>Queues work; callers coalesce repeated schedules of the same work themselves.</summary>
    public void Schedule(IBackendWork work)
    {
        if (_stopping) return;
        _queue.Enqueue(work);
        _wake.Release();
    }

    private void Loop()
    {
        while (true)
        {
            _wake.Wait();
            if (_stopping && _queue.IsEmpty) return;
            while (_queue.TryDequeue(out var w))
            {
                try { w.RunQueued(); }
                catch (Exception e) { System.Console.Error.WriteLine($"xensharpd: {Name}: {e.GetType().Name}: {e.Message}"); }
            }
        }
    }

    /// <summary>Runs what is queued, then stops the thread.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _wake.Release();
        if (!IsCurrent) _thread.Join(TimeSpan.FromSeconds(10));
    }
}
