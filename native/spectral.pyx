"""Spectral kernels of Keras 3's audio front ends (STFTSpectrogram, MelSpectrogram), the CPU
twins of opencl/spectral.cl. STFTSpectrogram's STFT is a strided conv of trainable kernels (the
conv family's ops, as in Keras); MelSpectrogram's fixed one is stft_forward here (an FFT).
The other kernels are the steps before and after an STFT.

Legend: R rows (every axis but the last), F frequency bins, T samples; the mode codes are the
indices of api.SPECTRUM_MODES.

Design:
- spectrum: each (real, imag) pair alone, in double (float32 rounds once at the store);
  blocks of BLOCK rows on pynn's worker team.
- power_to_db: the floor is the maximum over the whole tensor (Keras's), so two passes over
  fixed blocks of BLOCK elements: each block's maximum (folded in block order), then the
  clamp. The backward folds the floored elements' dy and the count of maxima the same way,
  so no result depends on the thread count.
- reflect_pad1d: rows on the team; the backward adds each mirror onto its source row-wise.
- stft: see its section at the end (frames on the team forward, rows backward).
"""
import numpy as np

from libc.math cimport atan2, log, log10, pow, sqrt, INFINITY
from libc.stdlib cimport free, malloc

from _openmp cimport omp_get_max_threads

from pynn.backend.operands import spectral as operands
from pynn.backend.operands.common import HOST

include "_team.pxi"

ctypedef fused floating:
    float
    double

cdef enum:
    BLOCK = 16384        # elements (rows * bins) per claim; below it one thread does all
    MODE_MAGNITUDE = 0
    MODE_PSD = 1
    MODE_ANGLE = 2
    MODE_LOG = 3
    MODE_POWER = 4
    MODE_STFT = 5

# keras.backend.epsilon(): STFTSpectrogram's floor under the power and the magnitude.
cdef double KERAS_EPSILON = 1e-7
cdef double DB_PER_LN = 4.342944819032518  # 10 / ln(10): d(10 log10 x)/dx = DB_PER_LN / x


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return omp_get_max_threads() if work >= BLOCK else 1


ctypedef struct _SpectralJob:
    bint is_double
    int code
    const void* a      # real / x / dy (pad backward)
    const void* b      # imag
    const void* dy
    void* y            # forward output / dreal / dx
    void* y2           # dimag
    Py_ssize_t R, F, n, pad, rows_per_block
    double exponent, min_power, offset, floor, peak, share
    double* part       # per-block partials (maxima; clamped sums; counts)


# -- spectrum ----------------------------------------------------------------------------------

cdef inline double _spectrum(double re, double im, Py_ssize_t f, Py_ssize_t F, int code,
                             double exponent) noexcept nogil:
    cdef double p = re * re + im * im
    if code == MODE_MAGNITUDE:
        return sqrt(p if p > KERAS_EPSILON else KERAS_EPSILON)
    if code == MODE_LOG:
        p = sqrt(p if p > KERAS_EPSILON else KERAS_EPSILON)
        return log(p if p > KERAS_EPSILON else KERAS_EPSILON)
    if code == MODE_PSD:
        return p if f == 0 or f == F - 1 else 2.0 * p
    if code == MODE_ANGLE:
        return atan2(im, re)
    # MODE_POWER: mag_exp's usual 2 (the power) and 1 (the magnitude) without pow
    if exponent == 2.0:
        return p
    if exponent == 1.0:
        return sqrt(p)
    return pow(sqrt(p), exponent)


cdef inline double _spectrum_scale(double dy, double re, double im, Py_ssize_t f,
                                   Py_ssize_t F, int code, double exponent) noexcept nogil:
    """d y / d re = re * scale and d y / d im = im * scale (angle excepted); 0 where the
    floor holds or the pair is zero."""
    cdef double p = re * re + im * im
    if code == MODE_PSD:
        return 2.0 * dy if f == 0 or f == F - 1 else 4.0 * dy
    if code == MODE_MAGNITUDE:
        return dy / sqrt(p) if p > KERAS_EPSILON else 0.0
    if code == MODE_LOG:
        return dy / p if p > KERAS_EPSILON else 0.0
    if exponent == 2.0:  # MODE_POWER
        return 2.0 * dy
    return dy * exponent * pow(p, exponent / 2.0 - 1.0) if p > 0 else 0.0


