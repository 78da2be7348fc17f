/* Event channels with the FIFO ABI: control block and event array set-up, delivery through the
 * callback vector, queue consumption, masking, priorities, and Xen's errors. */
#include "rt.h"

RT_GUEST("evtchnfifo");

#define WORDS_PER_PAGE 1024
#define BIT(n) (1u << (n))

static uint8_t control_page[4096] __attribute__((aligned(4096)));
static volatile event_word_t event_array[WORDS_PER_PAGE] __attribute__((aligned(4096)));
static volatile struct evtchn_fifo_control_block *cb;
static uint32_t local_head[EVTCHN_FIFO_MAX_QUEUES];

static volatile unsigned int hits[WORDS_PER_PAGE];
static volatile unsigned int hit_queue[WORDS_PER_PAGE];
static volatile evtchn_port_t awaited;
static volatile int seen;

/* Clear LINKED (and the link) atomically, returning the link: the next event of the queue. */
static uint32_t clear_linked(volatile event_word_t *w)
{
    event_word_t old = *w, new;
    do
        new = old & ~(BIT(EVTCHN_FIFO_LINKED) | EVTCHN_FIFO_LINK_MASK);
    while (!__atomic_compare_exchange_n(w, &old, new, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old & EVTCHN_FIFO_LINK_MASK;
}

static void consume(unsigned int q, uint32_t *ready)
{
    uint32_t head = local_head[q];
    if (!head)
        head = cb->head[q];
    evtchn_port_t port = head;
    if (port >= WORDS_PER_PAGE)
        return;
    volatile event_word_t *w = &event_array[port];
    head = clear_linked(w);
    if (!head)
        *ready &= ~BIT(q);
    event_word_t v = *w;
    if ((v & BIT(EVTCHN_FIFO_PENDING)) && !(v & BIT(EVTCHN_FIFO_MASKED))) {
        __atomic_fetch_and(w, ~BIT(EVTCHN_FIFO_PENDING), __ATOMIC_SEQ_CST);
        hits[port]++;
        hit_queue[port] = q;
        if (port == awaited)
            seen = 1;
    }
    local_head[q] = head;
}

static void on_upcall(void)
{
    uint32_t ready = __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    for (int guard = 0; ready && guard < 10000; guard++) {
        consume((unsigned int)__builtin_ctz(ready), &ready);
        ready |= __atomic_exchange_n(&cb->ready, 0, __ATOMIC_SEQ_CST);
    }
}

static long evtchn_op(int cmd, void *arg)
{
    return HYPERVISOR_event_channel_op(cmd, arg);
}

static long send(evtchn_port_t port)
{
    struct evtchn_send s = { .port = port };
    return evtchn_op(EVTCHNOP_send, &s);
}

static void unmask(evtchn_port_t port)
{
    __atomic_fetch_and(&event_array[port], ~BIT(EVTCHN_FIFO_MASKED), __ATOMIC_SEQ_CST);
    if (event_array[port] & BIT(EVTCHN_FIFO_PENDING)) {
        struct evtchn_unmask um = { .port = port };
        evtchn_op(EVTCHNOP_unmask, &um);
    }
}

static int send_and_wait(evtchn_port_t via, evtchn_port_t expect, long *rc, uint64_t timeout_ns)
{
    awaited = expect;
    seen = 0;
    *rc = send(via);
    return rt_wait_for(&seen, timeout_ns);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("evtchnfifo.all", "no Xen");
        return;
    }
    long rc = rt_events_init(on_upcall);
    if (!rt_check("evtchnfifo.callback_vector", rc == 0, "shared_info/HVM_PARAM_CALLBACK_IRQ rc %ld", rc))
        return;

    struct evtchn_init_control ic = { .control_gfn = (uintptr_t)control_page >> 12, .offset = 4, .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    if (rc == -XEN_ENOSYS) {
        rt_skip("evtchnfifo.all", "EVTCHNOP_init_control: -ENOSYS (no FIFO ABI)");
        return;
    }
    rt_check_eq("evtchnfifo.init_control_misaligned_offset", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    ic.offset = 4096 - 8;
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    rt_check_eq("evtchnfifo.init_control_offset_past_page", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    ic.offset = 0;
    ic.vcpu = 1000;
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    rt_check_eq("evtchnfifo.init_control_no_such_vcpu", (uint64_t)rc, (uint64_t)-XEN_ENOENT);

    /* Every event starts masked, as the ABI expects of a new array page. */
    for (int i = 0; i < WORDS_PER_PAGE; i++)
        event_array[i] = BIT(EVTCHN_FIFO_MASKED);
    ic.vcpu = 0;
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    rt_check("evtchnfifo.init_control", rc == 0 && ic.link_bits == EVTCHN_FIFO_LINK_BITS, "rc %ld link_bits %u",
             rc, ic.link_bits);
    if (rc)
        return;
    cb = (volatile struct evtchn_fifo_control_block *)control_page;
    rc = evtchn_op(EVTCHNOP_init_control, &ic);
    rt_check_eq("evtchnfifo.init_control_twice", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    struct evtchn_expand_array ea = { .array_gfn = (uintptr_t)event_array >> 12 };
    rc = evtchn_op(EVTCHNOP_expand_array, &ea);
    rt_check_eq("evtchnfifo.expand_array", (uint64_t)rc, 0);

    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_bind_ipi, &ipi);
    rt_check("evtchnfifo.bind_ipi", rc == 0 && ipi.port > 0 && ipi.port < WORDS_PER_PAGE, "rc %ld port %u", rc,
             ipi.port);
    if (rc || ipi.port >= WORDS_PER_PAGE)
        return;
    unmask(ipi.port);
    int ok = send_and_wait(ipi.port, ipi.port, &rc, 1000000000ull);
    rt_check("evtchnfifo.ipi_upcall", rc == 0 && ok && hit_queue[ipi.port] == EVTCHN_FIFO_PRIORITY_DEFAULT,
             "send rc %ld delivered %d queue %u", rc, ok, hit_queue[ipi.port]);
    rt_check("evtchnfifo.event_word_consumed", !(event_array[ipi.port] & (BIT(EVTCHN_FIFO_PENDING) | BIT(EVTCHN_FIFO_LINKED))),
             "word %#x", event_array[ipi.port]);

    /* masked: PENDING set, not linked, not delivered; unmask re-raises */
    __atomic_fetch_or(&event_array[ipi.port], BIT(EVTCHN_FIFO_MASKED), __ATOMIC_SEQ_CST);
    unsigned int before = hits[ipi.port];
    send_and_wait(ipi.port, ipi.port, &rc, 50000000ull);
    event_word_t w = event_array[ipi.port];
    rt_check("evtchnfifo.masked_not_delivered", rc == 0 && hits[ipi.port] == before && (w & BIT(EVTCHN_FIFO_PENDING)) &&
             !(w & BIT(EVTCHN_FIFO_LINKED)), "rc %ld delivered %u word %#x", rc, hits[ipi.port] - before, w);
    awaited = ipi.port;
    seen = 0;
    unmask(ipi.port);
    ok = rt_wait_for(&seen, 1000000000ull);
    rt_check("evtchnfifo.unmask_reraises", ok, "not delivered after EVTCHNOP_unmask, word %#x", event_array[ipi.port]);

    /* priorities */
    struct evtchn_set_priority sp = { .port = ipi.port, .priority = EVTCHN_FIFO_PRIORITY_MAX + 2 };
    rc = evtchn_op(EVTCHNOP_set_priority, &sp);
    rt_check_eq("evtchnfifo.set_priority", (uint64_t)rc, 0);
    ok = send_and_wait(ipi.port, ipi.port, &rc, 1000000000ull);
    rt_check("evtchnfifo.priority_queue", ok && hit_queue[ipi.port] == EVTCHN_FIFO_PRIORITY_MAX + 2,
             "delivered %d on queue %u", ok, hit_queue[ipi.port]);
    sp.priority = EVTCHN_FIFO_MAX_QUEUES;
    rc = evtchn_op(EVTCHNOP_set_priority, &sp);
    rt_check_eq("evtchnfifo.set_priority_out_of_range", (uint64_t)rc, (uint64_t)-XEN_EINVAL);

    /* loopback interdomain channel under FIFO */
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    rc = evtchn_op(EVTCHNOP_alloc_unbound, &au);
    struct evtchn_bind_interdomain bi = { .remote_dom = DOMID_SELF, .remote_port = au.port };
    long rc2 = evtchn_op(EVTCHNOP_bind_interdomain, &bi);
    if (rt_check("evtchnfifo.bind_interdomain_loopback", rc == 0 && rc2 == 0 && au.port < WORDS_PER_PAGE &&
                 bi.local_port < WORDS_PER_PAGE, "alloc rc %ld port %u, bind rc %ld port %u", rc, au.port, rc2,
                 bi.local_port)) {
        unmask(au.port);
        unmask(bi.local_port);
        ok = send_and_wait(bi.local_port, au.port, &rc, 1000000000ull);
        rt_check("evtchnfifo.interdomain_send", rc == 0 && ok, "send rc %ld delivered %d", rc, ok);
    }

    struct evtchn_close cl = { .port = ipi.port };
    rc = evtchn_op(EVTCHNOP_close, &cl);
    rt_check_eq("evtchnfifo.close", (uint64_t)rc, 0);
    rc = send(ipi.port);
    rt_check_eq("evtchnfifo.send_closed", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
}
