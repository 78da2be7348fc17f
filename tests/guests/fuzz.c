/* Hypercall fuzzer: for `secs=N` seconds (default 60) fires random hypercall numbers, sub-ops and
 * arguments from a seeded generator (`seed=N`), then reports that it survived. Xen must answer
 * each call with a result or an errno and leave this domain and its neighbours intact.
 *
 * The guest keeps itself alive by giving the hypervisor only three areas to write or remap: a
 * scratch area (argument buffers with random contents), a live area (the vcpu_info, runstate,
 * time and FIFO event pages it registers, which the hypervisor rewrites whenever it likes, so
 * they never share a page with an argument that a continuation reads again) and a balloon area
 * (target of populate/decrease/add_to_physmap/grant mappings, which the guest never reads or
 * writes itself). The structs and frame lists of one call never overlap each other, and every
 * list entry the hypervisor may act on is written for that call. Deliberately bad pointers are
 * unmapped, non-canonical or have no memory behind them. Calls that legitimately stop a domain
 * (shutdown, watchdog, bringing vCPUs up with garbage state, multicall) are left out. Interrupts
 * stay off and every vector has a handler that ignores it, so stray timers and callback settings
 * cannot end the run. */
#include "rt.h"
#include <xen/version.h>
#include <xen/memory.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>

RT_GUEST("fuzz");

#define SCRATCH_BASE  0x1000000ul   /* 16 MiB: buffers the hypervisor may read and write */
#define SCRATCH_PAGES 56
#define LIVE_BASE     (SCRATCH_BASE + SCRATCH_PAGES * 4096ul)   /* areas registered with the hypervisor */
#define LIVE_PAGES    8
#define BALLOON_BASE  0x2000000ul   /* 32 MiB: gfns the hypervisor may populate, free and remap */
#define BALLOON_PAGES 256

static uint64_t rng_state;
static unsigned long calls, errors, ignored_irqs;
static uint32_t console_port;
static domid_t self_domid;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static unsigned int below(unsigned int n) { return (unsigned int)(rnd() % n); }
static int chance(unsigned int percent) { return below(100) < percent; }

static unsigned long bad_pointer(void)
{
    static const unsigned long bad[] = {
        0x40000000000ul,          /* PML4 slot 8: not mapped */
        0xC0000000ul,             /* mapped, no memory at 3 GiB */
        0x8000000000000000ul,     /* non-canonical */
        0xFFFFFFFF80000000ul,     /* a kernel's usual higher-half address: not mapped here */
        0xFFFFFFFFFFFFF000ul,     /* last page */
        0xFEE00000ul,             /* local APIC */
    };
    return bad[below(sizeof bad / sizeof bad[0])] + (chance(30) ? below(4096) : 0);
}
/* Our image, stack and page tables live between 1 MiB and the scratch area; the console and
 * xenstore rings just below 4 GiB. A value near them must never become a buffer address. */
static int in_image(uint64_t v)
{
    return (v >= 0x10000ul && v < SCRATCH_BASE) || (v >= 0xFE000000ul && v < 0x100000000ul);
}

/* The buffers of one call that the hypervisor reads as structs or as lists of frames it frees or
 * remaps. Each is placed apart from the others: where a list overlaps its struct, writing one
 * overwrites entries or fields of the other, and Xen then acts on frames the list was never meant
 * to name (a count or an order read as a frame number names our own image). Buffers the hypervisor
 * only writes, or reads without acting on frames, still land anywhere in scratch. */
static struct { unsigned long lo, hi; } claimed[4];
static unsigned int nr_claimed;   /* reset by each call */

static int is_claimed(unsigned long p)
{
    for (unsigned int i = 0; i < nr_claimed; i++)
        if (p >= claimed[i].lo && p < claimed[i].hi)
            return 1;
    return 0;
}

/* The hypervisor writes addresses and frame numbers into scratch; left there, one could later be
 * read back as a buffer handle that points at our image. Replace any such value. Buffers already
 * built for this call are left alone: a field rewritten after the fact (a count, a domid) would
 * make the hypervisor walk a list past the entries written for it. */
static void scrub(uint64_t *p, unsigned long words)
{
    for (unsigned long i = 0; i < words; i++)
        if ((in_image(p[i]) || in_image(p[i] & 0xFFFFFFFFu) || in_image(p[i] >> 32)) && !is_claimed((unsigned long)&p[i]))
            p[i] = bad_pointer();
}

