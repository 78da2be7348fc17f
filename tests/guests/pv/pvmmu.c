/* pvmmu: a 64-bit PV kernel checking the PV MMU and PV CPU state from inside: start_info and the p2m list, the
 * read-only M2P, the hypercall page, Xen's forced-emulation CPUID, page-table updates and Xen's refusals (its own
 * L4 slots, a page table mapped writable, a frame that is not the guest's, a malformed table pinned), a page fault
 * through the trap table and HYPERVISOR_iret, shared_info mapped by machine address, an event upcall, and an LDT
 * (MMUEXT_SET_LDT: a segment loaded from it, its pages kept read-only, #GP for a page of bad descriptors). It
 * reports in the tests/guests format on its PV console ring and powers off. */
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/event_channel.h>
#include <xen/version.h>
#include <xen/errno.h>
#include <xen/io/console.h>

#define VIRT_BASE 0xffffffff80000000UL
#define M2P ((const volatile uint64_t *)0xFFFF800000000000UL)
#define PTE_P 1UL
#define PTE_RW 2UL
#define PTE_PSE 0x80UL
#define ADDR_MASK 0x000FFFFFFFFFF000UL
/* An address in the last 2 MiB of the kernel's 1 GiB: its L2 slot is free for an L1 of our own. */
#define TEST_VA 0xffffffffbfe00000UL

extern char hypercall_page[];
extern void pf_entry(void), gp_entry(void), upcall_entry(void);
volatile uint64_t pf_error, gp_error;
static volatile unsigned upcalls, ipi_deliveries;
static shared_info_t *shared;
static evtchn_port_t ipi_port;

static start_info_t *si;
static struct xencons_interface *cons;
static unsigned passed, failed;

static long hc(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3, unsigned long a4)
{
    unsigned long ax = (unsigned long)(hypercall_page + nr * 32);
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = 0;
    __asm__ volatile("call *%%rax"
                     : "+a"(ax), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     :
                     : "memory", "cc", "rcx", "r9", "r11");
    return (long)ax;
}

static void out(const char *s, size_t n)
{
    if (!cons)
        return;
    for (size_t i = 0; i < n; i++) {
        while (cons->out_prod - cons->out_cons >= sizeof(cons->out))
            hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0);
        cons->out[MASK_XENCONS_IDX(cons->out_prod, cons->out)] = s[i];
        __asm__ volatile("" ::: "memory");
        cons->out_prod++;
    }
    evtchn_send_t send = { .port = si->console.domU.evtchn };
    hc(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send, 0, 0);
}

