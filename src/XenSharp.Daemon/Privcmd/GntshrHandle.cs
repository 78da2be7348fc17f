using System.Runtime.InteropServices;
using XenSharp.Hypervisor;
using XenSharp.Public;
using static XenSharp.Daemon.Privcmd.PrivcmdProtocol;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxengntshr handle (the role of Linux's gntalloc): a share is pages of Domain-0 that the daemon allocates and
/// grants to a domain, which the program maps from Domain-0's memory file. Shares are keyed by the address the program
/// chose, which it names to unshare. Unsharing (or the connection ending, as when the program is killed) carries out
/// the notification the share asked for, then ends the grants; a page the grantee still maps lives until it unmaps.
/// </summary>
internal sealed unsafe class GntshrHandle(XenHypervisor hv) : IPrivcmdHandle
{
    private const ulong None = ulong.MaxValue;
    private const int PageSize = 4096;

    private sealed class Share
    {
        public required uint[] Refs;
        public required uint[] Frames;
        public ulong NotifyOffset = None;
        public ulong NotifyPort = None;
    }

    private readonly object _lock = new();
    private readonly SortedDictionary<ulong, Share> _shares = [];
    private bool _closed;

    public long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        if (!payload.IsEmpty)
            return -Errno.EINVAL;
        return r.Op switch
        {
            OpGntshrShare => ShareFrames(r.Arg[0], r.Arg[1] != 0, r.Arg[2], r.Arg[3], r.Arg[4], r.Arg[5], ref extras),
            OpGntshrUnshare => Unshare(r.Arg[0], r.Arg[1]),
            _ => -Errno.ENOSYS,
        };
    }

    private long ShareFrames(ulong domid, bool writable, ulong count, ulong notifyOffset, ulong notifyPort, ulong address,
        ref ReplyExtras extras)
    {
        if (domid > ushort.MaxValue || count == 0 || count > ForeignMemoryHandle.MaxBatch || address == 0 || address % PageSize != 0
            || (notifyOffset != None && notifyOffset >= count * PageSize) || (notifyPort != None && notifyPort > uint.MaxValue))
            return -Errno.EINVAL;
        int n = (int)count;
        var refs = new uint[n];
        var frames = new uint[n];
        var offsets = new long[n];
        lock (_lock)
            if (_closed || Overlaps(address, count))
                return _closed ? -Errno.EBADF : -Errno.EBUSY;
        long rc = hv.Dom0ShareFrames((ushort)domid, writable, refs, frames, offsets, out var memfd);
        if (rc != 0)
            return rc;
        var share = new Share { Refs = refs, Frames = frames, NotifyOffset = notifyOffset, NotifyPort = notifyPort };
        bool keep;
        lock (_lock)
        {
            keep = !_closed && !Overlaps(address, count);
            if (keep)
                _shares[address] = share;
        }
        if (!keep)
        {
            hv.Dom0Unshare(refs, frames);
            memfd!.DangerousRelease();
            return -Errno.EBUSY;
        }
        var tail = new byte[n * (sizeof(long) + sizeof(uint))];
        MemoryMarshal.AsBytes(offsets.AsSpan()).CopyTo(tail);
        MemoryMarshal.AsBytes(refs.AsSpan()).CopyTo(tail.AsSpan(n * sizeof(long)));
        extras.Payload = tail;
        extras.Fd = memfd;
        return 0;
    }

    /// <summary>Whether a share already covers part of [address, address + pages pages); under the lock.</summary>
    private bool Overlaps(ulong address, ulong pages)
    {
        ulong end = address + pages * PageSize;
        foreach (var (start, s) in _shares)
        {
            if (start >= end)
                break;
            if (start + (ulong)s.Refs.Length * PageSize > address)
                return true;
        }
        return false;
    }

    private long Unshare(ulong address, ulong pages)
    {
        if (pages == 0 || pages > int.MaxValue)
            return -Errno.EINVAL;
        ulong end = address + pages * PageSize;
        List<Share> gone = [];
        lock (_lock)
        {
            foreach (var (start, s) in _shares.Where(kv => kv.Key >= address && kv.Key + (ulong)kv.Value.Refs.Length * PageSize <= end).ToList())
            {
                _shares.Remove(start);
                gone.Add(s);
            }
        }
        if (gone.Count == 0)
            return -Errno.EINVAL;
        foreach (var s in gone)
            Release(s);
        return 0;
    }

    /// <summary>gntalloc's unmap notification (the byte cleared, then the event), then the grants end.</summary>
    private void Release(Share s)
    {
        if (s.NotifyOffset != None)
            hv.Dom0SharedPage(s.Frames[(int)(s.NotifyOffset / PageSize)])[(int)(s.NotifyOffset % PageSize)] = 0;
        if (s.NotifyPort != None)
            hv.Dom0EvtchnSend((uint)s.NotifyPort);
        hv.Dom0Unshare(s.Refs, s.Frames);
    }

    public void Dispose()
    {
        List<Share> held;
        lock (_lock)
        {
            _closed = true;
            held = [.. _shares.Values];
            _shares.Clear();
        }
        foreach (var s in held)
            Release(s);
    }
}
