/* Client side of the privcmd protocol (see privcmd.h), linked into each library. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "privcmd.h"

#define MAX_FDS 4

static int socket_path(struct sockaddr_un *sa)
{
    const char *explicit_path = getenv("XENSHARP_PRIVCMD");
    const char *rundir = getenv("XENSHARP_RUNDIR");
    int n;

    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (explicit_path && *explicit_path)
        n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s", explicit_path);
    else
        n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/" PRIVCMD_SOCKET_NAME,
                     rundir && *rundir ? rundir : "/run/xensharp");
    if (n < 0 || (size_t)n >= sizeof(sa->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

PRIVCMD_HIDDEN int privcmd_open(struct privcmd_conn *c, const char *who, const struct privcmd_request *open,
                                const int *fds, int nfds)
{
    struct sockaddr_un sa;
    struct privcmd_reply reply;
    int saved;

    c->fd = -1;
    if (socket_path(&sa) < 0)
        return -1;
    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        saved = errno;
        fprintf(stderr, "%s: cannot reach xensharpd at %s: %s (is the daemon running? see ./dom0)\n",
                who, sa.sun_path, strerror(saved));
        close(c->fd);
        c->fd = -1;
        errno = saved;
        return -1;
    }
    pthread_mutex_init(&c->lock, NULL);
    if (privcmd_call(c, open, fds, nfds, &reply, NULL) < 0) {
        saved = errno;
        privcmd_close(c);
        errno = saved;
        return -1;
    }
    return 0;
}

PRIVCMD_HIDDEN void privcmd_close(struct privcmd_conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
        pthread_mutex_destroy(&c->lock);
    }
}

static long exchange(struct privcmd_conn *c, const struct privcmd_request *req, const void *payload, size_t payload_len,
                     const int *fds, int nfds, struct privcmd_reply *reply, void *tail, size_t tail_len, int *rfd)
{
    union { char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)]; struct cmsghdr align; } ctl;
    struct iovec iov[2] = { { (void *)req, sizeof(*req) }, { (void *)payload, payload_len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = payload_len ? 2 : 1 };
    struct cmsghdr *cm;
    ssize_t n;

    if (nfds > MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    do
        n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)(sizeof(*req) + payload_len)) {
        if (n >= 0)
            errno = EIO;
        return -1;
    }

    memset(&msg, 0, sizeof(msg));
    iov[0].iov_base = reply;
    iov[0].iov_len = sizeof(*reply);
    iov[1].iov_base = tail;
    iov[1].iov_len = tail_len;
    msg.msg_iov = iov;
    msg.msg_iovlen = tail_len ? 2 : 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    do
        n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (rfd)
        *rfd = -1;
    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (rfd && *rfd < 0)
                *rfd = fd;
            else
                close(fd);
        }
    }
    /* A reply that failed carries no tail; one that succeeded carries all of it. */
    if (n < (ssize_t)sizeof(*reply) || (reply->result >= 0 && n != (ssize_t)(sizeof(*reply) + tail_len))) {
        if (n >= 0)
            errno = n == 0 ? ECONNRESET : EIO;
        if (rfd && *rfd >= 0) {
            close(*rfd);
            *rfd = -1;
        }
        return -1;
    }
    if (reply->result < 0) {
        errno = (int)-reply->result;
        return -1;
    }
    return reply->result;
}

PRIVCMD_HIDDEN long privcmd_call(struct privcmd_conn *c, const struct privcmd_request *req, const int *fds,
                                 int nfds, struct privcmd_reply *reply, int *rfd)
{
    return privcmd_call_ex(c, req, NULL, 0, fds, nfds, reply, NULL, 0, rfd);
}

PRIVCMD_HIDDEN long privcmd_call_ex(struct privcmd_conn *c, const struct privcmd_request *req, const void *payload,
                                    size_t payload_len, const int *fds, int nfds, struct privcmd_reply *reply,
                                    void *tail, size_t tail_len, int *rfd)
{
    struct privcmd_reply local;
    long rc;
    int saved;

    if (!reply)
        reply = &local;
    pthread_mutex_lock(&c->lock);
    rc = exchange(c, req, payload, payload_len, fds, nfds, reply, tail, tail_len, rfd);
    saved = errno;
    pthread_mutex_unlock(&c->lock);
    errno = saved;
    return rc;
}

PRIVCMD_HIDDEN int privcmd_post(struct privcmd_conn *c, const struct privcmd_request *req, const void *payload,
                                size_t payload_len)
{
    struct iovec iov[2] = { { (void *)req, sizeof(*req) }, { (void *)payload, payload_len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = payload_len ? 2 : 1 };
    ssize_t n;

    pthread_mutex_lock(&c->lock);
    do
        n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    pthread_mutex_unlock(&c->lock);
    if (n != (ssize_t)(sizeof(*req) + payload_len)) {
        if (n >= 0)
            errno = EIO;
        return -1;
    }
    return 0;
}
