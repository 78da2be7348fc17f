using System.Runtime.InteropServices;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// The libc calls privcmd needs that .NET's Socket does not offer: SOCK_SEQPACKET with SCM_RIGHTS descriptor
/// passing, and mapping a caller's memfd. Everything is blocking and close-on-exec.
/// </summary>
internal static unsafe partial class UnixNative
{
    public const int AF_UNIX = 1, SOCK_SEQPACKET = 5, SOCK_CLOEXEC = 0x80000, SHUT_RDWR = 2;
    public const int MSG_CMSG_CLOEXEC = 0x40000000, MSG_NOSIGNAL = 0x4000, MSG_TRUNC = 0x20, MSG_CTRUNC = 0x8;
    public const int SOL_SOCKET = 1, SCM_RIGHTS = 1;
    public const int EINTR = 4, EAGAIN = 11;
    public const int PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1, MAP_NORESERVE = 0x4000;
    public const int F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800, F_GET_SEALS = 1034;
    public const int F_SEAL_SHRINK = 0x2;
    public const int MaxFds = 4;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec { public void* Base; public nuint Len; }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    // struct cmsghdr: size_t cmsg_len; int cmsg_level; int cmsg_type; then the data, 8-aligned.
    private const int CmsgHeader = 16;
    private const int ControlSpace = CmsgHeader + MaxFds * sizeof(int);

    public static int ListenSeqpacket(string path, int backlog)
    {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
            throw new IOException($"socket: errno {Marshal.GetLastPInvokeError()}");
        var addr = new byte[110];
        addr[0] = AF_UNIX;
        int n = System.Text.Encoding.UTF8.GetBytes(path, 0, path.Length, addr, 2);
        if (n >= 108)
        {
            close(fd);
            throw new IOException($"socket path too long: {path}");
        }
        fixed (byte* a = addr)
            if (bind(fd, a, (uint)addr.Length) < 0 || listen(fd, backlog) < 0)
            {
                int e = Marshal.GetLastPInvokeError();
                close(fd);
                throw new IOException($"cannot listen on {path}: errno {e}");
            }
        return fd;
    }

    /// <summary>The next connection, or -1 when the listener was shut down.</summary>
    public static int Accept(int listener)
    {
        while (true)
        {
            int fd = accept4(listener, null, null, SOCK_CLOEXEC);
            if (fd >= 0)
                return fd;
            int e = Marshal.GetLastPInvokeError();
            if (e is EINTR or 103 /* ECONNABORTED */ or 24 /* EMFILE */ or 23 /* ENFILE */)
            {
                if (e is 24 or 23)
                    Thread.Sleep(100);
                continue;
            }
            return -1;
        }
    }

    /// <summary>Receives one message into <paramref name="buffer"/> with up to <see cref="MaxFds"/> descriptors;
    /// returns its length (0 at end of connection, -1 on error). <paramref name="truncated"/> when it was longer.</summary>
    public static int Receive(int fd, Span<byte> buffer, Span<int> fds, out int fdCount, out bool truncated)
    {
        fdCount = 0;
        truncated = false;
        byte* control = stackalloc byte[ControlSpace + 8];
        fixed (byte* b = buffer)
        {
            var iov = new IoVec { Base = b, Len = (nuint)buffer.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = ControlSpace + 8 };
            nint n;
            do
                n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
            while (n < 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (n < 0)
                return -1;
            truncated = (msg.Flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
            // Walk the control messages; descriptors beyond what the caller can take are closed.
            nuint offset = 0;
            while (offset + CmsgHeader <= msg.ControlLen)
            {
                byte* c = control + offset;
                nuint len = *(nuint*)c;
                if (len < CmsgHeader || offset + len > msg.ControlLen)
                    break;
                int level = *(int*)(c + 8), type = *(int*)(c + 12);
                if (level == SOL_SOCKET && type == SCM_RIGHTS)
                {
                    int count = (int)(len - CmsgHeader) / sizeof(int);
                    for (int i = 0; i < count; i++)
                    {
                        int received = *(int*)(c + CmsgHeader + i * sizeof(int));
                        if (fdCount < fds.Length)
                            fds[fdCount++] = received;
                        else
                            close(received);
                    }
                }
                offset += (len + 7) & ~(nuint)7;
            }
            return (int)n;
        }
    }

    /// <summary>Sends one message, with descriptor <paramref name="passFd"/> when it is not -1; false when the peer is gone.</summary>
    public static bool Send(int fd, ReadOnlySpan<byte> message, int passFd = -1)
    {
        byte* control = stackalloc byte[CmsgHeader + 8];
        fixed (byte* b = message)
        {
            var iov = new IoVec { Base = b, Len = (nuint)message.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
            if (passFd >= 0)
            {
                *(nuint*)control = CmsgHeader + sizeof(int);
                *(int*)(control + 8) = SOL_SOCKET;
                *(int*)(control + 12) = SCM_RIGHTS;
                *(int*)(control + CmsgHeader) = passFd;
                *(int*)(control + CmsgHeader + 4) = 0;
                msg.Control = control;
                msg.ControlLen = CmsgHeader + 8;
            }
            nint n;
            do
                n = sendmsg(fd, &msg, MSG_NOSIGNAL);
            while (n < 0 && Marshal.GetLastPInvokeError() == EINTR);
            return n == message.Length;
        }
    }

    /// <summary>Maps <paramref name="length"/> bytes of a memfd sealed against shrinking (so no access can fault
    /// beyond its end); returns the address, or 0 with <paramref name="errno"/>.</summary>
    public static nint MapSealedMemfd(int fd, ulong length, out int errno)
    {
        errno = 0;
        int seals = fcntl(fd, F_GET_SEALS, 0);
        if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
        {
            errno = 22; // EINVAL: not a memfd, or one its owner could still shrink under us
            return 0;
        }
        byte* st = stackalloc byte[144];
        if (fstat(fd, st) < 0 || (ulong)*(long*)(st + 48) < length)
        {
            errno = 22;
            return 0;
        }
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (p == -1)
        {
            errno = Marshal.GetLastPInvokeError();
            return 0;
        }
        return p;
    }

    public static void Unmap(nint address, ulong length) => munmap(address, (nuint)length);

    public static void SetNonBlocking(int fd) => fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);

    /// <summary>Writes all of <paramref name="data"/> without blocking; false when it did not fit or the reader is gone.</summary>
    public static bool TryWrite(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* b = data)
        {
            nint n;
            do
                n = write(fd, b, data.Length);
            while (n < 0 && Marshal.GetLastPInvokeError() == EINTR);
            return n == data.Length;
        }
    }

    public static void Shutdown(int fd) => shutdown(fd, SHUT_RDWR);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int socket(int domain, int type, int protocol);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int bind(int fd, byte* addr, uint len);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int listen(int fd, int backlog);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int accept4(int fd, byte* addr, uint* len, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int shutdown(int fd, int how);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint recvmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint sendmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, void* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fstat(int fd, byte* buf);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);
}
