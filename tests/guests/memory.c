/* XENMEM: reservation queries, the memory map, add_to_physmap(shared_info), and giving a page
 * back (decrease_reservation) then getting it again (populate_physmap), and trading frames (exchange). */
#include "rt.h"
#include <xen/memory.h>

RT_GUEST("memory");

extern char __image_start[], __image_end[];

struct e820entry { uint64_t addr, size; uint32_t type; } __attribute__((packed));

static uint8_t balloon_page[4096] __attribute__((aligned(4096)));
static uint8_t exchange_pages[2][4096] __attribute__((aligned(4096)));

static long reservation(unsigned int op)
{
    domid_t self = DOMID_SELF;
    return HYPERVISOR_memory_op(op, &self);
}

static long one_extent(unsigned int op, xen_pfn_t *gfn, unsigned int order)
{
    struct xen_memory_reservation r = { .nr_extents = 1, .extent_order = order, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, gfn);
    return HYPERVISOR_memory_op(op, &r);
}

static void test_queries(void)
{
    long cur = reservation(XENMEM_current_reservation);
    long max = reservation(XENMEM_maximum_reservation);
    rt_printf("# current_reservation %ld pages, maximum_reservation %ld pages\n", cur, max);
    rt_check("memory.current_reservation", cur >= (long)((uintptr_t)__image_end >> 12) && cur < (1l << 30),
             "%ld pages", cur);
    rt_check("memory.maximum_reservation", max >= cur, "max %ld < current %ld", max, cur);
    domid_t self = DOMID_SELF;
    long gpfn = HYPERVISOR_memory_op(XENMEM_maximum_gpfn, &self);
    rt_check("memory.maximum_gpfn", gpfn >= (long)(((uintptr_t)__image_end >> 12) - 1), "%ld", gpfn);
    long mrp = HYPERVISOR_memory_op(XENMEM_maximum_ram_page, NULL);
    rt_check("memory.maximum_ram_page", mrp > 0, "%ld", mrp);
}

static void test_memory_map(void)
{
    static struct e820entry map[64];
    struct xen_memory_map mm = { .nr_entries = 64 };
    set_xen_guest_handle(mm.buffer, map);
    long rc = HYPERVISOR_memory_op(XENMEM_memory_map, &mm);
    int covers = 0;
    for (unsigned int i = 0; rc == 0 && i < mm.nr_entries && i < 64; i++) {
        rt_printf("# e820 %2u: %#012llx-%#012llx type %u\n", i, (unsigned long long)map[i].addr,
                  (unsigned long long)(map[i].addr + map[i].size - 1), map[i].type);
        if (map[i].type == 1 && map[i].addr <= (uintptr_t)__image_start &&
            map[i].addr + map[i].size >= (uintptr_t)__image_end)
            covers = 1;
    }
    rt_check("memory.memory_map", rc == 0 && mm.nr_entries >= 1 && covers, "rc %ld entries %u, kernel covered %d",
             rc, mm.nr_entries, covers);
    struct hvm_start_info *si = rt_start_info;
    if (rc == 0 && si->version >= 1 && si->memmap_entries) {
        const struct hvm_memmap_table_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
        int same = si->memmap_entries == mm.nr_entries;
        for (unsigned int i = 0; same && i < mm.nr_entries; i++)
            same = e[i].addr == map[i].addr && e[i].size == map[i].size && e[i].type == map[i].type;
        rt_check("memory.memory_map_matches_start_info", same, "start_info has %u entries, XENMEM_memory_map %u",
                 si->memmap_entries, mm.nr_entries);
    }
}

static void test_shared_info(void)
{
    extern struct shared_info *rt_shared_info;
    long rc = rt_map_shared_info();
    if (!rt_check("memory.add_to_physmap_shared_info", rc == 0, "rc %ld", rc))
        return;
    volatile struct vcpu_time_info *t = &rt_shared_info->vcpu_info[0].time;
    rt_check("memory.shared_info_live", t->tsc_to_system_mul != 0 && !(t->version & 1) && t->version != 0,
             "vcpu_info[0].time version %u mul %u", t->version, t->tsc_to_system_mul);
    uint64_t t0 = rt_xen_time_ns();
    for (volatile int i = 0; i < 100000; i++)
        ;
    uint64_t t1 = rt_xen_time_ns();
    rt_check("memory.shared_info_time_advances", t1 > t0, "%llu then %llu", (unsigned long long)t0,
             (unsigned long long)t1);
}

