/* pvmmu32: a 32-bit PAE PV kernel checking the compat PV ABI from inside: start_info's 32-bit layout and the p2m
 * list, hypercalls through the INT $0x82 page, xen_version, the PAE page tables (a PAE L3 as the base, its last
 * entry Xen's to keep, no L4 and no user base for a 32-bit guest), mmu_update and the compat mmuext_op and
 * update_va_mapping (the PTE in two halves) with Xen's refusals, shared_info's 32-bit layout, a page fault through
 * the compat trap table and HYPERVISOR_iret, an event upcall through set_callbacks' selector:address pairs, and a
 * second vCPU started from a compat vcpu_guest_context.
 * It reports in the tests/guests format on its PV console ring and powers off. */
#include "pvrt.h"
#include <xen/vcpu.h>

/* An address 64 MiB into the kernel's gigabyte, far past the initial mapping: its L2 slot is free for an L1. */
#define TEST_VA 0xc4000000UL

extern void pf_entry(void), upcall_entry(void);
volatile uint32_t pf_error;
static volatile unsigned upcalls, ipi_deliveries;
static shared_info_t *shared;
static evtchn_port_t ipi_port;

/* vCPU 1, started by VCPUOP_initialise from a compat vcpu_guest_context: it says it ran and yields from then on. */
static volatile unsigned ap_ran;
static char ap_stack[4096] __attribute__((aligned(16)));
static struct vcpu_guest_context ap_ctx;
void ap_main(void);
void ap_main(void)
{
    ap_ran = 1;
    for (;;)
        hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0);
}

/* A page-table frame of the initial tables, read through the builder's (read-only) mapping of it. */
static const uint64_t *table(uint64_t entry) { return (const uint64_t *)(VIRT_BASE + (pfn_of((entry & ADDR_MASK) >> 12) << 12)); }

