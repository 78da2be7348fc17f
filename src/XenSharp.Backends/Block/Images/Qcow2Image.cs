using System.Buffers.Binary;
using System.IO.Compression;
using XenSharp.Public;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// A qcow2 image, version 2 or 3 (QEMU's docs/interop/qcow2.txt): guest clusters mapped through the
/// L1 and L2 tables, host clusters counted in refcount blocks.
///
/// Writes allocate host clusters at the end of the file. The order of the writes keeps the image
/// consistent after the process or the host dies at any point: a new cluster's contents and its
/// refcount first; the L2, L1 or refcount table entry that links it in is held back until an
/// fdatasync has made them durable (at a flush, or when 16384 links are waiting); a cluster that
/// stops being used has its refcount dropped only after the unlinking entry is durable. A crash in
/// between leaves at worst leaked clusters, which <c>qemu-img check</c> tolerates.
/// Clusters shared with internal snapshots (refcount above one, COPIED flag clear) are copied
/// before they are written, and snapshot tables are never touched.
/// </summary>
internal sealed partial class Qcow2Image : FormattedImage
{
    private const ulong Copied = 1UL << 63, CompressedFlag = 1UL << 62, ZeroFlag = 1;
    private const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00; // bits 9..55
    private const ulong RefTableOffsetMask = ~0x1FFUL;
    private const int MaxCacheBytes = 8 << 20;

    private readonly Qcow2Header _header;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly int _l2Bits;
    private readonly ulong[] _l1;
    private ulong[] _refcountTable;
    private long _refcountTableOffset;
    private readonly int _refcountBits;
    private readonly int _refBlockBits; // log2 of refcount entries per block
    private long _fileEnd;              // where the next cluster is allocated
    private long _fileLength;           // what reads and metadata may reach
    private readonly MetadataCache _cache;
    private readonly byte[] _cluster;      // one cluster being assembled for a write
    private readonly byte[] _compressed;   // a compressed cluster's bytes
    private readonly byte[] _decompressed; // the last decompressed cluster
    private ulong _decompressedEntry;
    // Clusters holding L2 tables, refcount blocks, the snapshot table and snapshot L1 tables: a data
    // cluster found among them is damage, and writing it would destroy metadata.
    private readonly HashSet<long> _metadata = [];
    // The file's length at open. An L2 entry found pointing past it is damage, even once the file has
    // grown over where it points: writing through it would land in a cluster allocated since. Each L2
    // table is searched for such entries when first used; the entries found fail their requests.
    private readonly long _openLength;
    private readonly HashSet<long> _searched = [];
    private readonly HashSet<long> _pastEnd = [];
    // Entries linking new clusters in (L2, L1 and refcount table entries), held back until a sync
    // has made what they point at durable; and clusters unlinked, freed once the unlinking is durable.
    // A GiB of new 64 KiB clusters: a guest filling its disk syncs at its own flushes (QEMU too holds
    // dirty L2 tables until a flush or an eviction) rather than every few megabytes, each sync waiting
    // for all the data written since the last. Only a writable image has them.
    private const int MaxPending = 16384;
    private readonly (long Offset, ulong Value)[] _links = [];
    private readonly byte[] _linkBytes = []; // adjacent entries, written as one run
    private int _linkCount;
    // Refcount bytes changed in the cache but not yet written: one range of one block. They are
    // written before every sync, so a new cluster's refcount is durable before anything links it, as
    // when each change was written at once; a sequential writer changes one block many times over.
    private byte[]? _dirtyRefcounts;
    private long _dirtyBlock = -1;
    private int _dirtyFrom, _dirtyTo;
    private readonly long[] _frees = [];
    private int _freeCount;
    private bool _committing;

    public override BlockImageFormat Format => BlockImageFormat.Qcow2;
    public override bool SupportsDiscard => !ReadOnly;
    public override int DiscardGranularity => _clusterSize;

