using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// One deadline per pCPU (the end of the running slice, or when an idle pCPU must look again), fired with sub-ms
/// precision: the thread sleeps on a monitor for the bulk of the wait and with nanosleep for the last stretch,
/// since monitor waits only have millisecond granularity and budgets, caps and ARINC653 windows need better.
/// </summary>
internal sealed partial class SliceTimer : IDisposable
{
    private const long FineWaitNs = 2_000_000;

    private readonly Time _time;
    private readonly Action<int> _fire;
    private readonly long[] _deadline;
    private readonly Thread _thread;
    private readonly object _lock = new();
    private bool _stop;

    public SliceTimer(Time time, int pcpus, Action<int> fire)
    {
        _time = time;
        _fire = fire;
        _deadline = new long[pcpus];
        Array.Fill(_deadline, long.MaxValue);
        _thread = new Thread(Loop) { IsBackground = true, Name = "xen-slice-timer" };
        _thread.Start();
    }

    public void Set(int cpu, long when)
    {
        lock (_lock)
        {
            long old = _deadline[cpu];
            _deadline[cpu] = when;
            if (when < old)
                Monitor.Pulse(_lock);
        }
    }

    private void Loop()
    {
        var due = new List<int>();
        while (true)
        {
            long sleepNs = 0;
            lock (_lock)
            {
                if (_stop)
                    return;
                long next = long.MaxValue;
                long now = _time.NowNs;
                for (int i = 0; i < _deadline.Length; i++)
                {
                    if (_deadline[i] <= now)
                    {
                        _deadline[i] = long.MaxValue;
                        due.Add(i);
                    }
                    else
                        next = Math.Min(next, _deadline[i]);
                }
                if (due.Count == 0)
                {
                    long wait = next - now;
                    if (wait > FineWaitNs)
                    {
                        Monitor.Wait(_lock, (int)Math.Min(1000, (wait - FineWaitNs / 2) / 1_000_000));
                        continue;
                    }
                    sleepNs = wait;
                }
            }
            foreach (int cpu in due)
                _fire(cpu);
            due.Clear();
            if (sleepNs > 0)
                Sleep(sleepNs);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Sec;
        public long Nsec;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int nanosleep(in Timespec req, nint rem);

    private static void Sleep(long ns)
    {
        var ts = new Timespec { Sec = ns / 1_000_000_000, Nsec = ns % 1_000_000_000 };
        nanosleep(in ts, 0);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _stop = true;
            Monitor.Pulse(_lock);
        }
        _thread.Join();
    }
}
