using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Hypervisor;
using XenSharp.Public;
using static XenSharp.Daemon.Privcmd.PrivcmdProtocol;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// One library handle: its first request (OPEN) says what it is — hypercalls with a buffer memfd, event channels
/// with a pipe, foreign memory or grant tables — and later requests are answered by that handle. Garbage (a short or
/// oversized message, an unknown op, an op of another kind) is answered with -EINVAL or -ENOSYS and the connection
/// goes on; nothing a client sends can fault the daemon.
/// </summary>
internal sealed class PrivcmdConnection : IDisposable
{
    private readonly int _fd;
    private readonly XenHypervisor _hv;
    private IPrivcmdHandle? _handle;
    private int _disposed;

    public PrivcmdConnection(int fd, XenHypervisor hv)
    {
        _fd = fd;
        _hv = hv;
    }

    public unsafe void Serve()
    {
        var buffer = new byte[sizeof(PrivcmdRequest) + MaxPayload + 8];
        Span<int> fds = stackalloc int[UnixNative.MaxFds];
        while (true)
        {
            int n = UnixNative.Receive(_fd, buffer, fds, out int fdCount, out bool truncated);
            if (n <= 0)
                return; // the program closed its handle, exited or was killed
            var received = fds[..fdCount];
            PrivcmdReply reply = default;
            var extras = new ReplyExtras();
            try
            {
                if (truncated || n < sizeof(PrivcmdRequest))
                    reply.Result = -Errno.EINVAL;
                else
                    reply.Result = Handle(MemoryMarshal.Read<PrivcmdRequest>(buffer),
                        buffer.AsSpan(sizeof(PrivcmdRequest), n - sizeof(PrivcmdRequest)), received, ref reply, ref extras);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Console.Error.WriteLine($"xensharpd: privcmd request failed: {e.Message}");
                reply.Result = -Errno.EINVAL;
            }
            finally
            {
                // Descriptors a request did not keep are closed here (a handler that keeps one sets it to -1).
                foreach (int fd in received)
                    if (fd >= 0)
                        UnixNative.close(fd);
            }
            if (reply.Result == NoReply)
                continue;
            bool sent = Reply(reply, extras);
            if (!sent)
                return;
        }
    }

    /// <summary>Bytes a request may carry after its fixed part (a batch of frame numbers, or grant copy segments
    /// with the pages they write).</summary>
    public const int MaxPayload = MaxCopy * (GrantCopySize + 4096);

    /// <summary>Bytes a reply may carry after its fixed part (grant copy statuses with the pages read).</summary>
    public const int MaxReplyTail = MaxCopy * (sizeof(short) + 4096);

    /// <summary>One reply at a time per connection: its buffer is reused.</summary>
    private readonly byte[] _send = new byte[Unsafe.SizeOf<PrivcmdReply>() + MaxReplyTail];

    /// <summary>Sends the reply, its tail and its descriptor; the descriptor's reference is released.</summary>
    private unsafe bool Reply(in PrivcmdReply reply, in ReplyExtras extras)
    {
        int tail = extras.Payload.Length;
        var message = tail <= MaxReplyTail ? _send.AsSpan(0, sizeof(PrivcmdReply) + tail) : new byte[sizeof(PrivcmdReply) + tail];
        MemoryMarshal.Write(message, in reply);
        extras.Payload.Span.CopyTo(message[sizeof(PrivcmdReply)..]);
        if (extras.Fd is null)
            return UnixNative.Send(_fd, message);
        try
        {
            return UnixNative.Send(_fd, message, (int)extras.Fd.DangerousGetHandle());
        }
        finally
        {
            extras.Fd.DangerousRelease();
        }
    }

    private unsafe long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, Span<int> fds, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        if (r.Op == OpOpen)
        {
            if (!payload.IsEmpty)
                return -Errno.EINVAL;
            if (_handle is not null)
                return -Errno.EBUSY;
            if (r.Arg[1] != PrivcmdProtocol.Version)
                return -EPROTO;
            long rc = Open(r.Arg[0], r, fds, out _handle);
            return rc;
        }
        if (_handle is null)
            return -Errno.EBADF;
        return _handle.Handle(r, payload, ref reply, ref extras);
    }

    private unsafe long Open(ulong kind, in PrivcmdRequest r, Span<int> fds, out IPrivcmdHandle? handle)
    {
        handle = null;
        switch (kind)
        {
            case KindXencall:
            {
                if (fds.Length != 1)
                    return -Errno.EINVAL;
                long rc = XencallHandle.Open(_hv, fds[0], r.Arg[2], r.Arg[3], out var x);
                handle = x;
                return rc;
            }
            case KindEvtchn:
            {
                if (fds.Length != 2)
                    return -Errno.EINVAL;
                long rc = EvtchnHandle.Open(_hv, fds[0], fds[1], out var e);
                if (rc == 0)
                    fds[0] = -1; // kept: the handle writes pending ports to it
                handle = e;
                return rc;
            }
            case KindForeignMemory:
                handle = new ForeignMemoryHandle(_hv);
                return 0;
            case KindGnttab:
                handle = new GnttabHandle(_hv);
                return 0;
            case KindGntshr:
                handle = new GntshrHandle(_hv);
                return 0;
            default:
                return -Errno.EINVAL;
        }
    }

    /// <summary>Wakes the serving thread (the daemon is stopping); it then disposes the connection.</summary>
    public void Hangup() => UnixNative.Shutdown(_fd);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _handle?.Dispose();
        UnixNative.close(_fd);
    }
}

/// <summary>What a connection is once opened: one per library handle kind.</summary>
internal interface IPrivcmdHandle : IDisposable
{
    /// <summary>Answers one request (<paramref name="payload"/>: what followed its fixed part): ≥ 0 or -errno, with
    /// anything more in <paramref name="reply"/> and <paramref name="extras"/>.</summary>
    long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras);
}

/// <summary>What a reply may carry beyond its fixed part: bytes after it, and one descriptor (whose SafeHandle
/// reference the connection releases once sent).</summary>
internal struct ReplyExtras
{
    public ReadOnlyMemory<byte> Payload;
    public Microsoft.Win32.SafeHandles.SafeFileHandle? Fd;
}
