/* libsrtp reached through function pointers.
 *
 * mediafork does not link libsrtp: it uses the copy shipped inside pylibsrtp,
 * whose entry points Python hands over once (as addresses taken with cffi) so
 * that one libsrtp, with its OpenSSL backend, serves both the control plane
 * and this hot path, with no Python call per packet. The signatures below are
 * libsrtp 2.x's, which is what pylibsrtp bundles. */
#ifndef MF_SRTP_SHIM_H
#define MF_SRTP_SHIM_H

#include <stdint.h>

typedef int (*mf_srtp_create_fn)(void **session, const void *policy);
typedef int (*mf_srtp_dealloc_fn)(void *session);
typedef int (*mf_srtp_protect_fn)(void *session, void *packet, int *len);

typedef struct {
    mf_srtp_create_fn create;
    mf_srtp_dealloc_fn dealloc;
    mf_srtp_protect_fn protect;
    mf_srtp_protect_fn protect_rtcp;
    mf_srtp_protect_fn unprotect;
    mf_srtp_protect_fn unprotect_rtcp;
} mf_srtp_api;

extern mf_srtp_api mf_srtp;

/* Largest trailer srtp_protect/_rtcp may append (tag + MKI + SRTCP index). */
#define MF_SRTP_MAX_TRAILER (4 + 16 + 128)

/* Returns 0 once all pointers are set. */
int mf_srtp_bind(const mf_srtp_api *api);
int mf_srtp_ready(void);

/* A fork's SRTP context: libsrtp's session (SRTCP both ways, and SRTP for the
 * suites without a lean transform) and, for the AES-CM suites, the sender
 * transform of srtp_cm.h, which then protects every RTP packet. */
typedef struct mf_srtp_cm mf_srtp_cm;
typedef struct {
    void *session;  /* libsrtp srtp_t */
    mf_srtp_cm *cm; /* NULL: RTP goes through libsrtp too */
} mf_srtp_ctx;

/* Create/destroy a context from a libsrtp srtp_policy_t (built by pylibsrtp).
 * With `master` (key then salt, 16 + 14 bytes) and `tag_len` (10 or 4) the
 * RTP sender transform is srtp_cm's; `master` NULL keeps libsrtp for RTP.
 * Accounted in mf_live_allocations(). Returns NULL on failure, with *err the
 * libsrtp status (or -1: no libsrtp bound, -2: the lean transform failed). */
mf_srtp_ctx *mf_srtp_session_new(const void *policy, const uint8_t *master, int tag_len, int *err);
void mf_srtp_session_free(mf_srtp_ctx *ctx);

/* Protect/unprotect in place; 0 or the libsrtp (or srtp_cm) error. */
int mf_srtp_protect_rtp(mf_srtp_ctx *ctx, uint8_t *packet, int *len);
int mf_srtp_protect_rtcp(mf_srtp_ctx *ctx, uint8_t *packet, int *len);
int mf_srtp_unprotect_rtcp(mf_srtp_ctx *ctx, uint8_t *packet, int *len);

#endif
