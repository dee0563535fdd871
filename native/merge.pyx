"""Merge kernels: Keras 3's Add, Subtract, Multiply, Average, Maximum, Minimum (one n-ary
elementwise op), Concatenate and Dot.

Legend: N batch, E elements of one input, n inputs; Dot sees x1 as (N, P, K, Q) and x2 as
(N, R, K, S) around the summed axis K, y as (N, P*Q, R*S).

Design:
- Elementwise merges fold the inputs left to right, as Keras's layers do (``((x0 + x1) + x2)``,
  average divides the sum by n), so float32 results round as Keras's. The flat elements are
  cut into CHUNK-sized blocks run by prange; within a block the loop over elements is
  innermost, so each fold step is one vectorizable pass.
- Inputs of different shapes broadcast by Keras's merge rule: each one that differs is first
  expanded to the output's shape (the fold then reads the values Keras's pairwise broadcast
  does), and its gradient is summed back over the broadcast axes (one thread per element of
  the input, a fixed order).
- Their backward needs no scratch: multiply's prefix products and maximum/minimum's running
  extreme before step k are first written into dx_k, then one sweep from the last input back
  turns them into gradients, carrying the running upstream gradient in dx_0. Each fold step
  of maximum/minimum takes torch's rule (what Keras 3 on torch differentiates): a tie gives
  each side half, a NaN gives both all.
- Concatenate copies rows: each input is ``outer`` rows of ``size_k * inner`` elements; one
  thread copies every input's piece of an output row (the rows on pynn's worker team, as
  Dot's rows and columns below).
- Dot is a strided batched product, one thread per output row (n, i), accumulating in double;
  its backward gathers: a thread owns a row (n, i) of dx1 or (n, j) of dx2, so no two threads
  write one element; it adds one product term at a time into its zeroed row (the loop over
  the summed axis at constant strides, which vectorizes where they are 1). normalize=True
  normalizes copies first and chains the normalization's gradient after (keras.ops.normalize:
  x * min(rsqrt(sum x^2), 1/eps)).
Outputs are fresh arrays; nothing accumulates into caller memory.
"""
import numpy as np

cimport numpy as cnp

from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.string cimport memcpy
from _activation cimport ACT_LINEAR, act_forward_vec
from _openmp cimport omp_get_max_threads

from pynn.backend.api import ACTIVATIONS
from pynn.backend.operands import merge as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double


# Below this much work a kernel runs on the calling thread: waking the OpenMP team (~80 us
# with passive waiters) costs more than a memory-bound pass; 2 threads first paid for a
# 2-input add at ~1 Mi elements (see ACT_PARALLEL_MIN in _activation.pxd).
cdef enum:
    PARALLEL_MIN = 1048576
    CHUNK = 4096  # elements per elementwise task: a few pages of each input
    # The same as jobs of pynn's worker team, whose master never waits for a late worker.
    TEAM_PARALLEL_MIN = 65536

cdef enum Mode:
    ADD, SUBTRACT, MULTIPLY, AVERAGE, MAXIMUM, MINIMUM

MODE_CODES = {"add": ADD, "subtract": SUBTRACT, "multiply": MULTIPLY, "average": AVERAGE,
              "maximum": MAXIMUM, "minimum": MINIMUM}


cdef inline floating _maximum(floating a, floating b) noexcept nogil:
    """torch.maximum: a NaN on either side wins."""
    return a if (a > b or a != a) else b


cdef inline floating _minimum(floating a, floating b) noexcept nogil:
    return a if (a < b or a != a) else b


cdef inline floating _share(floating a, floating x, bint loses) noexcept nogil:
    """torch's maximum / minimum backward for one side of a fold step: 0 where that side
    loses, half on a tie, else all (a NaN compares false, so both sides get all). Arithmetic
    on the comparisons, no branches, so the back sweep's loop vectorizes as the others do."""
    return <floating>(not loses) - <floating>0.5 * (a == x)


cdef inline floating* _at(const Py_ssize_t* ptrs, Py_ssize_t k, floating* like) noexcept nogil:
    """Input k of a pointer table (``like`` only picks the fused type)."""
    return <floating*><void*>ptrs[k]


