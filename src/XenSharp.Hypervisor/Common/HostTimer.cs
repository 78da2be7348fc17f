using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// A kernel timer (a timerfd on CLOCK_MONOTONIC, the clock system time is read from) that one thread sleeps on.
/// Arming, moving or disarming it is one system call that wakes nobody, the way Xen reprograms a pCPU's timer
/// hardware: a guest re-arming its singleshot timer, or a pCPU setting the end of a slice its vCPU leaves long
/// before, costs no thread switch. The waiting thread wakes only when the armed time really comes, with the
/// kernel's high-resolution precision.
/// </summary>
internal sealed unsafe partial class HostTimer : IDisposable
{
    private const int CLOCK_MONOTONIC = 1;
    private const int TFD_CLOEXEC = 0x80000;
    private const int EINTR = 4;

    private readonly int _fd;
    private int _closed;

    public HostTimer()
    {
        _fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
        if (_fd < 0)
            throw new IOException($"timerfd_create failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>Arms the timer to expire <paramref name="ns"/> from now (at once for 0 or less), replacing any earlier
    /// setting and any expiry not yet waited for.</summary>
    public void ArmIn(long ns) => Set(Math.Max(ns, 1));

    /// <summary>Disarms the timer; a waiting thread sleeps on until it is armed again.</summary>
    public void Disarm() => Set(0);

    private void Set(long ns)
    {
        var spec = new ITimerSpec { ValueSec = ns / 1_000_000_000, ValueNsec = ns % 1_000_000_000 };
        timerfd_settime(_fd, 0, in spec, 0);
    }

    /// <summary>Sleeps until the timer expires (or returns at once if it did since the last wait). A signal may end
    /// the wait early: callers re-check their deadlines.</summary>
    public void Wait()
    {
        ulong expirations;
        if (read(_fd, &expirations, sizeof(ulong)) < 0 && Marshal.GetLastPInvokeError() != EINTR)
            Thread.Sleep(1); // never spin if the descriptor failed
    }

    /// <summary>Closes the descriptor; the waiting thread must have been woken (<see cref="ArmIn"/>) and joined first.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
            close(_fd);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct ITimerSpec
    {
        public long IntervalSec, IntervalNsec, ValueSec, ValueNsec;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int timerfd_create(int clockid, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int timerfd_settime(int fd, int flags, in ITimerSpec newValue, nint oldValue);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, void* buf, nint count);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
