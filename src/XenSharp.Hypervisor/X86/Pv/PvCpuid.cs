using XenSharp.Cpu;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// The CPUID a 64-bit PV guest sees (Xen's PV default policy): only the features Xen's public cpufeatureset.h marks
/// 'A' (available to every guest type). Page-size extensions, 1 GiB pages, PCID, SMEP/SMAP, VMX and the like belong to
/// the hardware Xen runs on, not to a PV kernel's page tables, so a PV kernel must not see them.
/// </summary>
internal sealed class PvCpuid(ICpuidPolicy inner) : ICpuidPolicy
{
    // Per featureset word of cpufeatureset.h: the bits annotated 'A'.
    private const uint Leaf1Edx = 0x1fc9cbf5, Leaf1Ecx = 0xf6d83203, Ext1Edx = 0xea500800, Ext1Ecx = 0x042109e3,
        LeafDa1 = 0x7, Leaf7b0 = 0xfdaf0b29, Leaf7c0 = 0x02405f43, Ext7Edx = 0x0, Ext8Ebx = 0x64001005,
        Leaf7d0 = 0xac00441c, Leaf7a1 = 0x1c30, Ext21Eax = 0x78000064, Leaf7b1 = 0, Leaf7d2 = 0x21;
    private const uint OsxsaveBit = 1u << 27;

    public ICpuidPolicy Inner => inner;

    public void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        inner.Cpuid(leaf, subleaf, out eax, out ebx, out ecx, out edx);
        switch (leaf)
        {
            case 1:
                // OSXSAVE follows the guest's CR4, as the engine reports it.
                ecx &= Leaf1Ecx | OsxsaveBit;
                edx &= Leaf1Edx;
                break;
            case 7 when subleaf == 0:
                ebx &= Leaf7b0; ecx &= Leaf7c0; edx &= Leaf7d0;
                break;
            case 7 when subleaf == 1:
                eax &= Leaf7a1; ebx &= Leaf7b1; ecx = 0; edx = 0;
                break;
            case 7 when subleaf == 2:
                edx &= Leaf7d2;
                break;
            case 0xD when subleaf == 1:
                eax &= LeafDa1;
                break;
            case 0x80000001:
                ecx &= Ext1Ecx; edx &= Ext1Edx;
                break;
            case 0x80000007:
                edx &= Ext7Edx;
                break;
            case 0x80000008:
                ebx &= Ext8Ebx;
                break;
            case 0x80000021:
                eax &= Ext21Eax;
                break;
        }
    }
}
