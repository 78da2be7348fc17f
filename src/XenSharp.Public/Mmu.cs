using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/xen.h: the PV MMU interface (mmu_update, mmuext_op, update_va_mapping) and the
/// x86_64 virtual layout Xen reserves (arch-x86/xen-x86_64.h).</summary>
public static class Mmu
{
    /// <summary>mmu_update commands, in bits 1:0 of <see cref="MmuUpdate.Ptr"/>.</summary>
    public const uint MMU_NORMAL_PT_UPDATE = 0, MMU_MACHPHYS_UPDATE = 1, MMU_PT_UPDATE_PRESERVE_AD = 2,
        MMU_PT_UPDATE_NO_TRANSLATE = 3;

    /// <summary>Set in mmu_update's and mmuext_op's count by a continuation: the work done so far is in pdone.</summary>
    public const uint MMU_UPDATE_PREEMPTED = ~(~0U >> 1);

    public const uint MMUEXT_PIN_L1_TABLE = 0, MMUEXT_PIN_L2_TABLE = 1, MMUEXT_PIN_L3_TABLE = 2,
        MMUEXT_PIN_L4_TABLE = 3, MMUEXT_UNPIN_TABLE = 4, MMUEXT_NEW_BASEPTR = 5, MMUEXT_TLB_FLUSH_LOCAL = 6,
        MMUEXT_INVLPG_LOCAL = 7, MMUEXT_TLB_FLUSH_MULTI = 8, MMUEXT_INVLPG_MULTI = 9, MMUEXT_TLB_FLUSH_ALL = 10,
        MMUEXT_INVLPG_ALL = 11, MMUEXT_FLUSH_CACHE = 12, MMUEXT_SET_LDT = 13, MMUEXT_NEW_USER_BASEPTR = 15,
        MMUEXT_CLEAR_PAGE = 16, MMUEXT_COPY_PAGE = 17, MMUEXT_FLUSH_CACHE_GLOBAL = 18, MMUEXT_MARK_SUPER = 19,
        MMUEXT_UNMARK_SUPER = 20;

    /// <summary>update_va_mapping flags: the flush type in bits 1:0, UVMF_ALL or a vCPU bitmap pointer above.</summary>
    public const ulong UVMF_NONE = 0, UVMF_TLB_FLUSH = 1, UVMF_INVLPG = 2, UVMF_FLUSHTYPE_MASK = 3,
        UVMF_MULTI = 0, UVMF_LOCAL = 0, UVMF_ALL = 1 << 2;

    public const ulong HYPERVISOR_VIRT_START = 0xFFFF800000000000, HYPERVISOR_VIRT_END = 0xFFFF880000000000,
        MACH2PHYS_VIRT_START = 0xFFFF800000000000, MACH2PHYS_VIRT_END = 0xFFFF804000000000;

    /// <summary>arch-x86/xen-x86_32.h (PAE): what a 32-bit PV guest's virtual space leaves to Xen, from here to 4 GiB,
    /// and where its (4-byte) M2P starts.</summary>
    public const uint HYPERVISOR_VIRT_START_PAE = 0xF5800000, MACH2PHYS_VIRT_START_PAE = 0xF5800000;

    /// <summary>The LDT holds at most this many descriptors (MMUEXT_SET_LDT's nr_ents).</summary>
    public const uint LDT_MAX_ENTRIES = 8192;
}

/// <summary>struct mmu_update (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MmuUpdate
{
    public ulong Ptr;
    public ulong Val;
}

/// <summary>struct mmuext_op (24 bytes on x86_64): arg1 is an MFN or a linear address, arg2 nr_ents, a vCPU mask
/// handle or src_mfn.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MmuextOp
{
    public uint Cmd;
    public uint Pad;
    public ulong Arg1;
    public ulong Arg2;
}

/// <summary>struct mmuext_op of the compat ABI (12 bytes): a 32-bit PV guest's arg1 (MFN or linear address) and arg2
/// (nr_ents, vCPU mask handle or src_mfn) are 32-bit.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CompatMmuextOp
{
    public uint Cmd;
    public uint Arg1;
    public uint Arg2;
}
