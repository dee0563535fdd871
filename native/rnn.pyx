"""Recurrent layer kernels: SimpleRNN, LSTM and GRU with Keras 3's cell equations.

Legend: N batch, T time steps, C input features, U units, G = k*U gate columns (k = 1 for
SimpleRNN, 4 for LSTM with gates i, f, c, o, 3 for GRU with gates z, r, h).
x (N, T, C); kernel (C, G); recurrent_kernel (U, G); bias (G,) or, for GRU with
reset_after, (2, G) = (input bias, recurrent bias). The initial state is zero.

Time order: step s (0..T-1) reads the input at time tx = s, or tx = T-1-s with go_backwards.
Everything indexed by the input (gate buffers, their gradients) sits at tx; everything the
recurrence produces (h_seq, the LSTM cell states) sits at s, the order Keras returns the
sequence in (go_backwards does not flip the output back).

Where the time goes, and how it is split:
  - The input side is one BLAS GEMM over all N*T rows: (N*T, C) @ (C, G) forward; at the end
    of backward dkernel = x^T @ dZ, dx = dZ @ kernel^T, and d(recurrent_kernel) =
    h_prev^T @ dZ also as ONE GEMM over N*T rows (h_prev: h_seq shifted one step, built by a
    copy), the bias gradient a column sum of dZ.
  - The recurrence is independent per sample. Batch rows are cut into fixed blocks of
    ROWS rows and prange hands whole blocks to threads; a thread runs all T steps of its block:
    per step a small GEMM h_{s-1} @ recurrent_kernel for its rows (``_rows_mm``, plain loops
    the compiler vectorizes, accumulated into that step's gate rows) and ONE fused pass that
    adds the bias, applies the gate activations, updates the cell and writes h. Backward is
    the mirror image: a fused pass turns dh (upstream + carried) into the pre-activation
    gradients dZ of the step, then dh_{s-1} = dZ_s @ recurrent_kernel^T for the block's rows.
    Keeping BLAS out of the time loop matters: a BLAS thread pool and OpenMP threads handing
    two cores back and forth 2*T times per call cost far more than the arithmetic.
The gate buffer ends up holding the activated gates: that is the cache backward reads.

Determinism: every output element is summed in a fixed order by exactly one thread, and the
row blocks do not depend on the thread count, so results are bit-identical for any number
of threads. Activation derivatives come from the activation's output (``_activation.pxd``),
so softmax and gelu are not offered; leaky_relu and elu use Keras's defaults (0.2 and 1.0).
Gradients come back as fresh arrays (nothing accumulates into caller memory).
"""
import numpy as np

from cython.parallel cimport prange
from _blas cimport gemm_rowmajor, floating
from _activation cimport act_value, act_grad

from pynn.backend._validate import activation_name, as_float_array, check_shape
from pynn.backend.api import ACTIVATIONS

# Activations whose derivative the kernels take from the output, with Keras's default alpha
# for the string form ("leaky_relu" -> negative_slope 0.2, "elu" -> alpha 1.0).
RNN_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu",
                   "softplus")
_DEFAULT_ALPHA = {"leaky_relu": 0.2, "elu": 1.0}
_INT_MAX = 2**31 - 1

cdef enum:
    # Batch rows per block of the recurrence: the unit of work a thread owns, and the rows
    # that share each loaded row of the recurrent kernel in _rows_mm.
    ROWS = 4


# -- shared helpers --------------------------------------------------------------------------

cdef inline void _mm(bint ta, bint tb, int m, int n, int k, const floating* a, int lda,
                     const floating* b, int ldb, floating beta, floating* c,
                     int ldc) noexcept nogil:
    """C = op(A) @ op(B) + beta * C through BLAS (row-major, leading dimensions as strides).

    An empty reduction (k = 0) still honours beta, which BLAS would reject for lda = 0."""
    cdef int i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            for i in range(m):
                for j in range(n):
                    c[i * ldc + j] = 0
        return
    gemm_rowmajor(ta, tb, m, n, k, <floating>1, a, lda, b, ldb, beta, c, ldc)


