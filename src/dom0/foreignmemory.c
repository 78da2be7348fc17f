/*
 * libxenforeignmemory.so.1 for XenSharp. A handle is a connection to xensharpd's privcmd, so that
 * libxenctrl opens as it does under Xen. Mapping guest frames comes with the foreign-mapping
 * milestone (the daemon passes the domain's memfd and the library maps it); until then the map
 * calls fail with EOPNOTSUPP, which callers report as an unsupported operation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <xenforeignmemory.h>

#include "privcmd.h"

struct xenforeignmemory_handle {
    struct privcmd_conn conn;
};

xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    struct privcmd_request open = { .op = PRIVCMD_OP_OPEN, .arg = { PRIVCMD_KIND_FOREIGNMEMORY, PRIVCMD_PROTOCOL_VERSION } };
    xenforeignmemory_handle *h;
    int saved;

    (void)logger;
    (void)open_flags;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (privcmd_open(&h->conn, "xenforeignmemory", &open, NULL, 0) < 0) {
        saved = errno;
        free(h);
        errno = saved;
        return NULL;
    }
    return h;
}

int xenforeignmemory_close(xenforeignmemory_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    free(h);
    return 0;
}

void *xenforeignmemory_map2(xenforeignmemory_handle *h, uint32_t dom, void *addr, int prot, int flags,
                            size_t pages, const xen_pfn_t arr[], int err[])
{
    (void)h; (void)dom; (void)addr; (void)prot; (void)flags; (void)pages; (void)arr; (void)err;
    errno = EOPNOTSUPP;
    return NULL;
}

void *xenforeignmemory_map(xenforeignmemory_handle *h, uint32_t dom, int prot, size_t pages,
                           const xen_pfn_t arr[], int err[])
{
    return xenforeignmemory_map2(h, dom, NULL, prot, 0, pages, arr, err);
}

int xenforeignmemory_unmap(xenforeignmemory_handle *h, void *addr, size_t pages)
{
    (void)h;
    return munmap(addr, pages * 4096);
}

int xenforeignmemory_restrict(xenforeignmemory_handle *h, domid_t domid)
{
    (void)h;
    (void)domid;
    errno = EOPNOTSUPP;
    return -1;
}

xenforeignmemory_resource_handle *xenforeignmemory_map_resource(
    xenforeignmemory_handle *h, domid_t domid, unsigned int type, unsigned int id, unsigned long frame,
    unsigned long nr_frames, void **paddr, int prot, int flags)
{
    (void)h; (void)domid; (void)type; (void)id; (void)frame; (void)nr_frames; (void)paddr; (void)prot; (void)flags;
    errno = EOPNOTSUPP;
    return NULL;
}

int xenforeignmemory_unmap_resource(xenforeignmemory_handle *h, xenforeignmemory_resource_handle *fres)
{
    (void)h;
    (void)fres;
    return 0;
}

int xenforeignmemory_resource_size(xenforeignmemory_handle *h, domid_t domid, unsigned int type,
                                   unsigned int id, size_t *size)
{
    (void)h; (void)domid; (void)type; (void)id; (void)size;
    errno = EOPNOTSUPP;
    return -1;
}
