using System.Runtime.InteropServices;

namespace XenSharp.Public.ArchX86;

/// <summary>arch-x86/xen.h and xen-x86_64.h: what a 64-bit PV guest's CPU state looks like to it.</summary>
public static class Pv
{
    /// <summary>The flat ring-3 selectors of Xen's reserved GDT entries, which a 64-bit PV kernel and its user
    /// space both run on.</summary>
    public const ushort FLAT_RING3_CS32 = 0xe023, FLAT_RING3_CS64 = 0xe033, FLAT_RING3_DS32 = 0xe02b,
        FLAT_RING3_DS64 = 0, FLAT_RING3_SS64 = 0xe02b;
    public const ushort FLAT_KERNEL_CS = FLAT_RING3_CS64, FLAT_KERNEL_SS = FLAT_RING3_SS64,
        FLAT_USER_CS = FLAT_RING3_CS64, FLAT_USER_SS = FLAT_RING3_SS64;

    /// <summary>arch-x86/xen-x86_32.h: the flat selectors of a 32-bit PV guest (the compat ABI), whose kernel runs in
    /// ring 1 and whose user space runs in ring 3 on Xen's compat GDT entries.</summary>
    public const ushort FLAT_RING1_CS = 0xe019, FLAT_RING1_DS = 0xe021, FLAT_RING1_SS = 0xe021,
        FLAT_RING3_CS_X86_32 = 0xe02b, FLAT_RING3_DS_X86_32 = 0xe033;

    /// <summary>The vector of a 32-bit PV guest's hypercall instruction (INT $0x82 in its hypercall page).</summary>
    public const int HYPERCALL_VECTOR_X86_32 = 0x82;

    /// <summary>start_info.magic of a 32-bit PAE PV guest.</summary>
    public const string START_INFO_MAGIC_X86_32P = "xen-3.0-x86_32p";

    public const int SEGBASE_FS = 0, SEGBASE_GS_USER = 1, SEGBASE_GS_KERNEL = 2, SEGBASE_GS_USER_SEL = 3;
    public const ulong VGCF_in_syscall = 1 << 8;

    /// <summary>trap_info.flags: bits 0-1 the DPL that may raise the vector with INT n, bit 2 masks events.</summary>
    public const byte TI_DPL_MASK = 3, TI_IF = 4;
}

/// <summary>struct trap_info (16 bytes on x86_64): one entry of a PV guest's virtual IDT.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct TrapInfo
{
    public byte Vector;
    public byte Flags;
    public ushort Cs;
    public uint Pad;
    public ulong Address;
}

/// <summary>struct iret_context: what HYPERVISOR_iret pops from the guest's stack.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct IretContext
{
    public ulong Rax, R11, Rcx, Flags, Rip, Cs, Rflags, Rsp, Ss;
}

/// <summary>struct trap_info of the compat ABI (8 bytes): a 32-bit PV guest's virtual IDT entry.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CompatTrapInfo
{
    public byte Vector;
    public byte Flags;
    public ushort Cs;
    public uint Address;
}
