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
    internal long Reads, Writes, Flushes, Discards, Barriers, Errors, Unsupported, OutOfRequests, SectorsRead, SectorsWritten;
    public long ReadRequests => Volatile.Read(ref Reads);
    public long WriteRequests => Volatile.Read(ref Writes);
    public long FlushRequests => Volatile.Read(ref Flushes);
    public long DiscardRequests => Volatile.Read(ref Discards);
    public long BarrierRequests => Volatile.Read(ref Barriers);
    /// <summary>Requests answered BLKIF_RSP_ERROR.</summary>
    public long FailedRequests => Volatile.Read(ref Errors);
    /// <summary>Requests answered BLKIF_RSP_EOPNOTSUPP.</summary>
    public long UnsupportedRequests => Volatile.Read(ref Unsupported);
    /// <summary>Times requests waited on the rings because every I/O slot was busy (blkback's oo_req).</summary>
    public long OutOfRequestEvents => Volatile.Read(ref OutOfRequests);
    /// <summary>512-byte sectors read and written (rd_sect, wr_sect).</summary>
    public long ReadSectors => Volatile.Read(ref SectorsRead);
    public long WrittenSectors => Volatile.Read(ref SectorsWritten);
}

/// <summary>
/// A PV disk (device/vbd/N): Xen's blkif protocol served from a disk image, the part Linux's xen-blkback
/// or QEMU's qdisk plays. The toolstack's backend keys name the image (<c>params</c>, <c>format</c>),
/// its access (<c>mode</c> r or w) and <c>device-type</c> (disk or cdrom). The image is opened and
/// described (<c>sectors</c>, <c>info</c>, its sector sizes, the features offered) before InitWait.
/// On connect each of the frontend's queues (<c>multi-queue-num-queues</c>, up to <see cref="MaxQueues"/>)
/// gets its ring (<c>ring-page-order</c> up to <see cref="MaxRingPageOrder"/>, its pages mapped as one) in
/// the layout its <c>protocol</c> names, and its own event channel. Requests are taken off the rings on the
/// backend thread and served by the device's <see cref="BlkifIoPool"/>: image I/O off that thread, many
/// requests in flight, each answered when it finishes. Data moves through per-slot page-aligned buffers
/// (O_DIRECT images, <c>direct-io-safe</c>, take them as they are) by batched grant copies, or, when both
/// ends offer <c>feature-persistent</c>, by plain copies through grants kept mapped per queue. Indirect
/// requests carry up to <see cref="MaxIndirectSegments"/> segments in one granted page; a WRITE_BARRIER
/// waits for what came before it, writes and flushes. A request that is garbage fails alone with
/// BLKIF_RSP_ERROR (BLKIF_RSP_EOPNOTSUPP for an operation not offered); garbage transport keys fail the
/// device alone. Not served: secure discard as such (it is a plain discard), more than one indirect page.
/// </summary>
internal sealed unsafe partial class BlkifBackend(BackendContext context, DeviceAddress address) : BackendDevice(context, address)
{
    private const int PageSize = 4096;
    /// <summary>feature-max-indirect-segments: Linux blkfront's own default, one indirect page's worth at most.</summary>
    public const int MaxIndirectSegments = 32;
    /// <summary>max-ring-page-order: 16-page rings, Linux blkback's bound (XENBUS_MAX_RING_GRANT_ORDER).</summary>
    public const int MaxRingPageOrder = 4;
    /// <summary>I/O slots per device: requests in flight at once; the rest wait on their rings.</summary>
    public const int IoSlots = 64;
    /// <summary>Worker threads per connected device, each doing one request's I/O at a time.</summary>
    public const int IoWorkers = 4;

    /// <summary>multi-queue-max-queues: one queue per host core, at most four.</summary>
    public static int MaxQueues { get; } = Math.Clamp(Environment.ProcessorCount, 1, 4);

    private IBlockImage? _image;
    private bool _readOnly, _discard;
    private long _sectors; // in 512-byte units, as blkif counts
    private int _sectorSize = 512;
    private BlkifQueue?[]? _queues;
    private BlkifIoPool? _pool;
    private int _starved;

    public BlkifStatistics Statistics { get; } = new();

    /// <summary>The image while the device has one open.</summary>
    public IBlockImage? Image => Volatile.Read(ref _image);

    /// <summary>The queues the frontend connected with (0 when not connected).</summary>
    public int QueueCount => _queues?.Length ?? 0;

    /// <summary>Pages of each queue's ring (0 when not connected).</summary>
    public int RingPages => _queues is [{ } q, ..] ? q.RingPages : 0;

