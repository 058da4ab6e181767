/* The epoll I/O backend: level-triggered epoll over every socket, one
 * recvmmsg per ready socket per wait, sendmmsg per destination socket. The
 * fallback where io_uring is refused (seccomp profiles, old kernels). */
#include <errno.h>
#include <time.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"
#include "mf_common.h"

#define RX_BATCH 32
#define RX_BUF 2048
#define TX_QUEUE 1024
#define TX_BATCH 64
#define MAX_EVENTS 16 /* sockets per wake: commands (the API waits on them) are applied between wakes, so a
                          * long batch delays them; at 1,000 calls 256 gave a 6-7 ms command p50, 16 gives
                          * 2-3 ms (the previous release: 3.6) for the same CPU per packet */

typedef struct {
    int fd;
    uint32_t len;
    mf_io_reg *reg;
    const void *data;
} tx_entry;

struct mf_io {
    int epfd;
    const mf_io_handler *h;
    void *ctx;
    struct epoll_event evs[MAX_EVENTS];
    struct mmsghdr rx_msgs[RX_BATCH];
    struct iovec rx_iov[RX_BATCH];
    struct sockaddr_storage rx_addr[RX_BATCH];
    mf_io_msg rx_out[RX_BATCH];
    uint8_t rx_buf[RX_BATCH][RX_BUF];
    uint32_t ntx;
    tx_entry tx[TX_QUEUE];
    struct mmsghdr tx_msgs[TX_BATCH];
    struct iovec tx_iov[TX_BATCH];
};

static mf_io *ep_create(const mf_io_handler *h, void *ctx, char *why, size_t why_len)
{
    mf_io *io = mf_aligned_alloc(64, sizeof(*io));
    if (!io) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    memset(io, 0, sizeof(*io));
    io->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (io->epfd < 0) {
        snprintf(why, why_len, "epoll_create1: %s", strerror(errno));
        mf_free(io);
        return NULL;
    }
    io->h = h;
    io->ctx = ctx;
    for (int i = 0; i < RX_BATCH; i++) {
        io->rx_iov[i].iov_base = io->rx_buf[i];
        io->rx_iov[i].iov_len = RX_BUF;
    }
    return io;
}

static void ep_destroy(mf_io *io)
{
    if (!io)
        return;
    close(io->epfd);
    mf_free(io);
}

/* The epoll data is the engine's reg itself: a batch from epoll_wait is
 * consumed before wait() returns, and the engine changes registrations only
 * between waits, so no stale reg can be seen. */
static int ep_add(mf_io *io, mf_io_reg *reg)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = reg};
    if (epoll_ctl(io->epfd, EPOLL_CTL_ADD, reg->fd, &ev) != 0)
        return -errno;
    return 0;
}

static void ep_del(mf_io *io, mf_io_reg *reg)
{
    epoll_ctl(io->epfd, EPOLL_CTL_DEL, reg->fd, NULL);
}

/* ICMP errors for a socket arrive on its error queue (IP_RECVERR is set when
 * the socket is made). */
static void read_errqueue(mf_io *io, mf_io_reg *reg, uint64_t now)
{
    for (int i = 0; i < 16; i++) { /* bounded: a flood of ICMP must not starve the wake */
        int err = mf_io_next_socket_error(reg->fd);
        if (err < 0)
            return;
        io->h->error(io->ctx, reg, err, now);
    }
}

