using System.Buffers.Binary;
using SharpCompress.Compressors.Filters;
using SharpCompress.Compressors.LZMA;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The .xz container as Linux's kernel payloads use it (one stream, blocks of LZMA2 behind an
/// optional x86 branch filter, CRC32 checks): the container is read here, each block's LZMA2 data
/// and the x86 filter are decoded by SharpCompress, and each block's check is verified.
/// </summary>
internal static class XzContainer
{
    private const ulong FilterX86 = 0x04, FilterLzma2 = 0x21;

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
        int index = (int)(footer - backward);
        if (index < 12 || d[index] != 0) throw new InvalidDataException("xz: bad index");
        int p = index + 1;
        ulong records = Varint(d, ref p);
        var blocks = new List<(ulong Unpadded, ulong Uncompressed)>();
        for (ulong i = 0; i < records; i++) blocks.Add((Varint(d, ref p), Varint(d, ref p)));

        // The index gives the output's size: one array, no growing stream and its copies (a kernel is tens of MiB of
        // large-object garbage per domain build otherwise). A single block, the usual case, is the output itself.
        ulong total = 0;
        foreach (var (_, uncompressed) in blocks)
        {
            if (uncompressed > (ulong)PayloadDecompressor.MaxOutput) throw new InvalidDataException("xz: block too large");
            total += uncompressed;
        }
        if (total > (ulong)PayloadDecompressor.MaxOutput) throw new InvalidDataException("xz: decompressed size exceeds 1 GiB");
        byte[]? output = blocks.Count == 1 ? null : new byte[total];
        int outPos = 0;
        int pos = 12;
        foreach (var (unpadded, uncompressed) in blocks)
        {
            int headerSize = (d[pos] + 1) * 4;
            byte flags = d[pos + 1];
            int q = pos + 2;
            if ((flags & 0x40) != 0) Varint(d, ref q);
            if ((flags & 0x80) != 0) Varint(d, ref q);
            bool x86 = false;
            byte? dictProps = null;
            for (int f = 0; f < (flags & 3) + 1; f++)
            {
                ulong id = Varint(d, ref q);
                int propsSize = (int)Varint(d, ref q);
                if (id == FilterLzma2 && propsSize == 1) dictProps = d[q];
                else if (id == FilterX86 && propsSize == 0) x86 = true;
                else throw new InvalidDataException($"xz: filter 0x{id:x} is not supported");
                q += propsSize;
            }
            if (dictProps is null) throw new InvalidDataException("xz: block without LZMA2");
            long compressed = (long)unpadded - headerSize - checkSize;
            int data = pos + headerSize;
            if (compressed <= 0 || data + compressed > index) throw new InvalidDataException("xz: block outside the stream");

            var block = new byte[uncompressed];
            using (var lz = LzmaStream.Create([dictProps.Value], new MemoryStream(d, data, (int)compressed), compressed, -1, null, true, false))
            {
                int got = 0;
                while (got < block.Length)
                {
                    int n = lz.Read(block, got, block.Length - got);
                    if (n == 0) throw new InvalidDataException("xz: block shorter than its index says");
                    got += n;
                }
            }
            if (x86)
            {
                uint state = 0;
                BranchExecFilter.X86Converter(block, 0, ref state); // each block restarts the filter at offset 0
            }
            int checkAt = data + (int)((compressed + 3) & ~3L);
            if (checkType == 1 && Crc32(block) != BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(checkAt)))
                throw new InvalidDataException("xz: block check (CRC32) does not match");
            if (output is null)
                output = block;
            else
                block.CopyTo(output, outPos);
            outPos += block.Length;
            pos = checkAt + checkSize;
        }
        return output ?? [];
    }

    private static ulong Varint(byte[] d, ref int p)
    {
        ulong v = 0;
        for (int shift = 0; shift < 63; shift += 7)
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
