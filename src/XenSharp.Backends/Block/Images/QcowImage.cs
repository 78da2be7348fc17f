using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace XenSharp.Backends.Block.Images;

/// <summary>The qcow version 1 header (the layout of QEMU's block/qcow.c), checked as it is read.</summary>
internal sealed class QcowHeader
{
    public const int Length = 48;

    public long BackingFileOffset;
    public int BackingFileSize;
    public long Size;
    public int ClusterBits;
    public int L2Bits;
    public long L1TableOffset;
    public int L1Size;
    public string? BackingFile;

    public static QcowHeader Read(ImageFile file)
    {
        Span<byte> b = stackalloc byte[Length];
        file.ReadExactly(0, b);
        if (BinaryPrimitives.ReadUInt32BigEndian(b) != Qcow2Header.Magic || BinaryPrimitives.ReadUInt32BigEndian(b[4..]) != 1)
            throw new ImageCorruptException("not a qcow version 1 image");
        var h = new QcowHeader
        {
            BackingFileOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[8..]),
            BackingFileSize = (int)BinaryPrimitives.ReadUInt32BigEndian(b[16..]),
            Size = (long)BinaryPrimitives.ReadUInt64BigEndian(b[24..]),
            ClusterBits = b[32],
            L2Bits = b[33],
            L1TableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[40..]),
        };
        if (BinaryPrimitives.ReadUInt32BigEndian(b[36..]) != 0)
            throw new ImageCorruptException("encrypted qcow images are not supported");
        if (h.ClusterBits is < 9 or > 16 || h.L2Bits is < 6 or > 13)
            throw new ImageCorruptException($"cluster_bits {h.ClusterBits} / l2_bits {h.L2Bits} out of range");
        if (h.Size < 0 || h.Size > (1L << 50))
            throw new ImageCorruptException($"virtual size {h.Size} out of range");
        long span = 1L << (h.ClusterBits + h.L2Bits);
        h.L1Size = (int)((h.Size + span - 1) / span);
        long fileLength = file.Length;
        if (h.L1TableOffset < Length || h.L1TableOffset > fileLength - h.L1Size * 8L)
            throw new ImageCorruptException($"L1 table at offset {h.L1TableOffset} is outside the file");
        if (h.BackingFileOffset != 0)
        {
            if (h.BackingFileSize is <= 0 or > 1023 || h.BackingFileOffset > fileLength - h.BackingFileSize)
                throw new ImageCorruptException("backing file name lies outside the file");
            byte[] name = new byte[h.BackingFileSize];
            file.ReadExactly(h.BackingFileOffset, name);
            h.BackingFile = Encoding.UTF8.GetString(name);
        }
        return h;
    }
}

/// <summary>
/// A qcow version 1 image: guest clusters through an L1 and L2 tables, no refcounts. Reads plain
/// and compressed clusters; writes allocate clusters and L2 tables at the end of the file, data
/// first and the table entry after, so a process that dies leaves at worst unused space. A
/// compressed cluster that is written is first expanded into a new cluster.
/// </summary>
internal sealed class QcowImage : FormattedImage
{
    private const ulong CompressedFlag = 1UL << 63;

    private readonly QcowHeader _header;
    private readonly int _clusterSize;
    private readonly int _l2Size;
    private readonly long[] _l1;
    private readonly MetadataCache _cache;
    private readonly byte[] _cluster;
    private readonly byte[] _compressed;
    private readonly byte[] _zeroL2;
    private long _fileEnd;
    // Clusters holding the header, the L1 table or an L2 table: never written as data.
    private readonly HashSet<long> _metadata = [];
    // The file's length at open. An entry found pointing past it is damage, even once the file has grown
    // over where it points: it would share a cluster (or an L2 table) allocated since. Each L2 table is
    // searched for such entries when first used; the entries found fail their requests.
    private readonly long _openLength;
    private readonly HashSet<long> _searched = [];
    private readonly HashSet<long> _pastEnd = [];

