/*
 * libxengnttab.so.1 for XenSharp (gntdev and gntalloc's roles). Handles are connections to
 * xensharpd's privcmd. A grant map is held by the daemon (in Domain-0's maptrack) until unmapped or
 * until the connection ends; the daemon answers with the granting domain's memfd and the pages'
 * offsets, and the library maps them itself, as for foreign mappings. Grant copies travel inline.
 * Shares (gntalloc) are pages of Domain-0 the daemon allocates and grants from Domain-0's grant table;
 * the library maps them from Domain-0's memfd the same way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xengnttab.h>
#include <xen/grant_table.h>

#include "privcmd.h"

/* Both libxengnttab's handle types (xengnttab_handle, xengntshr_handle) are this struct, as in Xen's header. */
struct xengntdev_handle {
    struct privcmd_conn conn;
    /* xengnttab only: grant copy's request and reply buffers, made at the first copy and kept (a block backend
     * copies per request). */
    pthread_mutex_t copy_lock;
    uint8_t *copy_buf, *copy_tail;
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
    if (h)
        pthread_mutex_init(&h->copy_lock, NULL);
    return h;
}

int xengnttab_close(xengnttab_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    pthread_mutex_destroy(&h->copy_lock);
    free(h->copy_buf);
    free(h->copy_tail);
    free(h);
    return 0;
}

int xengnttab_fd(xengnttab_handle *h)
{
    return h->conn.fd;
}

#define PAGE 4096UL
#define NO_NOTIFY (~(uint64_t)0)

/* Asks the daemon to let go of the maps in [addr, addr + pages pages). */
static int release(xengnttab_handle *h, void *addr, uint64_t pages)
{
    struct privcmd_request req = { .op = PRIVCMD_OP_GNTTAB_UNMAP, .arg = { (uintptr_t)addr, pages } };
    return privcmd_call(&h->conn, &req, NULL, 0, NULL, NULL) < 0 ? -1 : 0;
}

/* Maps the grants at a range reserved first; each batch is held by the daemon under its own address. */
static void *map_refs(xengnttab_handle *h, uint32_t count, const uint32_t *domids, uint32_t domid,
                      const uint32_t *refs, int prot, uint64_t notify_offset, uint64_t notify_port)
{
    uint8_t *base;
    uint32_t done = 0;
    int saved;

    if (count == 0) {
        errno = EINVAL;
        return NULL;
    }
    base = mmap(NULL, (size_t)count * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    while (done < count) {
        uint32_t dom = domids ? domids[done] : domid, n = 1, i, run;
        int64_t offsets[PRIVCMD_MAX_BATCH];
        int memfd = -1;

        /* One request covers a run of grants of one domain. */
        while (done + n < count && n < PRIVCMD_MAX_BATCH && (!domids || domids[done + n] == dom))
            n++;
        struct privcmd_request req = {
            .op = PRIVCMD_OP_GNTTAB_MAP,
            .arg = { dom, (prot & PROT_WRITE) ? 1 : 0, n,
                     done == 0 && notify_offset < (uint64_t)n * PAGE ? notify_offset : NO_NOTIFY,
                     done == 0 ? notify_port : NO_NOTIFY, (uintptr_t)(base + (size_t)done * PAGE) },
        };
        if (privcmd_call_ex(&h->conn, &req, refs + done, n * sizeof(uint32_t), NULL, 0, NULL, offsets,
                            n * sizeof(int64_t), &memfd) < 0 || memfd < 0)
            goto fail;
        /* Pages that lie side by side in the memfd go in with one mmap. */
        for (i = 0; i < n; i += run) {
            for (run = 1; i + run < n && offsets[i + run] == offsets[i] + (int64_t)(run * PAGE); run++)
                ;
            if (mmap(base + (size_t)(done + i) * PAGE, run * PAGE, prot, MAP_SHARED | MAP_FIXED, memfd,
                     (off_t)offsets[i]) == MAP_FAILED) {
                saved = errno;
                close(memfd);
                release(h, base + (size_t)done * PAGE, n);
                errno = saved;
                goto fail;
            }
        }
        close(memfd);
        done += n;
    }
    return base;

fail:
    saved = errno ? errno : EIO;
    if (done)
        release(h, base, done);
    munmap(base, (size_t)count * PAGE);
    errno = saved;
    return NULL;
}

void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot)
{
    return map_refs(h, 1, NULL, domid, &ref, prot, NO_NOTIFY, NO_NOTIFY);
}

void *xengnttab_map_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t *domids, uint32_t *refs, int prot)
{
    return map_refs(h, count, domids, 0, refs, prot, NO_NOTIFY, NO_NOTIFY);
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t domid, uint32_t *refs, int prot)
{
    return map_refs(h, count, NULL, domid, refs, prot, NO_NOTIFY, NO_NOTIFY);
}

