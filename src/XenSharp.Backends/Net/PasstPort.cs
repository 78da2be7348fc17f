using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using XenSharp.Public;

namespace XenSharp.Backends.Net;

/// <summary>What a user-mode vif is made of: its interface name (for logs and thread names) and the host
/// ports forwarded to the guest, each <c>tcp:HOST[:GUEST]</c> or <c>udp:HOST[:GUEST]</c>.</summary>
public sealed record UserNetwork(string Name, IReadOnlyList<string> Forwards);

/// <summary>
/// A vif's host end as user-mode networking through passt(1), which needs no privileges: passt is started for
/// the vif (foreground, in the daemon's network namespace) and speaks QEMU's stream protocol on one end of a
/// UNIX stream socket pair — every Ethernet frame preceded by its length as a 32-bit big-endian number. passt answers
/// the guest's DHCP, ARP, NDP and DNS itself, gives it the host's address and gateway, translates its TCP and UDP
/// into the host's own sockets (the gateway address standing for the host's loopback) and listens on the forwarded
/// host ports for the guest. Frames from passt are complete (no offload); the guest's blank checksums are finished by
/// the backend. A <see cref="ReadinessWatch"/> waits for data only while the backend has asked, as
/// <see cref="TapPort"/>'s does; the stream is cut into frames in a buffer of the port's own.
/// </summary>
public sealed unsafe partial class PasstPort : IVifPort
{
    /// <summary>The program, found on PATH (Debian's package passt).</summary>
    public static string Program { get; set; } = "passt";

    private const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;
    private const int MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000;
    private const short POLLOUT = 4;
    private const int EAGAIN = 11, EINTR = 4;
    private const int LengthSize = 4;
    /// <summary>The longest frame taken from passt; a longer one is skipped.</summary>
    private const int MaxFrame = 65535 + 14;
    private const int F_SETFD = 2;

    private readonly int _fd;
    private readonly Process _passt;
    private readonly ReadinessWatch _watch;
    /// <summary>Bytes read from the stream and not yet handed out: [_start, _end) of <see cref="_buffer"/>.</summary>
    private readonly byte* _buffer;
    private const int BufferSize = 2 * (MaxFrame + LengthSize);
    private int _start, _end;
    /// <summary>Bytes of an over-long frame still to be thrown away.</summary>
    private int _skip;
    private volatile bool _disposed;

    private PasstPort(int fd, ReadinessWatch watch, Process passt, string name)
    {
        _fd = fd;
        _watch = watch;
        _passt = passt;
        Name = name;
        _buffer = (byte*)NativeMemory.Alloc(BufferSize);
    }

    public string Name { get; }

    public bool Offloads => false;

    /// <summary>Starts passt for <paramref name="net"/>, handing it one end of a socket pair (passt's --fd, which
    /// implies --one-off: passt ends when the port closes its end); an <see cref="IOException"/> says why not.</summary>
    public static IVifPort Open(UserNetwork net)
    {
        int* sv = stackalloc int[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            throw new IOException($"socketpair: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        int ours = sv[0], theirs = sv[1];
        Process? passt = null;
        ReadinessWatch? watch = null;
        try
        {
            // Only passt's end is inherited; ours stays close-on-exec, so passt sees the end of the stream when the port goes.
            if (fcntl(theirs, F_SETFD, 0) < 0)
                throw new IOException($"fcntl: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
            var psi = new ProcessStartInfo(Program)
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
            };
            foreach (string a in (string[])["--foreground", "--quiet", "--fd", theirs.ToString(CultureInfo.InvariantCulture)])
                psi.ArgumentList.Add(a);
            foreach (string f in net.Forwards)
            {
                int colon = f.IndexOf(':');
                psi.ArgumentList.Add(f[..colon] == "udp" ? "--udp-ports" : "--tcp-ports");
                psi.ArgumentList.Add(f[(colon + 1)..]);
            }
            try { passt = Process.Start(psi)!; }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new IOException($"starting {Program} (Debian's package passt): {e.Message}", -Errno.ENOENT);
            }
            passt.ErrorDataReceived += (_, _) => { };
            passt.OutputDataReceived += (_, _) => { };
            passt.BeginErrorReadLine();
            passt.BeginOutputReadLine();
            passt.StandardInput.Close();
            watch = new ReadinessWatch(ours, $"passt-{net.Name}");
            close(theirs);
            theirs = -1;
            return new PasstPort(ours, watch, passt, net.Name);
        }
        catch
        {
            close(ours);
            if (theirs >= 0) close(theirs);
            watch?.Dispose();
            if (passt is not null) Stop(passt);
            throw;
        }
    }

    public void Start(Action framesWaiting) => _watch.Start(framesWaiting);

    public int Receive(Span<byte> frame)
    {
        while (true)
        {
            if (TakeFrame(frame) is int length and > 0) return length;
            if (_start > 0)
            {
                // Keep the partial frame at the buffer's start, so a whole one always fits behind it.
                Buffer.MemoryCopy(_buffer + _start, _buffer, BufferSize, _end - _start);
                _end -= _start;
                _start = 0;
            }
            long n = recv(_fd, _buffer + _end, (nuint)(BufferSize - _end), MSG_DONTWAIT);
            if (n > 0) { _end += (int)n; continue; }
            int errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno != EAGAIN) return -errno;
            // Drained (or passt has gone: the stream stays quiet). A frame arriving meanwhile is seen by the next poll.
            if (n == 0) return 0;
            _watch.Rearm();
            return 0;
        }
    }

