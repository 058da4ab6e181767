/* The forwarding engine: calls, their two tracks, up to four forked streams
 * per call, a command queue from the control plane and an event queue back.
 *
 * Threading: one worker thread owns every table and socket once the engine is
 * started. Other threads only (a) allocate a call/fork, (b) submit commands
 * and wait for them to be applied, (c) push packets into the ingress ring,
 * (d) read counters, (e) drain fork and recording rings as their single
 * consumer, (f) free what a completed remove command handed back. The worker
 * never allocates or frees. An engine that is not started applies commands
 * and processes pushed packets inline in the caller's thread (embedded,
 * single-threaded use and benchmarks). */
#ifndef MF_ENGINE_H
#define MF_ENGINE_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "io.h"
#include "mf_common.h"
#include "ring.h"
#include "rtp.h"
#include "srtp_shim.h"

#define MF_TRACKS 2
#define MF_TRACK_INBOUND 0
#define MF_TRACK_OUTBOUND 1
#define MF_MAX_FORKS 4
#define MF_RX_BATCH 32
#define MF_RX_BUF 2048
#define MF_TX_BATCH 32
#define MF_NO_DTMF 255
#define MF_CNAME_MAX 64
#define MF_SRTP_TAG_MAX 16 /* largest tag libsrtp appends without MKI (GCM) */

typedef struct mf_engine mf_engine;
typedef struct mf_call mf_call;
typedef struct mf_fork mf_fork;

enum { MF_SRC_CMD = 1, MF_SRC_INGRESS = 2, MF_SRC_EGRESS = 3 };

/* A registration with the I/O backend (io.h), embedded in the call or fork
 * that owns the socket; reg comes first so the handler finds the owner. */
typedef struct {
    mf_io_reg reg;
    uint8_t kind;  /* MF_SRC_* */
    uint8_t track; /* ingress: the track; egress: 1 for the RTCP socket */
    void *owner;
} mf_pollsrc;

typedef struct {
    uint64_t received;        /* datagrams that reached this track */
    uint64_t bytes;
    uint64_t malformed;       /* failed RTP validation */
    uint64_t rtcp;            /* RTCP arriving on the media port: ignored */
    uint64_t filtered_dtmf;   /* RFC 4733 telephone-events, never forwarded */
    uint64_t source_rejected; /* from an address other than the expected or latched one */
    uint64_t source_latches;  /* times the track latched onto a sender (first + relatches) */
    uint64_t recorded;
    uint64_t record_dropped;  /* recording ring full */
    uint64_t ssrc_changes;
    uint64_t last_rx_ns;
} mf_track_counters;

typedef struct {
    uint64_t forwarded;      /* packets handed to the ring (protected if secure) */
    uint64_t bytes;          /* bytes of those packets */
    uint64_t sent;           /* packets the kernel accepted (socket mode) */
    uint64_t drained;        /* packets taken by the embedder (drain mode) */
    uint64_t dropped_full;   /* ring full: consumer too slow */
    uint64_t skipped;        /* paused, or no destination: not loss to the recorder */
    uint64_t send_errors;     /* RTP: the recorder's media address */
    uint64_t rtcp_send_errors; /* our sender reports (a recorder may have no RTCP port) */
    uint64_t srtp_errors;
    uint64_t oversize;       /* larger than a ring slot */
    uint64_t rtcp_sent;
    uint64_t rtcp_received;
    uint64_t rtcp_bad;       /* malformed or failed SRTCP authentication */
    uint64_t rr_fraction_lost;
    int64_t rr_cumulative_lost;
    uint64_t rr_jitter;
    uint64_t rr_highest_seq;
    uint64_t rr_last_ns;
} mf_fork_counters;

/* Which senders a track with a socket accepts. ADDRESS and ADDRESS_PORT are
 * configured (expect_source) and never change on their own. Without one, a
 * latching track starts LEARNING and becomes LATCHED on the first sender of
 * valid RTP; another sender may take over only after the latched one was
 * silent for relatch_ns (a media server that moved ports). */
enum {
    MF_SOURCE_ANY = 0,
    MF_SOURCE_ADDRESS = 1,
    MF_SOURCE_ADDRESS_PORT = 2,
    MF_SOURCE_LEARNING = 3,
    MF_SOURCE_LATCHED = 4,
};

typedef struct {
    mf_pollsrc src;
    int fd; /* -1: no socket (packets are pushed) */
    int source_filter; /* MF_SOURCE_* */
    struct sockaddr_storage source;
    uint8_t latch;       /* learn the source when none is configured */
    uint64_t relatch_ns; /* silence of the latched source before another may latch */
    mf_seq_tracker seq;
    uint32_t ssrc;
    uint32_t epoch;     /* bumped when the upstream SSRC changes */
    uint64_t filtered;  /* running count of filtered packets (sequence rewrite) */
    uint64_t last_activity_ns;
    int no_media_reported;
    mf_track_counters ctr;
} mf_track;

