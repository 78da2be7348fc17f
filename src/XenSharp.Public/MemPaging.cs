using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>Memory paging (xen/include/public/memory.h's XENMEM_paging_op and vm_event.h's vm_event_paging).</summary>
public static class MemPaging
{
    public const int XENMEM_paging_op = 20;
    public const byte XENMEM_paging_op_nominate = 0, XENMEM_paging_op_evict = 1, XENMEM_paging_op_prep = 2;

    /// <summary>vm_event_paging.flags.</summary>
    public const uint MEM_PAGING_DROP_PAGE = 1 << 0, MEM_PAGING_EVICT_FAIL = 1 << 1;
}

/// <summary>struct xen_mem_paging_op.</summary>
[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct XenMemPagingOp
{
    public byte Op;
    public byte Pad;
    public ushort Domain;
    public uint Pad2;
    public ulong Buffer;
    public ulong Gfn;
}

/// <summary>struct vm_event_paging.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VmEventPaging
{
    public ulong Gfn;
    public uint P2mt;
    public uint Flags;
}