    /// <summary>Grants kept mapped for feature-persistent, over all queues.</summary>
    public int PersistentGrants => _queues?.Sum(q => q?.Grants?.Count ?? 0) ?? 0;

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
        WriteBackend("feature-barrier", "1");
        WriteBackend("feature-persistent", "1");
        WriteBackend("feature-max-indirect-segments", MaxIndirectSegments.ToString(CultureInfo.InvariantCulture));
        WriteBackend("max-ring-page-order", MaxRingPageOrder.ToString(CultureInfo.InvariantCulture));
        WriteBackend("multi-queue-max-queues", MaxQueues.ToString(CultureInfo.InvariantCulture));
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
        IBlockImage image;
        try
        {
            image = BlockImages.Open(param, new BlockImageOptions
            {
                Format = format,
                ReadOnly = _readOnly,
                DirectIo = ReadBackend("direct-io-safe") == "1",
                Log = m => System.Console.Error.WriteLine($"xensharpd: backend {Address}: {m}"),
            });
        }
        catch (BlockImageException e) { throw new BackendDeviceException(Errno.ENOENT, e.Message); }
        // blkif.h: a power of two of at least 512; a sector must also fit a segment's page.
        int sectorSize = image.SectorSize;
        if (sectorSize is < 512 or > PageSize || (sectorSize & (sectorSize - 1)) != 0)
        {
            image.Dispose();
            throw new BackendDeviceException(Errno.EINVAL, $"{param}: sector size {sectorSize} is not a power of two from 512 to {PageSize}");
        }
        _image = image;
        _sectorSize = sectorSize;
        // Whole logical sectors only, counted in 512-byte units as blkfront reads "sectors".
        _sectors = image.Size / sectorSize * sectorSize >> SectorShift;
        _discard = !_readOnly && image.SupportsDiscard && ReadBackend("discard-enable") != "0";
    }

    protected override void Connect()
    {
        OpenImage();
        string protocol = ReadFrontend("protocol") ?? XEN_IO_PROTO_ABI_X86_64;
        if (protocol is not (XEN_IO_PROTO_ABI_X86_64 or XEN_IO_PROTO_ABI_X86_32))
            throw new BackendDeviceException(Errno.ENOSYS, $"unknown fe protocol {protocol}");
        uint queues = 1;
        if (ReadFrontend("multi-queue-num-queues") is not null)
        {
            queues = ReadFrontendUInt("multi-queue-num-queues");
            if (queues == 0 || queues > MaxQueues)
                throw new BackendDeviceException(Errno.EINVAL, $"multi-queue-num-queues {queues} of {FrontendPath}: from 1 to {MaxQueues} are served");
        }
        bool orderGiven = ReadFrontend("ring-page-order") is not null;
        uint order = orderGiven ? ReadFrontendUInt("ring-page-order") : 0;
        if (order > MaxRingPageOrder)
            throw new BackendDeviceException(Errno.EINVAL, $"ring-page-order {order} of {FrontendPath}: up to {MaxRingPageOrder} is served");
        bool persistent = ReadFrontend("feature-persistent") == "1";

        _pool = new BlkifIoPool($"vbd{Address.FrontendId}.{Address.DevId}", IoWorkers, IoSlots, MaxIndirectSegments, ServeSlot);
        _queues = new BlkifQueue?[queues];
        Span<uint> refs = stackalloc uint[1 << MaxRingPageOrder];
        for (int q = 0; q < queues; q++)
        {
            // One queue keeps the top-level keys; several each have a queue-N directory.
            string dir = queues == 1 ? "" : $"queue-{q}/";
            int pages = 1 << (int)order;
            if (order == 0 && (!orderGiven || ReadFrontend($"{dir}ring-ref") is not null))
                refs[0] = ReadFrontendUInt($"{dir}ring-ref");
            else
                for (int i = 0; i < pages; i++) refs[i] = ReadFrontendUInt($"{dir}ring-ref{i}");
            uint port = ReadFrontendUInt($"{dir}event-channel");
            short st = GrantBatch.MapContiguous(Dom0, (ushort)Address.FrontendId, refs[..pages], readOnly: false, out var ring);
            if (st != GrantTable.GNTST_okay)
                throw new BackendDeviceException(-st, $"mapping in ring {dir}ring-ref of domain {Address.FrontendId}");
            var grants = persistent ? new BlkifPersistentGrants(Dom0, (ushort)Address.FrontendId, BlkifPersistentGrants.DefaultMax) : null;
            _queues[q] = protocol == XEN_IO_PROTO_ABI_X86_32
                ? new BlkifQueue<BlkifX86_32Abi, BlkifRequest32, BlkifResponse32>(Dom0, ring!, grants)
                : new BlkifQueue<BlkifNativeAbi, BlkifRequest, BlkifResponse>(Dom0, ring!, grants);
            _queues[q]!.Port = BindFrontendEventChannel(port);
        }
    }

    protected override void Disconnect()
    {
        // Every request taken and started is answered before its ring and grants go.
        if (_pool is { } pool && _queues is { } taken)
            foreach (var q in taken) q?.AbandonWaitingBarrier(pool);
        _pool?.Dispose();
        _pool = null;
        if (_queues is { } queues)
            foreach (var q in queues) q?.Dispose();
        _queues = null;
        Interlocked.Exchange(ref _image, null)?.Dispose();
    }

    protected override void ProcessEvents()
    {
        if (_queues is not { } queues || _pool is not { } pool) return;
        bool starved = false;
        foreach (var q in queues)
            if (q is not null && !q.Serve(pool)) starved = true;
        if (!starved) return;
        Interlocked.Increment(ref Statistics.OutOfRequests);
        // Out of slots: a returning one looks again. One may have come back already.
        Volatile.Write(ref _starved, 1);
        Interlocked.MemoryBarrier();
        if (pool.InFlight < pool.Slots && Interlocked.Exchange(ref _starved, 0) != 0)
            Kick();
    }

    // ---- the requests, on the I/O workers ----

    private void ServeSlot(BlkifSlot slot)
    {
        var q = slot.Queue!;
        ref var req = ref slot.Request;
        // An indirect request is answered as the read or write it carried, as blkfront checks.
        byte op = req.Operation == BLKIF_OP_INDIRECT ? Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref req).IndirectOp : req.Operation;
        short status = Execute(slot);
        q.Respond(slot, op, status);
        bool again = q.Finish(slot);
        _pool?.Return(slot);
        if (Interlocked.Exchange(ref _starved, 0) != 0) again = true;
        if (again) Kick();
    }

    /// <summary>One request, done before it is answered.</summary>
    private short Execute(BlkifSlot slot)
    {
        ref var req = ref slot.Request;
        short status;
        switch (req.Operation)
        {
            case BLKIF_OP_READ or BLKIF_OP_WRITE:
                Interlocked.Increment(ref req.Operation == BLKIF_OP_WRITE ? ref Statistics.Writes : ref Statistics.Reads);
                status = Direct(slot, req.Operation == BLKIF_OP_WRITE);
                break;
            case BLKIF_OP_INDIRECT:
                status = Indirect(slot);
                break;
            case BLKIF_OP_FLUSH_DISKCACHE:
                Interlocked.Increment(ref Statistics.Flushes);
                status = Flush();
                break;
            case BLKIF_OP_WRITE_BARRIER:
                // Everything before it is answered (the queue held it back); the write, then the flush.
                Interlocked.Increment(ref Statistics.Barriers);
                status = req.NrSegments == 0 ? BLKIF_RSP_OKAY : Direct(slot, write: true);
                if (status == BLKIF_RSP_OKAY) status = Flush();
                break;
            case BLKIF_OP_DISCARD:
                Interlocked.Increment(ref Statistics.Discards);
                status = _discard ? Discard(ref Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref req)) : BLKIF_RSP_EOPNOTSUPP;
                break;
            default:
                Interlocked.Increment(ref Statistics.Unsupported);
                return BLKIF_RSP_EOPNOTSUPP;
        }
        if (status == BLKIF_RSP_ERROR) Interlocked.Increment(ref Statistics.Errors);
        return status;
    }

    private short Flush()
    {
        var image = _image;
        return image is null || _readOnly ? BLKIF_RSP_OKAY : image.Flush() == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
    }

    /// <summary>A read or write with its segments in the request.</summary>
    private short Direct(BlkifSlot slot, bool write)
    {
        ref var req = ref slot.Request;
        int nr = req.NrSegments;
        if (nr is 0 or > BLKIF_MAX_SEGMENTS_PER_REQUEST)
            return BLKIF_RSP_ERROR;
        for (int i = 0; i < nr; i++) slot.Segments[i] = req.Seg[i];
        return ReadWrite(slot, nr, req.SectorNumber, write);
    }

    /// <summary>A read or write whose segments lie in a granted indirect page.</summary>
    private short Indirect(BlkifSlot slot)
    {
        ref var req = ref Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref slot.Request);
        bool write = req.IndirectOp == BLKIF_OP_WRITE;
        if (req.IndirectOp is not (BLKIF_OP_READ or BLKIF_OP_WRITE))
            return BLKIF_RSP_ERROR;
        Interlocked.Increment(ref write ? ref Statistics.Writes : ref Statistics.Reads);
        int nr = req.NrSegments;
        if (nr is 0 or > MaxIndirectSegments)
            return BLKIF_RSP_ERROR;
        int bytes = nr * sizeof(BlkifRequestSegment);
        fixed (BlkifRequestSegment* segs = slot.Segments)
        {
            nint page = slot.Queue!.Grants?.Get(req.IndirectGrefs[0]) ?? 0;
            if (page != 0)
            {
                Buffer.MemoryCopy((void*)page, segs, bytes, bytes);
            }
            else
            {
                slot.Copies[0] = new GrantCopyOp
                {
                    Dom = (ushort)Address.FrontendId,
                    Ref = req.IndirectGrefs[0],
                    Length = (ushort)bytes,
                    Local = (byte*)segs,
                };
                if (!CopyAll(slot.Copies.AsSpan(0, 1))) return BLKIF_RSP_ERROR;
            }
        }
        return ReadWrite(slot, nr, req.SectorNumber, write);
    }

    private short ReadWrite(BlkifSlot slot, int nr, ulong sectorNumber, bool write)
    {
        var image = _image;
        if (image is null || (write && _readOnly))
            return BLKIF_RSP_ERROR;
        var segments = slot.Segments.AsSpan(0, nr);
        int bytes = 0;
        foreach (var seg in segments)
        {
            if (seg.FirstSect > seg.LastSect || seg.LastSect >= SectorsPerPage)
                return BLKIF_RSP_ERROR;
            bytes += (seg.LastSect - seg.FirstSect + 1) << SectorShift;
        }
        ulong sectors = (ulong)bytes >> SectorShift;
        if (sectorNumber > (ulong)_sectors || sectors > (ulong)_sectors - sectorNumber)
            return BLKIF_RSP_ERROR;
        long offset = (long)sectorNumber << SectorShift;
        if (offset % _sectorSize != 0 || bytes % _sectorSize != 0)
            return BLKIF_RSP_ERROR;
        Interlocked.Add(ref write ? ref Statistics.SectorsWritten : ref Statistics.SectorsRead, (long)sectors);

        // Each segment moves through a persistently mapped page where there is one, by grant copy otherwise.
        var grants = slot.Queue!.Grants;
        int copies = 0;
        for (int i = 0, at = 0; i < nr; i++)
        {
            var seg = segments[i];
            int len = (seg.LastSect - seg.FirstSect + 1) << SectorShift;
            nint page = grants?.Get(seg.Gref) ?? 0;
            slot.Mapped[i] = page;
            if (page == 0)
                slot.Copies[copies++] = new GrantCopyOp
                {
                    Dom = (ushort)Address.FrontendId,
                    Ref = seg.Gref,
                    Offset = (ushort)(seg.FirstSect << SectorShift),
                    Length = (ushort)len,
                    ToGuest = !write,
                    Local = slot.Buffer + at,
                };
            at += len;
        }
        var data = new Span<byte>(slot.Buffer, bytes);
        if (write)
        {
            if (!CopyAll(slot.Copies.AsSpan(0, copies))) return BLKIF_RSP_ERROR;
            MoveMapped(slot, segments, toGuest: false);
            return image.Write(offset, data) == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
        }
        if (image.Read(offset, data) != 0) return BLKIF_RSP_ERROR;
        MoveMapped(slot, segments, toGuest: true);
        return CopyAll(slot.Copies.AsSpan(0, copies)) ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
    }

    /// <summary>Copies the persistently mapped segments between their pages and the slot's buffer.</summary>
    private static void MoveMapped(BlkifSlot slot, ReadOnlySpan<BlkifRequestSegment> segments, bool toGuest)
    {
        for (int i = 0, at = 0; i < segments.Length; i++)
        {
            var seg = segments[i];
            int len = (seg.LastSect - seg.FirstSect + 1) << SectorShift;
            if (slot.Mapped[i] != 0)
            {
                byte* page = (byte*)slot.Mapped[i] + (seg.FirstSect << SectorShift);
                if (toGuest) Buffer.MemoryCopy(slot.Buffer + at, page, len, len);
                else Buffer.MemoryCopy(page, slot.Buffer + at, len, len);
            }
            at += len;
        }
    }

    /// <summary>One GNTTABOP_copy batch for the request's segments; any failed segment fails the request.</summary>
    private bool CopyAll(Span<GrantCopyOp> copies)
    {
        // On a worker, which may wait for a paged-out frame.
        GrantBatch.Copy(Dom0, copies);
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