cdef inline void _spectrum_forward_rows(const _SpectralJob* j, const floating* re, long begin,
                                        long end) noexcept nogil:
    cdef const floating* im = <const floating*>j.b
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t F = j.F, f, r, r0 = begin * j.rows_per_block
    cdef Py_ssize_t r1 = min(end * j.rows_per_block, j.R)
    for r in range(r0, r1):
        if j.code == MODE_STFT:
            for f in range(F):
                y[2 * r * F + f] = re[r * F + f]
                y[2 * r * F + F + f] = im[r * F + f]
            continue
        for f in range(F):
            y[r * F + f] = <floating>_spectrum(re[r * F + f], im[r * F + f], f, F, j.code,
                                               j.exponent)


cdef void _spectrum_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _spectrum_forward_rows(j, <const double*>j.a, begin, end)
    else:
        _spectrum_forward_rows(j, <const float*>j.a, begin, end)


cdef inline void _spectrum_backward_rows(const _SpectralJob* j, const floating* re, long begin,
                                         long end) noexcept nogil:
    cdef const floating* im = <const floating*>j.b
    cdef const floating* dy = <const floating*>j.dy
    cdef floating* dre = <floating*>j.y
    cdef floating* dim = <floating*>j.y2
    cdef Py_ssize_t F = j.F, f, i, r, r0 = begin * j.rows_per_block
    cdef Py_ssize_t r1 = min(end * j.rows_per_block, j.R)
    cdef double a, b, p, s
    for r in range(r0, r1):
        for f in range(F):
            i = r * F + f
            if j.code == MODE_STFT:
                dre[i] = dy[2 * r * F + f]
                dim[i] = dy[2 * r * F + F + f]
                continue
            a = re[i]
            b = im[i]
            if j.code == MODE_ANGLE:
                p = a * a + b * b
                s = dy[i] / p if p > 0 else 0.0
                dre[i] = <floating>(-b * s)
                dim[i] = <floating>(a * s)
            else:
                s = _spectrum_scale(dy[i], a, b, f, F, j.code, j.exponent)
                dre[i] = <floating>(a * s)
                dim[i] = <floating>(b * s)


cdef void _spectrum_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _spectrum_backward_rows(j, <const double*>j.a, begin, end)
    else:
        _spectrum_backward_rows(j, <const float*>j.a, begin, end)


