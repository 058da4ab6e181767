/* Benchmark kernels and their baselines, in C so that no Python runs per
 * packet on either side of a comparison. Used by benches/ only. */
#ifndef MF_BENCH_H
#define MF_BENCH_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>

#include "engine.h"

/* Plain loop over srtp_protect: copy the packet, bump its sequence number,
 * protect. Returns elapsed nanoseconds. */
uint64_t mf_bench_raw_protect(void *session, const uint8_t *pkt, uint32_t len, uint64_t n);

/* srtp_protect over `nsessions` contexts in turn (packet i on session
 * i % nsessions), as a worker with that many SRTP forks meets them: how the
 * per-packet cost grows once the contexts no longer fit in cache.
 * `prefetch` warms the next session's top-level context first. Packet i in
 * [first, first + n) has sequence number i / nsessions: pass the previous
 * call's first + n to keep every session's sequence rising (a repeated
 * index takes libsrtp's replay-failure path instead). Returns the thread's
 * CPU ns (not wall time: on a shared machine neighbours preempt the loop). */
uint64_t mf_bench_protect_spread(void *const *sessions, uint32_t nsessions, const uint8_t *pkt,
                                 uint32_t len, uint64_t first, uint64_t n, int prefetch);

/* The same packets through mf_call_process into the call's forks (drain
 * mode), discarding ring contents as a consumer would. Returns elapsed ns. */
uint64_t mf_bench_process(mf_engine *e, mf_call *c, int track, const uint8_t *pkt, uint32_t len,
                          uint64_t n);

/* Baseline forwarder: epoll + recv + sendto per packet, nothing else, until
 * `packets` were forwarded or `max_ns` passed. Stream i is received on
 * in_fds[i] and sent from out_fds[i] to dests[i]: the same socket layout a
 * forwarder of independent streams needs (pass one shared out fd to measure
 * the single-socket variant). Reports its thread CPU time. */
typedef struct {
    uint64_t forwarded;
    uint64_t cpu_ns;
    uint64_t wall_ns;
} mf_raw_forward_result;

void mf_bench_raw_forward(const int *in_fds, const int *out_fds, const struct sockaddr_in *dests,
                          uint32_t n, uint64_t packets, uint64_t max_ns, volatile int *stop,
                          mf_raw_forward_result *out);

/* Paced RTP load generator and sink in one thread: `nstreams` streams at
 * `pps` packets/s each, evenly spread, to dests[i]; counts what arrives on
 * the sink sockets. */
typedef struct {
    int send_fd;
    const struct sockaddr_in *dests;
    uint32_t nstreams;
    uint32_t pps;
    uint32_t payload_len;
    uint8_t payload_type;
    uint64_t duration_ns;
    uint64_t drain_ns;
    const int *sink_fds;
    uint32_t nsinks;
    /* results */
    uint64_t sent;
    uint64_t send_errors;
    uint64_t sink_received;
    uint64_t sink_bytes;
    uint64_t late_ticks; /* ticks where the generator fell behind by > 5 ms */
} mf_loadgen;

void mf_loadgen_run(mf_loadgen *g, volatile int *stop);


/* The honest floor: the cheapest plain C forwarder over the same sockets as
 * the end-to-end bench, batched by a tick like the engine. Ingress stream i
 * arrives on in_fds[i] and is copied to `nforks` fork sockets
 * out_fds[i * nforks + k], each sending to dests[i * nforks + k].
 *   MF_FLOOR_MMSG:     sleep a tick, epoll_wait(0) for the ready sockets,
 *                      recvmmsg each (no EAGAIN round trip: level-triggered
 *                      readiness, a short batch means drained), one sendmmsg
 *                      per fork socket.
 *   MF_FLOOR_IO_URING: raw io_uring (no liburing): a multishot recv with a
 *                      provided buffer ring on every ingress socket, every
 *                      fork send of a tick queued as SENDMSG and submitted
 *                      with the reaping of the next tick's receives in one
 *                      io_uring_enter.
 * `sessions` (NULL: plain RTP) gives each fork socket a libsrtp session
 * that protects its copy, the same work as an SRTP fork.
 * Returns 0, or -errno when the backend cannot run here (io_uring disabled
 * by the kernel or a seccomp profile): the caller reports it as skipped. */
enum { MF_FLOOR_MMSG = 0, MF_FLOOR_IO_URING = 1 };

typedef struct {
    uint64_t received;
    uint64_t forwarded;  /* fork sends that succeeded */
    uint64_t cpu_ns;     /* the calling thread's CPU time */
    uint64_t wall_ns;
    uint64_t syscalls;   /* system calls made in the loop (not counting the tick sleep) */
    uint64_t ticks;
} mf_floor_result;

int mf_bench_floor_forward(int mode, const int *in_fds, uint32_t n_in, const int *out_fds,
                           uint32_t nforks, const struct sockaddr_in *dests,
                           void *const *sessions, uint32_t tick_us, uint64_t max_ns,
                           volatile int *stop, mf_floor_result *out);

#endif