/* A place in scratch, scrubbed (at least its first 512 bytes) before anything is written there. */
static unsigned long scratch_pointer(unsigned long room)
{
    unsigned long span = SCRATCH_PAGES * 4096ul - room;
    unsigned long p = SCRATCH_BASE + ((rnd() % span) & ~7ul);
    unsigned long end = p + (room > 512 ? room : 512);
    if (end > SCRATCH_BASE + SCRATCH_PAGES * 4096ul)
        end = SCRATCH_BASE + SCRATCH_PAGES * 4096ul;
    scrub((uint64_t *)p, (end - p + 7) / 8);
    return p;
}

/* A place for a struct or frame list of this call, clear of the others. */
static unsigned long own_pointer(unsigned long room)
{
    for (;;) {
        unsigned long p = scratch_pointer(room);
        unsigned int i = 0;
        while (i < nr_claimed && (p + room <= claimed[i].lo || p >= claimed[i].hi))
            i++;
        if (i < nr_claimed)
            continue;
        if (nr_claimed == sizeof claimed / sizeof claimed[0]) {
            rt_fail("fuzz.buffers", "more buffers in one call than claimed[] holds");
            rt_done();
        }
        claimed[nr_claimed].lo = p;
        claimed[nr_claimed].hi = p + room;
        nr_claimed++;
        return p;
    }
}
static uint64_t scratch_gfn(void) { return (SCRATCH_BASE >> 12) + below(SCRATCH_PAGES); }
static unsigned long live_pointer(unsigned long room)
{
    return LIVE_BASE + ((rnd() % (LIVE_PAGES * 4096ul - room)) & ~7ul);
}
static uint64_t live_gfn(void) { return (LIVE_BASE >> 12) + below(LIVE_PAGES); }
static uint64_t balloon_gfn(unsigned int order)
{
    unsigned int n = BALLOON_PAGES >> order;
    return (BALLOON_BASE >> 12) + ((uint64_t)below(n ? n : 1) << order);
}
/* A buffer argument: mostly into scratch, sometimes bad. */
static unsigned long buffer(unsigned long room) { return chance(85) ? scratch_pointer(room) : bad_pointer(); }

static uint64_t random_value(void)
{
    uint64_t v;
    switch (below(6)) {
    case 0: v = rnd(); break;
    case 1: v = below(64); break;
    case 2: v = (uint64_t)-(int64_t)below(64); break;
    case 3: v = 1ull << below(64); break;
    case 4: v = scratch_pointer(64); break;
    default: v = chance(50) ? bad_pointer() : 0xFFFFFFFFu; break;
    }
    return in_image(v) ? bad_pointer() : v;
}
static uint64_t random_count(void) { return chance(80) ? below(8) : random_value(); }
static domid_t random_domid(void)
{
    switch (below(4)) {
    case 0: return DOMID_SELF;
    case 1: return self_domid;
    case 2: return (domid_t)below(12);
    default: return (domid_t)rnd();
    }
}

static void fill_scratch(void)
{
    uint64_t *p = (uint64_t *)SCRATCH_BASE;
    for (unsigned int i = 0; i < 64; i++)
        p[below(SCRATCH_PAGES * 512)] = random_value();
}

static unsigned long trace_from = ~0ul;
static uint64_t recent[256][6];   /* the last calls, printed when our code is found changed */

static long call(unsigned int nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
    if (calls >= trace_from)   /* `trace=N`: print each call from the Nth on, before making it */
        rt_printf("# call %lu: %u(%#lx, %#lx, %#lx, %#lx, %#lx)\n", calls, nr, (unsigned long)a1,
                  (unsigned long)a2, (unsigned long)a3, (unsigned long)a4, (unsigned long)a5);
    uint64_t *rec = recent[calls % 256];
    rec[0] = nr; rec[1] = a1; rec[2] = a2; rec[3] = a3; rec[4] = a4; rec[5] = a5;
    long r = rt_hypercall(nr, a1, a2, a3, a4, a5);
    nr_claimed = 0;
    calls++;
    if (r < 0)
        errors++;
    return r;
}