cdef inline void _row_blocks(_SpectralJob* job, Py_ssize_t R, Py_ssize_t F, long* blocks):
    job.R, job.F = R, F
    job.rows_per_block = max(1, BLOCK // max(F, 1))
    blocks[0] = (R + job.rows_per_block - 1) // job.rows_per_block


def _spectrum_forward(const floating[::1] re, const floating[::1] im, floating[::1] y,
                      Py_ssize_t R, Py_ssize_t F, int code, double exponent):
    """y (OUT) of the pairs (IN) viewed as (R, F)."""
    cdef _SpectralJob job
    cdef long blocks
    _row_blocks(&job, R, F, &blocks)
    job.is_double, job.code, job.exponent = floating is double, code, exponent
    job.a, job.b, job.y = &re[0], &im[0], &y[0]
    with nogil:
        pynn_team_for(blocks, 1, _threads(R * F), _spectrum_forward_job, &job)


def _spectrum_backward(const floating[::1] dy, const floating[::1] re, const floating[::1] im,
                       floating[::1] dre, floating[::1] dim, Py_ssize_t R, Py_ssize_t F,
                       int code, double exponent):
    """dre, dim (OUT) of the pairs (IN) viewed as (R, F)."""
    cdef _SpectralJob job
    cdef long blocks
    _row_blocks(&job, R, F, &blocks)
    job.is_double, job.code, job.exponent = floating is double, code, exponent
    job.a, job.b, job.dy, job.y, job.y2 = &re[0], &im[0], &dy[0], &dre[0], &dim[0]
    with nogil:
        pynn_team_for(blocks, 1, _threads(R * F), _spectrum_backward_job, &job)


def spectrum_forward(real, imag, mode, exponent=2.0):
    """Keras's STFTSpectrogram output modes (and MelSpectrogram's |z|^mag_exp) of the
    (real, imag) pairs (..., F) -> y (..., F), or (..., 2F) for 'stft'."""
    re, im, code, (R, F), exponent = operands.spectrum_forward(HOST, real, imag, mode,
                                                               exponent)
    y = np.empty(operands.spectrum_output_shape(re.shape, code), dtype=re.dtype)
    if re.size:
        _spectrum_forward(re.reshape(-1), im.reshape(-1), y.reshape(-1), R, F, code, exponent)
    return y


def spectrum_backward(dy, real, imag, mode, exponent=2.0):
    """-> (dreal, dimag) of y = spectrum_forward(real, imag, mode, exponent): 0 where
    Keras's floor (1e-7 under the power) holds or the pair is (0, 0)."""
    dy, re, im, code, (R, F), exponent = operands.spectrum_backward(HOST, dy, real, imag, mode,
                                                                    exponent)
    dre, dim = np.empty_like(re), np.empty_like(im)
    if re.size:
        _spectrum_backward(dy.reshape(-1), re.reshape(-1), im.reshape(-1), dre.reshape(-1),
                           dim.reshape(-1), R, F, code, exponent)
    return dre, dim


# -- power_to_db -------------------------------------------------------------------------------

cdef inline double _db(double x, double min_power, double offset) noexcept nogil:
    return 10.0 * log10(x if x > min_power else min_power) - offset


cdef inline void _db_block_max(const _SpectralJob* j, const floating* x, long begin,
                               long end) noexcept nogil:
    """Blocks [begin, end): y = the unfloored dB values (when y is set), part[block] their
    maximum (NaN kept: a NaN input poisons the floor, as torch's max)."""
    cdef floating* y = <floating*>j.y
    cdef Py_ssize_t i, i1
    cdef double v, m
    cdef long blk
    for blk in range(begin, end):
        m = -INFINITY
        i1 = min((blk + 1) * <Py_ssize_t>BLOCK, j.n)
        for i in range(blk * <Py_ssize_t>BLOCK, i1):
            v = <floating>_db(x[i], j.min_power, j.offset)
            if y != NULL:
                y[i] = <floating>v
            if v > m or v != v:
                m = v
        j.part[blk] = m


cdef void _db_max_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _db_block_max(j, <const double*>j.a, begin, end)
    else:
        _db_block_max(j, <const float*>j.a, begin, end)


cdef inline void _db_clamp(const _SpectralJob* j, floating* y, long begin,
                           long end) noexcept nogil:
    cdef Py_ssize_t i, i1 = min(end * <Py_ssize_t>BLOCK, j.n)
    cdef floating floor = <floating>j.floor
    for i in range(begin * <Py_ssize_t>BLOCK, i1):
        if y[i] < floor or j.floor != j.floor:
            y[i] = floor


cdef void _db_clamp_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _db_clamp(j, <double*>j.y, begin, end)
    else:
        _db_clamp(j, <float*>j.y, begin, end)


cdef inline void _db_grad_sums(const _SpectralJob* j, const floating* x, long begin,
                               long end) noexcept nogil:
    """Blocks [begin, end): part[2 blk] the sum of dy over floored elements, part[2 blk + 1]
    the count of elements at the peak."""
    cdef const floating* dy = <const floating*>j.dy
    cdef Py_ssize_t i, i1
    cdef double v, s, c
    cdef long blk
    for blk in range(begin, end):
        s = 0.0
        c = 0.0
        i1 = min((blk + 1) * <Py_ssize_t>BLOCK, j.n)
        for i in range(blk * <Py_ssize_t>BLOCK, i1):
            v = <floating>_db(x[i], j.min_power, j.offset)
            if v < j.floor:
                s += dy[i]
            if v == j.peak:
                c += 1.0
        j.part[2 * blk] = s
        j.part[2 * blk + 1] = c


cdef void _db_grad_sums_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _db_grad_sums(j, <const double*>j.a, begin, end)
    else:
        _db_grad_sums(j, <const float*>j.a, begin, end)


cdef inline void _db_grad(const _SpectralJob* j, const floating* x, long begin,
                          long end) noexcept nogil:
    """dx = (dy where not floored, + share at the peak) * 10 / (ln 10 * x) above min_power."""
    cdef const floating* dy = <const floating*>j.dy
    cdef floating* dx = <floating*>j.y
    cdef Py_ssize_t i, i1 = min(end * <Py_ssize_t>BLOCK, j.n)
    cdef double v, g
    for i in range(begin * <Py_ssize_t>BLOCK, i1):
        if not x[i] > j.min_power:
            dx[i] = 0
            continue
        v = <floating>_db(x[i], j.min_power, j.offset)
        g = dy[i] if not v < j.floor else 0.0
        if v == j.peak:
            g += j.share
        dx[i] = <floating>(g * DB_PER_LN / x[i])


cdef void _db_grad_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _db_grad(j, <const double*>j.a, begin, end)
    else:
        _db_grad(j, <const float*>j.a, begin, end)


cdef double _fold_max(const double[::1] part):
    cdef double m = -INFINITY, v
    cdef Py_ssize_t i
    for i in range(part.shape[0]):
        v = part[i]
        if v > m or v != v:
            m = v
    return m


def _power_to_db_forward(const floating[::1] x, floating[::1] y, double min_power,
                         double offset, double top_db):
    """y (OUT) of x (IN), flat."""
    cdef _SpectralJob job
    cdef Py_ssize_t n = x.shape[0]
    cdef long blocks = (n + BLOCK - 1) // BLOCK
    cdef double[::1] part = np.empty(blocks)
    cdef int threads = _threads(n)
    job.is_double, job.n = floating is double, n
    job.a, job.y, job.part = &x[0], &y[0], &part[0]
    job.min_power, job.offset = min_power, offset
    with nogil:
        pynn_team_for(blocks, 1, threads, _db_max_job, &job)
    if top_db < 0:
        return
    job.floor = <floating>(_fold_max(part) - top_db)
    with nogil:
        pynn_team_for(blocks, 1, threads, _db_clamp_job, &job)


def _power_to_db_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                          double min_power, double offset, double top_db):
    """dx (OUT) of x, dy (IN), flat."""
    cdef _SpectralJob job
    cdef Py_ssize_t n = x.shape[0], i
    cdef long blocks = (n + BLOCK - 1) // BLOCK
    cdef double[::1] part = np.empty(2 * blocks)
    cdef int threads = _threads(n)
    cdef double clamped = 0.0, peaks = 0.0
    job.is_double, job.n = floating is double, n
    job.a, job.dy, job.y, job.part = &x[0], &dy[0], &dx[0], &part[0]
    job.min_power, job.offset = min_power, offset
    job.floor, job.peak, job.share = -INFINITY, INFINITY, 0.0
    if top_db >= 0:
        job.y = NULL
        with nogil:
            pynn_team_for(blocks, 1, threads, _db_max_job, &job)
        job.y = &dx[0]
        job.peak = _fold_max(part[:blocks])
        job.floor = <floating>(job.peak - top_db)
        with nogil:
            pynn_team_for(blocks, 1, threads, _db_grad_sums_job, &job)
        for i in range(blocks):
            clamped += part[2 * i]
            peaks += part[2 * i + 1]
        job.share = clamped / peaks if peaks > 0 else 0.0
    with nogil:
        pynn_team_for(blocks, 1, threads, _db_grad_job, &job)


