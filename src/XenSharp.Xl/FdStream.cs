using System.Runtime.InteropServices;
using System.Text;

namespace XenSharp.Xl;

/// <summary>
/// A standard file descriptor as a plain byte stream, through read(2) and write(2). xl does not use
/// .NET's console streams: the first write through them switches a terminal's cursor keys and keypad
/// to application mode, and reading through them edits and echoes lines itself. A FileStream would
/// keep its own file position, which breaks stdout and stderr redirected to one file.
/// </summary>
internal sealed partial class FdStream(int fd) : Stream
{
    private const int EINTR = 4;

    public static TextWriter Writer(int fd) =>
        new StreamWriter(new FdStream(fd), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false), 4096) { AutoFlush = true };

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override unsafe int Read(Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = read(fd, p, buffer.Length);
                if (n >= 0) return (int)n;
                int errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR) throw new IOException($"read from fd {fd} failed (errno {errno})");
            }
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override unsafe void Write(ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                nint n = write(fd, p + done, buffer.Length - done);
                if (n >= 0) { done += (int)n; continue; }
                int errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR) throw new IOException($"write to fd {fd} failed (errno {errno})");
            }
        }
    }

    public override void Flush() { }
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint read(int fd, byte* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint write(int fd, byte* buf, nint count);
}
