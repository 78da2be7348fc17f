/* Two guests set up an event channel and grants between themselves, as a vchan or a split driver does.
 *
 * cmdline: peer=N (a domid), or peer=+K / peer=-K (relative to our own); expect=allow (the default) or deny.
 * Each guest grants the peer a page of its own and copies the peer's page through the peer's grant. The guest of the
 * lower domid allocates an unbound port for the peer, which the other finds and binds; each signals the other once
 * it has copied, and waits for the peer's signal before it finishes, so that its grant outlives the peer's copy.
 * With expect=deny (a security policy keeping the two apart) the channel and the copy must be refused: the port's
 * allocation with EACCES, the copy with GNTST_permission_denied; the guest then stays until it is destroyed, so that
 * the peer finds it there. */
#include "rt.h"
#include <xen/grant_table.h>
#include <xen/memory.h>

RT_GUEST("peers");

#define REF_PEER 12
#define WAIT_NS (60ull * 1000000000ull)

static uint8_t gnttab_frame[4096] __attribute__((aligned(4096)));
static uint8_t mine[4096] __attribute__((aligned(4096)));
static uint8_t theirs[4096] __attribute__((aligned(4096)));

/* Every port's event is remembered: the peer may signal before we know which port is ours to wait on. */
#define MAX_PORTS 64
static volatile int seen[MAX_PORTS];

static void on_port(evtchn_port_t p)
{
    if (p < MAX_PORTS)
        seen[p] = 1;
}

static void on_upcall(void)
{
    rt_evtchn_2l_dispatch(on_port);
}

static void pause_ms(unsigned int ms)
{
    static volatile int never;
    rt_wait_for(&never, (uint64_t)ms * 1000000ull);
}

/* Allocates a port for the peer, waiting for the peer to exist (until it does the answer is EPERM with a security
 * policy, which labels the port by both ends, and ESRCH without one). */
static long alloc_for_peer(domid_t peer, evtchn_port_t *port)
{
    long rc;
    uint64_t end = rt_xen_time_ns() + WAIT_NS;
    do {
        struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = peer };
        rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au);
        *port = au.port;
        if (rc != -XEN_EPERM && rc != -XEN_ESRCH)
            break;
        pause_ms(20);
    } while (rt_xen_time_ns() < end);
    return rc;
}

static long parse_peer(domid_t self, long *out)
{
    const char *s = rt_cmdline_value("peer");
    if (!s)
        return -1;
    int sign = 0;
    if (*s == '+' || *s == '-')
        sign = *s++ == '+' ? 1 : -1;
    long v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    *out = sign ? (long)self + sign * v : v;
    return 0;
}

static void fill(uint8_t *page, domid_t from)
{
    for (int i = 0; i < 4096; i++)
        page[i] = (uint8_t)(i * 13 + from * 31 + 5);
}

