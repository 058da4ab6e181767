/* RTP header parsing: every length is checked against the packet. */
#include "rtp.h"

mf_rtp_status mf_rtp_parse(const uint8_t *pkt, size_t len, mf_rtp_info *out)
{
    if (len < MF_RTP_MIN_HEADER)
        return MF_RTP_TOO_SHORT;
    if ((pkt[0] >> 6) != 2)
        return MF_RTP_BAD_VERSION;
    /* RTCP packet types 200..204 appear as marker+PT 72..76 when read as RTP
     * (RFC 5761 §4); they must never be forwarded as media. */
    uint8_t second = pkt[1];
    if (second >= 200 && second <= 204)
        return MF_RTP_IS_RTCP;

    size_t offset = MF_RTP_MIN_HEADER + 4u * (pkt[0] & 0x0f);
    if (offset > len)
        return MF_RTP_CSRC_OVERRUN;
    if (pkt[0] & 0x10) {
        if (offset + 4 > len)
            return MF_RTP_EXT_OVERRUN;
        size_t ext_words = ((size_t)pkt[offset + 2] << 8) | pkt[offset + 3];
        offset += 4 + 4 * ext_words;
        if (offset > len)
            return MF_RTP_EXT_OVERRUN;
    }
    size_t end = len;
    if (pkt[0] & 0x20) {
        uint8_t pad = pkt[len - 1];
        if (pad == 0 || pad > len - offset)
            return MF_RTP_BAD_PADDING;
        end -= pad;
    }
    if (len > 0xffff)
        return MF_RTP_TOO_SHORT; /* cannot come from UDP; keeps lengths in 16 bits */

    out->marker = second >> 7;
    out->payload_type = second & 0x7f;
    out->seq = (uint16_t)((pkt[2] << 8) | pkt[3]);
    out->timestamp = ((uint32_t)pkt[4] << 24) | ((uint32_t)pkt[5] << 16) | ((uint32_t)pkt[6] << 8) | pkt[7];
    out->ssrc = ((uint32_t)pkt[8] << 24) | ((uint32_t)pkt[9] << 16) | ((uint32_t)pkt[10] << 8) | pkt[11];
    out->payload_offset = (uint16_t)offset;
    out->payload_len = (uint16_t)(end - offset);
    return MF_RTP_OK;
}
