using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenSharp.Public.Migration;

namespace XenSharp.Toolstack.Save;

/// <summary>A save file that cannot be restored: what is wrong with it, for xl to print.</summary>
public sealed class SaveFileException(string message) : Exception(message);

/// <summary>Writes migration stream records: a header, the body, zeroes up to the next 8 bytes (both the libxc and
/// the libxl stream frame their records so).</summary>
internal sealed class MigrationRecordWriter(Stream output)
{
    private static readonly byte[] Zeroes = new byte[8];

    public long Position { get; private set; }

    public void Raw(ReadOnlySpan<byte> bytes)
    {
        output.Write(bytes);
        Position += bytes.Length;
    }

    public void Record(uint type, ReadOnlySpan<byte> body) => Record(type, body, []);

    /// <summary>A record whose body is two parts (a fixed header and data).</summary>
    public void Record(uint type, ReadOnlySpan<byte> head, ReadOnlySpan<byte> data)
    {
        int length = head.Length + data.Length;
        var h = new MigrationRecordHeader { Type = type, Length = (uint)length };
        Raw(MemoryMarshal.AsBytes(new ReadOnlySpan<MigrationRecordHeader>(in h)));
        Raw(head);
        Raw(data);
        Raw(Zeroes.AsSpan(0, (8 - length % 8) % 8));
    }

    public void Struct<T>(T value) where T : unmanaged => Raw(MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    public void UInt32BigEndian(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); Raw(b); }
    public void UInt64BigEndian(ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); Raw(b); }
    public void UInt16BigEndian(ushort v) { Span<byte> b = stackalloc byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); Raw(b); }
}

/// <summary>Reads records back, checking their framing; every fault is a <see cref="SaveFileException"/> that says
/// where in the file it is.</summary>
internal sealed class MigrationRecordReader(Stream input, string file)
{
    /// <summary>No record of a PVH guest's stream comes near this (a PAGE_DATA record of 1024 pages is 4 MiB and a bit).</summary>
    public const int MaxRecordLength = 64 << 20;

    public long Position { get; private set; }

    public void Exactly(Span<byte> buffer, string what)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = input.Read(buffer[done..]);
            if (n == 0)
                throw new SaveFileException($"{file}: truncated: the file ends at byte {Position + done} inside {what}");
            done += n;
        }
        Position += buffer.Length;
    }

    public T Struct<T>(string what) where T : unmanaged
    {
        T value = default;
        Exactly(MemoryMarshal.AsBytes(new Span<T>(ref value)), what);
        return value;
    }

    public uint UInt32BigEndian(string what) { Span<byte> b = stackalloc byte[4]; Exactly(b, what); return BinaryPrimitives.ReadUInt32BigEndian(b); }
    public ulong UInt64BigEndian(string what) { Span<byte> b = stackalloc byte[8]; Exactly(b, what); return BinaryPrimitives.ReadUInt64BigEndian(b); }
    public ushort UInt16BigEndian(string what) { Span<byte> b = stackalloc byte[2]; Exactly(b, what); return BinaryPrimitives.ReadUInt16BigEndian(b); }

    private byte[] _shared = [];

    /// <summary>The next record: its type and its body (padding read and checked).</summary>
    public (uint Type, byte[] Body) Record(string stream)
    {
        var (type, body) = Record(stream, shared: false);
        return (type, body.Array!);
    }

    /// <summary>The next record, its body in a buffer the reader keeps for the next one: a stream's PAGE_DATA records
    /// are 4 MiB each, and a new array for each (hundreds of large-object allocations and the collections they bring)
    /// is time a receiver lagging behind the sender does not have.</summary>
    public (uint Type, ArraySegment<byte> Body) SharedRecord(string stream) => Record(stream, shared: true);

    private (uint Type, ArraySegment<byte> Body) Record(string stream, bool shared)
    {
        long at = Position;
        var h = Struct<MigrationRecordHeader>($"a {stream} record header");
        if (h.Length > MaxRecordLength)
            throw new SaveFileException($"{file}: corrupt: the {stream} record at byte {at} (type 0x{h.Type:x}) claims {h.Length} bytes");
        byte[] buffer;
        if (!shared)
            buffer = new byte[h.Length];
        else
        {
            if (_shared.Length < h.Length) _shared = GC.AllocateUninitializedArray<byte>((int)Math.Max(h.Length, 4u << 20));
            buffer = _shared;
        }
        var body = new ArraySegment<byte>(buffer, 0, (int)h.Length);
        Exactly(body, $"the {stream} record at byte {at} (type 0x{h.Type:x}, {h.Length} bytes)");
        Span<byte> pad = stackalloc byte[8];
        int padding = (int)((8 - h.Length % 8) % 8);
        Exactly(pad[..padding], $"the padding of the {stream} record at byte {at}");
        foreach (byte b in pad[..padding])
            if (b != 0)
                throw new SaveFileException($"{file}: corrupt: the {stream} record at byte {at} has non-zero padding");
        return (h.Type, body);
    }

    public SaveFileException Corrupt(string what) => new($"{file}: corrupt: {what}");
}
