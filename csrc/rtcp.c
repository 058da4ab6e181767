/* RTCP build and parse. */
#include <string.h>

#include "rtcp.h"

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

size_t mf_rtcp_build_sr(uint8_t *dst, size_t cap, const mf_rtcp_sr *sr, const char *cname,
                        size_t cname_len)
{
    if (cname_len > MF_RTCP_MAX_CNAME)
        cname_len = MF_RTCP_MAX_CNAME;
    /* SDES chunk: SSRC, CNAME item (type, len, text), END item, pad to 32 bits. */
    size_t chunk = 4 + 2 + cname_len + 1;
    chunk = (chunk + 3) & ~(size_t)3;
    size_t total = 28 + 4 + chunk;
    if (total > cap)
        return 0;

    /* Sender report, no report blocks: we never receive media on this stream. */
    dst[0] = 0x80;
    dst[1] = 200;
    dst[2] = 0;
    dst[3] = 6; /* length in 32-bit words minus one */
    put32(dst + 4, sr->ssrc);
    put32(dst + 8, (uint32_t)(sr->ntp >> 32));
    put32(dst + 12, (uint32_t)sr->ntp);
    put32(dst + 16, sr->rtp_ts);
    put32(dst + 20, sr->packet_count);
    put32(dst + 24, sr->octet_count);

    uint8_t *s = dst + 28;
    memset(s, 0, 4 + chunk);
    s[0] = 0x81; /* one chunk */
    s[1] = 202;
    uint16_t words = (uint16_t)((4 + chunk) / 4 - 1);
    s[2] = (uint8_t)(words >> 8);
    s[3] = (uint8_t)words;
    put32(s + 4, sr->ssrc);
    s[8] = 1; /* CNAME */
    s[9] = (uint8_t)cname_len;
    memcpy(s + 10, cname, cname_len);
    /* The END item and padding are the zeros from memset. */
    return total;
}

mf_rtcp_status mf_rtcp_find_report(const uint8_t *pkt, size_t len, uint32_t ssrc,
                                   mf_rtcp_report_block *out)
{
    size_t off = 0;
    mf_rtcp_status status = MF_RTCP_NOT_FOUND;
    if (len < 4)
        return MF_RTCP_MALFORMED;
    while (off + 4 <= len) {
        const uint8_t *p = pkt + off;
        if ((p[0] >> 6) != 2)
            return MF_RTCP_MALFORMED;
        size_t plen = 4 * ((size_t)((p[2] << 8) | p[3]) + 1);
        if (off + plen > len)
            return MF_RTCP_MALFORMED;
        unsigned count = p[0] & 0x1f;
        size_t blocks_at = 0;
        if (p[1] == 200)
            blocks_at = 28; /* SR: header, sender SSRC, sender info */
        else if (p[1] == 201)
            blocks_at = 8; /* RR: header, sender SSRC */
        if (blocks_at) {
            if (blocks_at + 24u * count > plen)
                return MF_RTCP_MALFORMED;
            for (unsigned i = 0; i < count; i++) {
                const uint8_t *b = p + blocks_at + 24u * i;
                if (get32(b) != ssrc)
                    continue;
                out->fraction_lost = b[4];
                int32_t lost = (int32_t)(((uint32_t)b[5] << 16) | ((uint32_t)b[6] << 8) | b[7]);
                if (lost & 0x800000)
                    lost -= 0x1000000; /* sign-extend 24 bits */
                out->cumulative_lost = lost;
                out->highest_seq = get32(b + 8);
                out->jitter = get32(b + 12);
                out->lsr = get32(b + 16);
                out->dlsr = get32(b + 20);
                status = MF_RTCP_FOUND;
            }
        }
        off += plen;
    }
    return off == len ? status : MF_RTCP_MALFORMED;
}
