using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace XenSharp.Public.ArchX86;

/// <summary>xen/include/public/arch-x86/xen-mca.h: the machine-check hypercall (__HYPERVISOR_mca) through which the
/// control domain injects machine checks and reads their telemetry.</summary>
public static class XenMca
{
    public const int __HYPERVISOR_mca = Xen.__HYPERVISOR_arch_0;
    public const uint XEN_MCA_INTERFACE_VERSION = 0x01ecc003;

    public const uint XEN_MC_fetch = 1, XEN_MC_notifydomain = 2, XEN_MC_physcpuinfo = 3, XEN_MC_msrinject = 4,
        XEN_MC_mceinject = 5, XEN_MC_inject_v2 = 6;

    public const int MC_MSRINJ_MAXMSRS = 8;
    public const uint MC_MSRINJ_F_INTERPOSE = 0x1, MC_MSRINJ_F_GPADDR = 0x2;

    public const uint XEN_MC_INJECT_TYPE_MASK = 0x7, XEN_MC_INJECT_TYPE_MCE = 0x0, XEN_MC_INJECT_TYPE_CMCI = 0x1,
        XEN_MC_INJECT_TYPE_LMCE = 0x2, XEN_MC_INJECT_CPU_BROADCAST = 0x8;

    /// <summary>The architectural machine-check MSRs (Intel SDM vol. 3 ch. 15): the global ones and bank i's four
    /// at 0x400 + 4i (CTL, STATUS, ADDR, MISC), CTL2 at 0x280 + i.</summary>
    public const uint MSR_IA32_MCG_CAP = 0x179, MSR_IA32_MCG_STATUS = 0x17A, MSR_IA32_MCG_CTL = 0x17B,
        MSR_IA32_MCG_EXT_CTL = 0x4D0, MSR_IA32_MC0_CTL = 0x400, MSR_IA32_MC0_STATUS = 0x401, MSR_IA32_MC0_ADDR = 0x402,
        MSR_IA32_MC0_MISC = 0x403, MSR_IA32_MC0_CTL2 = 0x280;

    public const ulong MCG_STATUS_RIPV = 1UL << 0, MCG_STATUS_EIPV = 1UL << 1, MCG_STATUS_MCIP = 1UL << 2,
        MCG_STATUS_LMCE = 1UL << 3;
    public const ulong MCG_CAP_COUNT = 0xFF, MCG_CTL_P = 1UL << 8, MCG_CMCI_P = 1UL << 10, MCG_TES_P = 1UL << 11,
        MCG_SER_P = 1UL << 24, MCG_LMCE_P = 1UL << 27;

    public const ulong MCi_STATUS_VAL = 1UL << 63, MCi_STATUS_OVER = 1UL << 62, MCi_STATUS_UC = 1UL << 61,
        MCi_STATUS_EN = 1UL << 60, MCi_STATUS_MISCV = 1UL << 59, MCi_STATUS_ADDRV = 1UL << 58,
        MCi_STATUS_PCC = 1UL << 57, MCi_STATUS_S = 1UL << 56, MCi_STATUS_AR = 1UL << 55;
    /// <summary>The model-specific error code, bits 16-31 of MCi_STATUS.</summary>
    public const ulong MCi_STATUS_MSCOD = 0xFFFFUL << 16;
}

/// <summary>struct mcinfo_msr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct McinfoMsr
{
    public ulong Reg;
    public ulong Value;
}

/// <summary>struct xen_mc_msrinject: values for a pCPU's machine-check MSRs, interposed for its handler to read.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenMcMsrinject
{
    public uint McinjCpunr;
    public uint McinjFlags;
    public uint McinjCount;
    public ushort McinjDomid;
    public ushort Pad0;
    public fixed ulong McinjMsr[2 * XenMca.MC_MSRINJ_MAXMSRS];

    public McinfoMsr Msr(int i) => new() { Reg = McinjMsr[2 * i], Value = McinjMsr[2 * i + 1] };
}

/// <summary>struct xen_mc_mceinject.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMcMceinject
{
    public uint MceinjCpunr;
}

/// <summary>struct xen_mc_physcpuinfo: the number of pCPUs, and their details when <c>Info</c> is not null.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMcPhyscpuinfo
{
    public uint Ncpus;
    public uint Pad0;
    public ulong Info;
}

/// <summary>struct xen_mc_inject_v2: the kind of machine check and the pCPUs it is raised on.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMcInjectV2
{
    public uint Flags;
    public uint Pad;
    public XenctlBitmap Cpumap;
}

/// <summary>struct xen_mc.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenMc
{
    public uint Cmd;
    public uint InterfaceVersion;
    public fixed byte U[144];

    /// <summary>The union as sub-operation <typeparamref name="T"/>.</summary>
    [UnscopedRef]
    public ref T As<T>() where T : unmanaged => ref Unsafe.As<byte, T>(ref U[0]);
}
