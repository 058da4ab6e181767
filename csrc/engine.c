/* Engine tables, command/event queues and the per-packet path: what the I/O
 * backend (io.h) reads is handed here, what the forks queue is handed back
 * to it. worker.c only runs and paces the thread. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "rtcp.h"
#include "srtp_cm.h"
#include "srtp_shim.h"

/* Layout of a recording slot's data: seq, timestamp, payload type, marker, payload. */
#define MF_REC_PREFIX 8


static void ring_slots_init_fail_cleanup(mf_ring *r)
{
    if (r->slots)
        mf_ring_destroy(r);
}

static const mf_io_handler engine_io_handler; /* below: the per-packet entry points */

/* Picks the backend: the one asked for, or io_uring when it works and epoll
 * otherwise (auto), remembering why io_uring was not taken. */
static int open_io(mf_engine *e, char *why, size_t why_len)
{
    char reason[sizeof(e->io_why)] = "";
    if (e->cfg.io_mode != MF_IO_MODE_EPOLL) {
        e->io = mf_io_uring.create(&engine_io_handler, e, reason, sizeof(reason));
        if (e->io) {
            e->io_ops = &mf_io_uring;
            return 0;
        }
        if (e->cfg.io_mode == MF_IO_MODE_URING) {
            snprintf(why, why_len, "io_uring: %s", reason);
            return -1;
        }
        snprintf(e->io_why, sizeof(e->io_why), "%s", reason);
    }
    e->io = mf_io_epoll.create(&engine_io_handler, e, reason, sizeof(reason));
    if (!e->io) {
        snprintf(why, why_len, "epoll: %s", reason);
        return -1;
    }
    e->io_ops = &mf_io_epoll;
    return 0;
}

mf_engine *mf_engine_new_ex(const mf_engine_config *cfg, char *why, size_t why_len)
{
    mf_engine *e = mf_aligned_alloc(64, sizeof(*e));
    if (!e) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->cfg = *cfg;
    if (e->cfg.max_packet < 64)
        e->cfg.max_packet = 64;
    if (e->cfg.max_packet > MF_RX_BUF)
        e->cfg.max_packet = MF_RX_BUF;
    e->cmd_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->evt_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    snprintf(why, why_len, "cannot create eventfds or rings");
    if (e->cmd_efd < 0 || e->evt_efd < 0)
        goto fail;
    if (mf_ring_init(&e->cmds, 256, sizeof(mf_cmd)) ||
        mf_ring_init(&e->push, cfg->push_ring_slots, e->cfg.max_packet) ||
        mf_ring_init(&e->events, cfg->event_ring_slots, sizeof(mf_event)))
        goto fail;
    if (open_io(e, why, why_len) != 0)
        goto fail;
    pthread_mutex_init(&e->submit_lock, NULL);
    pthread_mutex_init(&e->done_lock, NULL);
    pthread_cond_init(&e->done_cond, NULL);
    e->cmd_src.kind = MF_SRC_CMD;
    e->cmd_src.owner = e;
    e->cmd_src.reg.fd = e->cmd_efd;
    e->cmd_src.reg.kind = MF_IO_NOTIFY;
    if (e->io_ops->add(e->io, &e->cmd_src.reg) != 0) {
        snprintf(why, why_len, "%s: cannot watch the command eventfd", e->io_ops->name);
        e->io_ops->destroy(e->io);
        pthread_mutex_destroy(&e->submit_lock);
        pthread_mutex_destroy(&e->done_lock);
        pthread_cond_destroy(&e->done_cond);
        goto fail;
    }
    why[0] = 0;
    return e;
fail:
    if (e->cmd_efd >= 0)
        close(e->cmd_efd);
    if (e->evt_efd >= 0)
        close(e->evt_efd);
    ring_slots_init_fail_cleanup(&e->cmds);
    ring_slots_init_fail_cleanup(&e->push);
    ring_slots_init_fail_cleanup(&e->events);
    mf_free(e);
    return NULL;
}

mf_engine *mf_engine_new(const mf_engine_config *cfg)
{
    char why[160];
    return mf_engine_new_ex(cfg, why, sizeof(why));
}

const char *mf_engine_io_name(const mf_engine *e)
{
    return e->io_ops->name;
}

void mf_engine_free(mf_engine *e)
{
    if (!e)
        return;
    e->io_ops->destroy(e->io);
    close(e->cmd_efd);
    close(e->evt_efd);
    mf_ring_destroy(&e->cmds);
    mf_ring_destroy(&e->push);
    mf_ring_destroy(&e->events);
    pthread_mutex_destroy(&e->submit_lock);
    pthread_mutex_destroy(&e->done_lock);
    pthread_cond_destroy(&e->done_cond);
    mf_free(e);
}

/* ---- objects ---------------------------------------------------------- */

mf_call *mf_call_new(uint64_t id, uint8_t dtmf_pt, uint32_t clock_rate, uint32_t record_slots,
                     uint32_t max_packet)
{
    mf_call *c = mf_calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = id;
    c->dtmf_pt = dtmf_pt;
    c->clock_rate = clock_rate ? clock_rate : 8000;
    for (int t = 0; t < MF_TRACKS; t++) {
        c->tracks[t].fd = -1;
        c->tracks[t].src.kind = MF_SRC_INGRESS;
        c->tracks[t].src.track = (uint8_t)t;
        c->tracks[t].src.owner = c;
    }
    if (record_slots && mf_ring_init(&c->record_ring, record_slots, MF_REC_PREFIX + max_packet)) {
        mf_free(c);
        return NULL;
    }
    return c;
}

void mf_call_set_ingress(mf_call *c, int inbound_fd, int outbound_fd)
{
    c->tracks[MF_TRACK_INBOUND].fd = inbound_fd;
    c->tracks[MF_TRACK_OUTBOUND].fd = outbound_fd;
    mf_note_sockets((inbound_fd >= 0) + (outbound_fd >= 0));
}