def power_to_db_forward(x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """Keras's MelSpectrogram power_to_db over the whole of x (any shape) -> y."""
    x, min_power, offset, top_db = operands.power_to_db_forward(HOST, x, min_power, ref_power,
                                                                top_db)
    y = np.empty_like(x)
    if x.size:
        _power_to_db_forward(x.reshape(-1), y.reshape(-1), min_power, offset, top_db)
    return y


def power_to_db_backward(dy, x, min_power=1e-10, ref_power=1.0, top_db=80.0):
    """-> dx of y = power_to_db_forward(x, ...): dy * 10 / (ln 10 * x) above min_power where
    y is not floored; the floored elements' dy summed onto the maximum (shared by ties)."""
    dy, x, min_power, offset, top_db = operands.power_to_db_backward(HOST, dy, x, min_power,
                                                                     ref_power, top_db)
    dx = np.empty_like(x)
    if x.size:
        _power_to_db_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), min_power, offset,
                              top_db)
    return dx


# -- reflect_pad1d -----------------------------------------------------------------------------

cdef inline void _reflect_rows(const _SpectralJob* j, const floating* src, long begin,
                               long end) noexcept nogil:
    """Forward (y set, dy NULL): padded rows of length T + 2 pad from rows of T. Backward:
    each padded row's centre, then its mirrors added onto their sources."""
    cdef floating* dst = <floating*>j.y
    cdef Py_ssize_t T = j.F, P = j.pad, W = j.F + 2 * j.pad, t, r
    cdef bint forward = j.dy == NULL
    for r in range(begin, end):
        if forward:
            for t in range(T):
                dst[r * W + P + t] = src[r * T + t]
            for t in range(1, P + 1):
                dst[r * W + P - t] = src[r * T + t]
                dst[r * W + P + T - 1 + t] = src[r * T + T - 1 - t]
        else:
            for t in range(T):
                dst[r * T + t] = src[r * W + P + t]
            for t in range(1, P + 1):
                dst[r * T + t] += src[r * W + P - t]
                dst[r * T + T - 1 - t] += src[r * W + P + T - 1 + t]