cdef inline void _rows_mm(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t n, const floating* a,
                          Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                          Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """c[r, :n] (+)= a[r, :k] @ b[:k, :n] for the few rows of one block, inside one thread.

    Four rows share each loaded row of b; the j loops are contiguous and vectorize. Every
    output sums k in ascending order whatever the row count, so a row's result does not
    depend on which block it falls in."""
    cdef Py_ssize_t r, kk, j
    cdef floating a0, a1, a2, a3
    cdef floating* c0
    cdef floating* c1
    cdef floating* c2
    cdef floating* c3
    cdef const floating* bk
    if not accumulate:
        for r in range(rows):
            for j in range(n):
                c[r * ldc + j] = 0
    r = 0
    while r + 4 <= rows:
        c0 = c + r * ldc
        c1 = c0 + ldc
        c2 = c1 + ldc
        c3 = c2 + ldc
        for kk in range(k):
            a0 = a[r * lda + kk]
            a1 = a[(r + 1) * lda + kk]
            a2 = a[(r + 2) * lda + kk]
            a3 = a[(r + 3) * lda + kk]
            bk = b + kk * ldb
            for j in range(n):
                c0[j] = c0[j] + a0 * bk[j]
                c1[j] = c1[j] + a1 * bk[j]
                c2[j] = c2[j] + a2 * bk[j]
                c3[j] = c3[j] + a3 * bk[j]
        r = r + 4
    while r < rows:
        c0 = c + r * ldc
        for kk in range(k):
            a0 = a[r * lda + kk]
            bk = b + kk * ldb
            for j in range(n):
                c0[j] = c0[j] + a0 * bk[j]
        r = r + 1


cdef void _column_sums(const floating* a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                       floating* out) noexcept nogil:
    """out[j] = sum_r a[r, j]: whole column blocks per thread, rows in order (reproducible)."""
    cdef Py_ssize_t blk, r, j, j0, j1
    cdef Py_ssize_t block = 64
    cdef Py_ssize_t nblk = (cols + block - 1) // block
    for blk in prange(nblk, schedule="static", nogil=True):
        j0 = blk * block
        j1 = j0 + block
        if j1 > cols:
            j1 = cols
        for j in range(j0, j1):
            out[j] = 0
        for r in range(rows):
            for j in range(j0, j1):
                out[j] = out[j] + a[r * ld + j]


cdef inline floating _at(const floating* p, Py_ssize_t i) noexcept nogil:
    """p[i], or 0 for a NULL row pointer (the zero initial state, an absent gradient)."""
    return p[i] if p != NULL else 0


cdef inline Py_ssize_t _tx(Py_ssize_t s, Py_ssize_t t_len, bint backwards) noexcept nogil:
    return t_len - 1 - s if backwards else s


def _act(op, what, name):
    act = activation_name(op, name)
    if act not in RNN_ACTIVATIONS:
        raise ValueError(f"{op}: {what} {name!r} is not supported by the recurrent kernels; "
                         f"expected one of {RNN_ACTIVATIONS}")
    return ACTIVATIONS.index(act), _DEFAULT_ALPHA.get(act, 0.0)


def _inputs(op, x, kernel, recurrent_kernel, gates):
    """Validated (x, kernel, recurrent_kernel, units) sharing x's float dtype."""
    x = as_float_array(op, "x", x, ndim=3)
    kernel = as_float_array(op, "kernel", kernel, ndim=2, dtype=x.dtype)
    recurrent_kernel = as_float_array(op, "recurrent_kernel", recurrent_kernel, ndim=2,
                                      dtype=x.dtype)
    units = recurrent_kernel.shape[0]
    check_shape(op, "recurrent_kernel", recurrent_kernel, (units, gates * units))
    check_shape(op, "kernel", kernel, (x.shape[2], gates * units))
    n, t, c = x.shape
    biggest = max(n * t * max(c, gates * units), gates * units * max(c, units))
    if biggest > _INT_MAX:
        raise ValueError(f"{op}: {biggest} elements in one operand exceed the int32 indexing "
                         f"of BLAS (x shape {x.shape}, units {units})")
    return x, kernel, recurrent_kernel, units


def _bias(op, bias, shape, dtype):
    """The bias as given, or zeros when None (the kernels always add one)."""
    if bias is None:
        return np.zeros(shape, dtype=dtype)
    bias = as_float_array(op, "bias", bias, ndim=len(shape), dtype=dtype)
    check_shape(op, "bias", bias, shape)
    return bias


def _flag(op, name, value):
    if not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{op}: '{name}' must be a bool, got {value!r}")
    return bool(value)


def _cache(op, cache, shapes, dtype):
    """Check the cache a forward op returned against the shapes backward expects."""
    if not isinstance(cache, (tuple, list)) or len(cache) != len(shapes):
        raise ValueError(f"{op}: 'cache' must be the tuple of {len(shapes)} arrays the forward "
                         f"op returned, got {type(cache).__name__}")
    out = []
    for i, (a, shape) in enumerate(zip(cache, shapes)):
        a = as_float_array(op, f"cache[{i}]", a, ndim=len(shape))
        if a.dtype != dtype:
            raise TypeError(f"{op}: cache[{i}] has dtype {a.dtype}, x has {dtype}")
        check_shape(op, f"cache[{i}]", a, shape)
        out.append(a)
    return out


def _upstream(op, dy, n, t, units, return_sequences, dtype):
    """dy as (N, T, U) for return_sequences, else (N, U): the gradient of the last output."""
    want = (n, t, units) if return_sequences else (n, units)
    dy = as_float_array(op, "dy", dy, ndim=len(want), dtype=dtype)
    check_shape(op, "dy", dy, want)
    return dy


cdef inline const floating* _dy_row(const floating* dy, bint full, Py_ssize_t s,
                                    Py_ssize_t t_len, Py_ssize_t units) noexcept nogil:
    """Row 0's upstream gradient at step s (NULL where there is none)."""
    if full:
        return dy + s * units
    return dy if s == t_len - 1 else NULL


def _last_step(h_seq, return_sequences):
    if return_sequences:
        return h_seq
    n, t, units = h_seq.shape
    if t == 0:
        return np.zeros((n, units), dtype=h_seq.dtype)
    return np.ascontiguousarray(h_seq[:, t - 1])


def _n_blocks(n):
    return (n + ROWS - 1) // ROWS


def _shift_prev(const floating[:, :, ::1] h, floating[:, :, ::1] hp, bint backwards):
    """hp[n, tx(s)] = h[n, s-1] (zero at s = 0): the state each step's gate rows multiplied,
    aligned with dZ so d(recurrent_kernel) is one GEMM."""
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2], i, s, j, tx
    for i in prange(n, schedule="static", nogil=True):
        for s in range(t_len):
            tx = _tx(s, t_len, backwards)
            for j in range(u):
                hp[i, tx, j] = h[i, s - 1, j] if s > 0 else 0


