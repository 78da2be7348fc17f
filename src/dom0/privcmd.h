/*
 * The wire protocol between XenSharp's drop-in Xen libraries (libxencall, libxenevtchn,
 * libxenforeignmemory, libxengnttab) and xensharpd's privcmd, which plays the part of Linux's
 * /dev/xen/{privcmd,hypercall,evtchn,gntdev} for programs outside the daemon.
 *
 * Transport: one SOCK_SEQPACKET Unix socket per library handle, at $XENSHARP_PRIVCMD, else
 * $XENSHARP_RUNDIR/privcmd.sock, else /run/xensharp/privcmd.sock. Every message is one request
 * answered by one reply, in order; file descriptors travel as SCM_RIGHTS beside them. The first
 * request on a connection is PRIVCMD_OP_OPEN, naming what the handle is. When the connection closes
 * (close, exit or a killed process) the daemon drops everything the handle held: its buffer
 * mapping, its event-channel ports and its grant mappings.
 *
 * The C# side of this file is src/XenSharp.Daemon/Privcmd/PrivcmdProtocol.cs; keep both in step.
 */
#ifndef XENSHARP_PRIVCMD_H
#define XENSHARP_PRIVCMD_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#define PRIVCMD_SOCKET_NAME "privcmd.sock"
#define PRIVCMD_PROTOCOL_VERSION 1

/* What a handle is (PRIVCMD_OP_OPEN arg[0]). */
enum privcmd_kind {
    PRIVCMD_KIND_XENCALL = 1,       /* hypercalls; fd[0]: the buffer memfd (arg[2] base, arg[3] size) */
    PRIVCMD_KIND_EVTCHN = 2,        /* fd[0]: the write end of the pipe pending ports are written to; fd[1]: a memfd
                                     * of PRIVCMD_EVTCHN_STATE_PORTS words sealed against shrinking, each port's
                                     * PRIVCMD_EVTCHN_* bits, shared with the daemon */
    PRIVCMD_KIND_FOREIGNMEMORY = 3, /* foreign mappings: replies will carry a domain's memfd */
    PRIVCMD_KIND_GNTTAB = 4,
    PRIVCMD_KIND_GNTSHR = 5,
};

enum privcmd_op {
    /* arg[0] kind, arg[1] PRIVCMD_PROTOCOL_VERSION, then per kind (see privcmd_kind). */
    PRIVCMD_OP_OPEN = 1,
    /* arg[0] hypercall number, arg[1..5] its arguments, as the vCPU registers would hold them;
     * pointers must lie in the handle's buffer memfd. result: the hypercall's return value. */
    PRIVCMD_OP_HYPERCALL = 2,
    /* __HYPERVISOR_dm_op of an interrupt level (XEN_DMOP_set_isa_irq_level, XEN_DMOP_set_pci_intx_level) with one
     * buffer, whose caller goes on without the result: arg[0] domid, followed by the buffer's bytes (a struct
     * xen_dm_op). No reply; the daemon logs a failure. */
    PRIVCMD_OP_DM_OP_POSTED = 3,

    /* Event channels, all in Domain-0 and owned by the handle. result: the local port or 0. */
    PRIVCMD_OP_EVTCHN_BIND_UNBOUND = 16,     /* arg[0] remote domid */
    PRIVCMD_OP_EVTCHN_BIND_INTERDOMAIN = 17, /* arg[0] remote domid, arg[1] remote port */
    PRIVCMD_OP_EVTCHN_BIND_VIRQ = 18,        /* arg[0] virq */
    PRIVCMD_OP_EVTCHN_NOTIFY = 19,           /* arg[0] local port */
    PRIVCMD_OP_EVTCHN_UNBIND = 20,           /* arg[0] local port */
    PRIVCMD_OP_EVTCHN_UNMASK = 21,           /* arg[0] local port */
    PRIVCMD_OP_EVTCHN_RESTRICT = 22,         /* arg[0] domid */

    /* arg[0] domid, arg[1] writable, arg[2] count (at most PRIVCMD_MAX_BATCH), followed by count uint64_t
     * gfns. The reply carries the domain's memfd (SCM_RIGHTS) and is followed by count int64_t: each frame's
     * offset in that memfd, or -errno; the library mmaps them itself, so unmapping is its own munmap. */
    PRIVCMD_OP_FOREIGN_MAP = 32,
    /* gntdev (PRIVCMD_KIND_GNTTAB handles). MAP: arg[0] domid, arg[1] writable, arg[2] count (at most
     * PRIVCMD_MAX_BATCH), arg[3] unmap-notify byte offset in the mapping or ~0, arg[4] unmap-notify Domain-0
     * port or ~0, arg[5] the address the program maps it at (its key for UNMAP); followed by count uint32_t
     * grant refs. Every grant is mapped, and held by the daemon until unmapped, or none is (result: -EINVAL,
     * as gntdev fails a map any of whose grants Xen refused); the reply carries the
     * granting domain's memfd and is followed by count int64_t offsets of the pages in it. */
    PRIVCMD_OP_GNTTAB_MAP = 48,
    /* arg[0] address, arg[1] pages: lets go of every map inside that range (after the unmap notification:
     * the byte is cleared, the port notified). -EINVAL when the range holds none. */
    PRIVCMD_OP_GNTTAB_UNMAP = 49,
    /* arg[0] count (at most PRIVCMD_MAX_COPY) of struct privcmd_grant_copy following the request, then the
     * bytes of each segment copied to a guest, in order. Reply tail: count int16_t GNTST_* statuses, then the
     * bytes of each segment copied from a guest, in order (as many as asked, whatever its status). */
    PRIVCMD_OP_GNTTAB_COPY = 50,
    /* arg[0] the most grant pages the handle may hold mapped at once. */
    PRIVCMD_OP_GNTTAB_SET_MAX = 51,

