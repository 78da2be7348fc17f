/*
 * Argo between two test guests (argo_op, Xen 4.14's ABI). role=hub registers a ring open to any domain (which
 * needs Argo's mac-permissive), waits for eight messages, checks each (sender, type, contents, and that VIRQ_ARGO
 * was raised) and sends it back to the sender's port. role=spoke hub=DOMID registers a ring for the hub alone,
 * sends the eight messages in two pieces each (retrying while the hub has no ring or its small ring is full) and
 * checks the echoes, plus the errors Xen gives. Without a role, argo_op must be refused: Argo is off by default.
 * Run by the integration tests, not on its own.
 */
#include "rt.h"
#include <xen/argo.h>
#include <xen/event_channel.h>

RT_GUEST("argo");

#define MESSAGES 8
#define RING_LEN 256 /* small, so that the messages wrap round it */
#define HUB_PORT 0xa0
#define SPOKE_PORT 0xb0

static uint8_t ring_page[4096] __attribute__((aligned(4096)));
static volatile xen_argo_ring_t *const ring = (volatile xen_argo_ring_t *)ring_page;

static long argo_op(unsigned int cmd, void *a1, void *a2, unsigned long a3, unsigned long a4)
{
    return rt_hypercall(__HYPERVISOR_argo_op, cmd, (unsigned long)a1, (unsigned long)a2, a3, a4);
}

static long register_ring(uint32_t aport, domid_t partner, uint32_t len, unsigned long flags)
{
    xen_argo_register_ring_t reg = { .aport = aport, .partner_id = partner, .len = len };
    xen_argo_gfn_t gfn = (uintptr_t)ring_page >> 12;
    return argo_op(XEN_ARGO_OP_register_ring, &reg, &gfn, 1, flags);
}

static long send(domid_t to, uint32_t to_port, uint32_t from_port, const char *a, size_t alen, const char *b, size_t blen,
                 uint32_t type)
{
    xen_argo_send_addr_t addr = { .src = { .aport = from_port, .domain_id = XEN_ARGO_DOMID_ANY },
                                  .dst = { .aport = to_port, .domain_id = to } };
    xen_argo_iov_t iov[2] = { { .iov_hnd = { .p = (uint8_t *)a }, .iov_len = (uint32_t)alen },
                              { .iov_hnd = { .p = (uint8_t *)b }, .iov_len = (uint32_t)blen } };
    return argo_op(XEN_ARGO_OP_sendv, &addr, iov, 2, type);
}

/* Sends, retrying while the destination has no ring yet or no room (another guest, running at its own pace). */
static long send_retrying(domid_t to, uint32_t to_port, uint32_t from_port, const char *a, size_t alen, const char *b,
                          size_t blen, uint32_t type)
{
    static volatile int never;
    long rc;
    for (int tries = 0; tries < 6000; tries++) {
        rc = send(to, to_port, from_port, a, alen, b, blen, type);
        if (rc != -XEN_ECONNREFUSED && rc != -XEN_EAGAIN)
            return rc;
        rt_wait_for(&never, 20000000);
    }
    return rc;
}

struct message {
    domid_t from;
    uint32_t from_port, type, len;
    char data[64];
};

/* Takes the next message off the ring, waiting up to two minutes; 0 when none came. */
static int receive(struct message *m)
{
    static volatile int never;
    for (int tries = 0; tries < 6000 && ring->rx_ptr == __atomic_load_n(&ring->tx_ptr, __ATOMIC_ACQUIRE); tries++)
        rt_wait_for(&never, 20000000);
    uint32_t rx = ring->rx_ptr;
    if (rx == ring->tx_ptr)
        return 0;
    struct xen_argo_ring_message_header h;
    memcpy(&h, (const void *)&ring->ring[rx], sizeof(h));
    m->from = h.source.domain_id;
    m->from_port = h.source.aport;
    m->type = h.message_type;
    m->len = h.len - (uint32_t)sizeof(h);
    for (uint32_t i = 0; i < m->len && i < sizeof(m->data) - 1; i++)
        m->data[i] = (char)ring->ring[(rx + sizeof(h) + i) % RING_LEN];
    m->data[m->len < sizeof(m->data) - 1 ? m->len : sizeof(m->data) - 1] = 0;
    __atomic_store_n(&ring->rx_ptr, (rx + ((h.len + XEN_ARGO_MSG_SLOT_SIZE - 1) & ~(XEN_ARGO_MSG_SLOT_SIZE - 1))) % RING_LEN,
                     __ATOMIC_RELEASE);
    return 1;
}