cdef void _fold_chunk(const Py_ssize_t* xs, floating* y, Py_ssize_t n, int mode,
                      Py_ssize_t e0, Py_ssize_t e1) noexcept nogil:
    cdef Py_ssize_t e, k
    cdef const floating* x = _at(xs, 0, y)
    for e in range(e0, e1):
        y[e] = x[e]
    for k in range(1, n):
        x = _at(xs, k, y)
        if mode == ADD or mode == AVERAGE:
            for e in range(e0, e1):
                y[e] = y[e] + x[e]
        elif mode == SUBTRACT:
            for e in range(e0, e1):
                y[e] = y[e] - x[e]
        elif mode == MULTIPLY:
            for e in range(e0, e1):
                y[e] = y[e] * x[e]
        elif mode == MAXIMUM:
            for e in range(e0, e1):
                y[e] = _maximum(y[e], x[e])
        else:
            for e in range(e0, e1):
                y[e] = _minimum(y[e], x[e])
    if mode == AVERAGE:
        for e in range(e0, e1):
            y[e] = y[e] / <floating>n


cdef void _unfold_chunk(const floating* dy, const Py_ssize_t* xs, const Py_ssize_t* dxs,
                        Py_ssize_t n, int mode, Py_ssize_t e0, Py_ssize_t e1) noexcept nogil:
    """dx_k of a fold; see the design note for the in-place prefix and back sweep."""
    cdef Py_ssize_t e, k
    cdef floating* d0 = _at(dxs, 0, <floating*>dy)
    cdef floating* d
    cdef const floating* prev
    cdef const floating* x
    cdef floating a, v
    if mode == ADD or mode == SUBTRACT or mode == AVERAGE:
        for k in range(n):
            d = _at(dxs, k, d0)
            if mode == AVERAGE:
                for e in range(e0, e1):
                    d[e] = dy[e] / <floating>n
            elif mode == SUBTRACT and k == 1:
                for e in range(e0, e1):
                    d[e] = -dy[e]
            else:
                for e in range(e0, e1):
                    d[e] = dy[e]
        return
    # Forward sweep: dx_k holds the running value before step k (x0 fold ... x_{k-1}).
    for k in range(1, n):
        d = _at(dxs, k, d0)
        x = _at(xs, k - 1, d0)
        prev = _at(dxs, k - 1, d0)
        if k == 1:
            for e in range(e0, e1):
                d[e] = x[e]
        elif mode == MULTIPLY:
            for e in range(e0, e1):
                d[e] = prev[e] * x[e]
        elif mode == MAXIMUM:
            for e in range(e0, e1):
                d[e] = _maximum(prev[e], x[e])
        else:
            for e in range(e0, e1):
                d[e] = _minimum(prev[e], x[e])
    # Back sweep: dx_0 carries the gradient reaching the running value of step k.
    for e in range(e0, e1):
        d0[e] = dy[e]
    for k in range(n - 1, 0, -1):
        d = _at(dxs, k, d0)
        x = _at(xs, k, d0)
        if mode == MULTIPLY:
            for e in range(e0, e1):
                a = d[e]
                d[e] = d0[e] * a
                d0[e] = d0[e] * x[e]
        elif mode == MAXIMUM:
            for e in range(e0, e1):
                a = d[e]
                v = x[e]
                d[e] = d0[e] * _share(a, v, a > v)
                d0[e] = d0[e] * _share(a, v, a < v)
        else:
            for e in range(e0, e1):
                a = d[e]
                v = x[e]
                d[e] = d0[e] * _share(a, v, a < v)
                d0[e] = d0[e] * _share(a, v, a > v)


ctypedef struct _MergeJob:
    bint is_double
    const Py_ssize_t* xs
    const Py_ssize_t* dxs
    const void* dy
    void* y
    Py_ssize_t E, n
    int mode, act
    double alpha


cdef inline void _merge_forward_chunk(const _MergeJob* j, floating* yp,
                                      Py_ssize_t t) noexcept nogil:
    cdef Py_ssize_t lo = t * CHUNK, hi = min(t * CHUNK + CHUNK, j.E)
    _fold_chunk(j.xs, yp, j.n, j.mode, lo, hi)
    if j.act != ACT_LINEAR:
        act_forward_vec(yp + lo, yp + lo, hi - lo, j.act, <floating>j.alpha)


cdef void _merge_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _MergeJob* j = <_MergeJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _merge_forward_chunk(j, <double*>j.y, t)
        else:
            _merge_forward_chunk(j, <float*>j.y, t)


