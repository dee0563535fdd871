/* A recycling allocator for the data of NumPy arrays (a NEP 49 PyDataMem_Handler).
 *
 * Why: a training step allocates the same multi-MiB activations and gradients every batch.
 * glibc often serves such sizes from fresh mmap pages or trims them back to the system:
 * the CNN benchmark's step took 0-2,300 page faults (each page zeroed by the kernel first),
 * with this pool 0; in-process A/B the step ran 3-7% faster (Zen 3, 2 threads).
 * So blocks of at least PYNN_RECYCLE_MIN bytes, once freed, wait in a small pool (up to
 * `limit` idle bytes, the oldest evicted first) and a later request takes the best-fitting
 * one back, the most recently freed first (most likely still in cache). Smaller blocks go
 * straight to malloc.
 *
 * Every block carries a header just below the pointer handed out: {raw pointer, capacity,
 * magic}. realloc and free read the capacity there, never NumPy's size argument; large blocks
 * are 64-byte aligned (cache lines, for the microkernels' vector loads). One mutex guards the
 * pool: NumPy frees arrays from any thread. The pool is pynn's own; an array allocated here
 * may outlive any scope, and its free() still lands here (NumPy keeps the handler with it);
 * outside every scope that free gives the block back to the system.
 */
#ifndef PYNN_RECYCLE_H
#define PYNN_RECYCLE_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Blocks from 64 KiB: glibc serves 128-256 KiB arrays (a 128 x 256 float32 activation) from
   fresh mmap pages or a heap it trims back, whatever its dynamic threshold says that moment:
   the 30-layer functional model's step took 1,410 page faults with a 256 KiB minimum, 0 with
   this one, and ran 9.9 -> 7.2 ms (Intel, 2 threads). */
#define PYNN_RECYCLE_MIN ((size_t)1 << 16)
#define PYNN_RECYCLE_SLOTS 1024
#define PYNN_RECYCLE_ROUND ((size_t)4096)    /* near sizes share a slot (last batch of an epoch) */
#define PYNN_RECYCLE_ALIGN ((size_t)64)
#define PYNN_SMALL_HEADER ((size_t)32)      /* keeps malloc's 16-byte alignment */
#define PYNN_MAGIC_SMALL ((size_t)0x70796e6e536d6c6cULL)
#define PYNN_MAGIC_LARGE ((size_t)0x70796e6e4c617267ULL)

typedef struct { void* ptr; size_t capacity; } pynn_idle_block;

static pynn_idle_block pynn_idle[PYNN_RECYCLE_SLOTS];
static int pynn_idle_count = 0;
static size_t pynn_idle_bytes = 0;
static size_t pynn_recycle_limit = (size_t)256 << 20;
static int pynn_recycle_scopes = 0;   /* recycling() blocks open, in any thread */
static unsigned long long pynn_recycle_hits = 0, pynn_recycle_misses = 0;
static pthread_mutex_t pynn_recycle_lock = PTHREAD_MUTEX_INITIALIZER;

static inline size_t* pynn_header(void* p) { return (size_t*)p - 3; }

static void* pynn_tag(void* raw, char* p, size_t capacity, size_t magic) {
    size_t* h = pynn_header(p);
    h[0] = (size_t)(uintptr_t)raw;
    h[1] = capacity;
    h[2] = magic;
    return p;
}

static void* pynn_small_new(size_t size, int zero) {
    char* raw;
    if (size > SIZE_MAX - PYNN_SMALL_HEADER) return NULL;
    raw = zero ? calloc(1, size + PYNN_SMALL_HEADER) : malloc(size + PYNN_SMALL_HEADER);
    if (raw == NULL) return NULL;
    return pynn_tag(raw, raw + PYNN_SMALL_HEADER, size, PYNN_MAGIC_SMALL);
}

/* A fresh large block: room for the header, then aligned. calloc keeps the system's lazily
   zeroed pages for np.zeros of a size never seen before. */
