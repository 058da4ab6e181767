/* libFuzzer target: the lean SRTP sender transform (srtp_cm.c) on arbitrary
 * packets from one context, so sequence numbers arrive in any order.
 * Invariants: never read or write outside the packet and the tag's room
 * (ASan), and a packet it accepts grows by exactly the tag with its header
 * (everything before the payload) unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../srtp_cm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mf_srtp_cm *ctx[2];
    if (!ctx[0]) {
        const uint8_t key[30] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
        ctx[0] = mf_srtp_cm_new(key, key + 16, 10);
        ctx[1] = mf_srtp_cm_new(key, key + 16, 4);
        if (!ctx[0] || !ctx[1])
            abort();
    }
    if (size < 1 || size > 2049)
        return 0;
    int which = data[0] & 1;
    int tag = which ? 4 : 10;
    size_t n = size - 1;
    /* Exactly the packet plus the tag's room: the transform writes the ROC
     * (4 bytes) and then the tag there. */
    uint8_t *pkt = malloc(n + 10);
    uint8_t *copy = malloc(n ? n : 1);
    if (!pkt || !copy)
        abort();
    memcpy(pkt, data + 1, n);
    memcpy(copy, data + 1, n);
    int len = (int)n;
    if (mf_srtp_cm_protect(ctx[which], pkt, &len) == MF_SRTP_CM_OK) {
        if (len != (int)n + tag || n < 12)
            abort();
        size_t hdr = 12 + 4 * (copy[0] & 0x0f);
        if (copy[0] & 0x10)
            hdr += 4 + 4 * (((size_t)copy[hdr + 2] << 8) | copy[hdr + 3]);
        if (hdr > n || memcmp(pkt, copy, hdr) != 0)
            abort();
    }
    free(copy);
    free(pkt);
    return 0;
}
