namespace XenSharp.Public;

/// <summary>xen/include/public/features.h: bits of XENVER_get_features submap 0.</summary>
public static class Features
{
    public const int XENFEAT_writable_page_tables = 0, XENFEAT_writable_descriptor_tables = 1,
        XENFEAT_auto_translated_physmap = 2, XENFEAT_supervisor_mode_kernel = 3, XENFEAT_pae_pgdir_above_4gb = 4,
        XENFEAT_mmu_pt_update_preserve_ad = 5, XENFEAT_highmem_assist = 6, XENFEAT_gnttab_map_avail_bits = 7,
        XENFEAT_hvm_callback_vector = 8, XENFEAT_hvm_safe_pvclock = 9, XENFEAT_hvm_pirqs = 10, XENFEAT_dom0 = 11,
        XENFEAT_grant_map_identity = 12, XENFEAT_memory_op_vnode_supported = 13, XENFEAT_ARM_SMCCC_supported = 14,
        XENFEAT_linux_rsdp_unrestricted = 15, XENFEAT_not_direct_mapped = 16, XENFEAT_direct_mapped = 17,
        XENFEAT_NR_SUBMAPS = 1;
}
