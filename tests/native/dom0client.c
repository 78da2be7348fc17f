/*
 * A small Domain-0 program for the dom0 interface tests, run under ./dom0 so that Xen's libxenctrl and
 * XenSharp's drop-in libxencall/libxenevtchn carry its calls to the daemon.
 *
 *   dom0client errors         bad calls; prints "NAME errno" for each
 *   dom0client hold DOMID     binds an unbound port for DOMID and holds hypercall buffers; prints
 *                             "ready PORT", then waits to be killed
 *   dom0client status PORT    prints Domain-0's EVTCHNSTAT_* of PORT
 *   dom0client events         two handles talk over a Domain-0 loopback channel; prints what each step saw
 *   dom0client map DOMID GFN N  maps N frames of DOMID read-only; prints each one's error and first 16 bytes
 *   dom0client grants DOMID   maps, copies and unmaps DOMID's reserved xenstore grant (gntdev's role), checking
 *                             each against a foreign mapping of the same frame; prints "NAME value" per step
 *   dom0client holdgrant DOMID  maps that grant asking for its byte 300 to be cleared on unmap, sets the byte,
 *                             prints "ready", then waits to be killed
 *   dom0client peek DOMID OFFSET  prints the byte at OFFSET of DOMID's xenstore page (a foreign mapping)
 *   dom0client shares DOMID   shares pages with Domain-0 itself and with DOMID (gntalloc's role), mapping them
 *                             back through gntdev; prints "NAME value" per step
 *   dom0client holdshare      shares a page with Domain-0, prints "ready REF", then waits to be killed
 *   dom0client mapref DOMID REF  maps grant REF of DOMID; prints "mapped ERRNO"
 *   dom0client introduce DOMID  (with $XENSTORED_PATH naming a C xenstored) introduces the paused DOMID to it on a
 *                             fresh store port, puts an XS_READ of a node only that xenstored has into the
 *                             guest's ring as the guest would, and prints what came back on the ring; then
 *                             releases the domain
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xencall.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>
#include <xenstore.h>
#include <xen/io/xs_wire.h>
#include <xen/grant_table.h>
#include <xen/hvm/params.h>
#include <sys/mman.h>
#include <xen/domctl.h>
#include <xen/event_channel.h>

static int errors(void)
{
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    xencall_handle *xcall = xencall_open(NULL, 0);
    xc_vcpuinfo_t vinfo;
    struct xen_domctl *domctl;
    int rc;

    if (!xch || !xcall) {
        perror("open");
        return 1;
    }
    /* A domain that does not exist. */
    rc = xc_vcpu_getinfo(xch, 31000, 0, &vinfo);
    printf("getvcpuinfo-nodomain %d\n", rc < 0 ? errno : 0);
    rc = xc_domain_pause(xch, 31000);
    printf("pause-nodomain %d\n", rc < 0 ? errno : 0);
    /* A vCPU the domain does not have. */
    rc = xc_vcpu_getinfo(xch, 0, 4096, &vinfo);
    printf("getvcpuinfo-novcpu %d\n", rc < 0 ? errno : 0);

    /* Another interface version than 4.17's. */
    domctl = xencall_alloc_buffer(xcall, sizeof(*domctl));
    memset(domctl, 0, sizeof(*domctl));
    domctl->cmd = XEN_DOMCTL_getdomaininfo;
    domctl->interface_version = XEN_DOMCTL_INTERFACE_VERSION - 1;
    rc = xencall1(xcall, __HYPERVISOR_domctl, (uintptr_t)domctl);
    printf("domctl-version %d\n", rc < 0 ? errno : 0);
    /* The right version works through the raw call too. */
    domctl->interface_version = XEN_DOMCTL_INTERFACE_VERSION;
    rc = xencall1(xcall, __HYPERVISOR_domctl, (uintptr_t)domctl);
    printf("domctl-ok %d %u\n", rc < 0 ? errno : 0, domctl->u.getdomaininfo.domain);
    /* A pointer that is not a hypercall buffer. */
    struct xen_domctl on_stack = *domctl;
    rc = xencall1(xcall, __HYPERVISOR_domctl, (uintptr_t)&on_stack);
    printf("domctl-notbuffer %d\n", rc < 0 ? errno : 0);
    /* A hypercall a process has no vCPU for. */
    rc = xencall3(xcall, __HYPERVISOR_vcpu_op, 0, 0, 0);
    printf("vcpu-op %d\n", rc < 0 ? errno : 0);
    xencall_free_buffer(xcall, domctl);
    xencall_close(xcall);
    xc_interface_close(xch);
    return 0;
}

