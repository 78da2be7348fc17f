using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>Memory sharing (xen/include/public/memory.h's XENMEM_sharing_op and domctl.h's XEN_DOMCTL_mem_sharing_op).</summary>
public static class MemSharing
{
    public const int XENMEM_get_sharing_freed_pages = 18, XENMEM_get_sharing_shared_pages = 19, XENMEM_sharing_op = 22;

    public const byte XENMEM_sharing_op_nominate_gfn = 0, XENMEM_sharing_op_nominate_gref = 1, XENMEM_sharing_op_share = 2,
        XENMEM_sharing_op_debug_gfn = 3, XENMEM_sharing_op_debug_mfn = 4, XENMEM_sharing_op_debug_gref = 5,
        XENMEM_sharing_op_add_physmap = 6, XENMEM_sharing_op_audit = 7, XENMEM_sharing_op_range_share = 8,
        XENMEM_sharing_op_fork = 9, XENMEM_sharing_op_fork_reset = 10;

    /// <summary>What share and add_physmap answer for a handle that does not match (xen-memshare names them).</summary>
    public const int XENMEM_SHARING_OP_S_HANDLE_INVALID = -10, XENMEM_SHARING_OP_C_HANDLE_INVALID = -9;

    /// <summary>A gfn field that holds a grant reference instead.</summary>
    public const ulong XENMEM_SHARING_OP_FIELD_IS_GREF_FLAG = 1UL << 62;

    public const uint XEN_DOMCTL_mem_sharing_op = 57;
    public const byte XEN_DOMCTL_MEM_SHARING_CONTROL = 0;
}

/// <summary>struct xen_mem_sharing_op: op, domain, then the union at offset 8 read through the members below.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
public struct XenMemSharingOp
{
    [FieldOffset(0)] public byte Op;
    [FieldOffset(2)] public ushort Domain;

    /// <summary>nominate: gfn (or grant_ref) and the handle it answers; debug: gfn, mfn or gref.</summary>
    [FieldOffset(8)] public ulong Gfn;
    [FieldOffset(16)] public ulong Handle;

    /// <summary>share and add_physmap.</summary>
    [FieldOffset(8)] public ulong SourceGfn;
    [FieldOffset(16)] public ulong SourceHandle;
    [FieldOffset(24)] public ulong ClientGfn;
    [FieldOffset(32)] public ulong ClientHandle;
    [FieldOffset(40)] public ushort ClientDomain;

    /// <summary>range_share: first_gfn, last_gfn, opaque (the continuation), client_domain, _pad[3].</summary>
    [FieldOffset(8)] public ulong FirstGfn;
    [FieldOffset(16)] public ulong LastGfn;
    [FieldOffset(24)] public ulong Opaque;
    [FieldOffset(32)] public ushort RangeClientDomain;
    [FieldOffset(34)] public ushort RangePad0;
    [FieldOffset(36)] public ushort RangePad1;
    [FieldOffset(38)] public ushort RangePad2;
}
