using System.Buffers.Binary;
using System.Diagnostics;
using System.Text.RegularExpressions;
using XenSharp.Backends.Block.Images;
using XenSharp.Public;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated disk images through <see cref="BlockImages.Open"/>: seeds made by qemu-img and qemu-io (raw; qcow2
/// version 2 and 3 with data, compressed clusters, zero clusters, an internal snapshot and a backing file;
/// qcow; VHD fixed, dynamic and differencing). Each image is refused with a <see cref="BlockImageException"/> naming it, or
/// opens; then reads, writes, discards and a flush over its virtual size each answer 0 or an I/O errno, a
/// write reads back as written, nothing fails with an exception of the image layer's own making, and the file
/// grows by no more than the clusters (blocks) those writes may allocate.
/// </summary>
[Trait("Feature", "Blkback")]
public sealed partial class DiskImageFuzzTests(DiskImageFuzzTests.SeedCorpus seeds) : IClassFixture<DiskImageFuzzTests.SeedCorpus>
{
    /// <summary>The seeds, made once for the class in a directory of their own, removed after it.</summary>
    public sealed class SeedCorpus : IDisposable
    {
        internal readonly (string Dir, Mutator Mutator) Value = MakeSeeds();

        public void Dispose() => Directory.Delete(Value.Dir, true);
    }

    private const long MiB = 1 << 20;
    /// <summary>Opening a small image reads its tables; far less than an absurd table size asks for.</summary>
    private const long OpenBudget = 64 * MiB;

    private readonly SeedCorpus Seeds = seeds;

    private static void Tool(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{tool} {string.Join(' ', args)}: {output}");
    }

    /// <summary>A megabyte that is part random, part a repeated byte, part zeros, as a disk holds.</summary>
    private static byte[] Content(int seed)
    {
        var data = new byte[MiB];
        var r = new Random(seed);
        for (int at = 0; at < data.Length; at += 4096)
            switch (r.Next(3))
            {
                case 0: r.NextBytes(data.AsSpan(at, 4096)); break;
                case 1: data.AsSpan(at, 4096).Fill((byte)r.Next(1, 256)); break;
            }
        return data;
    }

    /// <summary>The seeds, in a directory of their own where the cases are written too, so that a backing file
    /// named relative to an image is found.</summary>
    private static (string, Mutator) MakeSeeds()
    {
        string dir = Directory.CreateTempSubdirectory("xs-imgfuzz").FullName;
        string P(string name) => Path.Combine(dir, name);
        File.WriteAllBytes(P("src.raw"), Content(1));
        File.WriteAllBytes(P("small.raw"), Content(2).AsSpan(0, 256 << 10).ToArray());
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1,cluster_size=4096", P("src.raw"), P("v3.qcow2"));
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10,cluster_size=16384", P("src.raw"), P("v2.qcow2"));
        Tool("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", P("src.raw"), P("compressed.qcow2"));
        // The backing file the overlays name (relative, as qemu-img writes it), then overlays with data and zero clusters.
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=8192", P("src.raw"), P("base.qcow2"));
        Tool("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2", P("overlay.qcow2"));
        Tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 8192 12288", "-c", "write -z 65536 16384", "-c", "write -z -u 131072 8192",
            "-c", "write -P 0x11 524288 4096", P("overlay.qcow2"));
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", P("src.raw"), P("snapshot.qcow2"));
        Tool("qemu-img", "snapshot", "-c", "s1", P("snapshot.qcow2"));
        Tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 8192", "-c", "write -z 40960 4096", P("snapshot.qcow2"));
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow", P("src.raw"), P("a.qcow"));
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", P("src.raw"), P("fixed.vhd"));
        Tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", P("src.raw"), P("dynamic.vhd"));
        File.WriteAllBytes(P("differencing.vhd"), Differencing(File.ReadAllBytes(P("dynamic.vhd")), "dynamic.vhd"));
        using (var differencing = BlockImages.Open(P("differencing.vhd"))) // QEMU does not write differencing VHDs: blocks of our own
        {
            byte[] data = new byte[8192];
            Array.Fill(data, (byte)0x3c);
            Assert.Equal(0, differencing.Write(1536, data));
        }
        string[] names = ["small.raw", "v3.qcow2", "v2.qcow2", "compressed.qcow2", "overlay.qcow2", "snapshot.qcow2", "a.qcow", "fixed.vhd", "dynamic.vhd",
            "differencing.vhd"];
        return (dir, new Mutator([.. names.Select(n => (n, File.ReadAllBytes(P(n))))],
            [.. new[] { "QFI\xfb", "conectix", "cxsparse", "base.qcow2", "src.raw" }.Select(t => t.Select(c => (byte)c).ToArray())]));
    }

    /// <summary>
    /// An empty differencing VHD over <paramref name="parent"/> (qemu-img cannot make one), laid out as the
    /// specification has it: footer copy, dynamic header naming the parent by unique id and a relative (W2ru)
    /// locator, the locator, an empty BAT, the footer.
    /// </summary>
    private static byte[] Differencing(byte[] parent, string locator)
    {
        var parentFooter = parent.AsSpan(parent.Length - 512);
        long size = (long)BinaryPrimitives.ReadUInt64BigEndian(parentFooter[48..]);
        const int BlockSize = 1 << 20;
        int entries = (int)((size + BlockSize - 1) / BlockSize), batBytes = (entries * 4 + 511) & ~511;
        const int HeaderAt = 512, LocatorAt = 1536, BatAt = 2048;
        var file = new byte[BatAt + batBytes + 512];
        var footer = file.AsSpan(0, 512);
        parentFooter.CopyTo(footer);
        BinaryPrimitives.WriteUInt64BigEndian(footer[16..], HeaderAt);
        BinaryPrimitives.WriteUInt32BigEndian(footer[60..], 4); // differencing
        footer[70] ^= 0x5A; // a unique id of its own
        var header = file.AsSpan(HeaderAt, 1024);
        "cxsparse"u8.CopyTo(header);
        BinaryPrimitives.WriteUInt64BigEndian(header[8..], ulong.MaxValue);
        BinaryPrimitives.WriteUInt64BigEndian(header[16..], BatAt);
        BinaryPrimitives.WriteUInt32BigEndian(header[24..], 0x00010000);
        BinaryPrimitives.WriteUInt32BigEndian(header[28..], (uint)entries);
        BinaryPrimitives.WriteUInt32BigEndian(header[32..], BlockSize);
        parentFooter.Slice(68, 16).CopyTo(header[40..]);
        System.Text.Encoding.BigEndianUnicode.GetBytes(locator).CopyTo(header[64..]);
        byte[] name = System.Text.Encoding.Unicode.GetBytes(locator);
        BinaryPrimitives.WriteUInt32BigEndian(header[576..], 0x57327275); // W2ru
        BinaryPrimitives.WriteUInt32BigEndian(header[580..], 512);
        BinaryPrimitives.WriteUInt32BigEndian(header[584..], (uint)name.Length);
        BinaryPrimitives.WriteUInt64BigEndian(header[592..], LocatorAt);
        name.CopyTo(file.AsSpan(LocatorAt));
        file.AsSpan(BatAt, batBytes).Fill(0xFF);
        BinaryPrimitives.WriteUInt32BigEndian(footer[64..], VhdChecksum(footer, 64));
        footer.CopyTo(file.AsSpan(file.Length - 512));
        BinaryPrimitives.WriteUInt32BigEndian(header[36..], VhdChecksum(header, 36));
        return file;
    }

    private static uint VhdChecksum(ReadOnlySpan<byte> b, int field)
    {
        uint sum = 0;
        for (int i = 0; i < b.Length; i++)
            if (i < field || i >= field + 4) sum += b[i];
        return ~sum;
    }

    /// <summary>Makes the footer (and its copy) and the dynamic header checksums right again after a mutation, so
    /// that the fields behind them are reached.</summary>
    private static void FixVhdChecksums(byte[] b)
    {
        if (b.Length < 512) return;
        foreach (int at in new[] { 0, b.Length - 512 })
        {
            var footer = b.AsSpan(at, 512);
            if (!footer.StartsWith("conectix"u8)) continue;
            BinaryPrimitives.WriteUInt32BigEndian(footer[64..], VhdChecksum(footer, 64));
            ulong header = BinaryPrimitives.ReadUInt64BigEndian(footer[16..]);
            if (b.Length >= 1024 && header <= (ulong)(b.Length - 1024) && b.AsSpan((int)header).StartsWith("cxsparse"u8))
                BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan((int)header + 36), VhdChecksum(b.AsSpan((int)header, 1024), 36));
        }
    }

    [GeneratedRegex(@"failed \(\w+\)")]
    private static partial Regex Bug();

    /// <summary>Opens <paramref name="bytes"/> as an image file and uses it; throws what the case broke.</summary>
    internal static void Check(byte[] bytes, string dir, BlockImageFormat? format = null)
    {
        string path = Path.Combine(dir, $"case-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(path, bytes);
        try
        {
            var log = new List<string>();
            IBlockImage? image = null;
            var error = Fuzz.Expect<BlockImageException>(() =>
                image = BlockImages.Open(path, new BlockImageOptions { Format = format, Log = m => { lock (log) log.Add(m); } }), OpenBudget);
            if (error is not null)
            {
                Assert.StartsWith($"{path}: ", error.Message);
                return;
            }
            using (image)
                Use(image!, bytes.LongLength);
            long length = new FileInfo(path).Length;
            Assert.True(length <= Allowed(image!, bytes.LongLength),
                $"the file grew from {bytes.Length} to {length} bytes: more than {Writes} writes may allocate");
            foreach (string m in log)
                if (Bug().IsMatch(m))
                    throw new FuzzFailure($"a request failed with an exception of the image layer's own: {m}");
        }
        finally
        {
            File.Delete(path);
        }
    }

    private const int Writes = 12, WriteLength = 12288;

    /// <summary>What <see cref="Writes"/> writes may add to a file: each of its data plus the clusters (blocks) and
    /// tables one allocation may need, and a refcount table moved to the end.</summary>
    private static long Allowed(IBlockImage image, long length)
    {
        long unit = image.Format switch
        {
            BlockImageFormat.Qcow2 => image.DiscardGranularity,
            BlockImageFormat.Qcow => 64 << 10,
            BlockImageFormat.Vhd => 257 * MiB, // a block of up to 256 MiB and its bitmap
            _ => 0,
        };
        // A raw file ending mid-sector is a disk of whole sectors (as in QEMU): writing its last one completes it.
        return image.Format == BlockImageFormat.Raw ? (length + 511) & ~511L : 2 * length + 2 * MiB + Writes * (WriteLength + 4 * unit);
    }

    private static void Expect(int result, string what)
    {
        if (result is not (0 or -Errno.EIO or -Errno.ENOSPC))
            throw new FuzzFailure($"{what} answered {result}, not 0 or an I/O error");
    }

    private static void Use(IBlockImage image, long fileLength)
    {
        var buffer = new byte[64 << 10];
        long size = image.Size & ~511L;
        Assert.True(size >= 0, $"virtual size {image.Size}");
        var r = new Random((int)(fileLength ^ size));
        // The whole disk when it is small; else its start, its end and places between.
        var offsets = new List<long>();
        if (size <= 16 * MiB)
            for (long at = 0; at < size; at += buffer.Length) offsets.Add(at);
        else
        {
            for (long at = 0; at < MiB; at += buffer.Length) offsets.Add(at);
            for (int i = 0; i < 32; i++) offsets.Add(r.NextInt64(size) & ~511L);
            offsets.Add(Math.Max(0, size - buffer.Length));
        }
        foreach (long at in offsets)
            Expect(image.Read(at, buffer.AsSpan(0, (int)Math.Min(buffer.Length, size - at))), $"read at {at}");

        var data = new byte[WriteLength];
        var back = new byte[WriteLength];
        for (int i = 0; i < Writes && size >= WriteLength; i++)
        {
            long at = i switch { 0 => 0, 1 => size - WriteLength, _ => r.NextInt64(size - WriteLength + 1) & ~511L };
            r.NextBytes(data);
            int written = image.Write(at, data);
            if (image.ReadOnly)
            {
                Assert.Equal(-Errno.EROFS, written);
                continue;
            }
            Expect(written, $"write at {at}");
            if (written == 0 && image.Read(at, back) == 0 && !back.AsSpan().SequenceEqual(data))
                throw new FuzzFailure($"{WriteLength} bytes written at {at} read back otherwise");
        }
        if (!image.ReadOnly && size > 0)
        {
            int d = image.Discard(0, Math.Min(size, 65536));
            if (d is not (0 or -Errno.EIO or -Errno.ENOSPC or -Errno.EOPNOTSUPP))
                throw new FuzzFailure($"discard answered {d}");
        }
        Expect(image.Flush(), "flush");
    }

    [Fact]
    public void SeedsOpenAndServeTheirWholeSize()
    {
        var (dir, m) = Seeds.Value;
        foreach (var (name, bytes) in m.Corpus)
        {
            var log = new List<string>();
            string path = Path.Combine(dir, $"seed-{name}");
            File.WriteAllBytes(path, bytes);
            try
            {
                using var image = BlockImages.Open(path, new BlockImageOptions { Log = log.Add });
                Assert.True(image.Size >= 256 << 10, name);
                Use(image, bytes.Length);
                Assert.Empty(log);
            }
            finally
            {
                File.Delete(path);
            }
        }
    }

    [Fact]
    public void MutatedImagesOpenAndServeOrAreRefusedByName()
    {
        var (dir, m) = Seeds.Value;
        Fuzz.Run(m.Cases(), 800, c => Check(m.Apply(c), dir), m.Print);
    }

    /// <summary>The same with xl's <c>format=</c> given, so that a damaged header is not taken for a raw disk, and
    /// with VHD checksums made right again.</summary>
    [Fact]
    public void MutatedImagesOfTheirStatedFormatOpenAndServeOrAreRefusedByName()
    {
        var (dir, m) = Seeds.Value;
        Fuzz.Run(m.Cases(), 800, c =>
        {
            string name = m.Corpus[c.Seed].Name;
            var format = BlockImages.ParseFormat(Path.GetExtension(name) switch { ".qcow2" => "qcow2", ".qcow" => "qcow", ".vhd" => "vhd", _ => "raw" });
            byte[] bytes = m.Apply(c);
            if (format == BlockImageFormat.Vhd) FixVhdChecksums(bytes);
            Check(bytes, dir, format);
        }, m.Print);
    }
}
