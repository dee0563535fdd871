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
    /* pynn's process-wide thread count (pynn.set_num_threads). OpenMP keeps its count per
       calling thread, and a batch-1 lane is entered from any Python thread without the
       Python that would set it there, so the lane reads this one. */
    int (*threads)(void);
    /* Like run with a grain of one, n <= 32 items, item i first offered to team slot i (0:
       the caller) and taken by another thread only once that one's own is done or it has
       none: a job repeated call after call (a batch-1 layer's column blocks) then runs each
       part on the same core, whose cache keeps that part's weights. */
    int (*run_affine)(long n, int threads, pynn_team_fn fn, void* ctx);
    /* A batch-1 lane call's thread count, asked once as it starts (lane_threads), and its
       end (lane_done): see pynn_team_lane_threads_impl. */
    int (*lane_threads)(void);
    void (*lane_done)(void);
} pynn_team_api;

#define PYNN_TEAM_API_VERSION 2

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
/* After an affine job (a batch-1 lane's layer) a worker spins this long: requests that
   come closer together than this keep it awake, and split their layers. */
#define PYNN_TEAM_AFFINE_SPIN_NS 50000LL
/* The master waits for items in flight on other threads spinning this long, then yields. */
#define PYNN_TEAM_WAIT_NS 50000LL

typedef struct {
    pynn_team_fn fn;
    void* ctx;
    long n, grain;
    int want;
    int affine;   /* items claimed by slot (the counter's low bits a mask of claimed items) */
} pynn_team_job;

/* Two job slots: job g lives in slot g & 1, so posting g + 1 never rewrites what a worker
   still reading job g's fields sees (see pynn_team_take). */
static pynn_team_job pynn_team_jobs[2];
static unsigned long long pynn_team_claim = 0;   /* generation << 32 | next unclaimed item */
static int pynn_team_word = 0;                   /* futex word: the generation's low bits */
static unsigned pynn_team_gen = 0;
static long pynn_team_pending = 0;               /* items of the current job not yet done */
static int pynn_team_sleepers = 0;
static int pynn_team_asleep[PYNN_TEAM_MAX];      /* per worker: sleeping on the futex */
static int pynn_team_workers = 0;
static int pynn_team_relaying = 0;               /* keep-warm spinners in their spin loop */
static long long pynn_team_jobs_run = 0, pynn_team_jobs_serial = 0;
static int pynn_team_setting = 1;                /* pynn.set_num_threads's count */
static long long pynn_team_lane_last = 0;        /* when a batch-1 lane call last ended */
static long long pynn_team_lane_nudged = 0;      /* when a lane call last woke the workers */
static int pynn_team_lane_force = 0;             /* tests: lanes post even to sleepers */
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

/* An affine job's next item for team slot `slot`: its own (item `slot`) while unclaimed,
   else the lowest unclaimed one; 0 when none is left or the job is over. The claim and the
   generation check are one compare-exchange, as in pynn_team_take. */
