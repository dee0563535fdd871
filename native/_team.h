/* pynn's own worker team: the parallel loops of a training step's hot ops without OpenMP's
 * wake-up cost.
 *
 * Why: pynn's OpenMP waiters spin briefly and then sleep (pynn/__init__.py: long spins cost a
 * shared machine 2-7x), so every parallel region after more than ~20 us of Python pays a
 * futex wake-up of a sleeping worker on another core: an inter-processor interrupt, which on
 * the virtual machines pynn is measured on takes 38 us (18 us with the keep-warm spinner of
 * native/_warm.h on that core; bench/README.md). An MLP step is ~15 such regions, a 30-layer
 * functional model's ~95. Here the master posts a job in memory and the keep-warm spinner,
 * already running at idle priority on the worker's core, sees it within a microsecond and
 * wakes the worker from that core, where the wake-up is a local reschedule: 1.1 us (measured
 * by a C harness of this protocol, median of 2,000 wake-ups after 50 us of master work).
 * Nothing spins at normal priority longer than libgomp's short spin, so a shared machine
 * loses nothing; under contention the spinner rarely runs, the workers are not woken, and
 * the master does the items itself.
 *
 * A job is `n` items split into claims of `grain`; the master and the workers take claims
 * from one counter until none are left, so the result never depends on who ran an item or on
 * how many threads took part (each item's arithmetic is fixed by the caller's partition).
 * One master at a time: a second caller (another Python thread, or a job's item itself)
 * runs its job serially on its own thread.
 *
 * The implementation lives in the info module (native/_warm.h defines PYNN_TEAM_IMPL and
 * includes this file); every other module binds the one team through a capsule
 * (pynn_team_bind), so a process has one set of workers whatever it imports. Linux futexes;
 * elsewhere every job runs on the calling thread. */
#ifndef PYNN_TEAM_H
#define PYNN_TEAM_H

#include <stddef.h>

/* Items [begin, end) of a job, on the thread of team slot `slot` (0: the master; below the
   job's thread count), for per-thread scratch indexed like omp_get_thread_num's. */
typedef void (*pynn_team_fn)(void* ctx, long begin, long end, int slot);

typedef struct {
    int version;
    /* Runs fn(ctx, b, e) over [0, n) in claims of `grain` items on up to `threads` threads
       (the caller's included); returns how many workers the team had for it (0: ran on the
       calling thread alone). */
    int (*run)(long n, long grain, int threads, pynn_team_fn fn, void* ctx);
    /* (jobs run on the team, jobs run serially because the team was busy) so far. */
    void (*counts)(long long* team_jobs, long long* serial_jobs);
} pynn_team_api;

#define PYNN_TEAM_API_VERSION 1

#ifdef PYNN_TEAM_IMPL

#include <pthread.h>
#include <time.h>
#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#define PYNN_TEAM_FUTEX 1
#else
#define PYNN_TEAM_FUTEX 0
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYNN_TEAM_RELAX() _mm_pause()
#else
#define PYNN_TEAM_RELAX() ((void)0)
#endif

#define PYNN_TEAM_MAX 63
/* A worker spins this long after its last item before sleeping: back-to-back jobs of one op
   (a pack, then the tiles that read it) find it awake; libgomp's own short spin is ~15 us. */
#define PYNN_TEAM_SPIN_NS 10000LL
/* The master waits for items in flight on other threads spinning this long, then yields. */
#define PYNN_TEAM_WAIT_NS 50000LL

typedef struct {
    pynn_team_fn fn;
    void* ctx;
    long n, grain;
    int want;
} pynn_team_job;

/* Two job slots: job g lives in slot g & 1, so posting g + 1 never rewrites what a worker
   still reading job g's fields sees (see pynn_team_take). */
static pynn_team_job pynn_team_jobs[2];
static unsigned long long pynn_team_claim = 0;   /* generation << 32 | next unclaimed item */
static int pynn_team_word = 0;                   /* futex word: the generation's low bits */
static unsigned pynn_team_gen = 0;
static long pynn_team_pending = 0;               /* items of the current job not yet done */
static int pynn_team_sleepers = 0;
static int pynn_team_workers = 0;
static int pynn_team_relaying = 0;               /* keep-warm spinners in their spin loop */
static long long pynn_team_jobs_run = 0, pynn_team_jobs_serial = 0;
static pthread_mutex_t pynn_team_busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pynn_team_start = PTHREAD_MUTEX_INITIALIZER;

