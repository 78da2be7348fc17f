using System.Buffers.Binary;
using System.Text;
using XenSharp.Backends.Block.Images;
using XenSharp.Public;

namespace XenSharp.Backends.Tests.Block;

/// <summary>Damaged images the disk image fuzz targets (tests/XenSharp.Toolstack.Tests/Fuzz) found mishandled, kept as cases.</summary>
public sealed class ImageFuzzFindingsTests
{
    /// <summary>An overlay naming base.qcow2 in its header, with the backing format extension.</summary>
    private static (ImageDir Dir, string Path, byte[] Bytes) Overlay()
    {
        var dir = new ImageDir();
        Qemu.Img("create", "-q", "-f", "qcow2", dir["base.qcow2"], "1M");
        Qemu.Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir["top.qcow2"]);
        return (dir, dir["top.qcow2"], File.ReadAllBytes(dir["top.qcow2"]));
    }

    private static int IndexOf(byte[] bytes, string text) => bytes.AsSpan(0, 4096).IndexOf(Encoding.ASCII.GetBytes(text));

    [Fact]
    public void AnUnknownBackingFormatInTheHeaderIsDamageNamingTheImage()
    {
        var (dir, path, b) = Overlay();
        using var _ = dir;
        int at = IndexOf(b, "qcow2\0"); // the backing format extension's value, after its length 5
        Assert.True(at > 0 && b[at - 1] == 5, "the backing format extension was not found");
        b[at + 4] = (byte)' ';
        File.WriteAllBytes(path, b);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(path));
        Assert.StartsWith($"{path}: backing file format 'qcow ' is not supported", e.Message);
        Assert.IsNotType<ArgumentException>(e.InnerException);
    }

    [Fact]
    public void ABackingFileNameWithANulByteIsDamageNamingTheImage()
    {
        var (dir, path, b) = Overlay();
        using var _ = dir;
        b[IndexOf(b, "base.qcow2") + 4] = 0;
        File.WriteAllBytes(path, b);
        var e = Assert.Throws<BlockImageException>(() => BlockImages.Open(path));
        Assert.StartsWith($"{path}: backing file name 'base?qcow2' contains a NUL byte", e.Message);
        Assert.IsNotType<ArgumentException>(e.InnerException);
    }

    /// <summary>
    /// A qcow L2 entry pointing just past the end of the file becomes a cluster of the file once a write has
    /// allocated there: writing through the damaged entry must fail, not overwrite the other guest cluster.
    /// </summary>
    [Fact]
    public void AQcowClusterPastTheEndIsNotSharedWithOneAllocatedLater()
    {
        using var dir = new ImageDir();
        string path = dir["a.qcow"];
        Qemu.Img("create", "-q", "-f", "qcow", path, "1M");
        Qemu.Io(path, "qcow", "write -P 0x11 0 4096");
        byte[] b = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(40));
        long l2 = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)l1));
        long next = (b.Length + 4095) & ~4095L; // where the next cluster is allocated
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 8), (ulong)next); // guest cluster 1
        File.WriteAllBytes(path, b);

        var log = new List<string>();
        using var image = BlockImages.Open(path, new BlockImageOptions { Log = log.Add });
        var a = new byte[4096];
        Array.Fill(a, (byte)0xAA);
        Assert.Equal(0, image.Write(2 * 4096, a)); // guest cluster 2: allocated at `next`
        var other = new byte[4096];
        Array.Fill(other, (byte)0xBB);
        Assert.Equal(-Errno.EIO, image.Write(4096, other));
        Assert.Equal(-Errno.EIO, image.Read(4096, other));
        var back = new byte[4096];
        Assert.Equal(0, image.Read(2 * 4096, back));
        Assert.Equal(a, back);
        Assert.Contains(log, m => m.Contains("past the end of the file"));
    }

    /// <summary>The same for qcow2: a COPIED entry past the end would be written in place over the cluster allocated there.</summary>
    [Fact]
    public void AQcow2ClusterPastTheEndIsNotSharedWithOneAllocatedLater()
    {
        using var dir = new ImageDir();
        string path = dir["a.qcow2"];
        Qemu.Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M");
        Qemu.Io(path, "qcow2", "write -P 0x11 0 4096");
        byte[] b = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(40));
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan((int)l1)) & 0x00FFFFFFFFFFFE00);
        long next = (b.Length + 4095) & ~4095L;
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)l2 + 8), (ulong)next | (1UL << 63)); // guest cluster 1, COPIED
        File.WriteAllBytes(path, b);

        var log = new List<string>();
        using var image = BlockImages.Open(path, new BlockImageOptions { Log = log.Add });
        var a = new byte[4096];
        Array.Fill(a, (byte)0xAA);
        Assert.Equal(0, image.Write(2 * 4096, a));
        Assert.Equal(0, image.Flush());
        var other = new byte[4096];
        Array.Fill(other, (byte)0xBB);
        Assert.Equal(-Errno.EIO, image.Write(4096, other));
        Assert.Equal(-Errno.EIO, image.Read(4096, other));
        var back = new byte[4096];
        Assert.Equal(0, image.Read(2 * 4096, back));
        Assert.Equal(a, back);
        Assert.Contains(log, m => m.Contains("past the end of the file"));
    }
}
