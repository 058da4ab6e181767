/* SRTP sender transform for AES-CM with HMAC-SHA1 (see srtp_cm.h). */
#include "srtp_cm.h"

#include "mf_common.h"

#ifndef MF_HAVE_OPENSSL

int mf_srtp_cm_available(void) { return 0; }
mf_srtp_cm *mf_srtp_cm_new(const uint8_t *k, const uint8_t *s, int t) { return NULL; }
void mf_srtp_cm_free(mf_srtp_cm *s) {}
void mf_srtp_cm_prefetch(const mf_srtp_cm *s) {}
int mf_srtp_cm_protect(mf_srtp_cm *s, uint8_t *p, int *l) { return MF_SRTP_CM_FAIL; }
int mf_srtp_cm_derive(const uint8_t *k, const uint8_t *s, uint8_t l, uint8_t *o, int n)
{
    return -1;
}
int mf_srtp_cm_keystream(const uint8_t *k, const uint8_t *iv, uint8_t *o, int n, int a)
{
    return -1;
}
void mf_srtp_cm_allow_aesni(int allow) {}

#else

/* SHA1_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP_MD, but
 * they are the only interface that lets a context be copied as a plain struct
 * (the HMAC midstate below) without EVP's per-call dispatch and heap
 * indirection, which is what this file exists to avoid. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define MF_AESNI 1
#endif

#define AES_BLOCK 16
#define SEQ_MEDIAN 0x8000
#define SEQ_MAX 0x10000
#define MAX_INDEX ((1ull << 48) - 1)
/* Keystream for one packet at a time, on the stack: payloads are at most the
 * engine's receive buffer (2,048 bytes), below this. */
#define MAX_BLOCKS 136

/* One block of memory per fork, in the order a packet uses it, so that
 * mf_srtp_cm_prefetch() can bring all of it in ahead of the packet. */
struct mf_srtp_cm {
    uint64_t index;     /* highest index protected: ROC << 16 | SEQ */
    uint64_t window[2]; /* bit 127 (window[1] bit 63) is `index`; bit 127 + d is index + d */
    uint8_t salt[MF_SRTP_CM_SALT_LEN];
    uint8_t tag_len;
    uint8_t aesni;       /* round_keys are set: AES-NI, no EVP call per packet */
    EVP_CIPHER_CTX *aes; /* else AES-128-ECB under the session encryption key */
    SHA_CTX hmac_inner;  /* after SHA1_Update of (auth key ^ ipad) */
    SHA_CTX hmac_outer;  /* after SHA1_Update of (auth key ^ opad) */
    /* AES-128's expanded key, as the CPU's AES instructions take it. OpenSSL
     * keeps its own behind two pointers of an opaque EVP context, where no
     * prefetch reaches it: a fork's first packet of a tick then waits on
     * several cache misses for it. */
    uint8_t round_keys[11][16] __attribute__((aligned(16)));
};

static EVP_CIPHER *aes_ecb;
static pthread_once_t aes_once = PTHREAD_ONCE_INIT;

static void fetch_aes(void)
{
    /* Fetched once: an implicit fetch at every EVP_EncryptInit would look the
     * provider up again. Kept for the process's life. */
    aes_ecb = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
}

int mf_srtp_cm_available(void)
{
    pthread_once(&aes_once, fetch_aes);
    return aes_ecb != NULL;
}

static EVP_CIPHER_CTX *aes_new(const uint8_t *key)
{
    if (!mf_srtp_cm_available())
        return NULL;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c)
        return NULL;
    if (EVP_EncryptInit_ex2(c, aes_ecb, key, NULL, NULL) != 1 || EVP_CIPHER_CTX_set_padding(c, 0) != 1) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return c;
}

/* AES-CM (RFC 3711 §4.1.1) through EVP: block i of the keystream is
 * AES(IV + i), the counter in the IV's last 16 bits. */
