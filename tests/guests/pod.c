/* Populate-on-demand: a guest whose memory target (pod.cfg: memory = 32) is below its maxmem (64). Its
 * memory map covers maxmem, memory beyond the target works until the cache behind it runs out, giving back
 * PoD memory (decrease_reservation) drops entries without touching the reservation, and a guest that
 * balloons down to its target can then use every page it kept. With crash=1 on the command line it touches
 * everything instead and must be crashed by Xen ("out of PoD memory") before it prints DONE. */
#include "rt.h"
#include <xen/memory.h>

RT_GUEST("pod");

#define MIB (1ul << 20)
#define TARGET_MIB 32ul /* pod.cfg memory */
#define MAXMEM_MIB 64ul /* pod.cfg maxmem */
#define PAGES(mib) ((mib) * MIB / 4096)
/* Beyond the special pages and ACPI tables (a few pages) the reservation is the target's. */
#define SLACK 64

struct e820entry { uint64_t addr, size; uint32_t type; } __attribute__((packed));

static long reservation(unsigned int op)
{
    domid_t self = DOMID_SELF;
    return HYPERVISOR_memory_op(op, &self);
}

static long extents(unsigned int op, xen_pfn_t *gfns, unsigned long n, unsigned int flags)
{
    struct xen_memory_reservation r = { .nr_extents = n, .extent_order = 0, .mem_flags = flags, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, gfns);
    return HYPERVISOR_memory_op(op, &r);
}

static long one(unsigned int op, unsigned long gfn)
{
    xen_pfn_t g = gfn;
    return extents(op, &g, 1, 0);
}

static volatile uint64_t *page(unsigned long gfn) { return (volatile uint64_t *)(gfn << 12); }

/* Gfns this guest has given back (so the balloon below skips them). */
static uint8_t given_back[PAGES(MAXMEM_MIB) / 8];
static void mark_given(unsigned long gfn) { given_back[gfn / 8] |= 1 << (gfn % 8); }
static int was_given(unsigned long gfn) { return given_back[gfn / 8] >> (gfn % 8) & 1; }

static void test_memory_map(void)
{
    static struct e820entry map[32];
    struct xen_memory_map mm = { .nr_entries = 32 };
    set_xen_guest_handle(mm.buffer, map);
    long rc = HYPERVISOR_memory_op(XENMEM_memory_map, &mm);
    uint64_t ram = 0, end = 0;
    for (unsigned int i = 0; rc == 0 && i < mm.nr_entries; i++)
        if (map[i].type == 1) {
            ram += map[i].size;
            if (map[i].addr + map[i].size > end)
                end = map[i].addr + map[i].size;
        }
    rt_printf("# e820 RAM %llu MiB, ending at %#llx\n", (unsigned long long)(ram / MIB), (unsigned long long)end);
    rt_check("pod.e820_covers_maxmem", rc == 0 && ram == MAXMEM_MIB * MIB && end == MAXMEM_MIB * MIB,
             "rc %ld, RAM %llu bytes ending at %#llx, want %lu MiB", rc, (unsigned long long)ram,
             (unsigned long long)end, MAXMEM_MIB);
    struct hvm_start_info *si = rt_start_info;
    uint64_t si_ram = 0;
    const struct hvm_memmap_table_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
    for (unsigned int i = 0; si->version >= 1 && i < si->memmap_entries; i++)
        if (e[i].type == 1)
            si_ram += e[i].size;
    rt_check("pod.start_info_covers_maxmem", si_ram == MAXMEM_MIB * MIB, "start info RAM %llu bytes",
             (unsigned long long)si_ram);
}

static void test_reservation(void)
{
    long cur = reservation(XENMEM_current_reservation), max = reservation(XENMEM_maximum_reservation);
    rt_printf("# current_reservation %ld pages, maximum_reservation %ld pages\n", cur, max);
    rt_check("pod.reservation_is_target", cur >= (long)PAGES(TARGET_MIB) && cur <= (long)PAGES(TARGET_MIB) + SLACK,
             "%ld pages, want the target's %lu (+ up to %d)", cur, PAGES(TARGET_MIB), SLACK);
    rt_check("pod.maximum_reservation_covers_maxmem", max >= (long)PAGES(MAXMEM_MIB), "%ld pages", max);
}

static void test_pod_target_is_privileged(void)
{
    struct xen_pod_target t = { .target_pages = PAGES(MAXMEM_MIB), .domid = DOMID_SELF };
    long rc = HYPERVISOR_memory_op(XENMEM_get_pod_target, &t);
    rt_check_eq("pod.get_pod_target_eperm", (uint64_t)rc, (uint64_t)-XEN_EPERM);
    rc = HYPERVISOR_memory_op(XENMEM_set_pod_target, &t);
    rt_check_eq("pod.set_pod_target_eperm", (uint64_t)rc, (uint64_t)-XEN_EPERM);
    xen_pfn_t g = PAGES(MAXMEM_MIB) + 16;
    rc = extents(XENMEM_populate_physmap, &g, 1, XENMEMF_populate_on_demand);
    rt_check_eq("pod.populate_on_demand_self_refused", (uint64_t)rc, 0);
}

