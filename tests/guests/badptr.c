/* Bad guest pointers and lengths to each hypercall: Xen answers with an errno (-EFAULT,
 * -EINVAL, -ENOSYS) and the guest keeps running. Two kinds of bad pointer: a linear address our
 * page tables do not map, and a mapped linear address whose guest-physical page has no memory. */
#include "rt.h"
#include <xen/version.h>
#include <xen/memory.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>

RT_GUEST("badptr");

#ifdef __x86_64__
#define UNMAPPED ((void *)0x40000000000ul)   /* PML4 slot 8: not present */
#endif
#define NO_MEMORY ((void *)0xC0000000ul)     /* identity-mapped, but no RAM at 3 GiB */

#define EFAULT ((uint64_t)-XEN_EFAULT)
#define EINVAL ((uint64_t)-XEN_EINVAL)
#define ENOSYS ((uint64_t)-XEN_ENOSYS)

static void each_bad(const char *what, long (*call)(void *))
{
    char name[96];
#ifdef UNMAPPED
    rt_snprintf(name, sizeof name, "badptr.%s.unmapped", what);
    rt_check_eq(name, (uint64_t)call(UNMAPPED), EFAULT);
#endif
    rt_snprintf(name, sizeof name, "badptr.%s.no_memory", what);
    rt_check_eq(name, (uint64_t)call(NO_MEMORY), EFAULT);
}

