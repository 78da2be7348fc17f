using System.Buffers.Binary;
using System.IO.Compression;
using K4os.Compression.LZ4;
using XenSharp.Toolstack.Builder;

namespace XenSharp.Toolstack.Tests.Builder;

[Trait("Feature", "x86/PVH"), Trait("Feature", "Direct-boot kernel image format")]
public class KernelLoaderTests
{
    private static readonly byte[] Code = Enumerable.Range(0, 3000).Select(i => (byte)(i * 7 + 1)).ToArray();

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ElfNotesAndSegmentsAreRead(bool is64)
    {
        var elf = ElfImage.Parse(TestImages.Elf(Code, 0x100040, bss: 5000, is64: is64), "k");
        Assert.Equal(is64, elf.Is64);
        Assert.Equal(0x100040u, elf.Phys32Entry);
        Assert.Equal("XenSharpTest", elf.XenNoteString(6));
        var seg = Assert.Single(elf.Segments);
        Assert.Equal(TestImages.LoadAddress, seg.PhysAddr);
        Assert.Equal((ulong)Code.Length, seg.FileSize);
        Assert.Equal((ulong)Code.Length + 5000, seg.MemSize);
    }

    [Fact]
    public void BadElfIsRejected()
    {
        var good = TestImages.Elf(Code, 0x100000);
        var wrongMachine = (byte[])good.Clone();
        wrongMachine[18] = 40; // ARM
        Assert.Contains("is not x86", Assert.Throws<DomainBuildException>(() => ElfImage.Parse(wrongMachine, "k")).Message);
        var truncated = good[..200];
        Assert.Contains("outside the file", Assert.Throws<DomainBuildException>(() => ElfImage.Parse(truncated, "k")).Message);
    }

