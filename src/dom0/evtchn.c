/*
 * libxenevtchn.so.1 for XenSharp: event channels of Domain-0 owned by this handle, kept by
 * xensharpd's privcmd. An event on a bound port masks it and writes the 4-byte port to a pipe whose
 * read end is xenevtchn_fd(), so callers poll it as they poll /dev/xen/evtchn; xenevtchn_unmask lets
 * the port fire again (at once if it was raised meanwhile).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <xenevtchn.h>

#include "privcmd.h"

struct xenevtchn_handle {
    struct privcmd_conn conn;
    int fd; /* read end of the pending-port pipe */
};

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    struct privcmd_request open = { .op = PRIVCMD_OP_OPEN, .arg = { PRIVCMD_KIND_EVTCHN, PRIVCMD_PROTOCOL_VERSION } };
    xenevtchn_handle *h;
    int pipefd[2], saved;

    (void)logger;
    (void)flags;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        free(h);
        return NULL;
    }
    if (privcmd_open(&h->conn, "xenevtchn", &open, &pipefd[1], 1) < 0) {
        saved = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        free(h);
        errno = saved;
        return NULL;
    }
    /* Only the daemon writes: when it lets go of the handle, reads see end of file. */
    close(pipefd[1]);
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
    return op(h, PRIVCMD_OP_EVTCHN_UNMASK, port, 0) < 0 ? -1 : 0;
}

int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
    return op(h, PRIVCMD_OP_EVTCHN_RESTRICT, domid, 0) < 0 ? -1 : 0;
}
