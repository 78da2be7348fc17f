/*
 * libxencall.so.1 for XenSharp: hypercalls go to xensharpd's privcmd, which runs them as Domain-0.
 * Hypercall buffers are pages of one memfd that the daemon maps too, so the pointers libxenctrl
 * passes in hypercall arguments name memory the daemon reads and writes directly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xencall.h>
#include <xen/xen.h>
#include <xen/hvm/dm_op.h>

#include "privcmd.h"

#define PAGE 4096UL
/* Address space reserved per handle; pages are backed only while allocated. */
#define BUFFER_PAGES 65536UL
/* xencall_alloc_buffer's header before the caller's bytes: the allocation's page count. */
#define SMALL_HEADER 16
/* Single pages freed are kept for the next allocation, as Xen's libxencall keeps a few, so a program that makes
 * many small calls (a device model's interrupt updates) neither gives the memory back nor faults it in each time. */
#define CACHE_PAGES 4

struct xencall_handle {
    struct privcmd_conn conn;
    int memfd;
    uint8_t *base;
    pthread_mutex_t lock;      /* the allocator below */
    uint32_t *run;             /* run[i]: pages of the allocation starting at page i, else 0 */
    uint8_t *used;             /* used[i]: page i belongs to an allocation */
    size_t hint;               /* where the next search starts */
    size_t cache[CACHE_PAGES]; /* freed single pages still marked used, kept for reuse */
    size_t cached;
};

