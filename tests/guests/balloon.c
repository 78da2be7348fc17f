/* Ballooning under a running sibling: the AP keeps storing to a page it has touched (so its TLB holds the
 * translation) while the BSP gives that page back with decrease_reservation and at once populates other
 * pages. Xen flushes TLBs before a freed frame is reused, so the fresh pages read as zero however long the
 * AP keeps storing; the given-back page itself reads as zero once populated again. */
#include "rt.h"
#include <xen/memory.h>

RT_GUEST("balloon");

#define ROUNDS 8
#define SPARE 64
#define PATTERN 0x5717e5a5u

static uint8_t victim[ROUNDS][4096] __attribute__((aligned(4096)));
static uint8_t spare[SPARE][4096] __attribute__((aligned(4096)));

static volatile uint32_t *volatile target;   /* where the AP stores; NULL parks it */
static volatile uint64_t stores;
static volatile int ap_parked, ap_ready;

static long one_extent(unsigned int op, xen_pfn_t gfn)
{
    struct xen_memory_reservation r = { .nr_extents = 1, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, &gfn);
    return HYPERVISOR_memory_op(op, &r);
}

static long all_extents(unsigned int op, xen_pfn_t *gfns, unsigned long n)
{
    struct xen_memory_reservation r = { .nr_extents = n, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, gfns);
    return HYPERVISOR_memory_op(op, &r);
}

static void ap_main(unsigned int cpu)
{
    (void)cpu;
    ap_ready = 1;
    for (;;) {
        volatile uint32_t *t = target;
        if (!t) {
            ap_parked = 1;
            rt_pause();
            continue;
        }
        ap_parked = 0;
        for (int i = 0; i < 4096 && target == t; i++) {
            t[i & 1023] = PATTERN;
            stores = stores + 1;
        }
    }
}

static void park_ap(void)
{
    target = NULL;
    uint64_t deadline = rt_deadline(10000);
    while (!ap_parked && !rt_expired(deadline))
        rt_pause();
}

static int wait_stores(uint64_t n)
{
    uint64_t want = stores + n, deadline = rt_deadline(60000);
    while (stores < want && !rt_expired(deadline))
        rt_pause();
    return stores >= want;
}

/* The index of the first non-zero byte of the spare pages, or -1. */
static long first_dirty(void)
{
    for (int p = 0; p < SPARE; p++)
        for (int i = 0; i < 4096; i++)
            if (((volatile uint8_t *)spare[p])[i])
                return (long)p * 4096 + i;
    return -1;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("balloon.all", "no Xen");
        return;
    }
    uint32_t ids[RT_MAX_CPUS], bsp = rt_lapic_id(), ap = 0xffffffff;
    int n = rt_acpi_apic_ids(ids, RT_MAX_CPUS);
    for (int i = 0; i < n; i++)
        if (ids[i] != bsp) {
            ap = ids[i];
            break;
        }
    if (ap == 0xffffffff) {
        rt_skip("balloon.all", "only one processor (give the domain vcpus = 2)");
        return;
    }
    /* rt_start_ap returns once the AP is alive, which is just before it calls ap_main. */
    int started = rt_start_ap(ap, ap_main, 1) == 0;
    for (uint64_t deadline = rt_deadline(30000); started && !ap_ready && !rt_expired(deadline);)
        rt_pause();
    if (!rt_check("balloon.ap_started", started && ap_ready, "APIC id %u did not start", ap))
        return;

    xen_pfn_t gfns[SPARE];
    for (int p = 0; p < SPARE; p++)
        gfns[p] = (uintptr_t)spare[p] >> 12;
    long rc = all_extents(XENMEM_decrease_reservation, gfns, SPARE);
    rt_check_eq("balloon.spare_given_back", (uint64_t)rc, SPARE);

    int clean = 1, alive = 1, zero_again = 1, rounds = 0;
    for (int r = 0; r < ROUNDS && clean && alive; r++) {
        /* The AP stores into the victim page: its TLB now maps it. */
        memset(victim[r], 0x11, 4096);
        target = (volatile uint32_t *)victim[r];
        alive = wait_stores(10000);
        xen_pfn_t vgfn = (uintptr_t)victim[r] >> 12;
        rc = one_extent(XENMEM_decrease_reservation, vgfn);
        if (rc != 1) {
            rt_fail("balloon.decrease_reservation", "round %d: rc %ld", r, rc);
            break;
        }
        /* Fresh frames at once, while the AP keeps storing through what its TLB held. */
        rc = all_extents(XENMEM_populate_physmap, gfns, SPARE);
        if (rc != SPARE) {
            rt_fail("balloon.populate_physmap", "round %d: rc %ld", r, rc);
            break;
        }
        rounds++;
        for (int k = 0; k < 4 && clean && alive; k++) {
            alive = wait_stores(100000);
            long at = first_dirty();
            clean = at < 0;
            if (!clean)
                rt_fail("balloon.fresh_pages_zero", "round %d: spare page %ld holds %#x at offset %ld after the victim was freed",
                        r, at / 4096, ((volatile uint8_t *)spare[at / 4096])[at % 4096], at % 4096);
        }
        park_ap();
        /* The victim comes back as a zeroed page. */
        rc = one_extent(XENMEM_populate_physmap, vgfn);
        for (int i = 0; i < 4096 && rc == 1; i++)
            if (((volatile uint8_t *)victim[r])[i]) {
                zero_again = 0;
                break;
            }
        rc = all_extents(XENMEM_decrease_reservation, gfns, SPARE);
        if (rc != SPARE)
            break;
    }
    park_ap();
    rt_check_eq("balloon.rounds", (uint64_t)rounds, ROUNDS);
    rt_check("balloon.sibling_kept_storing", alive, "the AP stopped storing (%llu stores)", (unsigned long long)stores);
    if (clean)
        rt_pass("balloon.fresh_pages_zero");
    rt_check("balloon.victim_repopulated_zero", zero_again, "a page given back and populated again was not zero");
    rt_printf("# the AP made %llu stores\n", (unsigned long long)stores);
}
