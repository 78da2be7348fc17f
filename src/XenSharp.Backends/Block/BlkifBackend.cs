using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Backends.Block.Images;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Dom0;
using XenSharp.Public;
using XenSharp.Public.Io;
using static XenSharp.Public.Io.Blkif;

namespace XenSharp.Backends.Block;

/// <summary>Requests a block device has served, by kind (Linux blkback's statistics directory).</summary>
public sealed class BlkifStatistics
{
    internal long Reads, Writes, Flushes, Discards, Errors, Unsupported;
    public long ReadRequests => Volatile.Read(ref Reads);
    public long WriteRequests => Volatile.Read(ref Writes);
    public long FlushRequests => Volatile.Read(ref Flushes);
    public long DiscardRequests => Volatile.Read(ref Discards);
    /// <summary>Requests answered BLKIF_RSP_ERROR.</summary>
    public long FailedRequests => Volatile.Read(ref Errors);
    /// <summary>Requests answered BLKIF_RSP_EOPNOTSUPP.</summary>
    public long UnsupportedRequests => Volatile.Read(ref Unsupported);
}

/// <summary>
/// A PV disk (device/vbd/N): Xen's blkif protocol served from a disk image, the part Linux's xen-blkback
/// or QEMU's qdisk plays. The toolstack's backend keys name the image (<c>params</c>, <c>format</c>),
/// its access (<c>mode</c> r or w) and <c>device-type</c> (disk or cdrom). The image is opened and
/// described (<c>sectors</c>, <c>info</c>, sector sizes, flush and discard features) before InitWait;
/// on connect the frontend's single-page ring is mapped in the layout its <c>protocol</c> names.
/// Reads and writes move data with batched grant copies through one preallocated buffer; a request
/// that is garbage fails alone with BLKIF_RSP_ERROR (BLKIF_RSP_EOPNOTSUPP for an operation not offered).
/// Indirect requests carry up to <see cref="MaxIndirectSegments"/> segments in one granted page.
/// Not served: multi-page rings, multiple queues, persistent grants.
/// </summary>
internal sealed unsafe partial class BlkifBackend(BackendContext context, DeviceAddress address) : BackendDevice(context, address)
{
    private const int PageSize = 4096;
    /// <summary>feature-max-indirect-segments: Linux blkfront's own default, one indirect page's worth at most.</summary>
    public const int MaxIndirectSegments = 32;
    private const int MaxRequestBytes = MaxIndirectSegments * PageSize;

    private IBlockImage? _image;
    private bool _readOnly, _discard;
    private long _sectors; // in 512-byte units, as blkif counts
    private int _sectorSize = 512;
    private BackRing<BlkifRequest, BlkifResponse>? _ring64;
    private BackRing<BlkifRequest32, BlkifResponse32>? _ring32;
    private byte* _buffer;
    private readonly GrantCopyOp[] _copies = GC.AllocateArray<GrantCopyOp>(MaxIndirectSegments, pinned: true);
    private readonly BlkifRequestSegment[] _segments = GC.AllocateArray<BlkifRequestSegment>(MaxIndirectSegments, pinned: true);

    public BlkifStatistics Statistics { get; } = new();

    /// <summary>The image while the device has one open.</summary>
    public IBlockImage? Image => Volatile.Read(ref _image);

    // ---- xenbus ----

    protected override void Initialise()
    {
        OpenImage();
        uint info = 0;
        if (_readOnly) info |= VDISK_READONLY;
        if (ReadBackend("device-type") == "cdrom") info |= VDISK_CDROM | VDISK_READONLY;
        if (ReadBackend("removable") == "1") info |= VDISK_REMOVABLE;
        WriteBackend("sectors", _sectors.ToString(CultureInfo.InvariantCulture));
        WriteBackend("info", info.ToString(CultureInfo.InvariantCulture));
        WriteBackend("sector-size", _sectorSize.ToString(CultureInfo.InvariantCulture));
        WriteBackend("physical-sector-size", _sectorSize.ToString(CultureInfo.InvariantCulture));
        WriteBackend("feature-flush-cache", "1");
        WriteBackend("feature-max-indirect-segments", MaxIndirectSegments.ToString(CultureInfo.InvariantCulture));
        WriteBackend("feature-discard", _discard ? "1" : "0");
        if (_discard)
        {
            WriteBackend("discard-granularity", Math.Max(_image!.DiscardGranularity, _sectorSize).ToString(CultureInfo.InvariantCulture));
            WriteBackend("discard-alignment", "0");
            WriteBackend("discard-secure", "0");
        }
        WatchMedia();
    }

