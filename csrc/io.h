/* The I/O backend interface: sockets, readiness, receive and send batches.
 *
 * A backend knows nothing of calls, forks or RTP. The engine registers a
 * descriptor with an mf_io_reg; the backend hands every datagram (or socket
 * error) it reads back to the engine's handler with that reg, and sends what
 * the engine queued, reporting each packet's result in queue order. Nothing
 * here includes engine.h, and the engine reaches the backend only through
 * mf_io_ops, so there is no include or call cycle between the two.
 *
 * Threading: every function runs on the engine's worker thread (or the
 * embedder's thread for an unstarted engine), never two at once. No function
 * allocates after create(). */
#ifndef MF_IO_H
#define MF_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* What a registered descriptor is, which tells the backend how to read it. */
enum {
    MF_IO_NOTIFY = 0,  /* an eventfd: the backend consumes its counter, then calls notify() */
    MF_IO_INGRESS = 1, /* a hot receive socket (a call's track): datagrams with their sender */
    MF_IO_CONTROL = 2, /* a low-rate socket whose errors matter (a fork's RTP/RTCP socket):
                          datagrams, and ICMP errors from its error queue as error() */
};

enum { MF_IO_TRUNC = 1 }; /* mf_io_msg.flags: the datagram was larger than the buffer */

/* What the engine registers: embedded in its own structures (a call's track, a
 * fork) and handed back to the handler, which finds its owner from it. */
typedef struct mf_io_reg {
    int fd;
    int kind; /* MF_IO_* */
} mf_io_reg;

typedef struct {
    const uint8_t *data;
    uint32_t len;
    uint32_t flags;
    const struct sockaddr_storage *from;
} mf_io_msg;

/* The engine's side, called from inside wait() and send_flush(). None of these
 * may call back into the backend (no add/del/send from a handler). */
typedef struct {
    void (*recv)(void *ctx, mf_io_reg *reg, const mf_io_msg *msgs, uint32_t n, uint64_t now_ns);
    void (*error)(void *ctx, mf_io_reg *reg, int err, uint64_t now_ns); /* errno, e.g. ECONNREFUSED */
    void (*notify)(void *ctx, mf_io_reg *reg);
    /* One result per queued packet, in the order queued: bytes sent, or -errno.
     * -EAGAIN/-ENOBUFS: the kernel pushed back; -ECANCELED: not attempted because
     * an earlier packet for the same descriptor failed. Both mean "still queued". */
    void (*sent)(void *ctx, mf_io_reg *reg, int result, uint64_t now_ns);
} mf_io_handler;

typedef struct mf_io mf_io;

typedef struct mf_io_ops {
    const char *name;
    /* NULL on failure, with the reason in why (one line, for the log). */
    mf_io *(*create)(const mf_io_handler *h, void *ctx, char *why, size_t why_len);
    void (*destroy)(mf_io *io); /* closes what the backend opened, unmaps its rings */
    int (*add)(mf_io *io, mf_io_reg *reg); /* 0 or -errno */
    /* After del() returns, the reg is never passed to a handler again and the
     * backend holds no reference to the descriptor (it may be closed). */
    void (*del)(mf_io *io, mf_io_reg *reg);
    /* Waits up to timeout_ms (0: poll) for readiness, then hands everything that
     * is ready now to the handler: at most one receive batch per socket, so a
     * socket with more waiting is simply ready again next time. Returns how many
     * sockets (or completions) were served; *full is set when some batch came
     * back full (a backlog: the caller should not pause before the next wait). */
    int (*wait)(mf_io *io, int timeout_ms, int *full);
    /* Queues one packet for a connected socket. The data must stay valid until
     * send_flush() returned. Returns 0, or -1 when the batch is full (flush first). */
    int (*send)(mf_io *io, mf_io_reg *reg, const void *data, uint32_t len);
    void (*send_flush)(mf_io *io, uint64_t now_ns); /* submits, then sent() per packet */
    /* One datagram now (RTCP sender reports: rare), to addr or, when NULL, the
     * connected peer. 0 or -errno. */
    int (*send_now)(mf_io *io, mf_io_reg *reg, const void *data, uint32_t len,
                    const struct sockaddr *addr, socklen_t addr_len);
} mf_io_ops;

/* The next error queued on socket fd (an errno such as ECONNREFUSED from ICMP), or -1 when
 * the queue is empty (io_errqueue.c; both backends read ICMP errors this way). */
int mf_io_next_socket_error(int fd);

extern const mf_io_ops mf_io_epoll;
extern const mf_io_ops mf_io_uring; /* create() fails with a reason where unsupported */

#endif
