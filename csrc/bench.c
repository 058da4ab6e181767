/* Benchmark kernels (see bench.h). */
#include <errno.h>
#include <linux/io_uring.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "srtp_shim.h"

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t mf_bench_raw_protect(void *session, const uint8_t *pkt, uint32_t len, uint64_t n)
{
    uint8_t buf[MF_RX_BUF + MF_SRTP_MAX_TRAILER];
    if (len > MF_RX_BUF || !session)
        return 0;
    uint64_t t0 = mf_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        memcpy(buf, pkt, len);
        buf[2] = (uint8_t)(i >> 8);
        buf[3] = (uint8_t)i;
        int l = (int)len;
        mf_srtp_protect_rtp(session, buf, &l);
    }
    return mf_now_ns() - t0;
}

uint64_t mf_bench_process(mf_engine *e, mf_call *c, int track, const uint8_t *pkt, uint32_t len,
                          uint64_t n)
{
    uint8_t buf[MF_RX_BUF];
    if (len > MF_RX_BUF)
        return 0;
    memcpy(buf, pkt, len);
    uint64_t t0 = mf_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        buf[2] = (uint8_t)(i >> 8);
        buf[3] = (uint8_t)i;
        mf_call_process(e, c, track, buf, len, t0);
        if ((i & 15) == 15) {
            for (int k = 0; k < c->nforks; k++) {
                mf_ring *r = &c->forks[k]->ring;
                mf_ring_release(r, mf_ring_available(r));
            }
        }
    }
    return mf_now_ns() - t0;
}

void mf_bench_raw_forward(const int *in_fds, const int *out_fds, const struct sockaddr_in *dests,
                          uint32_t n, uint64_t packets, uint64_t max_ns, volatile int *stop,
                          mf_raw_forward_result *out)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (uint32_t i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, in_fds[i], &ev);
    }
    uint8_t buf[MF_RX_BUF];
    struct epoll_event evs[256];
    uint64_t forwarded = 0;
    uint64_t cpu0 = thread_cpu_ns(), t0 = mf_now_ns();
    while (forwarded < packets && !*stop && mf_now_ns() - t0 < max_ns) {
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++) {
            uint32_t k = evs[i].data.u32;
            for (;;) {
                ssize_t r = recv(in_fds[k], buf, sizeof(buf), MSG_DONTWAIT);
                if (r <= 0)
                    break;
                if (sendto(out_fds[k], buf, (size_t)r, MSG_DONTWAIT,
                           (const struct sockaddr *)&dests[k], sizeof(dests[k])) > 0)
                    forwarded++;
            }
        }
    }
    out->forwarded = forwarded;
    out->cpu_ns = thread_cpu_ns() - cpu0;
    out->wall_ns = mf_now_ns() - t0;
    close(ep);
}

#define GEN_BATCH 64

