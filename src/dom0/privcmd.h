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
 * mapping, its event-channel ports and, later, its foreign and grant mappings.
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
    PRIVCMD_KIND_EVTCHN = 2,        /* fd[0]: the write end of the pipe pending ports are written to */
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
    /* Reserved for gntdev/gntalloc. */
    PRIVCMD_OP_GNTTAB_MAP = 48,
    PRIVCMD_OP_GNTTAB_UNMAP = 49,

    /* xenforeignmemory_map_resource: arg[0] domid, arg[1] resource type (XENMEM_resource_*), arg[2] its id,
     * arg[3] first frame, arg[4] count (at most PRIVCMD_MAX_BATCH), arg[5] writable. The reply is as
     * PRIVCMD_OP_FOREIGN_MAP's: the domain's memfd and count int64_t offsets, or -errno for the whole request. */
    PRIVCMD_OP_FOREIGN_MAP_RESOURCE = 64,
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

#define PRIVCMD_HIDDEN __attribute__((visibility("hidden")))

#endif