static int hold(uint32_t domid)
{
    xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
    xencall_handle *xcall = xencall_open(NULL, 0);
    int port;
    char *pages;

    if (!xce || !xcall) {
        perror("open");
        return 1;
    }
    port = xenevtchn_bind_unbound_port(xce, domid);
    if (port < 0) {
        perror("bind_unbound_port");
        return 1;
    }
    pages = xencall_alloc_buffer_pages(xcall, 16);
    if (!pages) {
        perror("alloc_buffer_pages");
        return 1;
    }
    memset(pages, 0x5a, 16 * 4096);
    printf("ready %d\n", port);
    fflush(stdout);
    for (;;)
        pause();
}

static int status(int port)
{
    xencall_handle *xcall = xencall_open(NULL, 0);
    struct evtchn_status *st;
    int rc;

    if (!xcall) {
        perror("xencall_open");
        return 1;
    }
    st = xencall_alloc_buffer(xcall, sizeof(*st));
    memset(st, 0, sizeof(*st));
    st->dom = DOMID_SELF;
    st->port = port;
    rc = xencall2(xcall, __HYPERVISOR_event_channel_op, EVTCHNOP_status, (uintptr_t)st);
    if (rc < 0) {
        printf("status error %d\n", errno);
        return 1;
    }
    printf("status %u\n", st->status);
    xencall_free_buffer(xcall, st);
    xencall_close(xcall);
    return 0;
}

/* What a handle's fd holds right now: a port, or -1 when nothing is pending. */
static int ready_port(xenevtchn_handle *h)
{
    struct pollfd p = { .fd = xenevtchn_fd(h), .events = POLLIN };
    if (poll(&p, 1, 0) != 1)
        return -1;
    return xenevtchn_pending(h);
}

static int events(void)
{
    xenevtchn_handle *a = xenevtchn_open(NULL, 0), *b = xenevtchn_open(NULL, 0);
    int pa, pb, rc;

    if (!a || !b) {
        perror("xenevtchn_open");
        return 1;
    }
    pa = xenevtchn_bind_unbound_port(a, 0);
    pb = xenevtchn_bind_interdomain(b, 0, pa);
    printf("bound %d %d\n", pa, pb);
    /* Xen raises a newly bound interdomain port once. */
    printf("b-after-bind %d\n", ready_port(b) == pb);
    xenevtchn_unmask(b, pb);

    xenevtchn_notify(b, pb);
    printf("a-first %d\n", ready_port(a) == pa);
    xenevtchn_notify(b, pb);
    printf("a-while-masked %d\n", ready_port(a));
    xenevtchn_unmask(a, pa);
    printf("a-after-unmask %d\n", ready_port(a) == pa);
    xenevtchn_unmask(a, pa);
    printf("a-nothing-left %d\n", ready_port(a));

    /* Ports belong to the handle that bound them. */
    rc = xenevtchn_notify(a, pb);
    printf("notify-foreign %d\n", rc < 0 ? errno : 0);
    rc = xenevtchn_unbind(a, pb);
    printf("unbind-foreign %d\n", rc < 0 ? errno : 0);
    rc = xenevtchn_unbind(b, pb);
    printf("unbind-own %d\n", rc < 0 ? errno : 0);
    xenevtchn_close(a);
    xenevtchn_close(b);
    return 0;
}