    [Fact]
    public void ElfOffsetsAndSizesThatWrapAroundAreCaught()
    {
        byte[] good = TestImages.Elf(Code, 0x100000);
        const int load = 64, note = 64 + 56; // the program headers of the made ELF64

        // e_phoff just below 2^64: the offset of the first program header wrapped back into the file.
        var phoff = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(phoff.AsSpan(32), 0xFFFFFFFFFFFFFFF0);
        Assert.Contains("program header outside the file", Assert.Throws<DomainBuildException>(() => ElfImage.Parse(phoff, "k")).Message);

        // An empty PT_NOTE far beyond the file: its notes were read from there.
        var emptyNote = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(emptyNote.AsSpan(note + 8), 0x7FFFFFF8);
        BinaryPrimitives.WriteUInt64LittleEndian(emptyNote.AsSpan(note + 32), 0);
        Assert.Empty(ElfImage.Parse(emptyNote, "k").Notes);

        // No PT_NOTE, and e_shoff just below 2^64: the section headers' offset wrapped too.
        var shoff = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(shoff.AsSpan(note), 0); // PT_NULL
        BinaryPrimitives.WriteUInt64LittleEndian(shoff.AsSpan(40), 0xFFFFFFFFFFFFFFC0);
        BinaryPrimitives.WriteUInt16LittleEndian(shoff.AsSpan(58), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(shoff.AsSpan(60), 1);
        Assert.Empty(ElfImage.Parse(shoff, "k").Notes);

        // A PT_LOAD whose end wraps past 2^64 passed the builder's "fits in memory" check and was written there.
        var wraps = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(wraps.AsSpan(load + 24), 0xFFFFFFFFFFFFF000);
        BinaryPrimitives.WriteUInt64LittleEndian(wraps.AsSpan(load + 40), 0x2000);
        Assert.Contains("segment 0 wraps around", Assert.Throws<DomainBuildException>(() =>
            PvhBuilder.Build(new PvhBuildSpec(wraps, "k", null, "", 16 << 20, 1, 1), new XenSharp.Toolstack.Platform.SparseGuestMemory())).Message);
    }

    public static IEnumerable<object[]> Formats() =>
        new[] { "gzip", "xz", "zstd", "lz4", "bzip2", "lzma" }.Select(f => new object[] { f });

    private static byte[] Compress(string format, byte[] data) => format switch
    {
        "gzip" => Gzip(data),
        "xz" => TestImages.Tool("xz", "--check=crc32 --x86 --lzma2=dict=1MiB -c", data),
        "lzma" => TestImages.Tool("xz", "--format=lzma -c", data),
        "zstd" => new ZstdSharp.Compressor(19).Wrap(data).ToArray(),
        "lz4" => Lz4Legacy(data),
        "bzip2" => Bzip2(data),
        _ => throw new ArgumentException(format),
    };

    private static byte[] Gzip(byte[] data)
    {
        var o = new MemoryStream();
        using (var g = new GZipStream(o, CompressionLevel.Optimal, leaveOpen: true)) g.Write(data);
        return o.ToArray();
    }

    private static byte[] Bzip2(byte[] data)
    {
        var o = new MemoryStream();
        using (var b = SharpCompress.Compressors.BZip2.BZip2Stream.Create(o, SharpCompress.Compressors.CompressionMode.Compress, false, true, false))
            b.Write(data);
        return o.ToArray();
    }

    /// <summary>LZ4's legacy frame, as `lz4 -l` writes it.</summary>
    private static byte[] Lz4Legacy(byte[] data)
    {
        var block = new byte[LZ4Codec.MaximumOutputSize(data.Length)];
        int n = LZ4Codec.Encode(data, 0, data.Length, block, 0, block.Length, LZ4Level.L12_MAX);
        var o = new byte[8 + n];
        BinaryPrimitives.WriteUInt32LittleEndian(o, 0x184C2102);
        BinaryPrimitives.WriteUInt32LittleEndian(o.AsSpan(4), (uint)n);
        block.AsSpan(0, n).CopyTo(o.AsSpan(8));
        return o;
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void BzImagePayloadIsFoundAndDecompressed(string format)
    {
        byte[] elf = TestImages.Elf(Code, 0x100000);
        byte[] bz = TestImages.BzImage(Compress(format, elf), elf.Length);
        var header = BzImage.Parse(bz, "vmlinuz");
        Assert.Equal(0x20F, header.Protocol);
        Assert.Equal(4 * 512 + 0x3A0, header.PayloadFileOffset);
        Assert.Equal(format, PayloadDecompressor.Detect(header.Payload(bz)).ToString().ToLowerInvariant());
        var loaded = PvhBuilder.LoadKernel(bz, "vmlinuz");
        Assert.Equal(elf, loaded.Data);
        Assert.Equal(0x100000u, loaded.Phys32Entry);
    }

    [Fact]
    public void OldBootProtocolAndCorruptPayloadsAreRejected()
    {
        byte[] inner = TestImages.Elf(Code, 0x100000);
        byte[] bz = TestImages.BzImage(Gzip(inner), inner.Length);
        var old = (byte[])bz.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(old.AsSpan(0x206), 0x0206);
        Assert.Contains("2.08 or later", Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(old, "v")).Message);

        var corrupt = (byte[])bz.Clone();
        for (int i = 4 * 512 + 0x3A0 + 20; i < corrupt.Length - 8; i++) corrupt[i] ^= 0x5A;
        Assert.Contains("cannot decompress the gzip payload", Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(corrupt, "v")).Message);

        var wrongSize = (byte[])bz.Clone();
        wrongSize[^4] ^= 1;
        Assert.Contains("not the", Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(wrongSize, "v")).Message);