    /// <summary>A whole frame from the buffer into <paramref name="frame"/>: its length, or 0 when none is whole yet.</summary>
    private int TakeFrame(Span<byte> frame)
    {
        while (true)
        {
            if (_skip > 0)
            {
                int drop = Math.Min(_skip, _end - _start);
                _skip -= drop;
                _start += drop;
                if (_skip > 0) { _start = _end = 0; return 0; }
            }
            int have = _end - _start;
            if (have < LengthSize) return 0;
            uint length = BinaryPrimitives.ReadUInt32BigEndian(new ReadOnlySpan<byte>(_buffer + _start, LengthSize));
            if (length is 0 or > MaxFrame)
            {
                // Not a frame we can hold: throw it away and keep the stream in step.
                _start += LengthSize;
                _skip = (int)Math.Min(length, int.MaxValue);
                continue;
            }
            if (have < LengthSize + length) return 0;
            int n = (int)Math.Min(length, (uint)frame.Length);
            new ReadOnlySpan<byte>(_buffer + _start + LengthSize, n).CopyTo(frame);
            _start += LengthSize + (int)length;
            if (_start == _end) _start = _end = 0;
            return n;
        }
    }

    public int Send(ReadOnlySpan<byte> frame, in VifOffload offload)
    {
        byte* length = stackalloc byte[LengthSize];
        BinaryPrimitives.WriteUInt32BigEndian(new Span<byte>(length, LengthSize), (uint)frame.Length);
        fixed (byte* p = frame)
        {
            var iov = stackalloc IoVec[2];
            iov[0] = new IoVec { Base = length, Length = LengthSize };
            iov[1] = new IoVec { Base = p, Length = (nuint)frame.Length };
            var msg = new MsgHdr { Iov = iov, IovLen = 2 };
            long n = sendmsg(_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0) return -Marshal.GetLastPInvokeError(); // nothing went: the frame is dropped, the stream intact
            // A frame half sent would put the stream out of step: finish it, waiting for room.
            long total = LengthSize + frame.Length;
            while (n < total)
            {
                var pfd = new PollFd { Fd = _fd, Events = POLLOUT };
                if (poll(&pfd, 1, 1000) <= 0 && _disposed) return -Errno.EIO;
                long w = n < LengthSize
                    ? send(_fd, length + n, (nuint)(LengthSize - n), MSG_DONTWAIT | MSG_NOSIGNAL)
                    : send(_fd, p + (n - LengthSize), (nuint)(total - n), MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w > 0) n += w;
                else if (w < 0 && Marshal.GetLastPInvokeError() is not (EAGAIN or EINTR)) return -Errno.EIO;
            }
        }
        return 0;
    }

    private static void Stop(Process passt)
    {
        try
        {
            if (!passt.HasExited) passt.Kill();
            passt.WaitForExit(5000);
        }
        catch (InvalidOperationException) { }
        passt.Dispose();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _watch.Dispose();
        close(_fd); // with --one-off, passt ends when its client goes
        Stop(_passt);
        NativeMemory.Free(_buffer);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

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

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int socketpair(int domain, int type, int protocol, int* sv);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(PollFd* fds, ulong nfds, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint recv(int fd, byte* buf, nuint len, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint send(int fd, byte* buf, nuint len, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint sendmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
