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
        Span<byte> buffer = stackalloc byte[sizeof(PrivcmdRequest) + 8];
        Span<int> fds = stackalloc int[UnixNative.MaxFds];
        while (true)
        {
            int n = UnixNative.Receive(_fd, buffer, fds, out int fdCount, out bool truncated);
            if (n <= 0)
                return; // the program closed its handle, exited or was killed
            var received = fds[..fdCount];
            PrivcmdReply reply = default;
            try
            {
                if (truncated || n != sizeof(PrivcmdRequest))
                    reply.Result = -Errno.EINVAL;
                else
                    reply.Result = Handle(MemoryMarshal.Read<PrivcmdRequest>(buffer), received, ref reply);
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
            if (!UnixNative.Send(_fd, MemoryMarshal.AsBytes(new ReadOnlySpan<PrivcmdReply>(in reply))))
                return;
        }
    }

    private unsafe long Handle(in PrivcmdRequest r, Span<int> fds, ref PrivcmdReply reply)
    {
        if (r.Op == OpOpen)
        {
            if (_handle is not null)
                return -Errno.EBUSY;
            if (r.Arg[1] != PrivcmdProtocol.Version)
                return -EPROTO;
            long rc = Open(r.Arg[0], r, fds, out _handle);
            return rc;
        }
        if (_handle is null)
            return -Errno.EBADF;
        return _handle.Handle(r, ref reply);
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
                if (fds.Length != 1)
                    return -Errno.EINVAL;
                handle = new EvtchnHandle(_hv, fds[0]);
                fds[0] = -1; // kept: the handle writes pending ports to it
                return 0;
            }
            case KindForeignMemory:
            case KindGnttab:
            case KindGntshr:
                // Connections only for now: mapping requests come with their own milestones and answer -ENOSYS.
                handle = new EmptyHandle();
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

    private sealed class EmptyHandle : IPrivcmdHandle
    {
        public long Handle(in PrivcmdRequest r, ref PrivcmdReply reply) => -Errno.ENOSYS;
        public void Dispose() { }
    }
}

/// <summary>What a connection is once opened: one per library handle kind.</summary>
internal interface IPrivcmdHandle : IDisposable
{
    /// <summary>Answers one request: ≥ 0 or -errno, with anything more in <paramref name="reply"/>.</summary>
    long Handle(in PrivcmdRequest r, ref PrivcmdReply reply);
}