    public Qcow2Image(ImageFile file, BlockImageOptions options, Qcow2Header header, IBlockImage? backing)
        : base(file, options)
    {
        _header = header;
        Size = SectorAligned(header.Size);
        Backing = backing;
        _clusterBits = header.ClusterBits;
        _clusterSize = 1 << _clusterBits;
        _l2Bits = _clusterBits - 3;
        _refcountBits = 1 << header.RefcountOrder;
        _refBlockBits = _clusterBits + 3 - header.RefcountOrder;
        _fileLength = _openLength = file.Length;
        _fileEnd = AlignUp(_fileLength);

        _refcountTableOffset = header.RefcountTableOffset;
        _refcountTable = new ulong[(long)header.RefcountTableClusters * _clusterSize / 8];
        byte[] table = new byte[(long)header.RefcountTableClusters * _clusterSize];
        file.ReadExactly(_refcountTableOffset, table);
        for (int i = 0; i < _refcountTable.Length; i++)
        {
            _refcountTable[i] = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
            long block = (long)(_refcountTable[i] & RefTableOffsetMask);
            if (block != 0)
            {
                CheckMetadataCluster("refcount block", block);
                _metadata.Add(block >> _clusterBits);
            }
        }

        _l1 = new ulong[header.L1Size];
        table = new byte[(long)header.L1Size * 8];
        file.ReadExactly(header.L1TableOffset, table);
        for (int i = 0; i < _l1.Length; i++)
        {
            _l1[i] = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
            long l2 = (long)(_l1[i] & OffsetMask);
            if (l2 != 0)
            {
                CheckMetadataCluster("L2 table", l2);
                _metadata.Add(l2 >> _clusterBits);
            }
        }
        CountSnapshots(AddMetadata, (l1, entries) => AddMetadata(l1, entries * 8L));
        _cache = new MetadataCache(file, _clusterSize, Math.Clamp(MaxCacheBytes / _clusterSize, 8, 256));
        _cache.BeforeEvict = () =>
        {
            if (_linkCount > 0) CommitLinks();
            WriteDirtyRefcounts(); // the slot may hold the dirty block
        };
        _cluster = new byte[_clusterSize];
        _compressed = new byte[2 * _clusterSize + 512];
        _decompressed = new byte[_clusterSize];

        if (file.Writable)
        {
            _links = new (long, ulong)[MaxPending];
            _linkBytes = new byte[MaxPending * 8];
            _frees = new long[MaxPending];
            PrepareForWriting();
        }
    }

    private void PrepareForWriting()
    {
        if ((_header.IncompatibleFeatures & Qcow2Header.Corrupt) != 0)
            throw new ImageCorruptException("the image is marked corrupt; repair with 'qemu-img check -r all' or open read-only");
        // Autoclear features (persistent bitmaps) describe data this writer does not keep up to date:
        // clearing them tells the next reader to ignore them, as the specification asks.
        if (_header.Version == 3 && _header.AutoclearFeatures != 0)
        {
            Span<byte> zero = stackalloc byte[8];
            zero.Clear();
            File.WriteAt(88, zero);
            DataSync();
        }
        if ((_header.IncompatibleFeatures & Qcow2Header.Dirty) != 0)
            RepairRefcounts();
    }

    // ---- reads ----

    protected override bool LocksItself => true;

