/* The media worker: epoll over ingress and egress sockets, recvmmsg ->
 * classify -> rewrite -> protect -> sendmmsg, without the GIL. */
#include <errno.h>
#include <time.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "rtcp.h"
#include "srtp_shim.h"

#define MF_TIMER_PERIOD_NS 50000000ull  /* RTCP and no-media checks */
#define MF_ERROR_EVENT_GAP_NS 1000000000ull
#define MF_MAX_ROUNDS 4                 /* recvmmsg batches per ready socket per wake */


void mf_worker_register(mf_engine *e, int fd, mf_pollsrc *src, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = src};
    epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
}

void mf_worker_unregister(mf_engine *e, int fd)
{
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* The compare every packet pays: the configured or latched sender's address, and
 * its port unless only an address was configured. */
static inline int source_matches(const mf_track *t, const struct sockaddr_storage *from)
{
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from, *b = (const void *)&t->source;
        return b->sin_family == AF_INET && a->sin_addr.s_addr == b->sin_addr.s_addr &&
               (t->source_filter == MF_SOURCE_ADDRESS || a->sin_port == b->sin_port);
    }
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)from, *b = (const void *)&t->source;
        return b->sin6_family == AF_INET6 &&
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0 &&
               (t->source_filter == MF_SOURCE_ADDRESS || a->sin6_port == b->sin6_port);
    }
    return 0;
}

/* Off the hot path: a sender that is not the latched one. It becomes the source
 * when the track is still learning, or when the latched sender has been silent
 * for relatch_ns, and only with valid RTP: RTCP, garbage or a truncated datagram
 * never latches (so a stranger cannot claim a port with junk). While learning,
 * what does not latch still goes on to be counted as malformed or RTCP. */
static MF_NOINLINE int try_latch(mf_track *t, const struct sockaddr_storage *from,
                                 const uint8_t *pkt, size_t len, int truncated, uint64_t now)
{
    if (t->source_filter == MF_SOURCE_LATCHED && now < t->last_activity_ns + t->relatch_ns)
        return 0; /* last_activity_ns: the latched sender's last packet */
    mf_rtp_info info;
    if (truncated || mf_rtp_parse(pkt, len, &info) != MF_RTP_OK)
        return t->source_filter == MF_SOURCE_LEARNING;
    memcpy(&t->source, from, sizeof(t->source));
    t->source_filter = MF_SOURCE_LATCHED;
    MF_CTR_ADD(t->ctr.source_latches, 1);
    return 1;
}

static inline int source_accepted(mf_track *t, const struct sockaddr_storage *from,
                                  const uint8_t *pkt, size_t len, int truncated, uint64_t now)
{
    if (t->source_filter == MF_SOURCE_ANY || MF_LIKELY(source_matches(t, from)))
        return 1;
    if (t->source_filter >= MF_SOURCE_LEARNING)
        return try_latch(t, from, pkt, len, truncated, now);
    return 0;
}

/* RTP and RTCP errors are told apart: a recorder without an RTCP port (ICMP
 * for our sender reports) still records, while ICMP for RTP means its media
 * address is dead. Each kind is rate-limited to one event per second. */
static void report_send_error(mf_engine *e, mf_fork *f, int err, uint64_t now_ns, int rtcp)
{
    uint64_t *last = rtcp ? &f->last_rtcp_error_event_ns : &f->last_error_event_ns;
    if (rtcp)
        MF_CTR_ADD(f->ctr.rtcp_send_errors, 1);
    else
        MF_CTR_ADD(f->ctr.send_errors, 1);
    if (now_ns - *last >= MF_ERROR_EVENT_GAP_NS || *last == 0) {
        *last = now_ns;
        mf_emit_event(e, rtcp ? MF_EV_RTCP_SEND_ERROR : MF_EV_SEND_ERROR, f->call->id, f->id,
                      f->track, err, now_ns);
    }
}

