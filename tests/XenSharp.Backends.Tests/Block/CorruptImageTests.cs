using System.Buffers.Binary;
using XenSharp.Backends.Block.Images;
using XenSharp.Public;

namespace XenSharp.Backends.Tests.Block;

/// <summary>Hand-damaged images: refused at open with the image named, or failing only the request that meets the damage.</summary>
public sealed class CorruptImageTests
{
    private static (ImageDir Dir, string Path, byte[] Bytes) Populated()
    {
        var dir = new ImageDir();
        dir.WriteRaw("src.raw", 1 << 20, seed: 40);
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", dir["src.raw"], dir["a.qcow2"]);
        return (dir, dir["a.qcow2"], File.ReadAllBytes(dir["a.qcow2"]));
    }

    private static long L1Offset(byte[] b) => (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(40));

    private static void Refused(string path, byte[] bytes, string expected, bool readOnly = true)
    {
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(path, new BlockImageOptions { ReadOnly = readOnly, Format = BlockImageFormat.Qcow2 }));
        Assert.Contains(path, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void RefusesHeaderGarbage()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        var bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(bad.AsSpan(4), 99);
        Refused(path, bad, "version 99");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(bad.AsSpan(20), 40);
        Refused(path, bad, "cluster_bits");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(bad.AsSpan(32), 1);
        Refused(path, bad, "encrypted");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan(72), 1UL << 40);
        Refused(path, bad, "unknown incompatible features");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(bad.AsSpan(36), 0);
        Refused(path, bad, "L1 table size");
        bad = (byte[])b.Clone();
        bad.AsSpan(0, 4).Fill(0x41);
        Refused(path, bad, "magic");
    }

    [Fact]
    public void RefusesTablesOutsideTheFileOrUnaligned()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        var bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan(40), 1UL << 40);
        Refused(path, bad, "L1 table");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan(40), (ulong)L1Offset(b) + 8);
        Refused(path, bad, "unaligned");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan((int)L1Offset(b)), (1UL << 63) | (1UL << 40));
        Refused(path, bad, "L2 table");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan((int)L1Offset(b)), (1UL << 63) | 4096 + 512);
        Refused(path, bad, "L2 table");
        bad = (byte[])b.Clone();
        long rt = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48));
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan((int)rt), 1UL << 40);
        Refused(path, bad, "refcount block");
    }

    [Fact]
    public void RefusesOverlappingMetadata()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        var bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan(48), (ulong)L1Offset(b)); // refcount table on the L1 table
        Refused(path, bad, "overlap");
        bad = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt64BigEndian(bad.AsSpan((int)L1Offset(b)), (1UL << 63) | BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48)));
        Refused(path, bad, "overlaps"); // an L2 table on the refcount table
    }

    [Fact]
    public void RefusesExternalDataFiles()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", "-o", $"data_file={dir["data.raw"]}", dir["a.qcow2"], "1M");
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.qcow2"]));
        Assert.Contains(dir["a.qcow2"], e.Message);
        Assert.Contains("external data file", e.Message);
    }

    [Fact]
    public void DataClusterPastTheEndFailsThatRequestOnly()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)L1Offset(b))) & 0x00FF_FFFF_FFFF_FE00);
        // Guest cluster 20 (random data, so allocated) now points a megabyte past the end; 21 points at the header.
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 20 * 8), (1UL << 63) | (ulong)(b.Length + (1 << 20)) & ~4095UL);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 21 * 8), 1UL << 63);
        File.WriteAllBytes(path, b);
        var log = new List<string>();
        using var image = BlockImages.Open(path, new BlockImageOptions { Log = log.Add });
        var buffer = new byte[4096];
        Assert.Equal(-Errno.EIO, image.Read(20 * 4096, buffer));
        Assert.Equal(-Errno.EIO, image.Write(20 * 4096, buffer));
        Assert.Equal(0, image.Read(22 * 4096, buffer));
        Assert.Equal(0, image.Write(22 * 4096, buffer));
        Assert.All(log, line => Assert.StartsWith(path, line));
        Assert.NotEmpty(log);
        long length = new FileInfo(path).Length;
        Assert.True(length < b.Length + (1 << 20), "a write went to where the damaged entry pointed");
    }

    [Fact]
    public void DataClusterOnMetadataIsNeverWritten()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)L1Offset(b))) & 0x00FF_FFFF_FFFF_FE00);
        long rt = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48));
        long refBlock = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)rt));
        // Guest cluster 20 now claims the refcount block as its data, 21 its own L2 table; both "ours alone".
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 20 * 8), (1UL << 63) | (ulong)refBlock);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 21 * 8), (1UL << 63) | (ulong)l2);
        File.WriteAllBytes(path, b);
        using (var image = BlockImages.Open(path))
        {
            var junk = new byte[4096];
            junk.AsSpan().Fill(0xA5);
            Assert.Equal(-Errno.EIO, image.Write(20 * 4096, junk));
            Assert.Equal(-Errno.EIO, image.Write(21 * 4096, junk));
            Assert.Equal(-Errno.EIO, image.Read(21 * 4096, junk));
            Assert.Equal(0, image.Flush());
        }
        byte[] after = File.ReadAllBytes(path);
        Assert.True(b.AsSpan((int)refBlock, 4096).SequenceEqual(after.AsSpan((int)refBlock, 4096)));
        Assert.True(b.AsSpan((int)l2, 4096).SequenceEqual(after.AsSpan((int)l2, 4096)));
    }

    /// <summary>Byte flips all over the metadata: opening is refused or every request answers 0 or an errno.</summary>
    [Fact]
    public void RandomDamageNeverEscapesAsAnException()
    {
        var (dir, path, b) = Populated();
        using var _ = dir;
        var random = new Random(41);
        long l1 = L1Offset(b);
        long rt = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48));
        int[] regions = [0, (int)l1, (int)rt, (int)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)l1)) & 0xFFFFFFFFFE00)];
        var buffer = new byte[16384];
        for (int round = 0; round < 150; round++)
        {
            var bad = (byte[])b.Clone();
            for (int flips = random.Next(1, 6); flips > 0; flips--)
            {
                int at = regions[random.Next(regions.Length)] + random.Next(0, 128);
                bad[at] ^= (byte)(1 << random.Next(8));
            }
            File.WriteAllBytes(path, bad);
            IBlockImage image;
            try
            {
                image = BlockImages.Open(path, new BlockImageOptions { Format = BlockImageFormat.Qcow2 });
            }
            catch (BlockImageException e)
            {
                Assert.Contains(path, e.Message);
                continue;
            }
            using (image)
            {
                for (long at = 0; at + buffer.Length <= image.Size && at < 1 << 20; at += 65536)
                {
                    int r = image.Read(at, buffer);
                    Assert.True(r == 0 || r < 0);
                    r = image.Write(at + 4096, buffer.AsSpan(0, 8192));
                    Assert.True(r == 0 || r < 0);
                }
                Assert.True(image.Discard(0, Math.Min(image.Size, 65536)) <= 0);
            }
        }
    }
}

