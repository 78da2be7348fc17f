using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/ioreq.h: the kinds of access an IOREQ server is asked to emulate.</summary>
public static class Ioreq
{
    public const uint IOREQ_READ = 1, IOREQ_WRITE = 0;
    /// <summary>Port I/O, and MMIO (a "copy" to or from guest-physical space).</summary>
    public const uint IOREQ_TYPE_PIO = 0, IOREQ_TYPE_COPY = 1, IOREQ_TYPE_PCI_CONFIG = 2;
}

/// <summary>struct ioreq (public/hvm/ioreq.h): one vCPU's slot of a server's synchronous ioreq page. Byte 30 holds
/// state in bits 0-3, data_is_ptr in bit 4, dir in bit 5, df in bit 6.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct IoreqSlot
{
    public ulong Addr, Data;
    public uint Count, Size, VpEport;
    public ushort Pad0;
    public byte StateDir;
    public byte Type;

    public const byte STATE_IOREQ_NONE = 0, STATE_IOREQ_READY = 1, STATE_IOREQ_INPROCESS = 2, STATE_IORESP_READY = 3;
    public const byte DataIsPtr = 1 << 4, DirRead = 1 << 5, Df = 1 << 6;
}

/// <summary>struct buffered_iopage (public/hvm/ioreq.h): the read and write pointers, then IOREQ_BUFFER_SLOT_NUM
/// 8-byte buf_ioreq slots. A slot's first word packs type (bits 0-7), dir (bit 9), size as log2 (bits 10-11) and a
/// 20-bit address (bits 12-31); the second word is the data (an 8-byte write takes two slots, the second holding the
/// high half).</summary>
[StructLayout(LayoutKind.Explicit, Size = 8 + SlotCount * 8)]
public unsafe struct BufferedIopage
{
    public const int SlotCount = 511;
    [FieldOffset(0)] public uint ReadPointer;
    [FieldOffset(4)] public uint WritePointer;
    /// <summary>Both pointers as one word (Xen's bufioreq_pointers.full), for the atomic update.</summary>
    [FieldOffset(0)] public ulong Pointers;

    /// <summary>The slot a free-running pointer names.</summary>
    public static ref ulong Slot(BufferedIopage* page, uint pointer) => ref ((ulong*)((byte*)page + 8))[pointer % SlotCount];
}

