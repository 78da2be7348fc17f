using System.Runtime.InteropServices;

namespace XenSharp.Backends.Net;

/// <summary>
/// How a vif's host side tells its backend that frames wait: a thread of the port waits in poll(2) on the port's fd
/// only while the backend has asked, tells it once when the fd becomes readable, and waits until the backend has
/// drained the fd and asks again (<see cref="Rearm"/>). An eventfd ends the wait when the port closes.
/// </summary>
internal sealed unsafe partial class ReadinessWatch : IDisposable
{
    private const int EFD_NONBLOCK = 0x800, EFD_CLOEXEC = 0x80000;
    private const short POLLIN = 1;
    private const int EINTR = 4;

    private readonly int _fd, _stop;
    private readonly string _threadName;
    private readonly SemaphoreSlim _armed = new(0);
    private int _watching;
    private Thread? _thread;
    private Action? _readable;
    private volatile bool _disposed;

    /// <summary>Watches <paramref name="fd"/> (which stays the caller's); an <see cref="IOException"/> when the host
    /// gives no eventfd.</summary>
    public ReadinessWatch(int fd, string threadName)
    {
        _fd = fd;
        _threadName = threadName;
        _stop = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (_stop < 0)
            throw new IOException($"eventfd: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
    }

    /// <summary>Starts watching: <paramref name="readable"/> runs, on the watch thread, each time the fd turns readable
    /// after <see cref="Start"/> or <see cref="Rearm"/>.</summary>
    public void Start(Action readable)
    {
        if (_thread is not null) return;
        _readable = readable;
        _watching = 1;
        _armed.Release();
        _thread = new Thread(Watch) { IsBackground = true, Name = _threadName };
        _thread.Start();
    }

    /// <summary>The backend drained the fd: watch again. A frame that arrived meanwhile is seen by the next poll.</summary>
    public void Rearm()
    {
        if (Interlocked.Exchange(ref _watching, 1) == 0) _armed.Release();
    }

    private void Watch()
    {
        var fds = stackalloc PollFd[2];
        while (true)
        {
            _armed.Wait();
            if (_disposed) return;
            fds[0] = new PollFd { Fd = _fd, Events = POLLIN };
            fds[1] = new PollFd { Fd = _stop, Events = POLLIN };
            int n = poll(fds, 2, -1);
            if (_disposed) return;
            if (n < 0)
            {
                if (Marshal.GetLastPInvokeError() == EINTR) { _armed.Release(); continue; }
                return;
            }
            if (fds[0].Revents != 0)
            {
                Volatile.Write(ref _watching, 0);
                _readable?.Invoke();
            }
            else _armed.Release();
        }
    }

    /// <summary>Ends the watch thread and closes the eventfd; the watched fd is the caller's to close afterwards.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ulong one = 1;
        _ = write(_stop, (byte*)&one, 8);
        _armed.Release();
        _thread?.Join(TimeSpan.FromSeconds(5));
        close(_stop);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int eventfd(uint initval, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(PollFd* fds, ulong nfds, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, byte* buf, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