cdef void _merge_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _MergeJob* j = <_MergeJob*>ctx
    cdef long t
    for t in range(begin, end):
        if j.is_double:
            _unfold_chunk(<const double*>j.dy, j.xs, j.dxs, j.n, j.mode, t * CHUNK,
                          min(t * CHUNK + CHUNK, j.E))
        else:
            _unfold_chunk(<const float*>j.dy, j.xs, j.dxs, j.n, j.mode, t * CHUNK,
                          min(t * CHUNK + CHUNK, j.E))


cdef inline void _merge_run(_MergeJob* job, pynn_team_fn fn) noexcept nogil:
    """The fixed chunks on pynn's worker team (native/_team.h)."""
    cdef Py_ssize_t tasks = (job.E + CHUNK - 1) // CHUNK
    cdef int threads = omp_get_max_threads() if job.E * job.n >= TEAM_PARALLEL_MIN else 1
    pynn_team_for(tasks, team_grain(tasks, threads), threads, fn, job)


def _merge_forward(const Py_ssize_t[::1] xs, floating[::1] y, int mode, int act=ACT_LINEAR,
                   double alpha=0.0):
    """y = act(fold of the inputs), each chunk's activation while it is in cache."""
    cdef _MergeJob job
    job.is_double, job.xs, job.y, job.E, job.n = floating is double, &xs[0], &y[0], \
        y.shape[0], xs.shape[0]
    job.mode, job.act, job.alpha = mode, act, alpha
    with nogil:
        _merge_run(&job, _merge_forward_job)


def _merge_backward(const floating[::1] dy, const Py_ssize_t[::1] xs,
                    const Py_ssize_t[::1] dxs, int mode):
    cdef _MergeJob job
    job.is_double, job.dy, job.xs, job.dxs, job.E, job.n = floating is double, &dy[0], \
        &xs[0], &dxs[0], dy.shape[0], xs.shape[0]
    job.mode = mode
    with nogil:
        _merge_run(&job, _merge_backward_job)


ctypedef struct _BroadcastJob:
    bint is_double
    const void* src
    void* dst
    const Py_ssize_t* dims       # _broadcast_to: the output dims; _sum_to: the input's
    const Py_ssize_t* strides    # _broadcast_to: in_strides; _sum_to: out_strides
    const Py_ssize_t* bdims      # _sum_to: the broadcast axes' dims and strides
    const Py_ssize_t* bstrides
    Py_ssize_t R, NB, L, step, passes


cdef inline void _broadcast_rows(const _BroadcastJob* j, const floating* small, long begin,
                                 long end) noexcept nogil:
    """Output rows [begin, end): each row's start decoded once, then a constant stride."""
    cdef floating* full = <floating*>j.dst
    cdef Py_ssize_t d, rest, at, e, L = j.L
    cdef long row
    for row in range(begin, end):
        rest = row
        at = 0
        for d in range(j.R - 2, -1, -1):
            at = at + (rest % j.dims[d]) * j.strides[d]
            rest = rest // j.dims[d]
        for e in range(L):
            full[row * L + e] = small[at + e * j.step]


cdef inline void _sum_outputs(const _BroadcastJob* j, const floating* full, long begin,
                              long end) noexcept nogil:
    """Small elements [begin, end): each adds its sources in row-major order, in double."""
    cdef floating* small = <floating*>j.dst
    cdef Py_ssize_t d, b, e, rest, base, at
    cdef double acc
    cdef long s
    for s in range(begin, end):
        rest = s
        base = 0
        for d in range(j.R - 1, -1, -1):
            base = base + (rest % j.dims[d]) * j.strides[d]
            rest = rest // j.dims[d]
        acc = 0
        for b in range(j.passes):
            rest = b
            at = base
            for d in range(j.NB - 2, -1, -1):
                at = at + (rest % j.bdims[d]) * j.bstrides[d]
                rest = rest // j.bdims[d]
            for e in range(j.L):
                acc = acc + full[at + e * j.step]
        small[s] = <floating>acc


cdef void _broadcast_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BroadcastJob* j = <_BroadcastJob*>ctx
    if j.is_double:
        _broadcast_rows(j, <const double*>j.src, begin, end)
    else:
        _broadcast_rows(j, <const float*>j.src, begin, end)


cdef void _sum_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _BroadcastJob* j = <_BroadcastJob*>ctx
    if j.is_double:
        _sum_outputs(j, <const double*>j.src, begin, end)
    else:
        _sum_outputs(j, <const float*>j.src, begin, end)


