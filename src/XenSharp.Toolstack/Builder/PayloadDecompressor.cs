using System.Buffers.Binary;
using System.IO.Compression;
using K4os.Compression.LZ4;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.LZMA;

namespace XenSharp.Toolstack.Builder;

public enum PayloadFormat { None, Gzip, Xz, Zstd, Lz4, Bzip2, Lzma }

/// <summary>
/// Unpacks a bzImage payload (or a compressed kernel file) by its magic number, the way Linux's
/// boot decompressors are chosen: gzip, xz, zstd, lz4 (legacy frames), bzip2 and lzma.
/// </summary>
public static class PayloadDecompressor
{
    /// <summary>An unpacked vmlinux is tens of megabytes; anything far larger is a broken image.</summary>
    public const long MaxOutput = 1L << 30;

    public static PayloadFormat Detect(ReadOnlySpan<byte> d)
    {
        if (d.Length >= 2 && d[0] == 0x1F && (d[1] == 0x8B || d[1] == 0x9E)) return PayloadFormat.Gzip;
        if (d.Length >= 6 && d[..6].SequenceEqual(new byte[] { 0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00 })) return PayloadFormat.Xz;
        if (d.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(d) == 0xFD2FB528) return PayloadFormat.Zstd;
        if (d.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(d) == Lz4LegacyMagic) return PayloadFormat.Lz4;
        if (d.Length >= 3 && d[0] == (byte)'B' && d[1] == (byte)'Z' && d[2] == (byte)'h') return PayloadFormat.Bzip2;
        if (d.Length >= 13 && d[0] == 0x5D && d[1] == 0x00 && d[2] == 0x00) return PayloadFormat.Lzma;
        return PayloadFormat.None;
    }

    private const uint Lz4LegacyMagic = 0x184C2102;

    /// <summary>Unpacks <paramref name="data"/>. A bzImage payload ends with the 32-bit unpacked size
    /// (Linux's size_append): pass <paramref name="sizeAppended"/> to strip it and check against it.</summary>
    public static byte[] Decompress(byte[] data, string what, bool sizeAppended = false)
    {
        var format = Detect(data);
        long expected = -1;
        if (sizeAppended && data.Length > 4)
        {
            expected = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(data.Length - 4));
            data = data[..^4];
        }
        byte[] result = OnOwnThread(() => DecompressFormat(format, data, what, expected));
        if (expected >= 0 && result.Length != expected)
            throw new DomainBuildException($"{what}: the {format.ToString().ToLowerInvariant()} payload unpacked to {result.Length} bytes, not the {expected} it declares");
        return result;
    }

    /// <summary>Runs a decoder on a thread of its own. The decoders rent their windows and buffers (tens of MiB for a
    /// kernel) from the shared array pool, whose per-thread part keeps one of each size for as long as the thread
    /// lives and the process allocates too little to age them out; a thread that ends takes them with it, and the
    /// heap trim after the build frees them.</summary>
    private static byte[] OnOwnThread(Func<byte[]> decode)
    {
        byte[]? result = null;
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? failure = null;
        var t = new Thread(() =>
        {
            try { result = decode(); }
            catch (Exception e) { failure = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e); }
        }, maxStackSize: 1 << 20) { IsBackground = true, Name = "xen-unpack" };
        t.Start();
        t.Join();
        failure?.Throw();
        return result!;
    }

    private static byte[] DecompressFormat(PayloadFormat format, byte[] data, string what, long expected)
    {
        // What the payload declares (bzImage) bounds what it may unpack to, so a corrupt stream stops there.
        long limit = expected >= 0 ? expected : MaxOutput;
        try
        {
            return format switch
            {
                PayloadFormat.Gzip => Drain(new GZipStream(new MemoryStream(data), CompressionMode.Decompress), limit),
                PayloadFormat.Xz => XzContainer.Decode(data),
                PayloadFormat.Zstd => Drain(new ZstdSharp.DecompressionStream(new MemoryStream(data)), limit),
                PayloadFormat.Bzip2 => Drain(BZip2Stream.Create(new MemoryStream(data), SharpCompress.Compressors.CompressionMode.Decompress, false, false, false), limit),
                PayloadFormat.Lzma => Lzma(data, expected, limit),
                PayloadFormat.Lz4 => Lz4Legacy(data),
                _ => throw new DomainBuildException($"{what}: payload compression not recognised"),
            };
        }
        catch (Exception e) when (e is not DomainBuildException)
        {
            // Some decoders meet corrupt input with an IndexOutOfRangeException or the like, whose message says nothing to the user.
            string why = e is IndexOutOfRangeException or ArgumentException or NullReferenceException or OverflowException
                or InvalidCastException or InvalidOperationException ? "the data is corrupt" : e.Message;
            throw new DomainBuildException($"{what}: cannot decompress the {format.ToString().ToLowerInvariant()} payload: {why}", e);
        }
    }

    private static byte[] Drain(Stream s, long limit)
    {
        using (s)
        {
            var o = new MemoryStream();
            var buf = new byte[1 << 16];
            int n;
            while ((n = s.Read(buf, 0, buf.Length)) > 0)
            {
                o.Write(buf, 0, n);
                if (o.Length > limit)
                    throw new InvalidDataException(limit == MaxOutput ? "decompressed size exceeds 1 GiB" : $"it unpacks to more than the {limit} bytes it declares");
            }
            return o.ToArray();
        }
    }

    /// <summary>The .lzma ("alone") format: 5 bytes of properties, the 64-bit size (all ones when
    /// unknown), then the stream.</summary>
    private static byte[] Lzma(byte[] data, long expected, long limit)
    {
        if (data.Length < 13) throw new InvalidDataException("truncated header");
        byte[] props = data[..5];
        long size = BinaryPrimitives.ReadInt64LittleEndian(data.AsSpan(5));
        if (size < 0) size = expected;
        if (size > MaxOutput) throw new InvalidDataException("declared size exceeds 1 GiB");
        // The decoder allocates the dictionary the header asks for; more than the data it unpacks is never used.
        uint dict = BinaryPrimitives.ReadUInt32LittleEndian(props.AsSpan(1));
        if (size >= 0 && dict > size) BinaryPrimitives.WriteUInt32LittleEndian(props.AsSpan(1), (uint)Math.Max(size, 4096));
        var input = new MemoryStream(data, 13, data.Length - 13);
        return Drain(LzmaStream.Create(props, input, data.Length - 13, size < 0 ? -1 : size, false), size >= 0 ? size : limit);
    }

    /// <summary>LZ4's legacy framing as Linux uses it: the magic, then blocks of a 32-bit compressed
    /// length and data, each unpacking to at most 8 MiB; trailing bytes too short to be a block end it.</summary>
    private static byte[] Lz4Legacy(byte[] data)
    {
        const int chunk = 8 << 20;
        var o = new MemoryStream();
        var buf = new byte[chunk];
        int p = 4;
        while (p + 4 <= data.Length)
        {
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(p));
            if (len == Lz4LegacyMagic) { p += 4; continue; }
            if (len == 0 || p + 4 + (long)len > data.Length) break;
            int n = LZ4Codec.Decode(data, p + 4, (int)len, buf, 0, chunk);
            if (n < 0) throw new InvalidDataException("corrupt lz4 block");
            o.Write(buf, 0, n);
            if (o.Length > MaxOutput) throw new InvalidDataException("decompressed size exceeds 1 GiB");
            p += 4 + (int)len;
        }
        if (o.Length == 0) throw new InvalidDataException("no lz4 blocks");
        return o.ToArray();
    }
}