    /// <summary>Opens the image the backend keys name (again, after a close); an unusable one ends the device.</summary>
    private void OpenImage()
    {
        if (_image is not null) return;
        string? param = ReadBackend("params");
        _readOnly = ReadBackend("mode") != "w" || ReadBackend("device-type") == "cdrom";
        if (string.IsNullOrEmpty(param))
        {
            // An empty cdrom drive: no medium, every read fails.
            _sectors = 0;
            _discard = false;
            return;
        }
        BlockImageFormat? format;
        try { format = BlockImages.ParseFormat(ReadBackend("format")); }
        catch (ArgumentException e) { throw new BackendDeviceException(Errno.EINVAL, e.Message); }
        try
        {
            _image = BlockImages.Open(param, new BlockImageOptions
            {
                Format = format,
                ReadOnly = _readOnly,
                DirectIo = ReadBackend("direct-io-safe") == "1",
                Log = m => System.Console.Error.WriteLine($"xensharpd: backend {Address}: {m}"),
            });
        }
        catch (BlockImageException e) { throw new BackendDeviceException(Errno.ENOENT, e.Message); }
        _sectorSize = _image.SectorSize;
        _sectors = _image.Size >> SectorShift;
        _discard = !_readOnly && _image.SupportsDiscard && ReadBackend("discard-enable") != "0";
    }

    protected override void Connect()
    {
        OpenImage();
        if (ReadFrontend("ring-page-order") is { } order && order != "0")
            throw new BackendDeviceException(Errno.EINVAL, $"ring-page-order {order} of {FrontendPath}: only single-page rings are served");
        uint gref = ReadFrontendUInt("ring-ref");
        uint port = ReadFrontendUInt("event-channel");
        string protocol = ReadFrontend("protocol") ?? XEN_IO_PROTO_ABI_X86_64;
        if (protocol is not (XEN_IO_PROTO_ABI_X86_64 or XEN_IO_PROTO_ABI_X86_32))
            throw new BackendDeviceException(Errno.ENOSYS, $"unknown fe protocol {protocol}");
        var page = (byte*)MapRingRef(gref);
        BindFrontendEventChannel(port);
        if (_buffer is null)
            _buffer = (byte*)NativeMemory.AlignedAlloc(MaxRequestBytes, PageSize);
        if (protocol == XEN_IO_PROTO_ABI_X86_32)
            _ring32 = new BackRing<BlkifRequest32, BlkifResponse32>(page);
        else
            _ring64 = new BackRing<BlkifRequest, BlkifResponse>(page);
    }

    protected override void Disconnect()
    {
        _ring64 = null;
        _ring32 = null;
        if (_buffer is not null)
        {
            NativeMemory.AlignedFree(_buffer);
            _buffer = null;
        }
        Interlocked.Exchange(ref _image, null)?.Dispose();
    }

    protected override void ProcessEvents()
    {
        if (_ring64 is { } r64) Serve<Native, BlkifRequest, BlkifResponse>(r64);
        else if (_ring32 is { } r32) Serve<X86_32, BlkifRequest32, BlkifResponse32>(r32);
    }

    // ---- the ring ----

    /// <summary>A frontend's request layout, turned into the native one on the way in.</summary>
    private interface IAbi<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
    {
        static abstract void ToNative(in TReq from, out BlkifRequest to);
        static abstract void Respond(ref TRsp slot, ulong id, byte operation, short status);
    }

    private readonly struct Native : IAbi<BlkifRequest, BlkifResponse>
    {
        public static void ToNative(in BlkifRequest from, out BlkifRequest to) => to = from;

        public static void Respond(ref BlkifResponse slot, ulong id, byte operation, short status) =>
            slot = new BlkifResponse { Id = id, Operation = operation, Status = status };
    }

