using System.Buffers.Binary;
using SharpCompress.Compressors.LZMA;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The .xz container as Linux's bzImage payloads use it (xz --check=crc32 --x86 --lzma2): blocks of
/// LZMA2, optionally behind the x86 branch converter (BCJ), located through the stream's index so that
/// each block's CRC32 can be checked. SharpCompress's XZStream rejects these payloads ("Block check
/// corrupt") although xz accepts them, so only its raw LZMA2 decoder is used here.
/// </summary>
internal static class XzDecoder
{
    private const ulong FilterX86 = 0x04, FilterLzma2 = 0x21;

    public static byte[] Decompress(byte[] data, long maxOutput)
    {
        if (data.Length < 24 || data[6] != 0 || (data[7] & 0xF0) != 0)
            throw new InvalidDataException("bad xz stream header");
        int check = data[7] & 0x0F;
        int checkSize = check switch { 0 => 0, 1 => 4, 4 => 8, 0xA => 32, _ => throw new InvalidDataException($"xz check type {check} unsupported") };

        // Stream padding (zero bytes in multiples of four) may follow the footer.
        int end = data.Length;
        while (end >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(end - 4)) == 0) end -= 4;
        if (end < 24 || data[end - 2] != (byte)'Y' || data[end - 1] != (byte)'Z')
            throw new InvalidDataException("bad xz stream footer");
        long indexSize = ((long)BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(end - 8)) + 1) * 4;
        int index = checked((int)(end - 12 - indexSize));
        if (index < 12 || data[index] != 0) throw new InvalidDataException("bad xz index");
        int p = index + 1;
        ulong records = ReadVarint(data, ref p);

        var output = new MemoryStream();
        int block = 12;
        for (ulong r = 0; r < records; r++)
        {
            ulong unpadded = ReadVarint(data, ref p);
            ulong uncompressed = ReadVarint(data, ref p);
            if ((long)uncompressed > maxOutput - output.Length) throw new InvalidDataException("decompressed size exceeds the limit");
            byte[] plain = DecodeBlock(data, block, (int)unpadded - checkSize, (int)uncompressed);
            // Block padding aligns the check to four bytes; the index's "unpadded size" leaves it out.
            int checkAt = block + (((int)unpadded - checkSize + 3) & ~3);
            if (check == 1 && Crc32(plain) != BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(checkAt)))
                throw new InvalidDataException("xz block CRC32 mismatch");
            output.Write(plain);
            block += (int)((unpadded + 3) & ~3UL);
        }
        return output.ToArray();
    }

    private static byte[] DecodeBlock(byte[] data, int at, int length, int uncompressed)
    {
        int headerSize = (data[at] + 1) * 4;
        byte flags = data[at + 1];
        int p = at + 2;
        if ((flags & 0x40) != 0) ReadVarint(data, ref p);
        if ((flags & 0x80) != 0) ReadVarint(data, ref p);
        int filters = (flags & 3) + 1;
        bool x86 = false;
        byte dictProp = 0;
        for (int f = 0; f < filters; f++)
        {
            ulong id = ReadVarint(data, ref p);
            int propSize = (int)ReadVarint(data, ref p);
            if (id == FilterX86 && f < filters - 1)
            {
                if (propSize != 0 && BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(p)) != 0)
                    throw new InvalidDataException("xz x86 filter with a start offset unsupported");
                x86 = true;
            }
            else if (id == FilterLzma2 && f == filters - 1 && propSize == 1) dictProp = data[p];
            else throw new InvalidDataException($"xz filter 0x{id:x} unsupported");
            p += propSize;
        }
        int start = at + headerSize;
        var lzma2 = LzmaStream.Create([dictProp], new MemoryStream(data, start, length - headerSize), length - headerSize,
            uncompressed, null, true, false);
        var plain = new byte[uncompressed];
        int got = 0, n;
        while (got < plain.Length && (n = lzma2.Read(plain, got, plain.Length - got)) > 0) got += n;
        if (got != plain.Length) throw new InvalidDataException("xz block shorter than its index says");
        if (x86) X86Decode(plain);
        return plain;
    }

    /// <summary>Undoes the x86 branch converter: the 32-bit operands of E8 (call) and E9 (jmp) were made
    /// absolute (operand + offset of the next instruction) where their top byte is 00 or FF. A bit mask
    /// remembers E8/E9 bytes seen in the previous three positions, whose operand would overlap this one.</summary>
    internal static void X86Decode(Span<byte> buf)
    {
        ReadOnlySpan<bool> allowed = [true, true, true, false, true, false, false, false];
        ReadOnlySpan<int> bitNumber = [0, 1, 2, 2, 3, 3, 3, 3];
        uint mask = 0;
        int lastOpcode = -4;
        int i = 0;
        while (i + 4 < buf.Length)
        {
            if ((buf[i] & 0xFE) != 0xE8) { i++; continue; }
            int distance = i - lastOpcode;
            mask = distance > 3 ? 0 : (mask << (distance - 1)) & 7;
            lastOpcode = i;
            if (mask != 0 && (!allowed[(int)mask] || IsTopByte(buf[i + 4 - bitNumber[(int)mask]])))
            {
                mask = ((mask << 1) & 7) | 1;
                i++;
                continue;
            }
            if (!IsTopByte(buf[i + 4]))
            {
                mask = ((mask << 1) & 7) | 1;
                i++;
                continue;
            }
            uint src = BinaryPrimitives.ReadUInt32LittleEndian(buf[(i + 1)..]);
            uint dest;
            while (true)
            {
                dest = src - (uint)(i + 5);
                if (mask == 0) break;
                int shift = bitNumber[(int)mask] * 8;
                if (!IsTopByte((byte)(dest >> (24 - shift)))) break;
                src = dest ^ ((1u << (32 - shift)) - 1);
            }
            dest &= 0x01FFFFFF;
            if ((dest & 0x01000000) != 0) dest |= 0xFF000000;
            BinaryPrimitives.WriteUInt32LittleEndian(buf[(i + 1)..], dest);
            i += 5;
            mask = 0;
        }
    }

    private static bool IsTopByte(byte b) => b == 0 || b == 0xFF;

    private static ulong ReadVarint(byte[] data, ref int p)
    {
        ulong v = 0;
        for (int shift = 0; shift < 63; shift += 7)
        {
            byte b = data[p++];
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new InvalidDataException("bad xz varint");
    }

    private static readonly uint[] CrcTable = BuildCrcTable();

    private static uint[] BuildCrcTable()
    {
        var t = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }

    internal static uint Crc32(ReadOnlySpan<byte> d)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in d) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }
}
