using System.Buffers.Binary;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// A Linux bzImage (Documentation/x86/boot.rst): the real-mode setup header at 0x1F1 and, from
/// boot protocol 2.08 on, the offset and length of the compressed vmlinux payload.
/// </summary>
public sealed class BzImage
{
    public const int SetupHeaderOffset = 0x1F1;
    private const uint HdrSMagic = 0x53726448; // "HdrS"

    public ushort Protocol { get; }
    public int SetupSectors { get; }
    public int PayloadOffset { get; }
    public int PayloadLength { get; }

    private BzImage(ushort protocol, int setupSects, int payloadOffset, int payloadLength)
    {
        Protocol = protocol; SetupSectors = setupSects; PayloadOffset = payloadOffset; PayloadLength = payloadLength;
    }

    public static bool IsBzImage(ReadOnlySpan<byte> d) =>
        d.Length >= 0x250 && BinaryPrimitives.ReadUInt32LittleEndian(d[0x202..]) == HdrSMagic;

    public static BzImage Parse(ReadOnlySpan<byte> d, string what)
    {
        if (!IsBzImage(d)) throw new DomainBuildException($"{what}: not a bzImage (no HdrS setup header)");
        ushort protocol = BinaryPrimitives.ReadUInt16LittleEndian(d[0x206..]);
        if (protocol < 0x208)
            throw new DomainBuildException($"{what}: boot protocol {protocol >> 8}.{protocol & 0xff:D2} has no payload fields (2.08 or later needed)");
        int setupSects = d[0x1F1] == 0 ? 4 : d[0x1F1];
        uint payloadOffset = BinaryPrimitives.ReadUInt32LittleEndian(d[0x248..]);
        uint payloadLength = BinaryPrimitives.ReadUInt32LittleEndian(d[0x24C..]);
        long start = (setupSects + 1L) * 512 + payloadOffset;
        if (payloadLength == 0 || start + payloadLength > d.Length)
            throw new DomainBuildException($"{what}: bzImage payload ({payloadLength} bytes at {start}) lies outside the file");
        return new BzImage(protocol, setupSects, (int)payloadOffset, (int)payloadLength);
    }

    /// <summary>Where the payload starts in the file: after the boot sector and setup sectors.</summary>
    public int PayloadFileOffset => (SetupSectors + 1) * 512 + PayloadOffset;

    public ReadOnlySpan<byte> Payload(ReadOnlySpan<byte> file) => file.Slice(PayloadFileOffset, PayloadLength);
}