def _broadcast_to(const floating[::1] small, floating[::1] full, const Py_ssize_t[::1] dims,
                  const Py_ssize_t[::1] in_strides):
    """full = small read through in_strides (0 on broadcast axes), one output row (all axes
    but the last) per item, on pynn's worker team."""
    cdef _BroadcastJob job
    cdef Py_ssize_t R = dims.shape[0], rows
    cdef int threads = omp_get_max_threads() if full.shape[0] >= PARALLEL_MIN else 1
    job.is_double, job.src, job.dst, job.dims, job.strides = floating is double, &small[0], \
        &full[0], &dims[0], &in_strides[0]
    job.R, job.L, job.step = R, dims[R - 1], in_strides[R - 1]
    rows = full.shape[0] // job.L
    with nogil:
        pynn_team_for(rows, team_grain(rows, threads), threads, _broadcast_job, &job)


def _sum_to(const floating[::1] full, floating[::1] small, const Py_ssize_t[::1] in_dims,
            const Py_ssize_t[::1] out_strides, const Py_ssize_t[::1] bcast_dims,
            const Py_ssize_t[::1] bcast_strides):
    """small[s] = the sum of full over the broadcast axes: one item owns each small element
    and adds its sources in row-major order, in double; the last broadcast axis is the inner
    loop (a constant stride), the others are decoded once per pass over it. The elements on
    pynn's worker team."""
    cdef _BroadcastJob job
    cdef Py_ssize_t S = small.shape[0], NB = bcast_dims.shape[0], d
    cdef int threads
    job.is_double, job.src, job.dst = floating is double, &full[0], &small[0]
    job.R, job.NB = in_dims.shape[0], NB
    job.dims = &in_dims[0] if job.R else NULL   # (a 0-d result has no axes to decode)
    job.strides = &out_strides[0] if job.R else NULL
    job.bdims = &bcast_dims[0] if NB else NULL
    job.bstrides = &bcast_strides[0] if NB else NULL
    job.L, job.step, job.passes = 1, 0, 1
    if NB:
        job.L, job.step = bcast_dims[NB - 1], bcast_strides[NB - 1]
    for d in range(NB - 1):
        job.passes = job.passes * bcast_dims[d]
    threads = omp_get_max_threads() if S * job.passes * job.L >= PARALLEL_MIN else 1
    with nogil:
        pynn_team_for(S, team_grain(S, threads), threads, _sum_job, &job)


def _plan_arrays(plan, *keys):
    return [np.array(plan[k], dtype=np.intp) for k in keys]


def _expanded(x, out_shape):
    """x as an array of out_shape (a copy where it broadcasts): Keras broadcasts at each fold
    step, which reads the same values."""
    if tuple(x.shape) == tuple(out_shape):
        return x
    full = np.empty(out_shape, dtype=x.dtype)
    if full.size:
        plan = operands.broadcast_plan(x.shape, out_shape)
        _broadcast_to(x.reshape(-1), full.reshape(-1), *_plan_arrays(plan, "dims", "in_strides"))
    return full


def _summed_to(full, shape):
    """The gradient of out_shape summed back over the axes its input broadcast along."""
    if tuple(full.shape) == tuple(shape):
        return full
    small = np.empty(shape, dtype=full.dtype)
    if small.size:
        plan = operands.broadcast_plan(shape, full.shape)
        _sum_to(full.reshape(-1), small.reshape(-1),
                *_plan_arrays(plan, "in_dims", "out_strides", "bcast_dims", "bcast_strides"))
    return small


def _pointers(list arrays):
    """The data addresses of C-contiguous arrays, for the kernels' pointer tables (read in
    C: ``a.ctypes.data`` cost 1.5 us an array, most of a small Add's time)."""
    cdef Py_ssize_t n = len(arrays), k
    out = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] view = out
    for k in range(n):
        view[k] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray?>arrays[k])
    return out


def merge_forward(inputs, mode, activation="linear", alpha=0.0):
    """The inputs folded left to right by ``mode`` (Keras's merge layers), broadcast by
    Keras's merge rule where their shapes differ, then ``activation`` in the same pass."""
    xs, mode, out_shape, (act_name, act_alpha) = operands.merge_forward(HOST, inputs, mode,
                                                                        activation, alpha)
    xs = [_expanded(x, out_shape) for x in xs]
    y = np.empty(out_shape, dtype=xs[0].dtype)
    if y.size:
        _merge_forward(_pointers(xs), y.reshape(-1), MODE_CODES[mode],
                       ACTIVATIONS.index(act_name), act_alpha)
    return y