static int aes_cm_blocks(EVP_CIPHER_CTX *aes, const uint8_t iv[AES_BLOCK], uint8_t *out, int nblocks)
{
    uint8_t ctr[MAX_BLOCKS * AES_BLOCK];
    if (nblocks <= 0 || nblocks > MAX_BLOCKS)
        return -1;
    unsigned base = ((unsigned)iv[14] << 8) | iv[15];
    for (int i = 0; i < nblocks; i++) {
        uint8_t *b = ctr + i * AES_BLOCK;
        memcpy(b, iv, 14);
        unsigned c = (base + (unsigned)i) & 0xffff;
        b[14] = (uint8_t)(c >> 8);
        b[15] = (uint8_t)c;
    }
    int outl = 0;
    if (EVP_EncryptUpdate(aes, out, &outl, ctr, nblocks * AES_BLOCK) != 1 ||
        outl != nblocks * AES_BLOCK)
        return -1;
    return 0;
}

#ifdef MF_AESNI
/* AES-128 with the AES-NI instructions: the key schedule of FIPS-197 §5.2 as
 * the instruction set computes it (AESKEYGENASSIST), and the cipher as ten
 * AESENC rounds. Checked against FIPS-197 Appendix C.1, RFC 3711 B.2 and the
 * EVP path (tests/media/test_srtp_cm.py), which CPUs without AES-NI take. */
static int aesni_allowed = 1; /* mf_srtp_cm_allow_aesni(): tests of the EVP path */

static int cpu_has_aesni(void)
{
    __builtin_cpu_init();
    return aesni_allowed && __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

__attribute__((target("aes,sse4.1"))) static inline __m128i expand_step(__m128i key,
                                                                        __m128i assist)
{
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

__attribute__((target("aes,sse4.1"))) static void aesni_expand(const uint8_t *key,
                                                               uint8_t rk[11][16])
{
    __m128i k[11];
    k[0] = _mm_loadu_si128((const __m128i *)key);
#define MF_EXPAND(i, rcon) k[i] = expand_step(k[i - 1], _mm_aeskeygenassist_si128(k[i - 1], rcon))
    MF_EXPAND(1, 0x01);
    MF_EXPAND(2, 0x02);
    MF_EXPAND(3, 0x04);
    MF_EXPAND(4, 0x08);
    MF_EXPAND(5, 0x10);
    MF_EXPAND(6, 0x20);
    MF_EXPAND(7, 0x40);
    MF_EXPAND(8, 0x80);
    MF_EXPAND(9, 0x1b);
    MF_EXPAND(10, 0x36);
#undef MF_EXPAND
    for (int i = 0; i < 11; i++)
        _mm_store_si128((__m128i *)rk[i], k[i]);
}

/* The same keystream as aes_cm_blocks(), four blocks at a time so the AES
 * unit's pipeline stays full. */
__attribute__((target("aes,sse4.1"))) static void aesni_cm_blocks(const uint8_t rk[11][16],
                                                                  const uint8_t iv[AES_BLOCK],
                                                                  uint8_t *out, int nblocks)
{
    __m128i k[11];
    for (int i = 0; i < 11; i++)
        k[i] = _mm_load_si128((const __m128i *)rk[i]);
    /* Moves a counter from the low bytes (little-endian) to bytes 14-15, big-endian. */
    const __m128i to_block_end = _mm_set_epi8(0, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                              -1, -1, -1);
    unsigned base = ((unsigned)iv[14] << 8) | iv[15];
    uint8_t first[AES_BLOCK];
    memcpy(first, iv, AES_BLOCK);
    first[14] = first[15] = 0;
    const __m128i prefix = _mm_loadu_si128((const __m128i *)first);
    int i = 0;
    while (i < nblocks) {
        int n = nblocks - i < 4 ? nblocks - i : 4;
        __m128i b[4];
        for (int j = 0; j < n; j++) {
            unsigned c = (base + (unsigned)(i + j)) & 0xffff;
            __m128i ctr = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)c), to_block_end);
            b[j] = _mm_xor_si128(_mm_or_si128(prefix, ctr), k[0]);
        }
        for (int r = 1; r < 10; r++)
            for (int j = 0; j < n; j++)
                b[j] = _mm_aesenc_si128(b[j], k[r]);
        for (int j = 0; j < n; j++)
            _mm_storeu_si128((__m128i *)(out + (size_t)(i + j) * AES_BLOCK),
                             _mm_aesenclast_si128(b[j], k[10]));
        i += n;
    }
}
#endif