/* ---- memory_op ---- */
static void reservation_at(struct xen_memory_reservation *r, unsigned int order)
{
    uint64_t *gfns = (uint64_t *)own_pointer(64 * 8);
    unsigned int n = below(8) + 1;
    /* Xen acts on every entry up to the count: all 64 name balloon frames, and a count past
     * them comes only with a bad list pointer (whatever lies beyond may name our own frames). */
    for (unsigned int i = 0; i < 64; i++)
        gfns[i] = balloon_gfn(order);
    int huge = chance(10);
    r->nr_extents = huge ? random_value() : chance(90) ? n : 1 + below(64);
    r->extent_order = order;
    r->mem_flags = chance(80) ? 0 : (unsigned int)rnd();
    r->domid = chance(85) ? DOMID_SELF : random_domid();
    set_xen_guest_handle(r->extent_start, !huge && chance(90) ? (xen_pfn_t *)gfns : (xen_pfn_t *)bad_pointer());
}
static unsigned int random_order(void) { return chance(90) ? below(9) : 40 + below(24); }

static void fuzz_memory_op(void)
{
    static const unsigned int ops[] = {
        XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_populate_physmap,
        XENMEM_exchange, XENMEM_add_to_physmap, XENMEM_add_to_physmap_batch, XENMEM_remove_from_physmap,
        XENMEM_maximum_ram_page, XENMEM_current_reservation, XENMEM_maximum_reservation,
        XENMEM_maximum_gpfn, XENMEM_memory_map, XENMEM_machine_memory_map, XENMEM_machphys_mfn_list,
        XENMEM_get_pod_target, 18 /* get_sharing_freed_pages */, 19 /* get_sharing_shared_pages */,
    };
    /* Unknown sub-ops stay below 64: the bits above are the start extent, so 64 and 65 would be
     * increase and decrease_reservation resuming at extent 1 with whatever the struct holds. */
    unsigned int op = chance(90) ? ops[below(sizeof ops / sizeof ops[0])] : 26 + below(64 - 26);
    union {
        struct xen_memory_reservation res;
        struct xen_memory_exchange exch;
        struct xen_add_to_physmap atp;
        struct xen_add_to_physmap_batch batch;
        struct xen_remove_from_physmap rfp;
    } *a = (void *)own_pointer(sizeof *a);
    unsigned long arg = (unsigned long)a;

    switch (op) {
    case XENMEM_increase_reservation:
    case XENMEM_decrease_reservation:
    case XENMEM_populate_physmap:
        reservation_at(&a->res, random_order());
        break;
    case XENMEM_exchange: {
        unsigned int order = random_order();
        reservation_at(&a->exch.in, order);
        struct xen_memory_reservation out;
        reservation_at(&out, random_order());
        a->exch.out = out;
        /* Xen gives away every frame the input list names from nr_exchanged on: keep the list to
         * the balloon entries written above, and any progress at or past its end. */
        if (a->exch.in.nr_extents > 8)
            a->exch.in.nr_extents = 8;
        a->exch.nr_exchanged = chance(80) ? 0 : a->exch.in.nr_extents + rnd() % 1024;
        break;
    }
    case XENMEM_add_to_physmap:
        a->atp.domid = chance(80) ? DOMID_SELF : random_domid();
        a->atp.size = (uint16_t)random_count();
        a->atp.space = below(7);
        /* gmfn spaces move one of our own pages: only balloon pages. */
        a->atp.idx = (a->atp.space == XENMAPSPACE_gmfn || a->atp.space == XENMAPSPACE_gmfn_range)
            ? balloon_gfn(0) : (chance(50) ? below(8) | (chance(20) ? XENMAPIDX_grant_table_status : 0) : rnd());
        a->atp.gpfn = balloon_gfn(0);
        break;
    case XENMEM_add_to_physmap_batch: {
        /* errs too stays clear of the lists: an errno written there would become an index or a frame. */
        uint64_t *idxs = (uint64_t *)own_pointer(2 * 64 * 8);
        uint64_t *gpfns = idxs + 64;
        int *errs = (int *)own_pointer(64 * sizeof(int));
        unsigned int n = below(8) + 1;
        a->batch.domid = chance(80) ? DOMID_SELF : random_domid();
        a->batch.space = below(7);
        /* Every entry up to size is mapped: all 64 target the balloon; larger sizes only with bad lists. */
        int huge = chance(10);
        a->batch.size = huge ? (uint16_t)rnd() : chance(90) ? n : 1 + below(64);
        a->batch.u.foreign_domid = random_domid();
        for (unsigned int i = 0; i < 64; i++) {
            idxs[i] = a->batch.space == XENMAPSPACE_gmfn ? balloon_gfn(0) : below(16);
            gpfns[i] = balloon_gfn(0);
        }
        set_xen_guest_handle(a->batch.idxs, !huge && chance(90) ? (xen_ulong_t *)idxs : (xen_ulong_t *)bad_pointer());
        set_xen_guest_handle(a->batch.gpfns, !huge && chance(90) ? (xen_pfn_t *)gpfns : (xen_pfn_t *)bad_pointer());
        set_xen_guest_handle(a->batch.errs, chance(90) ? errs : (int *)bad_pointer());
        break;
    }
    case XENMEM_remove_from_physmap:
        a->rfp.domid = chance(80) ? DOMID_SELF : random_domid();
        a->rfp.gpfn = balloon_gfn(0);
        break;
    default:
        if (chance(20))
            arg = bad_pointer();
        break;
    }
    /* Continuation bits above the sub-op are the start extent; now and then make them garbage.
     * Not for the reservation ops: Xen would resume reading their extent list at that index, far
     * past the array, and free whatever frames the memory there names (this guest's own code). */
    int reservation = op == XENMEM_increase_reservation || op == XENMEM_decrease_reservation
        || op == XENMEM_populate_physmap;
    uint64_t cmd = op | (!reservation && chance(5) ? rnd() << 6 : 0);
    call(__HYPERVISOR_memory_op, cmd, arg, random_value(), random_value(), random_value());
}

