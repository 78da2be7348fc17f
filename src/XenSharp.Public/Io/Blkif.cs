using System.Runtime.InteropServices;

namespace XenSharp.Public.Io;

/// <summary>
/// xen/include/public/io/blkif.h: the PV block device protocol (blkfront ↔ blkback), and the frontend's
/// <c>protocol</c> key of xen/include/public/io/protocols.h that picks the request layout. A 64-bit frontend
/// uses the native structures; a 32-bit one (x86_32-abi) the <c>*32</c> ones, where uint64_t is 4-aligned.
/// </summary>
public static class Blkif
{
    public const byte BLKIF_OP_READ = 0, BLKIF_OP_WRITE = 1, BLKIF_OP_WRITE_BARRIER = 2, BLKIF_OP_FLUSH_DISKCACHE = 3,
        BLKIF_OP_RESERVED_1 = 4, BLKIF_OP_DISCARD = 5, BLKIF_OP_INDIRECT = 6;

    public const int BLKIF_MAX_SEGMENTS_PER_REQUEST = 11, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8;

    public const short BLKIF_RSP_EOPNOTSUPP = -2, BLKIF_RSP_ERROR = -1, BLKIF_RSP_OKAY = 0;

    /// <summary>blkif_request_discard.flag.</summary>
    public const byte BLKIF_DISCARD_SECURE = 1 << 0;

    /// <summary>The backend's <c>info</c> key.</summary>
    public const uint VDISK_CDROM = 0x1, VDISK_REMOVABLE = 0x2, VDISK_READONLY = 0x4;

    /// <summary>Segments are described in 512-byte sectors of a 4096-byte page (first_sect/last_sect 0..7).</summary>
    public const int SectorShift = 9, SectorsPerPage = 8;

    /// <summary>protocols.h: the frontend's <c>protocol</c> values.</summary>
    public const string XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi", XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi", XEN_IO_PROTO_ABI_ARM = "arm-abi";
}

/// <summary>struct blkif_request_segment: a sector range [first_sect, last_sect] of a granted page.</summary>
[StructLayout(LayoutKind.Explicit, Size = 8)]
public struct BlkifRequestSegment
{
    [FieldOffset(0)] public uint Gref;
    [FieldOffset(4)] public byte FirstSect;
    [FieldOffset(5)] public byte LastSect;
}

/// <summary>The eleven segments of a request (seg[BLKIF_MAX_SEGMENTS_PER_REQUEST]).</summary>
[System.Runtime.CompilerServices.InlineArray(Blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)]
public struct BlkifSegments
{
    private BlkifRequestSegment _first;
}

/// <summary>struct blkif_request, native (x86_64) layout.</summary>
[StructLayout(LayoutKind.Explicit, Size = 112)]
public struct BlkifRequest
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte NrSegments;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public BlkifSegments Seg;
}

/// <summary>struct blkif_request_discard, native layout (shares a ring slot with <see cref="BlkifRequest"/>).</summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
public struct BlkifRequestDiscard
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte Flag;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public ulong NrSectors;
}

/// <summary>The indirect pages of an indirect request.</summary>
[System.Runtime.CompilerServices.InlineArray(Blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)]
public struct BlkifIndirectGrefs
{
    private uint _first;
}

/// <summary>struct blkif_request_indirect, native layout.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
public struct BlkifRequestIndirect
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte IndirectOp;
    [FieldOffset(2)] public ushort NrSegments;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public ushort Handle;
    [FieldOffset(28)] public BlkifIndirectGrefs IndirectGrefs;
}

/// <summary>struct blkif_response, native layout.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
public struct BlkifResponse
{
    [FieldOffset(0)] public ulong Id;
    [FieldOffset(8)] public byte Operation;
    [FieldOffset(10)] public short Status;
}

/// <summary>struct blkif_request as an x86_32 frontend lays it out (protocol "x86_32-abi").</summary>
[StructLayout(LayoutKind.Explicit, Size = 108)]
public struct BlkifRequest32
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte NrSegments;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public BlkifSegments Seg;
}

/// <summary>struct blkif_request_discard, x86_32 layout.</summary>
[StructLayout(LayoutKind.Explicit, Size = 28)]
public struct BlkifRequestDiscard32
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte Flag;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public ulong NrSectors;
}

/// <summary>struct blkif_request_indirect, x86_32 layout (its trailing pad keeps it 64 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
public struct BlkifRequestIndirect32
{
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte IndirectOp;
    [FieldOffset(2)] public ushort NrSegments;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public ushort Handle;
    [FieldOffset(24)] public BlkifIndirectGrefs IndirectGrefs;
}

/// <summary>struct blkif_response, x86_32 layout.</summary>
[StructLayout(LayoutKind.Explicit, Size = 12)]
public struct BlkifResponse32
{
    [FieldOffset(0)] public ulong Id;
    [FieldOffset(8)] public byte Operation;
    [FieldOffset(10)] public short Status;
}
