/*
 * libxenevtchn.so.1 for XenSharp: event channels of Domain-0 owned by this handle, kept by
 * xensharpd's privcmd. An event on a bound port masks it and writes the 4-byte port to a pipe whose
 * read end is xenevtchn_fd(), so callers poll it as they poll /dev/xen/evtchn; xenevtchn_unmask lets
 * the port fire again (at once if it was raised meanwhile). The mask lives in memory shared with the
 * daemon, so unmasking a port nothing raised meanwhile (a device model's every ioreq) costs no request, and so does
 * notifying a port the daemon marked PRIVCMD_EVTCHN_DIRECT (an ioreq response).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <xenevtchn.h>

#include "privcmd.h"

#define STATE_BYTES ((size_t)PRIVCMD_EVTCHN_STATE_PORTS * sizeof(uint32_t))

struct xenevtchn_handle {
    struct privcmd_conn conn;
    int fd; /* read end of the pending-port pipe */
    uint32_t *state; /* PRIVCMD_EVTCHN_* bits of each port, shared with the daemon */
};

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    struct privcmd_request open = { .op = PRIVCMD_OP_OPEN, .arg = { PRIVCMD_KIND_EVTCHN, PRIVCMD_PROTOCOL_VERSION } };
    xenevtchn_handle *h;
    int pipefd[2], fds[2], memfd, saved;

    (void)logger;
    (void)flags;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    memfd = memfd_create("xenevtchn-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0 || ftruncate(memfd, STATE_BYTES) < 0 ||
        fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0 ||
        (h->state = mmap(NULL, STATE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0)) == MAP_FAILED) {
        saved = errno;
        if (memfd >= 0)
            close(memfd);
        free(h);
        errno = saved;
        return NULL;
    }
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        saved = errno;
        munmap(h->state, STATE_BYTES);
        close(memfd);
        free(h);
        errno = saved;
        return NULL;
    }
    fds[0] = pipefd[1];
    fds[1] = memfd;
    if (privcmd_open(&h->conn, "xenevtchn", &open, fds, 2) < 0) {
        saved = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        munmap(h->state, STATE_BYTES);
        close(memfd);
        free(h);
        errno = saved;
        return NULL;
    }
    /* Only the daemon writes: when it lets go of the handle, reads see end of file. */
    close(pipefd[1]);
    close(memfd);
    h->fd = pipefd[0];
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fdopen, unsigned int flags)
{
    (void)logger;
    (void)fdopen;
    (void)flags;
    /* There is no /dev/xen/evtchn descriptor to adopt: a handle is a connection to the daemon. */
    errno = EOPNOTSUPP;
    return NULL;
}

int xenevtchn_close(xenevtchn_handle *h)
{
    if (!h)
        return 0;
    privcmd_close(&h->conn);
    close(h->fd);
    munmap(h->state, STATE_BYTES);
    free(h);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *h)
{
    return h->fd;
}

static long op(xenevtchn_handle *h, uint32_t code, uint64_t a0, uint64_t a1)
{
    struct privcmd_request req = { .op = code, .arg = { a0, a1 } };
    return privcmd_call(&h->conn, &req, NULL, 0, NULL, NULL);
}

int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
    /* An ioreq response: the vCPU waits on the port's word, so the notification is a bit there and a wake-up. */
    if (port < PRIVCMD_EVTCHN_STATE_PORTS &&
        (__atomic_load_n(&h->state[port], __ATOMIC_ACQUIRE) & PRIVCMD_EVTCHN_DIRECT)) {
        __atomic_fetch_or(&h->state[port], PRIVCMD_EVTCHN_NOTIFIED, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &h->state[port], FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        return 0;
    }
    return op(h, PRIVCMD_OP_EVTCHN_NOTIFY, port, 0) < 0 ? -1 : 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t domid)
{
    return op(h, PRIVCMD_OP_EVTCHN_BIND_UNBOUND, domid, 0);
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid, evtchn_port_t remote_port)
{
    return op(h, PRIVCMD_OP_EVTCHN_BIND_INTERDOMAIN, domid, remote_port);
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    return op(h, PRIVCMD_OP_EVTCHN_BIND_VIRQ, virq, 0);
}

int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
    return op(h, PRIVCMD_OP_EVTCHN_UNBIND, port, 0) < 0 ? -1 : 0;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
    evtchn_port_t port;
    ssize_t n = read(h->fd, &port, sizeof(port));

    if (n == (ssize_t)sizeof(port))
        return (xenevtchn_port_or_error_t)port;
    if (n >= 0)
        errno = n == 0 ? ECONNRESET : EIO;
    return -1;
}

int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
    if (port < PRIVCMD_EVTCHN_STATE_PORTS) {
        uint32_t s = __atomic_load_n(&h->state[port], __ATOMIC_ACQUIRE);
        /* Masked and raised meanwhile: the daemon delivers it again. Otherwise clearing the mask is all. */
        while (!(s & PRIVCMD_EVTCHN_PENDING)) {
            if (!(s & PRIVCMD_EVTCHN_MASKED))
                return 0;
            if (__atomic_compare_exchange_n(&h->state[port], &s, s & ~PRIVCMD_EVTCHN_MASKED, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE))
                return 0;
        }
    }
    return op(h, PRIVCMD_OP_EVTCHN_UNMASK, port, 0) < 0 ? -1 : 0;
}

int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
    return op(h, PRIVCMD_OP_EVTCHN_RESTRICT, domid, 0) < 0 ? -1 : 0;
}
