/* libsrtp function table and a fork's SRTP context (see srtp_shim.h). */
#include <stddef.h>

#include "mf_common.h"
#include "srtp_cm.h"
#include "srtp_shim.h"

mf_srtp_api mf_srtp;

int mf_srtp_bind(const mf_srtp_api *api)
{
    if (!api->create || !api->dealloc || !api->protect || !api->protect_rtcp || !api->unprotect ||
        !api->unprotect_rtcp)
        return -1;
    mf_srtp = *api;
    return 0;
}

int mf_srtp_ready(void)
{
    return mf_srtp.protect != NULL;
}

mf_srtp_ctx *mf_srtp_session_new(const void *policy, const uint8_t *master, int tag_len, int *err)
{
    if (!mf_srtp_ready()) {
        *err = -1;
        return NULL;
    }
    mf_srtp_ctx *ctx = mf_calloc(1, sizeof(*ctx));
    if (!ctx) {
        *err = -1;
        return NULL;
    }
    *err = mf_srtp.create(&ctx->session, policy);
    if (*err != 0) {
        mf_free(ctx);
        return NULL;
    }
    mf_note_external_alloc(1);
    if (master) {
        ctx->cm = mf_srtp_cm_new(master, master + MF_SRTP_CM_KEY_LEN, tag_len);
        if (!ctx->cm) {
            mf_srtp_session_free(ctx);
            *err = -2;
            return NULL;
        }
    }
    return ctx;
}

void mf_srtp_session_free(mf_srtp_ctx *ctx)
{
    if (!ctx)
        return;
    mf_srtp_cm_free(ctx->cm);
    if (ctx->session) {
        mf_srtp.dealloc(ctx->session);
        mf_note_external_alloc(-1);
    }
    mf_free(ctx);
}

int mf_srtp_protect_rtp(mf_srtp_ctx *ctx, uint8_t *packet, int *len)
{
    if (ctx->cm)
        return mf_srtp_cm_protect(ctx->cm, packet, len);
    return mf_srtp.protect(ctx->session, packet, len);
}

int mf_srtp_protect_rtcp(mf_srtp_ctx *ctx, uint8_t *packet, int *len)
{
    return mf_srtp.protect_rtcp(ctx->session, packet, len);
}

int mf_srtp_unprotect_rtcp(mf_srtp_ctx *ctx, uint8_t *packet, int *len)
{
    return mf_srtp.unprotect_rtcp(ctx->session, packet, len);
}
