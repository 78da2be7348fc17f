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
