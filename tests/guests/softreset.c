/* Soft reset from inside, as a kernel about to kexec its crash kernel does it: fills 2 MiB with a pattern, sets
 * up event channels (an IPI, an unbound port, then the FIFO ABI), registers its vcpu_info elsewhere, leaves a marker
 * and calls SCHEDOP_shutdown(SHUTDOWN_soft_reset). With on_soft_reset = "soft-reset" the toolstack resets the
 * domain in place and the call returns 0, as on Xen: the marker tells the guest it is starting again. It then
 * checks what Xen's soft reset promises: the same domain, its memory as it was, every event channel closed and
 * the 2-level ABI back (FIFO may be set up anew), shared_info gone from its GFN (ordinary RAM there now) and
 * mappable again, vcpu_info back in shared_info (registering it elsewhere works again), and the xenstore and
 * console rings connected again on fresh event channels named in the HVM params. Run through xl by the
 * integration tests, as a PVH and as an HVM guest, not on its own. */
#include "rt.h"
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/memory.h>
#include <xen/hvm/params.h>

RT_GUEST("softreset");

#define MARKER 0x5AF7E5E7C0FFEE01ull
#define PATTERN_WORDS (256 * 1024) /* 2 MiB */

/* In .data, which the runtime's entry never clears: it survives anything but a new image. */
static volatile uint64_t marker __attribute__((section(".data"))) = 0;
static volatile uint64_t pattern_sum __attribute__((section(".data"))) = 0;
static volatile uint32_t domid_before __attribute__((section(".data"))) = 0;
static volatile uint32_t ipi_port_before __attribute__((section(".data"))) = 0;
static volatile uint32_t unbound_port_before __attribute__((section(".data"))) = 0;

static uint64_t pattern[PATTERN_WORDS];
static uint8_t fifo_control[4096] __attribute__((aligned(4096)));
static uint8_t vcpu_info_page[4096] __attribute__((aligned(4096)));
static uint8_t shared_info_elsewhere[4096] __attribute__((aligned(4096)));

static volatile int ipi_seen;
static evtchn_port_t ipi_port;

static uint64_t fill(uint64_t seed)
{
    uint64_t x = seed, sum = 0;
    for (size_t i = 0; i < PATTERN_WORDS; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pattern[i] = x;
        sum += x * (i + 1);
    }
    return sum;
}

static uint64_t checksum(void)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < PATTERN_WORDS; i++)
        sum += pattern[i] * (i + 1);
    return sum;
}

static struct evtchn_status status_of(evtchn_port_t port, long *rc)
{
    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    *rc = HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);
    return st;
}

static long init_fifo(void)
{
    struct evtchn_init_control ic = { .control_gfn = (uintptr_t)fifo_control >> 12, .offset = 0, .vcpu = 0 };
    return HYPERVISOR_event_channel_op(EVTCHNOP_init_control, &ic);
}

static long register_vcpu_info(void)
{
    struct vcpu_register_vcpu_info r = { .mfn = (uintptr_t)vcpu_info_page >> 12, .offset = 0 };
    return HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &r);
}

static long map_shared_info_at(void *page)
{
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0, .gpfn = (uintptr_t)page >> 12,
    };
    return HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
}

static void on_port(evtchn_port_t port)
{
    if (port == ipi_port)
        ipi_seen = 1;
}

static void on_upcall(void)
{
    rt_evtchn_2l_dispatch(on_port);
}

/* The ring named by an HVM param is bound to Domain-0 again. */
static void check_ring_port(const char *name, uint32_t param)
{
    /* The other end binds on its own time (xenstored on introduction, the console daemon on its watch, as
     * xenconsoled does), which may come after the guest runs again: wait for it. */
    uint64_t port = 0, deadline = rt_deadline(30000);
    long prc, rc;
    struct evtchn_status st;
    do {
        prc = rt_hvm_get_param(param, &port);
        st = status_of((evtchn_port_t)port, &rc);
        if (prc == 0 && rc == 0 && st.status == EVTCHNSTAT_interdomain)
            break;
        rt_pause();
    } while (!rt_expired(deadline));
    rt_check(name, prc == 0 && rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0,
             "param rc %ld port %lu: status rc %ld status %u dom %u", prc, (unsigned long)port, rc, st.status,
             st.u.interdomain.dom);
}

