# cython: language_level=3, boundscheck=False, wraparound=False
"""Private Cython wrapper over csrc/: thin handles, no logic.

Rules here (as in httptools): no Python exception crosses into C, every
blocking or per-packet call runs without the GIL, and pointers handed to the
worker are only freed after the worker acknowledged their removal.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset, memcpy
from libc.errno cimport errno

cimport cython

from mediafork.media._cengine cimport *
from posix.unistd cimport usleep

import numpy as np

cdef extern from "<arpa/inet.h>":
    int inet_pton(int af, const char *src, void *dst)
    uint16_t htons(uint16_t)

cdef extern from "<netinet/in.h>":
    ctypedef struct in_addr:
        pass
    ctypedef struct in6_addr:
        pass
    ctypedef struct sockaddr_in_full "struct sockaddr_in":
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    ctypedef struct sockaddr_in6_full "struct sockaddr_in6":
        unsigned short sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    int AF_INET
    int AF_INET6

DEF WAIT_MS = 5000
DEF MAX_EVENTS = 1024

IO_MODES = {"auto": 0, "epoll": 1, "io_uring": 2}

EVENT_SEND_ERROR = 1
EVENT_NO_MEDIA = 2
EVENT_MEDIA_RESUMED = 3
EVENT_RTCP_REPORT = 4
EVENT_RTCP_SEND_ERROR = 5

RTP_STATUS = {0: "ok", 1: "too_short", 2: "bad_version", 3: "csrc_overrun",
              4: "extension_overrun", 5: "bad_padding", 6: "rtcp"}


class WorkerTimeout(RuntimeError):
    """The media worker did not apply a command in time."""


cdef socklen_t fill_sockaddr(str host, int port, sockaddr_storage *out) except 0:
    cdef bytes h = host.encode("ascii")
    cdef sockaddr_in_full *v4 = <sockaddr_in_full *>out
    cdef sockaddr_in6_full *v6 = <sockaddr_in6_full *>out
    memset(out, 0, sizeof(sockaddr_storage))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    if inet_pton(AF_INET, h, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(port)
        return sizeof(sockaddr_in_full)
    if inet_pton(AF_INET6, h, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(port)
        return sizeof(sockaddr_in6_full)
    raise ValueError(f"not a numeric IP address: {host!r}")


def bind_srtp(uintptr_t create, uintptr_t dealloc, uintptr_t protect, uintptr_t protect_rtcp,
              uintptr_t unprotect, uintptr_t unprotect_rtcp):
    """Hand libsrtp's entry points (from pylibsrtp's cffi module) to the C side."""
    cdef mf_srtp_api api
    api.create = <mf_srtp_create_fn>create
    api.dealloc = <mf_srtp_dealloc_fn>dealloc
    api.protect = <mf_srtp_protect_fn>protect
    api.protect_rtcp = <mf_srtp_protect_fn>protect_rtcp
    api.unprotect = <mf_srtp_protect_fn>unprotect
    api.unprotect_rtcp = <mf_srtp_protect_fn>unprotect_rtcp
    if mf_srtp_bind(&api) != 0:
        raise ValueError("incomplete libsrtp function table")


def live_allocations():
    """Data-plane allocations (rings, calls, forks, SRTP sessions) alive now."""
    return mf_live_allocations()


def open_sockets():
    """Media sockets owned by calls and forks in this process (all engines): closed
    when the call or fork is released, so this falls back as soon as they end."""
    return mf_open_sockets()


def now_ns():
    return mf_now_ns()


def parse_rtp(const uint8_t[::1] packet):
    """Validate an RTP packet with the C parser: (status, info dict or None)."""
    cdef mf_rtp_info info
    cdef int st = mf_rtp_parse(&packet[0] if packet.shape[0] else NULL, packet.shape[0], &info)
    if st != 0:
        return RTP_STATUS.get(st, str(st)), None
    return "ok", {"marker": info.marker, "payload_type": info.payload_type, "seq": info.seq,
                  "timestamp": info.timestamp, "ssrc": info.ssrc,
                  "payload_offset": info.payload_offset, "payload_len": info.payload_len}


def find_rtcp_report(const uint8_t[::1] packet, uint32_t ssrc):
    """Look for a report block about `ssrc`: 'found' + dict, 'not_found' or 'malformed'."""
    cdef mf_rtcp_report_block rb
    cdef int st = mf_rtcp_find_report(&packet[0] if packet.shape[0] else NULL, packet.shape[0],
                                      ssrc, &rb)
    if st == 0:
        return "found", {"fraction_lost": rb.fraction_lost, "cumulative_lost": rb.cumulative_lost,
                         "highest_seq": rb.highest_seq, "jitter": rb.jitter}
    return ("not_found" if st == 1 else "malformed"), None


def srtp_cm_available():
    """True when this build protects AES-CM suites with the lean sender transform
    (csrc/srtp_cm.h: OpenSSL found at build time and its AES usable here)."""
    return mf_srtp_cm_available() == 1


def srtp_cm_allow_aesni(bint allow):
    """Test hook: lean contexts created from now on use OpenSSL's EVP for AES even where
    the CPU has AES-NI (the path of CPUs without it), until allowed again."""
    mf_srtp_cm_allow_aesni(allow)


def srtp_cm_derive(bytes master_key, bytes master_salt, int label, int length):
    """RFC 3711 4.3 key derivation (key derivation rate 0): test hook."""
    if len(master_key) != 16 or len(master_salt) != 14 or not 0 < length <= 64:
        raise ValueError("a 16-byte key, a 14-byte salt and 1 to 64 bytes of output")
    out = bytearray(length)
    cdef uint8_t[::1] o = out
    if mf_srtp_cm_derive(master_key, master_salt, <uint8_t>label, &o[0], length) != 0:
        raise RuntimeError("the lean SRTP transform is not available")
    return bytes(out)


def srtp_cm_keystream(bytes key, bytes iv, int length, bint aesni=False):
    """AES-CM keystream of a 16-byte key from a 16-byte IV, through OpenSSL's EVP or
    (``aesni``) the AES-NI code: test hook."""
    if len(key) != 16 or len(iv) != 16 or not 0 < length <= 2048:
        raise ValueError("a 16-byte key and IV and 1 to 2048 bytes of output")
    out = bytearray(length)
    cdef uint8_t[::1] o = out
    if mf_srtp_cm_keystream(key, iv, &o[0], length, aesni) != 0:
        raise RuntimeError("the lean SRTP transform (or AES-NI) is not available")
    return bytes(out)


cdef class SrtpSession:
    """A fork's SRTP context created from a pylibsrtp Policy: libsrtp's session and, given
    ``master`` (key + salt of an AES-CM suite) and ``tag_len``, the lean RTP sender
    transform. Freed by ``close()`` (its fork's release) or, as a safety net, when
    collected."""
    cdef mf_srtp_ctx *ptr

    def __cinit__(self, uintptr_t policy_address, bytes master=None, int tag_len=0):
        cdef int err = 0
        cdef const uint8_t *m = NULL
        if master is not None:
            if len(master) != 30 or tag_len not in (4, 10):
                raise ValueError("the lean transform takes a 30-byte master key and salt "
                                 "and a tag of 4 or 10 bytes")
            m = master
        self.ptr = mf_srtp_session_new(<const void *>policy_address, m, tag_len, &err)
        if self.ptr == NULL:
            if err == -2:
                raise ValueError("the lean SRTP transform could not be set up")
            raise ValueError(f"srtp_create failed (libsrtp status {err})")

    def __dealloc__(self):
        self.close()

    def close(self):
        """Free the SRTP contexts (their keys with them). Only once no worker can use it.
        Idempotent."""
        if self.ptr != NULL:
            mf_srtp_session_free(self.ptr)
            self.ptr = NULL

    @property
    def transform(self):
        """Which code protects RTP: "srtp_cm" (the lean transform) or "libsrtp"."""
        if self.ptr == NULL:
            raise RuntimeError("SRTP session is closed")
        return "srtp_cm" if self.ptr.cm != NULL else "libsrtp"

    def protect(self, bytes packet):
        """Protect one RTP packet as a fork would (tests; never while a worker uses this
        session). Raises ValueError with the error code when it is refused."""
        if self.ptr == NULL:
            raise RuntimeError("SRTP session is closed")
        if len(packet) > MF_RX_BUF:
            raise ValueError("packet too long")
        buf = bytearray(len(packet) + MF_SRTP_MAX_TRAILER)
        buf[:len(packet)] = packet
        cdef uint8_t[::1] b = buf
        cdef int n = len(packet)
        cdef int rc = mf_srtp_protect_rtp(self.ptr, &b[0], &n)
        if rc != 0:
            raise ValueError(f"SRTP protect failed (status {rc})")
        return bytes(buf[:n])

    def bench_raw_protect(self, const uint8_t[::1] packet, uint64_t n):
        """Plain C loop over srtp_protect (benchmark baseline): elapsed ns."""
        cdef uint64_t ns
        if self.ptr == NULL:
            raise RuntimeError("SRTP session is closed")
        with nogil:
            ns = mf_bench_raw_protect(self.ptr, &packet[0], packet.shape[0], n)
        return ns


cdef void *session_ptr(object s):
    if s is None:
        return NULL
    return <void *>(<SrtpSession>s).ptr


cdef void close_session(object s):
    if s is not None:
        (<SrtpSession>s).close()


cdef void wait_idle(int *busy):
    """Wait (without the GIL) until no other thread uses a call's or fork's memory
    outside the GIL: a drain copying out of a ring, a push copying into the engine.
    Those take microseconds, and the caller has already barred new ones; the counters
    and flags are read and written only with the GIL held."""
    while busy[0] > 0:
        with nogil:
            usleep(50)


cdef class CCall:
    cdef mf_call *ptr
    cdef readonly uint64_t id
    cdef readonly bint linked
    cdef mf_track_counters final_counters[2]  # as they were when released
    # Threads using ptr without the GIL count themselves: pushes (remove_call bars new
    # ones with `ending` and waits for the rest), recording drains (release() bars new
    # ones with `releasing` and waits for the rest).
    cdef int pushing, draining
    cdef bint ending, releasing

    def __cinit__(self, uint64_t id, int dtmf_pt, uint32_t clock_rate, uint32_t record_slots,
                  uint32_t max_packet, int inbound_fd, int outbound_fd, bint latch=True,
                  uint64_t relatch_ns=0):
        self.id = id
        self.ptr = mf_call_new(id, <uint8_t>(dtmf_pt if 0 <= dtmf_pt < 128 else 255), clock_rate,
                               record_slots, max_packet)
        if self.ptr == NULL:
            raise MemoryError("cannot allocate call")
        # The sockets are owned by the call from here on; mf_call_free closes them.
        mf_call_set_ingress(self.ptr, inbound_fd, outbound_fd)
        mf_call_set_latch(self.ptr, latch, relatch_ns)

    def __dealloc__(self):
        # A safety net: release() normally freed it already. Only a call that was never
        # linked, or was unlinked by the worker, is freed here; a linked call is leaked
        # rather than freed under the worker.
        if self.ptr != NULL and not self.linked:
            mf_call_free(self.ptr)
        self.ptr = NULL

    def release(self):
        """Close the call's ingress sockets and free its ring now, once the worker has let
        go of it (after ``CEngine.remove_call``); its counters stay readable. Idempotent."""
        if self.ptr == NULL:
            return
        if self.linked:
            raise RuntimeError("the media worker still holds this call")
        self.releasing = True
        wait_idle(&self.draining)  # a recording drain on another thread finishes first
        mf_track_counters_read(self.ptr, 0, &self.final_counters[0])
        mf_track_counters_read(self.ptr, 1, &self.final_counters[1])
        mf_call_free(self.ptr)
        self.ptr = NULL

    @property
    def released(self):
        return self.ptr == NULL

    def track_counters(self, int track):
        cdef mf_track_counters c
        if self.ptr == NULL:
            return self.final_counters[track & 1]
        mf_track_counters_read(self.ptr, track & 1, &c)
        return c

    def drain_recording(self, uint32_t max_packets=1024, size_t max_bytes=1 << 20):
        """Raw packets captured for local recording, as numpy arrays + payload bytes."""
        payload = np.empty(max_bytes, dtype=np.uint8)
        offsets = np.empty(max_packets, dtype=np.uint32)
        lengths = np.empty(max_packets, dtype=np.uint32)
        tracks = np.empty(max_packets, dtype=np.uint8)
        seqs = np.empty(max_packets, dtype=np.uint16)
        tss = np.empty(max_packets, dtype=np.uint32)
        pts = np.empty(max_packets, dtype=np.uint8)
        markers = np.empty(max_packets, dtype=np.uint8)
        arrival = np.empty(max_packets, dtype=np.uint64)
        cdef uint8_t[::1] p = payload
        cdef uint32_t[::1] o = offsets, l = lengths, t32 = tss
        cdef uint8_t[::1] tr = tracks, pt = pts, mk = markers
        cdef uint16_t[::1] sq = seqs
        cdef uint64_t[::1] ar = arrival
        cdef uint32_t n = 0
        if self.ptr != NULL and not self.releasing and max_packets:  # else nothing to drain
            self.draining += 1
            try:
                with nogil:
                    n = mf_call_drain_recording(self.ptr, &p[0], max_bytes, &o[0], &l[0], &tr[0],
                                                &sq[0], &t32[0], &pt[0], &mk[0], &ar[0],
                                                max_packets)
            finally:
                self.draining -= 1
        end = int(offsets[n - 1] + lengths[n - 1]) if n else 0
        return {"track": tracks[:n], "seq": seqs[:n], "timestamp": tss[:n],
                "payload_type": pts[:n], "marker": markers[:n], "arrival_ns": arrival[:n],
                "offset": offsets[:n], "length": lengths[:n], "payload": payload[:end]}


cdef extern from *:
    """
    static int _fork_linked(const mf_fork *f) { return f->linked; }
    static int _call_linked(const mf_call *c) { return c->linked; }
    """
    int _fork_linked(const mf_fork *f)
    int _call_linked(const mf_call *c)


cdef class CFork:
    cdef mf_fork *ptr
    cdef readonly uint64_t id
    cdef readonly bint linked
    cdef object tx_session, rx_session  # kept alive while the worker may use them
    cdef mf_fork_counters final_counters  # as they were when released
    cdef int draining  # drains using ptr without the GIL; release() waits for them
    cdef bint releasing  # set by release(): no new drain may start

    def __cinit__(self, uint64_t id, int track, uint32_t ssrc, uint16_t seq_base, uint32_t ts_base,
                  int fd, int rtcp_fd, uint32_t ring_slots, uint32_t max_packet, bytes cname,
                  uint64_t rtcp_interval_ns):
        self.id = id
        self.ptr = mf_fork_new(id, track, ssrc, seq_base, ts_base, fd, rtcp_fd, ring_slots,
                               max_packet, cname, rtcp_interval_ns)
        if self.ptr == NULL:
            raise ValueError("cannot create fork (ring size must be a power of two)")

    def __dealloc__(self):
        # A safety net: release() normally freed it already.
        if self.ptr != NULL and not self.linked:
            mf_fork_free(self.ptr)
        self.ptr = NULL

    def release(self):
        """Close the fork's sockets, free its ring and its SRTP contexts now, once the
        worker has let go of it (after ``remove_fork``/``remove_call``); its counters
        stay readable. Idempotent."""
        if self.ptr == NULL:
            return
        if self.linked:
            raise RuntimeError("the media worker still holds this fork")
        self.releasing = True
        wait_idle(&self.draining)  # a drain on another thread finishes first
        mf_fork_counters_read(self.ptr, &self.final_counters)
        mf_fork_free(self.ptr)
        self.ptr = NULL
        close_session(self.tx_session)
        close_session(self.rx_session)
        self.tx_session = self.rx_session = None

    @property
    def released(self):
        return self.ptr == NULL

    def counters(self):
        cdef mf_fork_counters c
        if self.ptr == NULL:
            return self.final_counters
        mf_fork_counters_read(self.ptr, &c)
        return c

    def drain(self, uint32_t max_packets=256):
        """Take protected packets (and queued SRTCP in drain mode) from the ring."""
        cdef size_t cap = <size_t>max_packets * 2048
        buf = bytearray(cap)
        lens = np.empty(max_packets, dtype=np.uint32)
        kinds = np.empty(max_packets, dtype=np.uint8)
        cdef uint8_t[::1] b = buf
        cdef uint32_t[::1] l = lens
        cdef uint8_t[::1] k = kinds
        cdef uint32_t n
        if self.ptr == NULL or self.releasing:
            return []
        self.draining += 1
        try:
            with nogil:
                n = mf_fork_drain(self.ptr, &b[0], cap, &l[0], &k[0], max_packets)
        finally:
            self.draining -= 1
        out = []
        cdef size_t pos = 0
        cdef uint32_t i
        mv = memoryview(buf)
        for i in range(n):
            out.append(bytes(mv[pos:pos + l[i]]))
            pos += l[i]
        return out


cdef mf_call *live_call(CCall call) except NULL:
    # A released call's memory is gone: refuse rather than hand the worker a NULL.
    if call.ptr == NULL:
        raise ValueError("the call has been released")
    return call.ptr


cdef mf_fork *live_fork(CFork fork) except NULL:
    if fork.ptr == NULL:
        raise ValueError("the fork has been released")
    return fork.ptr


cdef class CEngine:
    cdef mf_engine *ptr
    cdef readonly bint started

    def __cinit__(self, uint32_t push_ring_slots, uint32_t event_ring_slots, uint32_t max_packet,
                  uint32_t tick_us=0, str io="auto"):
        cdef mf_engine_config cfg
        cdef char why[160]
        memset(&cfg, 0, sizeof(cfg))
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
        cfg.tick_us = tick_us
        cfg.io_mode = IO_MODES[io]
        cfg.push_ring_slots = push_ring_slots
        cfg.event_ring_slots = event_ring_slots
        cfg.max_packet = max_packet
        why[0] = 0
        self.ptr = mf_engine_new_ex(&cfg, why, sizeof(why))
        if self.ptr == NULL:
            raise OSError(f"cannot create the media engine: {why.decode('utf-8', 'replace')}")

    def __dealloc__(self):
        self.close()

    def close(self):
        """Stop the worker and free the engine (every call must be removed first)."""
        if self.ptr != NULL:
            with nogil:
                mf_engine_stop(self.ptr)
            mf_engine_free(self.ptr)
            self.ptr = NULL
        self.started = False

    cdef int _check(self) except -1:
        if self.ptr == NULL:
            raise RuntimeError("engine is closed")
        return 0

    @property
    def io_backend(self):
        """The I/O backend in use: "io_uring" or "epoll"."""
        self._check()
        return mf_engine_io_name(self.ptr).decode()

    @property
    def io_fallback_reason(self):
        """Why io="auto" did not choose io_uring ("" when it did, or was not asked)."""
        self._check()
        return self.ptr.io_why.decode("utf-8", "replace")

    @property
    def event_fd(self):
        self._check()
        return self.ptr.evt_efd

    def start(self):
        self._check()
        if mf_engine_start(self.ptr) != 0:
            raise OSError(errno, "cannot start the media worker thread")
        self.started = True

    def stop(self):
        self._check()
        with nogil:
            mf_engine_stop(self.ptr)
        self.started = False

    def iterate(self, int max_wait_ms=0):
        """Run one worker iteration in this thread (engine not started)."""
        self._check()
        if self.started:
            raise RuntimeError("the worker thread is running")
        with nogil:
            mf_engine_iterate(self.ptr, max_wait_ms)

    def worker_cpu_ns(self):
        self._check()
        return mf_engine_worker_cpu_ns(self.ptr)

    cdef _run(self, mf_cmd *cmd, bint wait=True):
        """Queue a command; with ``wait`` return only once the worker applied it.
        Commands are applied in order either way."""
        cdef uint64_t ticket
        cdef int rc = 0
        self._check()
        with nogil:
            ticket = mf_engine_submit(self.ptr, cmd)
            if wait:
                rc = mf_engine_wait(self.ptr, ticket, WAIT_MS)
        if rc != 0:
            raise WorkerTimeout("media worker did not apply a command within 5 s")

    def last_ticket(self):
        """The ticket of the newest queued command (0 before any)."""
        self._check()
        return mf_engine_last_ticket(self.ptr)

    def applied(self, uint64_t ticket):
        """Whether the worker has applied every command up to ``ticket``; never blocks."""
        self._check()
        return bool(mf_engine_applied(self.ptr, ticket))

    def add_call(self, CCall call, int no_media_ms):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_ADD_CALL
        cmd.call = live_call(call)
        cmd.arg = no_media_ms
        call.linked = True  # from submission on, the worker may hold it
        self._run(&cmd)

    def remove_call(self, CCall call, list forks):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_REMOVE_CALL
        cmd.call = live_call(call)
        # No push may start from here on, and those in flight finish queuing first: the
        # worker processes every push queued before a command before applying it, so no
        # queued packet can point to the call once it is released.
        call.ending = True
        wait_idle(&call.pushing)
        self._run(&cmd)
        call.linked = _call_linked(call.ptr)
        for f in forks:
            if (<CFork>f).ptr != NULL:
                (<CFork>f).linked = _fork_linked((<CFork>f).ptr)

    def add_fork(self, CCall call, CFork fork, tx_session, rx_session):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_ADD_FORK
        cmd.call = live_call(call)
        cmd.fork = live_fork(fork)
        cmd.ptr_a = session_ptr(tx_session)
        cmd.ptr_b = session_ptr(rx_session)
        fork.tx_session = tx_session
        fork.rx_session = rx_session
        fork.linked = True
        self._run(&cmd)
        fork.linked = _fork_linked(fork.ptr)
        if not fork.linked:
            raise ValueError("the call already has four forked streams or has ended")

    def remove_fork(self, CFork fork):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_REMOVE_FORK
        cmd.fork = live_fork(fork)
        self._run(&cmd)
        fork.linked = _fork_linked(fork.ptr)

    def set_fork_state(self, CFork fork, int state, bint wait=True):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_SET_FORK_STATE
        cmd.fork = live_fork(fork)
        cmd.arg = state
        self._run(&cmd, wait)

    def set_fork_destination(self, CFork fork, str host, int port, str rtcp_host, int rtcp_port,
                             bint wait=True):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_SET_FORK_DEST
        cmd.fork = live_fork(fork)
        cmd.len_a = fill_sockaddr(host, port, &cmd.addr_a)
        cmd.len_b = fill_sockaddr(rtcp_host, rtcp_port, &cmd.addr_b)
        self._run(&cmd, wait)

    def clear_fork_destination(self, CFork fork, bint wait=True):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_CLEAR_FORK_DEST
        cmd.fork = live_fork(fork)
        self._run(&cmd, wait)

    def set_fork_srtp(self, CFork fork, tx_session, rx_session):
        """Swap keys; the previous sessions are released after the worker's ack."""
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_SET_FORK_SRTP
        cmd.fork = live_fork(fork)
        cmd.ptr_a = session_ptr(tx_session)
        cmd.ptr_b = session_ptr(rx_session)
        self._run(&cmd)
        old_tx, old_rx = fork.tx_session, fork.rx_session
        fork.tx_session = tx_session
        fork.rx_session = rx_session
        # The worker switched: nothing uses the previous keys any more.
        if old_tx is not tx_session:
            close_session(old_tx)
        if old_rx is not rx_session:
            close_session(old_rx)

    def set_track_source(self, CCall call, int track, int mode, str host, int port):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_SET_TRACK_SOURCE
        cmd.call = live_call(call)
        cmd.arg = (mode << 1) | (track & 1)
        if mode:
            cmd.len_a = fill_sockaddr(host, port, &cmd.addr_a)
        self._run(&cmd)

    def set_recording(self, CCall call, int mask):
        cdef mf_cmd cmd
        memset(&cmd, 0, sizeof(cmd))
        cmd.type = MF_CMD_SET_RECORDING
        cmd.call = live_call(call)
        cmd.arg = mask
        self._run(&cmd)

    def push(self, CCall call, int track, const uint8_t[::1] data, const uint32_t[::1] offsets,
             const uint32_t[::1] lengths):
        cdef uint32_t n = offsets.shape[0]
        cdef uint32_t i, accepted
        if lengths.shape[0] != n:
            raise ValueError("offsets and lengths differ in length")
        for i in range(n):
            if <uint64_t>offsets[i] + lengths[i] > <uint64_t>data.shape[0]:
                raise ValueError(f"packet {i} runs past the end of the buffer")
        if n == 0:
            return 0
        self._check()
        cdef mf_call *c = live_call(call)
        if call.ending:
            raise ValueError("the call has ended")
        call.pushing += 1
        try:
            with nogil:
                accepted = mf_engine_push(self.ptr, c, track, &data[0], &offsets[0],
                                          &lengths[0], n, mf_now_ns())
        finally:
            call.pushing -= 1
        return accepted

    def read_events(self):
        cdef mf_event evs[MAX_EVENTS]
        self._check()
        cdef uint32_t n = mf_engine_read_events(self.ptr, evs, MAX_EVENTS)
        return [(evs[i].type, evs[i].call_id, evs[i].fork_id, evs[i].track, evs[i].value,
                 evs[i].time_ns) for i in range(n)]

    def counters(self):
        cdef mf_engine_counters c
        self._check()
        mf_engine_counters_read(self.ptr, &c)
        return c

    def bench_process(self, CCall call, int track, const uint8_t[::1] packet, uint64_t n):
        """Benchmark kernel: n packets through the per-packet path, inline. Elapsed ns."""
        self._check()
        if self.started:
            raise RuntimeError("bench_process needs an engine that is not started")
        cdef uint64_t ns
        cdef mf_call *c = live_call(call)
        with nogil:
            ns = mf_bench_process(self.ptr, c, track, &packet[0], packet.shape[0], n)
        return ns


cdef bytearray _sockaddr_array(list addresses):
    """Packed IPv4 sockaddr_in structs for the benchmark kernels."""
    cdef Py_ssize_t n = len(addresses), i
    buf = bytearray(max(1, n) * sizeof(sockaddr_in_full))
    cdef uint8_t[::1] b = buf
    cdef sockaddr_storage tmp
    for i in range(n):
        fill_sockaddr(addresses[i][0], addresses[i][1], &tmp)
        memcpy(&b[i * sizeof(sockaddr_in_full)], &tmp, sizeof(sockaddr_in_full))
    return buf


def raw_forward(list in_fds, list out_fds, list dests, uint64_t packets, double max_seconds):
    """Baseline forwarder (epoll + recv + sendto): stream i from in_fds[i], sent
    from out_fds[i] to dests[i]. Returns (forwarded, cpu_ns, wall_ns)."""
    if not (len(in_fds) == len(out_fds) == len(dests)) or not in_fds:
        raise ValueError("in_fds, out_fds and dests must be non-empty and of equal length")
    cdef int[::1] cin = np.asarray(in_fds, dtype=np.intc)
    cdef int[::1] cout = np.asarray(out_fds, dtype=np.intc)
    dest_buf = _sockaddr_array(dests)
    cdef uint8_t[::1] db = dest_buf
    cdef mf_raw_forward_result res
    cdef volatile int stop = 0
    cdef uint64_t max_ns = <uint64_t>(max_seconds * 1e9)
    with nogil:
        mf_bench_raw_forward(&cin[0], &cout[0], <const sockaddr_in *>&db[0], cin.shape[0],
                             packets, max_ns, &stop, &res)
    return res.forwarded, res.cpu_ns, res.wall_ns


def run_loadgen(int send_fd, list dests, uint32_t pps, uint32_t payload_len, int payload_type,
                double duration, double drain, list sink_fds):
    """Paced generator + sink (see bench.h). dests: [(ip, port)] (IPv4)."""
    cdef Py_ssize_t n = len(dests)
    dest_buf = _sockaddr_array(dests)
    cdef uint8_t[::1] db = dest_buf
    cdef int[::1] sinks = np.asarray(sink_fds, dtype=np.intc)
    cdef mf_loadgen g
    memset(&g, 0, sizeof(g))
    g.send_fd = send_fd
    g.dests = <const sockaddr_in *>&db[0]
    g.nstreams = n
    g.pps = pps
    g.payload_len = payload_len
    g.payload_type = payload_type
    g.duration_ns = <uint64_t>(duration * 1e9)
    g.drain_ns = <uint64_t>(drain * 1e9)
    g.sink_fds = &sinks[0]
    g.nsinks = sinks.shape[0]
    cdef volatile int stop = 0
    with nogil:
        mf_loadgen_run(&g, &stop)
    return {"sent": g.sent, "send_errors": g.send_errors, "sink_received": g.sink_received,
            "sink_bytes": g.sink_bytes, "late_ticks": g.late_ticks}


def floor_forward(str mode, list in_fds, list out_fds, list dests, uint32_t tick_us,
                  double max_seconds, list sessions=None):
    """The benchmark floor (see bench.h): ``mode`` "mmsg" or "io_uring"; stream i from
    in_fds[i] copied to the len(out_fds) // len(in_fds) fork sockets
    out_fds[i * forks + k], sending to dests[i * forks + k]; ``sessions`` (one SrtpSession
    per out fd) protects each copy. Returns a dict of counters, or raises OSError when the
    backend cannot run here."""
    if not in_fds or len(out_fds) != len(dests) or len(out_fds) % len(in_fds):
        raise ValueError("out_fds and dests: the same non-zero multiple of len(in_fds)")
    if mode not in ("mmsg", "io_uring"):
        raise ValueError("mode is 'mmsg' or 'io_uring'")
    cdef int cmode = 1 if mode == "io_uring" else 0
    cdef int[::1] cin = np.asarray(in_fds, dtype=np.intc)
    cdef int[::1] cout = np.asarray(out_fds, dtype=np.intc)
    dest_buf = _sockaddr_array(dests)
    cdef uint8_t[::1] db = dest_buf
    cdef uint32_t forks = len(out_fds) // len(in_fds)
    if sessions is not None and len(sessions) != len(out_fds):
        raise ValueError("one SRTP session per out fd")
    ptrs = np.zeros(max(1, len(out_fds)), dtype=np.uintp)
    cdef Py_ssize_t j
    if sessions is not None:
        for j in range(len(sessions)):
            ptrs[j] = <uintptr_t>(<SrtpSession?>sessions[j]).ptr
            if ptrs[j] == 0:
                raise ValueError("a closed SRTP session")
    cdef uintptr_t[::1] sp = ptrs
    cdef void *const *csessions = <void *const *>&sp[0] if sessions is not None else NULL
    cdef mf_floor_result res
    cdef volatile int stop = 0
    cdef uint64_t max_ns = <uint64_t>(max_seconds * 1e9)
    cdef int rc
    with nogil:
        rc = mf_bench_floor_forward(cmode, &cin[0], cin.shape[0], &cout[0], forks,
                                    <const sockaddr_in *>&db[0], csessions, tick_us, max_ns,
                                    &stop, &res)
    if rc < 0:
        import os
        raise OSError(-rc, f"floor_forward({mode}): {os.strerror(-rc)}")
    return {"received": res.received, "forwarded": res.forwarded, "cpu_ns": res.cpu_ns,
            "wall_ns": res.wall_ns, "syscalls": res.syscalls, "ticks": res.ticks}


def bench_protect_spread(list sessions, const uint8_t[::1] packet, uint64_t first, uint64_t n,
                         bint prefetch=False):
    """Benchmark kernel: srtp_protect over the sessions in turn, packets first..first+n-1
    (see bench.h). Thread CPU ns."""
    if not sessions:
        raise ValueError("no sessions")
    ptrs = np.zeros(len(sessions), dtype=np.uintp)
    cdef Py_ssize_t i
    for i in range(len(sessions)):
        ptrs[i] = <uintptr_t>(<SrtpSession?>sessions[i]).ptr
        if ptrs[i] == 0:
            raise ValueError("a closed SRTP session")
    cdef uintptr_t[::1] p = ptrs
    cdef uint64_t ns
    with nogil:
        ns = mf_bench_protect_spread(<void *const *>&p[0], p.shape[0], &packet[0],
                                     packet.shape[0], first, n, prefetch)
    return ns
