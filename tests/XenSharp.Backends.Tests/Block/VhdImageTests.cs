using System.Buffers.Binary;
using System.Text;
using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

public sealed class VhdImageTests
{
    // qemu-img rounds vpc sizes to a CHS geometry unless force_size=on.
    private const int DiskSize = 8 * 16 * 63 * 512;

    [Theory]
    [InlineData("fixed")]
    [InlineData("dynamic")]
    public void ReadsWhatQemuConverted(string subformat)
    {
        using var dir = new ImageDir();
        byte[] data = dir.WriteRaw("src.raw", DiskSize, seed: 30);
        Qemu.Img("convert", "-f", "raw", "-O", "vpc", "-o", $"subformat={subformat},force_size=on", dir["src.raw"], dir["a.vhd"]);
        using var image = BlockImages.Open(dir["a.vhd"], new BlockImageOptions { ReadOnly = true });
        Assert.Equal(BlockImageFormat.Vhd, image.Format);
        Assert.Equal(DiskSize, image.Size);
        Assert.True(data.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
    }

    [Theory]
    [InlineData("fixed")]
    [InlineData("dynamic")]
    public void WritesReadBackInQemu(string subformat)
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 31);
        Qemu.Img("convert", "-f", "raw", "-O", "vpc", "-o", $"subformat={subformat},force_size=on", dir["src.raw"], dir["a.vhd"]);
        if (subformat == "dynamic")
        {
            // An empty dynamic disk too, so that every write allocates blocks.
            Qemu.Img("create", "-f", "vpc", "-o", "force_size=on", dir["empty.vhd"], DiskSize.ToString());
        }
        using (var image = BlockImages.Open(dir["a.vhd"]))
        {
            Qcow2ImageTests.RandomWrites(image, expected, seed: 32, count: 200, maxLength: 65536);
            Assert.Equal(0, image.Flush());
        }
        File.WriteAllBytes(dir["expected.raw"], expected);
        Qemu.CompareWithRaw(dir["a.vhd"], "vpc", dir["expected.raw"]);
        if (subformat == "dynamic")
        {
            var fresh = new byte[DiskSize];
            using (var image = BlockImages.Open(dir["empty.vhd"]))
                Qcow2ImageTests.RandomWrites(image, fresh, seed: 33, count: 50, maxLength: 65536);
            File.WriteAllBytes(dir["fresh.raw"], fresh);
            Qemu.CompareWithRaw(dir["empty.vhd"], "vpc", dir["fresh.raw"]);
        }
    }

    [Fact]
    public void DifferencingDiskReadsItsParentThroughTheLocator()
    {
        using var dir = new ImageDir();
        byte[] expected = dir.WriteRaw("src.raw", DiskSize, seed: 34);
        Qemu.Img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", dir["src.raw"], dir["parent.vhd"]);
        Directory.CreateDirectory(dir["child"]);
        WriteDifferencing(dir["child/diff.vhd"], dir["parent.vhd"], "..\\parent.vhd");
        using (var image = BlockImages.Open(dir["child/diff.vhd"]))
        {
            Assert.Equal(DiskSize, image.Size);
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
            Qcow2ImageTests.RandomWrites(image, expected, seed: 35, count: 100, maxLength: 8192);
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        }
        using (var image = BlockImages.Open(dir["child/diff.vhd"], new BlockImageOptions { ReadOnly = true }))
            Assert.True(expected.AsSpan().SequenceEqual(ImageDir.ReadAll(image)));
        // The parent was only read.
        Qemu.CompareWithRaw(dir["parent.vhd"], "vpc", dir["src.raw"]);
    }

    [Fact]
    public void DifferencingDiskRefusesAParentWithAnotherIdentity()
    {
        using var dir = new ImageDir();
        dir.WriteRaw("src.raw", DiskSize, seed: 36);
        Qemu.Img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", dir["src.raw"], dir["parent.vhd"]);
        WriteDifferencing(dir["diff.vhd"], dir["parent.vhd"], ".\\parent.vhd", wrongParentId: true);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["diff.vhd"]));
        Assert.Contains(dir["diff.vhd"], e.Message);
    }

    [Fact]
    public void RefusesBatEntriesPastTheEnd()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "vpc", "-o", "force_size=on", dir["a.vhd"], DiskSize.ToString());
        byte[] file = File.ReadAllBytes(dir["a.vhd"]);
        long bat = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(512 + 16));
        BinaryPrimitives.WriteUInt32BigEndian(file.AsSpan((int)bat), 0x00100000);
        File.WriteAllBytes(dir["a.vhd"], file);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.vhd"]));
        Assert.Contains(dir["a.vhd"], e.Message);
        Assert.Contains("BAT entry 0", e.Message);
    }

    [Fact]
    public void RefusesABadChecksumOnBothFooters()
    {
        using var dir = new ImageDir();
        Qemu.Img("create", "-f", "vpc", "-o", "force_size=on", dir["a.vhd"], DiskSize.ToString());
        byte[] file = File.ReadAllBytes(dir["a.vhd"]);
        file[file.Length - 512 + 40] ^= 1; // original size, covered by the checksum
        File.WriteAllBytes(dir["a.vhd"], file);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.vhd"]));
        Assert.Contains("damaged", e.Message);
        using (BlockImages.Open(dir["a.vhd"], new BlockImageOptions { ReadOnly = true })) { } // the copy at the start serves
        file[40] ^= 1;
        File.WriteAllBytes(dir["a.vhd"], file);
        e = Assert.Throws<BlockImageException>(() => BlockImages.Open(dir["a.vhd"], new BlockImageOptions { ReadOnly = true, Format = BlockImageFormat.Vhd }));
        Assert.Contains("checksum", e.Message);
    }

    /// <summary>
    /// Builds an empty differencing disk over a dynamic VHD from the format specification: footer
    /// (type 4), dynamic header naming the parent (its unique id, UTF-16 name, a W2ru locator), all-empty BAT.
    /// </summary>
    private static void WriteDifferencing(string path, string parentPath, string relativeLocator, bool wrongParentId = false)
    {
        byte[] parent = File.ReadAllBytes(parentPath);
        var parentFooter = parent.AsSpan(parent.Length - 512, 512);
        long size = (long)BinaryPrimitives.ReadUInt64BigEndian(parentFooter[48..]);
        const int blockSize = 2 << 20;
        int entries = (int)((size + blockSize - 1) / blockSize);
        int batBytes = (entries * 4 + 511) & ~511;
        long headerAt = 512, locatorAt = 512 + 1024, batAt = locatorAt + 512;
        var file = new byte[batAt + batBytes + 512];

        var footer = file.AsSpan(0, 512);
        parentFooter.CopyTo(footer);
        BinaryPrimitives.WriteUInt64BigEndian(footer[16..], (ulong)headerAt);
        BinaryPrimitives.WriteUInt32BigEndian(footer[60..], 4);
        footer[68] ^= 0xFF; // its own unique id
        BinaryPrimitives.WriteUInt32BigEndian(footer[64..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(footer[64..], Checksum(footer));
        footer.CopyTo(file.AsSpan(file.Length - 512));

        var header = file.AsSpan((int)headerAt, 1024);
        "cxsparse"u8.CopyTo(header);
        BinaryPrimitives.WriteUInt64BigEndian(header[8..], ulong.MaxValue);
        BinaryPrimitives.WriteUInt64BigEndian(header[16..], (ulong)batAt);
        BinaryPrimitives.WriteUInt32BigEndian(header[24..], 0x00010000);
        BinaryPrimitives.WriteUInt32BigEndian(header[28..], (uint)entries);
        BinaryPrimitives.WriteUInt32BigEndian(header[32..], blockSize);
        parentFooter.Slice(68, 16).CopyTo(header[40..]);
        if (wrongParentId)
            header[40] ^= 0x55;
        Encoding.BigEndianUnicode.GetBytes("no-such-name.vhd").CopyTo(header[64..]);
        byte[] locator = Encoding.Unicode.GetBytes(relativeLocator);
        var entry = header.Slice(576, 24);
        BinaryPrimitives.WriteUInt32BigEndian(entry, 0x57327275); // W2ru
        BinaryPrimitives.WriteUInt32BigEndian(entry[4..], 512);
        BinaryPrimitives.WriteUInt32BigEndian(entry[8..], (uint)locator.Length);
        BinaryPrimitives.WriteUInt64BigEndian(entry[16..], (ulong)locatorAt);
        locator.CopyTo(file.AsSpan((int)locatorAt));
        BinaryPrimitives.WriteUInt32BigEndian(header[36..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(header[36..], Checksum(header));

        file.AsSpan((int)batAt, batBytes).Fill(0xFF);
        File.WriteAllBytes(path, file);
    }

    private static uint Checksum(ReadOnlySpan<byte> b)
    {
        uint sum = 0;
        foreach (byte x in b)
            sum += x;
        return ~sum;
    }
}
