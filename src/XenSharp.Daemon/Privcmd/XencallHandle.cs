using XenSharp.Hypervisor;
using XenSharp.Public;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxencall handle (the role of /dev/xen/privcmd's IOCTL_PRIVCMD_HYPERCALL with /dev/xen/hypercall's buffers):
/// the program's buffer memfd is mapped here too, so hypercalls read and write the program's buffers in place.
/// </summary>
internal sealed class XencallHandle : IPrivcmdHandle
{
    /// <summary>The largest buffer area a handle may bring (libxencall reserves 256 MiB).</summary>
    public const ulong MaxBufferBytes = 1UL << 30;

    private readonly nint _mapping;
    private readonly ulong _length;
    private readonly Dom0HypercallContext _context;

    private XencallHandle(nint mapping, ulong length, Dom0HypercallContext context)
    {
        _mapping = mapping;
        _length = length;
        _context = context;
    }

    public static long Open(XenHypervisor hv, int memfd, ulong callerBase, ulong length, out XencallHandle? handle)
    {
        handle = null;
        if (length == 0 || length > MaxBufferBytes || (length & 0xFFF) != 0 || (callerBase & 0xFFF) != 0
            || callerBase + length < callerBase)
            return -Errno.EINVAL;
        nint p = UnixNative.MapSealedMemfd(memfd, length, out int errno);
        if (p == 0)
            return -errno;
        handle = new XencallHandle(p, length, hv.OpenDom0Hypercalls(p, callerBase, length));
        return 0;
    }

    public unsafe long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        if (r.Op == PrivcmdProtocol.OpDmOpPosted)
        {
            // The program goes on without the result, as a device model ignores it for these ops; a failure is
            // only logged; a reply would be read as the answer to the program's next request.
            try
            {
                long rc = r.Arg[0] > ushort.MaxValue ? -Errno.ESRCH : _context.PostedDmOp((ushort)r.Arg[0], payload);
                if (rc < 0)
                    Console.Error.WriteLine($"xensharpd: posted dm_op for domain {r.Arg[0]} failed: {rc}");
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Console.Error.WriteLine($"xensharpd: posted dm_op failed: {e.Message}");
            }
            return PrivcmdProtocol.NoReply;
        }
        if (!payload.IsEmpty)
            return -Errno.EINVAL;
        if (r.Op != PrivcmdProtocol.OpHypercall)
            return -Errno.ENOSYS;
        return _context.Hypercall(r.Arg[0], r.Arg[1], r.Arg[2], r.Arg[3], r.Arg[4], r.Arg[5]);
    }

    public void Dispose()
    {
        _context.Dispose();
        UnixNative.Unmap(_mapping, _length);
    }
}