static void hub(void)
{
    rt_check_eq("argo.hub_register", (uint64_t)register_ring(HUB_PORT, XEN_ARGO_DOMID_ANY, RING_LEN, 0), 0);
    rt_check_eq("argo.map_shared_info", (uint64_t)rt_map_shared_info(), 0);
    struct evtchn_bind_virq bv = { .virq = VIRQ_ARGO, .vcpu = 0 };
    rt_check_eq("argo.bind_virq", (uint64_t)HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bv), 0);
    rt_printf("# ready hub port=%#x\n", HUB_PORT);
    unsigned int good = 0;
    domid_t first = 0;
    for (int i = 0; i < MESSAGES; i++) {
        struct message m;
        if (!receive(&m)) {
            rt_fail("argo.hub_received", "message %d never came", i);
            break;
        }
        if (i == 0) {
            first = m.from;
            rt_check("argo.virq_raised", rt_evtchn_2l_pending(bv.port), "VIRQ_ARGO port %u not pending", bv.port);
        }
        char want[64];
        rt_snprintf(want, sizeof(want), "argo message %d", i);
        int ok = m.from == first && m.from_port == SPOKE_PORT && m.type == 0x100u + (unsigned)i && !strcmp(m.data, want);
        if (!ok)
            rt_fail("argo.hub_message", "got \"%s\" type %#x from d%u port %#x", m.data, m.type, m.from, m.from_port);
        good += ok;
        rt_printf("# hub got \"%s\" type=%#x from=%u\n", m.data, m.type, m.from);
        long rc = send_retrying(m.from, m.from_port, HUB_PORT, m.data, m.len, "", 0, m.type + 0x1000);
        if (rc != (long)m.len)
            rt_fail("argo.hub_echo", "sendv gave %ld", rc);
    }
    rt_check_eq("argo.hub_messages", good, MESSAGES);
    rt_check_eq("argo.hub_unregister", (uint64_t)argo_op(XEN_ARGO_OP_unregister_ring,
        &(xen_argo_unregister_ring_t){ .aport = HUB_PORT, .partner_id = XEN_ARGO_DOMID_ANY }, NULL, 0, 0), 0);
}

static void spoke(domid_t hub_id)
{
    rt_check_eq("argo.spoke_register", (uint64_t)register_ring(SPOKE_PORT, hub_id, RING_LEN, 0), 0);
    /* What Xen refuses: the same ring again with FAIL_EXIST, a length that is not whole slots, a ring nobody has,
     * a message to a port with no ring, an unknown op. */
    rt_check_eq("argo.fail_exist", (uint64_t)register_ring(SPOKE_PORT, hub_id, RING_LEN, XEN_ARGO_REGISTER_FLAG_FAIL_EXIST),
                (uint64_t)-XEN_EEXIST);
    rt_check_eq("argo.bad_length", (uint64_t)register_ring(SPOKE_PORT + 1, hub_id, RING_LEN + 8, 0), (uint64_t)-XEN_EINVAL);
    rt_check_eq("argo.unregister_unknown", (uint64_t)argo_op(XEN_ARGO_OP_unregister_ring,
        &(xen_argo_unregister_ring_t){ .aport = 0x777, .partner_id = hub_id }, NULL, 0, 0), (uint64_t)-XEN_ENOENT);
    rt_check_eq("argo.no_ring", (uint64_t)send(hub_id, 0x777, SPOKE_PORT, "x", 1, "", 0, 0), (uint64_t)-XEN_ECONNREFUSED);
    rt_check_eq("argo.unknown_op", (uint64_t)argo_op(99, NULL, NULL, 0, 0), (uint64_t)-XEN_EOPNOTSUPP);

    unsigned int sent = 0, echoed = 0;
    for (int i = 0; i < MESSAGES; i++) {
        char text[64];
        int n = rt_snprintf(text, sizeof(text), "argo message %d", i);
        long rc = send_retrying(hub_id, HUB_PORT, SPOKE_PORT, text, 5, text + 5, (size_t)n - 5, 0x100u + (unsigned)i);
        sent += rc == n;
        if (rc != n)
            rt_fail("argo.spoke_send", "message %d: sendv gave %ld", i, rc);
        struct message m;
        if (!receive(&m)) {
            rt_fail("argo.spoke_echo", "no echo of message %d", i);
            break;
        }
        int ok = m.from == hub_id && m.from_port == HUB_PORT && m.type == 0x1100u + (unsigned)i && !strcmp(m.data, text);
        if (!ok)
            rt_fail("argo.spoke_echo", "got \"%s\" type %#x from d%u port %#x", m.data, m.type, m.from, m.from_port);
        echoed += ok;
    }
    rt_check_eq("argo.spoke_sent", sent, MESSAGES);
    rt_check_eq("argo.spoke_echoes", echoed, MESSAGES);
    rt_printf("# spoke exchanged %u messages with d%u\n", echoed, hub_id);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("argo.all", "no Xen");
        return;
    }
    const char *role = rt_cmdline_value("role");
    if (!role) {
        rt_check_eq("argo.off_by_default", (uint64_t)register_ring(HUB_PORT, 0, RING_LEN, 0), (uint64_t)-XEN_EOPNOTSUPP);
        return;
    }
    if (!strncmp(role, "hub", 3)) {
        hub();
        return;
    }
    const char *h = rt_cmdline_value("hub");
    unsigned long id = 0;
    while (h && *h >= '0' && *h <= '9')
        id = id * 10 + (unsigned long)(*h++ - '0');
    spoke((domid_t)id);
}
