namespace XenSharp.Public.ArchX86;

/// <summary>xen/include/public/arch-x86/cpuid.h: the hypervisor CPUID leaves.</summary>
public static class Cpuid
{
    public const uint XEN_CPUID_FIRST_LEAF = 0x40000000;
    public const uint XEN_CPUID_SIGNATURE_EBX = 0x566e6558, XEN_CPUID_SIGNATURE_ECX = 0x65584d4d,
        XEN_CPUID_SIGNATURE_EDX = 0x4d4d566e;
    public const uint XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1u << 0;
    public const uint XEN_HVM_CPUID_APIC_ACCESS_VIRT = 1u << 0, XEN_HVM_CPUID_X2APIC_VIRT = 1u << 1,
        XEN_HVM_CPUID_IOMMU_MAPPINGS = 1u << 2, XEN_HVM_CPUID_VCPU_ID_PRESENT = 1u << 3,
        XEN_HVM_CPUID_DOMID_PRESENT = 1u << 4, XEN_HVM_CPUID_EXT_DEST_ID = 1u << 5,
        XEN_HVM_CPUID_UPCALL_VECTOR = 1u << 6;
    public const uint XEN_CPUID_MAX_NUM_LEAVES = 5;
    public static uint XEN_CPUID_LEAF(uint i) => XEN_CPUID_FIRST_LEAF + i;
}
