using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

/// <summary>The opener: formats probed from headers or taken from xl's format=, and errors that name the image.</summary>
public sealed class BlockImagesTests
{
    [Theory]
    [InlineData("raw", BlockImageFormat.Raw)]
    [InlineData("qcow", BlockImageFormat.Qcow)]
    [InlineData("qcow2", BlockImageFormat.Qcow2)]
    [InlineData("vpc", BlockImageFormat.Vhd)]
    public void ProbesTheFormat(string qemuFormat, BlockImageFormat expected)
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", qemuFormat, dir["a"], "1M");
        using var image = BlockImages.Open(dir["a"]);
        Assert.Equal(expected, image.Format);
        using var fixedVhd = Open(dir, "vpc", "subformat=fixed");
        Assert.Equal(BlockImageFormat.Vhd, fixedVhd.Format);
    }

    private static IBlockImage Open(ImageDir dir, string format, string options)
    {
        Qemu.Img("create", "-f", format, "-o", options, dir["b"], "1M");
        return BlockImages.Open(dir["b"]);
    }

    [Fact]
    public void HonoursAnExplicitFormat()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", dir["a.qcow2"], "1M");
        // format=raw shows the qcow2 file itself, header and all, as xl's disk spec asks.
        using (var image = BlockImages.Open(dir["a.qcow2"], new BlockImageOptions { Format = BlockImages.ParseFormat("raw"), ReadOnly = true }))
        {
            Assert.Equal(BlockImageFormat.Raw, image.Format);
            var head = new byte[512];
            Assert.Equal(0, image.Read(0, head));
            Assert.Equal("QFI"u8.ToArray(), head[..3]);
        }
        File.WriteAllBytes(dir["b.raw"], new byte[1 << 20]);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["b.raw"], new BlockImageOptions { Format = BlockImageFormat.Qcow2 }));
        Assert.Contains(dir["b.raw"], e.Message);
        Assert.Equal(BlockImageFormat.Vhd, BlockImages.ParseFormat("vhd"));
        Assert.Null(BlockImages.ParseFormat(null));
        Assert.Throws<ArgumentException>(() => BlockImages.ParseFormat("qed"));
    }

    [Fact]
    public void NamesTheImageAndItsBackingFileInErrors()
    {
        using var dir = new ImageDir();
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["missing.img"]));
        Assert.Contains(dir["missing.img"], e.Message);

        Qemu.Img("create", "-f", "qcow2", dir["base.qcow2"], "1M");
        Qemu.Img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir["top.qcow2"]);
        File.Delete(dir["base.qcow2"]);
        e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["top.qcow2"]));
        Assert.Contains(dir["top.qcow2"], e.Message);
        Assert.Contains(dir["base.qcow2"], e.Message);
    }

    [Fact]
    public void RefusesABackingLoop()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "qcow2", dir["b.qcow2"], "1M");
        Qemu.Img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", dir["a.qcow2"]);
        Qemu.Img("rebase", "-u", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", dir["b.qcow2"]);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.qcow2"]));
        Assert.Contains(dir["a.qcow2"], e.Message);
        Assert.Contains("deeper", e.Message);
    }
}
