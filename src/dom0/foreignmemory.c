/*
 * libxenforeignmemory.so.1 for XenSharp. A handle is a connection to xensharpd's privcmd. To map a
 * guest's frames the daemon answers with the domain's memfd and each frame's offset in it, and the
 * library maps them into one range itself (MAP_SHARED), so the daemon keeps nothing per mapping.
 * Resource mappings travel the same way: the daemon names the frames of the resource (a guest's grant
 * table) by their offsets in the domain's memfd. Resources the daemon does not serve fail with EOPNOTSUPP,
 * which libxenguest takes as "use the older interface".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenforeignmemory.h>

#include "privcmd.h"

#define PAGE 4096UL

struct xenforeignmemory_handle {
    struct privcmd_conn conn;
};

/* What xenforeignmemory_map_resource returns: the mapped range, unmapped by xenforeignmemory_unmap_resource. */
struct xenforeignmemory_resource_handle {
    void *addr;
    unsigned long nr_frames;
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
    size_t done = 0, i;
    uint8_t *base;
    int *errs = err, failed = 0, saved;

    if (pages == 0 || dom > 0xFFFF) {
        errno = EINVAL;
        return NULL;
    }
    if (!errs && !(errs = calloc(pages, sizeof(int))))
        return NULL;
    /* The whole range first, inaccessible: frames that fail to map stay so, as under Xen's privcmd. */
    base = mmap(addr, pages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | (addr ? flags : 0), -1, 0);
    if (base == MAP_FAILED)
        goto fail;
    while (done < pages) {
        size_t n = pages - done > PRIVCMD_MAX_BATCH ? PRIVCMD_MAX_BATCH : pages - done;
        struct privcmd_request req = { .op = PRIVCMD_OP_FOREIGN_MAP,
                                       .arg = { dom, (prot & PROT_WRITE) ? 1 : 0, n } };
        uint64_t gfns[PRIVCMD_MAX_BATCH];
        int64_t offsets[PRIVCMD_MAX_BATCH];
        int memfd = -1;
        useconds_t backoff = 100;

        for (i = 0; i < n; i++)
            gfns[i] = arr[done + i];
        for (;;) {
            size_t paged = 0;

            if (privcmd_call_ex(&h->conn, &req, gfns, n * sizeof(uint64_t), NULL, 0, NULL, offsets,
                                n * sizeof(int64_t), &memfd) < 0 || memfd < 0) {
                saved = errno ? errno : EIO;
                if (memfd >= 0)
                    close(memfd);
                munmap(base, pages * PAGE);
                errno = saved;
                goto fail;
            }
            for (i = 0; i < n; i++)
                paged += offsets[i] == -ENOENT;
            if (!paged)
                break;
            /* Frames paged out by a pager: the daemon asked for them; try again until they are back (as Linux's
             * library does with privcmd's paged error), a little less often each time. */
            close(memfd);
            memfd = -1;
            usleep(backoff);
            if (backoff < 10000)
                backoff *= 2;
        }
        for (i = 0; i < n; i++) {
            if (offsets[i] < 0) {
                errs[done + i] = (int)offsets[i];
                failed = 1;
                continue;
            }
            if (mmap(base + (done + i) * PAGE, PAGE, prot, MAP_SHARED | MAP_FIXED, memfd, (off_t)offsets[i]) == MAP_FAILED) {
                errs[done + i] = -errno;
                failed = 1;
                continue;
            }
            errs[done + i] = 0;
        }
        close(memfd);
        done += n;
    }
    if (errs != err) {
        free(errs);
        if (failed) {
            munmap(base, pages * PAGE);
            errno = EFAULT;
            return NULL;
        }
    }
    return base;

fail:
    if (errs != err)
        free(errs);
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
    return munmap(addr, pages * PAGE);
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
    xenforeignmemory_resource_handle *fres;
    unsigned long done = 0, i;
    uint8_t *base;
    int saved;

    if (nr_frames == 0 || !paddr) {
        errno = EINVAL;
        return NULL;
    }
    fres = calloc(1, sizeof(*fres));
    if (!fres)
        return NULL;
    base = mmap(*paddr, nr_frames * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | (*paddr ? flags : 0), -1, 0);
    if (base == MAP_FAILED) {
        saved = errno;
        free(fres);
        errno = saved;
        return NULL;
    }
    while (done < nr_frames) {
        unsigned long n = nr_frames - done > PRIVCMD_MAX_BATCH ? PRIVCMD_MAX_BATCH : nr_frames - done;
        struct privcmd_request req = { .op = PRIVCMD_OP_FOREIGN_MAP_RESOURCE,
                                       .arg = { domid, type, id, frame + done, n, (prot & PROT_WRITE) ? 1 : 0 } };
        int64_t offsets[PRIVCMD_MAX_BATCH];
        int memfd = -1;

        if (privcmd_call_ex(&h->conn, &req, NULL, 0, NULL, 0, NULL, offsets, n * sizeof(int64_t), &memfd) < 0
            || memfd < 0)
            goto fail;
        for (i = 0; i < n; i++) {
            if (offsets[i] < 0) {
                close(memfd);
                errno = (int)-offsets[i];
                goto fail;
            }
            if (mmap(base + (done + i) * PAGE, PAGE, prot, MAP_SHARED | MAP_FIXED, memfd, (off_t)offsets[i]) == MAP_FAILED) {
                saved = errno;
                close(memfd);
                errno = saved;
                goto fail;
            }
        }
        close(memfd);
        done += n;
    }
    fres->addr = base;
    fres->nr_frames = nr_frames;
    *paddr = base;
    return fres;

fail:
    saved = errno ? errno : EIO;
    munmap(base, nr_frames * PAGE);
    free(fres);
    errno = saved;
    return NULL;
}

int xenforeignmemory_unmap_resource(xenforeignmemory_handle *h, xenforeignmemory_resource_handle *fres)
{
    int rc = 0;

    (void)h;
    if (!fres)
        return 0;
    if (fres->addr)
        rc = munmap(fres->addr, fres->nr_frames * PAGE);
    free(fres);
    return rc;
}

int xenforeignmemory_resource_size(xenforeignmemory_handle *h, domid_t domid, unsigned int type,
                                   unsigned int id, size_t *size)
{
    (void)h; (void)domid; (void)type; (void)id; (void)size;
    errno = EOPNOTSUPP;
    return -1;
}
