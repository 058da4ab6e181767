/* libsrtp reached through function pointers.
 *
 * mediafork does not link libsrtp: it uses the copy shipped inside pylibsrtp,
 * whose entry points Python hands over once (as addresses taken with cffi) so
 * that one libsrtp, with its OpenSSL backend, serves both the control plane
 * and this hot path, with no Python call per packet. The signatures below are
 * libsrtp 2.x's, which is what pylibsrtp bundles. */
#ifndef MF_SRTP_SHIM_H
#define MF_SRTP_SHIM_H

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

/* Create/destroy a session from a libsrtp srtp_policy_t (built by pylibsrtp).
 * Accounted in mf_live_allocations(). Returns NULL on failure. */
void *mf_srtp_session_new(const void *policy, int *err);
void mf_srtp_session_free(void *session);

#endif
