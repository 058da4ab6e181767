/* Allocation accounting and clocks (see mf_common.h). */
#include <stdlib.h>
#include <time.h>

#include "mf_common.h"

static int64_t live_allocations;

void *mf_calloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p)
        __atomic_add_fetch(&live_allocations, 1, __ATOMIC_RELAXED);
    return p;
}

void *mf_aligned_alloc(size_t align, size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, align, size) != 0)
        return NULL;
    __atomic_add_fetch(&live_allocations, 1, __ATOMIC_RELAXED);
    return p;
}

void mf_free(void *p)
{
    if (!p)
        return;
    __atomic_sub_fetch(&live_allocations, 1, __ATOMIC_RELAXED);
    free(p);
}

void mf_note_external_alloc(int delta)
{
    __atomic_add_fetch(&live_allocations, delta, __ATOMIC_RELAXED);
}

static int64_t open_sockets;

void mf_note_sockets(int delta)
{
    __atomic_add_fetch(&open_sockets, delta, __ATOMIC_RELAXED);
}

int64_t mf_open_sockets(void)
{
    return __atomic_load_n(&open_sockets, __ATOMIC_RELAXED);
}

int64_t mf_live_allocations(void)
{
    return __atomic_load_n(&live_allocations, __ATOMIC_RELAXED);
}

uint64_t mf_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