/// <summary>The same random damage for qcow (v1) and VHD metadata.</summary>
public sealed class CorruptImageOtherFormatTests
{
    [Theory]
    [InlineData("qcow")]
    [InlineData("vpc")]
    public void RandomDamageNeverEscapesAsAnException(string format)
    {
        using var dir = new ImageDir();
        dir.WriteRaw("src.raw", 4 << 20, seed: 42);
        Qemu.Img(format == "vpc"
            ? ["convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", dir["src.raw"], dir["a.img"]]
            : ["convert", "-f", "raw", "-O", "qcow", dir["src.raw"], dir["a.img"]]);
        byte[] b = File.ReadAllBytes(dir["a.img"]);
        int[] regions = format == "vpc"
            ? [0, 512, 512 + 512, 1536, b.Length - 512]
            : [0, 48, (int)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(48)) & 0xFFFFFFFF)];
        var random = new Random(43);
        var buffer = new byte[16384];
        for (int round = 0; round < 150; round++)
        {
            var bad = (byte[])b.Clone();
            for (int flips = random.Next(1, 6); flips > 0; flips--)
                bad[Math.Min(bad.Length - 1, regions[random.Next(regions.Length)] + random.Next(0, 128))] ^= (byte)(1 << random.Next(8));
            File.WriteAllBytes(dir["a.img"], bad);
            IBlockImage image;
            try
            {
                image = BlockImages.Open(dir["a.img"]);
            }
            catch (BlockImageException e)
            {
                Assert.Contains(dir["a.img"], e.Message);
                continue;
            }
            using (image)
            {
                for (long at = 0; at + buffer.Length <= image.Size && at < 4 << 20; at += 262144)
                {
                    int r = image.Read(at, buffer);
                    Assert.True(r <= 0);
                    r = image.Write(at + 4096, buffer.AsSpan(0, 8192));
                    Assert.True(r <= 0);
                }
            }
            Assert.True(new FileInfo(dir["a.img"]).Length < b.Length + (16 << 20), "the image grew far past what was written");
        }
    }
}