static void drain_sinks(mf_loadgen *g, struct mmsghdr *msgs, struct iovec *iov)
{
    for (uint32_t s = 0; s < g->nsinks; s++) {
        for (;;) {
            for (int i = 0; i < GEN_BATCH; i++) {
                memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int n = recvmmsg(g->sink_fds[s], msgs, GEN_BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0)
                break;
            g->sink_received += (uint64_t)n;
            for (int i = 0; i < n; i++)
                g->sink_bytes += msgs[i].msg_len;
            if (n < GEN_BATCH)
                break;
        }
    }
}

void mf_loadgen_run(mf_loadgen *g, volatile int *stop)
{
    static uint8_t rxbuf[GEN_BATCH][MF_RX_BUF];
    uint8_t (*pkts)[MF_RX_BUF] = NULL;
    struct mmsghdr msgs[GEN_BATCH];
    struct iovec iov[GEN_BATCH], rxiov[GEN_BATCH];
    uint32_t plen = 12 + g->payload_len;
    if (plen > MF_RX_BUF || !g->nstreams)
        return;
    pkts = mf_calloc(GEN_BATCH, MF_RX_BUF);
    uint16_t *seq = mf_calloc(g->nstreams, sizeof(uint16_t));
    if (!pkts || !seq)
        goto out;
    for (int i = 0; i < GEN_BATCH; i++) {
        rxiov[i].iov_base = rxbuf[i];
        rxiov[i].iov_len = MF_RX_BUF;
    }
    uint64_t start = mf_now_ns();
    uint64_t total_due_prev = 0;
    uint32_t next_stream = 0;
    double rate = (double)g->pps * g->nstreams / 1e9; /* packets per ns */
    uint32_t samples = g->pps ? 8000 / g->pps : 160;
    for (;;) {
        uint64_t now = mf_now_ns();
        uint64_t elapsed = now - start;
        if (*stop || elapsed >= g->duration_ns + g->drain_ns)
            break;
        if (elapsed < g->duration_ns) {
            uint64_t due = (uint64_t)(rate * (double)elapsed);
            if (due - total_due_prev > (uint64_t)(rate * 5e6))
                g->late_ticks++;
            while (total_due_prev < due) {
                uint32_t n = 0;
                while (n < GEN_BATCH && total_due_prev + n < due) {
                    uint32_t s = next_stream;
                    next_stream = (next_stream + 1) % g->nstreams;
                    uint8_t *p = pkts[n];
                    uint32_t ts = (uint32_t)seq[s] * samples;
                    mf_rtp_write_header(p, 0, g->payload_type, seq[s], ts, 0x10000u + s);
                    memset(p + 12, 0xff, g->payload_len);
                    seq[s]++;
                    iov[n].iov_base = p;
                    iov[n].iov_len = plen;
                    memset(&msgs[n].msg_hdr, 0, sizeof(msgs[n].msg_hdr));
                    msgs[n].msg_hdr.msg_iov = &iov[n];
                    msgs[n].msg_hdr.msg_iovlen = 1;
                    msgs[n].msg_hdr.msg_name = (void *)&g->dests[s];
                    msgs[n].msg_hdr.msg_namelen = sizeof(g->dests[s]);
                    n++;
                }
                int sent = sendmmsg(g->send_fd, msgs, n, 0);
                if (sent < 0) {
                    g->send_errors += n;
                    sent = (int)n;
                } else if ((uint32_t)sent < n) {
                    g->send_errors += n - (uint32_t)sent;
                }
                g->sent += (uint32_t)sent;
                total_due_prev += n;
            }
        }
        drain_sinks(g, msgs, rxiov);
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
    drain_sinks(g, msgs, rxiov);
out:
    mf_free(pkts);
    mf_free(seq);
}

/* ---- the honest floor (see bench.h) ---------------------------------- */

#define FLOOR_BATCH 32

static void floor_sleep(uint32_t tick_us)
{
    if (tick_us) {
        struct timespec ts = {0, (long)tick_us * 1000};
        nanosleep(&ts, NULL);
    }
}

static int floor_mmsg(const int *in_fds, uint32_t n_in, const int *out_fds, uint32_t nforks,
                      const struct sockaddr_in *dests, void *const *sessions, uint32_t tick_us,
                      uint64_t max_ns, volatile int *stop, mf_floor_result *out)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    for (uint32_t i = 0; i < n_in; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, in_fds[i], &ev) < 0) {
            int err = errno;
            close(ep);
            return -err;
        }
    }
    static uint8_t rx[FLOOR_BATCH][MF_RX_BUF];
    static uint8_t tx[FLOOR_BATCH][MF_RX_BUF + MF_SRTP_MAX_TRAILER];
    struct mmsghdr rmsg[FLOOR_BATCH], smsg[FLOOR_BATCH];
    struct iovec riov[FLOOR_BATCH], siov[FLOOR_BATCH];
    struct epoll_event evs[1024];
    for (int j = 0; j < FLOOR_BATCH; j++) {
        riov[j].iov_base = rx[j];
        riov[j].iov_len = MF_RX_BUF;
        siov[j].iov_base = tx[j];
    }
    uint64_t cpu0 = thread_cpu_ns(), t0 = mf_now_ns();
    while (!*stop && mf_now_ns() - t0 < max_ns) {
        /* Block only when the last tick found nothing: a forwarder under load
         * wakes on its tick, not on every packet. */
        int n = epoll_wait(ep, evs, 1024, 0);
        out->syscalls++;
        if (n == 0) {
            n = epoll_wait(ep, evs, 1024, 10);
            out->syscalls++;
        }
        for (int e = 0; e < n; e++) {
            uint32_t i = evs[e].data.u32;
            for (;;) {
                for (int j = 0; j < FLOOR_BATCH; j++) {
                    memset(&rmsg[j].msg_hdr, 0, sizeof(rmsg[j].msg_hdr));
                    rmsg[j].msg_hdr.msg_iov = &riov[j];
                    rmsg[j].msg_hdr.msg_iovlen = 1;
                }
                int got = recvmmsg(in_fds[i], rmsg, FLOOR_BATCH, MSG_DONTWAIT, NULL);
                out->syscalls++;
                if (got <= 0)
                    break;
                out->received += (uint64_t)got;
                for (uint32_t k = 0; k < nforks; k++) {
                    const struct sockaddr_in *d = &dests[(size_t)i * nforks + k];
                    for (int j = 0; j < got; j++) {
                        /* Each fork sends its own copy, as a forwarder that
                         * rewrites headers per fork must. */
                        memcpy(tx[j], rx[j], rmsg[j].msg_len);
                        int l = (int)rmsg[j].msg_len;
                        if (sessions)
                            mf_srtp_protect_rtp(sessions[(size_t)i * nforks + k], tx[j], &l);
                        siov[j].iov_len = (size_t)l;
                        memset(&smsg[j].msg_hdr, 0, sizeof(smsg[j].msg_hdr));
                        smsg[j].msg_hdr.msg_iov = &siov[j];
                        smsg[j].msg_hdr.msg_iovlen = 1;
                        smsg[j].msg_hdr.msg_name = (void *)d;
                        smsg[j].msg_hdr.msg_namelen = sizeof(*d);
                    }
                    int sent = sendmmsg(out_fds[(size_t)i * nforks + k], smsg, (unsigned)got,
                                        MSG_DONTWAIT);
                    out->syscalls++;
                    if (sent > 0)
                        out->forwarded += (uint64_t)sent;
                }
                if (got < FLOOR_BATCH)
                    break; /* drained: level-triggered epoll reports it again if not */
            }
        }
        out->ticks++;
        floor_sleep(tick_us);
    }
    out->cpu_ns = thread_cpu_ns() - cpu0;
    out->wall_ns = mf_now_ns() - t0;
    close(ep);
    return 0;
}