def _gemm_tn(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
             Py_ssize_t b_col, Py_ssize_t c_col, Py_ssize_t cols):
    """c[:, c_col:c_col+cols] = a^T @ b[:, b_col:b_col+cols] over all rows of a and b."""
    cdef int rows = a.shape[0], m = a.shape[1]
    if rows == 0 or m == 0 or cols == 0:
        return
    with nogil:
        _mm(True, False, m, <int>cols, rows, &a[0, 0], m, &b[0, 0] + b_col, <int>b.shape[1],
            <floating>0, &c[0, 0] + c_col, <int>c.shape[1])


def _grads_gemm(const floating[:, ::1] x, const floating[:, ::1] kernel,
                const floating[:, ::1] dz, floating[:, ::1] dkernel, floating[:, ::1] dx):
    cdef int rows = x.shape[0], c = x.shape[1], g = dz.shape[1]
    cdef bint want_dx = dx is not None
    with nogil:
        _mm(True, False, c, g, rows, &x[0, 0], c, &dz[0, 0], g, <floating>0,
            &dkernel[0, 0], g)
        if want_dx:
            _mm(False, True, rows, c, g, &dz[0, 0], g, &kernel[0, 0], g, <floating>0,
                &dx[0, 0], c)


def _bias_grad(const floating[:, ::1] dz, floating[::1] out):
    with nogil:
        _column_sums(&dz[0, 0], dz.shape[0], dz.shape[1], dz.shape[1], &out[0])


def _column_sum(dz):
    """Sum of dz (N, T, G) over N and T."""
    n, t, g = dz.shape
    out = np.zeros(g, dtype=dz.dtype)
    if n * t and g:
        _bias_grad(dz.reshape(n * t, g), out)
    return out


def _project(const floating[:, ::1] x, const floating[:, ::1] kernel, floating[:, ::1] p):
    """p = x @ kernel over all N*T rows (the input side of every step at once)."""
    cdef int rows = x.shape[0], c = x.shape[1], g = kernel.shape[1]
    with nogil:
        _mm(False, False, rows, g, c, &x[0, 0], c, &kernel[0, 0], g, <floating>0, &p[0, 0], g)


def _forward_input(x, kernel, gates):
    n, t, c = x.shape
    _project(x.reshape(n * t, c), kernel, gates.reshape(n * t, gates.shape[2]))


def _backward_input(x, kernel, h_seq, dz, dz_rec, drk, go_backwards, need_input_grad):
    """(dx or None, dkernel, dbias of dz) and drk = h_prev^T @ dz_rec, all over N*T rows.

    dz_rec (the recurrent side's pre-activation gradients) is dz except for GRU with
    reset_after; None means drk was filled by the caller."""
    n, t, c = x.shape
    g = dz.shape[2]
    dkernel = np.zeros(kernel.shape, dtype=x.dtype)
    dx = np.zeros(x.shape, dtype=x.dtype) if need_input_grad else None
    if n * t == 0:
        return dx, dkernel, np.zeros(g, dtype=x.dtype)
    _grads_gemm(x.reshape(n * t, c), kernel, dz.reshape(n * t, g), dkernel,
                None if dx is None else dx.reshape(n * t, c))
    dbias = _column_sum(dz)
    if dz_rec is not None:
        h_prev = np.empty_like(h_seq)
        _shift_prev(h_seq, h_prev, go_backwards)
        _gemm_tn(h_prev.reshape(n * t, h_seq.shape[2]), dz_rec.reshape(n * t, g), drk, 0, 0,
                 g)
    return dx, dkernel, dbias


# -- SimpleRNN ------------------------------------------------------------------------------

cdef void _simple_step_forward(const floating* p, const floating* bias, floating* h,
                               Py_ssize_t rows, Py_ssize_t ld, Py_ssize_t units, int act,
                               floating alpha) noexcept nogil:
    cdef Py_ssize_t n, j
    for n in range(rows):
        for j in range(units):
            h[n * ld + j] = act_value(p[n * ld + j] + bias[j], act, alpha)


cdef void _simple_step_backward(const floating* dy, Py_ssize_t dy_ld, const floating* h,
                                const floating* dh_next, floating* dz, Py_ssize_t rows,
                                Py_ssize_t ld, Py_ssize_t units, int act,
                                floating alpha) noexcept nogil:
    cdef Py_ssize_t n, j
    for n in range(rows):
        for j in range(units):
            dz[n * ld + j] = act_grad(dh_next[n * units + j] + _at(dy, n * dy_ld + j),
                                      <floating>0, h[n * ld + j], act, alpha)