static long long pynn_team_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec;
}

static void pynn_team_futex_wait(int* word, int seen) {
#if PYNN_TEAM_FUTEX
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    (void)word; (void)seen;
#endif
}

static void pynn_team_futex_wake(int* word) {
#if PYNN_TEAM_FUTEX
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Claims the next items of job `gen`: 0 when that job has none left or is over. A claim
   that succeeds proves job gen + 1 was not posted yet (posting rewrites the counter), so
   the slot's fields read before it were job gen's; the master cannot post gen + 1 while
   the claimed items are pending. */
static int pynn_team_take(unsigned gen, long* begin, long* end) {
    unsigned long long v = __atomic_load_n(&pynn_team_claim, __ATOMIC_ACQUIRE);
    for (;;) {
        const pynn_team_job* job = &pynn_team_jobs[gen & 1];
        long i, e;
        if ((unsigned)(v >> 32) != gen)
            return 0;
        i = (long)(v & 0xffffffffULL);
        if (i >= job->n)
            return 0;
        e = i + job->grain < job->n ? i + job->grain : job->n;
        if (__atomic_compare_exchange_n(&pynn_team_claim, &v,
                                        (v & ~0xffffffffULL) | (unsigned long long)e, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *begin = i;
            *end = e;
            return 1;
        }
    }
}

static void pynn_team_work(unsigned gen, int slot) {
    long b, e;
    while (pynn_team_take(gen, &b, &e)) {
        const pynn_team_job* job = &pynn_team_jobs[gen & 1];
        job->fn(job->ctx, b, e, slot);
        __atomic_sub_fetch(&pynn_team_pending, e - b, __ATOMIC_RELEASE);
    }
}

static void* pynn_team_worker(void* arg) {
    int index = (int)(size_t)arg;
    unsigned seen = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST);
    for (;;) {
        unsigned w;
        long long t0 = pynn_team_now();
        int spins = 0;
        while ((w = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST)) == seen) {
            PYNN_TEAM_RELAX();
            if ((++spins & 63) || pynn_team_now() - t0 < PYNN_TEAM_SPIN_NS)
                continue;
            /* Sleep; the master or a keep-warm spinner sees the count after posting. */
            __atomic_add_fetch(&pynn_team_sleepers, 1, __ATOMIC_SEQ_CST);
            if ((unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST) == seen)
                pynn_team_futex_wait(&pynn_team_word, (int)seen);
            __atomic_sub_fetch(&pynn_team_sleepers, 1, __ATOMIC_SEQ_CST);
            t0 = pynn_team_now();
        }
        seen = w;
        if (index < pynn_team_jobs[w & 1].want)
            pynn_team_work(w, index + 1);
    }
    return NULL;
}

/* Under pynn_team_busy: start workers up to `want`; returns how many run. */
static int pynn_team_grow(int want) {
    pthread_t t;
    pthread_attr_t attr;
    if (want > PYNN_TEAM_MAX) want = PYNN_TEAM_MAX;
    if (pynn_team_workers >= want) return pynn_team_workers;
    pthread_mutex_lock(&pynn_team_start);
    while (pynn_team_workers < want) {
        int ok;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ok = pthread_create(&t, &attr, pynn_team_worker, (void*)(size_t)pynn_team_workers) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pynn_team_workers++;
    }
    pthread_mutex_unlock(&pynn_team_start);
    return pynn_team_workers;
}

