/* Grant tables: sizes, setup_table, versions (v1, and v2 when enabled), mapping the shared frame, and grant copy to ourselves
 * (gref → gmfn, gmfn → gref, gmfn → gmfn) with Xen's per-copy status codes. */
#include "rt.h"
#include <xen/grant_table.h>
#include <xen/memory.h>

RT_GUEST("gnttab");

#define REF_SRC 10
#define REF_DST 11

static uint8_t gnttab_frame[4096] __attribute__((aligned(4096)));
static uint8_t src_page[4096] __attribute__((aligned(4096)));
static uint8_t dst_page[4096] __attribute__((aligned(4096)));

static long gnttab_op(unsigned int cmd, void *arg, unsigned int count)
{
    return HYPERVISOR_grant_table_op(cmd, arg, count);
}

static long copy(struct gnttab_copy *c)
{
    return gnttab_op(GNTTABOP_copy, c, 1);
}

static void grant(grant_ref_t ref, void *page, domid_t to, uint16_t flags)
{
    volatile grant_entry_v1_t *e = (volatile grant_entry_v1_t *)gnttab_frame + ref;
    e->frame = (uint32_t)((uintptr_t)page >> 12);
    e->domid = to;
    __asm__ volatile("" ::: "memory");   /* flags last: they make the entry valid */
    e->flags = flags;
}

static long get_version(void)
{
    struct gnttab_get_version gv = { .dom = DOMID_SELF };
    long rc = gnttab_op(GNTTABOP_get_version, &gv, 1);
    return rc ? rc : (long)gv.version;
}

