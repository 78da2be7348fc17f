using System.Runtime.InteropServices;

namespace XenSharp.Public.ArchX86;

/// <summary>struct cpu_user_regs (x86_64): the general registers as Xen saves them.</summary>
[StructLayout(LayoutKind.Explicit, Size = 200)]
public struct CpuUserRegs
{
    [FieldOffset(0)] public ulong R15;
    [FieldOffset(8)] public ulong R14;
    [FieldOffset(16)] public ulong R13;
    [FieldOffset(24)] public ulong R12;
    [FieldOffset(32)] public ulong Rbp;
    [FieldOffset(40)] public ulong Rbx;
    [FieldOffset(48)] public ulong R11;
    [FieldOffset(56)] public ulong R10;
    [FieldOffset(64)] public ulong R9;
    [FieldOffset(72)] public ulong R8;
    [FieldOffset(80)] public ulong Rax;
    [FieldOffset(88)] public ulong Rcx;
    [FieldOffset(96)] public ulong Rdx;
    [FieldOffset(104)] public ulong Rsi;
    [FieldOffset(112)] public ulong Rdi;
    [FieldOffset(120)] public uint ErrorCode;
    [FieldOffset(124)] public uint EntryVector;
    [FieldOffset(128)] public ulong Rip;
    [FieldOffset(136)] public ushort Cs;
    [FieldOffset(140)] public byte SavedUpcallMask;
    [FieldOffset(144)] public ulong Rflags;
    [FieldOffset(152)] public ulong Rsp;
    [FieldOffset(160)] public ushort Ss;
    [FieldOffset(168)] public ushort Es;
    [FieldOffset(176)] public ushort Ds;
    [FieldOffset(184)] public ushort Fs;
    [FieldOffset(192)] public ushort Gs;
}

/// <summary>struct vcpu_guest_context (x86_64): what XEN_DOMCTL_getvcpucontext returns and what a
/// dump-core file's .xen_prstatus section holds, one per vCPU.</summary>
[StructLayout(LayoutKind.Explicit, Size = 5168)]
public unsafe struct VcpuGuestContext
{
    public const ulong VGCF_i387_valid = 1 << 0, VGCF_in_kernel = 1 << 2, VGCF_online = 1 << 5,
        VGCF_failsafe_disables_events = 1 << 3, VGCF_syscall_disables_events = 1 << 4;

    /// <summary>FXSAVE image.</summary>
    [FieldOffset(0)] public fixed byte FpuCtxt[512];
    [FieldOffset(512)] public ulong Flags;
    [FieldOffset(520)] public CpuUserRegs UserRegs;
    /// <summary>struct trap_info[256], 16 bytes each (PV only).</summary>
    [FieldOffset(720)] public fixed byte TrapCtxt[4096];
    [FieldOffset(4816)] public ulong LdtBase;
    [FieldOffset(4824)] public ulong LdtEnts;
    [FieldOffset(4832)] public fixed ulong GdtFrames[16];
    [FieldOffset(4960)] public ulong GdtEnts;
    [FieldOffset(4968)] public ulong KernelSs;
    [FieldOffset(4976)] public ulong KernelSp;
    [FieldOffset(4984)] public fixed ulong Ctrlreg[8];
    [FieldOffset(5048)] public fixed ulong Debugreg[8];
    [FieldOffset(5112)] public ulong EventCallbackEip;
    [FieldOffset(5120)] public ulong FailsafeCallbackEip;
    [FieldOffset(5128)] public ulong SyscallCallbackEip;
    [FieldOffset(5136)] public ulong VmAssist;
    [FieldOffset(5144)] public ulong FsBase;
    [FieldOffset(5152)] public ulong GsBaseKernel;
    [FieldOffset(5160)] public ulong GsBaseUser;
}

/// <summary>struct vcpu_guest_context of the compat ABI (x86_32, 2800 bytes), as a 32-bit PV guest passes it to
/// VCPUOP_initialise: 32-bit registers, 8-byte trap_info entries, 32-bit frames and the callbacks as selector:EIP.</summary>
[StructLayout(LayoutKind.Explicit, Size = 2800)]
public unsafe struct CompatVcpuGuestContext
{
    [FieldOffset(0)] public fixed byte FpuCtxt[512];
    [FieldOffset(512)] public uint Flags;
    [FieldOffset(516)] public uint Ebx;
    [FieldOffset(520)] public uint Ecx;
    [FieldOffset(524)] public uint Edx;
    [FieldOffset(528)] public uint Esi;
    [FieldOffset(532)] public uint Edi;
    [FieldOffset(536)] public uint Ebp;
    [FieldOffset(540)] public uint Eax;
    [FieldOffset(548)] public uint Eip;
    [FieldOffset(552)] public ushort Cs;
    [FieldOffset(556)] public uint Eflags;
    [FieldOffset(560)] public uint Esp;
    [FieldOffset(564)] public ushort Ss;
    [FieldOffset(568)] public ushort Es;
    [FieldOffset(572)] public ushort Ds;
    [FieldOffset(576)] public ushort Fs;
    [FieldOffset(580)] public ushort Gs;
    /// <summary>struct trap_info[256] of the compat ABI, 8 bytes each.</summary>
    [FieldOffset(584)] public fixed byte TrapCtxt[2048];
    [FieldOffset(2632)] public uint LdtBase;
    [FieldOffset(2636)] public uint LdtEnts;
    [FieldOffset(2640)] public fixed uint GdtFrames[16];
    [FieldOffset(2704)] public uint GdtEnts;
    [FieldOffset(2708)] public uint KernelSs;
    [FieldOffset(2712)] public uint KernelSp;
    /// <summary>CR3 in Xen's extended format for PAE guests (xen_pfn_to_cr3: the MFN rotated left by 12).</summary>
    [FieldOffset(2716)] public fixed uint Ctrlreg[8];
    [FieldOffset(2748)] public fixed uint Debugreg[8];
    [FieldOffset(2780)] public uint EventCallbackCs;
    [FieldOffset(2784)] public uint EventCallbackEip;
    [FieldOffset(2788)] public uint FailsafeCallbackCs;
    [FieldOffset(2792)] public uint FailsafeCallbackEip;
    [FieldOffset(2796)] public uint VmAssist;
}