cdef void _reflect_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _SpectralJob* j = <_SpectralJob*>ctx
    if j.is_double:
        _reflect_rows(j, <const double*>j.a, begin, end)
    else:
        _reflect_rows(j, <const float*>j.a, begin, end)


def _reflect_pad1d(const floating[::1] src, floating[::1] dst, Py_ssize_t R, Py_ssize_t T,
                   Py_ssize_t pad, bint forward):
    """dst (OUT) of src (IN): (R, T) -> (R, T + 2 pad) forward, the reverse backward."""
    cdef _SpectralJob job
    cdef int threads = _threads(R * (T + 2 * pad))
    job.is_double, job.R, job.F, job.pad = floating is double, R, T, pad
    job.a, job.y = &src[0], &dst[0]
    job.dy = NULL
    if not forward:
        job.dy = <const void*>&src[0]
    with nogil:
        pynn_team_for(R, team_grain(R, threads), threads, _reflect_job, &job)


def reflect_pad1d_forward(x, pad):
    """torch.stft's center=True padding: (..., T) -> (..., T + 2 pad), x[pad - i] for the
    i-th sample before and x[T - 1 - i] for the i-th after (the edge not repeated)."""
    x, (R, T), pad = operands.reflect_pad1d_forward(HOST, x, pad)
    y = np.empty(tuple(x.shape[:x.ndim - 1]) + (T + 2 * pad,), dtype=x.dtype)  # wraparound is off
    if y.size:
        _reflect_pad1d(x.reshape(-1), y.reshape(-1), R, T, pad, True)
    return y


def reflect_pad1d_backward(dy, pad):
    """-> dx (..., T) of reflect_pad1d_forward: the centre plus each mirror's dy."""
    dy, (R, T), pad = operands.reflect_pad1d_backward(HOST, dy, pad)
    dx = np.empty(tuple(dy.shape[:dy.ndim - 1]) + (T,), dtype=dy.dtype)  # wraparound is off
    if dx.size:
        _reflect_pad1d(dy.reshape(-1), dx.reshape(-1), R, T, pad, False)
    return dx


# -- stft: frames of (R, T) against a window of N, their first F = N // 2 + 1 DFT bins ------
#
# Frame j of row r is x[r, j*stride : j*stride + N] times the window; its DFT
# X[k] = sum_n v[n] exp(-2 pi i n k / N) comes from an in-place radix-2 FFT when N is a power
# of two (O(N log N)), else from the direct sum over the twiddle table (O(N F)), in double.
# The forward runs frames on the team (scratch per claim); the backward runs rows, since
# frames overlap: each frame's w[n] Re(sum_k (dre[k] + i dim[k]) exp(+2 pi i n k / N)) is
# added onto its samples in frame order.