static void* pynn_large_new(size_t capacity, int zero) {
    char* raw;
    uintptr_t p;
    size_t extra = 3 * sizeof(size_t) + PYNN_RECYCLE_ALIGN;
    if (capacity > SIZE_MAX - extra) return NULL;
    raw = zero ? calloc(1, capacity + extra) : malloc(capacity + extra);
    if (raw == NULL) return NULL;
    p = ((uintptr_t)raw + 3 * sizeof(size_t) + PYNN_RECYCLE_ALIGN - 1) & ~(PYNN_RECYCLE_ALIGN - 1);
    return pynn_tag(raw, (char*)p, capacity, PYNN_MAGIC_LARGE);
}

static size_t pynn_round(size_t size) {
    return (size + PYNN_RECYCLE_ROUND - 1) & ~(PYNN_RECYCLE_ROUND - 1);
}

/* The idle block that fits best: the smallest with capacity in [capacity, 2 * capacity),
   the most recently freed of equal ones; NULL if none. Taking a larger block (not only an
   exact one) lets a step reuse what an earlier layer of other sizes freed, as malloc would:
   with exact sizes only, the CNN benchmark peaked at 70 MiB, with best fit at 66 (49 with
   no pool: malloc also coalesces neighbours, which the pool does not). */
static void* pynn_take_idle(size_t capacity, size_t* got) {
    void* p = NULL;
    int i, best = -1;
    pthread_mutex_lock(&pynn_recycle_lock);
    for (i = pynn_idle_count - 1; i >= 0; i--) {
        size_t c = pynn_idle[i].capacity;
        if (c >= capacity && c / 2 < capacity &&
                (best < 0 || c < pynn_idle[best].capacity)) {
            best = i;
            if (c == capacity) break;
        }
    }
    if (best >= 0) {
        p = pynn_idle[best].ptr;
        *got = pynn_idle[best].capacity;
        memmove(pynn_idle + best, pynn_idle + best + 1,
                (size_t)(pynn_idle_count - best - 1) * sizeof(pynn_idle_block));
        pynn_idle_count--;
        pynn_idle_bytes -= *got;
        pynn_recycle_hits++;
    } else {
        pynn_recycle_misses++;
    }
    pthread_mutex_unlock(&pynn_recycle_lock);
    return p;
}

static void* pynn_recycle_malloc_impl(size_t size, int zero) {
    size_t capacity;
    void* p;
    if (size < PYNN_RECYCLE_MIN) return pynn_small_new(size, zero);
    if (size > SIZE_MAX - PYNN_RECYCLE_ROUND) return NULL;
    capacity = pynn_round(size);
    p = pynn_take_idle(capacity, &capacity);
    if (p != NULL) {
        if (zero) memset(p, 0, size);
        return p;
    }
    return pynn_large_new(capacity, zero);
}

static void pynn_release(void* p) {
    free((void*)(uintptr_t)pynn_header(p)[0]);
}

/* Into the pool, evicting the oldest idle blocks to stay under the limit (freed outside the
   lock); a block larger than the limit goes straight back. */
static void pynn_recycle_free(void* ctx, void* p, size_t size) {
    size_t* h;
    size_t capacity;
    void* evicted[PYNN_RECYCLE_SLOTS + 1];
    int nevicted = 0, i, keep;
    (void)ctx; (void)size;
    if (p == NULL) return;
    h = pynn_header(p);
    capacity = h[1];
    if (h[2] != PYNN_MAGIC_LARGE) {
        pynn_release(p);
        return;
    }
    pthread_mutex_lock(&pynn_recycle_lock);
    /* Outside every recycling() block a freed array goes back to the system at once: the
       pool serves loops of steps, not memory the program frees later at its own pace. */
    keep = pynn_recycle_scopes > 0 && capacity <= pynn_recycle_limit;
    if (keep) {
        i = 0;
        while (i < pynn_idle_count && (pynn_idle_count - i >= PYNN_RECYCLE_SLOTS ||
                                       pynn_idle_bytes + capacity > pynn_recycle_limit)) {
            evicted[nevicted++] = pynn_idle[i].ptr;
            pynn_idle_bytes -= pynn_idle[i].capacity;
            i++;
        }
        if (i) {
            memmove(pynn_idle, pynn_idle + i,
                    (size_t)(pynn_idle_count - i) * sizeof(pynn_idle_block));
            pynn_idle_count -= i;
        }
        pynn_idle[pynn_idle_count].ptr = p;
        pynn_idle[pynn_idle_count].capacity = capacity;
        pynn_idle_count++;
        pynn_idle_bytes += capacity;
    }
    pthread_mutex_unlock(&pynn_recycle_lock);
    for (i = 0; i < nevicted; i++) pynn_release(evicted[i]);
    if (!keep) pynn_release(p);
}