void mf_srtp_cm_allow_aesni(int allow)
{
#ifdef MF_AESNI
    aesni_allowed = allow;
#endif
}

int mf_srtp_cm_keystream(const uint8_t *key, const uint8_t *iv, uint8_t *out, int out_len,
                         int aesni)
{
    int nblocks = (out_len + AES_BLOCK - 1) / AES_BLOCK;
    uint8_t ks[MAX_BLOCKS * AES_BLOCK];
    int rc = -1;
    if (out_len <= 0 || nblocks > MAX_BLOCKS)
        return -1;
    if (aesni) {
#ifdef MF_AESNI
        if (cpu_has_aesni()) {
            uint8_t rk[11][16] __attribute__((aligned(16)));
            aesni_expand(key, rk);
            aesni_cm_blocks(rk, iv, ks, nblocks);
            OPENSSL_cleanse(rk, sizeof(rk));
            rc = 0;
        }
#endif
    } else {
        EVP_CIPHER_CTX *aes = aes_new(key);
        if (aes) {
            rc = aes_cm_blocks(aes, iv, ks, nblocks);
            EVP_CIPHER_CTX_free(aes);
        }
    }
    if (rc == 0)
        memcpy(out, ks, (size_t)out_len);
    OPENSSL_cleanse(ks, sizeof(ks));
    return rc;
}
/* RFC 3711 §4.3.1 with a key derivation rate of 0 (r = 0): x = key_id XOR
 * master salt, key_id = label || 48 zero bits aligned to the salt's right end;
 * the key is the AES-CM keystream of the master key from IV = x * 2^16. */
int mf_srtp_cm_derive(const uint8_t *master_key, const uint8_t *master_salt, uint8_t label,
                      uint8_t *out, int out_len)
{
    uint8_t iv[AES_BLOCK] = {0};
    memcpy(iv, master_salt, MF_SRTP_CM_SALT_LEN);
    iv[7] ^= label;
    return mf_srtp_cm_keystream(master_key, iv, out, out_len, 0);
}

mf_srtp_cm *mf_srtp_cm_new(const uint8_t *master_key, const uint8_t *master_salt, int tag_len)
{
    if (tag_len != 10 && tag_len != 4)
        return NULL;
    uint8_t enc_key[MF_SRTP_CM_KEY_LEN], auth_key[MF_SRTP_CM_AUTH_KEY_LEN], pad[64];
    mf_srtp_cm *s = mf_aligned_alloc(64, sizeof(*s));
    if (!s)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->tag_len = (uint8_t)tag_len;
    int ok = mf_srtp_cm_derive(master_key, master_salt, 0, enc_key, sizeof(enc_key)) == 0 &&
             mf_srtp_cm_derive(master_key, master_salt, 1, auth_key, sizeof(auth_key)) == 0 &&
             mf_srtp_cm_derive(master_key, master_salt, 2, s->salt, sizeof(s->salt)) == 0;
#ifdef MF_AESNI
    if (ok && cpu_has_aesni()) {
        aesni_expand(enc_key, s->round_keys);
        s->aesni = 1;
    }
#endif
    if (ok && !s->aesni)
        ok = (s->aes = aes_new(enc_key)) != NULL;
    if (ok) {
        /* HMAC (RFC 2104) with a 20-byte key: one block of key ^ ipad
         * (resp. opad) starts each hash, so it is hashed once, here. */
        memset(pad, 0x36, sizeof(pad));
        for (int i = 0; i < MF_SRTP_CM_AUTH_KEY_LEN; i++)
            pad[i] ^= auth_key[i];
        ok = SHA1_Init(&s->hmac_inner) == 1 && SHA1_Update(&s->hmac_inner, pad, sizeof(pad)) == 1;
        memset(pad, 0x5c, sizeof(pad));
        for (int i = 0; i < MF_SRTP_CM_AUTH_KEY_LEN; i++)
            pad[i] ^= auth_key[i];
        ok = ok && SHA1_Init(&s->hmac_outer) == 1 && SHA1_Update(&s->hmac_outer, pad, sizeof(pad)) == 1;
    }
    OPENSSL_cleanse(enc_key, sizeof(enc_key));
    OPENSSL_cleanse(auth_key, sizeof(auth_key));
    OPENSSL_cleanse(pad, sizeof(pad));
    if (!ok) {
        mf_srtp_cm_free(s);
        return NULL;
    }
    return s;
}