        var outside = (byte[])bz.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(outside.AsSpan(0x24C), 1 << 30);
        Assert.Contains("outside the file", Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(outside, "v")).Message);
    }

    [Fact]
    public void XzWithCrc64AndSeveralBlocksIsDecoded()
    {
        var data = Enumerable.Range(0, 300_000).Select(i => (byte)(i % 251 == 0 ? 0xE8 : i * 13)).ToArray();
        var xz = TestImages.Tool("xz", "--check=crc64 --x86 --lzma2=dict=64KiB --block-size=100000 -c", data);
        Assert.Equal(data, PayloadDecompressor.Decompress(xz, "x"));
        var corrupt = (byte[])xz.Clone();
        corrupt[100] ^= 0xFF;
        Assert.Throws<DomainBuildException>(() => PayloadDecompressor.Decompress(corrupt, "x"));
    }

    /// <summary>An xz stream with its index replaced by one of <paramref name="records"/> (unpadded, uncompressed)
    /// sizes, and the footer's backward size to match.</summary>
    private static byte[] WithXzIndex(byte[] xz, int recordCount, params (ulong Unpadded, ulong Uncompressed)[] records)
    {
        int footer = xz.Length - 12;
        int index = footer - (int)(BinaryPrimitives.ReadUInt32LittleEndian(xz.AsSpan(footer + 4)) + 1) * 4;
        var ix = new List<byte> { 0 };
        void Varint(ulong v) { do { ix.Add((byte)(v & 0x7F | (v > 0x7F ? 0x80u : 0))); v >>= 7; } while (v != 0); }
        Varint((ulong)recordCount);
        foreach (var (u, c) in records) { Varint(u); Varint(c); }
        while (ix.Count % 4 != 0) ix.Add(0);
        ix.AddRange(new byte[4]); // CRC32 of the index (not checked by the decoder)
        var foot = xz[footer..];
        BinaryPrimitives.WriteUInt32LittleEndian(foot.AsSpan(4), (uint)(ix.Count / 4 - 1));
        return [.. xz[..index], .. ix, .. foot];
    }

    private static (ulong Unpadded, ulong Uncompressed) FirstXzRecord(byte[] xz)
    {
        int footer = xz.Length - 12;
        int p = footer - (int)(BinaryPrimitives.ReadUInt32LittleEndian(xz.AsSpan(footer + 4)) + 1) * 4 + 2;
        ulong Read() { ulong v = 0; for (int s = 0; ; s += 7) { byte b = xz[p++]; v |= (ulong)(b & 0x7F) << s; if (b < 0x80) return v; } }
        return (Read(), Read());
    }

    [Fact]
    public void HostLiblzmaDecodesXzStreamsAndRefusesCorruptOnes()
    {
        var data = Enumerable.Range(0, 300_000).Select(i => (byte)(i % 251 == 0 ? 0xE8 : i * 13)).ToArray();
        foreach (var options in new[] { "--check=crc32 --x86 --lzma2=dict=1MiB -c", "--check=crc64 --x86 --lzma2=dict=64KiB --block-size=100000 -c" })
        {
            var xz = TestImages.Tool("xz", options, data);
            Assert.Equal(data, LibLzma.TryDecode(xz, data.Length));
            // A size other than the stream's, and a corrupt stream: no answer, and the managed decoder says why.
            Assert.Null(LibLzma.TryDecode(xz, data.Length - 1));
            var corrupt = (byte[])xz.Clone();
            corrupt[100] ^= 0xFF;
            Assert.Null(LibLzma.TryDecode(corrupt, data.Length));
        }
    }

    [Fact]
    public void XzIndexThatLiesIsRejectedBeforeItCostsMemory()
    {
        byte[] elf = TestImages.Elf(Code, 0x100000);
        byte[] xz = TestImages.Tool("xz", "--check=crc32 --lzma2=dict=1MiB -c", elf);
        var (unpadded, uncompressed) = FirstXzRecord(xz);
        Assert.Equal(elf, PayloadDecompressor.Decompress(WithXzIndex(xz, 1, (unpadded, uncompressed)), "x"));

        // More records than the index holds: reading them ran off the end of the file.
        Assert.Contains("xz: bad index", Assert.Throws<DomainBuildException>(() =>
            PayloadDecompressor.Decompress(WithXzIndex(xz, 127, (unpadded, uncompressed)), "x")).Message);

        // A block claiming 1 GiB unpacked: the block was allocated at that size before a byte was decoded.
        long before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Contains("shorter than its index says", Assert.Throws<DomainBuildException>(() =>
            PayloadDecompressor.Decompress(WithXzIndex(xz, 1, (unpadded, 1UL << 30)), "x")).Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64 << 20);

        // A block whose unpadded size puts its check past the index.
        Assert.Contains("outside the stream", Assert.Throws<DomainBuildException>(() =>
            PayloadDecompressor.Decompress(WithXzIndex(xz, 1, (unpadded + 4, uncompressed)), "x")).Message);
    }

    [Fact]
    public void LzmaHeaderCutShortOrAskingForAHugeDictionaryIsRejectedClearly()
    {
        // A bzImage payload of nine bytes and the appended size: too short for the .lzma header.
        byte[] tiny = TestImages.BzImage([0x5D, 0, 0, 0x80, 0, 0, 0, 0, 0], 100);
        Assert.Contains("cannot decompress the lzma payload: truncated header",
            Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(tiny, "v")).Message);

        // A 4 GiB dictionary for a kernel the bzImage says unpacks to a few KiB: the decoder needs no more than that.
        byte[] elf = TestImages.Elf(Code, 0x100000);
        byte[] lzma = Compress("lzma", elf);
        lzma[3] = 0xFF; lzma[4] = 0xFF;
        long before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(elf, PvhBuilder.LoadKernel(TestImages.BzImage(lzma, elf.Length), "v").Data);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64 << 20);
    }

    [Fact]
    public void DecoderFailuresOnCorruptPayloadsAreToldAsCorruptData()
    {
        // A byte of a bzip2 stream changed: SharpCompress's decoder fails with an IndexOutOfRangeException.
        byte[] elf = TestImages.Elf(Code, 0x100000);
        byte[] bz2 = Compress("bzip2", elf);
        string? message = null;
        for (int i = 4; i < Math.Min(bz2.Length, 2000) && message is null; i++)
        {
            var c = (byte[])bz2.Clone();
            c[i] = (byte)(i % 3 == 0 ? 0 : i % 3 == 1 ? 0xFF : c[i] ^ 0x10);
            try { PayloadDecompressor.Decompress(c, "v"); }
            catch (DomainBuildException e) when (e.InnerException is IndexOutOfRangeException) { message = e.Message; }
            catch (DomainBuildException) { }
        }
        Assert.Equal("v: cannot decompress the bzip2 payload: the data is corrupt", message);
    }

    [Fact]
    public void DebianKernelIfFetchedUnpacksToTheVmlinuxWithThePvhEntry()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string vmlinuz = Path.Combine(home, ".cache", "xensharp", "debian", "vmlinuz");
        if (!File.Exists(vmlinuz)) return; // fetched by xensharp-artifacts; nothing to check without it
        var elf = PvhBuilder.LoadKernel(File.ReadAllBytes(vmlinuz), vmlinuz);
        Assert.True(elf.Is64);
        Assert.NotNull(elf.Phys32Entry);
        Assert.Equal(0x1000000UL, elf.PhysRange.Start);
    }

    [Fact]
    public void HostKernelIfPresentUnpacksToAnElfWithThePvhEntry()
    {
        var kernel = Directory.Exists("/boot") ? Directory.GetFiles("/boot", "vmlinuz-*").FirstOrDefault() : null;
        if (kernel is null) return; // this host has no kernel image to try
        byte[] file;
        try { file = File.ReadAllBytes(kernel); } catch (UnauthorizedAccessException) { return; }
        var elf = PvhBuilder.LoadKernel(file, kernel);
        Assert.True(elf.Is64);
        Assert.NotNull(elf.Phys32Entry);
    }
}