def merge_backward(dy, inputs, mode):
    """A tuple of dx_k shaped like each input (torch's tie rule for maximum/minimum; a
    broadcast input's gradient summed over the axes it was broadcast along)."""
    dy, xs, mode, out_shape = operands.merge_backward(HOST, dy, inputs, mode)
    full = [_expanded(x, out_shape) for x in xs]
    dxs = [np.empty(out_shape, dtype=dy.dtype) for _ in xs]
    if dy.size:
        _merge_backward(dy.reshape(-1), _pointers(full), _pointers(dxs), MODE_CODES[mode])
    return tuple(_summed_to(dx, x.shape) for dx, x in zip(dxs, xs))


# -- concatenate ----------------------------------------------------------------------------

ctypedef struct _ConcatJob:
    bint gather
    char* big
    const Py_ssize_t* parts
    const Py_ssize_t* widths
    Py_ssize_t n, whole


cdef void _concat_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _ConcatJob* j = <_ConcatJob*>ctx
    cdef Py_ssize_t k, off
    cdef long o
    for o in range(begin, end):
        off = 0
        for k in range(j.n):
            if j.gather:
                memcpy(j.big + o * j.whole + off, <char*><void*>j.parts[k] + o * j.widths[k],
                       j.widths[k])
            else:
                memcpy(<char*><void*>j.parts[k] + o * j.widths[k], j.big + o * j.whole + off,
                       j.widths[k])
            off = off + j.widths[k]


def _concat_rows(const Py_ssize_t[::1] parts, const Py_ssize_t[::1] widths, Py_ssize_t whole,
                 Py_ssize_t[::1] out, bint gather):
    """gather: out[0] row o = the parts' rows o side by side (concatenate_forward); else each
    part's row o is cut from out[0] (backward). Widths and strides in bytes. Rows on pynn's
    worker team."""
    cdef _ConcatJob job
    cdef Py_ssize_t rows = out[1]
    cdef int threads = omp_get_max_threads() if rows * whole >= PARALLEL_MIN * 4 else 1
    job.gather, job.big, job.parts, job.widths = gather, <char*><void*>out[0], &parts[0], \
        &widths[0]
    job.n, job.whole = parts.shape[0], whole
    with nogil:
        pynn_team_for(rows, team_grain(rows, threads), threads, _concat_job, &job)


def concatenate_forward(inputs, axis):
    """The inputs joined along ``axis``; every other axis must match."""
    xs, (a, outer, inner, sizes) = operands.concatenate_forward(HOST, inputs, axis)
    shape = list(xs[0].shape)
    shape[a] = sum(sizes)
    y = np.empty(shape, dtype=xs[0].dtype)
    if y.size:
        item = y.itemsize
        widths = np.array([s * inner * item for s in sizes], dtype=np.intp)
        _concat_rows(_pointers(xs), widths, int(widths.sum()),
                     np.array([y.ctypes.data, outer], dtype=np.intp), True)
    return y


def concatenate_backward(dy, sizes, axis):
    """A tuple of dy's slices along ``axis``, sizes[k] long, as fresh arrays."""
    dy, (a, outer, inner, sizes) = operands.concatenate_backward(HOST, dy, sizes, axis)
    dxs = []
    for s in sizes:
        shape = list(dy.shape)
        shape[a] = s
        dxs.append(np.empty(shape, dtype=dy.dtype))
    if dy.size:
        item = dy.itemsize
        widths = np.array([s * inner * item for s in sizes], dtype=np.intp)
        _concat_rows(_pointers(dxs), widths, int(widths.sum()),
                     np.array([dy.ctypes.data, outer], dtype=np.intp), False)
    return tuple(dxs)


# -- dot ------------------------------------------------------------------------------------

cdef struct DotGeom:
    Py_ssize_t N, P, K, Q, R, S


ctypedef struct _DotJob:
    bint is_double
    int kind             # 0 forward rows, 1 da rows, 2 db columns
    const void* x        # a (forward), dy (the backwards)
    const void* other    # b (forward, da), a (db)
    void* out
    DotGeom g


