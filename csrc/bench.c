/* Benchmark kernels (see bench.h). */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
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
        mf_srtp.protect(session, buf, &l);
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