static int pynn_team_take_affine(unsigned gen, int slot, long* begin, long* end) {
    unsigned long long v = __atomic_load_n(&pynn_team_claim, __ATOMIC_ACQUIRE);
    for (;;) {
        const pynn_team_job* job = &pynn_team_jobs[gen & 1];
        unsigned long long all, free_items;
        long i;
        if ((unsigned)(v >> 32) != gen)
            return 0;
        all = job->n >= 32 ? 0xffffffffULL : (1ULL << job->n) - 1;
        free_items = all & ~v;
        if (free_items == 0)
            return 0;
        i = slot < job->n && (free_items >> slot & 1) ? slot : __builtin_ctzll(free_items);
        if (__atomic_compare_exchange_n(&pynn_team_claim, &v, v | 1ULL << i, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *begin = i;
            *end = i + 1;
            return 1;
        }
    }
}

static void pynn_team_work(unsigned gen, int slot) {
    long b, e;
    while (pynn_team_jobs[gen & 1].affine ? pynn_team_take_affine(gen, slot, &b, &e)
                                          : pynn_team_take(gen, &b, &e)) {
        const pynn_team_job* job = &pynn_team_jobs[gen & 1];
        job->fn(job->ctx, b, e, slot);
        __atomic_sub_fetch(&pynn_team_pending, e - b, __ATOMIC_RELEASE);
    }
}

static void* pynn_team_worker(void* arg) {
    int index = (int)(size_t)arg;
    unsigned seen = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST);
    long long spin_ns = PYNN_TEAM_SPIN_NS;
    for (;;) {
        unsigned w;
        long long t0 = pynn_team_now();
        int spins = 0;
        while ((w = (unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST)) == seen) {
            PYNN_TEAM_RELAX();
            if ((++spins & 63) || pynn_team_now() - t0 < spin_ns)
                continue;
            /* Sleep; the master or a keep-warm spinner sees the count after posting. */
            __atomic_add_fetch(&pynn_team_sleepers, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&pynn_team_asleep[index], 1, __ATOMIC_SEQ_CST);
            if ((unsigned)__atomic_load_n(&pynn_team_word, __ATOMIC_SEQ_CST) == seen)
                pynn_team_futex_wait(&pynn_team_word, (int)seen);
            __atomic_store_n(&pynn_team_asleep[index], 0, __ATOMIC_SEQ_CST);
            __atomic_sub_fetch(&pynn_team_sleepers, 1, __ATOMIC_SEQ_CST);
            t0 = pynn_team_now();
        }
        seen = w;
        spin_ns = pynn_team_jobs[w & 1].affine ? PYNN_TEAM_AFFINE_SPIN_NS : PYNN_TEAM_SPIN_NS;
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

/* Whether a worker a `threads`-thread job would use sleeps (the team may hold more workers
   than the job uses, sleeping idle: they do not count). Not started yet: no. */
static int pynn_team_dozing(int threads) {
    int i, started = __atomic_load_n(&pynn_team_workers, __ATOMIC_RELAXED);
    if (threads - 1 < started) started = threads - 1;
    for (i = 0; i < started; i++)
        if (__atomic_load_n(&pynn_team_asleep[i], __ATOMIC_RELAXED))
            return 1;
    return 0;
}

static int pynn_team_post(long n, long grain, int threads, pynn_team_fn fn, void* ctx,
                          int affine) {
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
    job->affine = affine;
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

static int pynn_team_run_impl(long n, long grain, int threads, pynn_team_fn fn, void* ctx) {
    return pynn_team_post(n, grain, threads, fn, ctx, 0);
}

static int pynn_team_run_affine_impl(long n, int threads, pynn_team_fn fn, void* ctx) {
    if (pynn_team_dozing(threads) && !__atomic_load_n(&pynn_team_lane_force, __ATOMIC_RELAXED)) {
        /* a worker asleep: alone, see pynn_team_lane_threads_impl */
        if (n > 0) fn(ctx, 0, n, 0);
        return 0;
    }
    if (n > 32) {   /* past the claim mask: an ordinary job */
        return pynn_team_post(n, 1, threads, fn, ctx, 0);
    }
    return pynn_team_post(n, 1, threads, fn, ctx, 1);
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
    int i;
    for (i = 0; i < PYNN_TEAM_MAX; i++) pynn_team_asleep[i] = 0;
    pthread_mutex_init(&pynn_team_busy, NULL);
    pthread_mutex_init(&pynn_team_start, NULL);
    pynn_team_workers = 0;
    pynn_team_sleepers = 0;
    pynn_team_relaying = 0;
    pynn_team_pending = 0;
}

static int pynn_team_threads_impl(void) {
    return __atomic_load_n(&pynn_team_setting, __ATOMIC_RELAXED);
}

static void pynn_team_set_threads(int n) {
    __atomic_store_n(&pynn_team_setting, n > 0 ? n : 1, __ATOMIC_RELAXED);
}

/* The threads a batch-1 lane call starting now may split its layers over (pynn's count).
   Each split layer runs on the team only while its workers are awake (run_affine), since
   waking a sleeping worker costs a virtual machine 20-60 us, more than a split layer saves.
   They are awake while requests come closer together than PYNN_TEAM_AFFINE_SPIN_NS (they
   spin that long after a lane's layer); a call that finds them asleep although the last
   one ended within that time (the first of a run of close requests) wakes them for the
   calls after it, once, and runs its own layers alone. */
static int pynn_team_lane_threads_impl(void) {
    int threads = __atomic_load_n(&pynn_team_setting, __ATOMIC_RELAXED);
    long long now;
    if (threads <= 1 || !PYNN_TEAM_FUTEX)
        return 1;
    if (pynn_team_dozing(threads)) {
        now = pynn_team_now();
        if (now - __atomic_load_n(&pynn_team_lane_last, __ATOMIC_RELAXED)
                    < PYNN_TEAM_AFFINE_SPIN_NS
                && now - __atomic_load_n(&pynn_team_lane_nudged, __ATOMIC_RELAXED)
                    > PYNN_TEAM_AFFINE_SPIN_NS) {
            __atomic_store_n(&pynn_team_lane_nudged, now, __ATOMIC_RELAXED);
            pynn_team_futex_wake(&pynn_team_word);
        }
    }
    return threads;
}

static void pynn_team_lane_done_impl(void) {
    __atomic_store_n(&pynn_team_lane_last, pynn_team_now(), __ATOMIC_RELAXED);
}

static pynn_team_api pynn_team_table = {PYNN_TEAM_API_VERSION, pynn_team_run_impl,
                                        pynn_team_counts_impl, pynn_team_threads_impl,
                                        pynn_team_run_affine_impl,
                                        pynn_team_lane_threads_impl,
                                        pynn_team_lane_done_impl};

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

/* Items [0, n) one by one, item i first offered to slot i (see run_affine). */
static inline void pynn_team_for_affine(long n, int threads, pynn_team_fn fn, void* ctx) {
    if (pynn_team_bound == NULL || threads <= 1 || n <= 1) {
        if (n > 0) fn(ctx, 0, n, 0);
        return;
    }
    pynn_team_bound->run_affine(n, threads, fn, ctx);
}

/* A batch-1 lane call's threads (see pynn_team_lane_threads_impl), and its end. */
static inline int pynn_team_lane_threads(void) {
    return pynn_team_bound == NULL ? 1 : pynn_team_bound->lane_threads();
}

static inline void pynn_team_lane_done(void) {
    if (pynn_team_bound != NULL) pynn_team_bound->lane_done();
}

/* pynn's thread count (pynn.set_num_threads), whichever thread asks; 1 before binding. */
static inline int pynn_team_threads(void) {
    return pynn_team_bound == NULL ? 1 : pynn_team_bound->threads();
}

#endif
#endif
