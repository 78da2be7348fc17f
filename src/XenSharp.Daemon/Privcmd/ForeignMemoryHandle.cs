using System.Runtime.InteropServices;
using XenSharp.Hypervisor;
using XenSharp.Public;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxenforeignmemory handle (privcmd's foreign mapping): for a batch of a guest's frames the reply carries the
/// domain's memfd and each frame's offset in it (or -errno), and the library maps them itself. The daemon keeps no
/// state per mapping, so unmapping is the library's munmap and a killed program leaves nothing behind.
/// </summary>
internal sealed class ForeignMemoryHandle(XenHypervisor hv) : IPrivcmdHandle
{
    /// <summary>Frames per request (the library splits larger maps).</summary>
    public const int MaxBatch = 512;

    public unsafe long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        if (r.Op == PrivcmdProtocol.OpForeignMapResource)
            return MapResource(r, ref extras);
        if (r.Op != PrivcmdProtocol.OpForeignMap)
            return -Errno.ENOSYS;
        ulong domid = r.Arg[0], count = r.Arg[2];
        if (domid > ushort.MaxValue || count == 0 || count > MaxBatch || (ulong)payload.Length != count * sizeof(ulong))
            return -Errno.EINVAL;
        var gfns = MemoryMarshal.Cast<byte, ulong>(payload);
        var offsets = new long[count];
        long rc = hv.Dom0ForeignFrames((ushort)domid, gfns, writable: r.Arg[1] != 0, offsets, out var memfd);
        if (rc != 0)
            return rc;
        extras.Payload = MemoryMarshal.AsBytes(offsets.AsSpan()).ToArray();
        extras.Fd = memfd;
        return 0;
    }

    /// <summary>A resource's frames (the grant table's, for libxenguest's seeding of the console and xenstore
    /// grants): answered as a foreign map is, so the library maps them the same way.</summary>
    private unsafe long MapResource(in PrivcmdRequest r, ref ReplyExtras extras)
    {
        ulong domid = r.Arg[0], type = r.Arg[1], id = r.Arg[2], frame = r.Arg[3], count = r.Arg[4];
        if (domid > ushort.MaxValue || type > uint.MaxValue || id > uint.MaxValue || count == 0 || count > MaxBatch
            || frame > uint.MaxValue)
            return -Errno.EINVAL;
        var offsets = new long[count];
        long rc = hv.Dom0ResourceFrames((ushort)domid, (uint)type, (uint)id, frame, offsets, out var memfd);
        if (rc != 0)
            return rc;
        extras.Payload = MemoryMarshal.AsBytes(offsets.AsSpan()).ToArray();
        extras.Fd = memfd;
        return 0;
    }

    public void Dispose() { }
}
