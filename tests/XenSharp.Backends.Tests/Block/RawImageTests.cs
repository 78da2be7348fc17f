using XenSharp.Backends.Block.Images;
using XenSharp.Public;

namespace XenSharp.Backends.Tests.Block;

public sealed class RawImageTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadsAndWritesAtByteOffsets(bool direct)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("a.raw", 2 << 20, seed: 60);
        using (var image = BlockImages.Open(dir["a.raw"], new BlockImageOptions { DirectIo = direct }))
        {
            Assert.Equal(BlockImageFormat.Raw, image.Format);
            Assert.Equal(2 << 20, image.Size);
            Assert.Equal(512, image.SectorSize);
            // Unaligned buffers (offset 1 into an array) go through the bounce buffer under O_DIRECT.
            var buffer = new byte[9000];
            new Random(61).NextBytes(buffer);
            Assert.Equal(0, image.Write(4096 + 512, buffer.AsSpan(1, 8192)));
            buffer.AsSpan(1, 8192).CopyTo(expected.AsSpan(4096 + 512));
            Assert.Equal(0, image.Flush());
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            Assert.Equal(0, image.Read(4096 + 512, buffer.AsSpan(7, 1024)));
            Assert.True(expected.AsSpan(4096 + 512, 1024).SequenceEqual(buffer.AsSpan(7, 1024)));
        }
        Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(dir["a.raw"])));
    }

    [Fact]
    public void RefusesBadRequestsWithErrnos()
    {
        using var dir = new ImageDir();
        dir.WriteRaw("a.raw", 1 << 20, seed: 62);
        using (var image = BlockImages.Open(dir["a.raw"]))
        {
            var buffer = new byte[1024];
            Assert.Equal(-Errno.EINVAL, image.Read(100, buffer.AsSpan(0, 512)));
            Assert.Equal(-Errno.EINVAL, image.Write(0, buffer.AsSpan(0, 100)));
            Assert.Equal(-Errno.EINVAL, image.Read((1 << 20) - 512, buffer));
            Assert.Equal(-Errno.EINVAL, image.Write(-512, buffer));
        }
        using (var image = BlockImages.Open(dir["a.raw"], new BlockImageOptions { ReadOnly = true }))
        {
            Assert.True(image.ReadOnly);
            Assert.Equal(-Errno.EROFS, image.Write(0, new byte[512]));
            Assert.Equal(-Errno.EROFS, image.Discard(0, 512));
        }
    }

    /// <summary>A block device (a loop device over a file): its size comes from the device, not the inode. The suite runs as root, so losetup is there.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ServesABlockDevice(bool direct)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("backing.img", 4 << 20, seed: 65);
        var (code, output) = Qemu.Run("losetup", "-f", "--show", dir["backing.img"]);
        Assert.True(code == 0, $"losetup (the suite runs as root, as ./test's package installs do): {output}");
        string device = output.Trim();
        try
        {
            using (var image = BlockImages.Open(device, new BlockImageOptions { DirectIo = direct }))
            {
                Assert.Equal(BlockImageFormat.Raw, image.Format);
                Assert.Equal(4 << 20, image.Size);
                Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
                var data = new byte[8192];
                new Random(66).NextBytes(data);
                Assert.Equal(0, image.Write(65536 + 512, data));
                Assert.Equal(0, image.Flush());
                data.CopyTo(expected, 65536 + 512);
                Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            }
        }
        finally
        {
            Qemu.Run("losetup", "-d", device);
        }
        Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(dir["backing.img"])));
    }

    [Fact]
    public void SeesTheFileGrow()
    {
        using var dir = new ImageDir();
        dir.WriteRaw("a.raw", 1 << 20, seed: 63);
        using var image = BlockImages.Open(dir["a.raw"]);
        using (var f = new FileStream(dir["a.raw"], FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            f.SetLength(3 << 20);
        Assert.Equal(1 << 20, image.Size);
        Assert.Equal(3 << 20, image.RefreshSize());
        Assert.Equal(0, image.Write((3 << 20) - 512, new byte[512]));
    }

    [Fact]
    public void DiscardReadsAsZeros()
    {
        using var dir = new ImageDir();
        dir.WriteRaw("a.raw", 1 << 20, seed: 64);
        using var image = BlockImages.Open(dir["a.raw"]);
        Assert.True(image.SupportsDiscard);
        Assert.Equal(0, image.Discard(65536, 131072));
        var buffer = new byte[131072];
        Assert.Equal(0, image.Read(65536, buffer));
        Assert.True(buffer.AsSpan().IndexOfAnyExcept((byte)0) < 0);
    }

    /// <summary>Many threads at once on one image: each one's writes land intact (raw lock-free, formats under their lock).</summary>
    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    [InlineData("qcow")]
    [InlineData("vpc")]
    public void ConcurrentRequestsFromManyThreads(string format)
    {
        using var dir = new ImageDir();
        const int size = 8 << 20;
        string options = format switch { "vpc" => "force_size=on", "qcow2" => "cluster_size=4096", _ => "" };
        Qemu.Img(options == "" ? ["create", "-f", format, dir["a.img"], size.ToString()] : ["create", "-f", format, "-o", options, dir["a.img"], size.ToString()]);
        var expected = new byte[size];
        using (var image = BlockImages.Open(dir["a.img"]))
        {
            Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, t =>
            {
                var random = new Random(t);
                var data = new byte[6144];
                for (int i = 0; i < 100; i++)
                {
                    // Thread t owns every 8th 8 KiB slot.
                    long offset = ((long)random.Next(0, size / 8192 / 8) * 8 + t) * 8192 + random.Next(0, 4) * 512;
                    random.NextBytes(data);
                    Assert.Equal(0, image.Write(offset, data));
                    lock (expected)
                        data.CopyTo(expected, offset);
                    var back = new byte[data.Length];
                    Assert.Equal(0, image.Read(offset, back));
                    Assert.True(data.AsSpan().SequenceEqual(back));
                }
            });
            Assert.Equal(0, image.Flush());
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        if (format == "qcow2")
            Qemu.CheckClean(dir["a.img"]);
        Qemu.CompareWithRaw(dir["a.img"], format, dir["expected.raw"]);
    }
}