void mf_call_set_latch(mf_call *c, int latch, uint64_t relatch_ns)
{
    for (int t = 0; t < MF_TRACKS; t++) {
        mf_track *tr = &c->tracks[t];
        tr->latch = latch ? 1 : 0;
        tr->relatch_ns = relatch_ns;
        if (tr->source_filter == MF_SOURCE_ANY || tr->source_filter == MF_SOURCE_LEARNING)
            tr->source_filter = latch ? MF_SOURCE_LEARNING : MF_SOURCE_ANY;
    }
}

void mf_call_free(mf_call *c)
{
    if (!c)
        return;
    for (int t = 0; t < MF_TRACKS; t++) {
        if (c->tracks[t].fd >= 0) {
            close(c->tracks[t].fd);
            c->tracks[t].fd = -1;
            mf_note_sockets(-1);
        }
    }
    if (c->record_ring.slots)
        mf_ring_destroy(&c->record_ring);
    mf_free(c);
}

mf_fork *mf_fork_new(uint64_t id, uint8_t track, uint32_t ssrc, uint16_t seq_base,
                     uint32_t ts_base, int fd, int rtcp_fd, uint32_t ring_slots, uint32_t max_packet,
                     const char *cname, uint64_t rtcp_interval_ns)
{
    if (track >= MF_TRACKS)
        return NULL;
    mf_fork *f = mf_calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    if (mf_ring_init(&f->ring, ring_slots, max_packet + MF_SRTP_MAX_TRAILER)) {
        mf_free(f);
        return NULL;
    }
    f->id = id;
    f->track = track;
    f->ssrc = ssrc;
    f->seq_base = seq_base;
    f->ts_base = ts_base;
    f->fd = fd;
    f->rtcp_fd = rtcp_fd;
    mf_note_sockets((fd >= 0) + (rtcp_fd >= 0)); /* the fork owns them from here on */
    f->src.kind = MF_SRC_EGRESS;
    f->src.owner = f;
    f->src.reg.fd = fd;
    f->src.reg.kind = MF_IO_CONTROL;
    f->rtcp_src.reg.fd = rtcp_fd;
    f->rtcp_src.reg.kind = MF_IO_CONTROL;
    f->rtcp_src.kind = MF_SRC_EGRESS;
    f->rtcp_src.track = 1; /* marks the RTCP socket */
    f->rtcp_src.owner = f;
    size_t n = cname ? strnlen(cname, MF_CNAME_MAX - 1) : 0;
    memcpy(f->cname, cname, n);
    f->cname_len = (uint8_t)n;
    f->rtcp_interval_ns = rtcp_interval_ns;
    return f;
}

void mf_fork_free(mf_fork *f)
{
    if (!f)
        return;
    if (f->fd >= 0) {
        close(f->fd);
        mf_note_sockets(-1);
    }
    if (f->rtcp_fd >= 0) {
        close(f->rtcp_fd);
        mf_note_sockets(-1);
    }
    mf_ring_destroy(&f->ring);
    mf_free(f);
}

/* ---- events ----------------------------------------------------------- */

void mf_emit_event(mf_engine *e, uint32_t type, uint64_t call_id, uint64_t fork_id, uint32_t track,
                   int64_t value, uint64_t now_ns)
{
    mf_slot *s = mf_ring_reserve(&e->events);
    if (!s) {
        MF_CTR_ADD(e->ctr.events_dropped, 1);
        return;
    }
    mf_event ev = {type, track, call_id, fork_id, value, now_ns};
    memcpy(s->data, &ev, sizeof(ev));
    s->len = sizeof(ev);
    mf_ring_commit(&e->events);
    MF_CTR_ADD(e->ctr.events, 1);
    e->events_pending = 1;
}

uint32_t mf_engine_read_events(mf_engine *e, mf_event *out, uint32_t max)
{
    uint64_t value;
    if (read(e->evt_efd, &value, sizeof(value)) < 0) {
        /* EAGAIN: nothing signalled; events may still be queued, read on */
    }
    uint64_t avail = mf_ring_available(&e->events);
    uint32_t n = avail < max ? (uint32_t)avail : max;
    for (uint32_t i = 0; i < n; i++)
        memcpy(&out[i], mf_ring_peek(&e->events, i)->data, sizeof(mf_event));
    mf_ring_release(&e->events, n);
    return n;
}

/* ---- per-packet path -------------------------------------------------- */

static void mark_dirty(mf_engine *e, mf_fork *f)
{
    if (f->fd >= 0 && !f->dirty) {
        f->dirty = 1;
        f->next_dirty = e->dirty;
        e->dirty = f;
    }
}

/* Rebases a fork's rewrite so its output continues seamlessly: used when the
 * upstream SSRC changes (new sequence and timestamp spaces). */
static void fork_rebase(mf_fork *f, const mf_track *t, uint32_t ext, uint32_t ts, uint64_t now_ns,
                        uint32_t clock_rate)
{
    uint64_t elapsed = now_ns > f->last_send_ns ? now_ns - f->last_send_ns : 0;
    uint64_t ticks = elapsed / 1000 * clock_rate / 1000000;
    f->seq_base = (uint16_t)(f->last_seq + 1);
    f->ts_base = f->last_ts + (uint32_t)(ticks ? ticks : 1);
    f->first_ext = ext;
    f->first_ts = ts;
    f->filtered_at_start = t->filtered;
    f->skipped_since_start = 0;
    f->epoch = t->epoch;
}

/* Newest in sequence order drives the RTCP mapping and rebases. Noted when
 * the packet is queued (a rebase later in the same batch must see it). */
static inline void fork_note_sent_seq(mf_fork *f, uint16_t seq, uint32_t ts, uint64_t now_ns)
{
    if ((int16_t)(uint16_t)(seq - f->last_seq) > 0 || !f->seq_noted) {
        f->seq_noted = 1;
        f->last_seq = seq;
        f->last_ts = ts;
        f->last_send_ns = now_ns;
    }
}

