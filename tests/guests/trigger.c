/* Waits for what the toolstack sends from outside: an NMI (`xl trigger DOM nmi`) and VIRQ_DEBUG
 * (`xl debug-keys q`), and reads its TSC mode from Xen's TSC leaf. Prints "# waiting" once ready. */
#include "rt.h"

RT_GUEST("trigger");

static volatile int nmis, debug_virqs;
static evtchn_port_t debug_port;

static void on_nmi(struct rt_frame *f)
{
    (void)f;
    nmis++;
}

static void on_port(evtchn_port_t p)
{
    if (p == debug_port)
        debug_virqs++;
}

static void on_upcall(void)
{
    rt_evtchn_2l_dispatch(on_port);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("trigger.all", "no Xen");
        return;
    }
    uint32_t a, b, c, d;
    rt_cpuid(rt_xen_cpuid_base + 3, 0, &a, &b, &c, &d);
    rt_printf("# tsc leaf: flags %#x mode %u khz %u\n", a, b, c);
    /* The mode the configuration asked for, if it names one on the command line ("tsc=N"). */
    const char *want = rt_cmdline;
    while (*want && !(want[0] == 't' && want[1] == 's' && want[2] == 'c' && want[3] == '='))
        want++;
    if (*want)
        rt_check("trigger.tsc_mode", b == (uint32_t)(want[4] - '0') && (a & 1) == (b == 1), "mode %u flags %#x, want mode %c",
                 b, a, want[4]);
    rt_check("trigger.tsc_khz", c != 0, "khz %u", c);

    rt_set_handler(2, on_nmi);
    long rc = rt_events_init(on_upcall);
    if (!rt_check("trigger.events", rc == 0, "rc %ld", rc))
        return;
    struct evtchn_bind_virq bv = { .virq = VIRQ_DEBUG, .vcpu = 0 };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bv);
    if (!rt_check("trigger.bind_virq_debug", rc == 0, "rc %ld", rc))
        return;
    debug_port = bv.port;
    rt_evtchn_unmask(debug_port);

    rt_printf("# waiting for an NMI and VIRQ_DEBUG\n");
    rt_check("trigger.nmi", rt_wait_for(&nmis, 120000000000ull), "no NMI arrived");
    rt_check("trigger.virq_debug", rt_wait_for(&debug_virqs, 120000000000ull), "no VIRQ_DEBUG arrived");
}
