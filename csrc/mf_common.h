/* Shared definitions for the mediafork data plane. No Python API in csrc/. */
#ifndef MF_COMMON_H
#define MF_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define MF_LIKELY(x) __builtin_expect(!!(x), 1)
#define MF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MF_NOINLINE __attribute__((noinline))

/* Counters are written by the worker thread only and read by Python at any
 * time. Relaxed atomic load+store compiles to a plain add on x86-64 (no lock
 * prefix) while keeping the cross-thread read well defined. */
#define MF_CTR_ADD(field, n) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define MF_CTR_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define MF_CTR_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

/* Allocation accounting: every allocation the data plane makes goes through
 * these so tests can check that creating and destroying calls is balanced. */
void *mf_calloc(size_t n, size_t size);
void *mf_aligned_alloc(size_t align, size_t size);
void mf_free(void *p);
int64_t mf_live_allocations(void);
void mf_note_external_alloc(int delta); /* SRTP contexts */

/* Media sockets owned by calls and forks (taken at creation, closed when the call or
 * fork is freed): a count that must fall back when calls end, whatever the GC does. */
void mf_note_sockets(int delta);
int64_t mf_open_sockets(void);

uint64_t mf_now_ns(void); /* CLOCK_MONOTONIC */

#endif
