/* pvabi32: the hypercall ABI as a 32-bit PAE PV guest sees it (the compat layouts of a 64-bit Xen): xen_version
 * (version, capabilities naming x86_32p, the PV feature map), memory_op's reservations, the grant table
 * (query_size, setup_table's 32-bit frame list of machine frames, the table mapped by update_va_mapping and an
 * entry written), event channels (alloc_unbound, status, close), vcpu_op (is_up, the runstate in its 32-bit
 * packing), set_timer_op's split deadline and sched_op. It reports on its PV console ring and powers off. */
#include "pvrt.h"
#include <xen/memory.h>
#include <xen/grant_table.h>
#include <xen/vcpu.h>
#include <xen/features.h>

/* An address past the initial mapping whose L2 slot the builder left with no L1: the grant table is mapped into a
 * frame of ours made an L1 and linked there. */
#define GNT_VA 0xc4000000UL

static int contains(const char *s, const char *w)
{
    for (; *s; s++) {
        size_t i = 0;
        while (w[i] && s[i] == w[i])
            i++;
        if (!w[i])
            return 1;
    }
    return 0;
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    console_init(start);
    print("# guest pvabi32 (32-bit PV) xen=yes\n");

    /* xen_version */
    check_eq("abi32.xen_version", (unsigned long)hc(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0), 0x4000e);
    static xen_capabilities_info_t caps;
    check_eq("abi32.capabilities_call", hc(__HYPERVISOR_xen_version, XENVER_capabilities, (unsigned long)caps, 0, 0), 0);
    check_eq("abi32.capabilities_x86_32p", contains(caps, "xen-3.0-x86_32p"), 1);
    xen_feature_info_t fi = { .submap_idx = 0 };
    check_eq("abi32.get_features", hc(__HYPERVISOR_xen_version, XENVER_get_features, (unsigned long)&fi, 0, 0), 0);
    check_eq("abi32.not_auto_translated", (fi.submap >> XENFEAT_auto_translated_physmap) & 1, 0);
    check_eq("abi32.pt_update_preserve_ad", (fi.submap >> XENFEAT_mmu_pt_update_preserve_ad) & 1, 1);
    check_eq("abi32.version_bad_cmd", hc(__HYPERVISOR_xen_version, 0x7fff, 0, 0, 0), -XEN_ENOSYS);

    /* memory_op: a 32-bit guest's domid_t pointer and the count back in EAX. */
    domid_t self = DOMID_SELF;
    long cur = hc(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&self, 0, 0);
    check_eq("abi32.current_reservation", (unsigned long)cur, si->nr_pages);
    long max = hc(__HYPERVISOR_memory_op, XENMEM_maximum_reservation, (unsigned long)&self, 0, 0);
    check_eq("abi32.maximum_reservation_covers_current", max >= cur, 1);
    check_eq("abi32.memory_op_bad_pointer", hc(__HYPERVISOR_memory_op, XENMEM_current_reservation, 0xf0000000UL, 0, 0), -XEN_EFAULT);

    /* Grant table: its frames are machine frames, listed as 32-bit xen_pfn_t. */
    gnttab_query_size_t qs = { .dom = DOMID_SELF };
    check_eq("abi32.gnttab_query_size", hc(__HYPERVISOR_grant_table_op, GNTTABOP_query_size, (unsigned long)&qs, 1, 0), 0);
    check_eq("abi32.gnttab_query_size_status", (unsigned long)(long)qs.status, GNTST_okay);
    check_eq("abi32.gnttab_max_frames", qs.max_nr_frames >= 1, 1);
    static xen_pfn_t frames[2] = { 0xdeadbeef, 0xdeadbeef };
    gnttab_setup_table_t st = { .dom = DOMID_SELF, .nr_frames = 1 };
    set_xen_guest_handle(st.frame_list, frames);
    check_eq("abi32.gnttab_setup_table", hc(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&st, 1, 0), 0);
    check_eq("abi32.gnttab_setup_table_status", (unsigned long)(long)st.status, GNTST_okay);
    check_eq("abi32.gnttab_frame_given", frames[0] != 0xdeadbeef && frames[0] != 0, 1);
    check_eq("abi32.gnttab_only_one_frame_written", frames[1], 0xdeadbeef);
    /* Map the grant table's frame through a new L1 of ours at GNT_VA and write entry 8 (a grant to domain 0). */
    unsigned long n = si->nr_pages, l1 = p2m(n - 1);
    const uint64_t *l3t = (const uint64_t *)si->pt_base;
    uint64_t l2 = (l3t[(GNT_VA >> 30) & 3] & ADDR_MASK) >> 12;
    check_eq("abi32.l1_pinned", mmuext1(MMUEXT_CLEAR_PAGE, l1) | mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("abi32.l1_linked", mmu_update1((l2 << 12) + ((GNT_VA >> 21) & 511) * 8, ((uint64_t)l1 << 12) | PTE_P | PTE_RW), 0);
    check_eq("abi32.gnttab_mapped", update_va(GNT_VA, ((uint64_t)frames[0] << 12) | PTE_P | PTE_RW), 0);
    volatile grant_entry_v1_t *gnt = (volatile grant_entry_v1_t *)GNT_VA;
    gnt[8].domid = 0;
    gnt[8].frame = p2m(n - 2);
    __asm__ volatile("" ::: "memory");
    gnt[8].flags = GTF_permit_access;
    check_eq("abi32.gnttab_entry_written", gnt[8].flags, GTF_permit_access);
    gnttab_get_version_t gv = { .dom = DOMID_SELF };
    check_eq("abi32.gnttab_get_version", hc(__HYPERVISOR_grant_table_op, GNTTABOP_get_version, (unsigned long)&gv, 1, 0), 0);
    check_eq("abi32.gnttab_version_1", gv.version, 1);

    /* Event channels: the same layouts in both ABIs. */
    evtchn_alloc_unbound_t au = { .dom = DOMID_SELF, .remote_dom = 0 };
    check_eq("abi32.evtchn_alloc_unbound", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (unsigned long)&au, 0, 0), 0);
    evtchn_status_t es = { .dom = DOMID_SELF, .port = au.port };
    check_eq("abi32.evtchn_status", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_status, (unsigned long)&es, 0, 0), 0);
    check_eq("abi32.evtchn_status_unbound", es.status, EVTCHNSTAT_unbound);
    evtchn_close_t cl = { .port = au.port };
    check_eq("abi32.evtchn_close", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_close, (unsigned long)&cl, 0, 0), 0);
    check_eq("abi32.evtchn_status_closed", hc(__HYPERVISOR_event_channel_op, EVTCHNOP_status, (unsigned long)&es, 0, 0) == 0
                                          && es.status == EVTCHNSTAT_closed, 1);

    /* vcpu_op: the runstate's 64-bit fields sit 4-byte aligned in the 32-bit layout. */
    check_eq("abi32.vcpu_is_up", hc(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 0, 0, 0), 1);
    check_eq("abi32.vcpu_1_absent", hc(__HYPERVISOR_vcpu_op, VCPUOP_is_up, 1, 0, 0), -XEN_ENOENT);
    static struct { uint32_t state; uint32_t entry_lo, entry_hi; uint32_t time[8]; uint32_t guard; } rs = { .guard = 0x5a5a5a5a };
    _Static_assert(sizeof(vcpu_runstate_info_t) == 4 + 8 + 32, "the compat runstate packing");
    check_eq("abi32.runstate_info", hc(__HYPERVISOR_vcpu_op, VCPUOP_get_runstate_info, 0, (unsigned long)&rs, 0), 0);
    check_eq("abi32.runstate_running", rs.state, RUNSTATE_running);
    check_eq("abi32.runstate_entry_time", ((uint64_t)rs.entry_hi << 32 | rs.entry_lo) != 0, 1);
    check_eq("abi32.runstate_running_time", ((uint64_t)rs.time[1] << 32 | rs.time[0]) != 0, 1);
    check_eq("abi32.runstate_no_overrun", rs.guard, 0x5a5a5a5a);

    /* set_timer_op(lo, hi): a deadline far ahead, then none. */
    check_eq("abi32.set_timer_op", hc(__HYPERVISOR_set_timer_op, 0xffffffffUL, 0x7fffffffUL, 0, 0), 0);
    check_eq("abi32.set_timer_op_cancel", hc(__HYPERVISOR_set_timer_op, 0, 0, 0, 0), 0);
    check_eq("abi32.sched_yield", hc(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0), 0);
    check_eq("abi32.unknown_hypercall", hc(63, 0, 0, 0, 0), -XEN_ENOSYS);

    finish();
}
