using System.Buffers.Binary;
using System.Text;

namespace XenSharp.Backends.Block.Images;

/// <summary>The qcow2 header (QEMU's docs/interop/qcow2.txt), version 2 or 3, with its extensions, checked as it is read.</summary>
internal sealed class Qcow2Header
{
    public const uint Magic = 0x514649FB; // "QFI\xfb"
    public const int V2Length = 72, V3MinLength = 104;

    // Incompatible feature bits.
    public const ulong Dirty = 1, Corrupt = 2, ExternalData = 4, CompressionType = 8, ExtendedL2 = 16;
    private const ulong KnownIncompatible = Dirty | Corrupt | ExternalData | CompressionType | ExtendedL2;

    // Header extension types.
    private const uint ExtEnd = 0, ExtBackingFormat = 0xE2792ACA, ExtExternalDataFile = 0x44415441, ExtEncryption = 0x0537BE77;

    public int Version;
    public long BackingFileOffset;
    public int BackingFileSize;
    public int ClusterBits;
    public long Size;
    public uint CryptMethod;
    public int L1Size;
    public long L1TableOffset;
    public long RefcountTableOffset;
    public int RefcountTableClusters;
    public int SnapshotCount;
    public long SnapshotsOffset;
    public ulong IncompatibleFeatures, CompatibleFeatures, AutoclearFeatures;
    public int RefcountOrder = 4;
    public int HeaderLength = V2Length;
    public byte CompressionTypeValue;
    public string? BackingFile;
    public string? BackingFormat;