/* Copies the peer's granted page into `theirs`; retries while the peer has not granted it yet, or is not there yet. */
static int16_t copy_from_peer(domid_t peer)
{
    struct gnttab_copy c;
    for (int tries = 0; tries < 1000; tries++) {
        c = (struct gnttab_copy){
            .source = { .u.ref = REF_PEER, .domid = peer },
            .dest = { .u.gmfn = (uintptr_t)theirs >> 12, .domid = DOMID_SELF },
            .len = 4096, .flags = GNTCOPY_source_gref,
        };
        long rc = HYPERVISOR_grant_table_op(GNTTABOP_copy, &c, 1);
        if (rc)
            return (int16_t)rc;
        if (c.status != GNTST_general_error && c.status != GNTST_bad_domain)
            break;
        pause_ms(20);
    }
    return c.status;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("peers.all", "no Xen");
        return;
    }
    domid_t self;
    long peer_id = 0;
    if (!rt_check("peers.own_domid", rt_domid(&self) == 0, "EVTCHNOP_status of our own port failed"))
        return;
    if (!rt_check("peers.cmdline", parse_peer(self, &peer_id) == 0 && peer_id > 0 && peer_id < 0x7ff0 &&
                  peer_id != self, "peer=%s", rt_cmdline_value("peer") ? rt_cmdline_value("peer") : "(none)"))
        return;
    domid_t peer = (domid_t)peer_id;
    const char *e = rt_cmdline_value("expect");
    int deny = e && !strncmp(e, "deny", 4);
    rt_printf("# d%u with peer d%u, expecting %s\n", self, peer, deny ? "deny" : "allow");

    long rc = rt_events_init(on_upcall);
    if (!rt_check("peers.callback_vector", rc == 0, "rc %ld", rc))
        return;
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .idx = 0, .gpfn = (uintptr_t)gnttab_frame >> 12,
    };
    rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
    if (!rt_check("peers.grant_table", rc == 0, "XENMEM_add_to_physmap(grant_table) rc %ld", rc))
        return;
    fill(mine, self);
    volatile grant_entry_v1_t *g = (volatile grant_entry_v1_t *)gnttab_frame + REF_PEER;
    g->frame = (uint32_t)((uintptr_t)mine >> 12);
    g->domid = peer;
    __asm__ volatile("" ::: "memory");
    g->flags = GTF_permit_access | GTF_readonly;

    evtchn_port_t port = 0;
    if (deny) {
        rc = alloc_for_peer(peer, &port);
        rt_check("peers.channel_refused", rc == -XEN_EACCES, "EVTCHNOP_alloc_unbound for d%u: rc %ld", peer, rc);
        int16_t st = copy_from_peer(peer);
        rt_check("peers.grant_copy_refused", st == GNTST_permission_denied, "GNTTABOP_copy from d%u: status %d", peer, st);
        rt_printf("# d%u kept apart from d%u\n", self, peer);
        pause_ms(120000);
        return;
    }

    /* The channel: the lower domid offers a port, the other finds it by binding each port in turn. */
    if (self < peer) {
        rc = alloc_for_peer(peer, &port);
        if (!rt_check("peers.alloc_unbound", rc == 0, "EVTCHNOP_alloc_unbound for d%u: rc %ld", peer, rc))
            return;
        struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
        uint64_t end = rt_xen_time_ns() + WAIT_NS;
        while ((rc = HYPERVISOR_event_channel_op(EVTCHNOP_status, &st)) == 0 && st.status == EVTCHNSTAT_unbound &&
               rt_xen_time_ns() < end)
            pause_ms(20);
        if (!rt_check("peers.peer_bound", rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == peer,
                      "port %u: rc %ld status %u", port, rc, st.status))
            return;
    } else {
        uint64_t end = rt_xen_time_ns() + WAIT_NS;
        rc = -XEN_EINVAL;
        while (!port && rt_xen_time_ns() < end) {
            for (evtchn_port_t q = 1; q < 64 && !port; q++) {
                struct evtchn_bind_interdomain bi = { .remote_dom = peer, .remote_port = q };
                rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_interdomain, &bi);
                if (rc == 0)
                    port = bi.local_port;
                else if (rc != -XEN_EINVAL)
                    break;
            }
            if (!port && rc != -XEN_EINVAL)
                break;
            if (!port)
                pause_ms(20);
        }
        if (!rt_check("peers.bind_interdomain", port != 0, "no port of d%u bound: last rc %ld", peer, rc))
            return;
    }
    rt_printf("# channel on port %u\n", port);

    int16_t st = copy_from_peer(peer);
    int same = st == GNTST_okay;
    for (int i = 0; same && i < 4096; i++)
        same = theirs[i] == (uint8_t)(i * 13 + peer * 31 + 5);
    rt_check("peers.grant_copy", same, "GNTTABOP_copy from d%u: status %d", peer, st);

    struct evtchn_send s = { .port = port };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_send, &s);
    rt_check("peers.send", rc == 0, "EVTCHNOP_send rc %ld", rc);
    rt_check("peers.signalled", port < MAX_PORTS && rt_wait_for(&seen[port], WAIT_NS), "no event from d%u on port %u", peer, port);
    rt_printf("# d%u and d%u talked\n", self, peer);
}