void *xengnttab_map_grant_ref_notify(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot,
                                     uint32_t notify_offset, evtchn_port_t notify_port)
{
    /* As libxengnttab: an offset beyond the page asks for no byte, port -1 for no event. */
    return map_refs(h, 1, NULL, domid, &ref, prot, notify_offset < PAGE ? notify_offset : NO_NOTIFY,
                    notify_port == (evtchn_port_t)-1 ? NO_NOTIFY : notify_port);
}

int xengnttab_unmap(xengnttab_handle *h, void *start_address, uint32_t count)
{
    if (!start_address || count == 0 || ((uintptr_t)start_address & (PAGE - 1))) {
        errno = EINVAL;
        return -1;
    }
    /* The daemon first: it refuses (EINVAL) a range that is not a grant map of this handle, so nothing else is
     * unmapped, and it clears the notify byte while the page is still there. */
    if (release(h, start_address, count) < 0)
        return -1;
    return munmap(start_address, (size_t)count * PAGE);
}

int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t nr_grants)
{
    struct privcmd_request req = { .op = PRIVCMD_OP_GNTTAB_SET_MAX, .arg = { nr_grants } };
    return privcmd_call(&h->conn, &req, NULL, 0, NULL, NULL) < 0 ? -1 : 0;
}

/* One batch of segments that each have exactly one granted side. */
static int copy_batch(xengnttab_handle *h, uint32_t count, xengnttab_grant_copy_segment_t **segs, uint8_t *buf,
                      uint8_t *tail)
{
    struct privcmd_request req = { .op = PRIVCMD_OP_GNTTAB_COPY, .arg = { count } };
    struct privcmd_grant_copy *wire = (struct privcmd_grant_copy *)buf;
    uint8_t *out = buf + count * sizeof(*wire), *in;
    size_t tail_len = count * sizeof(int16_t);
    uint32_t i;

    for (i = 0; i < count; i++) {
        xengnttab_grant_copy_segment_t *s = segs[i];
        int to_guest = (s->flags & GNTCOPY_dest_gref) != 0;

        wire[i].ref = to_guest ? s->dest.foreign.ref : s->source.foreign.ref;
        wire[i].domid = to_guest ? s->dest.foreign.domid : s->source.foreign.domid;
        wire[i].offset = to_guest ? s->dest.foreign.offset : s->source.foreign.offset;
        wire[i].len = s->len;
        wire[i].to_guest = to_guest;
        if (to_guest) {
            memcpy(out, s->source.virt, s->len);
            out += s->len;
        } else {
            tail_len += s->len;
        }
    }
    if (privcmd_call_ex(&h->conn, &req, buf, out - buf, NULL, 0, NULL, tail, tail_len, NULL) < 0)
        return -1;
    in = tail + count * sizeof(int16_t);
    for (i = 0; i < count; i++) {
        xengnttab_grant_copy_segment_t *s = segs[i];

        memcpy(&s->status, tail + i * sizeof(int16_t), sizeof(int16_t));
        if (!(s->flags & GNTCOPY_dest_gref)) {
            memcpy(s->dest.virt, in, s->len);
            in += s->len;
        }
    }
    return 0;
}