struct mf_call {
    uint64_t id;
    mf_engine *engine;
    int linked;
    uint8_t dtmf_pt;
    uint32_t clock_rate;
    uint64_t no_media_ns; /* 0 disables the check */
    mf_track tracks[MF_TRACKS];
    mf_fork *forks[MF_MAX_FORKS];
    int nforks;
    /* local recording: raw packets per track for the Python sink */
    uint8_t record_mask; /* bit per track */
    mf_ring record_ring;
    mf_call *prev, *next;
};

enum { MF_FORK_ACTIVE = 0, MF_FORK_PAUSED = 1 };

struct mf_fork {
    uint64_t id;
    mf_call *call;
    int linked;
    uint8_t track;
    uint8_t state;
    int fd;      /* RTP, connected to the destination; -1: drain mode */
    int rtcp_fd; /* RTCP on the RTP port + 1 (RFC 3550 §11): SRs out, RRs in; -1: none */
    mf_pollsrc src, rtcp_src;
    mf_srtp_ctx *srtp_tx; /* NULL: plain RTP */
    mf_srtp_ctx *srtp_rx; /* for SRTCP from the recorder; NULL: plain or unknown */
    uint32_t ssrc;
    uint16_t seq_base;
    uint32_t ts_base;
    /* sequence/timestamp rewrite state */
    int started;
    uint32_t epoch;
    uint32_t first_ext;
    uint32_t first_ts;
    uint64_t filtered_at_start;
    uint64_t skipped_since_start;
    uint16_t last_seq;
    uint32_t last_ts;
    uint64_t last_send_ns;
    /* destination */
    int has_dest;
    struct sockaddr_storage dest, rtcp_dest;
    socklen_t dest_len, rtcp_dest_len;
    /* RTCP sender report state */
    char cname[MF_CNAME_MAX];
    uint8_t cname_len;
    uint64_t rtcp_interval_ns;
    uint64_t next_sr_ns;
    uint32_t sr_packets, sr_octets;
    uint64_t last_error_event_ns;
    uint64_t last_rtcp_error_event_ns;
    mf_ring ring;
    int dirty;
    mf_fork *next_dirty;
    uint32_t tx_inflight; /* packets handed to the backend, not yet reported */
    uint64_t tx_protected; /* ring index up to which slots are protected (SRTP deferred to the flush) */
    int seq_noted;         /* last_seq/last_ts hold a forwarded packet's */
    int tx_blocked;       /* the kernel pushed back during this flush */
    mf_fork_counters ctr;
};

typedef enum {
    MF_CMD_ADD_CALL = 1,
    MF_CMD_REMOVE_CALL,
    MF_CMD_ADD_FORK,
    MF_CMD_REMOVE_FORK,
    MF_CMD_SET_FORK_STATE,
    MF_CMD_SET_FORK_DEST,
    MF_CMD_CLEAR_FORK_DEST,
    MF_CMD_SET_FORK_SRTP,
    MF_CMD_SET_TRACK_SOURCE,
    MF_CMD_SET_RECORDING,
    MF_CMD_STOP,
} mf_cmd_type;

typedef struct {
    mf_cmd_type type;
    mf_call *call;
    mf_fork *fork;
    int arg;
    void *ptr_a, *ptr_b;
    struct sockaddr_storage addr_a, addr_b;
    socklen_t len_a, len_b;
} mf_cmd;

typedef enum {
    MF_EV_SEND_ERROR = 1,   /* value: errno (ECONNREFUSED for ICMP unreachable) */
    MF_EV_NO_MEDIA = 2,     /* value: milliseconds without ingress media on `track` */
    MF_EV_MEDIA_RESUMED = 3,
    MF_EV_RTCP_REPORT = 4,  /* first receiver report from the recorder for `fork_id` */
    MF_EV_RTCP_SEND_ERROR = 5, /* like SEND_ERROR, for the fork's RTCP socket */
} mf_event_type;

typedef struct {
    uint32_t type;
    uint32_t track;
    uint64_t call_id;
    uint64_t fork_id;
    int64_t value;
    uint64_t time_ns;
} mf_event;

typedef struct {
    uint64_t loops;
    uint64_t busy_ns;
    uint64_t commands;
    uint64_t pushed;
    uint64_t push_dropped;
    uint64_t push_unknown; /* pushed for a track index out of range */
    uint64_t events;
    uint64_t events_dropped;
    uint64_t calls;
    uint64_t forks;
} mf_engine_counters;

typedef struct {
    uint32_t push_ring_slots;   /* power of two */
    uint32_t event_ring_slots;  /* power of two */
    uint32_t max_packet;        /* largest RTP packet forwarded */
    uint32_t tick_us;   /* a wake handles what arrived in the last tick (0: wake per readiness) */
    int io_mode;        /* MF_IO_MODE_* */
} mf_engine_config;

enum { MF_IO_MODE_AUTO = 0, MF_IO_MODE_EPOLL = 1, MF_IO_MODE_URING = 2 };

struct mf_engine {
    const mf_io_ops *io_ops; /* the backend chosen at creation */
    mf_io *io;
    char io_why[160];        /* why auto did not choose io_uring ("" when it did) */
    int cmd_efd;
    int evt_efd;
    mf_pollsrc cmd_src;
    pthread_t thread;
    int started;
    int stop_requested;
    mf_engine_config cfg;