/* io_uring through raw system calls and <linux/io_uring.h> only: building
 * from the sdist needs kernel headers, no liburing. */

#define UR_SQ_ENTRIES 4096u
#define UR_CQ_ENTRIES 32768u
#define UR_BUFS 4096u /* provided receive buffers, a power of two */
#define UR_SLOTS 4096u /* send buffers in flight */
#define UR_SEND_TAG (1ull << 63)

typedef struct {
    int fd;
    void *sq_ptr, *cq_ptr;
    size_t sq_sz, cq_sz, sqes_sz;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned sq_entries, tail, to_submit;
} ur_ring;

typedef struct {
    struct msghdr msg;
    struct iovec iov;
    uint8_t buf[MF_RX_BUF + MF_SRTP_MAX_TRAILER];
} ur_slot;

static int ur_enter(ur_ring *r, unsigned to_submit, unsigned min_complete, unsigned flags,
                    void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, r->fd, to_submit, min_complete, flags, arg, argsz);
}

static int ur_setup(ur_ring *r)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.cq_entries = UR_CQ_ENTRIES;
    int fd = (int)syscall(__NR_io_uring_setup, UR_SQ_ENTRIES, &p);
    if (fd < 0 && errno == EINVAL) { /* an older kernel: no deferred task work */
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = UR_CQ_ENTRIES;
        fd = (int)syscall(__NR_io_uring_setup, UR_SQ_ENTRIES, &p);
    }
    if (fd < 0)
        return -errno;
    memset(r, 0, sizeof(*r));
    r->fd = fd;
    r->sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) {
        if (r->cq_sz > r->sq_sz)
            r->sq_sz = r->cq_sz;
        r->cq_sz = r->sq_sz;
    }
    r->sq_ptr = mmap(NULL, r->sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED)
        goto fail;
    r->cq_ptr = single ? r->sq_ptr
                       : mmap(NULL, r->cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                              fd, IORING_OFF_CQ_RING);
    if (r->cq_ptr == MAP_FAILED)
        goto fail;
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;
    uint8_t *sq = r->sq_ptr, *cq = r->cq_ptr;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    r->sq_entries = p.sq_entries;
    r->tail = *r->sq_tail;
    return 0;
