using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

public sealed class QcowImageTests
{
    private const int DiskSize = 4 << 20;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadsWhatQemuConverted(bool compressed)
    {
        using var dir = new ImageDir();
        byte[] data = Make(dir, compressed, seed: 20);
        using var image = BlockImages.Open(dir["a.qcow"], new BlockImageOptions { ReadOnly = true });
        Assert.Equal(BlockImageFormat.Qcow, image.Format);
        Assert.True(data.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WritesReadBackInQemu(bool compressed)
    {
        using var dir = new ImageDir();
        byte[] expected = Make(dir, compressed, seed: 21);
        using (var image = BlockImages.Open(dir["a.qcow"]))
        {
            Qcow2ImageTests.RandomWrites(image, expected, seed: 22, count: 200, maxLength: 12288);
            Assert.Equal(0, image.Flush());
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CompareWithRaw(dir["a.qcow"], "qcow", dir["expected.raw"]);
    }

    /// <summary>
    /// a.qcow holding random data converted by qemu-img, or (since qemu-img 7.2 cannot convert to
    /// compressed qcow) compressed clusters written by qemu-io; returns what it holds.
    /// </summary>
    private static byte[] Make(ImageDir dir, bool compressed, int seed)
    {
        if (!compressed)
        {
            byte[] data = dir.WriteRaw("src.raw", DiskSize, seed);
            Qemu.Img("convert", "-f", "raw", "-O", "qcow", dir["src.raw"], dir["a.qcow"]);
            return data;
        }
        Qemu.Img("create", "-f", "qcow", dir["a.qcow"], DiskSize.ToString());
        var expected = new byte[DiskSize];
        for (int i = 0; i < 16; i++)
        {
            int at = i * 196608, length = 4096; // qemu-io compresses one whole cluster per write
            Qemu.Io(dir["a.qcow"], "qcow", $"write -c -P 0x{0x40 + i:x2} {at} {length}");
            expected.AsSpan(at, length).Fill((byte)(0x40 + i));
        }
        return expected;
    }

    [Fact]
    public void ReadsAndWritesOverABackingFile()
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("base.raw", DiskSize, seed: 23);
        Qemu.Img("create", "-f", "qcow", "-b", "base.raw", "-F", "raw", dir["top.qcow"]);
        Qemu.Io(dir["top.qcow"], "qcow", "write -P 0x33 4096 8192");
        expected.AsSpan(4096, 8192).Fill(0x33);
        using (var image = BlockImages.Open(dir["top.qcow"]))
        {
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            Qcow2ImageTests.RandomWrites(image, expected, seed: 24, count: 100, maxLength: 5120);
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CompareWithRaw(dir["top.qcow"], "qcow", dir["expected.raw"]);
    }
}
