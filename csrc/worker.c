/* The media worker thread: runs the engine's loop and paces it by time.
 *
 * A wake costs the same (scheduling, the backend's wait, timers) whether it
 * finds one packet or a hundred, and at 50 packets per second per socket the
 * sockets rarely become ready together. So after a wake the thread does not
 * wait again before one tick has passed since that wake: the next wait
 * returns everything that became ready during the tick in one batch, and the
 * cost per packet falls with load. A recorder's jitter buffer does not notice
 * a fraction of a millisecond. A loop with a backlog (some receive batch came
 * back full) never pauses. Only engine.h is used: the engine never calls here. */
#include <errno.h>
#include <sys/prctl.h>
#include <time.h>

#include "engine.h"

#define MF_IDLE_WAIT_MS 50 /* the timers' period: RTCP and no-media checks */

static void sleep_until(uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000ull), (long)(deadline_ns % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void *worker_main(void *arg)
{
    mf_engine *e = arg;
    uint64_t tick_ns = (uint64_t)e->cfg.tick_us * 1000ull;
    /* The default 50 us timer slack would stretch every tick by that much. */
    if (tick_ns)
        prctl(PR_SET_TIMERSLACK, (unsigned long)(tick_ns / 20 ? tick_ns / 20 : 1), 0, 0, 0);
    while (!e->stop_requested) {
        mf_engine_iterate(e, MF_IDLE_WAIT_MS);
        if (tick_ns && e->last_ready > 0 && !e->last_full) {
            uint64_t deadline = e->last_wake_ns + tick_ns;
            if (mf_now_ns() < deadline)
                sleep_until(deadline);
        }
    }
    return NULL;
}

int mf_engine_start(mf_engine *e)
{
    pthread_mutex_lock(&e->submit_lock);
    int rc = 0;
    /* commands submitted before start were applied inline already */
    if (!e->started) {
        e->started = 1;
        if (pthread_create(&e->thread, NULL, worker_main, e) != 0) {
            e->started = 0;
            rc = -1;
        }
    }
    pthread_mutex_unlock(&e->submit_lock);
    return rc;
}

void mf_engine_stop(mf_engine *e)
{
    if (!e->started)
        return;
    mf_cmd cmd = {.type = MF_CMD_STOP};
    mf_engine_submit(e, &cmd);
    pthread_join(e->thread, NULL);
    /* back to inline mode: anything still queued is applied by the caller */
    pthread_mutex_lock(&e->submit_lock);
    e->started = 0;
    e->stop_requested = 0;
    mf_engine_apply_commands(e);
    pthread_mutex_unlock(&e->submit_lock);
}

uint64_t mf_engine_worker_cpu_ns(mf_engine *e)
{
    clockid_t cid;
    struct timespec ts;
    if (!e->started || pthread_getcpuclockid(e->thread, &cid) != 0 || clock_gettime(cid, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
