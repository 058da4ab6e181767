# Extern declarations of csrc/ for the Cython wrapper. Kept apart from the
# .pyx (as httptools does) so the C surface is visible in one place.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<netinet/in.h>":
    struct sockaddr_in:
        pass


cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct sockaddr_storage:
        pass


cdef extern from "mf_common.h":
    int64_t mf_live_allocations()
    int64_t mf_open_sockets()


cdef extern from "rtp.h":
    ctypedef struct mf_rtp_info:
        uint8_t marker
        uint8_t payload_type
        uint16_t seq
        uint32_t timestamp
        uint32_t ssrc
        uint16_t payload_offset
        uint16_t payload_len
    int mf_rtp_parse(const uint8_t *pkt, size_t len, mf_rtp_info *out) nogil


cdef extern from "rtcp.h":
    ctypedef struct mf_rtcp_report_block:
        uint8_t fraction_lost
        int cumulative_lost
        uint32_t highest_seq
        uint32_t jitter
        uint32_t lsr
        uint32_t dlsr
    int mf_rtcp_find_report(const uint8_t *pkt, size_t len, uint32_t ssrc,
                            mf_rtcp_report_block *out) nogil


cdef extern from "srtp_shim.h":
    ctypedef int (*mf_srtp_create_fn)(void **session, const void *policy)
    ctypedef int (*mf_srtp_dealloc_fn)(void *session)
    ctypedef int (*mf_srtp_protect_fn)(void *session, void *packet, int *len)
    ctypedef struct mf_srtp_api:
        mf_srtp_create_fn create
        mf_srtp_dealloc_fn dealloc
        mf_srtp_protect_fn protect
        mf_srtp_protect_fn protect_rtcp
        mf_srtp_protect_fn unprotect
        mf_srtp_protect_fn unprotect_rtcp
    enum: MF_SRTP_MAX_TRAILER
    int mf_srtp_bind(const mf_srtp_api *api)
    int mf_srtp_ready()
    ctypedef struct mf_srtp_ctx:
        void *session
        void *cm
    mf_srtp_ctx *mf_srtp_session_new(const void *policy, const uint8_t *master, int tag_len,
                                     int *err)
    void mf_srtp_session_free(mf_srtp_ctx *ctx)
    int mf_srtp_protect_rtp(mf_srtp_ctx *ctx, uint8_t *packet, int *len) nogil


cdef extern from "srtp_cm.h":
    int mf_srtp_cm_available()
    int mf_srtp_cm_derive(const uint8_t *master_key, const uint8_t *master_salt, uint8_t label,
                          uint8_t *out, int out_len)
    void mf_srtp_cm_allow_aesni(int allow)
    int mf_srtp_cm_keystream(const uint8_t *key, const uint8_t *iv, uint8_t *out, int out_len,
                             int aesni)