/* A packet is forwarded once it sits protected (if secure) in the ring: the
 * SR's packet and octet counts and the forwarded/bytes counters. */
static inline void fork_count_forwarded(mf_fork *f, uint32_t payload_len, uint32_t wire_len)
{
    f->sr_packets++;
    f->sr_octets += payload_len;
    MF_CTR_ADD(f->ctr.forwarded, 1);
    MF_CTR_ADD(f->ctr.bytes, (uint64_t)wire_len);
}

static inline void fork_forward(mf_engine *e, mf_call *c, mf_fork *f, const mf_track *t,
                                const mf_rtp_info *info, uint32_t ext, const uint8_t *pkt,
                                uint64_t now_ns)
{
    if (MF_UNLIKELY(f->state != MF_FORK_ACTIVE || !(f->has_dest || f->fd < 0))) {
        /* Not loss to the recorder: the sequence rewrite closes this gap. */
        if (f->started)
            f->skipped_since_start++;
        MF_CTR_ADD(f->ctr.skipped, 1);
        return;
    }
    uint32_t out_len = MF_RTP_MIN_HEADER + info->payload_len;
    if (MF_UNLIKELY(out_len + (f->srtp_tx ? MF_SRTP_TAG_MAX : 0) > mf_ring_payload_capacity(&f->ring))) {
        MF_CTR_ADD(f->ctr.oversize, 1);
        return;
    }
    if (MF_UNLIKELY(!f->started)) {
        f->started = 1;
        f->epoch = t->epoch;
        f->first_ext = ext;
        f->first_ts = info->timestamp;
        f->filtered_at_start = t->filtered;
        f->skipped_since_start = 0;
        f->next_sr_ns = now_ns + f->rtcp_interval_ns / 2; /* first SR early, RFC 3550 6.2 */
    } else if (MF_UNLIKELY(f->epoch != t->epoch)) {
        fork_rebase(f, t, ext, info->timestamp, now_ns, c->clock_rate);
    }
    mf_slot *slot = mf_ring_reserve(&f->ring);
    if (MF_UNLIKELY(!slot)) {
        MF_CTR_ADD(f->ctr.dropped_full, 1); /* real loss: the recorder sees the gap */
        return;
    }
    uint16_t seq = (uint16_t)(f->seq_base + (uint16_t)(ext - f->first_ext) -
                              (uint16_t)(t->filtered - f->filtered_at_start) -
                              (uint16_t)f->skipped_since_start);
    uint32_t ts = f->ts_base + (info->timestamp - f->first_ts);
    mf_rtp_write_header(slot->data, info->marker, info->payload_type, seq, ts, f->ssrc);
    memcpy(slot->data + MF_RTP_MIN_HEADER, pkt + info->payload_offset, info->payload_len);
    int len = (int)out_len;
    if (f->srtp_tx && f->fd >= 0) {
        /* Socket fork: only the worker reads this ring, so the slot is
         * committed clear and protected by fork_protect_pending() just
         * before the tick's sends, all of a fork's packets back to back
         * (libsrtp's and OpenSSL's code and this fork's context stay warm
         * instead of being evicted by a system call between packets). */
        slot->len = (uint32_t)len;
        slot->aux = 0;
        mf_ring_commit(&f->ring);
        fork_note_sent_seq(f, seq, ts, now_ns);
        mark_dirty(e, f);
        return;
    }
    if (f->srtp_tx) {
        /* Drain fork: the embedder may read the slot as soon as it is
         * committed, so it is protected first. */
        if (MF_UNLIKELY(mf_srtp_protect_rtp(f->srtp_tx, slot->data, &len) != 0)) {
            MF_CTR_ADD(f->ctr.srtp_errors, 1);
            return;
        }
    }
    slot->len = (uint32_t)len;
    slot->aux = 0;
    mf_ring_commit(&f->ring);
    f->tx_protected = f->ring.head;
    fork_note_sent_seq(f, seq, ts, now_ns);
    fork_count_forwarded(f, out_len - MF_RTP_MIN_HEADER, (uint32_t)len);
    mark_dirty(e, f);
}

/* Protects, in ring order, every slot committed clear since the last call
 * (socket forks with SRTP; see fork_forward), and counts them forwarded. A
 * slot that fails to protect is counted in srtp_errors and removed: the
 * slots after it move down one place, so nothing unprotected is ever sent
 * and the ring stays in order. Only the worker touches a socket fork's ring,
 * so moving its head back is safe. */
static void fork_protect_pending(mf_fork *f)
{
    mf_ring *r = &f->ring;
    uint64_t head = r->head;
    uint64_t from = f->tx_protected > r->tail ? f->tx_protected : r->tail;
    if (from >= head) {
        f->tx_protected = head;
        return;
    }
    if (!f->srtp_tx) { /* cannot happen: only secure forks defer */
        f->tx_protected = head;
        return;
    }
    uint64_t w = from;
    for (uint64_t i = from; i < head; i++) {
        mf_slot *s = mf_ring_at(r, i);
        int len = (int)s->len;
        uint32_t payload_len = s->len - MF_RTP_MIN_HEADER;
        if (MF_UNLIKELY(mf_srtp_protect_rtp(f->srtp_tx, s->data, &len) != 0)) {
            MF_CTR_ADD(f->ctr.srtp_errors, 1);
            continue;
        }
        s->len = (uint32_t)len;
        if (MF_UNLIKELY(w != i)) {
            mf_slot *d = mf_ring_at(r, w);
            memcpy(d, s, MF_SLOT_HEADER + s->len);
        }
        w++;
        fork_count_forwarded(f, payload_len, (uint32_t)len);
    }
    if (MF_UNLIKELY(w != head))
        __atomic_store_n(&r->head, w, __ATOMIC_RELEASE);
    f->tx_protected = w;
}

