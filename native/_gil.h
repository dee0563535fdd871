/* Handing the GIL between Python threads that share a model's batch-1 lane (issue 16).

   A lane call is ~1 us of Python and ~10 us of native arithmetic with the GIL released. Two
   threads calling one model overlap their arithmetic, but whenever one comes back from its
   native part while the other holds the GIL, CPython puts it to sleep on the GIL's condition
   variable, and the holder's release wakes it through an inter-processor interrupt: 18-38 us
   on the virtual machines pynn was measured on (the team's wake-up, native/_team.h), longer
   than the arithmetic it should overlap. Two threads on the MLP's lane gained x1.15.

   So a lane thread that holds the GIL between its native parts says so here (the time it took
   the GIL), and one coming back from its native part while another lane thread holds it
   waits by spinning, GIL released, until that holder enters its own native part and clears
   the mark: then its PyEval_RestoreThread finds the GIL free and takes it without sleeping,
   and the releasing thread signals no sleeper. The spin is bounded: a holder that kept the
   GIL longer than PYNN_GIL_SPIN_NS (application code between calls, a blocking call that
   released the GIL without passing here) is waited for the ordinary way, so no thread spins
   longer than the wake-up it saves, and threads not on a lane see no change. */
#ifndef PYNN_GIL_H
#define PYNN_GIL_H

#include <Python.h>
#include <time.h>

#define PYNN_GIL_SPIN_NS 30000LL

/* CLOCK_MONOTONIC ns when a lane thread took the GIL back; 0 when none holds it. */
static long long pynn_gil_lane_since = 0;

static inline long long pynn_gil_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec;
}

/* Releases the GIL for a lane's native part (the caller holds it). */
static inline PyThreadState* pynn_gil_release(void) {
    PyThreadState* state = PyEval_SaveThread();
    /* cleared after the release, so a spinner that sees 0 finds the GIL free */
    __atomic_store_n(&pynn_gil_lane_since, 0LL, __ATOMIC_RELEASE);
    return state;
}

/* Takes the GIL back after a lane's native part. */
static inline void pynn_gil_acquire(PyThreadState* state) {
    long long since = __atomic_load_n(&pynn_gil_lane_since, __ATOMIC_ACQUIRE);
    if (since) {
        long long now = pynn_gil_now();
        while (since && now - since < PYNN_GIL_SPIN_NS) {
            for (int i = 0; i < 32; i++) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
            since = __atomic_load_n(&pynn_gil_lane_since, __ATOMIC_ACQUIRE);
            now = pynn_gil_now();
        }
    }
    PyEval_RestoreThread(state);
    __atomic_store_n(&pynn_gil_lane_since, pynn_gil_now(), __ATOMIC_RELEASE);
}

#endif