    pthread_mutex_t submit_lock; /* producers of cmds and pushes */
    pthread_mutex_t done_lock;
    pthread_cond_t done_cond;
    mf_ring cmds;
    uint64_t cmd_submitted;
    uint64_t cmd_done;
    mf_ring push;
    mf_ring events;
    int events_pending;

    mf_call *calls;
    mf_fork *dirty;
    uint64_t next_timer_ns;
    uint32_t last_ready;        /* sockets (completions) served in the last loop */
    int last_full;              /* some receive batch came back full: a backlog */
    uint64_t last_wake_ns;      /* when the last wait returned */
    int cmd_signalled;
    mf_engine_counters ctr;
};

/* lifecycle */
mf_engine *mf_engine_new(const mf_engine_config *cfg);
/* Like mf_engine_new; on failure (NULL) why holds the reason (e.g. io_uring refused). */
mf_engine *mf_engine_new_ex(const mf_engine_config *cfg, char *why, size_t why_len);
const char *mf_engine_io_name(const mf_engine *e);
int mf_engine_start(mf_engine *e);
void mf_engine_stop(mf_engine *e);  /* joins the worker */
void mf_engine_free(mf_engine *e); /* after stop; every call must be removed first */
uint64_t mf_engine_worker_cpu_ns(mf_engine *e);

/* commands: submit returns a ticket to wait for; wait returns 0 when applied */
uint64_t mf_engine_submit(mf_engine *e, const mf_cmd *cmd);
int mf_engine_wait(mf_engine *e, uint64_t ticket, int timeout_ms);
/* non-blocking forms, for callers that must not sleep (an event loop polls these) */
uint64_t mf_engine_last_ticket(mf_engine *e);
int mf_engine_applied(mf_engine *e, uint64_t ticket);

/* one worker loop iteration: the thread's body, or the owner's call when the
 * engine is not started (embedded single-threaded use) */
void mf_engine_iterate(mf_engine *e, int max_wait_ms);

/* object construction and destruction (caller's thread, never the worker) */
mf_call *mf_call_new(uint64_t id, uint8_t dtmf_pt, uint32_t clock_rate, uint32_t record_slots,
                     uint32_t max_packet);
/* Before the call's add command only: the call owns (and will close) the two
 * ingress sockets; -1 for a track without one. */
void mf_call_set_ingress(mf_call *c, int inbound_fd, int outbound_fd);
/* Before the call's add command only: latch (1) or accept any sender (0) when no
 * source is configured; relatch_ns as in mf_track. */
void mf_call_set_latch(mf_call *c, int latch, uint64_t relatch_ns);
void mf_call_free(mf_call *c); /* after its remove command completed; closes its sockets */
mf_fork *mf_fork_new(uint64_t id, uint8_t track, uint32_t ssrc, uint16_t seq_base,
                     uint32_t ts_base, int fd, int rtcp_fd, uint32_t ring_slots, uint32_t max_packet,
                     const char *cname, uint64_t rtcp_interval_ns);
void mf_fork_free(mf_fork *f); /* after its remove command completed; closes its sockets */

/* embedded ingress: packets[i] = base + offsets[i], lengths[i]; returns how
 * many were accepted (the rest were dropped: ring full) */
uint32_t mf_engine_push(mf_engine *e, mf_call *c, int track, const uint8_t *base,
                        const uint32_t *offsets, const uint32_t *lengths, uint32_t n,
                        uint64_t now_ns);

/* per-packet path, exposed for the inline mode and benchmarks */
void mf_call_process(mf_engine *e, mf_call *c, int track, const uint8_t *pkt, size_t len,
                     uint64_t now_ns);

/* ring consumers for the embedder (single consumer per ring) */
uint32_t mf_fork_drain(mf_fork *f, uint8_t *out, size_t cap, uint32_t *lengths, uint8_t *is_rtcp,
                       uint32_t max);
uint32_t mf_call_drain_recording(mf_call *c, uint8_t *out, size_t cap, uint32_t *offsets,
                                 uint32_t *lengths, uint8_t *tracks, uint16_t *seqs,
                                 uint32_t *timestamps, uint8_t *pts, uint8_t *markers,
                                 uint64_t *arrival_ns, uint32_t max);

/* events: returns how many were copied */
uint32_t mf_engine_read_events(mf_engine *e, mf_event *out, uint32_t max);

/* counters snapshots (any thread) */
void mf_fork_counters_read(const mf_fork *f, mf_fork_counters *out);
void mf_track_counters_read(const mf_call *c, int track, mf_track_counters *out);
void mf_engine_counters_read(const mf_engine *e, mf_engine_counters *out);

/* The engine's tick: apply commands, flush what the packets queued, run
 * timers. mf_engine_iterate is wait + this; worker.c paces the thread. */
uint64_t mf_engine_apply_commands(mf_engine *e);
void mf_engine_flush(mf_engine *e, uint64_t now_ns);

#endif