static void test_balloon(void)
{
    memset(balloon_page, 0xa5, sizeof balloon_page);
    long before = reservation(XENMEM_current_reservation);
    xen_pfn_t gfn = (uintptr_t)balloon_page >> 12;
    long rc = one_extent(XENMEM_decrease_reservation, &gfn, 0);
    long during = reservation(XENMEM_current_reservation);
    rt_check("memory.decrease_reservation", rc == 1 && during == before - 1,
             "rc %ld (want 1), reservation %ld -> %ld", rc, before, during);
    gfn = (uintptr_t)balloon_page >> 12;
    rc = one_extent(XENMEM_populate_physmap, &gfn, 0);
    long after = reservation(XENMEM_current_reservation);
    rt_check("memory.populate_physmap", rc == 1 && after == before, "rc %ld (want 1), reservation %ld -> %ld",
             rc, during, after);
    volatile uint32_t *p = (volatile uint32_t *)balloon_page;
    p[100] = 0x600df00d;
    rt_check("memory.populated_page_usable", p[100] == 0x600df00d, "read back %#x", p[100]);
    gfn = (uintptr_t)balloon_page >> 12;
    rc = one_extent(XENMEM_populate_physmap, &gfn, 30);
    rt_check_eq("memory.populate_order_too_large", (uint64_t)rc, 0);
}

static long exchange(xen_pfn_t *in, unsigned long nr_in, unsigned int in_order, xen_pfn_t *out, unsigned long nr_out,
                     unsigned int out_order, unsigned int address_bits, xen_ulong_t *nr_exchanged)
{
    struct xen_memory_exchange x = {
        .in = { .nr_extents = nr_in, .extent_order = in_order, .domid = DOMID_SELF },
        .out = { .nr_extents = nr_out, .extent_order = out_order, .mem_flags = address_bits, .domid = DOMID_SELF },
        .nr_exchanged = 0,
    };
    set_xen_guest_handle(x.in.extent_start, in);
    set_xen_guest_handle(x.out.extent_start, out);
    long rc = HYPERVISOR_memory_op(XENMEM_exchange, &x);
    *nr_exchanged = x.nr_exchanged;
    return rc;
}

static void test_exchange(void)
{
    memset(exchange_pages, 0x5a, sizeof exchange_pages);
    xen_pfn_t first = (uintptr_t)exchange_pages >> 12;
    long before = reservation(XENMEM_current_reservation);
    xen_ulong_t done = 99;

    /* Two pages for two fresh frames at the same GFNs: the contents start over. */
    xen_pfn_t in[2] = { first, first + 1 }, out[2] = { first, first + 1 };
    long rc = exchange(in, 2, 0, out, 2, 0, 0, &done);
    rt_check("memory.exchange", rc == 0 && done == 2, "rc %ld nr_exchanged %lu", rc, (unsigned long)done);
    rt_check("memory.exchange_reservation_kept", reservation(XENMEM_current_reservation) == before, "%ld -> %ld", before,
             reservation(XENMEM_current_reservation));
    rt_check("memory.exchange_fresh_frames", exchange_pages[0][0] == 0 && exchange_pages[1][4095] == 0,
             "first bytes %#x %#x", exchange_pages[0][0], exchange_pages[1][4095]);
    exchange_pages[1][7] = 0x77;
    rt_check("memory.exchange_frames_usable", exchange_pages[1][7] == 0x77, "read back %#x", exchange_pages[1][7]);

    /* One order-1 extent for the same two pages as order-0 extents. */
    xen_pfn_t in1[1] = { first }, out2[2] = { first, first + 1 };
    rc = exchange(in1, 1, 1, out2, 2, 0, 0, &done);
    rt_check("memory.exchange_orders", rc == 0 && done == 1, "rc %ld nr_exchanged %lu", rc, (unsigned long)done);

    /* The second input has no RAM behind it: the first is exchanged and nr_exchanged says so. */
    exchange_pages[0][1] = 0x11;
    xen_pfn_t bad_in[2] = { first, 0x100000 }, bad_out[2] = { first, first + 1 };
    rc = exchange(bad_in, 2, 0, bad_out, 2, 0, 0, &done);
    rt_check("memory.exchange_partial", rc == -XEN_EINVAL && done == 1 && exchange_pages[0][1] == 0,
             "rc %ld nr_exchanged %lu byte %#x", rc, (unsigned long)done, exchange_pages[0][1]);

    /* Sizes that do not match, and frames below 4 KiB that cannot exist. */
    exchange_pages[0][2] = 0x22;
    rc = exchange(in, 2, 0, out, 1, 0, 0, &done);
    rt_check("memory.exchange_size_mismatch", rc == -XEN_EINVAL && done == 0, "rc %ld nr_exchanged %lu", rc, (unsigned long)done);
    rc = exchange(in, 1, 0, out, 1, 0, 12, &done);
    rt_check("memory.exchange_address_bits", rc == -XEN_ENOMEM && done == 0 && exchange_pages[0][2] == 0x22,
             "rc %ld nr_exchanged %lu byte %#x", rc, (unsigned long)done, exchange_pages[0][2]);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("memory.all", "no Xen");
        return;
    }
    test_queries();
    test_memory_map();
    test_shared_info();
    test_balloon();
    test_exchange();
    long rc = HYPERVISOR_memory_op(0x3e, NULL);
    rt_check_eq("memory.unknown_op", (uint64_t)rc, (uint64_t)-XEN_ENOSYS);
}
