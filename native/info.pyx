"""Build and runtime facts about the native extension, the OpenMP thread setting, and what
happens to OpenMP at fork.

Fork: GNU libgomp keeps each thread's worker team for reuse and has no fork handler, so a child
forked after a parallel region inherits a team whose threads do not exist, and its first region
waits for them forever. Importing this module installs a pthread_atfork prepare handler that
releases the forking thread's team first (``omp_pause_resource_all``, OpenMP 5.0, GCC >= 9;
the parent starts new threads at its next region, once per fork): the child starts
without a team and builds its own, with the parent's thread count. Where the runtime lacks
that call, the child handler sets the child to one OpenMP thread instead (PyTorch's answer to
the same libgomp limit), and ``forked_single()`` says so. LLVM's libomp has its own handler;
the pause is harmless there. Results do not change: no kernel splits work by thread count.
"""
from cython.parallel cimport prange
from _openmp cimport PYNN_HAVE_OPENMP, omp_get_max_threads, omp_set_num_threads

from cpython.pycapsule cimport PyCapsule_New

import numpy as np

include "_microkernel.pxi"


cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <time.h>
    static long long pynn_gettid(void) { return (long long)syscall(SYS_gettid); }
    static double pynn_wall_us(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
    }
    """
    long long pynn_gettid() noexcept nogil
    double pynn_wall_us() noexcept nogil


cdef extern from "_isa.h":
    int pynn_has_avx2() noexcept nogil
    int pynn_has_avx512() noexcept nogil
    int pynn_has_avx512vnni() noexcept nogil
    int pynn_has_avx512bf16() noexcept nogil
    int pynn_isa_available(int level) noexcept nogil
    int pynn_isa_best() noexcept nogil
    int pynn_isa_requested() noexcept nogil
    const char* pynn_isa_name(int level) noexcept nogil

cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define PYNN_ISA "avx512f"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define PYNN_ISA "avx2+fma"
    #elif defined(__AVX__)
    #define PYNN_ISA "avx"
    #elif defined(__SSE4_2__) && defined(__POPCNT__)
    #define PYNN_ISA "x86-64-v2"
    #else
    #define PYNN_ISA "baseline"
    #endif
    """
    const char* PYNN_ISA


cdef extern from *:
    """
    #include <dlfcn.h>
    #include <pthread.h>
    /* omp_pause_resource_all of the OpenMP runtime these kernels are linked with, looked up
       at run time: older omp.h headers do not declare it, older runtimes lack it. */
    typedef int (*pynn_omp_pause_fn)(int);
    #define PYNN_OMP_PAUSE_SOFT 1   /* omp_pause_soft: keeps the ICVs (the thread count) */
    static pynn_omp_pause_fn pynn_omp_pause = NULL;
    static int pynn_omp_release = 1;         /* 0: tests of the one-thread fallback */
    static int pynn_omp_paused = 0;          /* the last prepare handler released the team */
    static int pynn_omp_forked_single = 0;   /* this process is a child set to one thread */

    static void pynn_omp_fork_prepare(void) {
        pynn_omp_paused = pynn_omp_release && pynn_omp_pause != NULL
                          && pynn_omp_pause(PYNN_OMP_PAUSE_SOFT) == 0;
    }

    static void pynn_omp_fork_child(void) {
        if (PYNN_HAVE_OPENMP && !pynn_omp_paused) {
            omp_set_num_threads(1);
            pynn_omp_forked_single = 1;
        }
    }

    static int pynn_omp_fork_init(void) {
    #if PYNN_HAVE_OPENMP
        Dl_info info;
        void* lib;
        if (dladdr((void*)&omp_get_max_threads, &info) && info.dli_fname != NULL) {
            lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
            if (lib != NULL) {
                pynn_omp_pause = (pynn_omp_pause_fn)dlsym(lib, "omp_pause_resource_all");
                dlclose(lib);   /* a NOLOAD handle: this module keeps the runtime loaded */
            }
        }
    #endif
        return pthread_atfork(pynn_omp_fork_prepare, NULL, pynn_omp_fork_child);
    }
    """
    int pynn_omp_fork_init()
    int pynn_omp_forked_single
    void* pynn_omp_pause
    int pynn_omp_release


if pynn_omp_fork_init() != 0:
    raise RuntimeError("pynn._native.info: pthread_atfork failed")


cdef extern from "_warm.h":
    int pynn_warm_touch(int threads, double hold_s) noexcept nogil
    void pynn_warm_release() noexcept nogil
    void pynn_warm_after_fork_child() noexcept nogil
    int pynn_warm_started
    int pynn_warm_sleeping
    int pynn_warm_refused
    int PYNN_WARM_MAX