static size_t len(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static void print(const char *s) { out(s, len(s)); }

static void print_hex(uint64_t v)
{
    char b[19] = "0x";
    int n = 2;
    for (int shift = 60; shift >= 0; shift -= 4) {
        int d = (v >> shift) & 15;
        if (d || n > 2 || shift == 0)
            b[n++] = "0123456789abcdef"[d];
    }
    out(b, n);
}

static void print_dec(unsigned v)
{
    char b[12];
    int n = 0;
    do { b[11 - n++] = '0' + v % 10; v /= 10; } while (v);
    out(b + 12 - n, n);
}

static void check_eq(const char *name, uint64_t got, uint64_t want)
{
    if (got == want) {
        passed++;
        print("PASS "); print(name); print("\n");
        return;
    }
    failed++;
    print("FAIL "); print(name); print(": got "); print_hex(got); print(", want "); print_hex(want); print("\n");
}

static long mmu_update1(uint64_t ptr, uint64_t val)
{
    mmu_update_t u = { .ptr = ptr, .val = val };
    return hc(__HYPERVISOR_mmu_update, (unsigned long)&u, 1, 0, DOMID_SELF);
}

static long mmuext1(unsigned cmd, uint64_t mfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
    return hc(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, DOMID_SELF);
}

static long update_va(uint64_t va, uint64_t val)
{
    return hc(__HYPERVISOR_update_va_mapping, va, val, UVMF_INVLPG | UVMF_LOCAL, 0);
}

static uint64_t p2m(uint64_t pfn) { return ((const uint64_t *)si->mfn_list)[pfn]; }
/* A page-table frame of the initial tables, read through the builder's (read-only) mapping of it. */
static const uint64_t *table(uint64_t entry) { return (const uint64_t *)(VIRT_BASE + (M2P[(entry & ADDR_MASK) >> 12] << 12)); }

/* The event callback (from upcall_entry): takes the 2-level selector and the pending words, as Linux does. */
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
        if (ipi_port && w == (int)(ipi_port / 64) && (pending & (1UL << (ipi_port % 64))))
            ipi_deliveries++;
    }
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    si = start;
    cons = (struct xencons_interface *)(VIRT_BASE + (M2P[si->console.domU.mfn] << 12));
    print("# guest pvmmu (64-bit PV) xen=yes\n");
    static const char magic[] = "xen-3.0-x86_64";
    int magic_ok = 1;
    for (int i = 0; i < 14; i++)
        magic_ok &= si->magic[i] == magic[i];
    check_eq("pv.start_info_magic", magic_ok, 1);
    long ver = hc(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    check_eq("pv.hypercall_page", ver > 0, 1);

    uint64_t n = si->nr_pages, bad = 0;
    for (uint64_t pfn = 0; pfn < n; pfn += 97)
        if (M2P[p2m(pfn)] != pfn)
            bad++;
    check_eq("pv.m2p_inverts_p2m", bad, 0);

    uint32_t a = 0x40000000, b, c = 0, d;
    __asm__ volatile("ud2; .ascii \"xen\"; cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    check_eq("pv.forced_emulation_cpuid", b, 0x566e6558);

    uint64_t l4 = p2m((si->pt_base - VIRT_BASE) >> 12);
    check_eq("pv.l4_xen_slot_refused", mmu_update1((l4 << 12) + 256 * 8, 0), -XEN_EINVAL);

    /* Frames at the top of memory are mapped nowhere: one becomes an L1, one data, one a malformed L2. */
    uint64_t l1 = p2m(n - 1), data = p2m(n - 2), l2bad = p2m(n - 3);
    check_eq("pv.clear_page", mmuext1(MMUEXT_CLEAR_PAGE, l1), 0);
    check_eq("pv.pin_l1", mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("pv.pin_twice_refused", mmuext1(MMUEXT_PIN_L1_TABLE, l1), -XEN_EINVAL);
    check_eq("pv.page_table_writable_refused", mmu_update1(l1 << 12, (l1 << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    check_eq("pv.frame_not_owned_refused", mmu_update1(l1 << 12, (0xFFFFFFFFFUL << 12) | PTE_P), -XEN_EINVAL);
    check_eq("pv.map_own_frame", mmu_update1((l1 << 12) + 4 * 8, (data << 12) | PTE_P | PTE_RW), 0);

    const uint64_t *l4t = table(l4 << 12);
    const uint64_t *l3t = table(l4t[(TEST_VA >> 39) & 511]);
    uint64_t l2e = l3t[(TEST_VA >> 30) & 511];
    uint64_t l2 = (l2e & ADDR_MASK) >> 12;
    check_eq("pv.l2_slot_free", table(l2e)[(TEST_VA >> 21) & 511], 0);
    check_eq("pv.link_l1", mmu_update1((l2 << 12) + ((TEST_VA >> 21) & 511) * 8, (l1 << 12) | PTE_P | PTE_RW), 0);
    check_eq("pv.update_va_mapping", update_va(TEST_VA + 0x1000, (data << 12) | PTE_P | PTE_RW), 0);
    volatile uint64_t *p = (volatile uint64_t *)(TEST_VA + 0x1000);
    *p = 0x5ec7e75;
    check_eq("pv.write_through_new_mapping", ((volatile uint64_t *)(TEST_VA + 0x4000))[0], 0x5ec7e75);
    check_eq("pv.update_va_mapping_table_writable_refused", update_va(TEST_VA + 0x2000, (l1 << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    check_eq("pv.map_table_read_only", update_va(TEST_VA + 0x2000, (l1 << 12) | PTE_P), 0);
    check_eq("pv.table_entry_readable", (((volatile uint64_t *)(TEST_VA + 0x2000))[1] & ADDR_MASK) >> 12, data);

    check_eq("pv.write_into_plain_frame", mmu_update1(l2bad << 12, (data << 12) | PTE_P | PTE_PSE), 0);
    check_eq("pv.pin_malformed_l2_refused", mmuext1(MMUEXT_PIN_L2_TABLE, l2bad), -XEN_EINVAL);
    check_eq("pv.pin_l4_xen_frame_refused", mmuext1(MMUEXT_PIN_L4_TABLE, 0xFFFFFFFFFUL), -XEN_EINVAL);

    check_eq("pv.map_shared_info", update_va(TEST_VA + 0x3000, si->shared_info | PTE_P | PTE_RW), 0);
    shared = (shared_info_t *)(TEST_VA + 0x3000);
    vcpu_info_t *vi = &shared->vcpu_info[0];
    check_eq("pv.events_masked_at_boot", vi->evtchn_upcall_mask, 1);

    trap_info_t traps[2] = { { .vector = 14, .cs = FLAT_KERNEL_CS, .address = (unsigned long)pf_entry }, { 0 } };
    check_eq("pv.set_trap_table", hc(__HYPERVISOR_set_trap_table, (unsigned long)traps, 0, 0, 0), 0);
    uint64_t fault_at = TEST_VA + 0x5000, got;
    __asm__ volatile("mov (%%rcx), %%rax" : "=a"(got) : "c"(fault_at) : "memory");
    check_eq("pv.page_fault_error_code", pf_error, 4);
    check_eq("pv.page_fault_cr2", vi->arch.cr2, fault_at);

    check_eq("pv.set_callbacks", hc(__HYPERVISOR_set_callbacks, (unsigned long)upcall_entry, 0, 0, 0), 0);
    evtchn_bind_ipi_t ipi = { .vcpu = 0 };
    check_eq("pv.bind_ipi", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_ipi, (unsigned long)&ipi, 0, 0), 0);
    ipi_port = ipi.port;
    /* Unmasking takes whatever was pending already (the console's notifications); then the IPI comes. */
    vi->evtchn_upcall_mask = 0;
    hc(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    unsigned before = upcalls;
    evtchn_send_t send = { .port = ipi.port };
    long rc = hc(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send, 0, 0);
    check_eq("pv.send_preserved_across_upcall", rc, 0);
    /* The console's notifications may come too (the daemon's backend runs beside the guest): at least the IPI's. */
    check_eq("pv.event_upcall", upcalls - before >= 1, 1);
    check_eq("pv.event_upcall_ipi_port", ipi_deliveries, 1);
    vi->evtchn_upcall_mask = 1;

    /* An LDT of two pages at TEST_VA + 0x6000: page 0 holds a flat ring-3 data segment, page 1 a TSS (no descriptor
     * a guest may have). Written while mapped writable, then mapped read-only and set with 513 entries. */
    uint64_t ldt0 = p2m(n - 4), ldt1 = p2m(n - 5);
    volatile uint64_t *ldt = (volatile uint64_t *)(TEST_VA + 0x6000);
    check_eq("pv.ldt_pages_mapped", update_va(TEST_VA + 0x6000, (ldt0 << 12) | PTE_P | PTE_RW)
                                    | update_va(TEST_VA + 0x7000, (ldt1 << 12) | PTE_P | PTE_RW), 0);
    ldt[0] = 0x00cff3000000ffffUL;
    ldt[512] = 0x0000890000000067UL;
    update_va(TEST_VA + 0x6000, (ldt0 << 12) | PTE_P);
    update_va(TEST_VA + 0x7000, (ldt1 << 12) | PTE_P);
    struct mmuext_op set_ldt = { .cmd = MMUEXT_SET_LDT, .arg1.linear_addr = TEST_VA + 0x6000, .arg2.nr_ents = 513 };
    check_eq("pv.set_ldt", hc(__HYPERVISOR_mmuext_op, (unsigned long)&set_ldt, 1, 0, DOMID_SELF), 0);
    trap_info_t gp_traps[2] = { { .vector = 13, .cs = FLAT_KERNEL_CS, .address = (unsigned long)gp_entry }, { 0 } };
    hc(__HYPERVISOR_set_trap_table, (unsigned long)gp_traps, 0, 0, 0);
    /* Selector 7: LDT entry 0, RPL 3. The segment loads (its page faulted in by Xen), and FS reads back. */
    gp_error = 0xffff;
    unsigned long sel = 7, fs = 0;
    __asm__ volatile(".byte 0x8e, 0xe0" : "+a"(sel) :: "memory");
    __asm__ volatile("mov %%fs, %%eax" : "=a"(fs));
    check_eq("pv.ldt_segment_load", gp_error, 0xffff);
    check_eq("pv.ldt_selector_in_fs", fs, 7);
    check_eq("pv.ldt_page_writable_refused", update_va(TEST_VA + 0x6000, (ldt0 << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    /* Entry 512 is in the page of bad descriptors: #GP on that selector, as Xen raises it. */
    sel = (512 << 3) | 7;
    __asm__ volatile(".byte 0x8e, 0xe0" : "+a"(sel) :: "memory");
    check_eq("pv.ldt_bad_page_gp", gp_error, (512 << 3) | 4);
    /* Entry 513 is past the LDT's 513 entries. */
    gp_error = 0xffff;
    sel = (513 << 3) | 7;
    __asm__ volatile(".byte 0x8e, 0xe0" : "+a"(sel) :: "memory");
    check_eq("pv.ldt_beyond_limit_gp", gp_error, (513 << 3) | 4);
    sel = 0;
    __asm__ volatile(".byte 0x8e, 0xe0" : "+a"(sel) :: "memory");
    set_ldt.arg1.linear_addr = 0;
    set_ldt.arg2.nr_ents = 0;
    check_eq("pv.clear_ldt", hc(__HYPERVISOR_mmuext_op, (unsigned long)&set_ldt, 1, 0, DOMID_SELF), 0);
    check_eq("pv.ldt_page_writable_after_clear", update_va(TEST_VA + 0x6000, (ldt0 << 12) | PTE_P | PTE_RW), 0);

    check_eq("pv.unlink_l1", mmu_update1((l2 << 12) + ((TEST_VA >> 21) & 511) * 8, 0), 0);
    check_eq("pv.unpin", mmuext1(MMUEXT_UNPIN_TABLE, l1), 0);
    check_eq("pv.unpin_twice_refused", mmuext1(MMUEXT_UNPIN_TABLE, l1), -XEN_EINVAL);

    print("DONE passed="); print_dec(passed); print(" failed="); print_dec(failed); print(" skipped=0\n");
    sched_shutdown_t down = { .reason = SHUTDOWN_poweroff };
    hc(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&down, 0, 0);
    for (;;)
        hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0);
}