static void* pynn_recycle_malloc(void* ctx, size_t size) {
    (void)ctx;
    return pynn_recycle_malloc_impl(size, 0);
}

static void* pynn_recycle_calloc(void* ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    if (elsize != 0 && nelem > SIZE_MAX / elsize) return NULL;
    return pynn_recycle_malloc_impl(nelem * elsize, 1);
}

static void* pynn_recycle_realloc(void* ctx, void* p, size_t new_size) {
    size_t* h;
    size_t old;
    void* q;
    if (p == NULL) return pynn_recycle_malloc(ctx, new_size);
    h = pynn_header(p);
    old = h[1];
    if (h[2] == PYNN_MAGIC_SMALL && new_size < PYNN_RECYCLE_MIN) {
        char* raw;
        if (new_size > SIZE_MAX - PYNN_SMALL_HEADER) return NULL;
        raw = realloc((void*)(uintptr_t)h[0], new_size + PYNN_SMALL_HEADER);
        if (raw == NULL) return NULL;   /* the old block stays valid, as realloc promises */
        return pynn_tag(raw, raw + PYNN_SMALL_HEADER, new_size, PYNN_MAGIC_SMALL);
    }
    if (h[2] == PYNN_MAGIC_LARGE && new_size <= old && new_size >= old / 2) return p;
    q = pynn_recycle_malloc(ctx, new_size);
    if (q == NULL) return NULL;
    memcpy(q, p, old < new_size ? old : new_size);
    pynn_recycle_free(ctx, p, old);
    return q;
}

/* A child forked while another thread held the lock would wait on it forever at its first
   free: it starts with a fresh lock instead (the pool's contents stay valid, copied). */
static void pynn_recycle_after_fork_child(void) {
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pynn_recycle_lock = fresh;
}

static int pynn_recycle_init(void) {
    return pthread_atfork(NULL, NULL, pynn_recycle_after_fork_child);
}

/* Frees every idle block; returns the bytes given back. */
static size_t pynn_recycle_trim(void) {
    void* blocks[PYNN_RECYCLE_SLOTS];
    int n, i;
    size_t bytes;
    pthread_mutex_lock(&pynn_recycle_lock);
    n = pynn_idle_count;
    bytes = pynn_idle_bytes;
    for (i = 0; i < n; i++) blocks[i] = pynn_idle[i].ptr;
    pynn_idle_count = 0;
    pynn_idle_bytes = 0;
    pthread_mutex_unlock(&pynn_recycle_lock);
    for (i = 0; i < n; i++) pynn_release(blocks[i]);
    return bytes;
}

static void pynn_recycle_scope(int delta) {
    pthread_mutex_lock(&pynn_recycle_lock);
    pynn_recycle_scopes += delta;
    pthread_mutex_unlock(&pynn_recycle_lock);
}

/* A lower limit applies at once: the idle blocks go back (they are only a cache). */
static void pynn_recycle_set_limit(size_t limit) {
    int over;
    pthread_mutex_lock(&pynn_recycle_lock);
    pynn_recycle_limit = limit;
    over = pynn_idle_bytes > limit;
    pthread_mutex_unlock(&pynn_recycle_lock);
    if (over) pynn_recycle_trim();
}

static void pynn_recycle_stats(size_t* idle_bytes, int* idle_blocks, size_t* limit,
                               unsigned long long* hits, unsigned long long* misses) {
    pthread_mutex_lock(&pynn_recycle_lock);
    *idle_bytes = pynn_idle_bytes;
    *idle_blocks = pynn_idle_count;
    *limit = pynn_recycle_limit;
    *hits = pynn_recycle_hits;
    *misses = pynn_recycle_misses;
    pthread_mutex_unlock(&pynn_recycle_lock);
}

#endif