    public override BlockImageFormat Format => BlockImageFormat.Qcow;
    public override bool SupportsDiscard => false;

    public QcowImage(ImageFile file, BlockImageOptions options, QcowHeader header, IBlockImage? backing)
        : base(file, options)
    {
        _header = header;
        Size = SectorAligned(header.Size);
        Backing = backing;
        _clusterSize = 1 << header.ClusterBits;
        _l2Size = 8 << header.L2Bits;
        _fileEnd = _openLength = file.Length;
        _l1 = new long[header.L1Size];
        byte[] table = new byte[header.L1Size * 8];
        file.ReadExactly(header.L1TableOffset, table);
        for (int i = 0; i < _l1.Length; i++)
        {
            _l1[i] = (long)BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
            if (_l1[i] != 0 && (_l1[i] < QcowHeader.Length || _l1[i] > _fileEnd - _l2Size))
                throw new ImageCorruptException($"L2 table at offset {_l1[i]} is outside the file");
            AddMetadata(_l1[i], _l2Size);
        }
        AddMetadata(0, QcowHeader.Length);
        AddMetadata(header.L1TableOffset, header.L1Size * 8L);
        _cache = new MetadataCache(file, _l2Size, 32);
        _cluster = new byte[_clusterSize];
        _compressed = new byte[_clusterSize + 512];
        _zeroL2 = new byte[_l2Size];
    }

