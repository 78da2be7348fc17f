using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public;

namespace XenSharp.Backends.Net;

/// <summary>
/// A vif's host end as a Linux TAP device (/dev/net/tun with IFF_TAP|IFF_NO_PI): frames the guest sends are
/// written to it, frames the host's stack or bridge sends to the interface are read from it. The interface
/// exists while the port is open and goes when it is disposed. Its own MAC is fe:ff:ff:ff:ff:ff, as Linux
/// netback gives its vifs, so that a bridge never takes the vif's address as its own. Frames are written with a
/// virtio_net_hdr (IFF_VNET_HDR), so the host kernel finishes partial checksums and segments large TCP frames
/// the guest sends; the other way the backend asks (TUNSETOFFLOAD) for what the guest's frontend takes, partial
/// checksums and TCP segments of up to 64 KiB, each frame read then described by its header. A thread of the port
/// waits in poll(2) for frames only while the backend has asked (see <see cref="IVifPort.Start"/>).
/// </summary>
public sealed unsafe partial class TapPort : IVifPort
{
    private const ulong TUNSETIFF = 0x400454ca;
    private const ulong SIOCSIFHWADDR = 0x8924;
    private const ulong TUNSETOFFLOAD = 0x400454d0;
    private const uint TUN_F_CSUM = 0x01, TUN_F_TSO4 = 0x02, TUN_F_TSO6 = 0x04;
    private const short IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;
    /// <summary>struct virtio_net_hdr, which IFF_VNET_HDR puts before every frame both ways.</summary>
    private const int VnetHdrSize = 10;
    private const byte VIRTIO_NET_HDR_F_NEEDS_CSUM = 1, VIRTIO_NET_HDR_GSO_TCPV4 = 1, VIRTIO_NET_HDR_GSO_TCPV6 = 4,
        VIRTIO_NET_HDR_GSO_ECN = 0x80;
    private const int O_RDWR = 2, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
    private const int IFNAMSIZ = 16;
    private const int EAGAIN = 11;

    private readonly int _fd;
    private readonly ReadinessWatch _watch;
    private volatile bool _disposed;

    private TapPort(int fd, string name)
    {
        _fd = fd;
        Name = name;
        _watch = new ReadinessWatch(fd, $"tap-{name}");
    }

    public string Name { get; }

    /// <summary>Creates the TAP interface <paramref name="name"/>; an <see cref="IOException"/> says why not
    /// (no /dev/net/tun, no CAP_NET_ADMIN, the name taken or too long).</summary>
    public static IVifPort Open(string name)
    {
        if (name.Length == 0 || Encoding.UTF8.GetByteCount(name) >= IFNAMSIZ || name.Contains('/'))
            throw new IOException($"interface name `{name}' is not valid (1 to {IFNAMSIZ - 1} bytes)");
        int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) throw Failure("opening /dev/net/tun", Marshal.GetLastPInvokeError());
        try
        {
            byte* ifr = stackalloc byte[40];
            new Span<byte>(ifr, 40).Clear();
            Encoding.UTF8.GetBytes(name, new Span<byte>(ifr, IFNAMSIZ));
            *(short*)(ifr + IFNAMSIZ) = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if (ioctl(fd, TUNSETIFF, ifr) < 0) throw Failure($"creating TAP interface {name}", Marshal.GetLastPInvokeError());
            new Span<byte>(ifr + IFNAMSIZ, 24).Clear();
            *(ushort*)(ifr + IFNAMSIZ) = 1; // ARPHRD_ETHER
            new Span<byte>(ifr + IFNAMSIZ + 2, 6).Fill(0xff);
            ifr[IFNAMSIZ + 2] = 0xfe;
            if (ioctl(fd, SIOCSIFHWADDR, ifr) < 0) throw Failure($"setting the MAC of {name}", Marshal.GetLastPInvokeError());
            return new TapPort(fd, name);
        }
        catch
        {
            close(fd);
            throw;
        }
    }

    private static IOException Failure(string what, int errno) =>
        new($"{what}: {Marshal.GetPInvokeErrorMessage(errno)}", -errno);

    public void Start(Action framesWaiting) => _watch.Start(framesWaiting);

    public bool Offloads => true;

    public int Receive(Span<byte> frame) => Receive(frame, out _);

    /// <summary>TUNSETOFFLOAD: the host kernel then leaves checksums partial and large TCP segments whole in the
    /// frames it hands this interface, each described by its virtio_net_hdr.</summary>
    public bool SetReceiveOffloads(bool checksum, bool tcpv4, bool tcpv6)
    {
        uint flags = checksum ? TUN_F_CSUM | (tcpv4 ? TUN_F_TSO4 : 0) | (tcpv6 ? TUN_F_TSO6 : 0) : 0;
        return ioctl(_fd, TUNSETOFFLOAD, (byte*)(nuint)flags) == 0 && flags != 0;
    }

    public int Receive(Span<byte> frame, out VifOffload offload)
    {
        offload = VifOffload.None;
        long n;
        byte* hdr = stackalloc byte[VnetHdrSize];
        fixed (byte* p = frame)
        {
            var iov = stackalloc IoVec[2];
            iov[0] = new IoVec { Base = hdr, Length = VnetHdrSize };
            iov[1] = new IoVec { Base = p, Length = (nuint)frame.Length };
            n = readv(_fd, iov, 2);
        }
        if (n > VnetHdrSize)
        {
            // Only what TUNSETOFFLOAD asked for comes (no UDP fragmentation offload; ECN is a marking only).
            byte gso = (byte)(hdr[1] & ~VIRTIO_NET_HDR_GSO_ECN);
            if ((hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0 || gso != 0)
                offload = new VifOffload((hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0, *(ushort*)(hdr + 6), *(ushort*)(hdr + 8),
                    gso switch { VIRTIO_NET_HDR_GSO_TCPV4 => VifGso.TcpV4, VIRTIO_NET_HDR_GSO_TCPV6 => VifGso.TcpV6, _ => VifGso.None },
                    *(ushort*)(hdr + 4), *(ushort*)(hdr + 2));
            return (int)(n - VnetHdrSize);
        }
        int errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
        if (n >= 0 || errno == EAGAIN)
        {
            // Drained: watch again.
            _watch.Rearm();
            return 0;
        }
        return -errno;
    }

    public int Send(ReadOnlySpan<byte> frame, in VifOffload offload)
    {
        byte* hdr = stackalloc byte[VnetHdrSize];
        new Span<byte>(hdr, VnetHdrSize).Clear();
        if (offload.NeedsChecksum)
        {
            hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            *(ushort*)(hdr + 6) = offload.ChecksumStart;
            *(ushort*)(hdr + 8) = offload.ChecksumOffset;
        }
        if (offload.Gso != VifGso.None)
        {
            hdr[1] = offload.Gso == VifGso.TcpV4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
            *(ushort*)(hdr + 2) = offload.HeaderLength;
            *(ushort*)(hdr + 4) = offload.GsoSize;
        }
        long n;
        fixed (byte* p = frame)
        {
            var iov = stackalloc IoVec[2];
            iov[0] = new IoVec { Base = hdr, Length = VnetHdrSize };
            iov[1] = new IoVec { Base = p, Length = (nuint)frame.Length };
            n = writev(_fd, iov, 2);
        }
        return n == VnetHdrSize + frame.Length ? 0 : n < 0 ? -Marshal.GetLastPInvokeError() : -Errno.EIO;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _watch.Dispose();
        close(_fd);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, ulong request, byte* arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint readv(int fd, IoVec* iov, int iovcnt);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint writev(int fd, IoVec* iov, int iovcnt);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
