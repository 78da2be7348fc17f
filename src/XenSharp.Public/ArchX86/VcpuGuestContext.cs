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
    public const ulong VGCF_i387_valid = 1 << 0, VGCF_in_kernel = 1 << 2, VGCF_online = 1 << 5;

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
