/* Time: the pvclock in vcpu_info, the wallclock in shared_info, and timers that fire VIRQ_TIMER
 * (VCPUOP_set_singleshot_timer and set_timer_op) through the callback vector. */
#include "rt.h"
#include <xen/vcpu.h>

RT_GUEST("time");

static volatile evtchn_port_t timer_port;
static volatile int fired;
static volatile uint64_t fired_at;
static volatile unsigned int timer_hits;

static void on_port(evtchn_port_t p)
{
    if (p == timer_port) {
        timer_hits++;
        if (!fired)
            fired_at = rt_xen_time_ns();
        fired = 1;
    }
}

static void on_upcall(void)
{
    rt_evtchn_2l_dispatch(on_port);
}

static void test_clock(void)
{
    volatile struct vcpu_time_info *t = &rt_shared_info->vcpu_info[0].time;
    rt_check("time.vcpu_time_info", !(t->version & 1) && t->tsc_to_system_mul != 0,
             "version %u mul %u shift %d", t->version, t->tsc_to_system_mul, t->tsc_shift);
    uint64_t prev = rt_xen_time_ns(), first = prev;
    int mono = 1;
    for (int i = 0; i < 2000; i++) {
        uint64_t now = rt_xen_time_ns();
        if (now < prev)
            mono = 0;
        prev = now;
    }
    rt_check("time.monotonic", mono, "system time went backwards");
    uint64_t tsc0 = rt_rdtsc(), deadline = rt_deadline(1000);
    while (rt_xen_time_ns() < first + 5000000ull && !rt_expired(deadline))
        rt_pause();
    uint64_t elapsed = rt_xen_time_ns() - first;
    rt_check("time.advances", elapsed >= 5000000ull, "only %llu ns passed", (unsigned long long)elapsed);
    rt_printf("# system time %llu ns, tsc_to_system_mul %u shift %d, %llu TSC ticks per 5 ms\n",
              (unsigned long long)rt_xen_time_ns(), t->tsc_to_system_mul, t->tsc_shift,
              (unsigned long long)(rt_rdtsc() - tsc0));

    volatile struct shared_info *s = rt_shared_info;
    uint32_t v;
    uint64_t sec;
    uint32_t nsec;
    do {
        v = s->wc_version;
        __asm__ volatile("lfence" ::: "memory");
        sec = s->wc_sec | ((uint64_t)s->xen_wc_sec_hi << 32);
        nsec = s->wc_nsec;
        __asm__ volatile("lfence" ::: "memory");
    } while ((v & 1) || v != s->wc_version);
    uint64_t now_sec = sec + (nsec + rt_xen_time_ns()) / 1000000000ull;
    rt_printf("# wallclock: %llu s since the epoch\n", (unsigned long long)now_sec);
    rt_check("time.wallclock", now_sec > 1500000000ull && nsec < 1000000000u, "wc_sec %llu wc_nsec %u",
             (unsigned long long)sec, nsec);
}

/* set_timer_op takes a 64-bit time: one register in 64-bit mode, two (low, high) in 32-bit. */
static long set_timer_op(uint64_t when)
{
#ifdef __x86_64__
    return rt_hypercall(__HYPERVISOR_set_timer_op, (unsigned long)when, 0, 0, 0, 0);
#else
    return rt_hypercall(__HYPERVISOR_set_timer_op, (unsigned long)when, (unsigned long)(when >> 32), 0, 0, 0);
#endif
}

static void test_timers(void)
{
    long rc = HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
    rt_check_eq("time.stop_periodic_timer", (uint64_t)rc, 0);
    struct evtchn_bind_virq bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bv);
    if (!rt_check("time.bind_virq_timer", rc == 0, "rc %ld", rc))
        return;
    timer_port = bv.port;
    rt_evtchn_unmask(bv.port);

    fired = 0;
    uint64_t deadline = rt_xen_time_ns() + 2000000ull;
    struct vcpu_set_singleshot_timer st = { .timeout_abs_ns = deadline };
    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &st);
    int ok = rt_wait_for(&fired, 2000000000ull);
    rt_check("time.singleshot_fires", rc == 0 && ok, "rc %ld fired %d", rc, ok);
    /* Xen may run a timer up to its slop (50 us by default) early; allow 1 ms. */
    rt_check("time.singleshot_not_early", !ok || fired_at + 1000000ull >= deadline, "fired at %llu, deadline %llu",
             (unsigned long long)fired_at, (unsigned long long)deadline);

    /* A cancelled timer must not fire. The cancel has to come before the deadline: a host busy enough to
     * hold this vCPU off for the 20 ms in between leaves nothing to judge, so such a try is repeated. */
    long rc2;
    for (int attempt = 0;; attempt++) {
        fired = 0;
        uint64_t set_at = rt_xen_time_ns();
        st.timeout_abs_ns = set_at + 20000000ull;
        rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &st);
        rc2 = HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL);
        if (rt_xen_time_ns() - set_at < 10000000ull || attempt == 20)
            break;
    }
    ok = rt_wait_for(&fired, 60000000ull);
    rt_check("time.stop_singleshot_timer", rc == 0 && rc2 == 0 && !ok, "set rc %ld stop rc %ld fired %d", rc, rc2, ok);

    fired = 0;
    uint64_t when = rt_xen_time_ns() + 1000000ull;
    rc = set_timer_op(when);
    ok = rt_wait_for(&fired, 2000000000ull);
    rt_check("time.set_timer_op_fires", rc == 0 && ok, "rc %ld fired %d", rc, ok);

    for (int attempt = 0;; attempt++) {
        fired = 0;
        uint64_t set_at = rt_xen_time_ns();
        rc = set_timer_op(set_at + 20000000ull);
        rc2 = set_timer_op(0);
        if (rt_xen_time_ns() - set_at < 10000000ull || attempt == 20)
            break;
    }
    ok = rt_wait_for(&fired, 60000000ull);
    rt_check("time.set_timer_op_cancel", rc == 0 && rc2 == 0 && !ok, "set rc %ld cancel rc %ld fired %d", rc, rc2, ok);

    rc = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 1000, &st);
    rt_check_eq("time.singleshot_no_such_vcpu", (uint64_t)rc, (uint64_t)-XEN_ENOENT);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("time.all", "no Xen");
        return;
    }
    long rc = rt_events_init(on_upcall);
    if (!rt_check("time.callback_vector", rc == 0, "rc %ld", rc))
        return;
    test_clock();
    test_timers();
}
