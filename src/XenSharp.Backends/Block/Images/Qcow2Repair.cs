using System.Buffers.Binary;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// The repair a dirty qcow2 image needs before it is written. The dirty bit means a writer with lazy
/// refcounts stopped without writing its refcounts back: clusters may be referenced while their
/// refcount is too low. Every reference is counted from the metadata (header, L1, refcount and
/// snapshot tables, L2 tables, data and compressed clusters, through the active and every snapshot
/// L1 table) and refcounts below the count are raised; none is lowered, so the worst left is a leak.
/// </summary>
internal sealed partial class Qcow2Image
{
    private const long MaxRepairClusters = 16 << 20;

    private void RepairRefcounts()
    {
        long clusters = AlignUp(_fileLength) >> _clusterBits;
        if (clusters > MaxRepairClusters)
            throw new ImageCorruptException("the dirty bit is set and the image is too large to repair here; run 'qemu-img check -r all' or open read-only");
        var references = new int[clusters];

        void Count(long offset, long length)
        {
            if (length <= 0)
                return;
            if (offset < 0 || offset + length > clusters << _clusterBits)
                throw new ImageCorruptException($"metadata reference at {offset} (length {length}) is outside the file");
            for (long c = offset >> _clusterBits; c <= (offset + length - 1) >> _clusterBits; c++)
                references[c]++;
        }

        void CountMapping(long l1Offset, int l1Size)
        {
            byte[] l1 = new byte[l1Size * 8L];
            File.ReadExactly(l1Offset, l1);
            Count(l1Offset, l1.Length);
            var l2 = new byte[_clusterSize];
            for (int i = 0; i < l1Size; i++)
            {
                long table = (long)(BinaryPrimitives.ReadUInt64BigEndian(l1.AsSpan(i * 8)) & OffsetMask);
                if (table == 0)
                    continue;
                Count(table, _clusterSize);
                File.ReadExactly(table, l2);
                for (int j = 0; j < _clusterSize / 8; j++)
                {
                    ulong entry = BinaryPrimitives.ReadUInt64BigEndian(l2.AsSpan(j * 8));
                    if ((entry & CompressedFlag) != 0)
                    {
                        (long start, int length) = CompressedRange(entry, out long at);
                        Count(start, length + (at - start));
                    }
                    else if ((entry & OffsetMask) != 0)
                        Count((long)(entry & OffsetMask), _clusterSize);
                }
            }
        }

        Count(0, _clusterSize);
        Count(_refcountTableOffset, (long)_refcountTable.Length * 8);
        foreach (ulong block in _refcountTable)
            if ((block & RefTableOffsetMask) != 0)
                Count((long)(block & RefTableOffsetMask), _clusterSize);
        CountMapping(_header.L1TableOffset, _header.L1Size);
        CountSnapshots(Count, CountMapping);

        for (long c = 0; c < clusters; c++)
            if (references[c] > GetRefcount(c))
                SetRefcount(c, references[c]);
        CommitLinks();
        SyncOrThrow();

        Span<byte> features = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(features, _header.IncompatibleFeatures & ~Qcow2Header.Dirty);
        File.WriteAt(72, features);
        DataSync();
    }

    /// <summary>The snapshot table and, through each snapshot's L1 table, what the snapshot maps.</summary>
    private void CountSnapshots(Action<long, long> count, Action<long, int> countMapping)
    {
        long at = _header.SnapshotsOffset;
        Span<byte> entry = stackalloc byte[40];
        for (int i = 0; i < _header.SnapshotCount; i++)
        {
            File.ReadExactly(at, entry);
            long l1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
            int l1Size = (int)BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            int length = 40 + (int)BinaryPrimitives.ReadUInt32BigEndian(entry[36..]) +
                         BinaryPrimitives.ReadUInt16BigEndian(entry[12..]) + BinaryPrimitives.ReadUInt16BigEndian(entry[14..]);
            if (l1Size < 0 || l1Size > 4 << 20 || l1Offset % _clusterSize != 0 || length > 65536)
                throw new ImageCorruptException($"snapshot {i} has an invalid L1 table or entry");
            countMapping(l1Offset, l1Size);
            at += (length + 7) & ~7;
        }
        count(_header.SnapshotsOffset, at - _header.SnapshotsOffset);
    }
}
