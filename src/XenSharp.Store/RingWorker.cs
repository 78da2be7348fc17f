using System.Collections.Concurrent;

namespace XenSharp.Store;

/// <summary>
/// The thread that services guest rings. A guest's event channel kick only queues its ring here,
/// so the kicker (a vCPU thread) never waits for the store lock, and ring service does not depend
/// on the thread pool having a free thread.
/// </summary>
internal sealed class RingWorker : IDisposable
{
    private readonly ConcurrentQueue<RingConnection> _queue = new();
    private readonly AutoResetEvent _wake = new(false);
    private readonly Thread _thread;
    private volatile bool _stop;

    public RingWorker()
    {
        _thread = new Thread(Run) { IsBackground = true, Name = "xenstored rings" };
        _thread.Start();
    }

    public void Enqueue(RingConnection ring)
    {
        _queue.Enqueue(ring);
        _wake.Set();
    }

    private void Run()
    {
        while (!_stop)
        {
            while (_queue.TryDequeue(out RingConnection? ring))
            {
                try
                {
                    ring.Service();
                }
                catch (Exception ex)
                {
                    // A defect must not take the whole store down with one guest.
                    Console.Error.WriteLine($"xenstored: ring of domain {ring.DomId}: {ex}");
                }
            }
            _wake.WaitOne();
        }
    }

    public void Dispose()
    {
        _stop = true;
        _wake.Set();
        _thread.Join(TimeSpan.FromSeconds(5));
    }
}
