/* libFuzzer target: the RTP and RTCP parsers on arbitrary bytes.
 * Invariants: never read outside the input (ASan), and a packet accepted as
 * RTP describes a payload that lies inside it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../rtcp.h"
#include "../rtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy into an exact-size heap buffer so ASan sees any over-read. */
    uint8_t *pkt = malloc(size ? size : 1);
    if (!pkt)
        return 0;
    memcpy(pkt, data, size);

    mf_rtp_info info;
    if (mf_rtp_parse(pkt, size, &info) == MF_RTP_OK) {
        if (info.payload_offset < MF_RTP_MIN_HEADER ||
            (size_t)info.payload_offset + info.payload_len > size)
            abort();
    }
    uint32_t ssrc = size >= 4 ? ((uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 |
                                 (uint32_t)data[2] << 8 | data[3])
                              : 0;
    mf_rtcp_report_block rb;
    mf_rtcp_find_report(pkt, size, ssrc, &rb);
    mf_is_rtcp(pkt, size);
    free(pkt);
    return 0;
}