static int map(uint32_t domid, unsigned long gfn, int n)
{
    xenforeignmemory_handle *fmem = xenforeignmemory_open(NULL, 0);
    xen_pfn_t pfns[64];
    int errs[64];
    unsigned char *p;

    if (!fmem || n < 1 || n > 64) {
        perror("xenforeignmemory_open");
        return 1;
    }
    for (int i = 0; i < n; i++)
        pfns[i] = gfn + i;
    p = xenforeignmemory_map(fmem, domid, PROT_READ, n, pfns, errs);
    if (!p) {
        printf("map error %d\n", errno);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        printf("page %d %d", i, errs[i]);
        if (!errs[i])
            for (int j = 0; j < 16; j++)
                printf(" %02x", p[i * 4096 + j]);
        printf("\n");
    }
    xenforeignmemory_unmap(fmem, p, n);
    xenforeignmemory_close(fmem);
    return 0;
}

/* DOMID's xenstore page, mapped writable by frame number (the reference the grant tests compare with). */
static unsigned char *store_page(uint32_t domid, xenforeignmemory_handle **fmem)
{
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    uint64_t pfn = 0;
    xen_pfn_t gfn;
    int err = 0;
    unsigned char *p;

    if (!xch || xc_hvm_param_get(xch, domid, HVM_PARAM_STORE_PFN, &pfn) < 0) {
        perror("HVM_PARAM_STORE_PFN");
        return NULL;
    }
    xc_interface_close(xch);
    *fmem = xenforeignmemory_open(NULL, 0);
    gfn = pfn;
    p = *fmem ? xenforeignmemory_map(*fmem, domid, PROT_READ | PROT_WRITE, 1, &gfn, &err) : NULL;
    if (!p || err)
        perror("store page");
    return p;
}