/* ---- grant_table_op ---- */
static void fuzz_grant_table_op(void)
{
    unsigned int op = chance(90) ? below(13) : below(64);
    /* Xen walks the array up to the count, which is at most GNT_ENTRIES with a real pointer: every
     * entry up to there is written, so none is left over from scratch naming one of our frames. */
    enum { GNT_ENTRIES = 8 };
    unsigned int n = below(GNT_ENTRIES) + 1;
    uint8_t *a = (uint8_t *)own_pointer(8 * 64);
    unsigned long arg = (unsigned long)a;
    uint64_t count = chance(85) ? n : random_value();

    switch (op) {
    case GNTTABOP_map_grant_ref: {
        struct gnttab_map_grant_ref *m = (void *)a;
        for (unsigned int i = 0; i < GNT_ENTRIES; i++) {
            m[i].host_addr = balloon_gfn(0) << 12;
            m[i].flags = (uint32_t)(chance(50) ? rnd() : GNTMAP_host_map | (chance(50) ? GNTMAP_readonly : 0));
            m[i].ref = below(64);
            m[i].dom = random_domid();
        }
        break;
    }
    case GNTTABOP_unmap_grant_ref: {
        struct gnttab_unmap_grant_ref *u = (void *)a;
        for (unsigned int i = 0; i < GNT_ENTRIES; i++) {
            u[i].host_addr = balloon_gfn(0) << 12;
            u[i].handle = chance(50) ? below(8) : (uint32_t)rnd();
        }
        break;
    }
    case GNTTABOP_setup_table: {
        struct gnttab_setup_table *s = (void *)a;
        s->dom = chance(80) ? DOMID_SELF : random_domid();
        s->nr_frames = (uint32_t)random_count();
        set_xen_guest_handle(s->frame_list, (xen_pfn_t *)buffer(64 * 8));
        break;
    }
    case GNTTABOP_transfer: {
        struct gnttab_transfer *t = (void *)a;
        for (unsigned int i = 0; i < GNT_ENTRIES; i++) {
            t[i].mfn = balloon_gfn(0);
            t[i].domid = random_domid();
            t[i].ref = below(64);
        }
        break;
    }
    case GNTTABOP_copy: {
        struct gnttab_copy *c = (void *)a;
        for (unsigned int i = 0; i < GNT_ENTRIES; i++) {
            c[i].flags = (uint16_t)(chance(70) ? below(4) : rnd());
            c[i].source.domid = random_domid();
            c[i].dest.domid = random_domid();
            c[i].source.u.gmfn = chance(50) ? below(64) : (chance(50) ? scratch_gfn() : rnd());
            /* A gmfn destination is written: only scratch. */
            if (c[i].flags & GNTCOPY_dest_gref)
                c[i].dest.u.ref = below(64);
            else
                c[i].dest.u.gmfn = scratch_gfn();
            c[i].source.offset = (uint16_t)(chance(80) ? below(4096) : rnd());
            c[i].dest.offset = (uint16_t)(chance(80) ? below(4096) : rnd());
            c[i].len = (uint16_t)(chance(80) ? below(4097) : rnd());
        }
        break;
    }
    case GNTTABOP_unmap_and_replace: {
        struct gnttab_unmap_and_replace *u = (void *)a;
        for (unsigned int i = 0; i < GNT_ENTRIES; i++) {
            u[i].host_addr = balloon_gfn(0) << 12;
            u[i].new_addr = balloon_gfn(0) << 12;
            u[i].handle = (uint32_t)rnd();
        }
        break;
    }
    case GNTTABOP_get_status_frames: {
        struct gnttab_get_status_frames *g = (void *)a;
        g->nr_frames = (uint32_t)random_count();
        g->dom = chance(80) ? DOMID_SELF : random_domid();
        set_xen_guest_handle(g->frame_list, (uint64_t *)buffer(64 * 8));
        break;
    }
    case GNTTABOP_set_version: {
        struct gnttab_set_version *v = (void *)a;
        v->version = chance(80) ? 1 + below(2) : (uint32_t)rnd();
        break;
    }
    default:
        break;
    }
    /* A huge count walks the array on through memory (and Xen writes each status back): only with
     * a bad pointer. */
    if (chance(10) || count > GNT_ENTRIES)
        arg = bad_pointer();
    call(__HYPERVISOR_grant_table_op, op, arg, count, random_value(), random_value());
}