static inline void record_packet(mf_call *c, mf_track *t, int track, const mf_rtp_info *info,
                                 const uint8_t *pkt, uint64_t now_ns)
{
    mf_slot *s = mf_ring_reserve(&c->record_ring);
    if (!s || info->payload_len + MF_REC_PREFIX > mf_ring_payload_capacity(&c->record_ring)) {
        MF_CTR_ADD(t->ctr.record_dropped, 1);
        return;
    }
    uint8_t *d = s->data;
    memcpy(d, &info->seq, 2);
    memcpy(d + 2, &info->timestamp, 4);
    d[6] = info->payload_type;
    d[7] = info->marker;
    memcpy(d + MF_REC_PREFIX, pkt + info->payload_offset, info->payload_len);
    s->len = MF_REC_PREFIX + info->payload_len;
    s->aux = (uint32_t)track;
    s->aux64 = now_ns;
    mf_ring_commit(&c->record_ring);
    MF_CTR_ADD(t->ctr.recorded, 1);
}

void mf_call_process(mf_engine *e, mf_call *c, int track, const uint8_t *pkt, size_t len,
                     uint64_t now_ns)
{
    mf_track *t = &c->tracks[track];
    MF_CTR_ADD(t->ctr.received, 1);
    MF_CTR_ADD(t->ctr.bytes, len);
    t->last_activity_ns = now_ns;
    MF_CTR_SET(t->ctr.last_rx_ns, now_ns);

    mf_rtp_info info;
    mf_rtp_status st = mf_rtp_parse(pkt, len, &info);
    if (MF_UNLIKELY(st != MF_RTP_OK)) {
        if (st == MF_RTP_IS_RTCP)
            MF_CTR_ADD(t->ctr.rtcp, 1);
        else
            MF_CTR_ADD(t->ctr.malformed, 1);
        return;
    }
    if (MF_UNLIKELY(info.ssrc != t->ssrc || !t->seq.started)) {
        if (t->seq.started) {
            t->epoch++;
            MF_CTR_ADD(t->ctr.ssrc_changes, 1);
        }
        t->ssrc = info.ssrc;
        t->seq.started = 0;
    }
    uint32_t ext = mf_seq_extend(&t->seq, info.seq);
    if (MF_UNLIKELY(info.payload_type == c->dtmf_pt)) {
        t->filtered++;
        MF_CTR_ADD(t->ctr.filtered_dtmf, 1);
        return;
    }
    for (int i = 0; i < c->nforks; i++) {
        mf_fork *f = c->forks[i];
        if (f->track == track)
            fork_forward(e, c, f, t, &info, ext, pkt, now_ns);
    }
    if (c->record_mask & (1u << track))
        record_packet(c, t, track, &info, pkt, now_ns);
}

/* ---- RTCP sender reports ------------------------------------------------ */

static uint64_t ntp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t secs = (uint64_t)ts.tv_sec + 2208988800ull; /* 1900 epoch */
    uint64_t frac = ((uint64_t)ts.tv_nsec << 32) / 1000000000ull;
    return (secs << 32) | frac;
}

/* Builds this fork's SR (+SDES CNAME), protected with SRTCP when secure.
 * Returns the length written into buf, or 0. */
size_t mf_fork_build_sr(mf_fork *f, uint8_t *buf, size_t cap, uint64_t now_ns)
{
    uint32_t rate = f->call ? f->call->clock_rate : 8000;
    uint64_t elapsed = now_ns > f->last_send_ns ? now_ns - f->last_send_ns : 0;
    mf_rtcp_sr sr = {
        .ssrc = f->ssrc,
        .ntp = ntp_now(),
        .rtp_ts = f->last_ts + (uint32_t)(elapsed / 1000 * rate / 1000000),
        .packet_count = f->sr_packets,
        .octet_count = f->sr_octets,
    };
    if (cap < MF_SRTP_MAX_TRAILER)
        return 0;
    size_t n = mf_rtcp_build_sr(buf, cap - MF_SRTP_MAX_TRAILER, &sr, f->cname, f->cname_len);
    if (!n)
        return 0;
    if (f->srtp_tx) {
        int len = (int)n;
        if (mf_srtp_protect_rtcp(f->srtp_tx, buf, &len) != 0) {
            MF_CTR_ADD(f->ctr.srtp_errors, 1);
            return 0;
        }
        n = (size_t)len;
    }
    return n;
}

/* In drain mode the SR goes into the ring (flagged) for the embedder to send. */
void mf_fork_queue_sr(mf_engine *e, mf_fork *f, uint64_t now_ns)
{
    (void)e;
    mf_slot *s = mf_ring_reserve(&f->ring);
    if (!s) {
        MF_CTR_ADD(f->ctr.dropped_full, 1);
        return;
    }
    size_t n = mf_fork_build_sr(f, s->data, mf_ring_payload_capacity(&f->ring), now_ns);
    if (!n)
        return;
    s->len = (uint32_t)n;
    s->aux = 1;
    mf_ring_commit(&f->ring);
    MF_CTR_ADD(f->ctr.rtcp_sent, 1);
}

/* ---- the I/O handler: what the backend hands us ------------------------ */

#define MF_TIMER_PERIOD_NS 50000000ull /* RTCP and no-media checks */
#define MF_ERROR_EVENT_GAP_NS 1000000000ull

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

static void on_ingress(mf_engine *e, mf_call *c, int track, const mf_io_msg *m, uint32_t n,
                       uint64_t now)
{
    mf_track *t = &c->tracks[track];
    for (uint32_t i = 0; i < n; i++) {
        int truncated = (m[i].flags & MF_IO_TRUNC) != 0;
        if (MF_UNLIKELY(!source_accepted(t, m[i].from, m[i].data, m[i].len, truncated, now))) {
            MF_CTR_ADD(t->ctr.source_rejected, 1);
            continue;
        }
        if (MF_UNLIKELY(truncated)) {
            MF_CTR_ADD(t->ctr.received, 1);
            MF_CTR_ADD(t->ctr.malformed, 1);
            continue;
        }
        mf_call_process(e, c, track, m[i].data, m[i].len, now);
    }
}

