/* Keep-warm threads: idle-priority spinners that keep the cores pynn's OpenMP workers sleep
 * on from halting while a training or prediction loop runs (native/info.pyx).
 *
 * Why: pynn's waiters spin briefly (GOMP_SPINCOUNT=1000, ~11 us) and then sleep, so a
 * machine shared with other processes does not lose cores to spinning (pynn/__init__.py).
 * On a virtual machine a sleeping worker's core halts, and waking it costs the hypervisor
 * 60-100 us per parallel region (info.region_wakeup_us), more than many of a training step's
 * ops take: a residual CNN step ran 20% faster with long spins. Long spins are what a shared
 * machine cannot afford (two such processes on two cores: 2.2x slower). A SCHED_IDLE thread
 * spinning on the otherwise idle core keeps it from halting, so the wake-up is a reschedule
 * (20-30 us), and it yields that core at once to any normal thread of any process: measured
 * alone 13% off the residual CNN's step, with two processes on two cores no loss.
 *
 * The spinners run while pynn_warm_until lies ahead (each batch of a loop pushes it ~0.1 s
 * on) and then block on a condition variable, costing nothing. Linux only (SCHED_IDLE); a
 * thread the kernel refuses SCHED_IDLE exits at once rather than spin at normal priority. */
#ifndef PYNN_WARM_H
#define PYNN_WARM_H

#include <pthread.h>
#include <time.h>
#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYNN_WARM_RELAX() _mm_pause()
#else
#define PYNN_WARM_RELAX() ((void)0)
#endif

#define PYNN_WARM_MAX 16

/* The spinners relay jobs of pynn's worker team (native/_team.h) to its sleeping workers. */
#define PYNN_TEAM_IMPL
#include "_team.h"

static pthread_mutex_t pynn_warm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pynn_warm_cond = PTHREAD_COND_INITIALIZER;
static long long pynn_warm_until = 0;  /* CLOCK_MONOTONIC nanoseconds */
static int pynn_warm_started = 0;      /* spinner threads of this process */
static int pynn_warm_sleeping = 0;     /* of which blocked on pynn_warm_cond */
static int pynn_warm_refused = 0;      /* threads that could not get SCHED_IDLE */

static long long pynn_warm_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec;
}

static void* pynn_warm_main(void* arg) {
    int i;
    unsigned seen = 0;
    (void)arg;
#if defined(__linux__) && defined(SCHED_IDLE)
    struct sched_param param;
    param.sched_priority = 0;
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) != 0) {
        pthread_mutex_lock(&pynn_warm_lock);
        pynn_warm_refused++;
        pthread_mutex_unlock(&pynn_warm_lock);
        return NULL;
    }
#else
    return NULL;
#endif
    for (;;) {
        pthread_mutex_lock(&pynn_warm_lock);
        while (pynn_warm_now() >= __atomic_load_n(&pynn_warm_until, __ATOMIC_RELAXED)) {
            pynn_warm_sleeping++;
            pthread_cond_wait(&pynn_warm_cond, &pynn_warm_lock);
            pynn_warm_sleeping--;
        }
        pthread_mutex_unlock(&pynn_warm_lock);
        pynn_team_relaying_set(1, &seen);
        while (pynn_warm_now() < __atomic_load_n(&pynn_warm_until, __ATOMIC_RELAXED))
            for (i = 0; i < 8; i++) {   /* a posted team job is seen within ~1 us */
                int j;
                for (j = 0; j < 8; j++) PYNN_WARM_RELAX();
                pynn_team_relay(&seen);
            }
        pynn_team_relaying_set(0, &seen);
    }
    return NULL;
}

/* Keep `threads` spinners (at most PYNN_WARM_MAX) spinning for hold_s seconds from now;
   starts the missing ones. Returns the number started in this process so far. */
static int pynn_warm_touch(int threads, double hold_s) {
    long long until = pynn_warm_now() + (long long)(hold_s * 1e9);
    pthread_t t;
    pthread_attr_t attr;
    if (threads > PYNN_WARM_MAX) threads = PYNN_WARM_MAX;
    __atomic_store_n(&pynn_warm_until, until, __ATOMIC_RELAXED);
    if (pynn_warm_started >= threads && __atomic_load_n(&pynn_warm_sleeping, __ATOMIC_RELAXED) == 0)
        return pynn_warm_started;
    pthread_mutex_lock(&pynn_warm_lock);
    if (pynn_warm_sleeping > 0) pthread_cond_broadcast(&pynn_warm_cond);
    while (pynn_warm_started < threads) {
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        if (pthread_create(&t, &attr, pynn_warm_main, NULL) != 0) {
            pthread_attr_destroy(&attr);
            break;
        }
        pthread_attr_destroy(&attr);
        pynn_warm_started++;
    }
    pthread_mutex_unlock(&pynn_warm_lock);
    return pynn_warm_started;
}

/* Stop spinning now (the threads block until the next touch). */
static void pynn_warm_release(void) {
    __atomic_store_n(&pynn_warm_until, 0LL, __ATOMIC_RELAXED);
}

/* In a forked child: the parent's spinners do not exist there, and the lock may have been
   held by one of them at the fork. */
static void pynn_warm_after_fork_child(void) {
    pthread_mutex_init(&pynn_warm_lock, NULL);
    pthread_cond_init(&pynn_warm_cond, NULL);
    pynn_warm_until = 0;
    pynn_warm_started = 0;
    pynn_warm_sleeping = 0;
    pynn_warm_refused = 0;
    pynn_team_after_fork_child();
}

#endif
