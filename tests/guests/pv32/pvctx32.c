/* pvctx32: a 32-bit PV guest whose vCPU a debugger reads (XEN_DOMCTL_getvcpucontext in the compat layout, Debian's
 * xenctx). It registers a trap table, callbacks and a kernel stack the context shows, prints where it parks and the
 * values it parks with, then blocks in ctx_park forever with ESI, EDI and EBP holding them. */
#include "pvrt.h"

#define SHARED_VA 0xc4000000UL
extern void pf_entry(void), upcall_entry(void), failsafe_entry(void), ctx_park(uint32_t seed);
volatile uint32_t pf_error;
static shared_info_t *shared;
static char trap_stack[4096] __attribute__((aligned(16)));

__asm__(
    "  .text\n"
    "  .globl ctx_park\n"
    "ctx_park:\n"
    "  mov 4(%esp), %esi\n"
    "  lea 1(%esi), %edi\n"
    "  lea 2(%esi), %ebp\n"
    "1: mov $1, %ebx\n"          /* SCHEDOP_block */
    "  xor %ecx, %ecx\n"
    "  mov $29, %eax\n"          /* __HYPERVISOR_sched_op */
    "  int $0x82\n"
    "  jmp 1b\n"
    "failsafe_entry:\n"
    "  jmp failsafe_entry\n");

/* Events wake the block; they are taken and dropped. */
void pv_upcall(void);
void pv_upcall(void)
{
    vcpu_info_t *vi = &shared->vcpu_info[0];
    vi->evtchn_upcall_pending = 0;
    unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        int w = __builtin_ctzl(sel);
        sel &= sel - 1;
        __atomic_fetch_and(&shared->evtchn_pending[w], shared->evtchn_mask[w], __ATOMIC_SEQ_CST);
    }
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    console_init(start);
    print("# guest pvctx32 (32-bit PV) xen=yes\n");
    /* The shared info page in the L2 slot past the initial mapping, through an L1 of ours. */
    unsigned long n = si->nr_pages, l1 = p2m(n - 1);
    const uint64_t *l3t = (const uint64_t *)si->pt_base;
    uint64_t l2 = (l3t[3] & ADDR_MASK) >> 12;
    check_eq("ctx32.l1_pinned", mmuext1(MMUEXT_CLEAR_PAGE, l1) | mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("ctx32.l1_linked", mmu_update1((l2 << 12) + ((SHARED_VA >> 21) & 511) * 8, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), 0);
    check_eq("ctx32.shared_info_mapped", update_va(SHARED_VA, si->shared_info | PTE_P | PTE_RW), 0);
    shared = (shared_info_t *)SHARED_VA;

    trap_info_t traps[] = { { .vector = 14, .cs = FLAT_KERNEL_CS, .address = (unsigned long)pf_entry }, { 0 } };
    check_eq("ctx32.set_trap_table", hc(__HYPERVISOR_set_trap_table, (unsigned long)traps, 0, 0, 0), 0);
    check_eq("ctx32.set_callbacks", hc(__HYPERVISOR_set_callbacks, FLAT_KERNEL_CS, (unsigned long)upcall_entry,
                                       FLAT_KERNEL_CS, (unsigned long)failsafe_entry), 0);
    check_eq("ctx32.stack_switch", hc(__HYPERVISOR_stack_switch, FLAT_KERNEL_SS, (unsigned long)(trap_stack + sizeof(trap_stack)), 0, 0), 0);
    uint32_t seed = 0x5eed0000 | (si->nr_pages & 0xffff);
    print("# parked pf_entry="); print_hex((unsigned long)pf_entry);
    print(" upcall="); print_hex((unsigned long)upcall_entry);
    print(" failsafe="); print_hex((unsigned long)failsafe_entry);
    print(" kernel_sp="); print_hex((unsigned long)(trap_stack + sizeof(trap_stack)));
    print(" seed="); print_hex(seed);
    print("\n");
    ctx_park(seed);
}