static void first_start(void)
{
    domid_t d = 0;
    rt_check_eq("softreset.domid_before", rt_domid(&d), 0);
    domid_before = d;
    pattern_sum = fill(0x9E3779B97F4A7C15ull ^ d);

    long rc = rt_events_init(on_upcall);
    rt_check_eq("softreset.events_init", (uint64_t)rc, 0);
    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    rt_check_eq("softreset.bind_ipi", (uint64_t)HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &ipi), 0);
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = 0 };
    rt_check_eq("softreset.alloc_unbound", (uint64_t)HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au), 0);
    ipi_port_before = ipi.port;
    unbound_port_before = au.port;

    rt_check_eq("softreset.register_vcpu_info", (uint64_t)register_vcpu_info(), 0);
    rt_check_eq("softreset.register_vcpu_info_twice", (uint64_t)register_vcpu_info(), (uint64_t)-XEN_EINVAL);
    rt_check_eq("softreset.fifo_init", (uint64_t)init_fifo(), 0);
    rt_check_eq("softreset.fifo_init_twice", (uint64_t)init_fifo(), (uint64_t)-XEN_EINVAL);

    marker = MARKER;
    rt_printf("# soft reset: ipi port %u, unbound port %u\n", ipi.port, au.port);
    struct sched_shutdown sd = { .reason = SHUTDOWN_soft_reset };
    rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    /* The domain was reset under us: this is the crash kernel's start, with what the old one left in memory. */
    rt_console_reconnect();
    rt_printf("# started again: rc=%ld\n", rc);
    rt_check_eq("softreset.shutdown_returned", (uint64_t)rc, 0);
}

static void second_start(void)
{
    rt_check_eq("softreset.marker", marker, MARKER);
    rt_check_eq("softreset.memory", checksum(), pattern_sum);
    domid_t d = 0;
    rt_check_eq("softreset.domid_after", rt_domid(&d), 0);
    rt_check_eq("softreset.same_domain", d, domid_before);

    long rc;
    struct evtchn_status st = status_of(ipi_port_before, &rc);
    rt_check("softreset.ipi_closed", rc == 0 && st.status == EVTCHNSTAT_closed, "rc %ld status %u", rc, st.status);
    st = status_of(unbound_port_before, &rc);
    rt_check("softreset.unbound_closed", rc == 0 && st.status == EVTCHNSTAT_closed, "rc %ld status %u", rc, st.status);
    check_ring_port("softreset.store_reconnected", HVM_PARAM_STORE_EVTCHN);
    check_ring_port("softreset.console_reconnected", HVM_PARAM_CONSOLE_EVTCHN);

    /* shared_info left its GFN for a page of RAM: what is written there stays there when shared_info is mapped
     * at another GFN, whose page is a different one. */
    volatile uint64_t *old = (volatile uint64_t *)rt_shared_info;
    for (int i = 0; i < 512; i++)
        old[i] = MARKER ^ (uint64_t)i;
    rt_check_eq("softreset.shared_info_map_elsewhere", (uint64_t)map_shared_info_at(shared_info_elsewhere), 0);
    int kept = 1, same = 1;
    for (int i = 0; i < 512; i++) {
        kept &= old[i] == (MARKER ^ (uint64_t)i);
        same &= ((volatile uint64_t *)shared_info_elsewhere)[i] == (MARKER ^ (uint64_t)i);
    }
    rt_check("softreset.shared_info_gfn_is_ram", kept, "the old shared_info GFN changed when shared_info moved");
    rt_check("softreset.shared_info_moved", !same, "shared_info at the new GFN is the page written at the old one");
    /* Back at the runtime's GFN, for its event dispatch. */
    rt_check_eq("softreset.shared_info_map_back", (uint64_t)map_shared_info_at(rt_shared_info), 0);

    /* The 2-level ABI is back: an IPI arrives through shared_info's pending bits. */
    rt_check_eq("softreset.events_init_again", (uint64_t)rt_events_init(on_upcall), 0);
    struct evtchn_bind_ipi ipi = { .vcpu = 0 };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &ipi);
    rt_check_eq("softreset.bind_ipi_again", (uint64_t)rc, 0);
    ipi_port = ipi.port;
    rt_sti();
    struct evtchn_send send = { .port = ipi.port };
    rt_check_eq("softreset.send_ipi", (uint64_t)HYPERVISOR_event_channel_op(EVTCHNOP_send, &send), 0);
    rt_check("softreset.ipi_2l_delivered", rt_wait_for(&ipi_seen, 5000000000ull), "no upcall for port %u", ipi.port);
    rt_cli();

    rt_check_eq("softreset.register_vcpu_info_again", (uint64_t)register_vcpu_info(), 0);
    rt_check_eq("softreset.fifo_init_again", (uint64_t)init_fifo(), 0);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("softreset.all", "no Xen");
        return;
    }
    if (marker != MARKER)
        first_start();
    if (marker == MARKER)
        second_start();
}