    /// <summary>Parses the first cluster; throws <see cref="ImageCorruptException"/> with what is wrong.</summary>
    public static Qcow2Header Parse(ReadOnlySpan<byte> b, long fileLength)
    {
        if (b.Length < V2Length || BinaryPrimitives.ReadUInt32BigEndian(b) != Magic)
            throw new ImageCorruptException("not a qcow2 image (bad magic)");
        var h = new Qcow2Header
        {
            Version = (int)BinaryPrimitives.ReadUInt32BigEndian(b[4..]),
            BackingFileOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[8..]),
            BackingFileSize = (int)BinaryPrimitives.ReadUInt32BigEndian(b[16..]),
            ClusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(b[20..]),
            Size = (long)BinaryPrimitives.ReadUInt64BigEndian(b[24..]),
            CryptMethod = BinaryPrimitives.ReadUInt32BigEndian(b[32..]),
            L1Size = (int)BinaryPrimitives.ReadUInt32BigEndian(b[36..]),
            L1TableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[40..]),
            RefcountTableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[48..]),
            RefcountTableClusters = (int)BinaryPrimitives.ReadUInt32BigEndian(b[56..]),
            SnapshotCount = (int)BinaryPrimitives.ReadUInt32BigEndian(b[60..]),
            SnapshotsOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[64..]),
        };
        if (h.Version is not (2 or 3))
            throw new ImageCorruptException($"unsupported qcow2 version {h.Version}");
        if (h.ClusterBits is < 9 or > 21)
            throw new ImageCorruptException($"cluster_bits {h.ClusterBits} out of range 9..21");
        long cluster = 1L << h.ClusterBits;
        if (b.Length < cluster)
            throw new ImageCorruptException("header cluster truncated");
        if (h.Version == 3)
        {
            h.IncompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[72..]);
            h.CompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[80..]);
            h.AutoclearFeatures = BinaryPrimitives.ReadUInt64BigEndian(b[88..]);
            h.RefcountOrder = (int)BinaryPrimitives.ReadUInt32BigEndian(b[96..]);
            h.HeaderLength = (int)BinaryPrimitives.ReadUInt32BigEndian(b[100..]);
            if (h.HeaderLength < V3MinLength || h.HeaderLength > cluster)
                throw new ImageCorruptException($"header_length {h.HeaderLength} is invalid");
            if (h.HeaderLength > V3MinLength)
                h.CompressionTypeValue = b[104];
        }
        if (h.CryptMethod != 0)
            throw new ImageCorruptException("encrypted qcow2 images are not supported");
        ulong unknown = h.IncompatibleFeatures & ~KnownIncompatible;
        if (unknown != 0)
            throw new ImageCorruptException($"unknown incompatible features 0x{unknown:x}");
        if ((h.IncompatibleFeatures & ExternalData) != 0)
            throw new ImageCorruptException("qcow2 images with an external data file are not supported");
        if ((h.IncompatibleFeatures & ExtendedL2) != 0)
            throw new ImageCorruptException("qcow2 images with extended L2 entries (subclusters) are not supported");
        if ((h.IncompatibleFeatures & CompressionType) != 0 && h.CompressionTypeValue != 0)
            throw new ImageCorruptException($"compression type {h.CompressionTypeValue} (zstd) is not supported, only zlib");
        if (h.RefcountOrder is < 0 or > 6)
            throw new ImageCorruptException($"refcount_order {h.RefcountOrder} out of range 0..6");
        if (h.Size < 0 || h.Size > (1L << 61))
            throw new ImageCorruptException($"virtual size {h.Size} out of range");

        long l2Entries = cluster / 8;
        long l1Needed = (h.Size + cluster * l2Entries - 1) / (cluster * l2Entries);
        if (h.L1Size < l1Needed || (long)h.L1Size * 8 > 32 << 20)
            throw new ImageCorruptException($"L1 table size {h.L1Size} does not fit a disk of {h.Size} bytes");
        CheckTable("L1 table", h.L1TableOffset, (long)h.L1Size * 8, cluster, fileLength, h.L1Size == 0);
        if (h.RefcountTableClusters <= 0 || (long)h.RefcountTableClusters * cluster > 64 << 20)
            throw new ImageCorruptException($"refcount table of {h.RefcountTableClusters} clusters is invalid");
        CheckTable("refcount table", h.RefcountTableOffset, (long)h.RefcountTableClusters * cluster, cluster, fileLength, false);
        if (h.SnapshotCount < 0 || h.SnapshotCount > 65536)
            throw new ImageCorruptException($"snapshot count {h.SnapshotCount} is invalid");
        if (h.SnapshotCount > 0)
            CheckTable("snapshot table", h.SnapshotsOffset, 40L * h.SnapshotCount, cluster, fileLength, false);
        if (Overlaps(h.L1TableOffset, (long)h.L1Size * 8, 0, cluster) ||
            Overlaps(h.RefcountTableOffset, (long)h.RefcountTableClusters * cluster, 0, cluster) ||
            Overlaps(h.L1TableOffset, (long)h.L1Size * 8, h.RefcountTableOffset, (long)h.RefcountTableClusters * cluster))
            throw new ImageCorruptException("header, L1 table and refcount table overlap");

        if (h.BackingFileOffset != 0)
        {
            if (h.BackingFileSize is <= 0 or > 1023 || h.BackingFileOffset < 0 || h.BackingFileOffset > cluster - h.BackingFileSize)
                throw new ImageCorruptException("backing file name lies outside the header cluster");
            h.BackingFile = Encoding.UTF8.GetString(b.Slice((int)h.BackingFileOffset, h.BackingFileSize));
        }
        h.ParseExtensions(b[..(int)cluster]);
        return h;
    }

    private void ParseExtensions(ReadOnlySpan<byte> cluster)
    {
        int at = HeaderLength;
        while (at + 8 <= cluster.Length)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(cluster[at..]);
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(cluster[(at + 4)..]);
            at += 8;
            if (type == ExtEnd)
                return;
            if (length < 0 || length > cluster.Length - at)
                throw new ImageCorruptException($"header extension 0x{type:x8} runs past the header cluster");
            switch (type)
            {
                case ExtBackingFormat:
                    BackingFormat = Encoding.UTF8.GetString(cluster.Slice(at, length));
                    break;
                case ExtExternalDataFile:
                    throw new ImageCorruptException("qcow2 images with an external data file are not supported");
                case ExtEncryption:
                    throw new ImageCorruptException("encrypted qcow2 images are not supported");
            }
            at += (length + 7) & ~7;
        }
    }

    public static void CheckTable(string what, long offset, long length, long cluster, long fileLength, bool mayBeEmpty)
    {
        if (mayBeEmpty && length == 0)
            return;
        if (offset <= 0 || offset % cluster != 0 || length < 0 || offset > fileLength || length > fileLength - offset)
            throw new ImageCorruptException($"{what} at offset {offset} (length {length}) is unaligned or outside the file");
    }

    public static bool Overlaps(long a, long aLength, long b, long bLength) =>
        aLength > 0 && bLength > 0 && a < b + bLength && b < a + aLength;
}