static int pynn_team_run_impl(long n, long grain, int threads, pynn_team_fn fn, void* ctx) {
    unsigned g;
    pynn_team_job* job;
    int workers;
    if (grain < 1) grain = 1;
    if (!PYNN_TEAM_FUTEX || threads <= 1 || n <= grain || n >= 0x7fffffffL
            || pthread_mutex_trylock(&pynn_team_busy) != 0) {
        if (threads > 1 && n > grain)
            __atomic_add_fetch(&pynn_team_jobs_serial, 1, __ATOMIC_RELAXED);
        if (n > 0) fn(ctx, 0, n, 0);
        return 0;
    }
    workers = pynn_team_grow(threads - 1);
    if (workers < 1) {
        pthread_mutex_unlock(&pynn_team_busy);
        fn(ctx, 0, n, 0);
        return 0;
    }
    pynn_team_jobs_run++;
    g = ++pynn_team_gen;
    job = &pynn_team_jobs[g & 1];
    job->fn = fn;
    job->ctx = ctx;
    job->n = n;
    job->grain = grain;
    job->want = threads - 1;
    __atomic_store_n(&pynn_team_pending, n, __ATOMIC_RELAXED);
    __atomic_store_n(&pynn_team_claim, (unsigned long long)g << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&pynn_team_word, (int)g, __ATOMIC_SEQ_CST);
    /* Sleeping workers: a spinner on their core wakes them locally (pynn_team_relay);
       without one, the master's futex wake (an interrupt to that core) does. */
    if (__atomic_load_n(&pynn_team_sleepers, __ATOMIC_SEQ_CST) > 0
            && __atomic_load_n(&pynn_team_relaying, __ATOMIC_SEQ_CST) == 0)
        pynn_team_futex_wake(&pynn_team_word);
    pynn_team_work(g, 0);
    if (__atomic_load_n(&pynn_team_pending, __ATOMIC_ACQUIRE) != 0) {
        long long t0 = pynn_team_now();
        int spins = 0;
        while (__atomic_load_n(&pynn_team_pending, __ATOMIC_ACQUIRE) != 0) {
            PYNN_TEAM_RELAX();
            if ((++spins & 255) == 0 && pynn_team_now() - t0 > PYNN_TEAM_WAIT_NS)
                sched_yield();
        }
    }
    pthread_mutex_unlock(&pynn_team_busy);
    return workers;
}

static void pynn_team_counts_impl(long long* team_jobs, long long* serial_jobs) {
    *team_jobs = pynn_team_jobs_run;
    *serial_jobs = __atomic_load_n(&pynn_team_jobs_serial, __ATOMIC_RELAXED);
}

/* Called by a keep-warm spinner between its pauses: a job posted since *seen finds a
   sleeping worker woken from this core. */
static inline void pynn_team_relay(unsigned* seen) {
    unsigned w = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST);
    if (w != *seen) {
        *seen = w;
        if (__atomic_load_n(&pynn_team_sleepers, __ATOMIC_SEQ_CST) > 0)
            pynn_team_futex_wake(&pynn_team_word);
    }
}

/* A spinner entering (on = 1) or leaving its spin loop; leaving, it relays once more, so a
   master that saw it spinning and left the wake-up to it is never left waiting alone. */
static void pynn_team_relaying_set(int on, unsigned* seen) {
    if (on) {
        *seen = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&pynn_team_relaying, 1, __ATOMIC_SEQ_CST);
    } else {
        __atomic_sub_fetch(&pynn_team_relaying, 1, __ATOMIC_SEQ_CST);
        pynn_team_relay(seen);
    }
}

static void pynn_team_after_fork_child(void) {
    pthread_mutex_init(&pynn_team_busy, NULL);
    pthread_mutex_init(&pynn_team_start, NULL);
    pynn_team_workers = 0;
    pynn_team_sleepers = 0;
    pynn_team_relaying = 0;
    pynn_team_pending = 0;
}

static pynn_team_api pynn_team_table = {PYNN_TEAM_API_VERSION, pynn_team_run_impl,
                                        pynn_team_counts_impl};

#else  /* a module that binds the info module's team */

static const pynn_team_api* pynn_team_bound = NULL;

static int pynn_team_bind(const void* api) {
    const pynn_team_api* t = (const pynn_team_api*)api;
    if (t == NULL || t->version != PYNN_TEAM_API_VERSION) return -1;
    pynn_team_bound = t;
    return 0;
}

/* fn over [0, n) in claims of `grain` on up to `threads` threads; before binding, or for
   one thread or one claim, on the calling thread. */
static inline void pynn_team_for(long n, long grain, int threads, pynn_team_fn fn, void* ctx) {
    if (pynn_team_bound == NULL || threads <= 1 || n <= grain) {
        if (n > 0) fn(ctx, 0, n, 0);
        return;
    }
    pynn_team_bound->run(n, grain, threads, fn, ctx);
}

#endif
#endif
