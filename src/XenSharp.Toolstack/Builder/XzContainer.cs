using System.Buffers.Binary;
using SharpCompress.Compressors.Filters;
using SharpCompress.Compressors.LZMA;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The .xz container as Linux's kernel payloads use it (one stream, blocks of LZMA2 behind an
/// optional x86 branch filter, CRC32 checks): the container is read here, and the stream decoded by the host's
/// liblzma (<see cref="LibLzma"/>) or, where that is missing or refuses it, block by block here: each block's LZMA2
/// data and the x86 filter by SharpCompress, each block's check verified.
/// </summary>
internal static class XzContainer
{
    private const ulong FilterX86 = 0x04, FilterLzma2 = 0x21;

    /// <summary>Every offset and size here comes from the file: each is checked against the part of the
    /// file it must lie in before it is used, and nothing is allocated on a size's word alone.</summary>
    public static byte[] Decode(byte[] d)
    {
        if (d.Length < 24) throw new InvalidDataException("xz: truncated");
        int checkType = d[7] & 0x0F;
        int checkSize = checkType switch { 0 => 0, 1 => 4, 4 => 8, 10 => 32, _ => throw new InvalidDataException($"xz: check type {checkType} unknown") };

        // The index (found from the stream footer) gives each block's sizes.
        int footer = d.Length - 12;
        while (footer > 12 && BinaryPrimitives.ReadUInt16LittleEndian(d.AsSpan(footer + 10)) != 0x5A59) footer -= 4; // skip stream padding
        if (d[footer + 10] != (byte)'Y' || d[footer + 11] != (byte)'Z') throw new InvalidDataException("xz: no stream footer");
        long backward = (BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(footer + 4)) + 1L) * 4;
        if (backward > footer - 12) throw new InvalidDataException("xz: bad index");
        int index = (int)(footer - backward);
        if (d[index] != 0) throw new InvalidDataException("xz: bad index");
        int p = index + 1;
        ulong records = Varint(d, ref p, footer);
        // A record is at least two bytes: more records than that cannot fit in the index.
        if (records > (ulong)(footer - p) / 2) throw new InvalidDataException("xz: bad index");
        var blocks = new List<(ulong Unpadded, ulong Uncompressed)>();
        ulong total = 0;
        for (ulong i = 0; i < records; i++)
        {
            var (unpadded, uncompressed) = (Varint(d, ref p, footer), Varint(d, ref p, footer));
            total += Math.Min(uncompressed, (ulong)PayloadDecompressor.MaxOutput + 1);
            if (total > (ulong)PayloadDecompressor.MaxOutput) throw new InvalidDataException("xz: unpacked size exceeds 1 GiB");
            blocks.Add((unpadded, uncompressed));
        }

        // The index's total is what the stream says it unpacks to; liblzma decodes into exactly that much, the
        // allocation bounded as for one block below (a kernel compresses about 4:1).
        if (total <= (ulong)d.Length * 16 && LibLzma.TryDecode(d, (long)total) is { } whole) return whole;

        // Each block decodes into one array; a single block, the usual case, is the output itself (no growing
        // stream and its copies: a kernel is tens of MiB of large-object garbage per domain build otherwise).
        var decoded = new List<byte[]>(blocks.Count);
        int pos = 12;
        foreach (var (unpadded, uncompressed) in blocks)
        {
            if (pos >= index) throw new InvalidDataException("xz: block outside the stream");
            int headerSize = (d[pos] + 1) * 4;
            int headerEnd = pos + headerSize - 4; // the header ends with its CRC32
            if (d[pos] == 0 || headerEnd + 4 > index) throw new InvalidDataException("xz: bad block header");
            byte flags = d[pos + 1];
            int q = pos + 2;
            if ((flags & 0x40) != 0) Varint(d, ref q, headerEnd);
            if ((flags & 0x80) != 0) Varint(d, ref q, headerEnd);
            bool x86 = false;
            byte? dictProps = null;
            for (int f = 0; f < (flags & 3) + 1; f++)
            {
                ulong id = Varint(d, ref q, headerEnd);
                ulong propsSize = Varint(d, ref q, headerEnd);
                if (propsSize > (ulong)(headerEnd - q)) throw new InvalidDataException("xz: bad block header");
                if (id == FilterLzma2 && propsSize == 1) dictProps = d[q];
                else if (id == FilterX86 && propsSize == 0) x86 = true;
                else throw new InvalidDataException($"xz: filter 0x{id:x} is not supported");
                q += (int)propsSize;
            }
            if (dictProps is not { } dict || dict > 40) throw new InvalidDataException("xz: block without LZMA2");
            long compressed = (long)Math.Min(unpadded, (ulong)d.Length) - headerSize - checkSize;
            int data = pos + headerSize;
            if (compressed <= 0 || data + compressed > index) throw new InvalidDataException("xz: block outside the stream");
            int checkAt = data + (int)((compressed + 3) & ~3L);
            if (checkAt + checkSize > index) throw new InvalidDataException("xz: block outside the stream");

            // A dictionary larger than the block's data is never used: cap what the decoder allocates for it.
            while (dict > 0 && LzmaDictionarySize(dict - 1) >= uncompressed) dict--;
            byte[] block;
            using (var lz = LzmaStream.Create([dict], new MemoryStream(d, data, (int)compressed), compressed, -1, null, true, false))
                block = ReadExactly(lz, uncompressed, compressed);
            if (x86)
            {
                uint state = 0;
                BranchExecFilter.X86Converter(block, 0, ref state); // each block restarts the filter at offset 0
            }
            if (checkType == 1 && Crc32(block) != BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(checkAt)))
                throw new InvalidDataException("xz: block check (CRC32) does not match");
            decoded.Add(block);
            pos = checkAt + checkSize;
        }
        if (decoded.Count == 1) return decoded[0];
        var output = new byte[decoded.Sum(b => (long)b.Length)];
        int at = 0;
        foreach (var b in decoded)
        {
            b.CopyTo(output, at);
            at += b.Length;
        }
        return output;
    }

    /// <summary>LZMA2's dictionary size for its one-byte property (0 to 40).</summary>
    private static ulong LzmaDictionarySize(int prop) => (2UL | ((uint)prop & 1)) << (prop / 2 + 11);

    /// <summary>Exactly <paramref name="length"/> bytes of <paramref name="s"/>. The array is sized from the index,
    /// but at most 16 times the compressed data behind it (a kernel compresses about 4:1), so that a length
    /// from a corrupt index costs no more than a generous ratio of what is really there; past that it grows.</summary>
    private static byte[] ReadExactly(Stream s, ulong length, long compressed)
    {
        var o = new byte[(int)Math.Min(length, (ulong)compressed * 16)];
        int n = 0;
        while ((ulong)n < length)
        {
            if (n == o.Length) Array.Resize(ref o, (int)Math.Min(length, (ulong)o.Length * 2));
            int r = s.Read(o, n, o.Length - n);
            if (r == 0) throw new InvalidDataException("xz: block shorter than its index says");
            n += r;
        }
        return o;
    }

    /// <summary>A variable-length integer that must end before <paramref name="limit"/>.</summary>
    private static ulong Varint(byte[] d, ref int p, int limit)
    {
        ulong v = 0;
        for (int shift = 0; shift < 63 && p < limit; shift += 7)
        {
            byte b = d[p++];
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new InvalidDataException("xz: bad number");
    }

    private static readonly uint[] CrcTable = MakeCrcTable();

    private static uint[] MakeCrcTable()
    {
        var t = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }
}