def _simple_rnn_forward(const floating[:, ::1] rk, const floating[::1] bias,
                        floating[:, :, ::1] p, floating[:, :, ::1] h, int act, double alpha,
                        bint backwards):
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, ld = t_len * u
    cdef floating* pp
    cdef floating* hp
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        pp = &p[r0, 0, 0]
        hp = &h[r0, 0, 0]
        for s in range(t_len):
            tx = _tx(s, t_len, backwards)
            if s > 0:
                _rows_mm(rows, u, u, hp + (s - 1) * u, ld, &rk[0, 0], u, pp + tx * u, ld, True)
            _simple_step_forward(pp + tx * u, &bias[0], hp + s * u, rows, ld, u, act,
                                 <floating>alpha)


def _simple_rnn_backward(const floating[:, ::1] dy, bint full, const floating[:, ::1] rk_t,
                         const floating[:, :, ::1] h, floating[:, :, ::1] dz,
                         floating[:, ::1] dh_next, int act, double alpha, bint backwards):
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, ld = t_len * u, dy_ld = dy.shape[1]
    cdef floating* zp
    cdef floating* dhn
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        zp = &dz[r0, 0, 0]
        dhn = &dh_next[r0, 0]
        for s in range(t_len - 1, -1, -1):
            tx = _tx(s, t_len, backwards)
            _simple_step_backward(_dy_row(&dy[r0, 0], full, s, t_len, u), dy_ld,
                                  &h[r0, s, 0], dhn, zp + tx * u, rows, ld, u, act,
                                  <floating>alpha)
            if s > 0:
                _rows_mm(rows, u, u, zp + tx * u, ld, &rk_t[0, 0], u, dhn, u, False)


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                       return_sequences=False, go_backwards=False):
    """h_t = act(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias) -> (y, cache).

    y is h_seq (N, T, U) with return_sequences, else the last output (N, U); cache = (h_seq,).
    """
    op = "simple_rnn_forward"
    act, alpha = _act(op, "activation", activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 1)
    bias = _bias(op, bias, (units,), x.dtype)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    n, t, _ = x.shape
    h_seq = np.zeros((n, t, units), dtype=x.dtype)
    if n * t * units:
        p = np.empty((n, t, units), dtype=x.dtype)
        _forward_input(x, kernel, p)
        _simple_rnn_forward(recurrent_kernel, bias, p, h_seq, act, alpha, go_backwards)
    return _last_step(h_seq, return_sequences), (h_seq,)


def simple_rnn_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                        return_sequences=False, go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias); dy is (N, T, U) with
    return_sequences, else (N, U)."""
    op = "simple_rnn_backward"
    act, alpha = _act(op, "activation", activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 1)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    need_input_grad = _flag(op, "need_input_grad", need_input_grad)
    n, t, _ = x.shape
    dy = _upstream(op, dy, n, t, units, return_sequences, x.dtype)
    (h_seq,) = _cache(op, cache, [(n, t, units)], x.dtype)
    dz = np.zeros((n, t, units), dtype=x.dtype)
    drk = np.zeros(recurrent_kernel.shape, dtype=x.dtype)
    if n * t * units:
        dh_next = np.zeros((n, units), dtype=x.dtype)
        _simple_rnn_backward(dy.reshape(n, -1), return_sequences,
                             np.ascontiguousarray(recurrent_kernel.T), h_seq, dz, dh_next, act,
                             alpha, go_backwards)
    dx, dkernel, dbias = _backward_input(x, kernel, h_seq, dz, dz, drk, go_backwards,
                                         need_input_grad)
    return dx, dkernel, drk, dbias


# -- LSTM -----------------------------------------------------------------------------------

cdef void _lstm_step_forward(floating* g, const floating* bias, const floating* c_prev,
                             floating* c, floating* h, Py_ssize_t rows, Py_ssize_t g_ld,
                             Py_ssize_t ld, Py_ssize_t u, int act, floating a1, int ract,
                             floating a2) noexcept nogil:
    """g holds x_t @ W + h_{t-1} @ R; it leaves holding the activated gates i, f, c~, o."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    cdef floating gi, gf, gc, go, cn
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gi = act_value(gr[j] + bias[j], ract, a2)
            gf = act_value(gr[u + j] + bias[u + j], ract, a2)
            gc = act_value(gr[2 * u + j] + bias[2 * u + j], act, a1)
            go = act_value(gr[3 * u + j] + bias[3 * u + j], ract, a2)
            cn = gf * _at(c_prev, n * ld + j) + gi * gc
            gr[j] = gi
            gr[u + j] = gf
            gr[2 * u + j] = gc
            gr[3 * u + j] = go
            c[n * ld + j] = cn
            h[n * ld + j] = go * act_value(cn, act, a1)


