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
    public const byte DirRead = 1 << 5;
}