cdef extern from *:
    """
    static int pynn_warm_fork_init(void) {
        return pthread_atfork(NULL, NULL, pynn_warm_after_fork_child);
    }
    """
    int pynn_warm_fork_init()


if pynn_warm_fork_init() != 0:
    raise RuntimeError("pynn._native.info: pthread_atfork failed")


cdef extern from "_team.h":
    ctypedef void (*pynn_team_fn)(void* ctx, long begin, long end, int slot) noexcept nogil
    ctypedef struct pynn_team_api:
        int (*run)(long n, long grain, int threads, pynn_team_fn fn, void* ctx) noexcept nogil
        void (*counts)(long long* team_jobs, long long* serial_jobs) noexcept nogil
        int (*threads)() noexcept nogil
        int (*run_affine)(long n, int threads, pynn_team_fn fn, void* ctx) noexcept nogil
        int (*lane_threads)() noexcept nogil
        void (*lane_done)() noexcept nogil
    pynn_team_api pynn_team_table
    void pynn_team_set_threads(int n) noexcept nogil
    int pynn_team_lane_force


def _team_capsule():
    """The worker team's entry points (native/_team.h) for the other modules to bind."""
    return PyCapsule_New(<void*>&pynn_team_table, b"pynn.team", NULL)


def team_counts():
    """(jobs the worker team ran, jobs that found it busy and ran on their caller's thread)."""
    cdef long long ran = 0, serial = 0
    pynn_team_table.counts(&ran, &serial)
    return int(ran), int(serial)


cdef struct _TeamProbe:
    long* owner
    long long* tid
    long* slot
    double work_us