/* ---- event_channel_op ---- */
static uint32_t random_port(void)
{
    uint32_t p;
    do
        p = chance(85) ? below(64) : (uint32_t)rnd();
    while (p == console_port);
    return p;
}

static void fuzz_event_channel_op(void)
{
    unsigned int op = chance(92) ? below(14) : below(64);
    uint32_t *a = (uint32_t *)scratch_pointer(64);
    unsigned long arg = (unsigned long)a;

    switch (op) {
    case EVTCHNOP_close:
    case EVTCHNOP_bind_vcpu:
    case EVTCHNOP_unmask:
    case EVTCHNOP_set_priority:
        a[0] = random_port();
        a[1] = chance(80) ? below(4) : (uint32_t)rnd();
        break;
    case EVTCHNOP_reset:
    case 14: /* EVTCHNOP_reset_cont */ {
        /* Resetting our own channels would close the console; another domain's must be refused. */
        domid_t d;
        do
            d = (domid_t)(chance(80) ? below(12) : rnd());
        while (d == self_domid || d == DOMID_SELF);
        *(domid_t *)a = d;
        break;
    }
    case EVTCHNOP_init_control: {
        struct evtchn_init_control *c = (void *)a;
        c->control_gfn = chance(90) ? live_gfn() : (chance(50) ? balloon_gfn(0) : rnd());
        c->offset = chance(80) ? below(4096) & ~63u : (uint32_t)rnd();
        c->vcpu = chance(80) ? below(3) : (uint32_t)rnd();
        break;
    }
    case EVTCHNOP_expand_array: {
        struct evtchn_expand_array *e = (void *)a;
        e->array_gfn = chance(90) ? live_gfn() : (chance(50) ? balloon_gfn(0) : rnd());
        break;
    }
    case EVTCHNOP_bind_interdomain:
    case EVTCHNOP_alloc_unbound: {
        uint16_t *d = (uint16_t *)a;
        d[0] = random_domid();
        d[1] = random_domid();
        a[1] = random_port();
        break;
    }
    case EVTCHNOP_bind_virq:
    case EVTCHNOP_bind_ipi:
        a[0] = chance(80) ? below(24) : (uint32_t)rnd();
        a[1] = chance(80) ? below(3) : (uint32_t)rnd();
        break;
    default:
        break;
    }
    if (chance(10))
        arg = bad_pointer();
    call(__HYPERVISOR_event_channel_op, op, arg, random_value(), random_value(), random_value());
}