cdef inline void _dot_items(const _DotJob* d, const floating* x, long begin,
                            long end) noexcept nogil:
    """Rows (n, i) of y or da, or columns (n, j) of db: each owned by one thread."""
    cdef const floating* o = <const floating*>d.other
    cdef floating* out = <floating*>d.out
    cdef const DotGeom* g = &d.g
    cdef Py_ssize_t I = g.P * g.Q, J = g.R * g.S, n, i, j, k, ab, bb
    cdef double acc
    cdef floating grad
    cdef long t
    for t in range(begin, end):
        if d.kind == 2:
            n = t // J
            j = t % J
            bb = ((n * g.R + j // g.S) * g.K) * g.S + j % g.S
            for i in range(I):
                grad = x[(n * I + i) * J + j]
                ab = ((n * g.P + i // g.Q) * g.K) * g.Q + i % g.Q
                for k in range(g.K):
                    out[bb + k * g.S] += grad * o[ab + k * g.Q]
            continue
        n = t // I
        i = t % I
        ab = ((n * g.P + i // g.Q) * g.K) * g.Q + i % g.Q
        for j in range(J):
            bb = ((n * g.R + j // g.S) * g.K) * g.S + j % g.S
            if d.kind == 0:
                acc = 0
                for k in range(g.K):
                    acc = acc + <double>x[ab + k * g.Q] * o[bb + k * g.S]
                out[t * J + j] = <floating>acc
            else:
                grad = x[t * J + j]
                for k in range(g.K):
                    out[ab + k * g.Q] += grad * o[bb + k * g.S]


cdef void _dot_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _DotJob* d = <_DotJob*>ctx
    if d.is_double:
        _dot_items(d, <const double*>d.x, begin, end)
    else:
        _dot_items(d, <const float*>d.x, begin, end)


cdef void _dot_run(_DotJob* d) noexcept nogil:
    """On pynn's worker team (native/_team.h), or the calling thread when small."""
    cdef const DotGeom* g = &d.g
    cdef Py_ssize_t I = g.P * g.Q, J = g.R * g.S
    cdef long items = g.N * J if d.kind == 2 else g.N * I
    cdef int threads = omp_get_max_threads() if g.N * I * J * g.K >= PARALLEL_MIN else 1
    pynn_team_for(items, team_grain(items, threads), threads, _dot_job, d)


def _dot_forward(const floating[::1] a, const floating[::1] b, floating[::1] y, DotGeom g):
    """y[n, i, j] = sum_k a[n, p, k, q] * b[n, r, k, s], i = p*Q + q, j = r*S + s."""
    cdef _DotJob d
    d.is_double, d.kind, d.x, d.other, d.out, d.g = floating is double, 0, &a[0], &b[0], \
        &y[0], g
    with nogil:
        _dot_run(&d)


def _dot_backward_x1(const floating[::1] dy, const floating[::1] b, floating[::1] da,
                     DotGeom g):
    """da[n, p, k, q] += sum_j dy[n, i, j] * b[n, r, k, s] (da comes zeroed): a thread owns
    a row (n, i) and adds one j at a time, so the loop over k runs at constant strides."""
    cdef _DotJob d
    d.is_double, d.kind, d.x, d.other, d.out, d.g = floating is double, 1, &dy[0], &b[0], \
        &da[0], g
    with nogil:
        _dot_run(&d)


def _dot_backward_x2(const floating[::1] dy, const floating[::1] a, floating[::1] db,
                     DotGeom g):
    """db[n, r, k, s] += sum_i dy[n, i, j] * a[n, p, k, q] (db comes zeroed): a thread owns
    a column (n, j), one i at a time."""
    cdef _DotJob d
    d.is_double, d.kind, d.x, d.other, d.out, d.g = floating is double, 2, &dy[0], &a[0], \
        &db[0], g
    with nogil:
        _dot_run(&d)


cdef inline double _inv_norm(const floating* x, Py_ssize_t K, Py_ssize_t stride,
                             double eps) noexcept nogil:
    """min(rsqrt(sum x^2), 1/eps) of the K values x[k * stride]."""
    cdef Py_ssize_t k
    cdef double ss = 0
    for k in range(K):
        ss = ss + <double>x[k * stride] * x[k * stride]
    # rsqrt(0) is inf: the cap 1/eps takes over, as min() does in Keras.
    if ss <= eps * eps:
        return 1 / eps
    return 1 / sqrt(ss)


def _l2_normalize(const floating[::1] x, floating[::1] xhat, Py_ssize_t M, Py_ssize_t K,
                  Py_ssize_t Q, double eps):
    """x seen as (M, K, Q): each (m, q) vector along K scaled by min(rsqrt(sum x^2), 1/eps)."""
    cdef Py_ssize_t v, k, base
    cdef double inv
    for v in prange(M * Q, schedule="static", nogil=True, use_threads_if=M * Q * K >= PARALLEL_MIN):
        base = (v // Q) * K * Q + v % Q
        inv = _inv_norm(&x[base], K, Q, eps)
        for k in range(K):
            xhat[base + k * Q] = <floating>(x[base + k * Q] * inv)


def _l2_normalize_backward(const floating[::1] x, const floating[::1] g, floating[::1] dx,
                           Py_ssize_t M, Py_ssize_t K, Py_ssize_t Q, double eps):
    """dx of xhat = x * inv from g = d/dxhat: inv * (g - xhat * <g, xhat>) while the norm is
    above eps; g * inv where the cap holds inv constant."""
    cdef Py_ssize_t v, k, base
    cdef double inv, proj, cap = 1 / eps
    for v in prange(M * Q, schedule="static", nogil=True, use_threads_if=M * Q * K >= PARALLEL_MIN):
        base = (v // Q) * K * Q + v % Q
        inv = _inv_norm(&x[base], K, Q, eps)
        proj = 0
        if inv < cap:
            for k in range(K):
                proj = proj + <double>g[base + k * Q] * x[base + k * Q]
            proj = proj * inv * inv
        for k in range(K):
            dx[base + k * Q] = <floating>(inv * (g[base + k * Q] - x[base + k * Q] * proj))


def _dot_geom(g):
    return dict(N=g["N"], P=g["P"], K=g["K"], Q=g["Q"], R=g["R"], S=g["S"])


def _normalized(x, M, K, Q):
    out = np.empty_like(x)
    if x.size:
        _l2_normalize(x.reshape(-1), out.reshape(-1), M, K, Q, operands.NORMALIZE_EPSILON)
    return out


def dot_forward(x1, x2, axes, normalize=False):
    """Keras's Dot: batch_dot(x1, x2, axes), each input L2-normalized along its axis first
    when ``normalize``."""
    x1, x2, g, normalize = operands.dot_forward(HOST, x1, x2, axes, normalize)
    if normalize:
        x1 = _normalized(x1, g["N"] * g["P"], g["K"], g["Q"])
        x2 = _normalized(x2, g["N"] * g["R"], g["K"], g["S"])
    y = np.empty(g["out_shape"], dtype=x1.dtype)
    if y.size:
        _dot_forward(x1.reshape(-1), x2.reshape(-1), y.reshape(-1), _dot_geom(g))
    return y


def dot_backward(dy, x1, x2, axes, normalize=False):
    """(dx1, dx2) of dot_forward, the normalization's gradient included."""
    dy, x1, x2, g, normalize = operands.dot_backward(HOST, dy, x1, x2, axes, normalize)
    a, b = x1, x2
    if normalize:
        a = _normalized(x1, g["N"] * g["P"], g["K"], g["Q"])
        b = _normalized(x2, g["N"] * g["R"], g["K"], g["S"])
    da = np.zeros(x1.shape, dtype=x1.dtype)
    db = np.zeros(x2.shape, dtype=x2.dtype)
    if dy.size:
        geom = _dot_geom(g)
        _dot_backward_x1(dy.reshape(-1), b.reshape(-1), da.reshape(-1), geom)
        _dot_backward_x2(dy.reshape(-1), a.reshape(-1), db.reshape(-1), geom)
    if normalize:
        eps = operands.NORMALIZE_EPSILON
        dx1, dx2 = np.empty_like(da), np.empty_like(db)
        if da.size:
            _l2_normalize_backward(x1.reshape(-1), da.reshape(-1), dx1.reshape(-1),
                                   g["N"] * g["P"], g["K"], g["Q"], eps)
        if db.size:
            _l2_normalize_backward(x2.reshape(-1), db.reshape(-1), dx2.reshape(-1),
                                   g["N"] * g["R"], g["K"], g["S"], eps)
        return dx1, dx2
    return da, db