static long ver_extraversion(void *p) { return HYPERVISOR_xen_version(XENVER_extraversion, p); }
static long ver_compile_info(void *p) { return HYPERVISOR_xen_version(XENVER_compile_info, p); }
static long ver_get_features(void *p) { return HYPERVISOR_xen_version(XENVER_get_features, p); }
static long mem_current_reservation(void *p) { return HYPERVISOR_memory_op(XENMEM_current_reservation, p); }
static long mem_add_to_physmap(void *p) { return HYPERVISOR_memory_op(XENMEM_add_to_physmap, p); }
static long mem_memory_map(void *p) { return HYPERVISOR_memory_op(XENMEM_memory_map, p); }
static long mem_memory_map_buffer(void *p)
{
    static uint8_t dummy;
    (void)dummy;
    struct xen_memory_map mm = { .nr_entries = 8 };
    set_xen_guest_handle(mm.buffer, p);
    return HYPERVISOR_memory_op(XENMEM_memory_map, &mm);
}
static long ev_alloc_unbound(void *p) { return HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, p); }
static long ev_send(void *p) { return HYPERVISOR_event_channel_op(EVTCHNOP_send, p); }
static long ev_status(void *p) { return HYPERVISOR_event_channel_op(EVTCHNOP_status, p); }
static long gt_query_size(void *p) { return HYPERVISOR_grant_table_op(GNTTABOP_query_size, p, 1); }
static long gt_set_version(void *p) { return HYPERVISOR_grant_table_op(GNTTABOP_set_version, p, 1); }
static long gt_copy(void *p) { return HYPERVISOR_grant_table_op(GNTTABOP_copy, p, 1); }
static long sched_shutdown(void *p) { return HYPERVISOR_sched_op(SCHEDOP_shutdown, p); }
static long sched_poll(void *p) { return HYPERVISOR_sched_op(SCHEDOP_poll, p); }
static long hvm_get_param(void *p) { return HYPERVISOR_hvm_op(HVMOP_get_param, p); }
static long hvm_set_param(void *p) { return HYPERVISOR_hvm_op(HVMOP_set_param, p); }
static long vcpu_singleshot(void *p) { return HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, p); }
static long vcpu_register_info(void *p) { return HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, p); }

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("badptr.all", "no Xen");
        return;
    }
    each_bad("xen_version.extraversion", ver_extraversion);
    each_bad("xen_version.compile_info", ver_compile_info);
    each_bad("xen_version.get_features", ver_get_features);
    each_bad("memory_op.current_reservation", mem_current_reservation);
    each_bad("memory_op.add_to_physmap", mem_add_to_physmap);
    each_bad("memory_op.memory_map", mem_memory_map);
    each_bad("memory_op.memory_map_buffer", mem_memory_map_buffer);
    each_bad("event_channel_op.alloc_unbound", ev_alloc_unbound);
    each_bad("event_channel_op.send", ev_send);
    each_bad("event_channel_op.status", ev_status);
    each_bad("grant_table_op.query_size", gt_query_size);
    each_bad("grant_table_op.set_version", gt_set_version);
    each_bad("grant_table_op.copy", gt_copy);
    each_bad("sched_op.shutdown", sched_shutdown);
    each_bad("sched_op.poll", sched_poll);
    each_bad("hvm_op.get_param", hvm_get_param);
    each_bad("hvm_op.set_param", hvm_set_param);
    each_bad("vcpu_op.set_singleshot_timer", vcpu_singleshot);
    each_bad("vcpu_op.register_vcpu_info", vcpu_register_info);

    /* console_io only when this domain may write to the hypervisor console at all */
    long rc = HYPERVISOR_console_io(CONSOLEIO_write, 0, "");
    if (rc == 0) {
        rt_check_eq("badptr.console_io.write.no_memory", (uint64_t)HYPERVISOR_console_io(CONSOLEIO_write, 16, NO_MEMORY), EFAULT);
    } else {
        rt_skip("badptr.console_io.write.no_memory", "CONSOLEIO_write not permitted here (rc %ld)", rc);
    }

    /* A bad extent list is not an error of the call: decrease_reservation reports 0 done. */
    struct xen_memory_reservation r = { .nr_extents = 1, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, (xen_pfn_t *)NO_MEMORY);
    rt_check_eq("badptr.memory_op.decrease_reservation_bad_list", (uint64_t)HYPERVISOR_memory_op(XENMEM_decrease_reservation, &r), 0);

    /* lengths and indices out of range */
    struct gnttab_query_size qs = { .dom = DOMID_SELF };
    rt_check_eq("badptr.grant_table_op.query_size_count_0", (uint64_t)HYPERVISOR_grant_table_op(GNTTABOP_query_size, &qs, 0), EINVAL);
    struct xen_hvm_param hp = { .domid = DOMID_SELF, .index = HVM_NR_PARAMS };
    rt_check_eq("badptr.hvm_op.get_param_index", (uint64_t)HYPERVISOR_hvm_op(HVMOP_get_param, &hp), EINVAL);
    hp.index = HVM_NR_PARAMS + 1000;
    rt_check_eq("badptr.hvm_op.set_param_index", (uint64_t)HYPERVISOR_hvm_op(HVMOP_set_param, &hp), EINVAL);
    struct evtchn_send es = { .port = 0xffffffffu };
    rt_check_eq("badptr.event_channel_op.send_port", (uint64_t)HYPERVISOR_event_channel_op(EVTCHNOP_send, &es), EINVAL);

    /* hypercalls and sub-ops that do not exist */
    rt_check_eq("badptr.hypercall.set_trap_table_pv_only", (uint64_t)rt_hypercall(__HYPERVISOR_set_trap_table, 0, 0, 0, 0, 0), ENOSYS);
    rt_check_eq("badptr.hypercall.60", (uint64_t)rt_hypercall(60, 0, 0, 0, 0, 0), ENOSYS);
    rt_check_eq("badptr.hypercall.127", (uint64_t)rt_hypercall(127, 0, 0, 0, 0, 0), ENOSYS);
    rt_check_eq("badptr.sched_op.unknown", (uint64_t)HYPERVISOR_sched_op(99, NULL), ENOSYS);
    rt_check_eq("badptr.hvm_op.unknown", (uint64_t)HYPERVISOR_hvm_op(99, NULL), ENOSYS);
    rt_check_eq("badptr.vcpu_op.unknown", (uint64_t)HYPERVISOR_vcpu_op(99, 0, NULL), ENOSYS);
    rt_check_eq("badptr.event_channel_op.unknown", (uint64_t)HYPERVISOR_event_channel_op(99, NULL), ENOSYS);
    rt_check_eq("badptr.grant_table_op.unknown", (uint64_t)HYPERVISOR_grant_table_op(99, NULL, 1), ENOSYS);

    /* after all that, the hypercall path still works */
    long v = HYPERVISOR_xen_version(XENVER_version, NULL);
    rt_check("badptr.still_alive", v > 0, "XENVER_version %ld", v);
}