/* ---- vcpu_op ---- */
static void fuzz_vcpu_op(void)
{
    static const unsigned int ops[] = {
        VCPUOP_initialise, VCPUOP_down, VCPUOP_is_up, VCPUOP_get_runstate_info,
        VCPUOP_register_runstate_memory_area, VCPUOP_set_periodic_timer, VCPUOP_stop_periodic_timer,
        VCPUOP_set_singleshot_timer, VCPUOP_stop_singleshot_timer, VCPUOP_register_vcpu_info,
        VCPUOP_send_nmi, VCPUOP_get_physid, VCPUOP_register_vcpu_time_memory_area,
    };
    unsigned int op = chance(92) ? ops[below(sizeof ops / sizeof ops[0])] : 14 + below(50);
    unsigned int vcpu = chance(85) ? below(3) : (unsigned int)rnd();
    uint64_t *a = (uint64_t *)scratch_pointer(64);
    unsigned long arg = (unsigned long)a;

    switch (op) {
    case VCPUOP_down:
        if (vcpu == 0)      /* taking our only running vCPU down would freeze us */
            vcpu = 1;
        break;
    case VCPUOP_register_runstate_memory_area:
    case VCPUOP_register_vcpu_time_memory_area:
        /* The hypervisor keeps writing there on every switch: the live area or a bad address only. */
        a[0] = chance(80) ? live_pointer(64) : bad_pointer();
        break;
    case VCPUOP_register_vcpu_info: {
        struct vcpu_register_vcpu_info *v = (void *)a;
        v->mfn = chance(85) ? live_gfn() : rnd();
        v->offset = chance(80) ? below(4096) & ~63u : (uint32_t)rnd();
        break;
    }
    case VCPUOP_set_singleshot_timer:
    case VCPUOP_set_periodic_timer:
        a[0] = chance(50) ? below(1000000) : rnd();
        a[1] = chance(80) ? below(2) : rnd();
        break;
    default:
        break;
    }
    if (chance(10))
        arg = bad_pointer();
    call(__HYPERVISOR_vcpu_op, op, vcpu, arg, random_value(), random_value());
}

/* ---- sched_op: never shutdown, remote shutdown of ourselves, watchdog or untimed block/poll ---- */
static void fuzz_sched_op(void)
{
    unsigned long arg = scratch_pointer(64);
    unsigned int op;
    switch (below(6)) {
    case 0:
        op = SCHEDOP_yield;
        break;
    case 1: {
        op = SCHEDOP_poll;
        struct sched_poll *p = (void *)arg;
        uint32_t *ports = (uint32_t *)scratch_pointer(16 * 4);
        set_xen_guest_handle(p->ports, chance(85) ? ports : (uint32_t *)bad_pointer());
        p->nr_ports = chance(85) ? below(4) + 1 : (unsigned int)rnd();
        p->timeout = 1 + below(1000);   /* absolute system time long past: returns at once */
        break;
    }
    case 2: {
        op = SCHEDOP_remote_shutdown;
        struct sched_remote_shutdown *r = (void *)arg;
        do
            r->domain_id = (domid_t)(chance(80) ? below(12) : rnd());
        while (r->domain_id == self_domid || r->domain_id == DOMID_SELF);
        r->reason = below(6);
        break;
    }
    case 3:
        op = SCHEDOP_shutdown_code;
        break;
    case 4:
        op = SCHEDOP_pin_override;
        break;
    default:
        op = 8 + below(56);
        break;
    }
    if (op != SCHEDOP_poll && op != SCHEDOP_remote_shutdown && chance(20))
        arg = bad_pointer();
    call(__HYPERVISOR_sched_op, op, arg, random_value(), random_value(), random_value());
}

