using System.Buffers.Binary;
using System.IO.Compression;
using K4os.Compression.LZ4;
using XenSharp.Toolstack.Builder;
using XenSharp.Toolstack.Platform;
using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Fuzz;

/// <summary>
/// Mutated kernel images through the PVH builder's loaders: ELF with Xen notes (the test kernels of
/// tests/guests and small made ones), the same compressed in every format Linux uses, bzImages around
/// those, and Debian's own bzImage. Each loads and builds, or fails with a
/// <see cref="DomainBuildException"/> whose message is for the user; none allocates far beyond its
/// size, loops, or writes guest memory it did not populate.
/// </summary>
[Trait("Feature", "x86/PVH"), Trait("Feature", "Direct-boot kernel image format")]
public class KernelImageFuzzTests
{
    /// <summary>Room for decompressing and building a small kernel: far less than one absurd length field asks for.</summary>
    private const long SmallBudget = 256L << 20;

    private static readonly Lazy<Mutator> Images = new(() =>
    {
        var elfs = Directory.GetFiles(Repo.PathOf("tests", "guests", "build"), "*.elf").Order()
            .Select(f => (Path.GetFileName(f), File.ReadAllBytes(f)))
            // PV kernels (pvmmu) have no PVH entry: the PVH builder refusing them is not what the seeds check.
            .Where(e => ElfImage.Parse(e.Item2, e.Item1).Phys32Entry is not null).ToList();
        Assert.True(elfs.Count > 0, "the test kernels are not built (make -C tests/guests)");
        byte[] hello = elfs.Single(e => e.Item1 == "hello.elf").Item2;
        var corpus = new List<(string, byte[])>(elfs)
        {
            ("made-elf64", TestImages.Elf(TestImages.HaltLoop, 0x100000, bss: 5000)),
            ("made-elf32", TestImages.Elf(TestImages.HaltLoop, 0x100000, is64: false)),
        };
        foreach (var (format, packed) in Compressed(hello))
        {
            corpus.Add(($"hello.elf.{format}", packed));
            corpus.Add(($"hello.elf.{format} in a bzImage", TestImages.BzImage(packed, hello.Length)));
        }
        return new Mutator(corpus);
    });

    private static IEnumerable<(string, byte[])> Compressed(byte[] data)
    {
        var gz = new MemoryStream();
        using (var g = new GZipStream(gz, CompressionLevel.Optimal, leaveOpen: true)) g.Write(data);
        yield return ("gz", gz.ToArray());
        yield return ("xz", TestImages.Tool("xz", "--check=crc32 --x86 --lzma2=dict=1MiB -c", data));
        yield return ("xz-blocks", TestImages.Tool("xz", "--check=crc64 --lzma2=dict=64KiB --block-size=40000 -c", data));
        yield return ("lzma", TestImages.Tool("xz", "--format=lzma -c", data));
        yield return ("zst", new ZstdSharp.Compressor(3).Wrap(data).ToArray());
        var bz = new MemoryStream();
        using (var b = SharpCompress.Compressors.BZip2.BZip2Stream.Create(bz, SharpCompress.Compressors.CompressionMode.Compress, false, true, false))
            b.Write(data);
        yield return ("bz2", bz.ToArray());
        // LZ4's legacy frame, as `lz4 -l` writes it.
        var block = new byte[LZ4Codec.MaximumOutputSize(data.Length)];
        int n = LZ4Codec.Encode(data, 0, data.Length, block, 0, block.Length, LZ4Level.L09_HC);
        var lz4 = new byte[8 + n];
        BinaryPrimitives.WriteUInt32LittleEndian(lz4, 0x184C2102);
        BinaryPrimitives.WriteUInt32LittleEndian(lz4.AsSpan(4), (uint)n);
        block.AsSpan(0, n).CopyTo(lz4.AsSpan(8));
        yield return ("lz4", lz4);
    }

    /// <summary>Loads and builds <paramref name="image"/> into lazily populated memory (64 MiB mapped, 16 MiB target).</summary>
    internal static void Check(byte[] image, long budget)
    {
        using var mem = new SparseGuestMemory();
        var error = Fuzz.Expect<DomainBuildException>(() =>
        {
            var elf = PvhBuilder.LoadKernel(image, "vmlinuz");
            _ = (elf.PhysRange, elf.Phys32Entry, elf.XenNoteString(6));
            PvhBuilder.Build(new PvhBuildSpec(image, "vmlinuz", [1, 2, 3], "console=hvc0", 16 << 20, 1, 2, 64 << 20), mem);
        }, budget);
        if (error is not null)
            Assert.True(error.Message.StartsWith("vmlinuz: ") || error.Message.StartsWith("the ramdisk") || error.Message.StartsWith("no room"),
                $"the error does not name the kernel: {error.Message}");
    }

    [Fact]
    public void SeedsBuild()
    {
        foreach (var (name, bytes) in Images.Value.Corpus)
        {
            using var mem = new SparseGuestMemory();
            PvhBuilder.Build(new PvhBuildSpec(bytes, name, null, "", 16 << 20, 1, 1, 64 << 20), mem);
        }
    }

    [Fact]
    public void MutatedKernelsBuildOrFailClearly()
    {
        var m = Images.Value;
        Fuzz.Run(m.Cases(), 2000, c => Check(m.Apply(c), SmallBudget), m.Print);
    }

    /// <summary>Debian's kernel (an xz bzImage of 8 MB unpacking to 60 MB) is slow to unpack: a few cases here, more by hand.</summary>
    [Fact]
    public void MutatedDebianKernelBuildsOrFailsClearly()
    {
        string path = Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "xensharp", "debian", "vmlinuz");
        Assert.True(File.Exists(path), $"{path} is missing (xensharp-artifacts fetch, which ./test runs)");
        var m = new Mutator([("debian vmlinuz", File.ReadAllBytes(path))]);
        // Unpacking allocates a few times the 60 MB kernel; an absurd length field asks for gigabytes.
        Fuzz.Run(m.Cases(), 4, c => Check(m.Apply(c), 1L << 30), m.Print);
    }
}