/* One recvmmsg: returns 1 when the batch came back full (more may be waiting). */
static int read_socket(mf_io *io, mf_io_reg *reg)
{
    int fd = reg->fd;
    for (int i = 0; i < RX_BATCH; i++) {
        struct msghdr *h = &io->rx_msgs[i].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &io->rx_addr[i];
        h->msg_namelen = sizeof(io->rx_addr[i]);
        h->msg_iov = &io->rx_iov[i];
        h->msg_iovlen = 1;
    }
    int n = recvmmsg(fd, io->rx_msgs, RX_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) {
        /* A pending socket error (ICMP on a connected socket) is returned here. */
        if (n < 0 && (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH))
            io->h->error(io->ctx, reg, errno, mf_now_ns());
        return 0;
    }
    for (int i = 0; i < n; i++) {
        mf_io_msg *m = &io->rx_out[i];
        m->data = io->rx_buf[i];
        m->len = io->rx_msgs[i].msg_len;
        m->flags = (io->rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? MF_IO_TRUNC : 0;
        m->from = &io->rx_addr[i];
    }
    io->h->recv(io->ctx, reg, io->rx_out, (uint32_t)n, mf_now_ns());
    return n == RX_BATCH;
}

static int ep_wait(mf_io *io, int timeout_ms, int *full)
{
    int n = epoll_wait(io->epfd, io->evs, MAX_EVENTS, timeout_ms);
    *full = n == MAX_EVENTS;
    for (int i = 0; i < n; i++) {
        mf_io_reg *reg = io->evs[i].data.ptr;
        uint32_t events = io->evs[i].events;
        if (reg->kind == MF_IO_NOTIFY) {
            uint64_t v;
            ssize_t r = read(reg->fd, &v, sizeof(v));
            (void)r;
            io->h->notify(io->ctx, reg);
            continue;
        }
        if (events & EPOLLERR)
            read_errqueue(io, reg, mf_now_ns());
        if (events & EPOLLIN)
            *full |= read_socket(io, reg);
    }
    return n > 0 ? n : 0;
}

static int ep_send(mf_io *io, mf_io_reg *reg, const void *data, uint32_t len)
{
    if (io->ntx == TX_QUEUE)
        return -1;
    io->tx[io->ntx++] = (tx_entry){reg->fd, len, reg, data};
    return 0;
}

/* Packets for one socket are queued together; each run goes out in sendmmsg
 * calls. After a failure the rest of that run is reported not attempted. */
static void ep_send_flush(mf_io *io, uint64_t now_ns)
{
    uint32_t i = 0;
    while (i < io->ntx) {
        int fd = io->tx[i].fd;
        uint32_t end = i;
        while (end < io->ntx && io->tx[end].fd == fd)
            end++;
        int failed = 0;
        while (i < end) {
            if (failed) {
                io->h->sent(io->ctx, io->tx[i].reg, -ECANCELED, now_ns);
                i++;
                continue;
            }
            uint32_t n = end - i < TX_BATCH ? end - i : TX_BATCH;
            for (uint32_t k = 0; k < n; k++) {
                struct msghdr *h = &io->tx_msgs[k].msg_hdr;
                memset(h, 0, sizeof(*h));
                io->tx_iov[k].iov_base = (void *)io->tx[i + k].data;
                io->tx_iov[k].iov_len = io->tx[i + k].len;
                h->msg_iov = &io->tx_iov[k];
                h->msg_iovlen = 1; /* connected socket: no per-message destination */
            }
            int sent = sendmmsg(fd, io->tx_msgs, n, MSG_DONTWAIT);
            if (sent < 0) {
                io->h->sent(io->ctx, io->tx[i].reg, -errno, now_ns);
                i++;
                failed = 1;
                continue;
            }
            for (int k = 0; k < sent; k++)
                io->h->sent(io->ctx, io->tx[i + k].reg, (int)io->tx[i + k].len, now_ns);
            i += (uint32_t)sent;
            if ((uint32_t)sent < n)
                failed = 1; /* the next one would fail: report it on the next flush */
        }
    }
    io->ntx = 0;
}

static int ep_send_now(mf_io *io, mf_io_reg *reg, const void *data, uint32_t len,
                       const struct sockaddr *addr, socklen_t addr_len)
{
    (void)io;
    return sendto(reg->fd, data, len, MSG_DONTWAIT, addr, addr_len) < 0 ? -errno : 0;
}

const mf_io_ops mf_io_epoll = {
    .name = "epoll",
    .create = ep_create,
    .destroy = ep_destroy,
    .add = ep_add,
    .del = ep_del,
    .wait = ep_wait,
    .send = ep_send,
    .send_flush = ep_send_flush,
    .send_now = ep_send_now,
};