/* ---- hvm_op ---- */
static void fuzz_hvm_op(void)
{
    /* Parameters a guest may set on itself without losing its console or its pages. */
    static const unsigned int settable[] = {
        HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_VIRIDIAN, HVM_PARAM_TIMER_MODE, HVM_PARAM_HPET_ENABLED,
        HVM_PARAM_VPT_ALIGN, HVM_PARAM_ACPI_IOPORTS_LOCATION,
        4 /* PAE_ENABLED */, 13 /* DM_DOMAIN */, 20 /* MEMORY_EVENT_CR0 */, 24 /* NESTEDHVM */, 26 /* BUFIOREQ_EVTCHN */,
        HVM_PARAM_TRIPLE_FAULT_REASON, HVM_PARAM_ALTP2M, HVM_PARAM_X87_FIP_WIDTH, HVM_PARAM_MCA_CAP,
    };
    static const unsigned int ops[] = {
        HVMOP_set_param, HVMOP_get_param, 2 /* set_pci_intx_level */, 3 /* set_isa_irq_level */,
        4 /* set_pci_link_route */, HVMOP_flush_tlbs, HVMOP_pagetable_dying, HVMOP_get_time,
        HVMOP_get_mem_type, HVMOP_set_evtchn_upcall_vector,
    };
    unsigned int op = chance(90) ? ops[below(sizeof ops / sizeof ops[0])] : 26 + below(38);
    struct xen_hvm_param *p = (void *)scratch_pointer(64);
    unsigned long arg = (unsigned long)p;

    if (op == HVMOP_set_param || op == HVMOP_get_param) {
        p->domid = chance(80) ? DOMID_SELF : random_domid();
        if (op == HVMOP_set_param)
            p->index = chance(85) ? settable[below(sizeof settable / sizeof settable[0])] : HVM_NR_PARAMS + (uint32_t)below(1u << 31);
        else
            p->index = chance(85) ? below(HVM_NR_PARAMS) : (uint32_t)rnd();
        p->value = random_value();
        if (op == HVMOP_set_param && p->domid != DOMID_SELF && p->domid == self_domid)
            p->domid = DOMID_SELF;   /* the same list applies to us by number */
    }
    if (chance(10))
        arg = bad_pointer();
    call(__HYPERVISOR_hvm_op, op, arg, random_value(), random_value(), random_value());
}

/* ---- the others ---- */
static void fuzz_xen_version(void)
{
    unsigned int op = chance(90) ? below(12) : (unsigned int)rnd();
    call(__HYPERVISOR_xen_version, op, buffer(1024), random_value(), random_value(), random_value());
}

static void fuzz_console_io(void)
{
    /* Huge writes only from bad addresses: tens of MiB of our RAM would flood the hypervisor
     * console and stall this vCPU for nothing. */
    if (chance(50))
        call(__HYPERVISOR_console_io, CONSOLEIO_write, chance(50) ? 0 : random_value(), bad_pointer(), 0, 0);
    else
        call(__HYPERVISOR_console_io, chance(80) ? CONSOLEIO_read : below(64), below(256), buffer(256),
             random_value(), random_value());
}

static void fuzz_any(void)
{
    unsigned int nr;
    /* sched_op_compat can shut us down, multicall can run anything, event_channel_op_compat can
     * close the console; those are covered through their modern forms above. */
    do
        nr = below(64);
    while (nr == __HYPERVISOR_sched_op_compat || nr == __HYPERVISOR_multicall || nr == 16);
    switch (nr) {
    case __HYPERVISOR_memory_op: fuzz_memory_op(); return;
    case __HYPERVISOR_grant_table_op: fuzz_grant_table_op(); return;
    case __HYPERVISOR_vcpu_op: fuzz_vcpu_op(); return;
    case __HYPERVISOR_sched_op: fuzz_sched_op(); return;
    case __HYPERVISOR_event_channel_op: fuzz_event_channel_op(); return;
    case __HYPERVISOR_hvm_op: fuzz_hvm_op(); return;
    case __HYPERVISOR_console_io: fuzz_console_io(); return;
    default: break;
    }
    unsigned long a1 = random_value();
    if (nr == __HYPERVISOR_domctl || nr == __HYPERVISOR_sysctl) {
        /* Get past the interface version check so the permission checks are what answers. */
        uint32_t *d = (uint32_t *)scratch_pointer(256);
        d[0] = below(100);
        d[1] = chance(70) ? 0x15 : (uint32_t)rnd();
        ((uint16_t *)d)[4] = (uint16_t)(chance(80) ? below(12) : rnd());
        a1 = (unsigned long)d;
    }
    call(nr, a1, random_value(), random_value(), random_value(), random_value());
}

extern const uint8_t __image_start[];
#define TEXT_BYTES 0x8000

static uint8_t text_copy[TEXT_BYTES];