static int grants(uint32_t domid)
{
    xenforeignmemory_handle *fmem;
    unsigned char *ref = store_page(domid, &fmem), *p, *q;
    xengnttab_handle *g = xengnttab_open(NULL, 0);
    xengnttab_grant_copy_segment_t segs[4];
    char got[8], put[8] = "copied!", back[8];
    uint32_t refs[2] = { GNTTAB_RESERVED_XENSTORE, 7000 };
    int rc;

    if (!ref || !g) {
        perror("open");
        return 1;
    }
    /* A writable map shares the frame both ways. */
    p = xengnttab_map_grant_ref(g, domid, GNTTAB_RESERVED_XENSTORE, PROT_READ | PROT_WRITE);
    printf("map %d\n", p ? 0 : errno);
    if (!p)
        return 1;
    memcpy(p + 100, "granted", 8);
    printf("map-shared %d\n", !memcmp(ref + 100, "granted", 8));
    ref[108] = 0x5a;
    printf("map-sees-guest %d\n", p[108] == 0x5a);
    /* Two maps of one grant are two views of one page. */
    q = xengnttab_map_domain_grant_refs(g, 1, domid, refs, PROT_READ);
    printf("map-again %d\n", q && !memcmp(q + 100, "granted", 8));
    printf("unmap-again %d\n", q && xengnttab_unmap(g, q, 1) == 0 ? 0 : errno);
    printf("unmap %d\n", xengnttab_unmap(g, p, 1) == 0 ? 0 : errno);
    /* Once unmapped the address is no map of the handle's. */
    rc = xengnttab_unmap(g, p, 1);
    printf("unmap-twice %d\n", rc < 0 ? errno : 0);

    /* Bad refs and domains fail the whole map, as gntdev fails it. */
    p = xengnttab_map_grant_ref(g, domid, 7000, PROT_READ);
    printf("map-badref %d\n", p ? 0 : errno);
    p = xengnttab_map_grant_ref(g, 31000, GNTTAB_RESERVED_XENSTORE, PROT_READ);
    printf("map-nodomain %d\n", p ? 0 : errno);
    p = xengnttab_map_domain_grant_refs(g, 2, domid, refs, PROT_READ);
    printf("map-partly-bad %d\n", p ? 0 : errno);

    /* Grant copy: each segment its own GNTST_* status. */
    memset(segs, 0, sizeof(segs));
    memset(got, 0, sizeof(got));
    segs[0].flags = GNTCOPY_source_gref;
    segs[0].source.foreign.ref = GNTTAB_RESERVED_XENSTORE;
    segs[0].source.foreign.domid = domid;
    segs[0].source.foreign.offset = 100;
    segs[0].dest.virt = got;
    segs[0].len = 8;
    segs[1].flags = GNTCOPY_dest_gref;
    segs[1].dest.foreign.ref = GNTTAB_RESERVED_XENSTORE;
    segs[1].dest.foreign.domid = domid;
    segs[1].dest.foreign.offset = 200;
    segs[1].source.virt = put;
    segs[1].len = 8;
    segs[2] = segs[0];
    segs[2].source.foreign.ref = 7000;
    segs[2].dest.virt = back;
    segs[3] = segs[0];
    segs[3].source.foreign.domid = 31000;
    segs[3].dest.virt = back;
    rc = xengnttab_grant_copy(g, 4, segs);
    printf("copy %d\n", rc < 0 ? errno : 0);
    printf("copy-from %d %d\n", segs[0].status, !memcmp(got, "granted", 8));
    printf("copy-to %d %d\n", segs[1].status, !memcmp(ref + 200, "copied!", 8));
    printf("copy-badref %d\n", segs[2].status);
    printf("copy-nodomain %d\n", segs[3].status);
    /* A segment that leaves its page fails the call. */
    segs[0].source.foreign.offset = 4090;
    rc = xengnttab_grant_copy(g, 1, segs);
    printf("copy-outside %d\n", rc < 0 ? errno : 0);

    /* Unmap notification: the byte is cleared when the map goes. */
    p = xengnttab_map_grant_ref_notify(g, domid, GNTTAB_RESERVED_XENSTORE, PROT_READ | PROT_WRITE, 300, -1);
    if (p)
        p[300] = 0x77;
    printf("notify-set %d\n", ref[300]);
    printf("notify-unmap %d\n", p && xengnttab_unmap(g, p, 1) == 0 ? 0 : errno);
    printf("notify-cleared %d\n", ref[300]);

    /* A handle limited to one grant maps no second one at the same time. */
    printf("set-max %d\n", xengnttab_set_max_grants(g, 1) == 0 ? 0 : errno);
    p = xengnttab_map_grant_ref(g, domid, GNTTAB_RESERVED_XENSTORE, PROT_READ);
    q = xengnttab_map_grant_ref(g, domid, GNTTAB_RESERVED_XENSTORE, PROT_READ);
    printf("over-max %d %d\n", p != NULL, q ? 0 : errno);
    if (p)
        xengnttab_unmap(g, p, 1);
    memset(ref + 100, 0, 208);
    xengnttab_close(g);
    xenforeignmemory_unmap(fmem, ref, 1);
    xenforeignmemory_close(fmem);
    return 0;
}

static int holdgrant(uint32_t domid)
{
    xengnttab_handle *g = xengnttab_open(NULL, 0);
    unsigned char *p = g ? xengnttab_map_grant_ref_notify(g, domid, GNTTAB_RESERVED_XENSTORE,
                                                          PROT_READ | PROT_WRITE, 300, -1) : NULL;
    if (!p) {
        perror("map");
        return 1;
    }
    p[300] = 0x66;
    printf("ready\n");
    for (;;)
        pause();
}

static int peek(uint32_t domid, int offset)
{
    xenforeignmemory_handle *fmem;
    unsigned char *ref = store_page(domid, &fmem);

    if (!ref || offset < 0 || offset >= 4096)
        return 1;
    printf("byte %d\n", ref[offset]);
    return 0;
}

