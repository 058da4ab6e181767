/* Engine tables, command/event queues and the per-packet path. The socket
 * loop is in worker.c. */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "rtcp.h"
#include "srtp_shim.h"

/* Layout of a recording slot's data: seq, timestamp, payload type, marker, payload. */
#define MF_REC_PREFIX 8


static void ring_slots_init_fail_cleanup(mf_ring *r)
{
    if (r->slots)
        mf_ring_destroy(r);
}

mf_engine *mf_engine_new(const mf_engine_config *cfg)
{
    mf_engine *e = mf_aligned_alloc(64, sizeof(*e));
    if (!e)
        return NULL;
    memset(e, 0, sizeof(*e));
    e->cfg = *cfg;
    if (e->cfg.max_packet < 64)
        e->cfg.max_packet = 64;
    if (e->cfg.max_packet > MF_RX_BUF)
        e->cfg.max_packet = MF_RX_BUF;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->cmd_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->evt_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->cmd_efd < 0 || e->evt_efd < 0)
        goto fail;
    if (mf_ring_init(&e->cmds, 256, sizeof(mf_cmd)) ||
        mf_ring_init(&e->push, cfg->push_ring_slots, e->cfg.max_packet) ||
        mf_ring_init(&e->events, cfg->event_ring_slots, sizeof(mf_event)))
        goto fail;
    pthread_mutex_init(&e->submit_lock, NULL);
    pthread_mutex_init(&e->done_lock, NULL);
    pthread_cond_init(&e->done_cond, NULL);
    e->cmd_src.kind = MF_SRC_CMD;
    e->cmd_src.owner = e;
    mf_worker_register(e, e->cmd_efd, &e->cmd_src, EPOLLIN);
    for (int i = 0; i < MF_RX_BATCH; i++) {
        e->rx_iov[i].iov_base = e->rx_buf[i];
        e->rx_iov[i].iov_len = MF_RX_BUF;
    }
    return e;
fail:
    if (e->epfd >= 0)
        close(e->epfd);
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

void mf_engine_free(mf_engine *e)
{
    if (!e)
        return;
    close(e->epfd);
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
    if (f->srtp_tx) {
        if (MF_UNLIKELY(mf_srtp.protect(f->srtp_tx, slot->data, &len) != 0)) {
            MF_CTR_ADD(f->ctr.srtp_errors, 1);
            return;
        }
    }
    slot->len = (uint32_t)len;
    slot->aux = 0;
    mf_ring_commit(&f->ring);
    /* Newest in sequence order drives the RTCP mapping and rebases. */
    if ((int16_t)(uint16_t)(seq - f->last_seq) > 0 || f->ctr.forwarded == 0) {
        f->last_seq = seq;
        f->last_ts = ts;
        f->last_send_ns = now_ns;
    }
    f->sr_packets++;
    f->sr_octets += info->payload_len;
    MF_CTR_ADD(f->ctr.forwarded, 1);
    MF_CTR_ADD(f->ctr.bytes, (uint64_t)len);
    mark_dirty(e, f);
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
        if (mf_srtp.protect_rtcp(f->srtp_tx, buf, &len) != 0) {
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
    mf_fork_flush(e, f, mf_now_ns());
    for (int i = 0; i < c->nforks; i++) {
        if (c->forks[i] == f) {
            c->forks[i] = c->forks[--c->nforks];
            c->forks[c->nforks] = NULL;
            break;
        }
    }
    if (f->fd >= 0)
        mf_worker_unregister(e, f->fd);
    if (f->rtcp_fd >= 0)
        mf_worker_unregister(e, f->rtcp_fd);
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
            if (c->tracks[t].fd >= 0)
                mf_worker_register(e, c->tracks[t].fd, &c->tracks[t].src, EPOLLIN);
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
                mf_worker_unregister(e, c->tracks[t].fd);
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
            mf_worker_register(e, f->fd, &f->src, EPOLLIN);
        if (f->rtcp_fd >= 0)
            mf_worker_register(e, f->rtcp_fd, &f->rtcp_src, EPOLLIN);
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
        /* key rotation: the caller frees the previous sessions after the ack */
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
        mf_worker_flush(e, now_ns);
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
