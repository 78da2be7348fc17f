using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/hvm_vcpu.h: the VCPUOP_initialise argument for HVM/PVH vCPUs.</summary>
public static class HvmVcpu
{
    public const uint VCPU_HVM_MODE_32B = 0, VCPU_HVM_MODE_64B = 1;
}

/// <summary>struct vcpu_hvm_x86_32 (120 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct VcpuHvmX86_32
{
    public uint Eax, Ecx, Edx, Ebx, Esp, Ebp, Esi, Edi, Eip, Eflags, Cr0, Cr3, Cr4, Pad1;
    public ulong Efer;
    public uint CsBase, DsBase, SsBase, EsBase, TrBase, CsLimit, DsLimit, SsLimit, EsLimit, TrLimit;
    public ushort CsAr, DsAr, SsAr, EsAr, TrAr;
    public fixed ushort Pad2[3];
}

/// <summary>struct vcpu_hvm_x86_64 (112 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VcpuHvmX86_64
{
    public ulong Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, Rip, Rflags, Cr0, Cr3, Cr4, Efer;
}

/// <summary>struct vcpu_hvm_context (128 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
public struct VcpuHvmContext
{
    [FieldOffset(0)] public uint Mode;
    [FieldOffset(4)] public uint Pad;
    [FieldOffset(8)] public VcpuHvmX86_32 X86_32;
    [FieldOffset(8)] public VcpuHvmX86_64 X86_64;
}
