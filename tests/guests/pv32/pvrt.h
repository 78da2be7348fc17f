/* What the 32-bit PV test kernels share: hypercalls through the INT $0x82 page (EBX, ECX, EDX, ESI, EDI), output on
 * the PV console ring, the tests/guests report lines, and the p2m list as start_info gives it. */
#ifndef PV32_PVRT_H
#define PV32_PVRT_H
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/event_channel.h>
#include <xen/version.h>
#include <xen/errno.h>
#include <xen/io/console.h>

#define VIRT_BASE 0xc0000000UL
#define PTE_P 1ULL
#define PTE_RW 2ULL
#define PTE_PSE 0x80ULL
#define ADDR_MASK 0x000FFFFFFFFFF000ULL

extern char hypercall_page[];

static start_info_t *si;
static struct xencons_interface *cons;
static unsigned passed, failed, skipped;

static inline long hc5(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
{
    long ret;
    __asm__ volatile("call *%%eax"
                     : "=a"(ret), "+b"(a1), "+c"(a2), "+d"(a3), "+S"(a4), "+D"(a5)
                     : "0"(hypercall_page + nr * 32)
                     : "memory", "cc");
    return ret;
}

static inline long hc(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3, unsigned long a4)
{
    return hc5(nr, a1, a2, a3, a4, 0);
}

static inline void out(const char *s, size_t n)
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

static inline size_t len(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static inline void print(const char *s) { out(s, len(s)); }

static inline void print_hex(uint64_t v)
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

static inline void print_dec(unsigned v)
{
    char b[12];
    int n = 0;
    do { b[11 - n++] = '0' + v % 10; v /= 10; } while (v);
    out(b + 12 - n, n);
}

static inline void check_eq(const char *name, uint64_t got, uint64_t want)
{
    if (got == want) {
        passed++;
        print("PASS "); print(name); print("\n");
        return;
    }
    failed++;
    print("FAIL "); print(name); print(": got "); print_hex(got); print(", want "); print_hex(want); print("\n");
}

static inline void skip(const char *name, const char *why)
{
    skipped++;
    print("SKIP "); print(name); print(": "); print(why); print("\n");
}

static inline long mmu_update1(uint64_t ptr, uint64_t val)
{
    mmu_update_t u = { .ptr = ptr, .val = val };
    return hc(__HYPERVISOR_mmu_update, (unsigned long)&u, 1, 0, DOMID_SELF);
}

static inline long mmuext1(unsigned cmd, unsigned long mfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
    return hc(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, DOMID_SELF);
}

/* The compat update_va_mapping: va, the PTE's low and high halves, flags. */
static inline long update_va(unsigned long va, uint64_t val)
{
    return hc(__HYPERVISOR_update_va_mapping, va, (uint32_t)val, (uint32_t)(val >> 32), UVMF_INVLPG | UVMF_LOCAL);
}

static inline unsigned long p2m(unsigned long pfn) { return ((const unsigned long *)si->mfn_list)[pfn]; }

/* The PFN of a frame of ours, by the p2m list (this test does not rely on the compat M2P). */
static inline unsigned long pfn_of(unsigned long mfn)
{
    for (unsigned long pfn = 0; pfn < si->nr_pages; pfn++)
        if (p2m(pfn) == mfn)
            return pfn;
    return ~0UL;
}

/* Reports DONE and powers off. */
static inline void finish(void)
{
    print("DONE passed="); print_dec(passed); print(" failed="); print_dec(failed); print(" skipped="); print_dec(skipped); print("\n");
    sched_shutdown_t down = { .reason = SHUTDOWN_poweroff };
    hc(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&down, 0, 0);
    for (;;)
        hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0);
}

/* Maps the console ring found by start_info; the kernel's first call. */
static inline void console_init(start_info_t *start)
{
    si = start;
    cons = (struct xencons_interface *)(VIRT_BASE + (pfn_of(si->console.domU.mfn) << 12));
}
#endif