void mf_srtp_cm_prefetch(const mf_srtp_cm *s)
{
    const char *p = (const char *)s;
    for (size_t off = 0; off < sizeof(*s); off += 64)
        __builtin_prefetch(p + off);
}

void mf_srtp_cm_free(mf_srtp_cm *s)
{
    if (!s)
        return;
    EVP_CIPHER_CTX_free(s->aes); /* wipes the key schedule */
    OPENSSL_cleanse(s, sizeof(*s));
    mf_free(s);
}

/* The sender's packet index for SEQ `seq` (RFC 3711 §3.3.1, Appendix A), as
 * libsrtp estimates it: relative to the highest index sent, ROC 0 until that
 * index passes 2^15. Returns the distance from that index. */
static int64_t estimate_index(uint64_t local, uint16_t seq, uint64_t *guess)
{
    if (local <= SEQ_MEDIAN) {
        *guess = seq;
        return (int64_t)seq - (int64_t)local;
    }
    uint32_t roc = (uint32_t)(local >> 16);
    uint16_t lseq = (uint16_t)local;
    int64_t diff = (int64_t)seq - (int64_t)lseq;
    if (lseq < SEQ_MEDIAN) {
        if (diff > SEQ_MEDIAN) {
            roc--;
            diff -= SEQ_MAX;
        }
    } else if ((int64_t)lseq - SEQ_MEDIAN > (int64_t)seq) {
        roc++;
        diff += SEQ_MAX;
    }
    *guess = ((uint64_t)roc << 16) | seq;
    return diff;
}

/* Bit 127 + delta of the window (delta <= 0). */
static inline int window_bit(const uint64_t w[2], int64_t delta)
{
    int pos = (int)(MF_SRTP_CM_REPLAY_WINDOW - 1 + delta);
    return (int)((w[pos >> 6] >> (pos & 63)) & 1);
}

static inline void window_set(uint64_t w[2], int64_t delta)
{
    int pos = (int)(MF_SRTP_CM_REPLAY_WINDOW - 1 + delta);
    w[pos >> 6] |= 1ull << (pos & 63);
}

/* Moves the window up by delta > 0 (older indexes towards bit 0). */
static inline void window_advance(uint64_t w[2], int64_t delta)
{
    if (delta >= MF_SRTP_CM_REPLAY_WINDOW) {
        w[0] = w[1] = 0;
    } else if (delta >= 64) {
        w[0] = w[1] >> (delta - 64);
        w[1] = 0;
    } else {
        w[0] = (w[0] >> delta) | (delta ? w[1] << (64 - delta) : 0);
        w[1] >>= delta;
    }
    w[1] |= 1ull << 63;
}