static int shares(uint32_t domid)
{
    xengntshr_handle *s = xengntshr_open(NULL, 0);
    xengnttab_handle *g = xengnttab_open(NULL, 0);
    uint32_t refs[2], ref;
    unsigned char *p, *q;
    int rc;

    if (!s || !g) {
        perror("open");
        return 1;
    }
    /* Pages shared with Domain-0 itself map back through gntdev (as a vchan in Domain-0 does). */
    p = xengntshr_share_pages(s, 0, 2, refs, 1);
    printf("share %d\n", p ? 0 : errno);
    if (!p)
        return 1;
    printf("share-zeroed %d\n", p[0] == 0 && p[4096 + 4095] == 0);
    printf("share-refs %d\n", refs[0] >= GNTTAB_NR_RESERVED_ENTRIES && refs[1] != refs[0]);
    memcpy(p + 4096, "second", 7);
    q = xengnttab_map_domain_grant_refs(g, 2, 0, refs, PROT_READ | PROT_WRITE);
    printf("share-mapped %d\n", q && !memcmp(q + 4096, "second", 7));
    if (q) {
        q[10] = 0x42;
        printf("share-both-ways %d\n", p[10] == 0x42);
        xengnttab_unmap(g, q, 2);
    }
    printf("unshare %d\n", xengntshr_unshare(s, p, 2) == 0 ? 0 : errno);
    rc = xengntshr_unshare(s, p, 2);
    printf("unshare-twice %d\n", rc < 0 ? errno : 0);
    q = xengnttab_map_grant_ref(g, 0, refs[0], PROT_READ);
    printf("map-after-unshare %d\n", q ? 0 : errno);

    /* A page shared with another domain is not Domain-0's to map. */
    p = xengntshr_share_pages(s, domid, 1, &ref, 0);
    q = p ? xengnttab_map_grant_ref(g, 0, ref, PROT_READ) : NULL;
    printf("map-other-grantee %d %d\n", p != NULL, q ? 0 : errno);
    if (p)
        xengntshr_unshare(s, p, 1);
    p = xengntshr_share_pages(s, 0x7FF5, 1, &ref, 1);
    printf("share-reserved-domid %d\n", p ? 0 : errno);

    /* The notification on unshare; the grantee's mapping keeps the page until it lets go. */
    p = xengntshr_share_page_notify(s, 0, &ref, 1, 100, -1);
    q = p ? xengnttab_map_grant_ref(g, 0, ref, PROT_READ) : NULL;
    if (p)
        p[100] = 9;
    printf("notify-seen %d\n", q ? q[100] : -1);
    printf("notify-unshare %d\n", p && xengntshr_unshare(s, p, 1) == 0 ? 0 : errno);
    printf("notify-cleared %d\n", q ? q[100] : -1);
    if (q)
        xengnttab_unmap(g, q, 1);
    xengnttab_close(g);
    xengntshr_close(s);
    return 0;
}

static int holdshare(void)
{
    xengntshr_handle *s = xengntshr_open(NULL, 0);
    uint32_t ref;
    unsigned char *p = s ? xengntshr_share_pages(s, 0, 1, &ref, 1) : NULL;

    if (!p) {
        perror("share");
        return 1;
    }
    printf("ready %u\n", ref);
    for (;;)
        pause();
}

static int mapref(uint32_t domid, uint32_t ref)
{
    xengnttab_handle *g = xengnttab_open(NULL, 0);
    void *p = g ? xengnttab_map_grant_ref(g, domid, ref, PROT_READ) : NULL;

    printf("mapped %d\n", p ? 0 : errno);
    return 0;
}