static void read_ingress(mf_engine *e, mf_call *c, int track)
{
    mf_track *t = &c->tracks[track];
    for (int round = 0; round < MF_MAX_ROUNDS; round++) {
        for (int i = 0; i < MF_RX_BATCH; i++) {
            struct msghdr *h = &e->rx_msgs[i].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = &e->rx_addr[i];
            h->msg_namelen = sizeof(e->rx_addr[i]);
            h->msg_iov = &e->rx_iov[i];
            h->msg_iovlen = 1;
        }
        int n = recvmmsg(t->fd, e->rx_msgs, MF_RX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        uint64_t now = mf_now_ns();
        for (int i = 0; i < n; i++) {
            int truncated = (e->rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
            if (MF_UNLIKELY(!source_accepted(t, &e->rx_addr[i], e->rx_buf[i],
                                             e->rx_msgs[i].msg_len, truncated, now))) {
                MF_CTR_ADD(t->ctr.source_rejected, 1);
                continue;
            }
            if (MF_UNLIKELY(truncated)) {
                MF_CTR_ADD(t->ctr.received, 1);
                MF_CTR_ADD(t->ctr.malformed, 1);
                continue;
            }
            mf_call_process(e, c, track, e->rx_buf[i], e->rx_msgs[i].msg_len, now);
        }
        if (n < MF_RX_BATCH)
            return;
        /* A full batch means a backlog (e.g. after a stall): send what it queued
         * before reading more, so the next batch cannot overrun a fork's ring. */
        mf_worker_flush(e, now);
    }
}

/* ICMP errors for an unconnected socket arrive on its error queue
 * (IP_RECVERR is set when the socket is made). */
static void read_errqueue(mf_engine *e, mf_fork *f, int fd, int rtcp, uint64_t now)
{
    uint8_t control[512];
    uint8_t data[64];
    for (int i = 0; i < 16; i++) {
        struct iovec iov = {data, sizeof(data)};
        struct sockaddr_storage from;
        struct msghdr h = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
        if (recvmsg(fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return;
        int err = ECONNREFUSED;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&h); cm; cm = CMSG_NXTHDR(&h, cm)) {
            if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
                (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)) {
                struct sock_extended_err ee;
                memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
                err = (int)ee.ee_errno;
            }
        }
        report_send_error(e, f, err, now, rtcp);
    }
}

static void read_egress(mf_engine *e, mf_fork *f, int is_rtcp_socket, uint32_t events)
{
    uint64_t now = mf_now_ns();
    int fd = is_rtcp_socket ? f->rtcp_fd : f->fd;
    if (events & EPOLLERR)
        read_errqueue(e, f, fd, is_rtcp_socket, now);
    if (!(events & EPOLLIN))
        return;
    for (int round = 0; round < MF_MAX_ROUNDS; round++) {
        uint8_t buf[MF_RX_BUF];
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
                report_send_error(e, f, errno, now, is_rtcp_socket);
            return;
        }
        if (!mf_is_rtcp(buf, (size_t)n))
            continue; /* a recorder has no media to send us; ignore */
        int len = (int)n;
        if (f->srtp_rx && mf_srtp.unprotect_rtcp(f->srtp_rx, buf, &len) != 0) {
            MF_CTR_ADD(f->ctr.rtcp_bad, 1);
            continue;
        }
        if (!f->srtp_rx && f->srtp_tx && len > 0) {
            /* secure fork without the recorder's key: we cannot authenticate
             * its SRTCP, so we do not trust the report */
            MF_CTR_ADD(f->ctr.rtcp_bad, 1);
            continue;
        }
        mf_rtcp_report_block rb;
        mf_rtcp_status st = mf_rtcp_find_report(buf, (size_t)len, f->ssrc, &rb);
        if (st == MF_RTCP_MALFORMED) {
            MF_CTR_ADD(f->ctr.rtcp_bad, 1);
            continue;
        }
        MF_CTR_ADD(f->ctr.rtcp_received, 1);
        if (st == MF_RTCP_FOUND) {
            int first = MF_CTR_GET(f->ctr.rr_last_ns) == 0;
            MF_CTR_SET(f->ctr.rr_fraction_lost, rb.fraction_lost);
            MF_CTR_SET(f->ctr.rr_cumulative_lost, rb.cumulative_lost);
            MF_CTR_SET(f->ctr.rr_jitter, rb.jitter);
            MF_CTR_SET(f->ctr.rr_highest_seq, rb.highest_seq);
            MF_CTR_SET(f->ctr.rr_last_ns, now);
            if (first)
                mf_emit_event(e, MF_EV_RTCP_REPORT, f->call->id, f->id, f->track, 0, now);
        }
    }
}

/* Sends what one fork has queued. Returns 1 when the kernel pushed back
 * (EAGAIN) and packets remain for a later loop. */
