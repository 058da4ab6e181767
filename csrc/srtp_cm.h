/* The SRTP sender transform for the AES-CM suites (RFC 3711 AES_CM_128 with
 * HMAC-SHA1 80 or 32, RFC 4568 names): AES counter mode over the payload and a
 * truncated HMAC-SHA1 tag, with the packet index kept by the sender
 * (RFC 3711 §3.3.1).
 *
 * Why not libsrtp's srtp_protect for these: with thousands of forks, one per
 * context, srtp_protect costs about four times its hot-loop figure. Its state
 * is spread over a dozen heap objects (the session's stream list, the cipher
 * and MAC contexts of OpenSSL 3's EVP layer and their provider contexts), and
 * every packet re-initialises the cipher IV and the HMAC through EVP
 * dispatch (docs/dataplane.md, "SRTP"). Here a fork's state is one block:
 * the HMAC's inner and outer SHA-1 states after the key's ipad/opad block,
 * the session salt and the replay window, plus one AES-128-ECB context used
 * to produce a packet's keystream in one call.
 *
 * SHA-1 is OpenSSL's (SHA1_Update: the SHA extensions where present). AES is
 * the CPU's AES-NI instructions on a key schedule kept in the fork's block
 * (the one piece written here beyond RFC 3711's framing: OpenSSL keeps its
 * schedule behind an opaque context no prefetch can reach), or OpenSSL's EVP
 * on CPUs without AES-NI. Its output is
 * byte for byte libsrtp's (tests/media/test_srtp_cm.py checks that, and the
 * RFC's test vectors). SRTCP, GCM suites and decryption stay with libsrtp.
 *
 * Built only when OpenSSL's headers are found (setup.py defines
 * MF_HAVE_OPENSSL and links libcrypto); otherwise mf_srtp_cm_available()
 * returns 0 and every suite goes through libsrtp. */
#ifndef MF_SRTP_CM_H
#define MF_SRTP_CM_H

#include <stdint.h>

#define MF_SRTP_CM_KEY_LEN 16
#define MF_SRTP_CM_SALT_LEN 14
#define MF_SRTP_CM_AUTH_KEY_LEN 20
#define MF_SRTP_CM_REPLAY_WINDOW 128 /* libsrtp's default sender/receiver window */

/* Errors, as libsrtp's srtp_err_status_t values where one exists, so that the
 * engine's srtp_errors counter means the same with either transform. */
enum {
    MF_SRTP_CM_OK = 0,
    MF_SRTP_CM_FAIL = 1,        /* srtp_err_status_fail: cipher or hash failed */
    MF_SRTP_CM_BAD_PARAM = 2,   /* srtp_err_status_bad_param: not RTP, too short */
    MF_SRTP_CM_REPLAY_FAIL = 9, /* srtp_err_status_replay_fail: index already used */
    MF_SRTP_CM_REPLAY_OLD = 10, /* srtp_err_status_replay_old: older than the window */
    MF_SRTP_CM_KEY_EXPIRED = 15 /* srtp_err_status_key_expired: 2^48 packets */
};

typedef struct mf_srtp_cm mf_srtp_cm;

/* 1 when this build has the transform (OpenSSL found at build time and its
 * AES-128-ECB cipher fetched at run time). */
int mf_srtp_cm_available(void);

/* A sender context from the master key (16 bytes) and master salt (14 bytes),
 * with a tag of `tag_len` bytes (10: _80, 4: _32). The session keys are
 * derived here (RFC 3711 §4.3, key derivation rate 0). NULL on failure.
 * Accounted in mf_live_allocations(). */
mf_srtp_cm *mf_srtp_cm_new(const uint8_t *master_key, const uint8_t *master_salt, int tag_len);

/* Wipes the keys and frees. NULL is ignored. */
void mf_srtp_cm_free(mf_srtp_cm *s);

/* Protects the RTP packet in place (`*len` grows by the tag); the buffer must
 * have room for it. Returns MF_SRTP_CM_OK or an error above, leaving the packet
 * unsent-worthy (its payload may be half encrypted on MF_SRTP_CM_FAIL). */
int mf_srtp_cm_protect(mf_srtp_cm *s, uint8_t *packet, int *len);

/* Starts loading the context into the cache: called for the next fork while
 * the current one's packets are protected. */
void mf_srtp_cm_prefetch(const mf_srtp_cm *s);

/* Test hooks: the RFC 3711 §4.3 key derivation (label 0, 1, 2 keys) and the
 * AES-CM keystream of a session key and IV, for the RFC's Appendix B vectors,
 * through OpenSSL's EVP (aesni 0) or the AES-NI code (aesni 1: -1 when the
 * CPU lacks AES-NI). Return 0 on success. */
int mf_srtp_cm_derive(const uint8_t *master_key, const uint8_t *master_salt, uint8_t label,
                      uint8_t *out, int out_len);
int mf_srtp_cm_keystream(const uint8_t *key, const uint8_t *iv, uint8_t *out, int out_len,
                         int aesni);

/* Test hook: contexts created after allow_aesni(0) use OpenSSL's EVP for AES
 * even where the CPU has AES-NI (the path CPUs without it take). Not for use
 * while other threads create contexts. */
void mf_srtp_cm_allow_aesni(int allow);

#endif