int mf_srtp_cm_protect(mf_srtp_cm *s, uint8_t *pkt, int *len)
{
    int n = *len;
    if (MF_UNLIKELY(n < 12))
        return MF_SRTP_CM_BAD_PARAM;
    /* The payload starts after the CSRCs and any header extension, which
     * stay clear (RFC 3711 §3.1) but authenticated. */
    int hdr = 12 + 4 * (pkt[0] & 0x0f);
    if (MF_UNLIKELY(n < hdr))
        return MF_SRTP_CM_BAD_PARAM;
    if (pkt[0] & 0x10) {
        if (MF_UNLIKELY(n < hdr + 4))
            return MF_SRTP_CM_BAD_PARAM;
        hdr += 4 + 4 * (((int)pkt[hdr + 2] << 8) | pkt[hdr + 3]);
        if (MF_UNLIKELY(n < hdr))
            return MF_SRTP_CM_BAD_PARAM;
    }
    uint16_t seq = (uint16_t)((pkt[2] << 8) | pkt[3]);
    uint64_t est;
    int64_t delta = estimate_index(s->index, seq, &est);
    if (delta <= 0) {
        /* Never two packets under one index: that would reuse keystream. */
        if (delta <= -MF_SRTP_CM_REPLAY_WINDOW)
            return MF_SRTP_CM_REPLAY_OLD;
        if (window_bit(s->window, delta))
            return MF_SRTP_CM_REPLAY_FAIL;
    }
    if (MF_UNLIKELY(est >= MAX_INDEX))
        return MF_SRTP_CM_KEY_EXPIRED;

    /* Encrypt: IV = (salt * 2^16) ^ (SSRC * 2^64) ^ (index * 2^16). */
    int plen = n - hdr;
    if (plen > 0) {
        uint8_t iv[AES_BLOCK];
        memcpy(iv, s->salt, MF_SRTP_CM_SALT_LEN);
        iv[14] = iv[15] = 0;
        for (int i = 0; i < 4; i++)
            iv[4 + i] ^= pkt[8 + i];
        for (int i = 0; i < 6; i++)
            iv[8 + i] ^= (uint8_t)(est >> (40 - 8 * i));
        int nblocks = (plen + AES_BLOCK - 1) / AES_BLOCK;
        uint8_t ks[MAX_BLOCKS * AES_BLOCK];
        if (MF_UNLIKELY(nblocks > MAX_BLOCKS))
            return MF_SRTP_CM_BAD_PARAM;
#ifdef MF_AESNI
        if (MF_LIKELY(s->aesni))
            aesni_cm_blocks(s->round_keys, iv, ks, nblocks);
        else
#endif
        if (MF_UNLIKELY(aes_cm_blocks(s->aes, iv, ks, nblocks) != 0))
            return MF_SRTP_CM_FAIL;
        uint8_t *p = pkt + hdr;
        int i = 0;
        for (; i + 8 <= plen; i += 8) {
            uint64_t a, b;
            memcpy(&a, p + i, 8);
            memcpy(&b, ks + i, 8);
            a ^= b;
            memcpy(p + i, &a, 8);
        }
        for (; i < plen; i++)
            p[i] ^= ks[i];
    }

    /* Authenticate: HMAC-SHA1 over the packet and the ROC (RFC 3711 §4.2),
     * the ROC written where the tag goes so one update covers both. */
    uint32_t roc = (uint32_t)(est >> 16);
    uint8_t *trailer = pkt + n;
    trailer[0] = (uint8_t)(roc >> 24);
    trailer[1] = (uint8_t)(roc >> 16);
    trailer[2] = (uint8_t)(roc >> 8);
    trailer[3] = (uint8_t)roc;
    uint8_t digest[SHA_DIGEST_LENGTH];
    SHA_CTX h = s->hmac_inner;
    SHA1_Update(&h, pkt, (size_t)n + 4);
    SHA1_Final(digest, &h);
    h = s->hmac_outer;
    SHA1_Update(&h, digest, sizeof(digest));
    SHA1_Final(digest, &h);
    memcpy(trailer, digest, s->tag_len);

    if (delta > 0) {
        s->index = est;
        window_advance(s->window, delta);
    } else {
        window_set(s->window, delta);
    }
    *len = n + s->tag_len;
    return MF_SRTP_CM_OK;
}

#endif