void pv_upcall(void);
void pv_upcall(void)
{
    vcpu_info_t *vi = &shared->vcpu_info[0];
    upcalls++;
    vi->evtchn_upcall_pending = 0;
    unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        int w = __builtin_ctzl(sel);
        sel &= sel - 1;
        unsigned long pending = shared->evtchn_pending[w] & ~shared->evtchn_mask[w];
        __atomic_fetch_and(&shared->evtchn_pending[w], ~pending, __ATOMIC_SEQ_CST);
        if (ipi_port && w == (int)(ipi_port / 32) && (pending & (1UL << (ipi_port % 32))))
            ipi_deliveries++;
    }
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    console_init(start);
    print("# guest pvmmu32 (32-bit PV) xen=yes\n");
    static const char magic[] = "xen-3.0-x86_32p";
    int magic_ok = 1;
    for (int i = 0; i < 16; i++)
        magic_ok &= si->magic[i] == magic[i];
    check_eq("pv32.start_info_magic", magic_ok, 1);
    long ver = hc(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    check_eq("pv32.hypercall_page", ver > 0, 1);
    check_eq("pv32.xen_version_4_14", (unsigned long)ver, 0x4000e);
    xen_extraversion_t extra;
    check_eq("pv32.xen_version_extraversion", hc(__HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)&extra, 0, 0), 0);
    check_eq("pv32.xen_version_extraversion_dot", extra[0], '.');
    /* Optional in start_info: Xen's domain builder names the p2m's frames; GRUB's, booting this kernel, does not. */
    if (si->nr_p2m_frames == 0 && si->first_p2m_pfn == 0)
        skip("pv32.p2m_frames", "start_info names no p2m frames (not Xen's builder)");
    else
        check_eq("pv32.p2m_frames", si->nr_p2m_frames, (si->nr_pages * 4 + 4095) / 4096);
    check_eq("pv32.store_page_mapped", pfn_of(si->store_mfn) < si->nr_pages, 1);

    /* The base is a PAE L3: its last entry is present and Xen's, as is an L4 or a user base for a 32-bit guest. */
    unsigned long l3 = p2m((si->pt_base - VIRT_BASE) >> 12);
    const uint64_t *l3t = (const uint64_t *)si->pt_base;
    check_eq("pv32.l3_last_present", l3t[3] & PTE_P, 1);
    check_eq("pv32.l3_last_refused", mmu_update1(((uint64_t)l3 << 12) + 3 * 8, 0), -XEN_EINVAL);

    unsigned long n = si->nr_pages;
    unsigned long l1 = p2m(n - 1), data = p2m(n - 2), l2bad = p2m(n - 3), spare = p2m(n - 4);
    check_eq("pv32.pin_l4_refused", mmuext1(MMUEXT_PIN_L4_TABLE, spare), -XEN_EINVAL);
    check_eq("pv32.new_user_baseptr_refused", mmuext1(MMUEXT_NEW_USER_BASEPTR, spare), -XEN_EINVAL);
    check_eq("pv32.clear_page", mmuext1(MMUEXT_CLEAR_PAGE, l1), 0);
    check_eq("pv32.pin_l1", mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("pv32.pin_twice_refused", mmuext1(MMUEXT_PIN_L1_TABLE, l1), -XEN_EINVAL);
    check_eq("pv32.page_table_writable_refused", mmu_update1((uint64_t)l1 << 12, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    check_eq("pv32.frame_not_owned_refused", mmu_update1((uint64_t)l1 << 12, (0xFFFFFFFFFULL << 12) | PTE_P), -XEN_EINVAL);
    check_eq("pv32.map_own_frame", mmu_update1(((uint64_t)l1 << 12) + 4 * 8, ((uint64_t)data << 12) | PTE_P | PTE_RW), 0);

    uint64_t l2e = l3t[(TEST_VA >> 30) & 3];
    uint64_t l2 = (l2e & ADDR_MASK) >> 12;
    check_eq("pv32.l2_slot_free", table(l2e)[(TEST_VA >> 21) & 511], 0);
    check_eq("pv32.link_l1", mmu_update1((l2 << 12) + ((TEST_VA >> 21) & 511) * 8, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), 0);
    check_eq("pv32.update_va_mapping", update_va(TEST_VA + 0x1000, ((uint64_t)data << 12) | PTE_P | PTE_RW), 0);
    volatile uint32_t *p = (volatile uint32_t *)(TEST_VA + 0x1000);
    *p = 0x5ec7e75;
    check_eq("pv32.write_through_new_mapping", ((volatile uint32_t *)(TEST_VA + 0x4000))[0], 0x5ec7e75);
    check_eq("pv32.update_va_mapping_table_writable_refused", update_va(TEST_VA + 0x2000, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    check_eq("pv32.map_table_read_only", update_va(TEST_VA + 0x2000, ((uint64_t)l1 << 12) | PTE_P), 0);
    check_eq("pv32.table_entry_readable", (((volatile uint64_t *)(TEST_VA + 0x2000))[1] & ADDR_MASK) >> 12, data);
    /* A high half that names a frame far beyond memory: the compat ABI's two halves make one PTE. */
    check_eq("pv32.update_va_mapping_high_half", update_va(TEST_VA + 0x5000, (0xFFFFFULL << 32) | PTE_P), -XEN_EINVAL);

    check_eq("pv32.write_into_plain_frame", mmu_update1((uint64_t)l2bad << 12, ((uint64_t)data << 12) | PTE_P | PTE_PSE), 0);
    check_eq("pv32.pin_malformed_l2_refused", mmuext1(MMUEXT_PIN_L2_TABLE, l2bad), -XEN_EINVAL);

    check_eq("pv32.map_shared_info", update_va(TEST_VA + 0x3000, si->shared_info | PTE_P | PTE_RW), 0);
    shared = (shared_info_t *)(TEST_VA + 0x3000);
    vcpu_info_t *vi = &shared->vcpu_info[0];
    check_eq("pv32.events_masked_at_boot", vi->evtchn_upcall_mask, 1);

    trap_info_t traps[2] = { { .vector = 14, .cs = FLAT_KERNEL_CS, .address = (unsigned long)pf_entry }, { 0 } };
    check_eq("pv32.set_trap_table", hc(__HYPERVISOR_set_trap_table, (unsigned long)traps, 0, 0, 0), 0);
    unsigned long fault_at = TEST_VA + 0x5000, got;
    __asm__ volatile("mov (%%ecx), %%eax" : "=a"(got) : "c"(fault_at) : "memory");
    check_eq("pv32.page_fault_error_code", pf_error, 0);
    check_eq("pv32.page_fault_cr2", vi->arch.cr2, fault_at);
    check_eq("pv32.events_still_masked", vi->evtchn_upcall_mask, 1);

    check_eq("pv32.set_callbacks", hc(__HYPERVISOR_set_callbacks, FLAT_KERNEL_CS, (unsigned long)upcall_entry, FLAT_KERNEL_CS, 0), 0);
    evtchn_bind_ipi_t ipi = { .vcpu = 0 };
    check_eq("pv32.bind_ipi", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_ipi, (unsigned long)&ipi, 0, 0), 0);
    ipi_port = ipi.port;
    vi->evtchn_upcall_mask = 0;
    hc(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    unsigned before = upcalls;
    evtchn_send_t send = { .port = ipi.port };
    long rc = hc(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send, 0, 0);
    check_eq("pv32.send_preserved_across_upcall", rc, 0);
    check_eq("pv32.event_upcall", upcalls - before >= 1, 1);
    check_eq("pv32.event_upcall_ipi_port", ipi_deliveries, 1);
    check_eq("pv32.events_unmasked_after_iret", vi->evtchn_upcall_mask, 0);
    vi->evtchn_upcall_mask = 1;

    /* A second vCPU on the same L3, its CR3 in Xen's extended format, its selectors the ring-1 ones. */
    if (hc(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1, 0, 0) == -XEN_ENOENT) {
        skip("pv32.second_vcpu", "the domain has one vCPU");
    } else {
        ap_ctx.flags = VGCF_in_kernel;
        ap_ctx.user_regs.eip = (unsigned long)ap_main;
        ap_ctx.user_regs.cs = FLAT_KERNEL_CS;
        ap_ctx.user_regs.ss = ap_ctx.user_regs.ds = ap_ctx.user_regs.es = FLAT_KERNEL_DS;
        ap_ctx.user_regs.esp = (unsigned long)(ap_stack + sizeof(ap_stack));
        ap_ctx.kernel_ss = FLAT_KERNEL_SS;
        ap_ctx.kernel_sp = ap_ctx.user_regs.esp;
        ap_ctx.ctrlreg[3] = xen_pfn_to_cr3(l3);
        check_eq("pv32.vcpu_initialise", hc(__HYPERVISOR_vcpu_op, VCPUOP_initialise, 1, (unsigned long)&ap_ctx, 0), 0);
        check_eq("pv32.vcpu_initialise_twice_refused", hc(__HYPERVISOR_vcpu_op, VCPUOP_initialise, 1, (unsigned long)&ap_ctx, 0), -XEN_EEXIST);
        check_eq("pv32.vcpu_up", hc(__HYPERVISOR_vcpu_op, VCPUOP_up, 1, 0, 0), 0);
        for (unsigned i = 0; i < 1000000 && !ap_ran; i++)
            hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0);
        check_eq("pv32.second_vcpu_ran", ap_ran, 1);
        check_eq("pv32.second_vcpu_is_up", hc(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1, 0, 0), 1);
    }

    check_eq("pv32.unlink_l1", mmu_update1((l2 << 12) + ((TEST_VA >> 21) & 511) * 8, 0), 0);
    check_eq("pv32.unpin", mmuext1(MMUEXT_UNPIN_TABLE, l1), 0);
    check_eq("pv32.unpin_twice_refused", mmuext1(MMUEXT_UNPIN_TABLE, l1), -XEN_EINVAL);

    finish();
}