    private readonly struct X86_32 : IAbi<BlkifRequest32, BlkifResponse32>
    {
        public static void ToNative(in BlkifRequest32 from, out BlkifRequest to)
        {
            to = default;
            to.Operation = from.Operation;
            to.NrSegments = from.NrSegments;
            to.Handle = from.Handle;
            to.Id = from.Id;
            to.SectorNumber = from.SectorNumber;
            if (from.Operation == BLKIF_OP_INDIRECT)
            {
                ref readonly var i = ref Unsafe.As<BlkifRequest32, BlkifRequestIndirect32>(ref Unsafe.AsRef(in from));
                ref var n = ref Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref to);
                n.IndirectOp = i.IndirectOp;
                n.NrSegments = i.NrSegments;
                n.Id = i.Id;
                n.SectorNumber = i.SectorNumber;
                n.Handle = i.Handle;
                n.IndirectGrefs = i.IndirectGrefs;
            }
            else if (from.Operation == BLKIF_OP_DISCARD)
            {
                ref readonly var d = ref Unsafe.As<BlkifRequest32, BlkifRequestDiscard32>(ref Unsafe.AsRef(in from));
                ref var n = ref Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref to);
                n.Flag = d.Flag;
                n.NrSectors = d.NrSectors;
            }
            else
            {
                int nr = Math.Min((int)from.NrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST);
                for (int i = 0; i < nr; i++) to.Seg[i] = from.Seg[i];
            }
        }

        public static void Respond(ref BlkifResponse32 slot, ulong id, byte operation, short status) =>
            slot = new BlkifResponse32 { Id = id, Operation = operation, Status = status };
    }

    /// <summary>Answers every request on the ring, then notifies the frontend if it asked to be.</summary>
    private void Serve<TAbi, TReq, TRsp>(BackRing<TReq, TRsp> ring)
        where TAbi : IAbi<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
    {
        while (true)
        {
            var check = ring.CheckForRequests(out uint count);
            if (check == RingCheck.Empty)
                check = ring.FinalCheckForRequests(out count);
            if (check == RingCheck.Overflow)
                throw new BackendDeviceException(Errno.EBADMSG, "the frontend's request producer ran beyond the ring");
            if (check == RingCheck.Empty)
                return;
            for (uint i = 0; i < count; i++)
            {
                ring.TakeRequest(out TReq raw);
                TAbi.ToNative(raw, out BlkifRequest req);
                short status = Execute(ref req);
                // An indirect request is answered as the read or write it carried, as blkfront checks.
                byte op = req.Operation == BLKIF_OP_INDIRECT ? Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref req).IndirectOp : req.Operation;
                TAbi.Respond(ref ring.NextResponse(), req.Id, op, status);
            }
            if (ring.PushResponsesAndCheckNotify())
                NotifyFrontend();
        }
    }

    /// <summary>One request, done before it is answered.</summary>
    private short Execute(ref BlkifRequest req)
    {
        short status;
        switch (req.Operation)
        {
            case BLKIF_OP_READ or BLKIF_OP_WRITE:
                status = Direct(ref req);
                break;
            case BLKIF_OP_INDIRECT:
                status = Indirect(ref Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref req));
                break;
            case BLKIF_OP_FLUSH_DISKCACHE:
                Interlocked.Increment(ref Statistics.Flushes);
                status = _image is null || _readOnly ? BLKIF_RSP_OKAY : _image.Flush() == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
                break;
            case BLKIF_OP_DISCARD:
                Interlocked.Increment(ref Statistics.Discards);
                status = _discard ? Discard(ref Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref req)) : BLKIF_RSP_EOPNOTSUPP;
                break;
            default:
                // Barriers are not offered; anything else is unknown.
                Interlocked.Increment(ref Statistics.Unsupported);
                return BLKIF_RSP_EOPNOTSUPP;
        }
        if (status == BLKIF_RSP_ERROR) Interlocked.Increment(ref Statistics.Errors);
        return status;
    }

    /// <summary>A read or write with its segments in the request.</summary>
    private short Direct(ref BlkifRequest req)
    {
        bool write = req.Operation == BLKIF_OP_WRITE;
        Interlocked.Increment(ref write ? ref Statistics.Writes : ref Statistics.Reads);
        int nr = req.NrSegments;
        if (nr is 0 or > BLKIF_MAX_SEGMENTS_PER_REQUEST)
            return BLKIF_RSP_ERROR;
        for (int i = 0; i < nr; i++) _segments[i] = req.Seg[i];
        return ReadWrite(_segments.AsSpan(0, nr), req.SectorNumber, write);
    }

    /// <summary>A read or write whose segments lie in a granted indirect page.</summary>
    private short Indirect(ref BlkifRequestIndirect req)
    {
        bool write = req.IndirectOp == BLKIF_OP_WRITE;
        if (req.IndirectOp is not (BLKIF_OP_READ or BLKIF_OP_WRITE))
            return BLKIF_RSP_ERROR;
        Interlocked.Increment(ref write ? ref Statistics.Writes : ref Statistics.Reads);
        int nr = req.NrSegments;
        if (nr is 0 or > MaxIndirectSegments)
            return BLKIF_RSP_ERROR;
        fixed (BlkifRequestSegment* segs = _segments)
        {
            _copies[0] = new GrantCopyOp
            {
                Dom = (ushort)Address.FrontendId,
                Ref = req.IndirectGrefs[0],
                Length = (ushort)(nr * sizeof(BlkifRequestSegment)),
                Local = (byte*)segs,
            };
            if (!CopyAll(_copies.AsSpan(0, 1))) return BLKIF_RSP_ERROR;
        }
        return ReadWrite(_segments.AsSpan(0, nr), req.SectorNumber, write);
    }

    private short ReadWrite(ReadOnlySpan<BlkifRequestSegment> segments, ulong sectorNumber, bool write)
    {
        var image = _image;
        if (image is null || (write && _readOnly))
            return BLKIF_RSP_ERROR;
        int nr = segments.Length;
        var copies = _copies.AsSpan(0, nr);
        int bytes = 0;
        for (int i = 0; i < nr; i++)
        {
            var seg = segments[i];
            if (seg.FirstSect > seg.LastSect || seg.LastSect >= SectorsPerPage)
                return BLKIF_RSP_ERROR;
            int len = (seg.LastSect - seg.FirstSect + 1) << SectorShift;
            copies[i] = new GrantCopyOp
            {
                Dom = (ushort)Address.FrontendId,
                Ref = seg.Gref,
                Offset = (ushort)(seg.FirstSect << SectorShift),
                Length = (ushort)len,
                ToGuest = !write,
                Local = _buffer + bytes,
            };
            bytes += len;
        }
        ulong sectors = (ulong)bytes >> SectorShift;
        if (sectorNumber > (ulong)_sectors || sectors > (ulong)_sectors - sectorNumber)
            return BLKIF_RSP_ERROR;
        long offset = (long)sectorNumber << SectorShift;
        if (offset % _sectorSize != 0 || bytes % _sectorSize != 0)
            return BLKIF_RSP_ERROR;
        var data = new Span<byte>(_buffer, bytes);
        if (write)
        {
            if (!CopyAll(copies)) return BLKIF_RSP_ERROR;
            return image.Write(offset, data) == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
        }
        if (image.Read(offset, data) != 0) return BLKIF_RSP_ERROR;
        return CopyAll(copies) ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
    }

    /// <summary>One GNTTABOP_copy batch for the request's segments; any failed segment fails the request.</summary>
    private bool CopyAll(Span<GrantCopyOp> copies)
    {
        Dom0.CopyGrants(copies);
        foreach (ref readonly var c in copies)
            if (c.Status != GrantTable.GNTST_okay) return false;
        return true;
    }

    private short Discard(ref BlkifRequestDiscard req)
    {
        var image = _image;
        if (image is null || req.SectorNumber > (ulong)_sectors || req.NrSectors > (ulong)_sectors - req.SectorNumber)
            return BLKIF_RSP_ERROR;
        long offset = (long)req.SectorNumber << SectorShift, length = (long)req.NrSectors << SectorShift;
        if (offset % _sectorSize != 0 || length % _sectorSize != 0)
            return BLKIF_RSP_ERROR;
        return length == 0 || image.Discard(offset, length) == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
    }
}