/* 8 MiB beyond the target, before any ballooning: served from the cache, the reservation unchanged. */
static void test_touch_beyond_target(void)
{
    long before = reservation(XENMEM_current_reservation);
    unsigned long first = PAGES(40), n = PAGES(8), bad = 0;
    for (unsigned long g = first; g < first + n; g++)
        page(g)[1] = g * 0x9e3779b97f4a7c15ull;
    for (unsigned long g = first; g < first + n; g++)
        if (page(g)[1] != g * 0x9e3779b97f4a7c15ull || page(g)[0] != 0)
            bad++;
    rt_check("pod.touch_beyond_target", bad == 0, "%lu of %lu pages read back wrong", bad, n);
    long after = reservation(XENMEM_current_reservation);
    rt_check("pod.touch_keeps_reservation", after == before, "%ld -> %ld pages", before, after);
}

static void test_decrease(void)
{
    static xen_pfn_t gfns[64];
    long before = reservation(XENMEM_current_reservation);
    for (unsigned int i = 0; i < 64; i++)
        gfns[i] = PAGES(56) + i;
    long rc = extents(XENMEM_decrease_reservation, gfns, 64, 0);
    long after = reservation(XENMEM_current_reservation);
    rt_check("pod.decrease_untouched", rc == 64 && after == before, "rc %ld (want 64), reservation %ld -> %ld", rc,
             before, after);
    for (unsigned int i = 0; i < 64; i++)
        mark_given(gfns[i]);

    /* Touched frames while PoD entries outnumber the cache go back into the cache: same reservation. */
    for (unsigned int i = 0; i < 16; i++)
        gfns[i] = PAGES(40) + i;
    rc = extents(XENMEM_decrease_reservation, gfns, 16, 0);
    long stolen = reservation(XENMEM_current_reservation);
    rt_check("pod.decrease_touched", rc == 16 && stolen == after, "rc %ld (want 16), reservation %ld -> %ld", rc,
             after, stolen);
    for (unsigned int i = 0; i < 16; i++)
        mark_given(gfns[i]);
    rt_check_eq("pod.decrease_twice", (uint64_t)one(XENMEM_decrease_reservation, PAGES(40)), 0);

    /* populate_physmap gives an ordinary zeroed frame back at a gfn given back. */
    rc = one(XENMEM_populate_physmap, PAGES(56));
    long populated = reservation(XENMEM_current_reservation);
    rt_check("pod.populate_after_decrease", rc == 1 && populated == stolen + 1 && page(PAGES(56))[3] == 0,
             "rc %ld, reservation %ld -> %ld, word %#llx", rc, stolen, populated,
             (unsigned long long)page(PAGES(56))[3]);
    page(PAGES(56))[3] = 7;
    rc = one(XENMEM_decrease_reservation, PAGES(56));
    rt_check("pod.decrease_populated", rc == 1 && reservation(XENMEM_current_reservation) <= populated,
             "rc %ld, reservation %ld", rc, reservation(XENMEM_current_reservation));
}

/* What a balloon driver does at boot: give back everything above the target, then use all that is kept. */
static void test_balloon_to_target(void)
{
    static xen_pfn_t batch[512];
    unsigned long given = 0, failed = 0, n = 0;
    for (unsigned long g = PAGES(TARGET_MIB); g < PAGES(MAXMEM_MIB); g++) {
        if (was_given(g))
            continue;
        batch[n++] = g;
        if (n == 512 || g == PAGES(MAXMEM_MIB) - 1) {
            long rc = extents(XENMEM_decrease_reservation, batch, n, 0);
            given += rc > 0 ? (unsigned long)rc : 0;
            failed += rc == (long)n ? 0 : 1;
            n = 0;
        }
    }
    long cur = reservation(XENMEM_current_reservation);
    rt_printf("# ballooned %lu pages; reservation now %ld pages\n", given, cur);
    rt_check("pod.balloon_down", failed == 0 && cur <= (long)PAGES(TARGET_MIB) + SLACK, "%lu short batches, reservation %ld",
             failed, cur);
    /* Everything kept below the target is usable: the cache covers it. */
    unsigned long bad = 0;
    for (unsigned long g = PAGES(8); g < PAGES(TARGET_MIB); g++) {
        page(g)[5] = g;
        if (page(g)[5] != g)
            bad++;
    }
    long end = reservation(XENMEM_current_reservation);
    rt_check("pod.use_all_kept_memory", bad == 0 && end <= (long)PAGES(TARGET_MIB) + SLACK, "%lu bad pages, reservation %ld",
             bad, end);
}

/* Touch every page up to maxmem without ballooning: more than the cache holds. */
static void touch_everything(void)
{
    rt_printf("# touching %lu MiB with a %lu MiB target\n", MAXMEM_MIB - 8, TARGET_MIB);
    for (unsigned long g = PAGES(8); g < PAGES(MAXMEM_MIB); g++)
        page(g)[0] = g;
    rt_fail("pod.crash", "touched %lu MiB with a %lu MiB cache and was not crashed", MAXMEM_MIB - 8, TARGET_MIB);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("pod.all", "no Xen");
        return;
    }
    test_memory_map();
    test_reservation();
    const char *crash = rt_cmdline_value("crash");
    if (crash && crash[0] == '1') {
        touch_everything();
        return;
    }
    test_pod_target_is_privileged();
    test_touch_beyond_target();
    test_decrease();
    test_balloon_to_target();
}
