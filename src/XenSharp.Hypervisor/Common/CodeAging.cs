namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Keeps each domain's cached code to what it runs. Most of what a guest decodes and compiles is boot and init code
/// that runs once; an idle guest runs a small part of the rest. Every <see cref="PeriodNs"/> each domain's engine
/// drops the blocks that did not run in the last period (<see cref="Cpu.ICpuEngine.AgeCode"/>), on a thread-pool
/// thread rather than the timer wheel's, and when that freed much, the host heap is trimmed so that the memory
/// goes back to the host rather than waiting for a collection an idle daemon would never run.
/// </summary>
internal sealed class CodeAging
{
    public const long PeriodNs = 10_000_000_000;

    /// <summary>Blocks dropped in one pass (tens of MiB of decoded and compiled code after a boot) worth a heap trim.</summary>
    private const int TrimHeapAfterBlocks = 4096;

    private readonly HostServices _host;
    private readonly bool _trimHeap;
    private int _running;

    public CodeAging(HostServices host, bool trimHeap)
    {
        _host = host;
        _trimHeap = trimHeap;
    }

    public void Start() => _host.Timers.Schedule(_host.Time.NowNs + PeriodNs, this, TimerKind.CodeAging);

    /// <summary>The period ended (on the timer thread).</summary>
    public void Fire()
    {
        if (Interlocked.Exchange(ref _running, 1) == 0)
            ThreadPool.UnsafeQueueUserWorkItem(static a => a.Pass(), this, preferLocal: false);
        Start();
    }

    /// <summary>Ages every live domain's code now; returns the blocks dropped.</summary>
    public int Pass()
    {
        int dropped = 0;
        try
        {
            foreach (var d in _host.AllDomains())
            {
                if (d.IsDying || d.Engine is not { } engine)
                    continue;
                try
                {
                    dropped += engine.AgeCode();
                }
                catch (ObjectDisposedException)
                {
                    // Destroyed meanwhile: its code went with it.
                }
            }
            if (_trimHeap && dropped >= TrimHeapAfterBlocks)
                HostHeap.RequestTrim();
        }
        finally
        {
            Volatile.Write(ref _running, 0);
        }
        return dropped;
    }
}
