/*
 * libxengnttab.so.1 for XenSharp (gntdev and gntalloc's roles). Handles are connections to
 * xensharpd's privcmd so that programs open them as under Xen; mapping and sharing grants come with
 * the gntdev milestone and fail with EOPNOTSUPP until then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include <xengnttab.h>

#include "privcmd.h"

struct xengnttab_handle {
    struct privcmd_conn conn;
};

struct xengntdev_handle {
    struct privcmd_conn conn;
};

static int open_kind(struct privcmd_conn *c, const char *who, int kind)
{
    struct privcmd_request open = { .op = PRIVCMD_OP_OPEN, .arg = { (uint64_t)kind, PRIVCMD_PROTOCOL_VERSION } };
    return privcmd_open(c, who, &open, NULL, 0);
}

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    xengnttab_handle *h = calloc(1, sizeof(*h));
    int saved;

    (void)logger;
    (void)open_flags;
    if (h && open_kind(&h->conn, "xengnttab", PRIVCMD_KIND_GNTTAB) < 0) {
        saved = errno;
        free(h);
        errno = saved;
        return NULL;
    }
    return h;
}

int xengnttab_close(xengnttab_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    free(h);
    return 0;
}

int xengnttab_fd(xengnttab_handle *h)
{
    return h->conn.fd;
}

static void *unsupported(void)
{
    errno = EOPNOTSUPP;
    return NULL;
}

void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot)
{
    (void)h; (void)domid; (void)ref; (void)prot;
    return unsupported();
}

void *xengnttab_map_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t *domids, uint32_t *refs, int prot)
{
    (void)h; (void)count; (void)domids; (void)refs; (void)prot;
    return unsupported();
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t domid, uint32_t *refs, int prot)
{
    (void)h; (void)count; (void)domid; (void)refs; (void)prot;
    return unsupported();
}

void *xengnttab_map_grant_ref_notify(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot,
                                     uint32_t notify_offset, evtchn_port_t notify_port)
{
    (void)h; (void)domid; (void)ref; (void)prot; (void)notify_offset; (void)notify_port;
    return unsupported();
}

int xengnttab_unmap(xengnttab_handle *h, void *start_address, uint32_t count)
{
    (void)h; (void)start_address; (void)count;
    errno = EINVAL; /* nothing can have been mapped through this handle */
    return -1;
}

int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t nr_grants)
{
    (void)h;
    (void)nr_grants;
    return 0;
}

int xengnttab_grant_copy(xengnttab_handle *h, uint32_t count, xengnttab_grant_copy_segment_t *segs)
{
    (void)h; (void)count; (void)segs;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_exp_from_refs(xengnttab_handle *h, uint32_t domid, uint32_t flags, uint32_t count,
                                   const uint32_t *refs, uint32_t *fd)
{
    (void)h; (void)domid; (void)flags; (void)count; (void)refs; (void)fd;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_exp_wait_released(xengnttab_handle *h, uint32_t fd, uint32_t wait_to_ms)
{
    (void)h; (void)fd; (void)wait_to_ms;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_imp_to_refs(xengnttab_handle *h, uint32_t domid, uint32_t fd, uint32_t count, uint32_t *refs)
{
    (void)h; (void)domid; (void)fd; (void)count; (void)refs;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_imp_release(xengnttab_handle *h, uint32_t fd)
{
    (void)h; (void)fd;
    errno = EOPNOTSUPP;
    return -1;
}

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    xengntshr_handle *h = calloc(1, sizeof(*h));
    int saved;

    (void)logger;
    (void)open_flags;
    if (h && open_kind(&h->conn, "xengntshr", PRIVCMD_KIND_GNTSHR) < 0) {
        saved = errno;
        free(h);
        errno = saved;
        return NULL;
    }
    return h;
}

int xengntshr_close(xengntshr_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    free(h);
    return 0;
}

int xengntshr_fd(xengntshr_handle *h)
{
    return h->conn.fd;
}

void *xengntshr_share_pages(xengntshr_handle *h, uint32_t domid, int count, uint32_t *refs, int writable)
{
    (void)h; (void)domid; (void)count; (void)refs; (void)writable;
    return unsupported();
}

void *xengntshr_share_page_notify(xengntshr_handle *h, uint32_t domid, uint32_t *ref, int writable,
                                  uint32_t notify_offset, evtchn_port_t notify_port)
{
    (void)h; (void)domid; (void)ref; (void)writable; (void)notify_offset; (void)notify_port;
    return unsupported();
}

int xengntshr_unshare(xengntshr_handle *h, void *start_address, uint32_t count)
{
    (void)h; (void)start_address; (void)count;
    errno = EINVAL;
    return -1;
}
