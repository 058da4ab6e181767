/* RTP header parsing (RFC 3550 §5.1) and sequence arithmetic. */
#ifndef MF_RTP_H
#define MF_RTP_H

#include <stddef.h>
#include <stdint.h>

#define MF_RTP_MIN_HEADER 12

typedef enum {
    MF_RTP_OK = 0,
    MF_RTP_TOO_SHORT = 1,     /* shorter than the fixed 12-byte header */
    MF_RTP_BAD_VERSION = 2,   /* version field is not 2 */
    MF_RTP_CSRC_OVERRUN = 3,  /* CSRC list runs past the end */
    MF_RTP_EXT_OVERRUN = 4,   /* header extension runs past the end */
    MF_RTP_BAD_PADDING = 5,   /* padding count is zero or larger than the payload */
    MF_RTP_IS_RTCP = 6,       /* payload type 72..76: an RTCP packet on the RTP port */
} mf_rtp_status;

typedef struct {
    uint8_t marker;
    uint8_t payload_type;
    uint16_t seq;
    uint32_t timestamp;
    uint32_t ssrc;
    uint16_t payload_offset; /* first payload byte, after CSRCs and extension */
    uint16_t payload_len;    /* payload bytes, padding excluded */
} mf_rtp_info;

/* Parses and validates the header of `len` bytes at `pkt`. Never reads past
 * pkt[len-1]. On success fills `out` and returns MF_RTP_OK. */
mf_rtp_status mf_rtp_parse(const uint8_t *pkt, size_t len, mf_rtp_info *out);

/* Writes a clean 12-byte header (no CSRC, no extension, no padding). */
static inline void mf_rtp_write_header(uint8_t *dst, uint8_t marker, uint8_t pt, uint16_t seq,
                                       uint32_t ts, uint32_t ssrc)
{
    dst[0] = 0x80;
    dst[1] = (uint8_t)((marker ? 0x80 : 0) | (pt & 0x7f));
    dst[2] = (uint8_t)(seq >> 8);
    dst[3] = (uint8_t)seq;
    dst[4] = (uint8_t)(ts >> 24);
    dst[5] = (uint8_t)(ts >> 16);
    dst[6] = (uint8_t)(ts >> 8);
    dst[7] = (uint8_t)ts;
    dst[8] = (uint8_t)(ssrc >> 24);
    dst[9] = (uint8_t)(ssrc >> 16);
    dst[10] = (uint8_t)(ssrc >> 8);
    dst[11] = (uint8_t)ssrc;
}

/* Extended (32-bit) sequence tracking with wrap-around, RFC 3550 A.1 style but
 * simplified: reordered packets get the extended number they belong to. */
typedef struct {
    int started;
    uint32_t highest_ext; /* highest extended sequence number seen */
} mf_seq_tracker;

/* Returns the extended sequence number of `seq`, updating the tracker. */
static inline uint32_t mf_seq_extend(mf_seq_tracker *t, uint16_t seq)
{
    if (!t->started) {
        t->started = 1;
        t->highest_ext = (1u << 16) + seq; /* one cycle of headroom for early reordering */
        return t->highest_ext;
    }
    uint16_t high16 = (uint16_t)t->highest_ext;
    int16_t delta = (int16_t)(uint16_t)(seq - high16); /* wrap-safe signed distance */
    uint32_t ext = t->highest_ext + (int32_t)delta;
    if (delta > 0)
        t->highest_ext = ext;
    return ext;
}

#endif