int xengnttab_grant_copy(xengnttab_handle *h, uint32_t count, xengnttab_grant_copy_segment_t *segs)
{
    static const size_t wire_max = PRIVCMD_MAX_COPY * (sizeof(struct privcmd_grant_copy) + PAGE);
    xengnttab_grant_copy_segment_t *batch[PRIVCMD_MAX_COPY];
    uint8_t *buf, *tail;
    uint32_t i, n = 0;
    int rc = 0, saved;

    /* As gntdev: a segment that leaves its granted page, or that has no granted side, fails the whole call. */
    for (i = 0; i < count; i++) {
        xengnttab_grant_copy_segment_t *s = &segs[i];
        if (s->len > PAGE || !(s->flags & (GNTCOPY_source_gref | GNTCOPY_dest_gref)) ||
            ((s->flags & GNTCOPY_source_gref) && s->source.foreign.offset + s->len > PAGE) ||
            ((s->flags & GNTCOPY_dest_gref) && s->dest.foreign.offset + s->len > PAGE)) {
            errno = EINVAL;
            return -1;
        }
    }
    pthread_mutex_lock(&h->copy_lock);
    if (!h->copy_buf)
        h->copy_buf = malloc(wire_max);
    if (!h->copy_tail)
        h->copy_tail = malloc(PRIVCMD_MAX_COPY * (sizeof(int16_t) + PAGE));
    buf = h->copy_buf;
    tail = h->copy_tail;
    if (!buf || !tail) {
        pthread_mutex_unlock(&h->copy_lock);
        errno = ENOMEM;
        return -1;
    }
    for (i = 0; i < count && rc == 0; i++) {
        xengnttab_grant_copy_segment_t *s = &segs[i];

        if ((s->flags & GNTCOPY_source_gref) && (s->flags & GNTCOPY_dest_gref)) {
            /* Grant to grant: through a page here, the status of the first half that failed. */
            uint8_t page[PAGE];
            xengnttab_grant_copy_segment_t in = *s, out = *s, *one;

            in.flags = GNTCOPY_source_gref;
            in.dest.virt = page;
            out.flags = GNTCOPY_dest_gref;
            out.source.virt = page;
            one = &in;
            rc = copy_batch(h, 1, &one, buf, tail);
            if (rc == 0 && in.status == GNTST_okay) {
                one = &out;
                rc = copy_batch(h, 1, &one, buf, tail);
                s->status = out.status;
            } else {
                s->status = in.status;
            }
            continue;
        }
        batch[n++] = s;
        if (n == PRIVCMD_MAX_COPY || i + 1 == count) {
            rc = copy_batch(h, n, batch, buf, tail);
            n = 0;
        }
    }
    if (rc == 0 && n)
        rc = copy_batch(h, n, batch, buf, tail);
    saved = errno;
    pthread_mutex_unlock(&h->copy_lock);
    errno = saved;
    return rc;
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

/* Shares count fresh pages with a domain at a range reserved first; each batch is keyed by its address. */
static void *share(xengntshr_handle *h, uint32_t domid, int count, uint32_t *refs, int writable,
                   uint64_t notify_offset, uint64_t notify_port)
{
    uint8_t *base;
    int done = 0, saved;

    if (count <= 0) {
        errno = EINVAL;
        return NULL;
    }
    base = mmap(NULL, (size_t)count * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    while (done < count) {
        int n = count - done > PRIVCMD_MAX_BATCH ? PRIVCMD_MAX_BATCH : count - done, i, run;
        struct {
            int64_t offsets[PRIVCMD_MAX_BATCH];
            uint32_t refs[PRIVCMD_MAX_BATCH];
        } tail;
        int64_t *offsets;
        uint32_t *got;
        int memfd = -1;
        struct privcmd_request req = {
            .op = PRIVCMD_OP_GNTSHR_SHARE,
            .arg = { domid, writable ? 1 : 0, (uint64_t)n,
                     done == 0 && notify_offset < (uint64_t)n * PAGE ? notify_offset : NO_NOTIFY,
                     done == 0 ? notify_port : NO_NOTIFY, (uintptr_t)(base + (size_t)done * PAGE) },
        };
        /* The reply's tail is n offsets, then n refs: read it into one buffer and find the refs after the offsets. */
        if (privcmd_call_ex(&h->conn, &req, NULL, 0, NULL, 0, NULL, &tail, (size_t)n * (sizeof(int64_t) + sizeof(uint32_t)),
                            &memfd) < 0 || memfd < 0)
            goto fail;
        offsets = tail.offsets;
        got = (uint32_t *)((uint8_t *)&tail + (size_t)n * sizeof(int64_t));
        for (i = 0; i < n; i++)
            refs[done + i] = got[i];
        for (i = 0; i < n; i += run) {
            for (run = 1; i + run < n && offsets[i + run] == offsets[i] + (int64_t)(run * PAGE); run++)
                ;
            if (mmap(base + (size_t)(done + i) * PAGE, (size_t)run * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                     memfd, (off_t)offsets[i]) == MAP_FAILED) {
                struct privcmd_request undo = { .op = PRIVCMD_OP_GNTSHR_UNSHARE,
                                                .arg = { (uintptr_t)(base + (size_t)done * PAGE), (uint64_t)n } };
                saved = errno;
                close(memfd);
                privcmd_call(&h->conn, &undo, NULL, 0, NULL, NULL);
                errno = saved;
                goto fail;
            }
        }
        close(memfd);
        done += n;
    }
    return base;

fail:
    saved = errno ? errno : EIO;
    if (done) {
        struct privcmd_request undo = { .op = PRIVCMD_OP_GNTSHR_UNSHARE, .arg = { (uintptr_t)base, (uint64_t)done } };
        privcmd_call(&h->conn, &undo, NULL, 0, NULL, NULL);
    }
    munmap(base, (size_t)count * PAGE);
    errno = saved;
    return NULL;
}

void *xengntshr_share_pages(xengntshr_handle *h, uint32_t domid, int count, uint32_t *refs, int writable)
{
    return share(h, domid, count, refs, writable, NO_NOTIFY, NO_NOTIFY);
}

void *xengntshr_share_page_notify(xengntshr_handle *h, uint32_t domid, uint32_t *ref, int writable,
                                  uint32_t notify_offset, evtchn_port_t notify_port)
{
    return share(h, domid, 1, ref, writable, notify_offset < PAGE ? notify_offset : NO_NOTIFY,
                 notify_port == (evtchn_port_t)-1 ? NO_NOTIFY : notify_port);
}

int xengntshr_unshare(xengntshr_handle *h, void *start_address, uint32_t count)
{
    struct privcmd_request req = { .op = PRIVCMD_OP_GNTSHR_UNSHARE, .arg = { (uintptr_t)start_address, count } };

    if (!start_address || count == 0 || ((uintptr_t)start_address & (PAGE - 1))) {
        errno = EINVAL;
        return -1;
    }
    if (privcmd_call(&h->conn, &req, NULL, 0, NULL, NULL) < 0)
        return -1;
    return munmap(start_address, (size_t)count * PAGE);
}