static int flush_fork(mf_engine *e, mf_fork *f, uint64_t now_ns)
{
    uint64_t avail = mf_ring_available(&f->ring);
    while (avail) {
        uint32_t n = avail < MF_TX_BATCH ? (uint32_t)avail : MF_TX_BATCH;
        for (uint32_t i = 0; i < n; i++) {
            mf_slot *s = mf_ring_peek(&f->ring, i);
            struct msghdr *h = &e->tx_msgs[i].msg_hdr;
            memset(h, 0, sizeof(*h));
            e->tx_iov[i].iov_base = s->data;
            e->tx_iov[i].iov_len = s->len;
            h->msg_iov = &e->tx_iov[i];
            h->msg_iovlen = 1;
            /* connected socket: no per-message destination */
        }
        int sent = f->has_dest ? sendmmsg(f->fd, e->tx_msgs, n, MSG_DONTWAIT) : (int)n;
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                return 1; /* kernel buffer full: keep them queued, retry next loop */
            report_send_error(e, f, errno, now_ns, 0);
            mf_ring_release(&f->ring, 1); /* drop the packet that failed */
            avail--;
            continue;
        }
        if (f->has_dest)
            MF_CTR_ADD(f->ctr.sent, (uint64_t)sent);
        else
            MF_CTR_ADD(f->ctr.skipped, (uint64_t)sent); /* destination withdrawn */
        mf_ring_release(&f->ring, (uint64_t)sent);
        avail -= (uint64_t)sent;
    }
    return 0;
}

void mf_fork_flush(mf_engine *e, mf_fork *f, uint64_t now_ns)
{
    if (f->fd >= 0)
        flush_fork(e, f, now_ns);
}

void mf_worker_flush(mf_engine *e, uint64_t now_ns)
{
    mf_fork *f = e->dirty, *keep = NULL;
    e->dirty = NULL;
    while (f) {
        mf_fork *next = f->next_dirty;
        f->dirty = 0;
        f->next_dirty = NULL;
        if (flush_fork(e, f, now_ns)) {
            f->dirty = 1;
            f->next_dirty = keep;
            keep = f;
        }
        f = next;
    }
    e->dirty = keep;
}

static void send_sr(mf_engine *e, mf_fork *f, uint64_t now)
{
    if (f->fd < 0) {
        mf_fork_queue_sr(e, f, now);
        return;
    }
    uint8_t buf[512];
    size_t n = mf_fork_build_sr(f, buf, sizeof(buf), now);
    if (!n)
        return;
    const struct sockaddr_storage *to = f->rtcp_dest_len ? &f->rtcp_dest : &f->dest;
    socklen_t to_len = f->rtcp_dest_len ? f->rtcp_dest_len : f->dest_len;
    int fd = f->rtcp_fd >= 0 ? f->rtcp_fd : f->fd;
    /* The RTP socket is connected: an SR for another address must use the
     * RTCP socket, or go unsent when there is none. */
    if (fd == f->fd && memcmp(to, &f->dest, to_len) != 0)
        return;
    if (sendto(fd, buf, n, MSG_DONTWAIT, fd == f->fd ? NULL : (const struct sockaddr *)to,
               fd == f->fd ? 0 : to_len) < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            report_send_error(e, f, errno, now, fd != f->fd);
        return;
    }
    MF_CTR_ADD(f->ctr.rtcp_sent, 1);
}

static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void run_timers(mf_engine *e, uint64_t now)
{
    static __thread uint64_t rng = 0x5eed;
    for (mf_call *c = e->calls; c; c = c->next) {
        for (int i = 0; i < c->nforks; i++) {
            mf_fork *f = c->forks[i];
            if (!f->started || !f->rtcp_interval_ns || now < f->next_sr_ns)
                continue;
            if (f->fd >= 0 && !f->has_dest)
                continue;
            send_sr(e, f, now);
            /* RFC 3550 6.3.1: randomise to [0.5, 1.5] x interval */
            f->next_sr_ns = now + f->rtcp_interval_ns / 2 + splitmix(&rng) % f->rtcp_interval_ns;
        }
        if (!c->no_media_ns)
            continue;
        for (int t = 0; t < MF_TRACKS; t++) {
            mf_track *tr = &c->tracks[t];
            uint64_t idle = now - tr->last_activity_ns;
            if (!tr->no_media_reported && idle >= c->no_media_ns) {
                tr->no_media_reported = 1;
                mf_emit_event(e, MF_EV_NO_MEDIA, c->id, 0, (uint32_t)t, (int64_t)(idle / 1000000), now);
            } else if (tr->no_media_reported && idle < c->no_media_ns) {
                tr->no_media_reported = 0;
                mf_emit_event(e, MF_EV_MEDIA_RESUMED, c->id, 0, (uint32_t)t, 0, now);
            }
        }
    }
}