static void test_v2(void)
{
    struct gnttab_set_version sv = { .version = 2 };
    long rc = gnttab_op(GNTTABOP_set_version, &sv, 1);
    if (rc) {
        rt_skip("gnttab.v2_switch", "GNTTABOP_set_version(2): rc %ld", rc);
        return;
    }
    rt_check("gnttab.v2_switch", sv.version == 2 && get_version() == 2, "version %u, get_version %ld", sv.version,
             get_version());
    sv.version = 1;
    rc = gnttab_op(GNTTABOP_set_version, &sv, 1);
    rt_check("gnttab.v2_back_to_v1", rc == 0 && get_version() == 1, "rc %ld version %ld", rc, get_version());
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("gnttab.all", "no Xen");
        return;
    }
    struct gnttab_query_size qs = { .dom = DOMID_SELF };
    long rc = gnttab_op(GNTTABOP_query_size, &qs, 1);
    rt_check("gnttab.query_size", rc == 0 && qs.status == GNTST_okay && qs.nr_frames >= 1 &&
             qs.max_nr_frames >= qs.nr_frames, "rc %ld status %d frames %u/%u", rc, qs.status, qs.nr_frames,
             qs.max_nr_frames);
    rt_printf("# grant table: %u of at most %u frames\n", qs.nr_frames, qs.max_nr_frames);

    /* Room for more frames than the table may have, should an implementation write them. */
    static xen_pfn_t frames[1024];
    struct gnttab_setup_table st = { .dom = DOMID_SELF, .nr_frames = 1 };
    set_xen_guest_handle(st.frame_list, frames);
    rc = gnttab_op(GNTTABOP_setup_table, &st, 1);
    rt_check("gnttab.setup_table", rc == 0 && st.status == GNTST_okay, "rc %ld status %d", rc, st.status);
    if (qs.max_nr_frames < 1024) {
        st.nr_frames = qs.max_nr_frames + 1;
        st.status = 0;
        rc = gnttab_op(GNTTABOP_setup_table, &st, 1);
        rt_check("gnttab.setup_table_too_many_frames", rc == 0 && st.status == GNTST_general_error,
                 "rc %ld status %d", rc, st.status);
    }

    struct gnttab_set_version sv = { .version = 1 };
    rc = gnttab_op(GNTTABOP_set_version, &sv, 1);
    rt_check("gnttab.set_version_1", rc == 0 && get_version() == 1, "rc %ld version %ld", rc, get_version());

    test_v2();

    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .idx = 0,
        .gpfn = (uintptr_t)gnttab_frame >> 12,
    };
    rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
    if (!rt_check("gnttab.map_frame0", rc == 0, "XENMEM_add_to_physmap(grant_table, 0) rc %ld", rc))
        return;
    domid_t self;
    rc = rt_domid(&self);
    if (!rt_check("gnttab.own_domid", rc == 0, "rc %ld", rc))
        return;

    for (int i = 0; i < 4096; i++)
        src_page[i] = (uint8_t)(i * 7 + 3);
    memset(dst_page, 0, sizeof dst_page);
    grant(REF_SRC, src_page, self, GTF_permit_access | GTF_readonly);

    struct gnttab_copy c = {
        .source = { .u.ref = REF_SRC, .domid = DOMID_SELF, .offset = 16 },
        .dest = { .u.gmfn = (uintptr_t)dst_page >> 12, .domid = DOMID_SELF, .offset = 40 },
        .len = 300, .flags = GNTCOPY_source_gref,
    };
    rc = copy(&c);
    rt_check("gnttab.copy_from_gref", rc == 0 && c.status == GNTST_okay && !memcmp(dst_page + 40, src_page + 16, 300) &&
             dst_page[39] == 0 && dst_page[340] == 0, "rc %ld status %d", rc, c.status);

    memset(dst_page, 0, sizeof dst_page);
    grant(REF_DST, dst_page, self, GTF_permit_access);
    struct gnttab_copy c2 = {
        .source = { .u.gmfn = (uintptr_t)src_page >> 12, .domid = DOMID_SELF, .offset = 0 },
        .dest = { .u.ref = REF_DST, .domid = DOMID_SELF, .offset = 100 },
        .len = 1000, .flags = GNTCOPY_dest_gref,
    };
    rc = copy(&c2);
    rt_check("gnttab.copy_to_gref", rc == 0 && c2.status == GNTST_okay && !memcmp(dst_page + 100, src_page, 1000),
             "rc %ld status %d", rc, c2.status);

    memset(dst_page, 0, sizeof dst_page);
    struct gnttab_copy c3 = {
        .source = { .u.gmfn = (uintptr_t)src_page >> 12, .domid = DOMID_SELF },
        .dest = { .u.gmfn = (uintptr_t)dst_page >> 12, .domid = DOMID_SELF },
        .len = 4096,
    };
    rc = copy(&c3);
    rt_check("gnttab.copy_gmfn_to_gmfn", rc == 0 && c3.status == GNTST_okay && !memcmp(dst_page, src_page, 4096),
             "rc %ld status %d", rc, c3.status);

    /* per-copy errors come back in status, the hypercall itself succeeds */
    struct gnttab_copy bad = c;
    bad.source.u.ref = 1u << 30;
    rc = copy(&bad);
    rt_check("gnttab.copy_bad_gref", rc == 0 && bad.status == GNTST_bad_gntref, "rc %ld status %d", rc, bad.status);
    bad = c;
    bad.source.offset = 4000;
    bad.len = 200;
    rc = copy(&bad);
    rt_check("gnttab.copy_crosses_page", rc == 0 && bad.status == GNTST_bad_copy_arg, "rc %ld status %d", rc,
             bad.status);
    grant(REF_SRC, src_page, self, 0);
    bad = c;
    rc = copy(&bad);
    rt_check("gnttab.copy_revoked_grant", rc == 0 && bad.status == GNTST_general_error, "rc %ld status %d", rc,
             bad.status);
    grant(REF_SRC, src_page, (domid_t)(self + 1), GTF_permit_access);
    bad = c;
    rc = copy(&bad);
    rt_check("gnttab.copy_granted_to_other_domain", rc == 0 && bad.status == GNTST_general_error,
             "rc %ld status %d", rc, bad.status);
    grant(REF_SRC, src_page, 0, 0);
    grant(REF_DST, dst_page, 0, 0);

    rc = gnttab_op(GNTTABOP_query_size, &qs, 2);
    rt_check_eq("gnttab.query_size_count_2", (uint64_t)rc, (uint64_t)-XEN_EINVAL);
    rc = gnttab_op(99, &qs, 1);
    rt_check_eq("gnttab.unknown_op", (uint64_t)rc, (uint64_t)-XEN_ENOSYS);
}
