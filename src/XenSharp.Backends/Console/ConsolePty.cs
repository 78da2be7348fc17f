using System.Runtime.InteropServices;
using System.Text;

namespace XenSharp.Backends.Console;

/// <summary>
/// A console served on a pseudo-terminal, as xenconsoled serves a domain's console for Xen's own xenconsole client
/// (which reads the pty's path from the domain's console/tty node): the guest's output goes to the pty's master,
/// keystrokes read from it go to the guest's input ring. The slave is kept open here, in raw mode, so output waits
/// in the pty and nothing is lost between clients. The master is non-blocking: a full pty makes the writer wait on a
/// timer, never a thread.
/// </summary>
public sealed partial class ConsolePty : IDisposable
{
    private const int O_RDWR = 2, O_NOCTTY = 0x100, O_NONBLOCK = 0x800, F_GETFL = 3, F_SETFL = 4, EAGAIN = 11, EINTR = 4;
    private const short POLLIN = 1;
    private const int TCSANOW = 0;

    private readonly int _master, _slave;
    private readonly ConsoleBackend _backend;
    private readonly MasterStream _stream;
    private readonly Thread _reader;
    private volatile bool _disposed;

    /// <summary>The slave's path (/dev/pts/N), what xenconsoled writes to console/tty.</summary>
    public string Path { get; }

    private ConsolePty(int master, int slave, string path, ConsoleBackend backend)
    {
        _master = master;
        _slave = slave;
        Path = path;
        _backend = backend;
        _stream = new MasterStream(this);
        _reader = new Thread(ReadKeys) { IsBackground = true, Name = $"console-pty-{backend.Name}" };
    }

    /// <summary>Opens a pty for <paramref name="backend"/> and attaches it as the console's client.</summary>
    public static ConsolePty Open(ConsoleBackend backend)
    {
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0)
            throw new IOException($"cannot open a pseudo-terminal (errno {Marshal.GetLastPInvokeError()})");
        int slave = -1;
        try
        {
            var name = new byte[128];
            if (grantpt(master) != 0 || unlockpt(master) != 0 || ptsname_r(master, name, name.Length) != 0)
                throw new IOException($"cannot set up a pseudo-terminal (errno {Marshal.GetLastPInvokeError()})");
            string path = Encoding.ASCII.GetString(name, 0, Array.IndexOf(name, (byte)0));
            slave = open(path, O_RDWR | O_NOCTTY);
            if (slave < 0)
                throw new IOException($"cannot open {path} (errno {Marshal.GetLastPInvokeError()})");
            // Raw: the guest's bytes pass as they are, in both directions (xenconsoled's cfmakeraw).
            var termios = new byte[128];
            if (tcgetattr(slave, termios) == 0)
            {
                cfmakeraw(termios);
                tcsetattr(slave, TCSANOW, termios);
            }
            fcntl(master, F_SETFL, fcntl(master, F_GETFL, 0) | O_NONBLOCK);
            var pty = new ConsolePty(master, slave, path, backend);
            if (!backend.Attach(pty._stream))
                throw new IOException($"the console of {backend.Name} already has a client");
            pty._reader.Start();
            return pty;
        }
        catch
        {
            if (slave >= 0) close(slave);
            close(master);
            throw;
        }
    }

    /// <summary>Keystrokes from whoever has the slave open go into the guest's input ring.</summary>
    private void ReadKeys()
    {
        var buf = new byte[1024];
        var fds = new PollFd[1];
        while (!_disposed)
        {
            fds[0] = new PollFd { Fd = _master, Events = POLLIN };
            if (poll(fds, 1, 200) <= 0)
                continue;
            int n = (int)read(_master, buf, buf.Length);
            if (n <= 0)
            {
                int e = Marshal.GetLastPInvokeError();
                if (n < 0 && (e == EAGAIN || e == EINTR))
                    continue;
                Thread.Sleep(50); // EIO while no slave is open: keep serving until disposed
                continue;
            }
            int off = 0;
            while (off < n && !_disposed)
            {
                int w = _backend.WriteInput(buf.AsSpan(off, n - off));
                if (w == 0)
                    Thread.Sleep(10); // the input ring is full until the guest reads it
                off += w;
            }
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _backend.Detach(_stream);
        if (Thread.CurrentThread != _reader && _reader.IsAlive)
            _reader.Join(TimeSpan.FromSeconds(1));
        close(_slave);
        close(_master);
    }

    /// <summary>The master as the console backend's client stream: writes only.</summary>
    private sealed class MasterStream(ConsolePty pty) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) =>
            WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct = default)
        {
            while (!data.IsEmpty)
            {
                ObjectDisposedException.ThrowIf(pty._disposed, this);
                long n = WriteSome(pty._master, data.Span);
                if (n > 0)
                {
                    data = data[(int)n..];
                    continue;
                }
                int e = Marshal.GetLastPInvokeError();
                if (n < 0 && e != EAGAIN && e != EINTR)
                    throw new IOException($"console pty write failed (errno {e})");
                // Full: nobody is reading the slave. Wait, holding no thread.
                await Task.Delay(20, ct).ConfigureAwait(false);
            }
        }

        private static unsafe long WriteSome(int fd, ReadOnlySpan<byte> data)
        {
            fixed (byte* p = data)
                return write(fd, p, (nuint)data.Length);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int posix_openpt(int flags);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int grantpt(int fd);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int unlockpt(int fd);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int ptsname_r(int fd, [Out] byte[] buf, nint len);
    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcgetattr(int fd, [Out] byte[] termios);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcsetattr(int fd, int action, byte[] termios);
    [LibraryImport("libc")]
    private static partial void cfmakeraw([In, Out] byte[] termios);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll([In, Out] PollFd[] fds, nuint nfds, int timeout);
    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, [Out] byte[] buf, nint count);
    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint write(int fd, byte* buf, nuint count);
}
