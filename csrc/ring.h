/* Bounded single-producer/single-consumer ring of fixed-size slots.
 *
 * Power-of-two capacity, preallocated once, no allocation per packet. The
 * producer and consumer may be different threads: head is written only by
 * the producer, tail only by the consumer, each published with release
 * semantics and read with acquire. When full, the producer drops (the caller
 * counts it): a slow consumer can never block the producer. */
#ifndef MF_RING_H
#define MF_RING_H

#include <stdint.h>
#include <string.h>

#include "mf_common.h"

typedef struct {
    uint32_t len;      /* bytes used in data */
    uint32_t aux;      /* caller-defined (e.g. track, flags) */
    uint64_t aux64;    /* caller-defined (e.g. arrival time) */
    uint8_t data[];
} mf_slot;

typedef struct {
    /* producer-owned cache line */
    uint64_t head __attribute__((aligned(64)));
    uint64_t cached_tail;
    /* consumer-owned cache line */
    uint64_t tail __attribute__((aligned(64)));
    uint64_t cached_head;
    /* read-only after creation */
    uint32_t mask __attribute__((aligned(64)));
    uint32_t slot_size; /* bytes per slot including the mf_slot header */
    uint8_t *slots;
} mf_ring;

#define MF_SLOT_HEADER ((uint32_t)sizeof(mf_slot))

/* capacity must be a power of two; payload is the usable bytes per slot. */
static inline int mf_ring_init(mf_ring *r, uint32_t capacity, uint32_t payload)
{
    if (capacity == 0 || (capacity & (capacity - 1)))
        return -1;
    memset(r, 0, sizeof(*r));
    r->mask = capacity - 1;
    r->slot_size = (MF_SLOT_HEADER + payload + 63u) & ~63u; /* cache-line slots */
    r->slots = mf_aligned_alloc(64, (size_t)r->slot_size * capacity);
    return r->slots ? 0 : -1;
}

static inline void mf_ring_destroy(mf_ring *r)
{
    mf_free(r->slots);
    r->slots = NULL;
}

static inline uint32_t mf_ring_payload_capacity(const mf_ring *r)
{
    return r->slot_size - MF_SLOT_HEADER;
}

static inline mf_slot *mf_ring_at(const mf_ring *r, uint64_t index)
{
    return (mf_slot *)(r->slots + (size_t)(index & r->mask) * r->slot_size);
}

/* Producer: the next free slot, or NULL when full. Fill it, then commit. */
static inline mf_slot *mf_ring_reserve(mf_ring *r)
{
    if (r->head - r->cached_tail > r->mask) {
        r->cached_tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        if (r->head - r->cached_tail > r->mask)
            return NULL;
    }
    return mf_ring_at(r, r->head);
}

static inline void mf_ring_commit(mf_ring *r)
{
    __atomic_store_n(&r->head, r->head + 1, __ATOMIC_RELEASE);
}

/* Consumer: number of filled slots available now. */
static inline uint64_t mf_ring_available(mf_ring *r)
{
    r->cached_head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    return r->cached_head - r->tail;
}

/* Consumer: the i-th filled slot after tail (i < available). */
static inline mf_slot *mf_ring_peek(const mf_ring *r, uint64_t i)
{
    return mf_ring_at(r, r->tail + i);
}

static inline void mf_ring_release(mf_ring *r, uint64_t n)
{
    __atomic_store_n(&r->tail, r->tail + n, __ATOMIC_RELEASE);
}

static inline uint64_t mf_ring_size_approx(const mf_ring *r)
{
    return __atomic_load_n(&r->head, __ATOMIC_RELAXED) - __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
}

#endif
