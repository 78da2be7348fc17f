using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// One deadline per pCPU (the end of the running slice, or when an idle pCPU must look again), fired with the kernel
/// timer's sub-ms precision (budgets, caps and ARINC653 windows need better than milliseconds). The thread sleeps on a
/// <see cref="HostTimer"/> armed for the earliest deadline, so setting one is a system call and wakes nobody: a vCPU
/// that blocks a few microseconds into its 30 ms slice, as an idle guest's does on every timer interrupt, costs no
/// switch to this thread, neither when its slice is set nor when the pCPU clears it to idle.
/// </summary>
internal sealed class SliceTimer : IDisposable
{
    private readonly Time _time;
    private readonly Action<int> _fire;
    private readonly long[] _deadline;
    private readonly HostTimer _timer = new();
    private readonly Thread _thread;
    private readonly object _lock = new();
    // The deadline the kernel timer is armed for (long.MaxValue: disarmed).
    private long _armed = long.MaxValue;
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
            if (_deadline[cpu] == when)
                return;
            _deadline[cpu] = when;
            ArmLocked();
        }
    }

    /// <summary>Arms the kernel timer for the earliest deadline, if that changed.</summary>
    private void ArmLocked()
    {
        long next = long.MaxValue;
        foreach (long d in _deadline)
            next = Math.Min(next, d);
        if (next == _armed || _stop)
            return;
        _armed = next;
        if (next == long.MaxValue)
            _timer.Disarm();
        else
            _timer.ArmIn(next - _time.NowNs);
    }

    private void Loop()
    {
        var due = new List<int>();
        while (true)
        {
            _timer.Wait();
            lock (_lock)
            {
                if (_stop)
                    return;
                long now = _time.NowNs;
                for (int i = 0; i < _deadline.Length; i++)
                    if (_deadline[i] <= now)
                    {
                        _deadline[i] = long.MaxValue;
                        due.Add(i);
                    }
                // The timer expired (or a signal ended the wait early): arm it again for what is left.
                _armed = long.MinValue;
                ArmLocked();
            }
            foreach (int cpu in due)
                _fire(cpu);
            due.Clear();
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_stop)
                return;
            _stop = true;
        }
        _timer.ArmIn(1);
        _thread.Join();
        _timer.Dispose();
    }
}