static uint64_t text_sum(void)
{
    const uint64_t *p = (const uint64_t *)__image_start;
    uint64_t h = 0;
    for (unsigned int i = 0; i < TEXT_BYTES / 8; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static void ignore_interrupt(struct rt_frame *f)
{
    (void)f;
    ignored_irqs++;
    if (f->vector >= 32)
        rt_lapic_eoi();
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("fuzz.survived", "no Xen");
        return;
    }
    const char *s = rt_cmdline_value("seed");
    rng_state = s ? rt_strtoul(s, NULL, 0) : 1;
    if (rng_state == 0)
        rng_state = 0x9E3779B97F4A7C15ull;
    s = rt_cmdline_value("secs");
    unsigned long secs = s ? rt_strtoul(s, NULL, 0) : 60;

    s = rt_cmdline_value("trace");
    if (s) {
        trace_from = rt_strtoul(s, NULL, 0);
        rt_console_sinks |= RT_SINK_PORT_E9;   /* the trace survives a broken PV console */
    }

    uint64_t port = 0;
    rt_hvm_get_param(HVM_PARAM_CONSOLE_EVTCHN, &port);
    console_port = port ? (uint32_t)port : ~0u;
    if (rt_domid(&self_domid) < 0)
        self_domid = DOMID_SELF;
    rt_printf("# fuzz seed=%lu secs=%lu domid=%u console_port=%u\n", (unsigned long)rng_state, secs,
              self_domid, console_port);

    rt_cli();
    rt_set_handler(2, ignore_interrupt);
    for (unsigned int v = 32; v < 256; v++)
        if (v != RT_USER_EXIT_VECTOR)
            rt_set_handler(v, ignore_interrupt);

    memset((void *)SCRATCH_BASE, 0, (SCRATCH_PAGES + LIVE_PAGES) * 4096ul);
    const uint64_t text = text_sum();
    memcpy(text_copy, __image_start, TEXT_BYTES);
    int intact = 1;
    uint64_t end = rt_deadline((unsigned int)(secs * 1000));
    unsigned long next_report = 16384;
    while (!rt_expired(end)) {
        if (below(4) == 0)
            fill_scratch();
        switch (below(20)) {
        case 0: case 1: fuzz_memory_op(); break;
        case 2: case 3: fuzz_xen_version(); break;
        case 4: fuzz_console_io(); break;
        case 5: case 6: fuzz_grant_table_op(); break;
        case 7: call(__HYPERVISOR_vm_assist, random_value(), random_value(), 0, 0, 0); break;
        case 8: case 9: fuzz_vcpu_op(); break;
        case 10: fuzz_sched_op(); break;
        case 11: case 12: case 13: fuzz_event_channel_op(); break;
        case 14: case 15: fuzz_hvm_op(); break;
        default: fuzz_any(); break;
        }
        if ((calls & 255) == 0)
            scrub((uint64_t *)SCRATCH_BASE, SCRATCH_PAGES * 512);
        if ((calls & 255) == 0 && intact && text_sum() != text) {
            intact = 0;
            rt_console_sinks |= RT_SINK_PORT_E9;
            unsigned int first = 0, last = 0;
            for (unsigned int i = 0; i < TEXT_BYTES; i++)
                if (__image_start[i] != text_copy[i]) {
                    if (!last)
                        first = i;
                    last = i + 1;
                }
            rt_fail("fuzz.image_intact", "our code changed at +%#x..+%#x within the last 256 calls (before call %lu)",
                    first, last, calls);
            for (unsigned int i = first; i < last && i < first + 64; i++)
                rt_printf("%02x", __image_start[i]);
            rt_printf("\n");
            for (unsigned int i = 0; i < 256; i++) {
                const uint64_t *c = recent[(calls + i) % 256];
                rt_printf("# recent %u(%#lx, %#lx, %#lx, %#lx, %#lx)\n", (unsigned int)c[0], (unsigned long)c[1],
                          (unsigned long)c[2], (unsigned long)c[3], (unsigned long)c[4], (unsigned long)c[5]);
            }
        }
        if (calls >= next_report) {
            rt_printf("# fuzz calls=%lu errors=%lu\n", calls, errors);
            next_report += 16384;
        }
    }
    rt_printf("# fuzz calls=%lu errors=%lu ignored_interrupts=%lu\n", calls, errors, ignored_irqs);
    /* A reason stored by SCHEDOP_shutdown_code wins over the one we shut down with: store poweroff
     * last, or a stray suspend, reboot or crash code decides how this run ends. */
    struct sched_shutdown off = { .reason = SHUTDOWN_poweroff };
    rt_check("fuzz.shutdown_code", rt_hypercall(__HYPERVISOR_sched_op, SCHEDOP_shutdown_code, (uint64_t)&off, 0, 0, 0) == 0,
             "SCHEDOP_shutdown_code refused poweroff");
    if (intact)
        rt_check("fuzz.image_intact", text_sum() == text, "our code changed");
    rt_check("fuzz.survived", calls > 0, "no hypercall was made");
}