fail:;
    int err = errno;
    if (r->sq_ptr && r->sq_ptr != MAP_FAILED)
        munmap(r->sq_ptr, r->sq_sz);
    if (r->cq_ptr && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr)
        munmap(r->cq_ptr, r->cq_sz);
    close(fd);
    return -err;
}

static void ur_close(ur_ring *r)
{
    munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr != r->sq_ptr)
        munmap(r->cq_ptr, r->cq_sz);
    munmap(r->sq_ptr, r->sq_sz);
    close(r->fd);
}

/* Submit what is queued (and run deferred completions). */
static int ur_submit(ur_ring *r, unsigned min_complete, void *arg, size_t argsz,
                     mf_floor_result *out)
{
    atomic_store_explicit((_Atomic unsigned *)r->sq_tail, r->tail, memory_order_release);
    unsigned flags = IORING_ENTER_GETEVENTS | (arg ? IORING_ENTER_EXT_ARG : 0);
    int n = ur_enter(r, r->to_submit, min_complete, flags, arg, argsz);
    out->syscalls++;
    if (n > 0)
        r->to_submit -= (unsigned)n < r->to_submit ? (unsigned)n : r->to_submit;
    return n;
}

static struct io_uring_sqe *ur_sqe(ur_ring *r, mf_floor_result *out)
{
    unsigned head = atomic_load_explicit((_Atomic unsigned *)r->sq_head, memory_order_acquire);
    if (r->tail - head >= r->sq_entries) {
        ur_submit(r, 0, NULL, 0, out);
        head = atomic_load_explicit((_Atomic unsigned *)r->sq_head, memory_order_acquire);
        if (r->tail - head >= r->sq_entries)
            return NULL;
    }
    unsigned idx = r->tail & *r->sq_mask;
    r->sq_array[idx] = idx;
    r->tail++;
    r->to_submit++;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

static int ur_arm_recv(ur_ring *r, int fd, uint32_t i, mf_floor_result *out)
{
    struct io_uring_sqe *sqe = ur_sqe(r, out);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    sqe->user_data = i;
    return 0;
}

static int floor_uring(const int *in_fds, uint32_t n_in, const int *out_fds, uint32_t nforks,
                       const struct sockaddr_in *dests, void *const *sessions, uint32_t tick_us,
                       uint64_t max_ns, volatile int *stop, mf_floor_result *out)
{
    ur_ring r;
    int rc = ur_setup(&r);
    if (rc < 0)
        return rc;
    size_t ring_sz = UR_BUFS * sizeof(struct io_uring_buf);
    struct io_uring_buf_ring *br = mmap(NULL, ring_sz, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    uint8_t *bufs = mf_calloc(UR_BUFS, MF_RX_BUF);
    ur_slot *slots = mf_calloc(UR_SLOTS, sizeof(ur_slot));
    uint32_t *free_slots = mf_calloc(UR_SLOTS, sizeof(uint32_t));
    int registered = 0;
    if (br == MAP_FAILED || !bufs || !slots || !free_slots) {
        rc = -ENOMEM;
        goto done;
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)br;
    reg.ring_entries = UR_BUFS;
    reg.bgid = 0;
    if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        rc = -errno;
        goto done;
    }
    registered = 1;
    for (uint32_t b = 0; b < UR_BUFS; b++) {
        br->bufs[b].addr = (uint64_t)(uintptr_t)(bufs + (size_t)b * MF_RX_BUF);
        br->bufs[b].len = MF_RX_BUF;
        br->bufs[b].bid = (uint16_t)b;
    }
    uint16_t br_tail = (uint16_t)UR_BUFS;
    atomic_store_explicit((_Atomic uint16_t *)&br->tail, br_tail, memory_order_release);
    uint32_t nfree = UR_SLOTS;
    for (uint32_t s = 0; s < UR_SLOTS; s++) {
        free_slots[s] = UR_SLOTS - 1 - s;
        slots[s].iov.iov_base = slots[s].buf;
        slots[s].msg.msg_iov = &slots[s].iov;
        slots[s].msg.msg_iovlen = 1;
        slots[s].msg.msg_namelen = sizeof(struct sockaddr_in);
    }
    for (uint32_t i = 0; i < n_in; i++) {
        if (ur_arm_recv(&r, in_fds[i], i, out) < 0) {
            rc = -EBUSY;
            goto done;
        }
    }
    uint32_t *rearm = mf_calloc(n_in, sizeof(uint32_t));
    if (!rearm) {
        rc = -ENOMEM;
        goto done;
    }
    uint32_t nrearm = 0;
    uint64_t in_flight = 0;
    int idle = 0;
    uint64_t cpu0 = thread_cpu_ns(), t0 = mf_now_ns();
    while (!*stop && mf_now_ns() - t0 < max_ns) {
        /* One io_uring_enter per tick: submits the previous tick's sends and
         * re-arms, runs the deferred completions. After an empty tick it
         * waits (bounded) for the next completion instead of spinning. */
        if (idle) {
            struct __kernel_timespec ts = {0, 10 * 1000 * 1000};
            struct io_uring_getevents_arg ga;
            memset(&ga, 0, sizeof(ga));
            ga.ts = (uint64_t)(uintptr_t)&ts;
            ur_submit(&r, 1, &ga, sizeof(ga), out);
        } else {
            ur_submit(&r, 0, NULL, 0, out);
        }
        unsigned head = *r.cq_head;
        unsigned tail = atomic_load_explicit((_Atomic unsigned *)r.cq_tail, memory_order_acquire);
        idle = head == tail;
        unsigned returned = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &r.cqes[head & *r.cq_mask];
            uint64_t ud = cqe->user_data;
            if (ud & UR_SEND_TAG) {
                uint32_t s = (uint32_t)(ud & 0xffffffffu);
                free_slots[nfree++] = s;
                in_flight--;
                if (cqe->res > 0)
                    out->forwarded++;
                continue;
            }
            uint32_t i = (uint32_t)ud;
            if (!(cqe->flags & IORING_CQE_F_MORE))
                rearm[nrearm++] = i; /* multishot ended (ENOBUFS, ...): arm again */
            if (cqe->res <= 0 || !(cqe->flags & IORING_CQE_F_BUFFER))
                continue;
            uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            const uint8_t *pkt = bufs + (size_t)bid * MF_RX_BUF;
            uint32_t len = (uint32_t)cqe->res;
            out->received++;
            for (uint32_t k = 0; k < nforks && nfree; k++) {
                uint32_t s = free_slots[--nfree];
                struct io_uring_sqe *sqe = ur_sqe(&r, out);
                if (!sqe) {
                    free_slots[nfree++] = s;
                    break;
                }
                ur_slot *sl = &slots[s];
                memcpy(sl->buf, pkt, len);
                int l = (int)len;
                if (sessions)
                    mf_srtp_protect_rtp(sessions[(size_t)i * nforks + k], sl->buf, &l);
                sl->iov.iov_len = (size_t)l;
                sl->msg.msg_name = (void *)&dests[(size_t)i * nforks + k];
                sqe->opcode = IORING_OP_SENDMSG;
                sqe->fd = out_fds[(size_t)i * nforks + k];
                sqe->addr = (uint64_t)(uintptr_t)&sl->msg;
                sqe->len = 1;
                sqe->msg_flags = MSG_DONTWAIT;
                sqe->user_data = UR_SEND_TAG | s;
                in_flight++;
            }
            /* The receive buffer goes straight back to the ring. */
            br->bufs[(br_tail + returned) & (UR_BUFS - 1)].addr = (uint64_t)(uintptr_t)pkt;
            br->bufs[(br_tail + returned) & (UR_BUFS - 1)].len = MF_RX_BUF;
            br->bufs[(br_tail + returned) & (UR_BUFS - 1)].bid = bid;
            returned++;
        }
        atomic_store_explicit((_Atomic unsigned *)r.cq_head, head, memory_order_release);
        if (returned) {
            br_tail = (uint16_t)(br_tail + returned);
            atomic_store_explicit((_Atomic uint16_t *)&br->tail, br_tail, memory_order_release);
        }
        for (; nrearm; nrearm--)
            ur_arm_recv(&r, in_fds[rearm[nrearm - 1]], rearm[nrearm - 1], out);
        out->ticks++;
        if (!idle)
            floor_sleep(tick_us);
    }
    /* The last tick's sends: submitted and reaped, not left counted as lost. */
    for (int tries = 0; tries < 100 && (in_flight || r.to_submit); tries++) {
        struct __kernel_timespec ts = {0, 1000 * 1000};
        struct io_uring_getevents_arg ga;
        memset(&ga, 0, sizeof(ga));
        ga.ts = (uint64_t)(uintptr_t)&ts;
        ur_submit(&r, 1, &ga, sizeof(ga), out);
        unsigned head = *r.cq_head;
        unsigned tail = atomic_load_explicit((_Atomic unsigned *)r.cq_tail, memory_order_acquire);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &r.cqes[head & *r.cq_mask];
            if (cqe->user_data & UR_SEND_TAG) {
                in_flight--;
                if (cqe->res > 0)
                    out->forwarded++;
            }
        }
        atomic_store_explicit((_Atomic unsigned *)r.cq_head, head, memory_order_release);
    }
    out->cpu_ns = thread_cpu_ns() - cpu0;
    out->wall_ns = mf_now_ns() - t0;
    mf_free(rearm);
    rc = 0;
