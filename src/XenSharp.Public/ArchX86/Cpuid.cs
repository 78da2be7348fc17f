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

    /// <summary>Leaf 4 (0x40000x03) sub-leaf 0, EAX: emulated TSC, host TSC reliable, RDTSCP available.</summary>
    public const uint XEN_CPUID_TSC_EMULATED = 1u << 0, XEN_CPUID_HOST_TSC_RELIABLE = 1u << 1, XEN_CPUID_RDTSCP_INSTR_AVAIL = 1u << 2;
    /// <summary>Leaf 4 sub-leaf 0, EBX: the domain's TSC mode (Xen's TSC_MODE_* of asm/time.h).</summary>
    public const uint TSC_MODE_DEFAULT = 0, TSC_MODE_ALWAYS_EMULATE = 1, TSC_MODE_NEVER_EMULATE = 2,
        TSC_MODE_PVRDTSCP = 3;
    public static uint XEN_CPUID_LEAF(uint i) => XEN_CPUID_FIRST_LEAF + i;
}
