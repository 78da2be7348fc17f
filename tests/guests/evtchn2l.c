/* Event channels with the 2-level ABI: allocation, loopback interdomain binding, IPI and VIRQ
 * binding, delivery through the HVM callback vector, masking, closing, and Xen's errors. */
#include "rt.h"

RT_GUEST("evtchn2l");

#define MAX_PORTS 4096
static volatile unsigned int hits[MAX_PORTS];
static volatile evtchn_port_t awaited;
static volatile int seen;

static void on_port(evtchn_port_t p)
{
    if (p < MAX_PORTS)
        hits[p]++;
    if (p == awaited)
        seen = 1;
}

static void on_upcall(void)
{
    rt_evtchn_2l_dispatch(on_port);
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

/* Send on `via` and wait (1 s of Xen time) for `expect` to be delivered. */
static int send_and_wait(evtchn_port_t via, evtchn_port_t expect, long *rc)
{
    awaited = expect;
    seen = 0;
    *rc = send(via);
    return rt_wait_for(&seen, 1000000000ull);
}

static struct evtchn_status status_of(evtchn_port_t port, long *rc)
{
    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    *rc = evtchn_op(EVTCHNOP_status, &st);
    return st;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("evtchn2l.all", "no Xen");
        return;
    }
    long rc = rt_events_init(on_upcall);
    if (!rt_check("evtchn2l.callback_vector", rc == 0, "shared_info/HVM_PARAM_CALLBACK_IRQ rc %ld", rc))
        return;

    /* unbound port, then a loopback interdomain channel to it */
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    rc = evtchn_op(EVTCHNOP_alloc_unbound, &au);
    rt_check("evtchn2l.alloc_unbound", rc == 0 && au.port > 0, "rc %ld port %u", rc, au.port);
    struct evtchn_status st = status_of(au.port, &rc);
    rt_check("evtchn2l.status_unbound", rc == 0 && st.status == EVTCHNSTAT_unbound && st.vcpu == 0,
             "rc %ld status %u vcpu %u", rc, st.status, st.vcpu);
    domid_t self = st.u.unbound.dom;
    rt_printf("# domid %u\n", self);

    rt_evtchn_unmask(au.port);
    struct evtchn_bind_interdomain bi = { .remote_dom = DOMID_SELF, .remote_port = au.port };
    rc = evtchn_op(EVTCHNOP_bind_interdomain, &bi);
    rt_evtchn_unmask(bi.local_port);
    rt_check("evtchn2l.bind_interdomain_loopback", rc == 0 && bi.local_port != au.port && bi.local_port > 0,
             "rc %ld local port %u", rc, bi.local_port);
    st = status_of(au.port, &rc);
    rt_check("evtchn2l.status_interdomain", rc == 0 && st.status == EVTCHNSTAT_interdomain &&
             st.u.interdomain.dom == self && st.u.interdomain.port == bi.local_port,
             "rc %ld status %u peer %u:%u", rc, st.status, st.u.interdomain.dom, st.u.interdomain.port);
    int ok = send_and_wait(bi.local_port, au.port, &rc);
    rt_check("evtchn2l.interdomain_send", ok && rc == 0, "send rc %ld, port %u delivered %d", rc, au.port, ok);
    ok = send_and_wait(au.port, bi.local_port, &rc);
    rt_check("evtchn2l.interdomain_send_back", ok && rc == 0, "send rc %ld, port %u delivered %d", rc,
             bi.local_port, ok);

    /* IPI to ourselves */
    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_bind_ipi, &ipi);
    rt_evtchn_unmask(ipi.port);
    rt_check("evtchn2l.bind_ipi", rc == 0 && ipi.port > 0, "rc %ld port %u", rc, ipi.port);
    unsigned long upcalls = rt_upcall_count;
    ok = send_and_wait(ipi.port, ipi.port, &rc);
    rt_check("evtchn2l.ipi_upcall", ok && rc == 0 && rt_upcall_count > upcalls, "send rc %ld delivered %d upcalls %lu",
             rc, ok, rt_upcall_count - upcalls);
    st = status_of(ipi.port, &rc);
    rt_check("evtchn2l.status_ipi", rc == 0 && st.status == EVTCHNSTAT_ipi && st.vcpu == 0, "rc %ld status %u", rc,
             st.status);

    /* masked: pending but not delivered; unmask re-raises */
    rt_evtchn_2l_mask(ipi.port);
    unsigned int before = hits[ipi.port];
    awaited = ipi.port;
    seen = 0;
    rc = send(ipi.port);
    rt_wait_for(&seen, 50000000ull);
    rt_check("evtchn2l.masked_not_delivered", rc == 0 && hits[ipi.port] == before && rt_evtchn_2l_pending(ipi.port),
             "rc %ld delivered %u times, pending %d", rc, hits[ipi.port] - before, rt_evtchn_2l_pending(ipi.port));
    awaited = ipi.port;
    seen = 0;
    struct evtchn_unmask um = { .port = ipi.port };
    rc = evtchn_op(EVTCHNOP_unmask, &um);
    ok = rt_wait_for(&seen, 1000000000ull);
    rt_check("evtchn2l.unmask_reraises", rc == 0 && ok, "unmask rc %ld delivered %d", rc, ok);

    /* VIRQ binding */
    struct evtchn_bind_virq bv = { .virq = VIRQ_DEBUG, .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_bind_virq, &bv);
    rt_check("evtchn2l.bind_virq", rc == 0 && bv.port > 0, "rc %ld port %u", rc, bv.port);
    st = status_of(bv.port, &rc);
    rt_check("evtchn2l.status_virq", rc == 0 && st.status == EVTCHNSTAT_virq && st.u.virq == VIRQ_DEBUG,
             "rc %ld status %u virq %u", rc, st.status, st.u.virq);
    struct evtchn_bind_virq bv2 = { .virq = VIRQ_DEBUG, .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_bind_virq, &bv2);
    rt_check_eq("evtchn2l.bind_virq_twice", (uint64_t)rc, (uint64_t)-XEN_EEXIST);
    struct evtchn_bind_virq bv3 = { .virq = NR_VIRQS, .vcpu = 0 };
    rc = evtchn_op(EVTCHNOP_bind_virq, &bv3);
    rt_check_eq("evtchn2l.bind_virq_out_of_range", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    struct evtchn_bind_ipi bad_ipi = { .vcpu = 1000 };
    rc = evtchn_op(EVTCHNOP_bind_ipi, &bad_ipi);
    rt_check_eq("evtchn2l.bind_ipi_no_such_vcpu", (uint64_t)rc, (uint64_t)-XEN_ENOENT);

    /* closing */
    struct evtchn_close cl = { .port = ipi.port };
    rc = evtchn_op(EVTCHNOP_close, &cl);
    rt_check_eq("evtchn2l.close", (uint64_t)rc, 0);
    st = status_of(ipi.port, &rc);
    rt_check("evtchn2l.status_closed", rc == 0 && st.status == EVTCHNSTAT_closed, "rc %ld status %u", rc, st.status);
    rc = send(ipi.port);
    rt_check_eq("evtchn2l.send_closed", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    rc = evtchn_op(EVTCHNOP_close, &cl);
    rt_check_eq("evtchn2l.close_twice", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    cl.port = bi.local_port;
    rc = evtchn_op(EVTCHNOP_close, &cl);
    st = status_of(au.port, &rc);
    rt_check("evtchn2l.close_interdomain_unbinds_peer", rc == 0 && st.status == EVTCHNSTAT_unbound,
             "rc %ld peer status %u", rc, st.status);
    cl.port = au.port;
    evtchn_op(EVTCHNOP_close, &cl);
    cl.port = bv.port;
    evtchn_op(EVTCHNOP_close, &cl);

    /* ports that do not exist, operations that do not exist */
    rc = send(0);
    rt_check_eq("evtchn2l.send_port0", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    rc = send(0x7fffffff);
    rt_check_eq("evtchn2l.send_invalid_port", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    rc = evtchn_op(99, &cl);
    rt_check_eq("evtchn2l.unknown_op", (uint64_t)rc, (uint64_t)-XEN_ENOSYS);
}
