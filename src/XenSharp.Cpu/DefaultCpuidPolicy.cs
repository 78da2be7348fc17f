using System.Text;

namespace XenSharp.Cpu;

/// <summary>
/// CPUID as the x86 engine implements it: every feature bit set here is executed by the engine,
/// and nothing it cannot execute is advertised. The hypervisor layers its own leaves (the Xen
/// leaves at 0x40000000, topology) on top by wrapping this policy.
/// </summary>
public class DefaultCpuidPolicy : ICpuidPolicy
{
    /// <summary>Initial APIC ID reported in leaf 1 EBX[31:24] and leaf 0xB.</summary>
    public uint ApicId { get; }

    public DefaultCpuidPolicy(uint apicId = 0) => ApicId = apicId;

    public const string Vendor = "GenuineIntel";
    public const string Brand = "XenSharp x86 engine";

    // Leaf 1 EDX: FPU, PSE, TSC, MSR, PAE, CX8, APIC, SEP, MTRR, PGE, CMOV, PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2.
    public const uint Leaf1Edx = (1u << 0) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 9)
        | (1u << 11) | (1u << 12) | (1u << 13) | (1u << 15) | (1u << 16) | (1u << 17) | (1u << 19)
        | (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26);
    // Leaf 1 ECX: CX16, PCID, MOVBE, POPCNT, XSAVE, RDRAND, hypervisor (OSXSAVE follows CR4).
    public const uint Leaf1Ecx = (1u << 13) | (1u << 17) | (1u << 22) | (1u << 23) | (1u << 26) | (1u << 30) | (1u << 31);
    // Leaf 7 EBX: FSGSBASE, TSC_ADJUST, BMI1, SMEP, BMI2, ERMS, INVPCID, RDSEED, ADX, SMAP.
    public const uint Leaf7Ebx = (1u << 0) | (1u << 1) | (1u << 3) | (1u << 7) | (1u << 8) | (1u << 9) | (1u << 10) | (1u << 18) | (1u << 19) | (1u << 20);
    // Leaf 7 EDX: IA32_ARCH_CAPABILITIES is readable.
    public const uint Leaf7Edx = 1u << 29;
    /// <summary>IA32_ARCH_CAPABILITIES: the engine executes nothing speculatively, so it reports itself
    /// free of the speculative-execution and buffer-sampling issues (RDCL_NO, SSB_NO, MDS_NO,
    /// PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO, GDS_NO, RFDS_NO, ITS_NO)
    /// and guests skip mitigations such as kernel page-table isolation. Without ITS_NO a Linux guest that
    /// sees the hypervisor bit assumes indirect target selection and sends every function return through
    /// a return thunk: one more block dispatch per return, about one in seven of a kernel I/O path's.</summary>
    public const ulong ArchCapabilities = (1UL << 0) | (1UL << 4) | (1UL << 5) | (1UL << 6) | (1UL << 8)
        | (1UL << 13) | (1UL << 14) | (1UL << 15) | (1UL << 20) | (1UL << 24) | (1UL << 26) | (1UL << 27) | (1UL << 62);
    // 0x80000001 ECX: LAHF-SAHF in 64-bit, LZCNT.  EDX: SYSCALL, NX, 1 GiB pages, RDTSCP, LM.
    public const uint Ext1Ecx = (1u << 0) | (1u << 5);
    public const uint Ext1Edx = (1u << 11) | (1u << 20) | (1u << 26) | (1u << 27) | (1u << 29);

    /// <summary>Extra leaf-1 ECX bits for instruction groups enabled at build time of the policy.</summary>
    public virtual uint Leaf1EcxExtra => X86Features.Leaf1Ecx;
    public virtual uint Leaf1EdxExtra => X86Features.Leaf1Edx;

    public virtual void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        eax = ebx = ecx = edx = 0;
        switch (leaf)
        {
            case 0:
                eax = 0xD;
                Vendor12(Vendor, out ebx, out edx, out ecx);
                break;
            case 1:
                eax = 0x000306A9; // family 6, model 0x3A, stepping 9
                ebx = (ApicId << 24) | (1u << 16) | (8u << 8);
                ecx = Leaf1Ecx | Leaf1EcxExtra;
                edx = Leaf1Edx | Leaf1EdxExtra;
                break;
            case 7:
                if (subleaf == 0) { ebx = Leaf7Ebx; edx = Leaf7Edx; }
                break;
            case 0xB:
                if (subleaf == 0) { eax = 0; ebx = 1; ecx = 0x100; }
                else if (subleaf == 1) { eax = 0; ebx = 1; ecx = 0x201; }
                else ecx = subleaf;
                edx = ApicId;
                break;
            case 0xD:
                if (subleaf == 0) { eax = (uint)X86Features.SupportedXcr0; ebx = 576; ecx = 576; }
                else if (subleaf == 1) { eax = 0; }
                else if (subleaf == 1) { }
                break;
            case 0x80000000:
                eax = 0x80000008;
                break;
            case 0x80000001:
                ecx = Ext1Ecx; edx = Ext1Edx;
                break;
            case 0x80000002:
            case 0x80000003:
            case 0x80000004:
                BrandPart((int)(leaf - 0x80000002), out eax, out ebx, out ecx, out edx);
                break;
            case 0x80000007:
                edx = 1u << 8; // invariant TSC
                break;
            case 0x80000008:
                eax = (48u << 8) | X86Vcpu.MaxPhysAddr;
                break;
        }
    }

    private static void Vendor12(string s, out uint b, out uint d, out uint c)
    {
        var bytes = Encoding.ASCII.GetBytes(s);
        b = BitConverter.ToUInt32(bytes, 0); d = BitConverter.ToUInt32(bytes, 4); c = BitConverter.ToUInt32(bytes, 8);
    }

    private static void BrandPart(int part, out uint a, out uint b, out uint c, out uint d)
    {
        var bytes = new byte[48];
        Encoding.ASCII.GetBytes(Brand).CopyTo(bytes, 0);
        int o = part * 16;
        a = BitConverter.ToUInt32(bytes, o); b = BitConverter.ToUInt32(bytes, o + 4);
        c = BitConverter.ToUInt32(bytes, o + 8); d = BitConverter.ToUInt32(bytes, o + 12);
    }
}

/// <summary>Feature bits that depend on the floating-point and vector groups.</summary>
internal static class X86Features
{
    /// <summary>XCR0 bits XSAVE/XRSTOR handle: x87 and SSE.</summary>
    public const ulong SupportedXcr0 = 3;
    /// <summary>SSE3, PCLMULQDQ, SSSE3, SSE4.1, SSE4.2, and AES when the host can execute AES rounds.</summary>
    public static readonly uint Leaf1Ecx = (1u << 0) | (1u << 1) | (1u << 9) | (1u << 19) | (1u << 20)
        | (System.Runtime.Intrinsics.X86.Aes.IsSupported ? 1u << 25 : 0);
    public const uint Leaf1Edx = 0;
}