ctypedef struct _StftJob:
    bint is_double, radix2
    const void* x        # forward: x (R, T); backward: dreal
    const void* x2       # backward: dimag
    const void* window   # (N,)
    void* out            # forward: real; backward: dx
    void* out2           # forward: imag
    const double* cos_t  # cos(2 pi m / N), m < N
    const double* sin_t
    const Py_ssize_t* rev  # bit reversal of m < N (radix2)
    const Py_ssize_t* rev_half  # bit reversal of m < N / 2 (radix2, N >= 4)
    Py_ssize_t R, T, N, F, frames, stride


cdef inline void _fft(double* re, double* im, Py_ssize_t L, const Py_ssize_t* rev,
                      const _StftJob* j, double sign) noexcept nogil:
    """In place, radix 2, L (a power of two dividing N): sum_n v[n] exp(sign 2 pi i n k / L),
    the twiddles read from the N-point tables every N / L entries."""
    cdef Py_ssize_t N = j.N, i, r, size, half, step, start, blk, k, a, b
    cdef double t, wr, wi, tr, ti
    for i in range(L):
        r = rev[i]
        if i < r:
            t = re[i]
            re[i] = re[r]
            re[r] = t
            t = im[i]
            im[i] = im[r]
            im[r] = t
    size = 2
    while size <= L:
        half = size // 2
        step = N // size
        for blk in range(L // size):
            start = blk * size
            for k in range(half):
                wr = j.cos_t[k * step]
                wi = sign * j.sin_t[k * step]
                a = start + k
                b = a + half
                tr = wr * re[b] - wi * im[b]
                ti = wr * im[b] + wi * re[b]
                re[b] = re[a] - tr
                im[b] = im[a] - ti
                re[a] += tr
                im[a] += ti
        size *= 2


cdef inline void _real_fft(const _StftJob* j, const floating* v, const floating* w,
                           double* buf, floating* real, floating* imag) noexcept nogil:
    """The F = M + 1 bins of one real frame of N = 2M from one M-point complex FFT of
    z[m] = u[2m] + i u[2m+1] (u = v * w): with Z's even part E[k] = (Z[k] + conj Z[M-k]) / 2
    and odd part O[k] = (Z[k] - conj Z[M-k]) / 2i, X[k] = E[k] + exp(-2 pi i k / N) O[k]."""
    cdef Py_ssize_t M = j.N // 2, m, k, c
    cdef double ar, ai, dr, di, o_r, o_i, wr, wi
    cdef double* re = buf
    cdef double* im = buf + M
    for m in range(M):
        re[m] = <double>v[2 * m] * w[2 * m]
        im[m] = <double>v[2 * m + 1] * w[2 * m + 1]
    _fft(re, im, M, j.rev_half, j, -1.0)
    for k in range(M + 1):
        m = k if k < M else 0
        c = M - k if k > 0 else 0
        ar = 0.5 * (re[m] + re[c])
        ai = 0.5 * (im[m] - im[c])
        dr = re[m] - re[c]
        di = im[m] + im[c]
        o_r = 0.5 * di
        o_i = -0.5 * dr
        wr = j.cos_t[k]  # k <= M < N
        wi = -j.sin_t[k]
        real[k] = <floating>(ar + wr * o_r - wi * o_i)
        imag[k] = <floating>(ai + wr * o_i + wi * o_r)


cdef inline void _stft_frames(const _StftJob* j, const floating* x, long begin,
                              long end) noexcept nogil:
    cdef const floating* w = <const floating*>j.window
    cdef floating* real = <floating*>j.out
    cdef floating* imag = <floating*>j.out2
    cdef Py_ssize_t N = j.N, F = j.F, n, k, r, f, m
    cdef long i
    cdef double sr, si, v
    cdef double* buf = <double*>malloc(2 * N * sizeof(double))
    if buf == NULL:
        return
    for i in range(begin, end):
        r = i // j.frames
        f = i % j.frames
        if j.radix2 and j.rev_half != NULL:
            _real_fft(j, x + r * j.T + f * j.stride, w, buf, real + i * F, imag + i * F)
            continue
        for n in range(N):
            buf[n] = <double>x[r * j.T + f * j.stride + n] * w[n]
            buf[N + n] = 0.0
        if j.radix2:
            _fft(buf, buf + N, N, j.rev, j, -1.0)
            for k in range(F):
                real[i * F + k] = <floating>buf[k]
                imag[i * F + k] = <floating>buf[N + k]
            continue
        for k in range(F):
            sr = 0.0
            si = 0.0
            m = 0
            for n in range(N):
                v = buf[n]
                sr += v * j.cos_t[m]
                si -= v * j.sin_t[m]
                m += k
                if m >= N:
                    m -= N
            real[i * F + k] = <floating>sr
            imag[i * F + k] = <floating>si
    free(buf)


cdef void _stft_forward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _StftJob* j = <_StftJob*>ctx
    if j.is_double:
        _stft_frames(j, <const double*>j.x, begin, end)
    else:
        _stft_frames(j, <const float*>j.x, begin, end)


cdef inline void _stft_rows_backward(const _StftJob* j, const floating* dre, long begin,
                                     long end) noexcept nogil:
    cdef const floating* dim = <const floating*>j.x2
    cdef const floating* w = <const floating*>j.window
    cdef floating* dx = <floating*>j.out
    cdef Py_ssize_t N = j.N, F = j.F, n, k, f, m, at
    cdef long r
    cdef double g
    cdef double* buf = <double*>malloc(2 * N * sizeof(double))
    cdef double* acc = <double*>malloc(j.T * sizeof(double))
    if buf == NULL or acc == NULL:
        free(buf)
        free(acc)
        return
    for r in range(begin, end):
        for n in range(j.T):
            acc[n] = 0.0
        for f in range(j.frames):
            at = (r * j.frames + f) * F
            if j.radix2:
                for k in range(N):
                    buf[k] = dre[at + k] if k < F else 0.0
                    buf[N + k] = dim[at + k] if k < F else 0.0
                _fft(buf, buf + N, N, j.rev, j, 1.0)
            else:
                for n in range(N):
                    g = 0.0
                    m = 0
                    for k in range(F):
                        g += dre[at + k] * j.cos_t[m] - dim[at + k] * j.sin_t[m]
                        m += n
                        if m >= N:
                            m -= N
                    buf[n] = g
            for n in range(N):
                acc[f * j.stride + n] += w[n] * buf[n]
        for n in range(j.T):
            dx[r * j.T + n] = <floating>acc[n]
    free(buf)
    free(acc)


cdef void _stft_backward_job(void* ctx, long begin, long end, int slot) noexcept nogil:
    cdef _StftJob* j = <_StftJob*>ctx
    if j.is_double:
        _stft_rows_backward(j, <const double*>j.x, begin, end)
    else:
        _stft_rows_backward(j, <const float*>j.x, begin, end)


def _stft_tables(Py_ssize_t N):
    """(cos, sin, bit reversal or None): the twiddles exp(2 pi i m / N) for m < N."""
    angle = 2.0 * np.pi * np.arange(N) / N
    radix2 = N >= 2 and N & (N - 1) == 0
    rev = None
    if radix2:
        bits = N.bit_length() - 1
        m = np.arange(N)
        rev = np.zeros(N, dtype=np.intp)
        for b in range(bits):  # bits of the index, not elements
            rev |= ((m >> b) & 1) << (bits - 1 - b)
    return np.cos(angle), np.sin(angle), rev


def _bit_reversal(n):
    """The bit reversal of each m < n (n a power of two)."""
    bits = n.bit_length() - 1
    m = np.arange(n)
    rev = np.zeros(n, dtype=np.intp)
    for b in range(bits):  # bits of the index, not elements
        rev |= ((m >> b) & 1) << (bits - 1 - b)
    return rev


cdef void _stft_job_setup(_StftJob* job, const double[::1] cos_t, const double[::1] sin_t,
                          rev, rev_half, Py_ssize_t R, Py_ssize_t T, Py_ssize_t N,
                          Py_ssize_t stride):
    """rev and rev_half stay alive in the caller while the job runs."""
    cdef const Py_ssize_t[::1] rv
    job.cos_t, job.sin_t = &cos_t[0], &sin_t[0]
    job.radix2 = rev is not None
    job.rev = NULL
    job.rev_half = NULL
    if rev is not None:
        rv = rev
        job.rev = &rv[0]
    if rev_half is not None:
        rv = rev_half
        job.rev_half = &rv[0]
    job.R, job.T, job.N, job.F, job.stride = R, T, N, N // 2 + 1, stride
    job.frames = (T - N) // stride + 1


def _stft_forward(const floating[::1] x, const floating[::1] window, floating[::1] real,
                  floating[::1] imag, Py_ssize_t R, Py_ssize_t T, Py_ssize_t stride):
    """real, imag (OUT, (R, frames, F)) of x (IN, (R, T)) and the window (IN, (N,))."""
    cdef _StftJob job
    cdef Py_ssize_t N = window.shape[0]
    cos_t, sin_t, rev = _stft_tables(N)
    rev_half = _bit_reversal(N // 2) if rev is not None and N >= 4 else None
    cdef const double[::1] c = cos_t
    cdef const double[::1] s = sin_t
    _stft_job_setup(&job, c, s, rev, rev_half, R, T, N, stride)
    job.is_double = floating is double
    job.x, job.window, job.out, job.out2 = &x[0], &window[0], &real[0], &imag[0]
    cdef long items = R * job.frames
    cdef int threads = _threads(items * N)
    with nogil:
        pynn_team_for(items, team_grain(items, threads), threads, _stft_forward_job, &job)


def _stft_backward(const floating[::1] dre, const floating[::1] dim,
                   const floating[::1] window, floating[::1] dx, Py_ssize_t R, Py_ssize_t T,
                   Py_ssize_t stride):
    """dx (OUT, (R, T)) of dre, dim (IN, (R, frames, F))."""
    cdef _StftJob job
    cdef Py_ssize_t N = window.shape[0]
    cos_t, sin_t, rev = _stft_tables(N)
    cdef const double[::1] c = cos_t
    cdef const double[::1] s = sin_t
    _stft_job_setup(&job, c, s, rev, None, R, T, N, stride)
    job.is_double = floating is double
    job.x, job.x2, job.window, job.out = &dre[0], &dim[0], &window[0], &dx[0]
    cdef int threads = _threads(R * T * N)
    with nogil:
        pynn_team_for(R, team_grain(R, threads), threads, _stft_backward_job, &job)


def stft_forward(x, window, stride):
    """The DFT of each frame of x (R, T) times the window (N,): frame j starts at j*stride,
    (T - N) // stride + 1 frames -> (real, imag), each (R, frames, N // 2 + 1);
    X[k] = sum_n x[n] w[n] exp(-2 pi i n k / N) (torch.stft's sign)."""
    x, window, (R, T), N, stride, frames = operands.stft_forward(HOST, x, window, stride)
    real = np.empty((R, frames, N // 2 + 1), dtype=x.dtype)
    imag = np.empty_like(real)
    if real.size:
        _stft_forward(x.reshape(-1), window, real.reshape(-1), imag.reshape(-1), R, T, stride)
    return real, imag


def stft_backward(dreal, dimag, window, stride, length):
    """-> dx (R, length) of stft_forward: each frame's w[n] Re(sum_k (dreal[k] + i dimag[k])
    exp(+2 pi i n k / N)) added onto its samples."""
    dre, dim, window, (R, T), stride = operands.stft_backward(HOST, dreal, dimag, window,
                                                              stride, length)
    dx = np.zeros((R, T), dtype=dre.dtype)
    if dre.size:
        _stft_backward(dre.reshape(-1), dim.reshape(-1), window, dx.reshape(-1), R, T, stride)
    return dx