    protected override int ReadCore(long offset, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int inCluster = (int)(offset & (_clusterSize - 1));
            int n = Math.Min(_clusterSize - inCluster, destination.Length);
            int r = ReadThrough(Entry(offset, out _, out _), offset, destination[..n]);
            if (r != 0)
                return r;
            offset += n;
            destination = destination[n..];
        }
        return 0;
    }

    private int ReadThrough(ulong entry, long offset, Span<byte> destination)
    {
        int inCluster = (int)(offset & (_clusterSize - 1));
        if (entry == 0)
            return ReadBacking(offset, destination);
        if ((entry & CompressedFlag) != 0)
        {
            Decompress(entry, _cluster);
            _cluster.AsSpan(inCluster, destination.Length).CopyTo(destination);
            return 0;
        }
        long host = (long)entry;
        if (host < QcowHeader.Length || File.ReadAt(host + inCluster, destination) != destination.Length)
            throw new ImageCorruptException($"data cluster at {host} is outside the file");
        return 0;
    }

    private void Decompress(ulong entry, byte[] output)
    {
        int shift = 63 - _header.ClusterBits;
        long at = (long)(entry & ((1UL << shift) - 1));
        int length = (int)((entry >> shift) & (ulong)(_clusterSize - 1));
        if (at < QcowHeader.Length || length <= 0 || File.ReadAt(at, _compressed.AsSpan(0, length)) != length)
            throw new ImageCorruptException($"compressed cluster at {at} is outside the file");
        int produced = 0;
        try
        {
            using var inflate = new DeflateStream(new MemoryStream(_compressed, 0, length, writable: false), CompressionMode.Decompress);
            while (produced < _clusterSize)
            {
                int n = inflate.Read(output, produced, _clusterSize - produced);
                if (n <= 0)
                    break;
                produced += n;
            }
        }
        catch (InvalidDataException e)
        {
            throw new ImageCorruptException($"compressed cluster at {at} does not inflate: {e.Message}");
        }
        output.AsSpan(produced).Clear();
    }

    /// <summary>The L2 entry for a guest offset (0 if unmapped), with its table and index.</summary>
    private ulong Entry(long offset, out long l2, out int index)
    {
        long guestCluster = offset >> _header.ClusterBits;
        long l1Index = guestCluster >> _header.L2Bits;
        index = (int)(guestCluster & ((1 << _header.L2Bits) - 1));
        l2 = _l1[l1Index];
        if (l2 == 0)
            return 0;
        byte[] table = _cache.Get(l2);
        if (_searched.Add(l2))
            SearchPastEnd(l2, table);
        if (_pastEnd.Count > 0 && _pastEnd.Contains(l2 + index * 8L))
            throw new ImageCorruptException($"the L2 entry at {l2 + index * 8L} points past the end of the file");
        return BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(index * 8));
    }

    /// <summary>Notes the entries of an L2 table read from the file (before any write of ours changed it) whose
    /// cluster lies past the file's end at open.</summary>
    private void SearchPastEnd(long l2, byte[] table)
    {
        for (int i = 0; i < table.Length / 8; i++)
        {
            ulong entry = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
            int shift = 63 - _header.ClusterBits;
            bool past = (entry & CompressedFlag) != 0
                ? (long)(entry & ((1UL << shift) - 1)) > _openLength - (long)((entry >> shift) & (ulong)(_clusterSize - 1))
                : (long)entry > _openLength - _clusterSize;
            if (entry != 0 && past)
                _pastEnd.Add(l2 + i * 8L);
        }
    }

    protected override int WriteCore(long offset, ReadOnlySpan<byte> source)
    {
        while (!source.IsEmpty)
        {
            int inCluster = (int)(offset & (_clusterSize - 1));
            int n = Math.Min(_clusterSize - inCluster, source.Length);
            int r = WriteCluster(offset, source[..n]);
            if (r != 0)
                return r;
            offset += n;
            source = source[n..];
        }
        return 0;
    }

    private int WriteCluster(long offset, ReadOnlySpan<byte> data)
    {
        int inCluster = (int)(offset & (_clusterSize - 1));
        ulong entry = Entry(offset, out long l2, out int index);
        if (entry != 0 && (entry & CompressedFlag) == 0)
        {
            long host = (long)entry;
            if (host < QcowHeader.Length || host > _fileEnd - _clusterSize || OnMetadata(host))
                throw new ImageCorruptException($"data cluster at {host} is outside the file or on metadata");
            File.WriteAt(host + inCluster, data);
            return 0;
        }
        if (l2 == 0)
            l2 = AllocateL2(offset >> (_header.ClusterBits + _header.L2Bits));
        if (data.Length < _clusterSize)
        {
            int r = ReadThrough(entry, offset - inCluster, _cluster);
            if (r != 0)
                return r;
        }
        data.CopyTo(_cluster.AsSpan(inCluster));
        long fresh = Allocate(_clusterSize);
        File.WriteAt(fresh, _cluster);
        byte[] table = _cache.Get(l2);
        BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(index * 8), (ulong)fresh);
        File.WriteAt(l2 + index * 8, table.AsSpan(index * 8, 8));
        return 0;
    }

    private long AllocateL2(long l1Index)
    {
        long l2 = Allocate(_l2Size);
        File.WriteAt(l2, _zeroL2);
        _cache.Put(l2, _zeroL2);
        _searched.Add(l2);
        AddMetadata(l2, _l2Size);
        _l1[l1Index] = l2;
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, (ulong)l2);
        File.WriteAt(_header.L1TableOffset + l1Index * 8, bytes);
        return l2;
    }

    private void AddMetadata(long offset, long length)
    {
        for (long c = offset >> _header.ClusterBits; length > 0 && c <= (offset + length - 1) >> _header.ClusterBits; c++)
            _metadata.Add(c);
    }

    private bool OnMetadata(long host) =>
        _metadata.Contains(host >> _header.ClusterBits) || _metadata.Contains((host + _clusterSize - 1) >> _header.ClusterBits);

    /// <summary>Space at the end of the file, cluster-aligned as QEMU lays it out.</summary>
    private long Allocate(int length)
    {
        long at = (_fileEnd + _clusterSize - 1) & ~(long)(_clusterSize - 1);
        _fileEnd = at + length;
        return at;
    }
}
