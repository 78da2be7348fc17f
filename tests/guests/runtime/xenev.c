/* Xen shared_info, event upcalls (HVM_PARAM_CALLBACK_IRQ, vector type), 2-level event channel
 * dispatch, pvclock time and a few small helpers the hypervisor-ABI guests share. */
#include "rt.h"
#include <xen/memory.h>
#include <xen/event_channel.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>

struct shared_info *rt_shared_info;
static uint8_t shared_info_page[4096] __attribute__((aligned(4096)));
volatile unsigned long rt_upcall_count;
static void (*upcall_fn)(void);

long rt_map_shared_info(void)
{
    if (rt_shared_info)
        return 0;
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_shared_info,
        .idx = 0,
        .gpfn = (uintptr_t)shared_info_page >> 12,
    };
    long rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
    if (rc == 0)
        rt_shared_info = (struct shared_info *)shared_info_page;
    return rc;
}

static void upcall_entry(struct rt_frame *f)
{
    (void)f;
    rt_upcall_count++;
    /* Clear before looking at the pending bits, so nothing raised meanwhile is lost. */
    rt_shared_info->vcpu_info[0].evtchn_upcall_pending = 0;
    if (upcall_fn)
        upcall_fn();
    /* The callback vector does not go through the local APIC on Xen; an EOI without an
     * in-service vector is ignored, and an implementation that does use the APIC needs it. */
    *(volatile uint32_t *)0xFEE000B0ul = 0;
}

long rt_events_init(void (*on_upcall)(void))
{
    long rc = rt_map_shared_info();
    if (rc)
        return rc;
    upcall_fn = on_upcall;
    rt_shared_info->vcpu_info[0].evtchn_upcall_mask = 0;
    rt_set_handler(RT_UPCALL_VECTOR, upcall_entry);
    return rt_hvm_set_param(HVM_PARAM_CALLBACK_IRQ,
                            ((uint64_t)HVM_PARAM_CALLBACK_TYPE_VECTOR << 56) | RT_UPCALL_VECTOR);
}

#define XBITS (sizeof(xen_ulong_t) * 8)

unsigned int rt_evtchn_2l_dispatch(void (*handler)(evtchn_port_t port))
{
    struct shared_info *s = rt_shared_info;
    unsigned int n = 0;
    xen_ulong_t sel = __atomic_exchange_n(&s->vcpu_info[0].evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        unsigned int w = (unsigned int)__builtin_ctzl(sel);
        sel &= sel - 1;
        xen_ulong_t pend = __atomic_load_n(&s->evtchn_pending[w], __ATOMIC_SEQ_CST) &
                           ~__atomic_load_n(&s->evtchn_mask[w], __ATOMIC_SEQ_CST);
        while (pend) {
            unsigned int b = (unsigned int)__builtin_ctzl(pend);
            pend &= pend - 1;
            __atomic_fetch_and(&s->evtchn_pending[w], ~((xen_ulong_t)1 << b), __ATOMIC_SEQ_CST);
            handler(w * XBITS + b);
            n++;
        }
    }
    return n;
}

void rt_evtchn_2l_mask(evtchn_port_t port)
{
    __atomic_fetch_or(&rt_shared_info->evtchn_mask[port / XBITS], (xen_ulong_t)1 << (port % XBITS), __ATOMIC_SEQ_CST);
}

int rt_evtchn_2l_pending(evtchn_port_t port)
{
    return (__atomic_load_n(&rt_shared_info->evtchn_pending[port / XBITS], __ATOMIC_SEQ_CST) >> (port % XBITS)) & 1;
}

void rt_evtchn_2l_clear(evtchn_port_t port)
{
    __atomic_fetch_and(&rt_shared_info->evtchn_pending[port / XBITS], ~((xen_ulong_t)1 << (port % XBITS)), __ATOMIC_SEQ_CST);
}

long rt_evtchn_unmask(evtchn_port_t port)
{
    /* Xen clears the mask bit itself and re-raises the event if it is pending meanwhile. */
    struct evtchn_unmask um = { .port = port };
    return HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &um);
}

uint64_t rt_xen_time_ns(void)
{
    volatile struct vcpu_time_info *t = &rt_shared_info->vcpu_info[0].time;
    uint32_t v;
    uint64_t ns;
    do {
        v = t->version;
        __asm__ volatile("lfence" ::: "memory");
        uint64_t delta = rt_rdtsc() - t->tsc_timestamp;
        int8_t shift = t->tsc_shift;
        if (shift < 0)
            delta >>= -shift;
        else
            delta <<= shift;
        uint32_t mul = t->tsc_to_system_mul;
#ifdef __x86_64__
        ns = t->system_time + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
#else
        ns = t->system_time + ((delta >> 32) * mul) + (((delta & 0xffffffffu) * mul) >> 32);
#endif
        __asm__ volatile("lfence" ::: "memory");
    } while ((v & 1) || v != t->version);
    return ns;
}

int rt_wait_for(volatile int *flag, uint64_t timeout_ns)
{
    uint64_t end = rt_xen_time_ns() + timeout_ns;
    /* A TSC bound as well, so a clock that does not advance cannot hang the test. */
    uint64_t deadline = rt_deadline((unsigned int)(timeout_ns / 500000) + 100);
    unsigned long flags = rt_read_flags();
    rt_sti();
    while (!*flag && rt_xen_time_ns() < end && !rt_expired(deadline))
        rt_pause();
    if (!(flags & 0x200))
        rt_cli();
    return *flag;
}

long rt_domid(domid_t *out)
{
    struct evtchn_alloc_unbound au = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au);
    if (rc)
        return rc;
    struct evtchn_status st = { .dom = DOMID_SELF, .port = au.port };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);
    struct evtchn_close cl = { .port = au.port };
    HYPERVISOR_event_channel_op(EVTCHNOP_close, &cl);
    if (rc == 0)
        *out = st.u.unbound.dom;
    return rc;
}