/* What a recorder sends to a fork's sockets: receiver reports (maybe SRTCP). */
static void on_rtcp(mf_engine *e, mf_fork *f, const mf_io_msg *m, uint64_t now)
{
    uint8_t buf[MF_RX_BUF];
    if (m->len > sizeof(buf) || (m->flags & MF_IO_TRUNC) || !mf_is_rtcp(m->data, m->len))
        return; /* a recorder has no media to send us; ignore */
    memcpy(buf, m->data, m->len); /* unprotect works in place */
    int len = (int)m->len;
    if (f->srtp_rx && mf_srtp_unprotect_rtcp(f->srtp_rx, buf, &len) != 0) {
        MF_CTR_ADD(f->ctr.rtcp_bad, 1);
        return;
    }
    if (!f->srtp_rx && f->srtp_tx && len > 0) {
        /* secure fork without the recorder's key: we cannot authenticate
         * its SRTCP, so we do not trust the report */
        MF_CTR_ADD(f->ctr.rtcp_bad, 1);
        return;
    }
    mf_rtcp_report_block rb;
    mf_rtcp_status st = mf_rtcp_find_report(buf, (size_t)len, f->ssrc, &rb);
    if (st == MF_RTCP_MALFORMED) {
        MF_CTR_ADD(f->ctr.rtcp_bad, 1);
        return;
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

static void io_recv(void *ctx, mf_io_reg *reg, const mf_io_msg *msgs, uint32_t n, uint64_t now)
{
    mf_engine *e = ctx;
    mf_pollsrc *src = (mf_pollsrc *)reg;
    if (src->kind == MF_SRC_INGRESS) {
        mf_call *c = src->owner;
        if (c->linked)
            on_ingress(e, c, src->track, msgs, n, now);
    } else if (src->kind == MF_SRC_EGRESS) {
        mf_fork *f = src->owner;
        if (!f->linked)
            return;
        for (uint32_t i = 0; i < n; i++)
            on_rtcp(e, f, &msgs[i], now);
    }
}

static void io_error(void *ctx, mf_io_reg *reg, int err, uint64_t now)
{
    mf_pollsrc *src = (mf_pollsrc *)reg;
    if (src->kind != MF_SRC_EGRESS)
        return; /* an ingress socket's error (nothing sent from it): nothing to report */
    mf_fork *f = src->owner;
    if (f->linked)
        report_send_error(ctx, f, err, now, src->track);
}

static void io_notify(void *ctx, mf_io_reg *reg)
{
    (void)reg;
    ((mf_engine *)ctx)->cmd_signalled = 1;
}

static void mark_dirty(mf_engine *e, mf_fork *f);

/* One result per packet queued from this fork's ring, in ring order. */
static void io_sent(void *ctx, mf_io_reg *reg, int result, uint64_t now)
{
    mf_engine *e = ctx;
    mf_fork *f = ((mf_pollsrc *)reg)->owner;
    f->tx_inflight--;
    if (f->tx_blocked)
        return; /* after a push-back nothing later was sent: it stays queued */
    if (result >= 0) {
        MF_CTR_ADD(f->ctr.sent, 1);
        mf_ring_release(&f->ring, 1);
    } else if (result == -EAGAIN || result == -EWOULDBLOCK || result == -ENOBUFS ||
               result == -ECANCELED) {
        f->tx_blocked = 1; /* kernel buffer full: keep them queued, retry next loop */
        mark_dirty(e, f);
    } else {
        report_send_error(e, f, -result, now, 0);
        mf_ring_release(&f->ring, 1); /* drop the packet that failed */
    }
}

static const mf_io_handler engine_io_handler = {
    .recv = io_recv,
    .error = io_error,
    .notify = io_notify,
    .sent = io_sent,
};

/* ---- sending ---------------------------------------------------------- */

/* Hands what one fork has queued to the backend, flushing the backend's batch
 * when it fills (the results release ring slots, so re-read the ring after). */
static void queue_fork(mf_engine *e, mf_fork *f, uint64_t now_ns)
{
    if (!f->has_dest) {
        /* destination withdrawn: not loss to the recorder */
        uint64_t avail = mf_ring_available(&f->ring) - f->tx_inflight;
        MF_CTR_ADD(f->ctr.skipped, avail);
        mf_ring_release(&f->ring, avail);
        return;
    }
    int flushed = 0;
    while (!f->tx_blocked) {
        uint64_t avail = mf_ring_available(&f->ring);
        if (f->tx_inflight >= avail)
            return;
        mf_slot *s = mf_ring_peek(&f->ring, f->tx_inflight);
        if (e->io_ops->send(e->io, &f->src.reg, s->data, s->len) == 0) {
            f->tx_inflight++;
            continue;
        }
        if (f->tx_inflight == 0 && flushed)
            return; /* refused with an empty batch: cannot happen, but never spin */
        e->io_ops->send_flush(e->io, now_ns); /* batch full: results release slots */
        flushed = 1;
    }
}

static void fork_flush_now(mf_engine *e, mf_fork *f, uint64_t now_ns)
{
    if (f->fd < 0)
        return;
    fork_protect_pending(f);
    f->tx_blocked = 0;
    queue_fork(e, f, now_ns);
    e->io_ops->send_flush(e->io, now_ns);
}

/* Every send of the loop: queued across all forks, submitted together. */
void mf_engine_flush(mf_engine *e, uint64_t now_ns)
{
    /* First every protect of the tick, fork by fork, then every send: the
     * SRTP code runs back to back instead of between system calls. */
    for (mf_fork *p = e->dirty; p; p = p->next_dirty) {
        /* The next fork's SRTP state loads while this one's packets are
         * protected: with thousands of forks it is never still cached. */
        if (p->next_dirty && p->next_dirty->srtp_tx && p->next_dirty->srtp_tx->cm)
            mf_srtp_cm_prefetch(p->next_dirty->srtp_tx->cm);
        fork_protect_pending(p);
    }
    mf_fork *f = e->dirty;
    e->dirty = NULL;
    while (f) {
        mf_fork *next = f->next_dirty;
        f->dirty = 0;
        f->next_dirty = NULL;
        f->tx_blocked = 0;
        queue_fork(e, f, now_ns);
        f = next;
    }
    e->io_ops->send_flush(e->io, now_ns);
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
    int use_rtp = f->rtcp_fd < 0;
    /* The RTP socket is connected: an SR for another address must use the
     * RTCP socket, or go unsent when there is none. */
    if (use_rtp && memcmp(to, &f->dest, to_len) != 0)
        return;
    mf_io_reg *reg = use_rtp ? &f->src.reg : &f->rtcp_src.reg;
    int rc = e->io_ops->send_now(e->io, reg, buf, (uint32_t)n,
                                 use_rtp ? NULL : (const struct sockaddr *)to, use_rtp ? 0 : to_len);
    if (rc < 0) {
        if (rc != -EAGAIN && rc != -EWOULDBLOCK)
            report_send_error(e, f, -rc, now, !use_rtp);
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

/* One loop iteration: the worker thread calls it forever (worker.c paces it),
 * an unstarted (embedded) engine's owner may call it from its own thread.
 * Commands are applied only after the backend's batch was handed over in
 * full: a remove may free calls and forks that batch pointed to. */
void mf_engine_iterate(mf_engine *e, int max_wait_ms)
{
    int full = 0;
    int timeout = e->dirty ? 1 : max_wait_ms; /* pushed-back sends: retry soon */
    int n = e->io_ops->wait(e->io, timeout, &full);
    uint64_t t0 = mf_now_ns();
    e->last_wake_ns = t0;
    e->last_ready = n > 0 ? (uint32_t)n : 0;
    e->last_full = full;
    if (e->cmd_signalled || mf_ring_available(&e->cmds) || mf_ring_available(&e->push)) {
        e->cmd_signalled = 0;
        mf_engine_apply_commands(e);
    }
    uint64_t now = mf_now_ns();
    mf_engine_flush(e, now);
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

/* ---- commands ----------------------------------------------------------- */

static void unlink_dirty(mf_engine *e, mf_fork *f)
{
    mf_fork **pp = &e->dirty;
    while (*pp) {
        if (*pp == f) {
            *pp = f->next_dirty;
            break;
        }
        pp = &(*pp)->next_dirty;
    }
    f->dirty = 0;
    f->next_dirty = NULL;
}

static void detach_fork(mf_engine *e, mf_fork *f)
{
    mf_call *c = f->call;
    if (!f->linked)
        return;
    /* Packets already protected and queued still go out: removal must not
     * look like loss (best effort: a full kernel buffer drops the rest). */
    fork_flush_now(e, f, mf_now_ns());
    for (int i = 0; i < c->nforks; i++) {
        if (c->forks[i] == f) {
            c->forks[i] = c->forks[--c->nforks];
            c->forks[c->nforks] = NULL;
            break;
        }
    }
    if (f->fd >= 0)
        e->io_ops->del(e->io, &f->src.reg);
    if (f->rtcp_fd >= 0)
        e->io_ops->del(e->io, &f->rtcp_src.reg);
    unlink_dirty(e, f);
    f->linked = 0;
    MF_CTR_ADD(e->ctr.forks, -1);
}

static void apply_command(mf_engine *e, mf_cmd *cmd)
{
    mf_call *c = cmd->call;
    mf_fork *f = cmd->fork;
    switch (cmd->type) {
    case MF_CMD_ADD_CALL:
        c->engine = e;
        c->linked = 1;
        c->next = e->calls;
        if (e->calls)
            e->calls->prev = c;
        e->calls = c;
        for (int t = 0; t < MF_TRACKS; t++) {
            c->tracks[t].last_activity_ns = mf_now_ns();
            if (c->tracks[t].fd >= 0) {
                c->tracks[t].src.reg.fd = c->tracks[t].fd;
                c->tracks[t].src.reg.kind = MF_IO_INGRESS;
                e->io_ops->add(e->io, &c->tracks[t].src.reg);
            }
        }
        c->no_media_ns = (uint64_t)cmd->arg * 1000000ull;
        MF_CTR_ADD(e->ctr.calls, 1);
        break;
    case MF_CMD_REMOVE_CALL:
        if (!c->linked)
            break;
        while (c->nforks)
            detach_fork(e, c->forks[0]);
        for (int t = 0; t < MF_TRACKS; t++)
            if (c->tracks[t].fd >= 0)
                e->io_ops->del(e->io, &c->tracks[t].src.reg);
        if (c->prev)
            c->prev->next = c->next;
        else
            e->calls = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->prev = c->next = NULL;
        c->linked = 0;
        MF_CTR_ADD(e->ctr.calls, -1);
        break;
    case MF_CMD_ADD_FORK:
        if (!c->linked || c->nforks >= MF_MAX_FORKS) {
            cmd->arg = -1; /* reported back: the call is full or gone */
            break;
        }
        f->call = c;
        f->srtp_tx = cmd->ptr_a;
        f->srtp_rx = cmd->ptr_b;
        c->forks[c->nforks++] = f;
        f->linked = 1;
        if (f->fd >= 0)
            e->io_ops->add(e->io, &f->src.reg);
        if (f->rtcp_fd >= 0)
            e->io_ops->add(e->io, &f->rtcp_src.reg);
        MF_CTR_ADD(e->ctr.forks, 1);
        break;
    case MF_CMD_REMOVE_FORK:
        detach_fork(e, f);
        break;
    case MF_CMD_SET_FORK_STATE:
        f->state = (uint8_t)cmd->arg;
        break;
    case MF_CMD_SET_FORK_DEST:
        memcpy(&f->dest, &cmd->addr_a, sizeof(f->dest));
        f->dest_len = cmd->len_a;
        memcpy(&f->rtcp_dest, &cmd->addr_b, sizeof(f->rtcp_dest));
        f->rtcp_dest_len = cmd->len_b;
        /* A connected RTP socket skips the route lookup on every send and
         * reports ICMP errors directly; RTCP has its own socket, so nothing
         * the recorder sends is filtered away by the connection. */
        if (f->fd >= 0 && connect(f->fd, (struct sockaddr *)&f->dest, f->dest_len) != 0) {
            f->has_dest = 0;
            mf_emit_event(e, MF_EV_SEND_ERROR, c ? c->id : f->call->id, f->id, f->track, errno,
                          mf_now_ns());
            break;
        }
        f->has_dest = 1;
        break;
    case MF_CMD_CLEAR_FORK_DEST:
        f->has_dest = 0;
        if (f->fd >= 0) {
            struct sockaddr unspec = {.sa_family = AF_UNSPEC};
            connect(f->fd, &unspec, sizeof(unspec));
        }
        break;
    case MF_CMD_SET_FORK_SRTP:
        /* key rotation: the caller frees the previous sessions after the ack;
         * packets queued before it are protected with the key they were
         * forwarded under */
        if (f->fd >= 0)
            fork_protect_pending(f);
        f->srtp_tx = cmd->ptr_a;
        f->srtp_rx = cmd->ptr_b;
        break;
    case MF_CMD_SET_TRACK_SOURCE: {
        mf_track *t = &c->tracks[cmd->arg & 1];
        int mode = cmd->arg >> 1;
        /* No configured source: a latching track learns one again. */
        if (mode == MF_SOURCE_ANY && t->latch)
            mode = MF_SOURCE_LEARNING;
        t->source_filter = mode;
        memcpy(&t->source, &cmd->addr_a, sizeof(t->source));
        break;
    }
    case MF_CMD_SET_RECORDING:
        c->record_mask = c->record_ring.slots ? (uint8_t)(cmd->arg & 3) : 0;
        break;
    case MF_CMD_STOP:
        e->stop_requested = 1;
        break;
    }
    MF_CTR_ADD(e->ctr.commands, 1);
}

static void process_pushed(mf_engine *e, uint64_t limit)
{
    uint64_t avail = mf_ring_available(&e->push);
    if (avail > limit)
        avail = limit;
    for (uint64_t i = 0; i < avail; i++) {
        mf_slot *s = mf_ring_peek(&e->push, i);
        mf_call *c = (mf_call *)(uintptr_t)s->aux64;
        mf_call_process(e, c, (int)s->aux, s->data, s->len, mf_now_ns());
    }
    mf_ring_release(&e->push, avail);
}

/* Worker side (or inline): apply queued commands. Pushed packets queued
 * before a command are processed first, so a push can never reach a call
 * that a later command removed. */
uint64_t mf_engine_apply_commands(mf_engine *e)
{
    uint64_t n = mf_ring_available(&e->cmds);
    process_pushed(e, UINT64_MAX);
    for (uint64_t i = 0; i < n; i++) {
        mf_cmd *cmd = (mf_cmd *)mf_ring_peek(&e->cmds, i)->data;
        apply_command(e, cmd);
    }
    mf_ring_release(&e->cmds, n);
    if (n) {
        pthread_mutex_lock(&e->done_lock);
        e->cmd_done += n;
        pthread_cond_broadcast(&e->done_cond);
        pthread_mutex_unlock(&e->done_lock);
    }
    return n;
}

uint64_t mf_engine_submit(mf_engine *e, const mf_cmd *cmd)
{
    pthread_mutex_lock(&e->submit_lock);
    mf_slot *s;
    /* The command ring is small; if the worker is momentarily behind, wait
     * for room rather than lose a control operation. */
    while (!(s = mf_ring_reserve(&e->cmds))) {
        if (!e->started) {
            mf_engine_apply_commands(e);
            continue;
        }
        pthread_mutex_unlock(&e->submit_lock);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&e->submit_lock);
    }
    memcpy(s->data, cmd, sizeof(*cmd));
    s->len = sizeof(*cmd);
    mf_ring_commit(&e->cmds);
    uint64_t ticket = ++e->cmd_submitted;
    if (e->started) {
        uint64_t one = 1;
        ssize_t w = write(e->cmd_efd, &one, sizeof(one));
        (void)w;
    } else {
        mf_engine_apply_commands(e);
    }
    pthread_mutex_unlock(&e->submit_lock);
    return ticket;
}

int mf_engine_wait(mf_engine *e, uint64_t ticket, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&e->done_lock);
    while (e->cmd_done < ticket && rc == 0)
        rc = pthread_cond_timedwait(&e->done_cond, &e->done_lock, &deadline);
    int ok = e->cmd_done >= ticket;
    pthread_mutex_unlock(&e->done_lock);
    return ok ? 0 : -1;
}

uint64_t mf_engine_last_ticket(mf_engine *e)
{
    pthread_mutex_lock(&e->submit_lock);
    uint64_t t = e->cmd_submitted;
    pthread_mutex_unlock(&e->submit_lock);
    return t;
}

int mf_engine_applied(mf_engine *e, uint64_t ticket)
{
    pthread_mutex_lock(&e->done_lock);
    int ok = e->cmd_done >= ticket;
    pthread_mutex_unlock(&e->done_lock);
    return ok;
}

uint32_t mf_engine_push(mf_engine *e, mf_call *c, int track, const uint8_t *base,
                        const uint32_t *offsets, const uint32_t *lengths, uint32_t n,
                        uint64_t now_ns)
{
    if (track < 0 || track >= MF_TRACKS) {
        MF_CTR_ADD(e->ctr.push_unknown, n);
        return 0;
    }
    if (!e->started) {
        for (uint32_t i = 0; i < n; i++)
            mf_call_process(e, c, track, base + offsets[i], lengths[i], now_ns);
        mf_engine_flush(e, now_ns);
        MF_CTR_ADD(e->ctr.pushed, n);
        return n;
    }
    uint32_t accepted = 0;
    uint32_t cap = mf_ring_payload_capacity(&e->push);
    pthread_mutex_lock(&e->submit_lock);
    for (uint32_t i = 0; i < n; i++) {
        mf_slot *s = mf_ring_reserve(&e->push);
        if (!s)
            break;
        uint32_t len = lengths[i] < cap ? lengths[i] : cap; /* oversize: truncated, then fails RTP checks or is counted */
        memcpy(s->data, base + offsets[i], len);
        s->len = len;
        s->aux = (uint32_t)track;
        s->aux64 = (uint64_t)(uintptr_t)c;
        mf_ring_commit(&e->push);
        accepted++;
    }
    pthread_mutex_unlock(&e->submit_lock);
    MF_CTR_ADD(e->ctr.pushed, accepted);
    if (accepted < n)
        MF_CTR_ADD(e->ctr.push_dropped, n - accepted);
    if (accepted) {
        uint64_t one = 1;
        ssize_t w = write(e->cmd_efd, &one, sizeof(one));
        (void)w;
    }
    return accepted;
}

/* ---- consumers ---------------------------------------------------------- */

uint32_t mf_fork_drain(mf_fork *f, uint8_t *out, size_t cap, uint32_t *lengths, uint8_t *is_rtcp,
                       uint32_t max)
{
    uint64_t avail = mf_ring_available(&f->ring);
    uint32_t n = 0;
    size_t used = 0;
    while (n < avail && n < max) {
        mf_slot *s = mf_ring_peek(&f->ring, n);
        if (used + s->len > cap)
            break;
        memcpy(out + used, s->data, s->len);
        used += s->len;
        lengths[n] = s->len;
        is_rtcp[n] = (uint8_t)s->aux;
        n++;
    }
    mf_ring_release(&f->ring, n);
    MF_CTR_ADD(f->ctr.drained, n);
    return n;
}

uint32_t mf_call_drain_recording(mf_call *c, uint8_t *out, size_t cap, uint32_t *offsets,
                                 uint32_t *lengths, uint8_t *tracks, uint16_t *seqs,
                                 uint32_t *timestamps, uint8_t *pts, uint8_t *markers,
                                 uint64_t *arrival_ns, uint32_t max)
{
    if (!c->record_ring.slots)
        return 0;
    uint64_t avail = mf_ring_available(&c->record_ring);
    uint32_t n = 0;
    size_t used = 0;
    while (n < avail && n < max) {
        mf_slot *s = mf_ring_peek(&c->record_ring, n);
        uint32_t plen = s->len - MF_REC_PREFIX;
        if (used + plen > cap)
            break;
        memcpy(&seqs[n], s->data, 2);
        memcpy(&timestamps[n], s->data + 2, 4);
        pts[n] = s->data[6];
        markers[n] = s->data[7];
        memcpy(out + used, s->data + MF_REC_PREFIX, plen);
        offsets[n] = (uint32_t)used;
        lengths[n] = plen;
        tracks[n] = (uint8_t)s->aux;
        arrival_ns[n] = s->aux64;
        used += plen;
        n++;
    }
    mf_ring_release(&c->record_ring, n);
    return n;
}

/* ---- counters ----------------------------------------------------------- */

#define COPY_FIELD(dst, src, name) (dst)->name = MF_CTR_GET((src)->name)

void mf_fork_counters_read(const mf_fork *f, mf_fork_counters *o)
{
    const mf_fork_counters *c = &f->ctr;
    COPY_FIELD(o, c, forwarded);
    COPY_FIELD(o, c, bytes);
    COPY_FIELD(o, c, sent);
    COPY_FIELD(o, c, drained);
    COPY_FIELD(o, c, dropped_full);
    COPY_FIELD(o, c, skipped);
    COPY_FIELD(o, c, send_errors);
    COPY_FIELD(o, c, rtcp_send_errors);
    COPY_FIELD(o, c, srtp_errors);
    COPY_FIELD(o, c, oversize);
    COPY_FIELD(o, c, rtcp_sent);
    COPY_FIELD(o, c, rtcp_received);
    COPY_FIELD(o, c, rtcp_bad);
    COPY_FIELD(o, c, rr_fraction_lost);
    COPY_FIELD(o, c, rr_cumulative_lost);
    COPY_FIELD(o, c, rr_jitter);
    COPY_FIELD(o, c, rr_highest_seq);
    COPY_FIELD(o, c, rr_last_ns);
}

void mf_track_counters_read(const mf_call *call, int track, mf_track_counters *o)
{
    const mf_track_counters *c = &call->tracks[track & 1].ctr;
    COPY_FIELD(o, c, received);
    COPY_FIELD(o, c, bytes);
    COPY_FIELD(o, c, malformed);
    COPY_FIELD(o, c, rtcp);
    COPY_FIELD(o, c, filtered_dtmf);
    COPY_FIELD(o, c, source_rejected);
    COPY_FIELD(o, c, source_latches);
    COPY_FIELD(o, c, recorded);
    COPY_FIELD(o, c, record_dropped);
    COPY_FIELD(o, c, ssrc_changes);
    COPY_FIELD(o, c, last_rx_ns);
}

void mf_engine_counters_read(const mf_engine *e, mf_engine_counters *o)
{
    const mf_engine_counters *c = &e->ctr;
    COPY_FIELD(o, c, loops);
    COPY_FIELD(o, c, busy_ns);
    COPY_FIELD(o, c, commands);
    COPY_FIELD(o, c, pushed);
    COPY_FIELD(o, c, push_dropped);
    COPY_FIELD(o, c, push_unknown);
    COPY_FIELD(o, c, events);
    COPY_FIELD(o, c, events_dropped);
    COPY_FIELD(o, c, calls);
    COPY_FIELD(o, c, forks);
}