    /* gntalloc (PRIVCMD_KIND_GNTSHR handles). SHARE: arg[0] grantee domid, arg[1] writable, arg[2] count (at most
     * PRIVCMD_MAX_BATCH), arg[3] unshare-notify byte offset or ~0, arg[4] unshare-notify Domain-0 port or ~0,
     * arg[5] the address the program maps the pages at (its key for UNSHARE). The daemon allocates count zeroed
     * pages and grants each to the domain in Domain-0's grant table; the reply carries Domain-0's memfd and is
     * followed by count int64_t offsets of the pages in it, then count uint32_t grant refs. */
    PRIVCMD_OP_GNTSHR_SHARE = 52,
    /* arg[0] address, arg[1] pages: ends the grants of every share inside that range (after its notification).
     * -EINVAL when the range holds none. */
    PRIVCMD_OP_GNTSHR_UNSHARE = 53,

    /* xenforeignmemory_map_resource: arg[0] domid, arg[1] resource type (XENMEM_resource_*), arg[2] its id,
     * arg[3] first frame, arg[4] count (at most PRIVCMD_MAX_BATCH), arg[5] writable. The reply is as
     * PRIVCMD_OP_FOREIGN_MAP's: the domain's memfd and count int64_t offsets, or -errno for the whole request. */
    PRIVCMD_OP_FOREIGN_MAP_RESOURCE = 64,
};

/* An event channel handle's per-port state, one 32-bit word per port below PRIVCMD_EVTCHN_STATE_PORTS, changed only
 * by compare-and-swap on both sides: an event sets MASKED and writes the port to the pipe, or sets PENDING when MASKED
 * was set already. The library unmasks a port that is not PENDING by clearing MASKED itself, with no request; one
 * that is PENDING it unmasks through PRIVCMD_OP_EVTCHN_UNMASK, which clears PENDING and writes the port again. */
#define PRIVCMD_EVTCHN_STATE_PORTS (1u << 17)
#define PRIVCMD_EVTCHN_MASKED 1u
#define PRIVCMD_EVTCHN_PENDING 2u
/* Set by the daemon on a port whose peer is an IOREQ server's vCPU port: the library notifies it by setting NOTIFIED
 * and waking futex waiters on the word (a shared futex: the daemon's waiting vCPU thread sleeps there), with no
 * request. The daemon clears NOTIFIED as it takes it. */
#define PRIVCMD_EVTCHN_DIRECT 4u
#define PRIVCMD_EVTCHN_NOTIFIED 8u

#define PRIVCMD_MAX_COPY 16

/* One segment of PRIVCMD_OP_GNTTAB_COPY between a guest's granted page and the program's memory. */
struct privcmd_grant_copy {
    uint32_t ref;
    uint16_t domid;
    uint16_t offset;  /* in the granted page */
    uint16_t len;     /* offset + len <= 4096 */
    uint16_t to_guest;
};

#define PRIVCMD_MAX_BATCH 512

struct privcmd_request {
    uint32_t op;
    uint32_t pad;
    uint64_t arg[6];
};

struct privcmd_reply {
    int64_t result; /* >= 0, or -errno */
    uint64_t value[3];
};

/* One connection to the daemon; requests on it are serialised, so a handle may be shared by threads. */
struct privcmd_conn {
    int fd;
    pthread_mutex_t lock;
};

/* Connects and sends PRIVCMD_OP_OPEN with the given fds; 0, or -1 with errno set. */
int privcmd_open(struct privcmd_conn *c, const char *who, const struct privcmd_request *open,
                 const int *fds, int nfds);
void privcmd_close(struct privcmd_conn *c);

/* One request and its reply. Returns reply.result when it is >= 0, else -1 with errno = -result. A
 * received descriptor (close-on-exec) is stored in *rfd when rfd is not NULL, else closed. */
long privcmd_call(struct privcmd_conn *c, const struct privcmd_request *req, const int *fds, int nfds,
                  struct privcmd_reply *reply, int *rfd);

/* The same with bytes after the request (payload) and after the reply (tail, filled only on success). */
long privcmd_call_ex(struct privcmd_conn *c, const struct privcmd_request *req, const void *payload,
                     size_t payload_len, const int *fds, int nfds, struct privcmd_reply *reply,
                     void *tail, size_t tail_len, int *rfd);

/* Sends a request that gets no reply (PRIVCMD_OP_DM_OP_POSTED); the daemon handles it in order with the others.
 * Returns 0, or -1 with errno. */
int privcmd_post(struct privcmd_conn *c, const struct privcmd_request *req, const void *payload, size_t payload_len);

#define PRIVCMD_HIDDEN __attribute__((visibility("hidden")))

#endif