static int introduce(uint32_t domid)
{
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    struct xs_handle *xs = xs_open(0);
    struct xs_permissions readable = { .id = 0, .perms = XS_PERM_READ };
    xenforeignmemory_handle *fmem;
    struct xenstore_domain_interface *ring;
    struct xsd_sockmsg msg = { .type = XS_READ, .req_id = 7 };
    const char path[] = "/tool/cxs";
    char reply[64];
    uint64_t pfn = 0;
    int port, i;
    unsigned int len;

    if (!xch || !xs) {
        perror("open");
        return 1;
    }
    if (!xs_write(xs, XBT_NULL, path, "from-c-xenstored", 16) || !xs_set_permissions(xs, XBT_NULL, path, &readable, 1)) {
        perror("xs_write");
        return 1;
    }
    /* A fresh store port in the guest for Domain-0 (the toolstack's own xenstored holds the first). */
    port = xc_evtchn_alloc_unbound(xch, domid, 0);
    xc_hvm_param_get(xch, domid, HVM_PARAM_STORE_PFN, &pfn);
    printf("introduce %d\n", xs_introduce_domain(xs, domid, pfn, port) ? 0 : errno);
    printf("is-introduced %d\n", xs_is_domain_introduced(xs, domid));

    /* As the guest: a request on the ring, read back from it. */
    ring = (struct xenstore_domain_interface *)store_page(domid, &fmem);
    if (!ring)
        return 1;
    msg.len = sizeof(path);
    for (i = 0; i < (int)sizeof(msg); i++)
        ring->req[MASK_XENSTORE_IDX(ring->req_prod + i)] = ((char *)&msg)[i];
    for (i = 0; i < (int)sizeof(path); i++)
        ring->req[MASK_XENSTORE_IDX(ring->req_prod + sizeof(msg) + i)] = path[i];
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    ring->req_prod += sizeof(msg) + sizeof(path);
    /* xenstored looks at every ring when it wakes; a request on its socket wakes it. */
    for (i = 0; i < 100 && ring->rsp_prod - ring->rsp_cons < sizeof(msg); i++) {
        free(xs_read(xs, XBT_NULL, path, &len));
        usleep(50000);
    }
    if (ring->rsp_prod - ring->rsp_cons >= sizeof(msg)) {
        for (i = 0; i < (int)sizeof(msg); i++)
            ((char *)&msg)[i] = ring->rsp[MASK_XENSTORE_IDX(ring->rsp_cons + i)];
        len = msg.len < sizeof(reply) - 1 ? msg.len : sizeof(reply) - 1;
        for (i = 0; i < (int)len; i++)
            reply[i] = ring->rsp[MASK_XENSTORE_IDX(ring->rsp_cons + sizeof(msg) + i)];
        reply[len] = 0;
        ring->rsp_cons += sizeof(msg) + msg.len;
        printf("guest-reply %u %u %s\n", msg.type, msg.req_id, reply);
    } else {
        printf("guest-reply none\n");
    }
    printf("release %d\n", xs_release_domain(xs, domid) ? 0 : errno);
    xs_close(xs);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "errors"))
        return errors();
    if (argc >= 3 && !strcmp(argv[1], "hold"))
        return hold((uint32_t)atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "status"))
        return status(atoi(argv[2]));
    if (argc >= 2 && !strcmp(argv[1], "events"))
        return events();
    if (argc >= 5 && !strcmp(argv[1], "map"))
        return map((uint32_t)atoi(argv[2]), strtoul(argv[3], NULL, 0), atoi(argv[4]));
    if (argc >= 3 && !strcmp(argv[1], "grants"))
        return grants((uint32_t)atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "holdgrant"))
        return holdgrant((uint32_t)atoi(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "peek"))
        return peek((uint32_t)atoi(argv[2]), atoi(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "shares"))
        return shares((uint32_t)atoi(argv[2]));
    if (argc >= 2 && !strcmp(argv[1], "holdshare"))
        return holdshare();
    if (argc >= 4 && !strcmp(argv[1], "mapref"))
        return mapref((uint32_t)atoi(argv[2]), (uint32_t)strtoul(argv[3], NULL, 0));
    if (argc >= 3 && !strcmp(argv[1], "introduce"))
        return introduce((uint32_t)atoi(argv[2]));
    fprintf(stderr, "usage: dom0client errors | hold DOMID | status PORT | events | map DOMID GFN N | grants DOMID |"
                    " holdgrant DOMID | peek DOMID OFFSET | shares DOMID | holdshare | mapref DOMID REF | introduce DOMID\n");
    return 2;
}
