using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenSharp.Dom0;
using XenSharp.Hypervisor;
using XenSharp.Public;
using static XenSharp.Daemon.Privcmd.PrivcmdProtocol;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxengnttab handle (the role of Linux's gntdev). A map pins the grants in Domain-0's maptrack for as long as
/// the program keeps them, and answers with the granting domain's memfd and each page's offset so the program maps
/// the pages itself; maps are keyed by the address the program chose, which it names to unmap. Unmapping (or the
/// connection ending, as when the program is killed) carries out the unmap notification the map asked for, then lets
/// the grants go. Grant copies carry their data inline in the request and reply.
/// </summary>
internal sealed unsafe class GnttabHandle(XenHypervisor hv) : IPrivcmdHandle
{
    private const ulong None = ulong.MaxValue;
    private const int PageSize = 4096;

    private sealed class Map
    {
        public required uint[] Handles;
        public required nint[] Pages;
        public ulong NotifyOffset = None;
        public ulong NotifyPort = None;
    }

    private readonly object _lock = new();
    private readonly SortedDictionary<ulong, Map> _maps = [];
    private long _pagesHeld;
    /// <summary>IOCTL_GNTDEV_SET_MAX_GRANTS's limit; gntdev's own default is large enough not to matter.</summary>
    private long _maxGrants = long.MaxValue;
    private bool _closed;
    /// <summary>A copy's reply (statuses, then the bytes read): requests on a handle come one at a time, so one
    /// buffer serves them all and the copy path allocates nothing per request.</summary>
    private readonly byte[] _copyTail = new byte[PrivcmdConnection.MaxReplyTail];

    public long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        switch (r.Op)
        {
            case OpGnttabMap:
                return MapRefs(r.Arg[0], r.Arg[1] != 0, r.Arg[2], r.Arg[3], r.Arg[4], r.Arg[5], payload, ref extras);
            case OpGnttabUnmap:
                return payload.IsEmpty ? Unmap(r.Arg[0], r.Arg[1]) : -Errno.EINVAL;
            case OpGnttabCopy:
                return Copy(r.Arg[0], payload, ref extras);
            case OpGnttabSetMax:
                if (!payload.IsEmpty || r.Arg[0] > int.MaxValue)
                    return -Errno.EINVAL;
                lock (_lock)
                    _maxGrants = (long)r.Arg[0];
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    private long MapRefs(ulong domid, bool writable, ulong count, ulong notifyOffset, ulong notifyPort, ulong address,
        ReadOnlySpan<byte> payload, ref ReplyExtras extras)
    {
        if (domid > ushort.MaxValue || count == 0 || count > ForeignMemoryHandle.MaxBatch
            || (ulong)payload.Length != count * sizeof(uint) || address == 0 || address % PageSize != 0
            || (notifyOffset != None && notifyOffset >= count * PageSize) || (notifyPort != None && notifyPort > uint.MaxValue))
            return -Errno.EINVAL;
        var refs = MemoryMarshal.Cast<byte, uint>(payload);
        int n = (int)count;
        lock (_lock)
        {
            if (_closed)
                return -Errno.EBADF;
            if (_pagesHeld + n > _maxGrants)
                return -Errno.ENOSPC;
            if (Overlaps(address, count))
                return -Errno.EBUSY;
            _pagesHeld += n; // reserved now, so that two threads of one program cannot both pass the limit
        }
        var handles = new uint[n];
        var pages = new nint[n];
        var offsets = new long[n];
        short status = hv.Dom0GrantMap((ushort)domid, refs, readOnly: !writable, handles, pages, offsets, out var memfd);
        if (status != GNTST_okay)
        {
            lock (_lock)
                _pagesHeld -= n;
            // gntdev fails the whole map with EINVAL, whichever GNTST_* Xen gave (a bad ref, domain or permission).
            return -Errno.EINVAL;
        }
        var map = new Map { Handles = handles, Pages = pages, NotifyOffset = notifyOffset, NotifyPort = notifyPort };
        bool keep;
        lock (_lock)
        {
            keep = !_closed && !Overlaps(address, count);
            if (keep)
                _maps[address] = map;
            else
                _pagesHeld -= n;
        }
        if (!keep)
        {
            Release(map, notify: false);
            memfd!.DangerousRelease();
            return -Errno.EBUSY;
        }
        extras.Payload = MemoryMarshal.AsBytes(offsets.AsSpan()).ToArray();
        extras.Fd = memfd;
        return 0;
    }

    /// <summary>Whether a map already covers part of [address, address + pages pages); under the lock.</summary>
    private bool Overlaps(ulong address, ulong pages)
    {
        ulong end = address + pages * PageSize;
        foreach (var (start, m) in _maps)
        {
            if (start >= end)
                break;
            if (start + (ulong)m.Handles.Length * PageSize > address)
                return true;
        }
        return false;
    }

    private long Unmap(ulong address, ulong pages)
    {
        if (pages == 0 || pages > int.MaxValue)
            return -Errno.EINVAL;
        ulong end = address + pages * PageSize;
        List<Map> gone = [];
        lock (_lock)
        {
            foreach (var (start, m) in _maps)
            {
                if (start >= end)
                    break;
                if (start >= address && start + (ulong)m.Handles.Length * PageSize <= end)
                    gone.Add(m);
            }
            if (gone.Count == 0)
                return -Errno.EINVAL;
            foreach (var (start, m) in _maps.Where(kv => gone.Contains(kv.Value)).ToList())
            {
                _maps.Remove(start);
                _pagesHeld -= m.Handles.Length;
            }
        }
        foreach (var m in gone)
            Release(m, notify: true);
        return 0;
    }

    /// <summary>gntdev's unmap notification (the byte cleared while the page is still mapped, then the event), then
    /// the grants let go.</summary>
    private void Release(Map m, bool notify)
    {
        if (notify && m.NotifyOffset != None)
        {
            int page = (int)(m.NotifyOffset / PageSize);
            ((byte*)m.Pages[page])[(int)(m.NotifyOffset % PageSize)] = 0;
        }
        if (notify && m.NotifyPort != None)
            hv.Dom0EvtchnSend((uint)m.NotifyPort); // a port the program has closed meanwhile is its own loss, as in gntdev
        foreach (uint h in m.Handles)
            hv.Dom0GrantUnmap(h);
    }

    private long Copy(ulong count, ReadOnlySpan<byte> payload, ref ReplyExtras extras)
    {
        if (count == 0 || count > MaxCopy || (ulong)payload.Length < count * GrantCopySize)
            return -Errno.EINVAL;
        int n = (int)count;
        Span<GrantCopyOp> ops = stackalloc GrantCopyOp[MaxCopy];
        ops = ops[..n];
        int toGuest = 0, fromGuest = 0;
        for (int i = 0; i < n; i++)
        {
            var seg = payload.Slice(i * GrantCopySize, GrantCopySize);
            ushort offset = BinaryPrimitives.ReadUInt16LittleEndian(seg[6..]), length = BinaryPrimitives.ReadUInt16LittleEndian(seg[8..]);
            if (offset + length > PageSize)
                return -Errno.EINVAL; // gntdev refuses a segment that leaves its page before asking Xen
            ops[i] = new GrantCopyOp
            {
                Ref = BinaryPrimitives.ReadUInt32LittleEndian(seg),
                Dom = BinaryPrimitives.ReadUInt16LittleEndian(seg[4..]),
                Offset = offset,
                Length = length,
                ToGuest = BinaryPrimitives.ReadUInt16LittleEndian(seg[10..]) != 0,
            };
            if (ops[i].ToGuest) toGuest += length; else fromGuest += length;
        }
        if (payload.Length != n * GrantCopySize + toGuest)
            return -Errno.EINVAL;
        var tail = _copyTail.AsSpan(0, n * sizeof(short) + fromGuest);
        fixed (byte* input = payload, output = tail)
        {
            byte* inData = input + n * GrantCopySize, outData = output + n * sizeof(short);
            for (int i = 0; i < n; i++)
            {
                if (ops[i].ToGuest)
                {
                    ops[i].Local = inData;
                    inData += ops[i].Length;
                }
                else
                {
                    ops[i].Local = outData;
                    outData += ops[i].Length;
                }
            }
            hv.Dom0Services.CopyGrants(ops);
        }
        for (int i = 0; i < n; i++)
            BinaryPrimitives.WriteInt16LittleEndian(tail[(i * sizeof(short))..], ops[i].Status);
        extras.Payload = _copyTail.AsMemory(0, tail.Length);
        return 0;
    }

    public void Dispose()
    {
        List<Map> held;
        lock (_lock)
        {
            _closed = true;
            held = [.. _maps.Values];
            _maps.Clear();
            _pagesHeld = 0;
        }
        // A program that exits or is killed unmaps everything, notifications included, as the kernel's close does.
        foreach (var m in held)
            Release(m, notify: true);
    }
}
