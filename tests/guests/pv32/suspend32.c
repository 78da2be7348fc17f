/* suspend32: a 32-bit PAE PV kernel that suspends itself as Linux's PV suspend path does, to be saved and restored
 * by the toolstack's tests: it pins a page table of its own (an L1 linked into its L2, mapping a data page and
 * itself read-only), publishes its p2m list through shared_info's frame-list list, counts, makes start_info's ring
 * frames PFNs and unmaps shared_info, and calls SCHEDOP_shutdown(SHUTDOWN_suspend) with its start_info frame in EDX.
 * In the restored domain (the call returns 0) it maps the new shared_info named by start_info and checks that its
 * p2m names the frames its page tables now hold, that its data came along through the restored tables, that its
 * L1 is still pinned, that the rings' frames in start_info are frames of its own again, and goes on counting.
 * Not run on its own: after `# suspending` it waits to be saved. */
#include "pvrt.h"

#define TEST_VA 0xc4000000UL
#define L1_VA (TEST_VA + 0x2000)
#define SHARED_VA (TEST_VA + 0x3000)
#define DATA_VA (TEST_VA + 0x4000)

static volatile unsigned counter;
static unsigned long frame_list[1024] __attribute__((aligned(4096)));
static unsigned long frame_list_list[1024] __attribute__((aligned(4096)));

static unsigned long mfn_of_va(const void *va) { return p2m(((unsigned long)va - VIRT_BASE) >> 12); }

static void count_to(unsigned n)
{
    while (counter < n) {
        counter++;
        ((volatile uint32_t *)DATA_VA)[1] = counter;
    }
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    console_init(start);
    print("# guest suspend32 (32-bit PV) xen=yes\n");
    unsigned long n = si->nr_pages;
    unsigned long l1 = p2m(n - 1), data = p2m(n - 2);
    const uint64_t *l3t = (const uint64_t *)si->pt_base;
    uint64_t l2 = (l3t[(TEST_VA >> 30) & 3] & ADDR_MASK) >> 12;

    check_eq("suspend32.clear_l1", mmuext1(MMUEXT_CLEAR_PAGE, l1), 0);
    check_eq("suspend32.pin_l1", mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("suspend32.map_data", mmu_update1(((uint64_t)l1 << 12) + 4 * 8, ((uint64_t)data << 12) | PTE_P | PTE_RW), 0);
    check_eq("suspend32.map_l1_read_only", mmu_update1(((uint64_t)l1 << 12) + 2 * 8, ((uint64_t)l1 << 12) | PTE_P), 0);
    check_eq("suspend32.link_l1", mmu_update1((l2 << 12) + ((TEST_VA >> 21) & 511) * 8, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), 0);
    check_eq("suspend32.map_shared_info", update_va(SHARED_VA, si->shared_info | PTE_P | PTE_RW), 0);
    shared_info_t *shared = (shared_info_t *)SHARED_VA;

    /* The p2m list's frames, then the frame list's, as Linux publishes them for the toolstack. */
    unsigned long frames = (n * sizeof(unsigned long) + 4095) / 4096;
    for (unsigned long i = 0; i < frames; i++)
        frame_list[i] = mfn_of_va((const char *)si->mfn_list + i * 4096);
    frame_list_list[0] = mfn_of_va(frame_list);
    shared->arch.max_pfn = n;
    shared->arch.pfn_to_mfn_frame_list_list = mfn_of_va(frame_list_list);

    ((volatile uint32_t *)DATA_VA)[0] = 0x5ec7e75;
    count_to(1000);

    print("# suspending\n");
    unsigned long start_mfn = mfn_of_va(si);
    si->store_mfn = pfn_of(si->store_mfn);
    si->console.domU.mfn = pfn_of(si->console.domU.mfn);
    update_va(SHARED_VA, 0);
    sched_shutdown_t sd = { .reason = SHUTDOWN_suspend };
    long rc = hc(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&sd, start_mfn, 0);

    print("# resumed\n");
    check_eq("suspend32.resumed_in_new_domain", rc, 0);
    check_eq("suspend32.map_new_shared_info", update_va(SHARED_VA, si->shared_info | PTE_P | PTE_RW), 0);
    check_eq("suspend32.frame_list_list_cleared", shared->arch.pfn_to_mfn_frame_list_list, 0);
    check_eq("suspend32.store_frame_ours", pfn_of(si->store_mfn) < n, 1);
    check_eq("suspend32.console_frame_ours", pfn_of(si->console.domU.mfn) < n, 1);
    /* The L1's entries were made the new domain's frames, which the p2m the toolstack rewrote names too. */
    check_eq("suspend32.l1_entry_is_p2m_frame", (((volatile uint64_t *)L1_VA)[4] & ADDR_MASK) >> 12, p2m(n - 2));
    check_eq("suspend32.l1_self_entry", (((volatile uint64_t *)L1_VA)[2] & ADDR_MASK) >> 12, p2m(n - 1));
    check_eq("suspend32.l1_still_pinned", mmuext1(MMUEXT_PIN_L1_TABLE, p2m(n - 1)), -XEN_EINVAL);
    check_eq("suspend32.data_kept", ((volatile uint32_t *)DATA_VA)[0], 0x5ec7e75);
    check_eq("suspend32.counter_kept", counter, 1000);
    check_eq("suspend32.counter_in_data_page", ((volatile uint32_t *)DATA_VA)[1], 1000);
    check_eq("suspend32.map_again", mmu_update1(((uint64_t)p2m(n - 1) << 12) + 5 * 8, ((uint64_t)p2m(n - 2) << 12) | PTE_P), 0);
    check_eq("suspend32.second_mapping", ((volatile uint32_t *)(TEST_VA + 0x5000))[0], 0x5ec7e75);
    count_to(2000);
    check_eq("suspend32.counter_goes_on", ((volatile uint32_t *)DATA_VA)[1], 2000);
    finish();
}
