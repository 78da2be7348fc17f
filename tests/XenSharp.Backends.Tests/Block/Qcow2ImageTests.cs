using System.Buffers.Binary;
using System.Text.Json;
using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

public sealed class Qcow2ImageTests
{
    private const int DiskSize = 4 << 20;

    /// <summary>Random sector-aligned writes of up to 3 clusters, applied to the image and to the expected bytes.</summary>
    internal static void RandomWrites(IBlockImage image, byte[] expected, int seed, int count, int maxLength)
    {
        var random = new Random(seed);
        var buffer = new byte[maxLength];
        for (int i = 0; i < count; i++)
        {
            int length = random.Next(1, maxLength / 512 + 1) * 512;
            long offset = random.NextInt64(0, (expected.Length - length) / 512 + 1) * 512;
            random.NextBytes(buffer.AsSpan(0, length));
            Assert.Equal(0, image.Write(offset, buffer.AsSpan(0, length)));
            buffer.AsSpan(0, length).CopyTo(expected.AsSpan((int)offset));
        }
    }

    [Theory]
    [InlineData("0.10", 65536)]
    [InlineData("1.1", 65536)]
    [InlineData("1.1", 512)]
    [InlineData("0.10", 4096)]
    [InlineData("1.1", 2097152)]
    public void ReadsWhatQemuConverted(string compat, int clusterSize)
    {
        using var dir = new ImageDir();
        byte[] data = dir.WriteRaw("src.raw", DiskSize, seed: 1);
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", $"compat={compat},cluster_size={clusterSize}", dir["src.raw"], dir["a.qcow2"]);
        using var image = BlockImages.Open(dir["a.qcow2"], new BlockImageOptions { ReadOnly = true });
        Assert.Equal(BlockImageFormat.Qcow2, image.Format);
        Assert.Equal(DiskSize, image.Size);
        Assert.True(data.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
    }

    [Theory]
    [InlineData(65536)]
    [InlineData(4096)]
    public void ReadsCompressedClusters(int clusterSize)
    {
        using var dir = new ImageDir();
        byte[] data = dir.WriteRaw("src.raw", DiskSize, seed: 2);
        // Half the data compressible, so compressed and uncompressed clusters mix.
        for (int i = 0; i < data.Length / 2; i++)
            data[i] = (byte)(i / 4096);
        File.WriteAllBytes(dir["src.raw"], data);
        Qemu.Img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", $"cluster_size={clusterSize}", dir["src.raw"], dir["c.qcow2"]);
        using var image = BlockImages.Open(dir["c.qcow2"], new BlockImageOptions { ReadOnly = true });
        Assert.True(data.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
    }

    [Theory]
    [InlineData("0.10", 65536, 16)]
    [InlineData("1.1", 65536, 16)]
    [InlineData("1.1", 4096, 1)]
    [InlineData("1.1", 512, 64)]
    [InlineData("1.1", 1024, 8)]
    public void WritesPassQemuCheckAndCompare(string compat, int clusterSize, int refcountBits)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 3);
        string options = $"compat={compat},cluster_size={clusterSize}" + (compat == "1.1" ? $",refcount_bits={refcountBits}" : "");
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", options, dir["src.raw"], dir["a.qcow2"]);
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            RandomWrites(image, expected, seed: 4, count: 300, maxLength: Math.Max(3 * clusterSize, 8192));
            Assert.Equal(0, image.Flush());
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Fact]
    public void WritesSpanningClustersOutOfFileOrder()
    {
        // Guest clusters 3, 1, 2 and 0 allocated in that order: 1 and 2 follow on in the file (one
        // write serves both), 0 lies after 2 and 3 before 1, so writes spanning them split where the
        // file order breaks; and where a new cluster comes between two that follow on in the file.
        using var dir = new ImageDir();
        const int cluster = 4096;
        Qemu.Img("create", "-f", "qcow2", "-o", $"cluster_size={cluster}", dir["a.qcow2"], "64K");
        var expected = new byte[64 << 10];
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            var random = new Random(21);
            void Write(long offset, int length)
            {
                var data = new byte[length];
                random.NextBytes(data);
                Assert.Equal(0, image.Write(offset, data));
                data.CopyTo(expected, offset);
            }
            foreach (int c in new[] { 3, 1, 2, 0 })
                Write(c * cluster, cluster);
            Write(512, 4 * cluster - 1024);          // 0 to 3, all in place: three runs
            Write(cluster + 1024, 2 * cluster - 2048); // 1 to 2: one run
            Write(3 * cluster + 512, 2 * cluster);   // 3 in place, then a new cluster 4
            Write(6 * cluster, cluster);             // 6 and 8 follow on in the file...
            Write(8 * cluster, cluster);
            Write(6 * cluster + 512, 3 * cluster - 1024); // ...but the new cluster 7 between them splits the write
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Fact]
    public void WritesOverCompressedClustersCopyThem()
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 5);
        for (int i = 0; i < expected.Length; i += 2)
            expected[i] = 0x5A;
        File.WriteAllBytes(dir["src.raw"], expected);
        Qemu.Img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", dir["src.raw"], dir["c.qcow2"]);
        using (var image = BlockImages.Open(dir["c.qcow2"]))
            RandomWrites(image, expected, seed: 6, count: 200, maxLength: 6144);
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["c.qcow2"]);
        Qemu.CompareWithRaw(dir["c.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Theory]
    [InlineData("1.1", "qcow2")]
    [InlineData("0.10", "qcow2")]
    [InlineData("1.1", "raw")]
    public void BackingChainsReadAndCopyOnWrite(string compat, string baseFormat)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("base.raw", DiskSize, seed: 7);
        string basePath = baseFormat == "raw" ? "base.raw" : "base.qcow2";
        if (baseFormat != "raw")
            Qemu.Img("convert", "-f", "raw", "-O", "qcow2", dir["base.raw"], dir[basePath]);
        Directory.CreateDirectory(dir["sub"]);
        // A middle image, then the top one: names relative to each image's directory.
        Qemu.Img("create", "-f", "qcow2", "-o", $"compat={compat}", "-b", "../" + basePath, "-F", baseFormat, dir["sub/mid.qcow2"]);
        Qemu.Io(dir["sub/mid.qcow2"], "qcow2", "write -P 0x11 65536 131072");
        expected.AsSpan(65536, 131072).Fill(0x11);
        Qemu.Img("create", "-f", "qcow2", "-o", $"compat={compat},cluster_size=4096", "-b", "sub/mid.qcow2", "-F", "qcow2", dir["top.qcow2"]);
        using (var image = BlockImages.Open(dir["top.qcow2"]))
        {
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            RandomWrites(image, expected, seed: 8, count: 100, maxLength: 10240);
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["top.qcow2"]);
        Qemu.CompareWithRaw(dir["top.qcow2"], "qcow2", dir["expected.raw"]);
        // The backing files were only read.
        Qemu.CheckClean(dir["sub/mid.qcow2"]);
    }

    /// <summary>A backing file whose size ends mid-sector: its tail and what lies past it read as zeros.</summary>
    [Fact]
    public void BackingFileEndingMidSector()
    {
        using var dir = new ImageDir();
        var data = new byte[100_000];
        new Random(15).NextBytes(data);
        File.WriteAllBytes(dir["base.raw"], data);
        Qemu.Img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", dir["top.qcow2"], "1M");
        using var image = BlockImages.Open(dir["top.qcow2"]);
        var expected = new byte[1 << 20];
        data.CopyTo(expected, 0);
        Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        using var raw = BlockImages.Open(dir["base.raw"], new BlockImageOptions { ReadOnly = true });
        Assert.Equal(100_352, raw.Size);
    }

    [Fact]
    public void ReadsV3ZeroClusters()
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("base.raw", DiskSize, seed: 9);
        Qemu.Img("create", "-f", "qcow2", "-b", dir["base.raw"], "-F", "raw", dir["top.qcow2"]);
        Qemu.Io(dir["top.qcow2"], "qcow2", "write -z 0 1048576");
        expected.AsSpan(0, 1048576).Clear();
        using var image = BlockImages.Open(dir["top.qcow2"], new BlockImageOptions { ReadOnly = true });
        Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
    }

    /// <summary>Zero clusters that keep their allocation (v3): a partial write zeroes the rest, a full one replaces it.</summary>
    [Fact]
    public void WritesOverPreallocatedZeroClusters()
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 14);
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", dir["src.raw"], dir["a.qcow2"]);
        Qemu.Io(dir["a.qcow2"], "qcow2", "write -z 131072 65536");
        expected.AsSpan(131072, 65536).Clear();
        Assert.Contains("\"zero\": true", Qemu.Img("map", "--output=json", dir["a.qcow2"]));
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            var data = new byte[4096];
            data.AsSpan().Fill(0x77);
            Assert.Equal(0, image.Write(131072 + 512, data.AsSpan(0, 1024)));
            Assert.Equal(0, image.Write(131072 + 8192, data));
            data.AsSpan(0, 1024).CopyTo(expected.AsSpan(131072 + 512));
            data.CopyTo(expected.AsSpan(131072 + 8192));
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DiscardShowsAsZeroInQemuMap(bool withBacking)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 10);
        if (withBacking)
            Qemu.Img("create", "-f", "qcow2", "-b", dir["src.raw"], "-F", "raw", dir["a.qcow2"]);
        else
            Qemu.Img("convert", "-f", "raw", "-O", "qcow2", dir["src.raw"], dir["a.qcow2"]);
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            Assert.True(image.SupportsDiscard);
            Assert.Equal(65536, image.DiscardGranularity);
            var ones = new byte[1 << 20];
            ones.AsSpan().Fill(0xEE);
            Assert.Equal(0, image.Write(1 << 20, ones));
            Assert.Equal(0, image.Discard(1 << 20, 1 << 20));
            expected.AsSpan(1 << 20, 1 << 20).Clear();
            Assert.Equal(0, image.Flush());
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
        using var map = JsonDocument.Parse(Qemu.Img("map", "--output=json", "-f", "qcow2", dir["a.qcow2"]));
        foreach (var extent in map.RootElement.EnumerateArray())
        {
            long start = extent.GetProperty("start").GetInt64(), length = extent.GetProperty("length").GetInt64();
            if (start < 2 << 20 && start + length > 1 << 20)
                Assert.True(extent.GetProperty("zero").GetBoolean() && !extent.GetProperty("data").GetBoolean(),
                    $"extent {start}+{length} of the discarded range: {extent}");
        }
    }

    [Fact]
    public void GrowsTheRefcountTable()
    {
        using var dir = new ImageDir();
        // 512-byte clusters with 16-bit refcounts: one refcount table cluster covers 8 MiB of file.
        Qemu.Img("create", "-f", "qcow2", "-o", "cluster_size=512", dir["a.qcow2"], "24M");
        var expected = new byte[24 << 20];
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            var chunk = new byte[64 * 1024];
            for (int at = 0; at < expected.Length; at += chunk.Length)
            {
                new Random(at).NextBytes(chunk);
                Assert.Equal(0, image.Write(at, chunk));
                chunk.CopyTo(expected, at);
            }
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Fact]
    public void InternalSnapshotsStayIntact()
    {
        using var dir = new ImageDir();
        byte[] original = dir.WriteRaw("src.raw", DiskSize, seed: 11);
        Qemu.Img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", dir["src.raw"], dir["a.qcow2"]);
        Qemu.Img("snapshot", "-c", "before", dir["a.qcow2"]);
        byte[] expected = (byte[])original.Clone();
        using (var image = BlockImages.Open(dir["a.qcow2"]))
        {
            RandomWrites(image, expected, seed: 12, count: 200, maxLength: 12288);
            Assert.Equal(0, image.Discard(0, 1 << 20));
            expected.AsSpan(0, 1 << 20).Clear();
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
        Qemu.Img("snapshot", "-a", "before", dir["a.qcow2"]);
        Qemu.CheckClean(dir["a.qcow2"]);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["src.raw"]);
    }

    [Fact]
    public void ClearsAutoclearBitmapsWhenWriting()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", dir["a.qcow2"], "4M");
        Qemu.Img("bitmap", "--add", dir["a.qcow2"], "b0");
        using (var image = BlockImages.Open(dir["a.qcow2"]))
            Assert.Equal(0, image.Write(0, new byte[4096]));
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64BigEndian(File.ReadAllBytes(dir["a.qcow2"]).AsSpan(88)));
        // The abandoned bitmap's clusters are leaks, as after any program without bitmap support.
        Qemu.CheckClean(dir["a.qcow2"], allowLeaks: true);
    }

    /// <summary>qemu-io with lazy refcounts killed mid-session leaves the dirty bit and missing refcounts; opening for writing repairs them.</summary>
    [Fact]
    public void RepairsADirtyImageBeforeWriting()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", dir["a.qcow2"], "4M");
        Qemu.Io(dir["a.qcow2"], "qcow2", "write -P 0x11 0 65536");
        Qemu.Img("snapshot", "-c", "s1", dir["a.qcow2"]);
        var (code, _) = Qemu.Run("qemu-io", "-c", "write -P 0x22 0 1M", "-c", "write -P 0x33 2M 64k", "-c", "sigraise 9", dir["a.qcow2"]);
        Assert.NotEqual(0, code);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64BigEndian(File.ReadAllBytes(dir["a.qcow2"]).AsSpan(72)) & 1);
        Assert.NotEqual(0, Qemu.Run("qemu-img", "check", dir["a.qcow2"]).Code);

        var expected = new byte[4 << 20];
        expected.AsSpan(0, 1 << 20).Fill(0x22);
        expected.AsSpan(2 << 20, 65536).Fill(0x33);
        using (var readOnly = BlockImages.Open(dir["a.qcow2"], new BlockImageOptions { ReadOnly = true }))
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(readOnly)));
        using (var image = BlockImages.Open(dir["a.qcow2"]))
            RandomWrites(image, expected, seed: 13, count: 100, maxLength: 8192);
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64BigEndian(File.ReadAllBytes(dir["a.qcow2"]).AsSpan(72)) & 1);
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CheckClean(dir["a.qcow2"], allowLeaks: true);
        Qemu.CompareWithRaw(dir["a.qcow2"], "qcow2", dir["expected.raw"]);
    }

    [Fact]
    public void CorruptMarkedImagesOpenReadOnlyOnly()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", dir["a.qcow2"], "4M");
        SetIncompatibleBits(dir["a.qcow2"], 2);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.qcow2"]));
        Assert.Contains(dir["a.qcow2"], e.Message);
        Assert.Contains("corrupt", e.Message);
        using var image = BlockImages.Open(dir["a.qcow2"], new BlockImageOptions { ReadOnly = true });
        Assert.Equal(0, image.Read(0, new byte[512]));
        Assert.Equal(-XenSharp.Public.Errno.EROFS, image.Write(0, new byte[512]));
    }

    internal static void SetIncompatibleBits(string path, ulong bits)
    {
        using var f = File.Open(path, FileMode.Open, FileAccess.ReadWrite);
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, bits);
        f.Position = 72;
        f.Write(b);
    }
}