xencall_handle *xencall_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    struct privcmd_request open = { .op = PRIVCMD_OP_OPEN };
    xencall_handle *h;
    int saved;

    (void)logger;
    (void)open_flags;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->memfd = -1;
    h->base = MAP_FAILED;
    h->run = calloc(BUFFER_PAGES, sizeof(*h->run));
    h->used = calloc(BUFFER_PAGES, 1);
    if (!h->run || !h->used)
        goto fail;
    h->memfd = memfd_create("xencall-buffers", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    /* Sealed at its size: the daemon maps it and must never find it shorter (SIGBUS). */
    if (h->memfd < 0 || ftruncate(h->memfd, BUFFER_PAGES * PAGE) < 0 ||
        fcntl(h->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        goto fail;
    h->base = mmap(NULL, BUFFER_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, h->memfd, 0);
    if (h->base == MAP_FAILED)
        goto fail;
    open.arg[0] = PRIVCMD_KIND_XENCALL;
    open.arg[1] = PRIVCMD_PROTOCOL_VERSION;
    open.arg[2] = (uintptr_t)h->base;
    open.arg[3] = BUFFER_PAGES * PAGE;
    if (privcmd_open(&h->conn, "xencall", &open, &h->memfd, 1) < 0)
        goto fail;
    /* The daemon has its own mapping; the fd is kept only to give freed pages back. */
    pthread_mutex_init(&h->lock, NULL);
    return h;

fail:
    saved = errno;
    if (h->base != MAP_FAILED)
        munmap(h->base, BUFFER_PAGES * PAGE);
    if (h->memfd >= 0)
        close(h->memfd);
    free(h->run);
    free(h->used);
    free(h);
    errno = saved;
    return NULL;
}

int xencall_close(xencall_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    munmap(h->base, BUFFER_PAGES * PAGE);
    close(h->memfd);
    pthread_mutex_destroy(&h->lock);
    free(h->run);
    free(h->used);
    free(h);
    return 0;
}

int xencall_fd(xencall_handle *h)
{
    return h->conn.fd;
}

/* Whether [p, p + len) lies in the handle's buffers (where libxendevicemodel puts a dm_op's). */
static int in_buffers(const xencall_handle *h, uint64_t p, uint64_t len)
{
    uint64_t base = (uintptr_t)h->base;
    return p >= base && len <= BUFFER_PAGES * PAGE && p - base <= BUFFER_PAGES * PAGE - len;
}

/*
 * A device model's interrupt-level dm_op (QEMU sets a line on its devices' every register access that changes it, and
 * ignores the result) is posted: the daemon applies it in order with this handle's other calls, and the caller does
 * not wait for a round trip. Arguments the hypervisor would refuse go the ordinary way, to get their error.
 */
static int post_dm_op(xencall_handle *h, uint64_t domid, uint64_t nr_bufs, uint64_t bufs)
{
    const xen_dm_op_buf_t *buf;
    struct xen_dm_op op;
    struct privcmd_request req = { .op = PRIVCMD_OP_DM_OP_POSTED, .arg = { domid } };
    size_t len;

    if (nr_bufs != 1 || !in_buffers(h, bufs, sizeof(*buf)))
        return 0;
    buf = (const xen_dm_op_buf_t *)(uintptr_t)bufs;
    if (!in_buffers(h, (uintptr_t)buf->h, buf->size) || buf->size < offsetof(struct xen_dm_op, u))
        return 0;
    len = buf->size < sizeof(op) ? buf->size : sizeof(op);
    memcpy(&op, buf->h, len);
    if (op.pad)
        return 0;
    switch (op.op) {
    case XEN_DMOP_set_isa_irq_level:
        if (len < offsetof(struct xen_dm_op, u) + sizeof(op.u.set_isa_irq_level) ||
            op.u.set_isa_irq_level.isa_irq >= 16 || op.u.set_isa_irq_level.level > 1)
            return 0;
        break;
    case XEN_DMOP_set_pci_intx_level:
        if (len < offsetof(struct xen_dm_op, u) + sizeof(op.u.set_pci_intx_level) ||
            op.u.set_pci_intx_level.level > 1 || op.u.set_pci_intx_level.intx > 3 || op.u.set_pci_intx_level.device > 31 ||
            op.u.set_pci_intx_level.domain || op.u.set_pci_intx_level.bus)
            return 0;
        break;
    default:
        return 0;
    }
    return privcmd_post(&h->conn, &req, &op, len) == 0;
}

static long call(xencall_handle *h, unsigned op, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
    struct privcmd_request req = { .op = PRIVCMD_OP_HYPERCALL, .arg = { op, a1, a2, a3, a4, a5 } };
    if (op == __HYPERVISOR_dm_op && post_dm_op(h, a1, a2, a3))
        return 0;
    return privcmd_call(&h->conn, &req, NULL, 0, NULL, NULL);
}

int xencall0(xencall_handle *h, unsigned int op)
{
    return call(h, op, 0, 0, 0, 0, 0);
}

int xencall1(xencall_handle *h, unsigned int op, uint64_t arg1)
{
    return call(h, op, arg1, 0, 0, 0, 0);
}

int xencall2(xencall_handle *h, unsigned int op, uint64_t arg1, uint64_t arg2)
{
    return call(h, op, arg1, arg2, 0, 0, 0);
}

long xencall2L(xencall_handle *h, unsigned int op, uint64_t arg1, uint64_t arg2)
{
    return call(h, op, arg1, arg2, 0, 0, 0);
}

int xencall3(xencall_handle *h, unsigned int op, uint64_t arg1, uint64_t arg2, uint64_t arg3)
{
    return call(h, op, arg1, arg2, arg3, 0, 0);
}

int xencall4(xencall_handle *h, unsigned int op, uint64_t arg1, uint64_t arg2, uint64_t arg3, uint64_t arg4)
{
    return call(h, op, arg1, arg2, arg3, arg4, 0);
}

int xencall5(xencall_handle *h, unsigned int op, uint64_t arg1, uint64_t arg2, uint64_t arg3, uint64_t arg4,
             uint64_t arg5)
{
    return call(h, op, arg1, arg2, arg3, arg4, arg5);
}

/* First fit from the hint, then from the start. */
static long find_run(xencall_handle *h, size_t nr, size_t from, size_t to)
{
    size_t start = from, len = 0;
    for (size_t i = from; i < to; i++) {
        if (h->used[i]) {
            len = 0;
            start = i + 1;
            continue;
        }
        if (++len == nr)
            return (long)start;
    }
    return -1;
}

void *xencall_alloc_buffer_pages(xencall_handle *h, size_t nr_pages)
{
    long first;

    if (nr_pages == 0 || nr_pages > BUFFER_PAGES) {
        errno = nr_pages ? ENOMEM : EINVAL;
        return NULL;
    }
    pthread_mutex_lock(&h->lock);
    if (nr_pages == 1 && h->cached > 0) {
        void *p;
        first = (long)h->cache[--h->cached];
        pthread_mutex_unlock(&h->lock);
        /* A buffer starts zeroed, as libxencall's do: callers leave padding and unused fields as they find them. */
        p = h->base + (size_t)first * PAGE;
        memset(p, 0, PAGE);
        return p;
    }
    first = find_run(h, nr_pages, h->hint, BUFFER_PAGES);
    if (first < 0)
        first = find_run(h, nr_pages, 0, BUFFER_PAGES);
    if (first >= 0) {
        memset(h->used + first, 1, nr_pages);
        h->run[first] = (uint32_t)nr_pages;
        h->hint = (size_t)first + nr_pages;
    }
    pthread_mutex_unlock(&h->lock);
    if (first < 0) {
        errno = ENOMEM;
        return NULL;
    }
    return h->base + (size_t)first * PAGE;
}

void xencall_free_buffer_pages(xencall_handle *h, void *p, size_t nr_pages)
{
    size_t first;

    if (!p)
        return;
    first = ((uint8_t *)p - h->base) / PAGE;
    if ((uint8_t *)p < h->base || first >= BUFFER_PAGES)
        return;
    pthread_mutex_lock(&h->lock);
    if (nr_pages == 1 && h->run[first] == 1 && h->cached < CACHE_PAGES) {
        h->cache[h->cached++] = first;
    } else if (h->run[first] == nr_pages) {
        /* Give the memory back; the next user of these pages sees zeroes. */
        fallocate(h->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(first * PAGE), (off_t)(nr_pages * PAGE));
        memset(h->used + first, 0, nr_pages);
        h->run[first] = 0;
        if (first < h->hint)
            h->hint = first;
    }
    pthread_mutex_unlock(&h->lock);
}

void *xencall_alloc_buffer(xencall_handle *h, size_t size)
{
    size_t nr = (size + SMALL_HEADER + PAGE - 1) / PAGE;
    uint8_t *p = xencall_alloc_buffer_pages(h, nr);
    if (!p)
        return NULL;
    *(size_t *)p = nr;
    return p + SMALL_HEADER;
}

void xencall_free_buffer(xencall_handle *h, void *p)
{
    uint8_t *start;

    if (!p)
        return;
    start = (uint8_t *)p - SMALL_HEADER;
    xencall_free_buffer_pages(h, start, *(size_t *)start);
}

int xencall_buffers_never_fault(xencall_handle *h)
{
    (void)h;
    return 1;
}