cdef extern from "engine.h":
    enum: MF_RX_BUF
    ctypedef struct mf_engine_config:
        uint32_t push_ring_slots
        uint32_t event_ring_slots
        uint32_t max_packet
        uint32_t tick_us
        int io_mode

    ctypedef struct mf_track_counters:
        uint64_t received
        uint64_t bytes
        uint64_t malformed
        uint64_t rtcp
        uint64_t filtered_dtmf
        uint64_t source_rejected
        uint64_t source_latches
        uint64_t recorded
        uint64_t record_dropped
        uint64_t ssrc_changes
        uint64_t last_rx_ns

    ctypedef struct mf_fork_counters:
        uint64_t forwarded
        uint64_t bytes
        uint64_t sent
        uint64_t drained
        uint64_t dropped_full
        uint64_t skipped
        uint64_t send_errors
        uint64_t rtcp_send_errors
        uint64_t srtp_errors
        uint64_t oversize
        uint64_t rtcp_sent
        uint64_t rtcp_received
        uint64_t rtcp_bad
        uint64_t rr_fraction_lost
        int64_t rr_cumulative_lost
        uint64_t rr_jitter
        uint64_t rr_highest_seq
        uint64_t rr_last_ns

    ctypedef struct mf_engine_counters:
        uint64_t loops
        uint64_t busy_ns
        uint64_t commands
        uint64_t pushed
        uint64_t push_dropped
        uint64_t push_unknown
        uint64_t events
        uint64_t events_dropped
        uint64_t calls
        uint64_t forks

    ctypedef struct mf_event:
        uint32_t type
        uint32_t track
        uint64_t call_id
        uint64_t fork_id
        int64_t value
        uint64_t time_ns

    ctypedef struct mf_call:
        int nforks
    ctypedef struct mf_fork:
        pass
    ctypedef struct mf_engine:
        int evt_efd
        char io_why[160]

    ctypedef enum mf_cmd_type:
        MF_CMD_ADD_CALL
        MF_CMD_REMOVE_CALL
        MF_CMD_ADD_FORK
        MF_CMD_REMOVE_FORK
        MF_CMD_SET_FORK_STATE
        MF_CMD_SET_FORK_DEST
        MF_CMD_CLEAR_FORK_DEST
        MF_CMD_SET_FORK_SRTP
        MF_CMD_SET_TRACK_SOURCE
        MF_CMD_SET_RECORDING
        MF_CMD_STOP

    ctypedef struct mf_cmd:
        mf_cmd_type type
        mf_call *call
        mf_fork *fork
        int arg
        void *ptr_a
        void *ptr_b
        sockaddr_storage addr_a
        sockaddr_storage addr_b
        socklen_t len_a
        socklen_t len_b

    mf_engine *mf_engine_new(const mf_engine_config *cfg)
    mf_engine *mf_engine_new_ex(const mf_engine_config *cfg, char *why, size_t why_len)
    const char *mf_engine_io_name(const mf_engine *e)
    int mf_engine_start(mf_engine *e)
    void mf_engine_stop(mf_engine *e) nogil
    void mf_engine_free(mf_engine *e)
    uint64_t mf_engine_worker_cpu_ns(mf_engine *e)
    uint64_t mf_engine_submit(mf_engine *e, const mf_cmd *cmd) nogil
    int mf_engine_wait(mf_engine *e, uint64_t ticket, int timeout_ms) nogil
    uint64_t mf_engine_last_ticket(mf_engine *e) nogil
    int mf_engine_applied(mf_engine *e, uint64_t ticket) nogil
    void mf_engine_iterate(mf_engine *e, int max_wait_ms) nogil

    mf_call *mf_call_new(uint64_t id, uint8_t dtmf_pt, uint32_t clock_rate, uint32_t record_slots,
                         uint32_t max_packet)
    void mf_call_set_ingress(mf_call *c, int inbound_fd, int outbound_fd)
    void mf_call_set_latch(mf_call *c, int latch, uint64_t relatch_ns)
    void mf_call_free(mf_call *c)
    mf_fork *mf_fork_new(uint64_t id, uint8_t track, uint32_t ssrc, uint16_t seq_base,
                         uint32_t ts_base, int fd, int rtcp_fd, uint32_t ring_slots,
                         uint32_t max_packet,
                         const char *cname, uint64_t rtcp_interval_ns)
    void mf_fork_free(mf_fork *f)

    uint32_t mf_engine_push(mf_engine *e, mf_call *c, int track, const uint8_t *base,
                            const uint32_t *offsets, const uint32_t *lengths, uint32_t n,
                            uint64_t now_ns) nogil
    uint32_t mf_fork_drain(mf_fork *f, uint8_t *out, size_t cap, uint32_t *lengths,
                           uint8_t *is_rtcp, uint32_t max) nogil
    uint32_t mf_call_drain_recording(mf_call *c, uint8_t *out, size_t cap, uint32_t *offsets,
                                     uint32_t *lengths, uint8_t *tracks, uint16_t *seqs,
                                     uint32_t *timestamps, uint8_t *pts, uint8_t *markers,
                                     uint64_t *arrival_ns, uint32_t max) nogil
    uint32_t mf_engine_read_events(mf_engine *e, mf_event *out, uint32_t max)
    void mf_fork_counters_read(const mf_fork *f, mf_fork_counters *out)
    void mf_track_counters_read(const mf_call *c, int track, mf_track_counters *out)
    void mf_engine_counters_read(const mf_engine *e, mf_engine_counters *out)
    uint64_t mf_now_ns() nogil


cdef extern from "bench.h":
    ctypedef struct mf_raw_forward_result:
        uint64_t forwarded
        uint64_t cpu_ns
        uint64_t wall_ns
    ctypedef struct mf_loadgen:
        int send_fd
        const sockaddr_in *dests
        uint32_t nstreams
        uint32_t pps
        uint32_t payload_len
        uint8_t payload_type
        uint64_t duration_ns
        uint64_t drain_ns
        const int *sink_fds
        uint32_t nsinks
        uint64_t sent
        uint64_t send_errors
        uint64_t sink_received
        uint64_t sink_bytes
        uint64_t late_ticks
    uint64_t mf_bench_raw_protect(void *session, const uint8_t *pkt, uint32_t len, uint64_t n) nogil
    uint64_t mf_bench_protect_spread(void *const *sessions, uint32_t nsessions, const uint8_t *pkt,
                                     uint32_t len, uint64_t first, uint64_t n, int prefetch) nogil
    uint64_t mf_bench_process(mf_engine *e, mf_call *c, int track, const uint8_t *pkt,
                              uint32_t len, uint64_t n) nogil
    void mf_bench_raw_forward(const int *in_fds, const int *out_fds, const sockaddr_in *dests,
                              uint32_t n, uint64_t packets, uint64_t max_ns, volatile int *stop,
                              mf_raw_forward_result *out) nogil
    void mf_loadgen_run(mf_loadgen *g, volatile int *stop) nogil
    ctypedef struct mf_floor_result:
        uint64_t received
        uint64_t forwarded
        uint64_t cpu_ns
        uint64_t wall_ns
        uint64_t syscalls
        uint64_t ticks
    int mf_bench_floor_forward(int mode, const int *in_fds, uint32_t n_in, const int *out_fds,
                               uint32_t nforks, const sockaddr_in *dests, void *const *sessions,
                               uint32_t tick_us, uint64_t max_ns, volatile int *stop,
                               mf_floor_result *out) nogil
