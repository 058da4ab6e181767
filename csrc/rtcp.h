/* RTCP (RFC 3550 §6): sender reports we emit per forked stream and receiver
 * reports the recorder sends back. */
#ifndef MF_RTCP_H
#define MF_RTCP_H

#include <stddef.h>
#include <stdint.h>

#define MF_RTCP_MAX_CNAME 64

typedef struct {
    uint32_t ssrc;
    uint64_t ntp;          /* 32.32 fixed point NTP time */
    uint32_t rtp_ts;       /* RTP timestamp corresponding to `ntp` */
    uint32_t packet_count;
    uint32_t octet_count;
} mf_rtcp_sr;

/* Builds a compound SR + SDES(CNAME) packet into `dst` (capacity `cap`).
 * Returns its length, or 0 if it does not fit. */
size_t mf_rtcp_build_sr(uint8_t *dst, size_t cap, const mf_rtcp_sr *sr, const char *cname,
                        size_t cname_len);

typedef struct {
    uint8_t fraction_lost;   /* fixed point /256 */
    int32_t cumulative_lost; /* 24-bit signed */
    uint32_t highest_seq;    /* extended highest sequence number received */
    uint32_t jitter;         /* interarrival jitter, RTP timestamp units */
    uint32_t lsr;
    uint32_t dlsr;
} mf_rtcp_report_block;

typedef enum {
    MF_RTCP_FOUND = 0,       /* a report block about `ssrc` was found */
    MF_RTCP_NOT_FOUND = 1,   /* valid compound packet, nothing about `ssrc` */
    MF_RTCP_MALFORMED = 2,   /* lengths or version inconsistent */
} mf_rtcp_status;

/* Walks a compound RTCP packet (never past `len`) looking for an SR/RR report
 * block whose source is `ssrc`. */
mf_rtcp_status mf_rtcp_find_report(const uint8_t *pkt, size_t len, uint32_t ssrc,
                                   mf_rtcp_report_block *out);

/* Is this datagram RTCP (as opposed to RTP) by RFC 5761 §4's rule? */
static inline int mf_is_rtcp(const uint8_t *pkt, size_t len)
{
    return len >= 8 && (pkt[0] >> 6) == 2 && pkt[1] >= 192 && pkt[1] <= 223;
}

#endif