done:
    if (registered) {
        struct io_uring_buf_reg unreg;
        memset(&unreg, 0, sizeof(unreg));
        unreg.bgid = 0;
        syscall(__NR_io_uring_register, r.fd, IORING_UNREGISTER_PBUF_RING, &unreg, 1);
    }
    ur_close(&r); /* cancels the multishot receives */
    if (br != MAP_FAILED)
        munmap(br, ring_sz);
    mf_free(bufs);
    mf_free(slots);
    mf_free(free_slots);
    return rc;
}

int mf_bench_floor_forward(int mode, const int *in_fds, uint32_t n_in, const int *out_fds,
                           uint32_t nforks, const struct sockaddr_in *dests,
                           void *const *sessions, uint32_t tick_us, uint64_t max_ns,
                           volatile int *stop, mf_floor_result *out)
{
    memset(out, 0, sizeof(*out));
    if (!n_in || !nforks)
        return -EINVAL;
    if (mode == MF_FLOOR_IO_URING)
        return floor_uring(in_fds, n_in, out_fds, nforks, dests, sessions, tick_us, max_ns, stop,
                           out);
    return floor_mmsg(in_fds, n_in, out_fds, nforks, dests, sessions, tick_us, max_ns, stop, out);
}

uint64_t mf_bench_protect_spread(void *const *sessions, uint32_t nsessions, const uint8_t *pkt,
                                 uint32_t len, uint64_t first, uint64_t n, int prefetch)
{
    uint8_t buf[MF_RX_BUF + MF_SRTP_MAX_TRAILER];
    if (len > MF_RX_BUF || !nsessions)
        return 0;
    uint64_t t0 = thread_cpu_ns(); /* CPU, not wall: neighbours preempt us */
    for (uint64_t i = first; i < first + n; i++) {
        uint32_t s = (uint32_t)(i % nsessions);
        uint64_t seq = i / nsessions;
        if (prefetch) {
            /* The next session's top-level context: what a worker could warm up
             * while protecting the current packet (libsrtp's inner state is
             * opaque to us). */
            const char *next = sessions[(s + 1) % nsessions];
            __builtin_prefetch(next);
            __builtin_prefetch(next + 64);
        }
        memcpy(buf, pkt, len);
        buf[2] = (uint8_t)(seq >> 8);
        buf[3] = (uint8_t)seq;
        int l = (int)len;
        mf_srtp_protect_rtp(sessions[s], buf, &l);
    }
    return thread_cpu_ns() - t0;
}
