/* libFuzzer target: the whole per-packet path. The input is split into
 * datagrams (2-byte length prefixes) pushed on either track of one call with
 * four forks, a DTMF payload type and a recording tap, all in drain mode
 * with small rings so that full rings, wrap-around and SSRC changes happen.
 * Invariants: no memory error (ASan/UBSan), every forwarded packet is a
 * clean RTP packet of our SSRC, and allocations balance at the end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../engine.h"

static void drain_and_check(mf_call *c)
{
    static uint8_t out[64 * 2048];
    uint32_t lens[64];
    uint8_t kinds[64];
    for (int i = 0; i < c->nforks; i++) {
        mf_fork *f = c->forks[i];
        uint32_t n = mf_fork_drain(f, out, sizeof(out), lens, kinds, 64);
        size_t pos = 0;
        for (uint32_t k = 0; k < n; k++) {
            const uint8_t *p = out + pos;
            if (!kinds[k]) {
                uint32_t ssrc = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
                if (lens[k] < 12 || p[0] != 0x80 || ssrc != f->ssrc)
                    abort();
            }
            pos += lens[k];
        }
    }
    uint8_t payload[8192];
    uint32_t offs[32], plen[32], ts[32];
    uint8_t tracks[32], pts[32], marks[32];
    uint16_t seqs[32];
    uint64_t arr[32];
    mf_call_drain_recording(c, payload, sizeof(payload), offs, plen, tracks, seqs, ts, pts, marks,
                            arr, 32);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t before = mf_live_allocations();
    /* No sockets here: the epoll backend is the cheap one to create per input. */
    mf_engine_config cfg = {.push_ring_slots = 64, .event_ring_slots = 64, .max_packet = 512,
                            .io_mode = MF_IO_MODE_EPOLL};
    mf_engine *e = mf_engine_new(&cfg);
    if (!e)
        return 0;
    mf_call *c = mf_call_new(1, 101, 8000, 16, 512);
    mf_cmd cmd = {.type = MF_CMD_ADD_CALL, .call = c};
    mf_engine_submit(e, &cmd); /* not started: applied inline */
    cmd = (mf_cmd){.type = MF_CMD_SET_RECORDING, .call = c, .arg = 3};
    mf_engine_submit(e, &cmd);
    mf_fork *forks[4];
    for (int i = 0; i < 4; i++) {
        forks[i] = mf_fork_new(10 + i, (uint8_t)(i & 1), 0x1000u + i, (uint16_t)(65500 + i),
                               0xFFFFFF00u, -1, -1, 8, 512, "fuzz", 0);
        cmd = (mf_cmd){.type = MF_CMD_ADD_FORK, .call = c, .fork = forks[i]};
        mf_engine_submit(e, &cmd);
    }
    size_t pos = 0;
    uint64_t now = 1;
    while (pos + 3 <= size) {
        uint8_t flags = data[pos];
        size_t len = ((size_t)data[pos + 1] << 8 | data[pos + 2]) & 0x7ff;
        pos += 3;
        if (len > size - pos)
            len = size - pos;
        uint8_t *pkt = malloc(len ? len : 1);
        memcpy(pkt, data + pos, len);
        if (flags & 0x80) { /* pause/resume a fork between packets */
            cmd = (mf_cmd){.type = MF_CMD_SET_FORK_STATE, .fork = forks[flags & 3], .arg = (flags >> 2) & 1};
            mf_engine_submit(e, &cmd);
        }
        mf_call_process(e, c, flags & 1, pkt, len, now += 20000000);
        free(pkt);
        pos += len;
        if (flags & 0x40)
            drain_and_check(c);
    }
    drain_and_check(c);
    cmd = (mf_cmd){.type = MF_CMD_REMOVE_CALL, .call = c};
    mf_engine_submit(e, &cmd);
    for (int i = 0; i < 4; i++)
        mf_fork_free(forks[i]);
    mf_call_free(c);
    mf_engine_free(e);
    if (mf_live_allocations() != before)
        abort();
    return 0;
}