cdef void _team_probe_items(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _TeamProbe* probe = <_TeamProbe*>ctx
    cdef long i
    cdef long long me = pynn_gettid()
    cdef double t0
    for i in range(begin, end):
        probe.owner[i] += 1
        probe.tid[i] = me
        probe.slot[i] = slot
        t0 = pynn_wall_us()
        while pynn_wall_us() - t0 < probe.work_us:
            pass


def _team_probe(long n, long grain, int threads, double work_us=0.0, bint affine=False):
    """Test hook: runs a job of n items, each busy for work_us; (times each item ran, thread
    id that ran it, its team slot, workers the team had for it). affine: run_affine's job
    (grain one)."""
    if n < 0 or grain < 1 or threads < 1:
        raise ValueError(f"_team_probe: expected n >= 0, grain >= 1, threads >= 1, got {n}, "
                         f"{grain}, {threads}")
    owner = np.zeros(max(n, 1), dtype=np.int64)
    tid = np.zeros(max(n, 1), dtype=np.int64)
    slots = np.full(max(n, 1), -1, dtype=np.int64)
    cdef long[::1] ov = owner
    cdef long long[::1] tv = tid
    cdef long[::1] sv = slots
    cdef _TeamProbe probe
    probe.owner = &ov[0]
    probe.tid = &tv[0]
    probe.slot = &sv[0]
    probe.work_us = work_us
    cdef int workers
    with nogil:
        if affine:
            workers = pynn_team_table.run_affine(n, threads, _team_probe_items, &probe)
        else:
            workers = pynn_team_table.run(n, grain, threads, _team_probe_items, &probe)
    return owner[:n], tid[:n], slots[:n], workers


def warm_touch(int threads, double hold_s=0.1):
    """Keep `threads` idle-priority spinners (native/_warm.h) spinning for hold_s seconds
    from now, starting the missing ones; returns how many this process has."""
    if threads < 0 or not hold_s >= 0.0:
        raise ValueError(f"warm_touch: expected threads >= 0 and hold_s >= 0, got {threads}, "
                         f"{hold_s}")
    return pynn_warm_touch(threads, hold_s)


def warm_release():
    """Stop the spinners now: they block until the next warm_touch."""
    pynn_warm_release()


def warm_state():
    """(started, blocked, refused SCHED_IDLE) spinner threads of this process."""
    return pynn_warm_started, pynn_warm_sleeping, pynn_warm_refused


def fork_release():
    """Whether a fork now gives the child a fresh OpenMP team (False: one thread)."""
    return pynn_omp_pause != NULL and pynn_omp_release != 0


def forked_single():
    """True in a child forked while the runtime could not release the team: one thread."""
    return bool(pynn_omp_forked_single)


def _set_fork_release(bint on):
    """Tests only: off makes forks take the one-thread fallback, as without the pause call."""
    global pynn_omp_release
    pynn_omp_release = on


def openmp_enabled():
    return bool(PYNN_HAVE_OPENMP)


def get_max_threads():
    return omp_get_max_threads()


def set_num_threads(int n):
    """OpenMP's count for the calling thread."""
    if n < 1:
        raise ValueError(f"set_num_threads: expected n >= 1, got {n}")
    omp_set_num_threads(n)


def set_process_threads(int n):
    """pynn.set_num_threads's count, which the batch-1 lanes read from any thread
    (native/_team.h)."""
    if n < 1:
        raise ValueError(f"set_process_threads: expected n >= 1, got {n}")
    pynn_team_set_threads(n)


def _team_lane_force(bint on):
    """Test hook: a lane's split layer posts its job even while a worker sleeps (its
    caller then runs what the worker has not taken), so a test sees the split path run
    whatever else holds the machine's cores."""
    global pynn_team_lane_force
    pynn_team_lane_force = on


def process_threads():
    return pynn_team_table.threads()


cdef extern from *:
    """
    #include <time.h>
    static double pynn_now_us(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
    }
    """
    double pynn_now_us() noexcept nogil


cdef double _timed_region(double idle_us, int threads) noexcept nogil:
    """Microseconds one empty `threads`-thread region takes after `idle_us` of busy work on
    the calling thread alone (the Python between two ops of a training step)."""
    cdef double t0 = pynn_now_us(), t
    cdef int i
    cdef volatile int sink = 0
    while pynn_now_us() - t0 < idle_us:
        pass
    t = pynn_now_us()
    for i in prange(threads, schedule="static", num_threads=threads):
        sink = i
    return pynn_now_us() - t


def region_wakeup_us(double idle_us=50.0, int repeats=201):
    """(after idle_us, back to back): median microseconds of an empty parallel region on every
    thread, after idle_us of work on the calling thread alone, and in a run of regions back to
    back. The first is what each op of a training step pays to wake its sleeping
    workers when they stopped spinning (GOMP_SPINCOUNT) before it began; on the VMs pynn is
    measured on it is 60-100 us against 1-2 us back to back. (0.0, 0.0) with one thread."""
    cdef int threads = omp_get_max_threads(), r
    if threads < 2 or repeats < 1:
        return 0.0, 0.0
    cdef double[::1] idle = np.empty(repeats), hot = np.empty(repeats)
    with nogil:
        for r in range(repeats):
            idle[r] = _timed_region(idle_us, threads)
        for r in range(repeats):    # the team woken by the first few stays awake
            _timed_region(0.0, threads)
        for r in range(repeats):
            hot[r] = _timed_region(0.0, threads)
    return float(np.median(idle)), float(np.median(hot))


def microkernel():
    """The register-blocked microkernel (native/_microkernel.h) this module calls now: its
    level ("kernel": avx512, avx2 or generic), vector width in bytes, most rows per block and
    float32 panel columns; "build_isa": what the rest of the build was compiled for
    (-march), which the microkernel does not depend on."""
    return {"kernel": pynn_isa_name(pynn_mk_level()).decode(), "vector_bytes": PYNN_VBYTES,
            "rows": PYNN_MR_MAX, "panel_columns": PYNN_NC_F, "build_isa": PYNN_ISA.decode()}


def cpu_features():
    """The features run-time dispatch reads (native/_isa.h): each also needs the OS to save
    the registers it uses."""
    return {"avx2": bool(pynn_has_avx2()), "avx512": bool(pynn_has_avx512()),
            "avx512vnni": bool(pynn_has_avx512vnni()),
            "avx512bf16": bool(pynn_has_avx512bf16())}


def kernel_levels():
    """(name, level, this CPU runs it) for every microkernel level, lowest first; the best
    level this CPU runs; the level PYNN_KERNEL names (-1 unset, -2 another value)."""
    levels = [(pynn_isa_name(i).decode(), i, bool(pynn_isa_available(i))) for i in range(3)]
    return levels, pynn_isa_best(), pynn_isa_requested()


# -- test hooks: the microkernel entry points on NumPy arrays, no shape checks beyond
#    what keeps them in bounds (tests/test_isa.py checks them against float64) ---------------
def _seg_gemm(a, Py_ssize_t[::1] roff, Py_ssize_t[::1] aseg, Py_ssize_t sat, b,
              Py_ssize_t[::1] bseg, Py_ssize_t ldb, Py_ssize_t tn, c, init=None,
              bint accum=False, bint wide=False):
    """c[i, j] = start + sum_{s, t < tn} a[aseg[s] + roff[i] + t*sat] * b[bseg[s] + t*ldb + j]
    over c's rows and columns (a, b flat; c 2-D C-contiguous, written in place)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], nseg = aseg.shape[0], s, i
    if roff.shape[0] < m or bseg.shape[0] != nseg or c.strides[1] != c.itemsize:
        raise ValueError("_seg_gemm: roff shorter than c's rows, bseg and aseg differ, or "
                         "c's rows are not contiguous")
    if init is not None and init.shape[0] < n:
        raise ValueError("_seg_gemm: init shorter than c's columns")
    for s in range(nseg):
        for i in range(m):
            if tn > 0 and not (0 <= aseg[s] + roff[i] < a.shape[0]
                               and 0 <= aseg[s] + roff[i] + (tn - 1) * sat < a.shape[0]):
                raise ValueError("_seg_gemm: a read out of bounds")
        if tn > 0 and n > 0 and not (0 <= bseg[s] and bseg[s] + (tn - 1) * ldb + n
                                     <= b.shape[0]):
            raise ValueError("_seg_gemm: b read out of bounds")
    if c.dtype == np.float32:
        _seg_gemm_t[float](a, roff, aseg, sat, b, bseg, ldb, tn, c, init, accum, wide)
    else:
        _seg_gemm_t[double](a, roff, aseg, sat, b, bseg, ldb, tn, c, init, accum, wide)


ctypedef fused real:
    float
    double


cdef _seg_gemm_t(const real[::1] a, Py_ssize_t[::1] roff, Py_ssize_t[::1] aseg,
                 Py_ssize_t sat, const real[::1] b, Py_ssize_t[::1] bseg, Py_ssize_t ldb,
                 Py_ssize_t tn, real[:, ::1] c, init, bint accum, bint wide):
    cdef const real[::1] init_v
    cdef const real* ip = NULL
    if init is not None:
        init_v = init
        ip = &init_v[0]
    with nogil:
        if real is float:
            pynn_seg_gemm_f(c.shape[0], c.shape[1], aseg.shape[0], tn, &a[0], &roff[0],
                            &aseg[0], sat, &b[0], &bseg[0], ldb, &c[0, 0], c.shape[1], ip,
                            accum, wide)
        else:
            pynn_seg_gemm_d(c.shape[0], c.shape[1], aseg.shape[0], tn, &a[0], &roff[0],
                            &aseg[0], sat, &b[0], &bseg[0], ldb, &c[0, 0], c.shape[1], ip,
                            accum, wide)


def _rows_gemm(const real[:, ::1] a, const real[:, ::1] b, real[:, ::1] c,
               bint accum=False, bint transpose_a=False):
    """c (+)= a @ b, or a.T @ b with transpose_a (rows of the product at a stride of 1, k at
    a's row stride): the recurrent layers' product."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if transpose_a else a.shape[1]
    cdef Py_ssize_t sai = 1 if transpose_a else a.shape[1]
    cdef Py_ssize_t sak = a.shape[1] if transpose_a else 1
    if (a.shape[1] if transpose_a else a.shape[0]) != m or b.shape[0] != k or b.shape[1] != n:
        raise ValueError(f"_rows_gemm: shapes ({a.shape[0]}, {a.shape[1]}) "
                         f"({b.shape[0]}, {b.shape[1]}) -> ({m}, {n})")
    if m == 0 or n == 0:
        return
    with nogil:
        if real is float:
            pynn_rows_gemm_f(m, n, k, &a[0, 0] if k > 0 else NULL, sai, sak,
                             &b[0, 0] if k > 0 else NULL, n, &c[0, 0], n, accum)
        else:
            pynn_rows_gemm_d(m, n, k, &a[0, 0] if k > 0 else NULL, sai, sak,
                             &b[0, 0] if k > 0 else NULL, n, &c[0, 0], n, accum)


def _pack_panels(const real[:, ::1] b, real[::1] out):
    """b (k, n) into column panels of the chosen level's width (PYNN_NC_F / PYNN_NC_D)."""
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1]
    if out.shape[0] < k * n:
        raise ValueError("_pack_panels: out too small")
    if k * n == 0:
        return
    with nogil:
        if real is float:
            pynn_pack_panels_f(&b[0, 0], n, k, n, PYNN_NC_F, &out[0])
        else:
            pynn_pack_panels_d(&b[0, 0], n, k, n, PYNN_NC_D, &out[0])