cdef void _lstm_step_backward(const floating* dy, Py_ssize_t dy_ld, const floating* g,
                              const floating* c_prev, const floating* c,
                              const floating* dh_next, floating* dc_next, floating* dz,
                              Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u,
                              int act, floating a1, int ract, floating a2) noexcept nogil:
    """dz = pre-activation gradients of the four gates; dc_next becomes dc_{t-1}."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef floating* zr
    cdef floating gi, gf, gc, go, cn, tc, dh, dc
    for n in range(rows):
        gr = g + n * g_ld
        zr = dz + n * g_ld
        for j in range(u):
            gi = gr[j]
            gf = gr[u + j]
            gc = gr[2 * u + j]
            go = gr[3 * u + j]
            cn = c[n * ld + j]
            tc = act_value(cn, act, a1)
            dh = dh_next[n * u + j] + _at(dy, n * dy_ld + j)
            dc = dc_next[n * u + j] + act_grad(dh * go, cn, tc, act, a1)
            zr[j] = act_grad(dc * gc, <floating>0, gi, ract, a2)
            zr[u + j] = act_grad(dc * _at(c_prev, n * ld + j), <floating>0, gf, ract, a2)
            zr[2 * u + j] = act_grad(dc * gi, <floating>0, gc, act, a1)
            zr[3 * u + j] = act_grad(dh * tc, <floating>0, go, ract, a2)
            dc_next[n * u + j] = dc * gf


def _lstm_forward(const floating[:, ::1] rk, const floating[::1] bias, floating[:, :, ::1] g,
                  floating[:, :, ::1] c, floating[:, :, ::1] h, int act, double a1, int ract,
                  double a2, bint backwards):
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, g4 = 4 * u, ld = t_len * u, g_ld = t_len * 4 * u
    cdef floating* gp
    cdef floating* cp
    cdef floating* hp
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        gp = &g[r0, 0, 0]
        cp = &c[r0, 0, 0]
        hp = &h[r0, 0, 0]
        for s in range(t_len):
            tx = _tx(s, t_len, backwards)
            if s > 0:
                _rows_mm(rows, u, g4, hp + (s - 1) * u, ld, &rk[0, 0], g4, gp + tx * g4, g_ld,
                         True)
            _lstm_step_forward(gp + tx * g4, &bias[0], cp + (s - 1) * u if s > 0 else NULL,
                               cp + s * u, hp + s * u, rows, g_ld, ld, u, act, <floating>a1,
                               ract, <floating>a2)


def _lstm_backward(const floating[:, ::1] dy, bint full, const floating[:, ::1] rk_t,
                   const floating[:, :, ::1] g, const floating[:, :, ::1] c,
                   floating[:, :, ::1] dz, floating[:, ::1] dh_next, floating[:, ::1] dc_next,
                   int act, double a1, int ract, double a2, bint backwards):
    cdef Py_ssize_t n = c.shape[0], t_len = c.shape[1], u = c.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, g4 = 4 * u, ld = t_len * u, g_ld = t_len * 4 * u
    cdef Py_ssize_t dy_ld = dy.shape[1]
    cdef const floating* cp
    cdef floating* zp
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        cp = &c[r0, 0, 0]
        zp = &dz[r0, 0, 0]
        for s in range(t_len - 1, -1, -1):
            tx = _tx(s, t_len, backwards)
            _lstm_step_backward(_dy_row(&dy[r0, 0], full, s, t_len, u), dy_ld, &g[r0, tx, 0],
                                cp + (s - 1) * u if s > 0 else NULL, cp + s * u,
                                &dh_next[r0, 0], &dc_next[r0, 0], zp + tx * g4, rows, g_ld,
                                ld, u, act, <floating>a1, ract, <floating>a2)
            if s > 0:
                _rows_mm(rows, g4, u, zp + tx * g4, g_ld, &rk_t[0, 0], u, &dh_next[r0, 0], u,
                         False)


def lstm_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False):
    """Keras's LSTM (gates i, f, c, o) -> (y, cache).

    y is h_seq (N, T, U) with return_sequences, else the last output (N, U);
    cache = (h_seq, gates (N, T, 4U) activated, at the input's time index, c_seq (N, T, U)).
    """
    op = "lstm_forward"
    act, a1 = _act(op, "activation", activation)
    ract, a2 = _act(op, "recurrent_activation", recurrent_activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 4)
    bias = _bias(op, bias, (4 * units,), x.dtype)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    n, t, _ = x.shape
    h_seq = np.zeros((n, t, units), dtype=x.dtype)
    gates = np.zeros((n, t, 4 * units), dtype=x.dtype)
    c_seq = np.zeros((n, t, units), dtype=x.dtype)
    if n * t * units:
        _forward_input(x, kernel, gates)
        _lstm_forward(recurrent_kernel, bias, gates, c_seq, h_seq, act, a1, ract, a2,
                      go_backwards)
    return _last_step(h_seq, return_sequences), (h_seq, gates, c_seq)


def lstm_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                  recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                  need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias (4U,))."""
    op = "lstm_backward"
    act, a1 = _act(op, "activation", activation)
    ract, a2 = _act(op, "recurrent_activation", recurrent_activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 4)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    need_input_grad = _flag(op, "need_input_grad", need_input_grad)
    n, t, _ = x.shape
    dy = _upstream(op, dy, n, t, units, return_sequences, x.dtype)
    h_seq, gates, c_seq = _cache(op, cache, [(n, t, units), (n, t, 4 * units), (n, t, units)],
                                 x.dtype)
    dz = np.zeros((n, t, 4 * units), dtype=x.dtype)
    drk = np.zeros(recurrent_kernel.shape, dtype=x.dtype)
    if n * t * units:
        dh_next = np.zeros((n, units), dtype=x.dtype)
        dc_next = np.zeros((n, units), dtype=x.dtype)
        _lstm_backward(dy.reshape(n, -1), return_sequences,
                       np.ascontiguousarray(recurrent_kernel.T), gates, c_seq, dz, dh_next,
                       dc_next, act, a1, ract, a2, go_backwards)
    dx, dkernel, dbias = _backward_input(x, kernel, h_seq, dz, dz, drk, go_backwards,
                                         need_input_grad)
    return dx, dkernel, drk, dbias


# -- GRU ------------------------------------------------------------------------------------
# reset_after=True: rh = h_{t-1} @ R_h + b_rh is kept (it multiplies r), and one small GEMM
# per step gives h_{t-1} @ R for all three gates. reset_after=False: r applies before the
# product, so a step is GEMM (z, r) -> pass -> GEMM ((r*h) @ R_h) -> pass, and the cache keeps
# rh = r * h_{t-1}, the left operand of d(R_h).

cdef void _gru_step_forward_after(floating* g, const floating* srec, const floating* b_in,
                                  const floating* b_rec, const floating* h_prev, floating* rh,
                                  floating* h, Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                  Py_ssize_t u, int act, floating a1, int ract,
                                  floating a2) noexcept nogil:
    """g holds x_t @ W and leaves holding z, r, hh; srec = h_{t-1} @ R (NULL at step 0)."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    cdef floating gz, gr_, rec, hh
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gz = act_value(gr[j] + b_in[j] + _at(srec, n * 3 * u + j) + b_rec[j], ract, a2)
            gr_ = act_value(gr[u + j] + b_in[u + j] + _at(srec, n * 3 * u + u + j)
                            + b_rec[u + j], ract, a2)
            rec = _at(srec, n * 3 * u + 2 * u + j) + b_rec[2 * u + j]
            hh = act_value(gr[2 * u + j] + b_in[2 * u + j] + gr_ * rec, act, a1)
            gr[j] = gz
            gr[u + j] = gr_
            gr[2 * u + j] = hh
            rh[n * ld + j] = rec
            h[n * ld + j] = gz * _at(h_prev, n * ld + j) + (1 - gz) * hh


cdef void _gru_step_forward_gates(floating* g, const floating* srec, const floating* b_in,
                                  const floating* h_prev, floating* rh, Py_ssize_t rows,
                                  Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u, int ract,
                                  floating a2) noexcept nogil:
    """reset_after=False, first pass: z, r into g and rh = r * h_{t-1}."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    cdef floating gr_
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gr[j] = act_value(gr[j] + b_in[j] + _at(srec, n * 3 * u + j), ract, a2)
            gr_ = act_value(gr[u + j] + b_in[u + j] + _at(srec, n * 3 * u + u + j), ract, a2)
            gr[u + j] = gr_
            rh[n * ld + j] = gr_ * _at(h_prev, n * ld + j)


cdef void _gru_step_forward_out(floating* g, const floating* srec, const floating* b_in,
                                const floating* h_prev, floating* h, Py_ssize_t rows,
                                Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u, int act,
                                floating a1) noexcept nogil:
    """reset_after=False, second pass: srec[:, 2U:] = rh @ R_h (srec NULL at step 0)."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    cdef floating gz, hh
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gz = gr[j]
            hh = act_value(gr[2 * u + j] + b_in[2 * u + j] + _at(srec, n * 3 * u + 2 * u + j),
                           act, a1)
            gr[2 * u + j] = hh
            h[n * ld + j] = gz * _at(h_prev, n * ld + j) + (1 - gz) * hh


cdef void _gru_step_backward_after(const floating* dy, Py_ssize_t dy_ld, const floating* g,
                                   const floating* rh, const floating* h_prev,
                                   floating* dh_next, floating* dzi, floating* dzr,
                                   Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                   Py_ssize_t u, int act, floating a1, int ract,
                                   floating a2) noexcept nogil:
    """dzi: gradients of the input-side pre-activations; dzr: of the recurrent-side ones
    (they differ in the h gate, scaled by r); dh_next becomes the direct term dh * z."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef floating gz, gr_, hh, dh, dah, daz, dar
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gz = gr[j]
            gr_ = gr[u + j]
            hh = gr[2 * u + j]
            dh = dh_next[n * u + j] + _at(dy, n * dy_ld + j)
            dah = act_grad(dh * (1 - gz), <floating>0, hh, act, a1)
            daz = act_grad(dh * (_at(h_prev, n * ld + j) - hh), <floating>0, gz, ract, a2)
            dar = act_grad(dah * rh[n * ld + j], <floating>0, gr_, ract, a2)
            dzi[n * g_ld + j] = daz
            dzi[n * g_ld + u + j] = dar
            dzi[n * g_ld + 2 * u + j] = dah
            dzr[n * g_ld + j] = daz
            dzr[n * g_ld + u + j] = dar
            dzr[n * g_ld + 2 * u + j] = dah * gr_
            dh_next[n * u + j] = dh * gz


cdef void _gru_step_backward_out(const floating* dy, Py_ssize_t dy_ld, const floating* g,
                                 const floating* h_prev, floating* dh_next, floating* dz,
                                 Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                 Py_ssize_t u, int act, floating a1, int ract,
                                 floating a2) noexcept nogil:
    """reset_after=False, first pass: the z and h gate gradients; dh_next = dh * z."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef floating gz, hh, dh
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gz = gr[j]
            hh = gr[2 * u + j]
            dh = dh_next[n * u + j] + _at(dy, n * dy_ld + j)
            dz[n * g_ld + j] = act_grad(dh * (_at(h_prev, n * ld + j) - hh), <floating>0, gz,
                                        ract, a2)
            dz[n * g_ld + 2 * u + j] = act_grad(dh * (1 - gz), <floating>0, hh, act, a1)
            dh_next[n * u + j] = dh * gz


cdef void _gru_step_backward_gates(const floating* g, const floating* drh,
                                   const floating* h_prev, floating* dh_next, floating* dz,
                                   Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                   Py_ssize_t u, int ract, floating a2) noexcept nogil:
    """reset_after=False, second pass: drh = d(r * h_{t-1}) gives the r gate gradient and
    the r-scaled part of dh_{t-1} (drh and h_prev are NULL at step 0)."""
    cdef Py_ssize_t n, j
    cdef floating gr_, d
    for n in range(rows):
        for j in range(u):
            gr_ = g[n * g_ld + u + j]
            d = _at(drh, n * u + j)
            dz[n * g_ld + u + j] = act_grad(d * _at(h_prev, n * ld + j), <floating>0, gr_,
                                            ract, a2)
            dh_next[n * u + j] = dh_next[n * u + j] + d * gr_


def _gru_forward(const floating[:, ::1] rk, const floating[:, ::1] bias, bint reset_after,
                 floating[:, :, ::1] g, floating[:, :, ::1] rh, floating[:, :, ::1] h,
                 floating[:, ::1] srec, int act, double a1, int ract, double a2,
                 bint backwards):
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, g3 = 3 * u, ld = t_len * u, g_ld = t_len * 3 * u
    cdef floating* gp
    cdef floating* rp
    cdef floating* hp
    cdef floating* sp
    cdef const floating* h_prev
    cdef const floating* b_in = &bias[0, 0]
    cdef const floating* b_rec = &bias[1, 0] if reset_after else NULL
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        gp = &g[r0, 0, 0]
        rp = &rh[r0, 0, 0]
        hp = &h[r0, 0, 0]
        sp = &srec[r0, 0]
        for s in range(t_len):
            tx = _tx(s, t_len, backwards)
            h_prev = hp + (s - 1) * u if s > 0 else NULL
            if reset_after:
                if s > 0:
                    _rows_mm(rows, u, g3, h_prev, ld, &rk[0, 0], g3, sp, g3, False)
                _gru_step_forward_after(gp + tx * g3, sp if s > 0 else NULL, b_in, b_rec,
                                        h_prev, rp + tx * u, hp + s * u, rows, g_ld, ld, u,
                                        act, <floating>a1, ract, <floating>a2)
            else:
                if s > 0:
                    _rows_mm(rows, u, 2 * u, h_prev, ld, &rk[0, 0], g3, sp, g3, False)
                _gru_step_forward_gates(gp + tx * g3, sp if s > 0 else NULL, b_in, h_prev,
                                        rp + tx * u, rows, g_ld, ld, u, ract, <floating>a2)
                if s > 0:
                    _rows_mm(rows, u, u, rp + tx * u, ld, &rk[0, 2 * u], g3, sp + 2 * u, g3,
                             False)
                _gru_step_forward_out(gp + tx * g3, sp if s > 0 else NULL, b_in, h_prev,
                                      hp + s * u, rows, g_ld, ld, u, act, <floating>a1)


def _gru_backward(const floating[:, ::1] dy, bint full, const floating[:, ::1] rk_t,
                  bint reset_after, const floating[:, :, ::1] h, const floating[:, :, ::1] g,
                  const floating[:, :, ::1] rh, floating[:, :, ::1] dzi,
                  floating[:, :, ::1] dzr, floating[:, ::1] dh_next, floating[:, ::1] drh,
                  int act, double a1, int ract, double a2, bint backwards):
    cdef Py_ssize_t n = h.shape[0], t_len = h.shape[1], u = h.shape[2]
    cdef Py_ssize_t blk, r0, rows, s, tx, g3 = 3 * u, ld = t_len * u, g_ld = t_len * 3 * u
    cdef Py_ssize_t dy_ld = dy.shape[1]
    cdef const floating* hp
    cdef const floating* gp
    cdef const floating* rp
    cdef floating* zi
    cdef floating* zr
    cdef floating* dhn
    cdef floating* drp
    cdef const floating* h_prev
    cdef const floating* dys
    for blk in prange((n + ROWS - 1) // ROWS, schedule="static", nogil=True):
        r0 = blk * ROWS
        rows = min(ROWS, n - r0)
        hp = &h[r0, 0, 0]
        gp = &g[r0, 0, 0]
        rp = &rh[r0, 0, 0]
        zi = &dzi[r0, 0, 0]
        zr = &dzr[r0, 0, 0]
        dhn = &dh_next[r0, 0]
        drp = &drh[r0, 0]
        for s in range(t_len - 1, -1, -1):
            tx = _tx(s, t_len, backwards)
            h_prev = hp + (s - 1) * u if s > 0 else NULL
            dys = _dy_row(&dy[r0, 0], full, s, t_len, u)
            if reset_after:
                _gru_step_backward_after(dys, dy_ld, gp + tx * g3, rp + tx * u, h_prev, dhn,
                                         zi + tx * g3, zr + tx * g3, rows, g_ld, ld, u, act,
                                         <floating>a1, ract, <floating>a2)
                if s > 0:
                    _rows_mm(rows, g3, u, zr + tx * g3, g_ld, &rk_t[0, 0], u, dhn, u, True)
            else:
                _gru_step_backward_out(dys, dy_ld, gp + tx * g3, h_prev, dhn, zi + tx * g3,
                                       rows, g_ld, ld, u, act, <floating>a1, ract,
                                       <floating>a2)
                if s > 0:
                    # d(r * h_{t-1}) = dZ_h @ R_h^T.
                    _rows_mm(rows, u, u, zi + tx * g3 + 2 * u, g_ld, &rk_t[2 * u, 0], u, drp,
                             u, False)
                _gru_step_backward_gates(gp + tx * g3, drp if s > 0 else NULL, h_prev, dhn,
                                         zi + tx * g3, rows, g_ld, ld, u, ract, <floating>a2)
                if s > 0:
                    _rows_mm(rows, 2 * u, u, zi + tx * g3, g_ld, &rk_t[0, 0], u, dhn, u, True)


def gru_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                go_backwards=False):
    """Keras's GRU (gates z, r, h) -> (y, cache).

    bias is (2, 3U) with reset_after (input row, recurrent row), else (3U,), or None.
    y is h_seq (N, T, U) with return_sequences, else the last output (N, U);
    cache = (h_seq, gates (N, T, 3U) activated z, r, hh at the input's time index,
    rh (N, T, U): h_{t-1} @ R_h + b_rh with reset_after, else r * h_{t-1}).
    """
    op = "gru_forward"
    act, a1 = _act(op, "activation", activation)
    ract, a2 = _act(op, "recurrent_activation", recurrent_activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 3)
    reset_after = _flag(op, "reset_after", reset_after)
    bias = _bias(op, bias, (2, 3 * units) if reset_after else (3 * units,), x.dtype)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    n, t, _ = x.shape
    h_seq = np.zeros((n, t, units), dtype=x.dtype)
    gates = np.zeros((n, t, 3 * units), dtype=x.dtype)
    rh = np.zeros((n, t, units), dtype=x.dtype)
    if n * t * units:
        srec = np.zeros((n, 3 * units), dtype=x.dtype)
        _forward_input(x, kernel, gates)
        _gru_forward(recurrent_kernel, bias.reshape(-1, 3 * units), reset_after, gates, rh,
                     h_seq, srec, act, a1, ract, a2, go_backwards)
    return _last_step(h_seq, return_sequences), (h_seq, gates, rh)


def gru_backward(dy, x, kernel, recurrent_kernel, cache, activation="tanh",
                 recurrent_activation="sigmoid", reset_after=True, return_sequences=False,
                 go_backwards=False, need_input_grad=True):
    """-> (dx or None, dkernel, drecurrent_kernel, dbias shaped like the bias)."""
    op = "gru_backward"
    act, a1 = _act(op, "activation", activation)
    ract, a2 = _act(op, "recurrent_activation", recurrent_activation)
    x, kernel, recurrent_kernel, units = _inputs(op, x, kernel, recurrent_kernel, 3)
    reset_after = _flag(op, "reset_after", reset_after)
    return_sequences = _flag(op, "return_sequences", return_sequences)
    go_backwards = _flag(op, "go_backwards", go_backwards)
    need_input_grad = _flag(op, "need_input_grad", need_input_grad)
    n, t, _ = x.shape
    dy = _upstream(op, dy, n, t, units, return_sequences, x.dtype)
    h_seq, gates, rh = _cache(op, cache, [(n, t, units), (n, t, 3 * units), (n, t, units)],
                              x.dtype)
    dzi = np.zeros((n, t, 3 * units), dtype=x.dtype)
    # Without reset_after both sides share one pre-activation: dzr is dzi.
    dzr = np.zeros((n, t, 3 * units), dtype=x.dtype) if reset_after else dzi
    drk = np.zeros(recurrent_kernel.shape, dtype=x.dtype)
    if n * t * units:
        dh_next = np.zeros((n, units), dtype=x.dtype)
        drh = np.zeros((n, units), dtype=x.dtype)
        _gru_backward(dy.reshape(n, -1), return_sequences,
                      np.ascontiguousarray(recurrent_kernel.T), reset_after, h_seq, gates, rh,
                      dzi, dzr, dh_next, drh, act, a1, ract, a2, go_backwards)
    if reset_after:
        dx, dkernel, db_in = _backward_input(x, kernel, h_seq, dzi, dzr, drk, go_backwards,
                                             need_input_grad)
        return dx, dkernel, drk, np.stack([db_in, _column_sum(dzr)])
    # The z, r columns of d(R) pair with h_{t-1}, the h columns with r * h_{t-1}.
    dx, dkernel, dbias = _backward_input(x, kernel, h_seq, dzi, None, drk, go_backwards,
                                         need_input_grad)
    if n * t * units:
        h_prev = np.empty_like(h_seq)
        _shift_prev(h_seq, h_prev, go_backwards)
        dz2 = dzi.reshape(n * t, 3 * units)
        _gemm_tn(h_prev.reshape(n * t, units), dz2, drk, 0, 0, 2 * units)
        _gemm_tn(rh.reshape(n * t, units), dz2, drk, 2 * units, 2 * units, units)
    return dx, dkernel, drk, dbias
