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
The fused passes work row by row with the activation chosen once per row, so their loops
vectorize; float32 sigmoid/tanh use a branch-free Cephes-style exp (<= 2.5 ulp), since
libm's calls do not vectorize without -ffast-math. float64 keeps libm (gradient checks).

Determinism: every output element is summed in a fixed order by exactly one thread, and the
row blocks do not depend on the thread count, so results are bit-identical for any number
of threads. Activation derivatives come from the activation's output (``_activation.pxd``),
so softmax and gelu are not offered; leaky_relu and elu use Keras's defaults (0.2 and 1.0).
Gradients come back as fresh arrays (nothing accumulates into caller memory).
"""
import numpy as np

from cython.parallel cimport prange
from _blas cimport gemm_rowmajor, floating
from _activation cimport act_value, act_grad, ACT_SIGMOID, ACT_TANH

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


cdef enum:
    # Output columns per register tile of _rows_mm: 4 rows x 16 columns of accumulators stay
    # in vector registers through the whole k loop (2 AVX registers per row in float32).
    COLS = 32


cdef inline void _rows_mm(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t n, const floating* a,
                          Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                          Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """c[r, :n] (+)= a[r, :k] @ b[:k, :n] for the few rows of one block, inside one thread.

    Register tiles of 4 rows x COLS columns: per k, COLS values of b are loaded once and
    feed 4 rows of fixed-size accumulators that the compiler keeps in vector registers.
    Every output sums k in ascending order onto its initial value whatever the tile shape,
    so a row's result does not depend on which block or tile it falls in."""
    cdef Py_ssize_t r, kk, j, j0, jn, nr
    cdef floating acc0[COLS]
    cdef floating acc1[COLS]
    cdef floating acc2[COLS]
    cdef floating acc3[COLS]
    cdef floating a0, a1, a2, a3
    cdef const floating* bk
    cdef floating* cr
    r = 0
    while r < rows:
        nr = rows - r if rows - r < 4 else 4
        j0 = 0
        while j0 < n:
            jn = n - j0 if n - j0 < COLS else COLS
            for j in range(COLS):
                acc0[j] = 0
                acc1[j] = 0
                acc2[j] = 0
                acc3[j] = 0
            if accumulate:
                for j in range(jn):
                    acc0[j] = c[r * ldc + j0 + j]
                    if nr > 1:
                        acc1[j] = c[(r + 1) * ldc + j0 + j]
                    if nr > 2:
                        acc2[j] = c[(r + 2) * ldc + j0 + j]
                    if nr > 3:
                        acc3[j] = c[(r + 3) * ldc + j0 + j]
            if nr == 4 and jn == COLS:
                for kk in range(k):
                    a0 = a[r * lda + kk]
                    a1 = a[(r + 1) * lda + kk]
                    a2 = a[(r + 2) * lda + kk]
                    a3 = a[(r + 3) * lda + kk]
                    bk = b + kk * ldb + j0
                    for j in range(COLS):
                        acc0[j] = acc0[j] + a0 * bk[j]
                        acc1[j] = acc1[j] + a1 * bk[j]
                        acc2[j] = acc2[j] + a2 * bk[j]
                        acc3[j] = acc3[j] + a3 * bk[j]
            else:
                # Edge tile: the same sums, element by element.
                for kk in range(k):
                    bk = b + kk * ldb + j0
                    for j in range(jn):
                        acc0[j] = acc0[j] + a[r * lda + kk] * bk[j]
                        if nr > 1:
                            acc1[j] = acc1[j] + a[(r + 1) * lda + kk] * bk[j]
                        if nr > 2:
                            acc2[j] = acc2[j] + a[(r + 2) * lda + kk] * bk[j]
                        if nr > 3:
                            acc3[j] = acc3[j] + a[(r + 3) * lda + kk] * bk[j]
            for j in range(jn):
                c[r * ldc + j0 + j] = acc0[j]
                if nr > 1:
                    c[(r + 1) * ldc + j0 + j] = acc1[j]
                if nr > 2:
                    c[(r + 2) * ldc + j0 + j] = acc2[j]
                if nr > 3:
                    c[(r + 3) * ldc + j0 + j] = acc3[j]
            j0 = j0 + COLS
        r = r + 4


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* float32 exp for the gate activations: Cephes' expf (Cody-Waite reduction by ln 2,
     * degree-5 polynomial, exponent set through the bits); sigmoid and tanh built on it are
     * within 2.5 ulp of the float64 values on [-30, 30] (inputs clamped to [-87, 88]).
     * Branch-free, so the row loops calling it vectorize, which libm's expf/tanhf do not
     * without -ffast-math. */
    static inline float pynn_rnn_expf(float x) {
        x = x < 88.0f ? x : 88.0f;
        x = x > -87.0f ? x : -87.0f;
        /* Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22):
         * floorf() would stop GCC from vectorizing the loop. */
        const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        const float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        const int32_t bits = ((int32_t)fx + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    static inline float pynn_rnn_sigmoidf(float x) {
        return 1.0f / (1.0f + pynn_rnn_expf(-x));
    }
    /* Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 - 2/(exp(2|x|) + 1) above. */
    static inline float pynn_rnn_tanhf(float x) {
        const float ax = fabsf(x), z = x * x;
        const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                               - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                             - 3.33332819422e-1f) * z * x + x;
        const float big = copysignf(1.0f - 2.0f / (pynn_rnn_expf(2.0f * ax) + 1.0f), x);
        return ax < 0.625f ? small : big;
    }
    """
    float pynn_rnn_sigmoidf(float x) noexcept nogil
    float pynn_rnn_tanhf(float x) noexcept nogil


cdef inline void _act_vec(floating* v, Py_ssize_t n, int act, floating alpha) noexcept nogil:
    """v = act(v) over one contiguous row, the activation chosen once per row (not per
    element) so the loops vectorize; float32 sigmoid and tanh use the branch-free forms
    above, everything else (and all of float64) the shared _activation.pxd formulas."""
    cdef Py_ssize_t j
    if floating is float:
        if act == ACT_SIGMOID:
            for j in range(n):
                v[j] = pynn_rnn_sigmoidf(v[j])
            return
        if act == ACT_TANH:
            for j in range(n):
                v[j] = pynn_rnn_tanhf(v[j])
            return
    for j in range(n):
        v[j] = act_value(v[j], act, alpha)


cdef inline void _act_grad_vec(const floating* y, floating* d, Py_ssize_t n, int act,
                               floating alpha) noexcept nogil:
    """d = dL/d(pre-activation) from d = dL/d(output) and the output y, over one row."""
    cdef Py_ssize_t j
    if act == ACT_SIGMOID:
        for j in range(n):
            d[j] = d[j] * y[j] * (1 - y[j])
    elif act == ACT_TANH:
        for j in range(n):
            d[j] = d[j] * (1 - y[j] * y[j])
    else:
        for j in range(n):
            d[j] = act_grad(d[j], <floating>0, y[j], act, alpha)


cdef inline void _add_dy(floating* dh, const floating* dy, Py_ssize_t n) noexcept nogil:
    """dh += dy over one row (dy NULL: no upstream gradient at this step)."""
    cdef Py_ssize_t j
    if dy != NULL:
        for j in range(n):
            dh[j] = dh[j] + dy[j]


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
    if c == 0:
        return
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
    if c == 0:
        p[:, :] = 0
        return
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
    cdef floating* hr
    for n in range(rows):
        hr = h + n * ld
        for j in range(units):
            hr[j] = p[n * ld + j] + bias[j]
        _act_vec(hr, units, act, alpha)


cdef void _simple_step_backward(const floating* dy, Py_ssize_t dy_ld, const floating* h,
                                floating* dh_next, floating* dz, Py_ssize_t rows,
                                Py_ssize_t ld, Py_ssize_t units, int act,
                                floating alpha) noexcept nogil:
    cdef Py_ssize_t n, j
    cdef floating* dhr
    for n in range(rows):
        dhr = dh_next + n * units
        _add_dy(dhr, dy + n * dy_ld if dy != NULL else NULL, units)
        for j in range(units):
            dz[n * ld + j] = dhr[j]
        _act_grad_vec(h + n * ld, dz + n * ld, units, act, alpha)


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
    cdef floating* cr
    cdef floating* hr
    cdef const floating* cp
    for n in range(rows):
        gr = g + n * g_ld
        cr = c + n * ld
        hr = h + n * ld
        for j in range(4 * u):
            gr[j] = gr[j] + bias[j]
        _act_vec(gr, 2 * u, ract, a2)
        _act_vec(gr + 2 * u, u, act, a1)
        _act_vec(gr + 3 * u, u, ract, a2)
        if c_prev != NULL:
            cp = c_prev + n * ld
            for j in range(u):
                cr[j] = gr[u + j] * cp[j] + gr[j] * gr[2 * u + j]
        else:
            for j in range(u):
                cr[j] = gr[j] * gr[2 * u + j]
        for j in range(u):
            hr[j] = cr[j]
        _act_vec(hr, u, act, a1)
        for j in range(u):
            hr[j] = gr[3 * u + j] * hr[j]


cdef void _lstm_step_backward(const floating* dy, Py_ssize_t dy_ld, const floating* g,
                              const floating* c_prev, const floating* c, floating* dh_next,
                              floating* dc_next, floating* dz, Py_ssize_t rows,
                              Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u, int act,
                              floating a1, int ract, floating a2) noexcept nogil:
    """dz = pre-activation gradients of the four gates; dc_next becomes dc_{t-1}.

    The dz row doubles as scratch: its o slot first holds act(c_t), its c~ slot the
    gradient through act(c_t), each overwritten by the final value of the same element."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef const floating* cr
    cdef floating* zr
    cdef floating* dhr
    cdef floating* dcr
    cdef floating dc, cpv
    for n in range(rows):
        gr = g + n * g_ld
        cr = c + n * ld
        zr = dz + n * g_ld
        dhr = dh_next + n * u
        dcr = dc_next + n * u
        _add_dy(dhr, dy + n * dy_ld if dy != NULL else NULL, u)
        for j in range(u):
            zr[3 * u + j] = cr[j]
        _act_vec(zr + 3 * u, u, act, a1)
        for j in range(u):
            zr[2 * u + j] = dhr[j] * gr[3 * u + j]
        _act_grad_vec(zr + 3 * u, zr + 2 * u, u, act, a1)
        for j in range(u):
            cpv = c_prev[n * ld + j] if c_prev != NULL else 0
            dc = dcr[j] + zr[2 * u + j]
            zr[j] = dc * gr[2 * u + j]
            zr[u + j] = dc * cpv
            zr[2 * u + j] = dc * gr[j]
            zr[3 * u + j] = dhr[j] * zr[3 * u + j]
            dcr[j] = dc * gr[u + j]
        _act_grad_vec(gr, zr, 2 * u, ract, a2)
        _act_grad_vec(gr + 2 * u, zr + 2 * u, u, act, a1)
        _act_grad_vec(gr + 3 * u, zr + 3 * u, u, ract, a2)


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
    cdef floating* rr
    cdef floating* hr
    cdef floating rec
    for n in range(rows):
        gr = g + n * g_ld
        rr = rh + n * ld
        hr = h + n * ld
        for j in range(2 * u):
            gr[j] = gr[j] + b_in[j] + _at(srec, n * 3 * u + j) + b_rec[j]
        _act_vec(gr, 2 * u, ract, a2)
        for j in range(u):
            rec = _at(srec, n * 3 * u + 2 * u + j) + b_rec[2 * u + j]
            rr[j] = rec
            gr[2 * u + j] = gr[2 * u + j] + b_in[2 * u + j] + gr[u + j] * rec
        _act_vec(gr + 2 * u, u, act, a1)
        for j in range(u):
            hr[j] = gr[j] * _at(h_prev, n * ld + j) + (1 - gr[j]) * gr[2 * u + j]


cdef void _gru_step_forward_gates(floating* g, const floating* srec, const floating* b_in,
                                  const floating* h_prev, floating* rh, Py_ssize_t rows,
                                  Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u, int ract,
                                  floating a2) noexcept nogil:
    """reset_after=False, first pass: z, r into g and rh = r * h_{t-1}."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(2 * u):
            gr[j] = gr[j] + b_in[j] + _at(srec, n * 3 * u + j)
        _act_vec(gr, 2 * u, ract, a2)
        for j in range(u):
            rh[n * ld + j] = gr[u + j] * _at(h_prev, n * ld + j)


cdef void _gru_step_forward_out(floating* g, const floating* srec, const floating* b_in,
                                const floating* h_prev, floating* h, Py_ssize_t rows,
                                Py_ssize_t g_ld, Py_ssize_t ld, Py_ssize_t u, int act,
                                floating a1) noexcept nogil:
    """reset_after=False, second pass: srec[:, 2U:] = rh @ R_h (srec NULL at step 0)."""
    cdef Py_ssize_t n, j
    cdef floating* gr
    for n in range(rows):
        gr = g + n * g_ld
        for j in range(u):
            gr[2 * u + j] = gr[2 * u + j] + b_in[2 * u + j] + _at(srec, n * 3 * u + 2 * u + j)
        _act_vec(gr + 2 * u, u, act, a1)
        for j in range(u):
            h[n * ld + j] = gr[j] * _at(h_prev, n * ld + j) + (1 - gr[j]) * gr[2 * u + j]


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
    cdef floating* zi
    cdef floating* zr
    cdef floating* dhr
    for n in range(rows):
        gr = g + n * g_ld
        zi = dzi + n * g_ld
        zr = dzr + n * g_ld
        dhr = dh_next + n * u
        _add_dy(dhr, dy + n * dy_ld if dy != NULL else NULL, u)
        for j in range(u):
            zi[j] = dhr[j] * (_at(h_prev, n * ld + j) - gr[2 * u + j])
            zi[2 * u + j] = dhr[j] * (1 - gr[j])
        _act_grad_vec(gr + 2 * u, zi + 2 * u, u, act, a1)
        for j in range(u):
            zi[u + j] = zi[2 * u + j] * rh[n * ld + j]
        _act_grad_vec(gr, zi, 2 * u, ract, a2)
        for j in range(u):
            zr[j] = zi[j]
            zr[u + j] = zi[u + j]
            zr[2 * u + j] = zi[2 * u + j] * gr[u + j]
            dhr[j] = dhr[j] * gr[j]


cdef void _gru_step_backward_out(const floating* dy, Py_ssize_t dy_ld, const floating* g,
                                 const floating* h_prev, floating* dh_next, floating* dz,
                                 Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                 Py_ssize_t u, int act, floating a1, int ract,
                                 floating a2) noexcept nogil:
    """reset_after=False, first pass: the z and h gate gradients; dh_next = dh * z."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef floating* zr
    cdef floating* dhr
    for n in range(rows):
        gr = g + n * g_ld
        zr = dz + n * g_ld
        dhr = dh_next + n * u
        _add_dy(dhr, dy + n * dy_ld if dy != NULL else NULL, u)
        for j in range(u):
            zr[j] = dhr[j] * (_at(h_prev, n * ld + j) - gr[2 * u + j])
            zr[2 * u + j] = dhr[j] * (1 - gr[j])
            dhr[j] = dhr[j] * gr[j]
        _act_grad_vec(gr, zr, u, ract, a2)
        _act_grad_vec(gr + 2 * u, zr + 2 * u, u, act, a1)


cdef void _gru_step_backward_gates(const floating* g, const floating* drh,
                                   const floating* h_prev, floating* dh_next, floating* dz,
                                   Py_ssize_t rows, Py_ssize_t g_ld, Py_ssize_t ld,
                                   Py_ssize_t u, int ract, floating a2) noexcept nogil:
    """reset_after=False, second pass: drh = d(r * h_{t-1}) gives the r gate gradient and
    the r-scaled part of dh_{t-1} (drh and h_prev are NULL at step 0)."""
    cdef Py_ssize_t n, j
    cdef const floating* gr
    cdef floating* zr
    cdef floating d
    for n in range(rows):
        gr = g + n * g_ld
        zr = dz + n * g_ld
        for j in range(u):
            d = _at(drh, n * u + j)
            zr[u + j] = d * _at(h_prev, n * ld + j)
            dh_next[n * u + j] = dh_next[n * u + j] + d * gr[u + j]
        _act_grad_vec(gr + u, zr + u, u, ract, a2)


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