    protected override int ReadCore(long offset, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int inCluster = (int)(offset & (_clusterSize - 1));
            int n = Math.Min(_clusterSize - inCluster, destination.Length);
            long host = -1;
            lock (Lock)
            {
                ulong entry = L2Entry(offset >> _clusterBits);
                if ((entry & CompressedFlag) != 0 || IsZero(entry))
                    ReadThrough(entry, offset, destination[..n]);
                else if ((host = (long)(entry & OffsetMask)) != 0)
                {
                    CheckDataCluster(host);
                    n += ContiguousAfter(offset + n, host + inCluster + n, destination.Length - n);
                }
            }
            var part = destination[..n];
            // Plain data and the backing file are read outside the lock, so requests overlap. A
            // cluster is never reused once freed, so a concurrent discard leaves at worst zeros.
            if (host == 0)
            {
                int r = ReadBacking(offset, part);
                if (r != 0)
                    return r;
            }
            else if (host > 0 && File.ReadAt(host + inCluster, part) != part.Length)
                throw new ImageCorruptException($"data cluster at {host} is past the end of the file");
            offset += n;
            destination = destination[n..];
        }
        return 0;
    }

    /// <summary>
    /// How many of the next <paramref name="limit"/> bytes from guest offset <paramref name="offset"/>
    /// (cluster-aligned) lie in plain clusters that follow on in the file from <paramref name="host"/>,
    /// so one read serves them all.
    /// </summary>
    private int ContiguousAfter(long offset, long host, int limit)
    {
        int run = 0;
        while (run < limit)
        {
            ulong entry = L2Entry((offset + run) >> _clusterBits);
            if ((entry & CompressedFlag) != 0 || IsZero(entry) || (long)(entry & OffsetMask) != host + run)
                break;
            CheckDataCluster(host + run);
            run += Math.Min(_clusterSize, limit - run);
        }
        return run;
    }

    /// <summary>Reads part of one guest cluster as its L2 entry says.</summary>
    private int ReadThrough(ulong entry, long offset, Span<byte> destination)
    {
        int inCluster = (int)(offset & (_clusterSize - 1));
        if ((entry & CompressedFlag) != 0)
        {
            Decompress(entry);
            _decompressed.AsSpan(inCluster, destination.Length).CopyTo(destination);
            return 0;
        }
        if (IsZero(entry))
        {
            destination.Clear();
            return 0;
        }
        long host = (long)(entry & OffsetMask);
        if (host == 0)
            return ReadBacking(offset, destination);
        CheckDataCluster(host);
        if (File.ReadAt(host + inCluster, destination) != destination.Length)
            throw new ImageCorruptException($"data cluster at {host} is past the end of the file");
        return 0;
    }

    private bool IsZero(ulong entry) => _header.Version >= 3 && (entry & ZeroFlag) != 0;

    private void Decompress(ulong entry)
    {
        if (entry == _decompressedEntry)
            return;
        (long start, int length) = CompressedRange(entry, out long at);
        int available = (int)Math.Min(length, Math.Max(0, _fileLength - at));
        if (at >= _fileLength || start < _clusterSize)
            throw new ImageCorruptException($"compressed cluster at {at} is outside the file");
        int read = File.ReadAt(at, _compressed.AsSpan(0, available));
        _decompressedEntry = 0;
        int produced = 0;
        try
        {
            using var input = new MemoryStream(_compressed, 0, read, writable: false);
            using var inflate = new DeflateStream(input, CompressionMode.Decompress);
            while (produced < _clusterSize)
            {
                int n = inflate.Read(_decompressed, produced, _clusterSize - produced);
                if (n <= 0)
                    break;
                produced += n;
            }
        }
        catch (InvalidDataException e)
        {
            throw new ImageCorruptException($"compressed cluster at {at} does not inflate: {e.Message}");
        }
        _decompressed.AsSpan(produced).Clear();
        _decompressedEntry = entry;
    }

    /// <summary>A compressed descriptor's host bytes: where they start, the 512-byte sectors they span, and the exact start.</summary>
    private (long SectorStart, int Length) CompressedRange(ulong entry, out long at)
    {
        int x = 62 - (_clusterBits - 8);
        at = (long)(entry & ((1UL << x) - 1));
        long sectors = (long)((entry >> x) & ((1UL << (_clusterBits - 8)) - 1)) + 1;
        long sectorStart = at & ~511L;
        return (sectorStart, (int)(sectors * 512 - (at - sectorStart)));
    }

    // ---- writes ----

    protected override int WriteCore(long offset, ReadOnlySpan<byte> source)
    {
        // Clusters this image alone owns (COPIED) are written outside the lock: the hot path. Those
        // that follow on in the file are written together, as one write.
        long runHost = 0;
        int runStart = 0, runLength = 0, done = 0;
        while (done < source.Length)
        {
            int inCluster = (int)((offset + done) & (_clusterSize - 1));
            int n = Math.Min(_clusterSize - inCluster, source.Length - done);
            int r;
            long inPlace;
            lock (Lock)
                r = WriteCluster(offset + done, source.Slice(done, n), out inPlace);
            if (r != 0)
            {
                if (runLength > 0)
                    File.WriteAt(runHost, source.Slice(runStart, runLength));
                return r;
            }
            // A run grows only by the next bytes of the request landing next in the file: a cluster
            // written under the lock (a new one) between two others ends it.
            if (inPlace > 0 && runLength > 0 && runStart + runLength == done && inPlace + inCluster == runHost + runLength)
                runLength += n;
            else if (inPlace > 0)
            {
                if (runLength > 0)
                    File.WriteAt(runHost, source.Slice(runStart, runLength));
                (runHost, runStart, runLength) = (inPlace + inCluster, done, n);
            }
            done += n;
        }
        if (runLength > 0)
            File.WriteAt(runHost, source.Slice(runStart, runLength));
        return 0;
    }

    /// <summary>Writes one cluster's part under the lock, or says where to write it in place (<paramref name="inPlace"/>).</summary>
    private int WriteCluster(long offset, ReadOnlySpan<byte> data, out long inPlace)
    {
        inPlace = 0;
        long guestCluster = offset >> _clusterBits;
        int inCluster = (int)(offset & (_clusterSize - 1));
        long l2 = WritableL2(guestCluster >> _l2Bits);
        int index = (int)(guestCluster & ((1 << _l2Bits) - 1));
        ulong entry = EntryIn(l2, index);
        long host = (long)(entry & OffsetMask);
        bool full = data.Length == _clusterSize;

        if ((entry & CompressedFlag) == 0 && host != 0)
        {
            CheckDataCluster(host);
            if (host > _fileLength - _clusterSize)
                throw new ImageCorruptException($"data cluster at {host} is past the end of the file");
            if ((entry & Copied) != 0 || GetRefcount(host >> _clusterBits) == 1)
            {
                // Ours alone: write in place. A preallocated zero cluster gets its other bytes zeroed first.
                if (IsZero(entry) && !full)
                {
                    _cluster.AsSpan().Clear();
                    data.CopyTo(_cluster.AsSpan(inCluster));
                    File.WriteAt(host, _cluster);
                }
                else if ((entry & Copied) != 0 && !IsZero(entry))
                {
                    inPlace = host;
                    return 0;
                }
                else
                    File.WriteAt(host + inCluster, data);
                ulong mapped = (ulong)host | Copied;
                if (mapped != entry)
                    SetL2Entry(l2, index, mapped);
                return 0;
            }
        }

        // A new cluster: what the guest saw there, then the new bytes over it; a whole cluster as it came.
        long fresh;
        if (full)
        {
            fresh = ReserveCluster();
            File.WriteAt(fresh, data);
        }
        else
        {
            int r = ReadThrough(entry, offset - inCluster, _cluster);
            if (r != 0)
                return r;
            data.CopyTo(_cluster.AsSpan(inCluster));
            fresh = ReserveCluster();
            File.WriteAt(fresh, _cluster);
        }
        GrowFileLength(fresh + _clusterSize);
        SetRefcount(fresh >> _clusterBits, 1);
        SetL2Entry(l2, index, (ulong)fresh | Copied);
        Release(entry);
        return 0;
    }

    /// <summary>The L2 table for an L1 index, made ours alone: allocated if absent, copied if a snapshot shares it.</summary>
    private long WritableL2(long l1Index)
    {
        if (l1Index >= _l1.Length)
            throw new ImageCorruptException($"L1 index {l1Index} beyond the L1 table");
        ulong l1Entry = _l1[l1Index];
        long l2 = (long)(l1Entry & OffsetMask);
        if (l2 != 0 && (l1Entry & Copied) != 0)
            return l2;
        if (l2 != 0 && GetRefcount(l2 >> _clusterBits) == 1)
        {
            SetL1Entry(l1Index, (ulong)l2 | Copied);
            return l2;
        }
        if (l2 == 0)
            _cluster.AsSpan().Clear();
        else
            L2Table(l2).CopyTo(_cluster, 0);
        long fresh = ReserveCluster();
        File.WriteAt(fresh, _cluster);
        GrowFileLength(fresh + _clusterSize);
        _cache.Put(fresh, _cluster);
        _metadata.Add(fresh >> _clusterBits);
        SetRefcount(fresh >> _clusterBits, 1);
        SetL1Entry(l1Index, (ulong)fresh | Copied);
        if (l2 != 0)
            Free(l2 >> _clusterBits);
        return fresh;
    }

    /// <summary>Drops this mapping's reference to the host clusters an old L2 entry pointed at.</summary>
    private void Release(ulong entry)
    {
        if ((entry & CompressedFlag) != 0)
        {
            (long start, int length) = CompressedRange(entry, out _);
            for (long c = start >> _clusterBits; c <= (start + length - 1) >> _clusterBits; c++)
                Free(c);
            if (entry == _decompressedEntry)
                _decompressedEntry = 0;
            return;
        }
        long host = (long)(entry & OffsetMask);
        if (host != 0)
            Free(host >> _clusterBits);
    }

    // ---- discard ----

    protected override int DiscardCore(long offset, long length)
    {
        lock (Lock)
            return DiscardClusters(offset, length);
    }

    private int DiscardClusters(long offset, long length)
    {
        long first = (offset + _clusterSize - 1) >> _clusterBits;
        long end = (offset + length) >> _clusterBits; // exclusive; only whole clusters are given back
        if (offset + length == Size)
            end = (Size + _clusterSize - 1) >> _clusterBits;
        // With a backing file, only a v3 zero flag can say "reads zeros"; a v2 image keeps the data.
        if (Backing is not null && _header.Version < 3)
            return 0;
        ulong replacement = Backing is not null ? ZeroFlag : 0;
        for (long c = first; c < end; c++)
        {
            long l1Index = c >> _l2Bits;
            if ((_l1[l1Index] & OffsetMask) == 0 && Backing is null)
            {
                c |= (1L << _l2Bits) - 1; // the whole L2 range is unallocated already
                continue;
            }
            long l2 = WritableL2(l1Index);
            int index = (int)(c & ((1 << _l2Bits) - 1));
            ulong entry = EntryIn(l2, index);
            if (entry == replacement)
                continue;
            SetL2Entry(l2, index, replacement);
            Release(entry);
        }
        return 0;
    }

    // ---- mapping metadata ----

    private ulong L2Entry(long guestCluster)
    {
        long l1Index = guestCluster >> _l2Bits;
        if (l1Index >= _l1.Length)
            throw new ImageCorruptException($"guest cluster {guestCluster} beyond the L1 table");
        long l2 = (long)(_l1[l1Index] & OffsetMask);
        if (l2 == 0)
            return 0;
        int index = (int)(guestCluster & ((1 << _l2Bits) - 1));
        return EntryIn(l2, index);
    }

    /// <summary>An L2 table, searched for entries past the file's end at open when first used.</summary>
    private byte[] L2Table(long l2)
    {
        byte[] table = _cache.Get(l2);
        if (_searched.Add(l2))
            for (int i = 0; i < _clusterSize / 8; i++)
            {
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
                long host = (long)(entry & OffsetMask);
                if ((entry & CompressedFlag) == 0 && host != 0 && host >= _openLength)
                    _pastEnd.Add(l2 + i * 8L);
            }
        return table;
    }

    /// <summary>An L2 entry; one found past the file's end at open is damage.</summary>
    private ulong EntryIn(long l2, int index)
    {
        byte[] table = L2Table(l2);
        if (_pastEnd.Count > 0 && _pastEnd.Contains(l2 + index * 8L))
            throw new ImageCorruptException($"the L2 entry at {l2 + index * 8L} points past the end of the file");
        return BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(index * 8));
    }

    private void SetL2Entry(long l2, int index, ulong entry)
    {
        byte[] table = L2Table(l2);
        BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(index * 8), entry);
        Link(l2 + index * 8, entry);
    }

    private void SetL1Entry(long index, ulong entry)
    {
        _l1[index] = entry;
        Link(_header.L1TableOffset + index * 8, entry);
    }

    // ---- ordering: links after a sync, frees after their unlinking is durable ----

    private void Link(long offset, ulong value)
    {
        if (_linkCount == MaxPending)
            CommitLinks();
        _links[_linkCount++] = (offset, value);
    }

    private void Free(long cluster)
    {
        if (_freeCount == MaxPending)
            CommitFrees();
        _frees[_freeCount++] = cluster;
    }

    /// <summary>Syncs (new clusters' contents and refcounts become durable), then writes the held-back entries.</summary>
    private void CommitLinks()
    {
        if (_committing || _linkCount == 0)
            return;
        _committing = true;
        try
        {
            SyncOrThrow();
            // Entries that follow on in the file (a table's neighbouring slots, as sequential writes
            // make them) go out as one write; a repeated slot breaks the run, so the later value lands last.
            int run = 0;
            long runStart = 0;
            for (int i = 0; i < _linkCount; i++)
            {
                if (run > 0 && _links[i].Offset != runStart + run * 8L)
                {
                    File.WriteAt(runStart, _linkBytes.AsSpan(0, run * 8));
                    run = 0;
                }
                if (run == 0)
                    runStart = _links[i].Offset;
                BinaryPrimitives.WriteUInt64BigEndian(_linkBytes.AsSpan(run * 8), _links[i].Value);
                run++;
            }
            if (run > 0)
                File.WriteAt(runStart, _linkBytes.AsSpan(0, run * 8));
            _linkCount = 0;
        }
        finally
        {
            _committing = false;
        }
    }

    /// <summary>Makes the unlinking entries durable, then drops the freed clusters' refcounts.</summary>
    private void CommitFrees()
    {
        CommitLinks();
        if (_freeCount == 0)
            return;
        SyncOrThrow();
        int count = _freeCount;
        _freeCount = 0;
        for (int i = 0; i < count; i++)
            ChangeRefcount(_frees[i], -1);
    }

    private void SyncOrThrow()
    {
        int r = DataSync();
        if (r != 0)
            throw new IOException($"fdatasync failed: errno {-r}");
    }

    /// <summary>fdatasync of the image, after the refcount changes held in the cache are written.</summary>
    private int DataSync()
    {
        WriteDirtyRefcounts();
        return File.DataSync();
    }

    private void WriteDirtyRefcounts()
    {
        if (_dirtyBlock < 0)
            return;
        long block = _dirtyBlock;
        _dirtyBlock = -1;
        File.WriteAt(block + _dirtyFrom, _dirtyRefcounts.AsSpan(_dirtyFrom, _dirtyTo - _dirtyFrom));
        _dirtyRefcounts = null;
    }

    protected override int FlushCore()
    {
        lock (Lock)
        {
            CommitFrees();
            CommitLinks(); // entries the frees linked (a new refcount block)
            return DataSync();
        }
    }

    protected override void Close()
    {
        if (!File.Writable)
            return;
        CommitFrees();
        CommitLinks();
        DataSync();
    }

    // ---- refcounts and allocation ----

    private long ReserveCluster()
    {
        while (true)
        {
            long at = _fileEnd;
            _fileEnd += _clusterSize;
            if (GetRefcount(at >> _clusterBits) == 0)
                return at;
        }
    }

    private long GetRefcount(long cluster)
    {
        long blockIndex = cluster >> _refBlockBits;
        if (blockIndex >= _refcountTable.Length)
            return 0;
        long block = (long)(_refcountTable[blockIndex] & RefTableOffsetMask);
        if (block == 0)
            return 0;
        return ReadRefcount(_cache.Get(block), (int)(cluster & ((1L << _refBlockBits) - 1)));
    }

    private void ChangeRefcount(long cluster, int delta)
    {
        long current = GetRefcount(cluster);
        if (current == 0 && delta < 0)
            throw new ImageCorruptException($"refcount of cluster {cluster} would drop below zero");
        long next = current + delta;
        SetRefcount(cluster, next);
        if (next == 0)
        {
            if (_dirtyBlock == cluster << _clusterBits)
                WriteDirtyRefcounts(); // its slot is about to be given up
            _cache.Invalidate(cluster << _clusterBits);
            File.PunchHole(cluster << _clusterBits, _clusterSize);
        }
    }

    private void SetRefcount(long cluster, long value)
    {
        if (_refcountBits < 64 && (ulong)value >= 1UL << _refcountBits)
            throw new ImageCorruptException($"refcount of cluster {cluster} overflows {_refcountBits} bits");
        long block = RefcountBlock(cluster >> _refBlockBits);
        if (_dirtyBlock >= 0 && _dirtyBlock != block)
            WriteDirtyRefcounts();
        byte[] table = _cache.Get(block); // a miss may evict the dirty block's slot, which writes it first
        int index = (int)(cluster & ((1L << _refBlockBits) - 1));
        int byteAt = WriteRefcount(table, index, (ulong)value);
        int byteEnd = byteAt + Math.Max(1, _refcountBits / 8);
        if (_dirtyBlock == block)
        {
            _dirtyFrom = Math.Min(_dirtyFrom, byteAt);
            _dirtyTo = Math.Max(_dirtyTo, byteEnd);
        }
        else
            (_dirtyBlock, _dirtyRefcounts, _dirtyFrom, _dirtyTo) = (block, table, byteAt, byteEnd);
    }

    /// <summary>The refcount block for a block index, allocated (and the refcount table grown) if missing.</summary>
    private long RefcountBlock(long blockIndex)
    {
        if (blockIndex >= _refcountTable.Length)
            GrowRefcountTable(blockIndex);
        long block = (long)(_refcountTable[blockIndex] & RefTableOffsetMask);
        if (block != 0)
            return block;

        long fresh = ReserveCluster();
        long freshCluster = fresh >> _clusterBits;
        bool coversItself = freshCluster >> _refBlockBits == blockIndex;
        if (!coversItself)
            SetRefcount(freshCluster, 1); // counted in another block before this one is linked
        _cluster.AsSpan().Clear();
        if (coversItself)
            WriteRefcount(_cluster, (int)(freshCluster & ((1L << _refBlockBits) - 1)), 1);
        File.WriteAt(fresh, _cluster);
        GrowFileLength(fresh + _clusterSize);
        _cache.Put(fresh, _cluster);
        _metadata.Add(freshCluster);
        SetRefcountTableEntry(blockIndex, (ulong)fresh);
        return fresh;
    }

    private void SetRefcountTableEntry(long index, ulong value)
    {
        _refcountTable[index] = value;
        Link(_refcountTableOffset + index * 8, value);
    }

    /// <summary>
    /// Moves the refcount table to a bigger one at the end of the file. The new table is complete
    /// on disk and synced before the header points at it; the old table's clusters are freed after.
    /// </summary>
    private void GrowRefcountTable(long neededIndex)
    {
        CommitLinks(); // links queued for the old table's place go there first
        long perCluster = _clusterSize / 8;
        long oldEntries = _refcountTable.Length;
        long guess = Math.Max(neededIndex + 1, oldEntries * 2);
        long clusters = (guess + perCluster - 1) / perCluster;
        // The new table and the blocks counting it must be covered by the new table itself.
        long lastCluster = (_fileEnd >> _clusterBits) + clusters + 4;
        long entries = Math.Max(clusters * perCluster, (lastCluster >> _refBlockBits) + 1);
        clusters = (entries + perCluster - 1) / perCluster;
        if (clusters * _clusterSize > 64 << 20)
            throw new ImageCorruptException("refcount table would exceed 64 MiB");

        long newOffset = _fileEnd;
        for (long c = 0; c < clusters; c++)
            if (GetRefcount((newOffset >> _clusterBits) + c) != 0)
                throw new ImageCorruptException("clusters past the end of the file are in use");
        _fileEnd += clusters * _clusterSize;

        ulong[] oldTable = _refcountTable;
        long oldOffset = _refcountTableOffset;
        int oldClusters = (int)(oldEntries * 8 / _clusterSize);
        var table = new ulong[clusters * perCluster];
        oldTable.CopyTo(table, 0);
        byte[] bytes = new byte[clusters * _clusterSize];
        for (int i = 0; i < table.Length; i++)
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), table[i]);
        File.WriteAt(newOffset, bytes);
        GrowFileLength(newOffset + bytes.Length);

        // From here refcount blocks created for the new table's own clusters are linked in the new table.
        _refcountTable = table;
        _refcountTableOffset = newOffset;
        for (long c = 0; c < clusters; c++)
            SetRefcount((newOffset >> _clusterBits) + c, 1);
        CommitLinks(); // refcount blocks made just now are linked in the new table
        SyncOrThrow();

        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(header, (ulong)newOffset);
        BinaryPrimitives.WriteUInt32BigEndian(header[8..], (uint)clusters);
        File.WriteAt(48, header);
        DataSync();

        for (long c = 0; c < oldClusters; c++)
            ChangeRefcount((oldOffset >> _clusterBits) + c, -1);
    }

    private long ReadRefcount(byte[] block, int index)
    {
        switch (_refcountBits)
        {
            case 64: return (long)BinaryPrimitives.ReadUInt64BigEndian(block.AsSpan(index * 8));
            case 32: return BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan(index * 4));
            case 16: return BinaryPrimitives.ReadUInt16BigEndian(block.AsSpan(index * 2));
            case 8: return block[index];
            default:
                int perByte = 8 / _refcountBits;
                int shift = index % perByte * _refcountBits;
                return (block[index / perByte] >> shift) & ((1 << _refcountBits) - 1);
        }
    }

    /// <summary>Stores a refcount in a block buffer; returns the byte offset of what changed.</summary>
    private int WriteRefcount(byte[] block, int index, ulong value)
    {
        switch (_refcountBits)
        {
            case 64: BinaryPrimitives.WriteUInt64BigEndian(block.AsSpan(index * 8), value); return index * 8;
            case 32: BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(index * 4), (uint)value); return index * 4;
            case 16: BinaryPrimitives.WriteUInt16BigEndian(block.AsSpan(index * 2), (ushort)value); return index * 2;
            case 8: block[index] = (byte)value; return index;
            default:
                int perByte = 8 / _refcountBits;
                int shift = index % perByte * _refcountBits;
                int mask = ((1 << _refcountBits) - 1) << shift;
                int at = index / perByte;
                block[at] = (byte)((block[at] & ~mask) | (((int)value << shift) & mask));
                return at;
        }
    }

    // ---- checks ----

    private long AlignUp(long value) => (value + _clusterSize - 1) & ~(long)(_clusterSize - 1);

    private void GrowFileLength(long end)
    {
        if (end > _fileLength)
            _fileLength = end;
    }

    private void CheckMetadataCluster(string what, long offset)
    {
        if (offset % _clusterSize != 0 || offset < _clusterSize || offset > _fileLength - _clusterSize)
            throw new ImageCorruptException($"{what} at offset {offset} is unaligned or outside the file");
        if (Qcow2Header.Overlaps(offset, _clusterSize, _header.L1TableOffset, (long)_header.L1Size * 8) ||
            Qcow2Header.Overlaps(offset, _clusterSize, _refcountTableOffset, (long)_refcountTable.Length * 8))
            throw new ImageCorruptException($"{what} at offset {offset} overlaps the L1 or refcount table");
    }

    private void AddMetadata(long offset, long length)
    {
        for (long c = offset >> _clusterBits; length > 0 && c <= (offset + length - 1) >> _clusterBits; c++)
            _metadata.Add(c);
    }

    private void CheckDataCluster(long host)
    {
        if (host % _clusterSize != 0 || host < _clusterSize || _metadata.Contains(host >> _clusterBits) ||
            Qcow2Header.Overlaps(host, _clusterSize, _header.L1TableOffset, (long)_header.L1Size * 8) ||
            Qcow2Header.Overlaps(host, _clusterSize, _refcountTableOffset, (long)_refcountTable.Length * 8))
            throw new ImageCorruptException($"data cluster at {host} is unaligned or overlaps metadata");
    }
}