/* How many ready sockets the worker serves between two looks at the command
 * ring. Under a backlog one socket can take a millisecond (a full receive batch,
 * each packet protected once per fork), and a batch holds up to 256 of them:
 * without this, a control operation could wait for several whole batches. */
#define MF_CMD_CHECK_EVERY 8

/* One loop iteration; the worker thread calls it forever, an unstarted
 * (embedded) engine's owner may call it from its own thread. */
void mf_engine_iterate(mf_engine *e, int max_wait_ms)
{
    struct epoll_event evs[256];
    int timeout = e->dirty ? 1 : max_wait_ms;
    int n = epoll_wait(e->epfd, evs, 256, timeout);
    uint64_t t0 = mf_now_ns();
    e->last_ready = n > 0 ? (uint32_t)n : 0;
    for (int i = 0; i < n; i++) {
        if (i % MF_CMD_CHECK_EVERY == MF_CMD_CHECK_EVERY - 1 && mf_ring_available(&e->cmds)) {
            /* Commands waited for: apply them, and drop the rest of this batch.
             * A remove may free calls and forks the batch still points to once
             * its owner sees the ack; every socket is level-triggered, so the
             * next epoll_wait reports whatever was left unread. */
            mf_engine_apply_commands(e);
            break;
        }
        mf_pollsrc *src = evs[i].data.ptr;
        switch (src->kind) {
        case MF_SRC_CMD: {
            uint64_t v;
            ssize_t r = read(e->cmd_efd, &v, sizeof(v));
            (void)r;
            if (mf_engine_apply_commands(e))
                i = n; /* same reason: nothing of this batch may be touched now */
            break;
        }
        case MF_SRC_INGRESS: {
            mf_call *c = src->owner;
            if (c->linked)
                read_ingress(e, c, src->track);
            break;
        }
        case MF_SRC_EGRESS: {
            mf_fork *f = src->owner;
            if (f->linked)
                read_egress(e, f, src->track, evs[i].events);
            break;
        }
        }
    }
    uint64_t now = mf_now_ns();
    mf_worker_flush(e, now);
    if (now >= e->next_timer_ns) {
        run_timers(e, now);
        e->next_timer_ns = now + MF_TIMER_PERIOD_NS;
    }
    if (e->events_pending) {
        e->events_pending = 0;
        uint64_t one = 1;
        ssize_t w = write(e->evt_efd, &one, sizeof(one));
        (void)w;
    }
    MF_CTR_ADD(e->ctr.loops, 1);
    MF_CTR_ADD(e->ctr.busy_ns, mf_now_ns() - t0);
}

/* Interrupt coalescing: when a loop found only a few ready sockets, wait a
 * little before the next epoll_wait so that it finds more. Each wakeup has a
 * fixed cost (scheduling, epoll_wait, timers) that otherwise dominates at
 * moderate load; a recorder's jitter buffer does not notice a fraction of a
 * millisecond. Busy loops (many ready sockets) never pause. */
#define MF_COALESCE_BELOW 32

static void *worker_main(void *arg)
{
    mf_engine *e = arg;
    while (!e->stop_requested) {
        mf_engine_iterate(e, (int)(MF_TIMER_PERIOD_NS / 1000000));
        if (e->cfg.coalesce_us && e->last_ready > 0 && e->last_ready < MF_COALESCE_BELOW) {
            struct timespec ts = {0, (long)e->cfg.coalesce_us * 1000L};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int mf_engine_start(mf_engine *e)
{
    pthread_mutex_lock(&e->submit_lock);
    int rc = 0;
    /* commands submitted before start were applied inline already */
    if (!e->started) {
        e->started = 1;
        if (pthread_create(&e->thread, NULL, worker_main, e) != 0) {
            e->started = 0;
            rc = -1;
        }
    }
    pthread_mutex_unlock(&e->submit_lock);
    return rc;
}

void mf_engine_stop(mf_engine *e)
{
    if (!e->started)
        return;
    mf_cmd cmd = {.type = MF_CMD_STOP};
    mf_engine_submit(e, &cmd);
    pthread_join(e->thread, NULL);
    /* back to inline mode: anything still queued is applied by the caller */
    pthread_mutex_lock(&e->submit_lock);
    e->started = 0;
    e->stop_requested = 0;
    mf_engine_apply_commands(e);
    pthread_mutex_unlock(&e->submit_lock);
}

uint64_t mf_engine_worker_cpu_ns(mf_engine *e)
{
    clockid_t cid;
    struct timespec ts;
    if (!e->started || pthread_getcpuclockid(e->thread, &cid) != 0 || clock_gettime(cid, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
