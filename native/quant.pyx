"""Post-training int8 kernels (issue 18).

Legend: N batch, K input features, U output units.

``quantize_forward``: float -> uint8, q = clamp(rint(x / scale) + zero_point, 0, 255)
(per-tensor, round half to even). ``int8_dense_forward``: uint8 activations (N, K) with a
per-tensor zero point times int8 weights stored by unit (U, K), symmetric per channel:

    acc[n, u] = sat_int32(sum_k xq[n, k] wq[u, k] - x_zero_point sum_k wq[u, k] + bias[u])
    yq[n, u]  = clamp(rint(float32(acc) * multiplier[u]) + y_zero_point, lo, 255)

with lo = y_zero_point under relu (the fused activation), else 0; multiplier[u] =
x_scale * w_scale[u] / y_scale, formed by the caller; y_zero_point None gives float32
sat_int32(acc) * multiplier[u] instead (dynamic quantization). The products run on
``_qgemm.h``'s register-blocked GEMM over weights packed once in the VNNI layout
(``int8_pack_weights``): AMX tiles (TDPBUSD, 32 x 32 per pass, where the CPU has AMX-INT8
and Linux grants it) / AVX-512 VNNI vpdpbusd (8 x 32 tiles) / AVX2 vpmaddwd after widening
(2 x 16) / scalar, chosen at RUN time (``force_isa`` pins one for the tests), exact in int32;
the zero-point correction and bias add in int64, saturated to int32, in the fused epilogue.
``int8_im2col``: the uint8 patches that make Conv2D this same GEMM; ``int8_conv2d_forward``
(branch q8): that Conv2D without the patch matrix, each thread gathering a 64-row tile of
patches into its cache-resident scratch and running the GEMM over it (the same bits);
``int8_max_pool2d``: max pooling of uint8 codes, which static int8 models run between int8
layers (max commutes with the monotone requantization).

Tiles are (64 rows x 16 or 32 units), column tiles outermost under a static prange; every
output is written by one tile from exact integer sums, so results are bit-identical for any
thread count and ISA path and equal the integer NumPy reference.
"""
import numpy as np

cimport numpy as cnp

from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.math cimport fmaxf, fminf, isfinite, rint, rintf
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from pynn.backend.operands import quant as operands
from pynn.backend.operands.common import HOST

cnp.import_array()

cdef extern from "_qgemm.h" nogil:
    ctypedef struct pynn_qgemm_args:
        const uint8_t* x
        Py_ssize_t ldx
        const int8_t* packed
        Py_ssize_t k4, n, units
        const int64_t* correction
        const int32_t* correction32
        const float* multiplier
        float y_zero_point, lo
        uint8_t* y
        float* yf
        int relu
    int QGEMM_MAX_K, QGEMM_NB, QGEMM_SCALAR, QGEMM_AVX2, QGEMM_AVX512_VNNI, QGEMM_AMX
    int pynn_qgemm_isa()
    int pynn_qgemm_best_isa()
    int pynn_qgemm_force(int isa)
    void pynn_qgemm_wsum(const int8_t* packed, Py_ssize_t k4, Py_ssize_t units,
                         Py_ssize_t ub, int64_t* wsum)
    void pynn_qgemm_pack(const int8_t* w, Py_ssize_t units, Py_ssize_t k, int8_t* packed,
                         Py_ssize_t ub)
    Py_ssize_t pynn_qgemm_blocks_per_tile(int isa)
    void pynn_qgemm_tile(const pynn_qgemm_args* a, int isa, Py_ssize_t r0, Py_ssize_t r1,
                         Py_ssize_t ub)
    void pynn_qim2col_row(const uint8_t* x, uint8_t* cols, Py_ssize_t ldc, Py_ssize_t b,
                          Py_ssize_t oy, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
                          Py_ssize_t wo, Py_ssize_t ox0, uint8_t pad, Py_ssize_t n, int spill)
    ctypedef struct pynn_qconv_geom:
        const uint8_t* x
        Py_ssize_t n, h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo
        uint8_t pad
    void pynn_qconv_tile(const pynn_qgemm_args* a, const pynn_qconv_geom* g, int isa,
                         uint8_t* buf, Py_ssize_t p0, Py_ssize_t p1)

MAX_K = QGEMM_MAX_K
ISAS = {"scalar": QGEMM_SCALAR, "avx2": QGEMM_AVX2, "avx512_vnni": QGEMM_AVX512_VNNI,
        "amx_int8": QGEMM_AMX}
_ISA_NAMES = {v: k for k, v in ISAS.items()}


def available_isas():
    """The int8 GEMM paths this CPU can run, slowest first."""
    best = pynn_qgemm_best_isa()
    return [name for name, code in ISAS.items() if code <= best]


def kernel_isa():
    """The path int8_dense_forward takes now (detected at run time unless forced)."""
    return _ISA_NAMES[pynn_qgemm_isa()]


def force_isa(name):
    """Test hook: pin the int8 GEMM to ``name`` (one of available_isas()), or None to go
    back to run-time detection."""
    if name is None:
        pynn_qgemm_force(-1)
        return
    if name not in ISAS or pynn_qgemm_force(ISAS[name]) != 0:
        raise ValueError(f"force_isa: {name!r} is not one of this CPU's int8 paths "
                         f"{available_isas()}")


ISA = kernel_isa()  # the detected path, as pynn info reports it

cdef enum:
    PARALLEL_MIN = 32768
    # Elementwise passes and the weight sums are memory-bound and vectorized: waking the
    # OpenMP team (passive wait) costs more than it saves below ~1M elements.
    STREAM_PARALLEL_MIN = 1 << 20

cdef enum:
    # Multiply-adds below which the int8 GEMM runs on one thread: waking the passive OpenMP
    # team costs 30-100 us on the shared machine, what ~10M VNNI multiply-adds take
    # (the digits CNN's layers, timed one by one on 1 and 2 threads: every layer at batch 1
    # and its Dense layers at batch 64 ran faster alone).
    GEMM_PARALLEL_MIN = 8 << 20

cdef int64_t INT32_LO = -2147483648
cdef int64_t INT32_HI = 2147483647


cdef inline uint8_t requantize(float v, float zero_point, float lo) noexcept nogil:
    # (qbreadth) Compares, not fminf/fmaxf, which GCC leaves as libm calls (their NaN rules):
    # the loop then vectorizes. not (r >= lo) keeps fmaxf's NaN -> lo; top is a float (a
    # 255.0 literal would be a double).
    cdef float r = rintf(v) + zero_point, top = 255.0
    r = lo if not (r >= lo) else r
    return <uint8_t>(top if r > top else r)


cdef inline void _quantize_run(const float* x, uint8_t* q, Py_ssize_t n, float scale,
                              float zero_point) noexcept nogil:
    # (qbreadth) On raw pointers: a uint8 store may alias the memoryviews' data pointers, so
    # the same loop over memoryview items inside prange reloads them and stays scalar.
    cdef Py_ssize_t i
    for i in range(n):
        q[i] = requantize(x[i] / scale, zero_point, 0)


cdef enum:
    QUANTIZE_CHUNK = 1 << 16


def _quantize(const float[::1] x, uint8_t[::1] q, float scale, float zero_point):
    # 12-20x faster than the prange over items it replaces (4M values: 1.0 ms vs 12-20 ms,
    # AMD EPYC, shared), bit-identical
    cdef Py_ssize_t n = x.shape[0], chunk, start
    cdef Py_ssize_t chunks = (n + QUANTIZE_CHUNK - 1) // QUANTIZE_CHUNK
    with nogil:
        for chunk in prange(chunks, schedule="static",
                            use_threads_if=n >= STREAM_PARALLEL_MIN):
            start = chunk * QUANTIZE_CHUNK
            _quantize_run(&x[start], &q[start], min(n - start, QUANTIZE_CHUNK), scale,
                          zero_point)


def quantize_forward(x, scale, zero_point):
    """uint8 clamp(rint(x / scale) + zero_point, 0, 255), any shape."""
    x, scale, zero_point = operands.quantize_forward(HOST, x, scale, zero_point)
    q = np.empty(x.shape, np.uint8)
    if x.size:
        _quantize(x.reshape(-1), q.reshape(-1), scale, zero_point)
    return q


def _dequantize(const uint8_t[::1] q, float[::1] y, float scale, float zero_point):
    cdef Py_ssize_t n = q.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= STREAM_PARALLEL_MIN):
            y[i] = (<float>q[i] - zero_point) * scale


def dequantize_forward(q, scale, zero_point):
    """float32 (q - zero_point) * scale, any shape."""
    q, scale, zero_point = operands.dequantize_forward(HOST, q, scale, zero_point)
    y = np.empty(q.shape, np.float32)
    if q.size:
        _dequantize(q.reshape(-1), y.reshape(-1), scale, zero_point)
    return y


cdef enum:
    ROWS_PER_TILE = 64  # rows of a tile: its weight panel stays in cache across them

def TILE_BYTES(k4):
    """Bytes of one thread's _int8_conv scratch: a tile of patch rows of 4 K4 bytes, and 16
    past the last (the gather's 16-byte moves, _qgemm.h)."""
    return ROWS_PER_TILE * 4 * k4 + 16


def _pack(const int8_t[:, ::1] wq,      # IN (U, K)
          int8_t[:, :, ::1] packed):    # OUT (ceil(U / 16), ceil(K / 4), 64)
    cdef Py_ssize_t units = wq.shape[0], k = wq.shape[1], ub
    with nogil:
        for ub in prange(packed.shape[0], schedule="static",
                         use_threads_if=units * k >= PARALLEL_MIN):
            pynn_qgemm_pack(&wq[0, 0], units, k, &packed[0, 0, 0], ub)


def int8_pack_weights(wq):
    """int8 weights by unit (U, K) -> the GEMM's VNNI pack (ceil(U / 16), ceil(K / 4), 64):
    packed[b, g, 4 l + i] = wq[16 b + l, 4 g + i], zeros past U and K (K4 >= 1). Layers pack once and
    pass the pack to int8_dense_forward."""
    wq = operands.int8_pack_weights(HOST, wq)
    units, k = wq.shape
    packed = np.zeros(((units + QGEMM_NB - 1) // QGEMM_NB, max((k + 3) // 4, 1), 64), np.int8)
    if packed.size:
        _pack(wq, packed)
    return packed


def _weight_sums(const int8_t[:, :, ::1] packed,   # IN (ceil(U / 16), K4, 64)
                 int64_t[::1] wsum):                 # OUT (U,) sum_k w[u, k]
    cdef Py_ssize_t units = wsum.shape[0], k4 = packed.shape[1], ub
    with nogil:
        for ub in prange(packed.shape[0], schedule="static",
                         use_threads_if=units * k4 * 4 >= STREAM_PARALLEL_MIN):
            pynn_qgemm_wsum(&packed[0, 0, 0], k4, units, ub, &wsum[0])


def _fold_corrections(const int64_t[::1] wsum,    # IN (U,) sum_k w[u, k] (_weight_sums)
                      const int32_t[::1] bias,    # IN (U,), or None
                      int x_zero_point, Py_ssize_t k4,
                      int64_t[::1] correction,    # OUT (U,) bias - x_zero_point wsum
                      int32_t[::1] correction32): # OUT (U,) its int32 copy
    """The epilogue's per-unit term. True when no dot product plus correction can leave
    int32 (|dot| <= 255 * 128 per product, 4 K4 products), so the kernels may add the int32
    copy instead of saturating int64 sums."""
    cdef Py_ssize_t units = correction.shape[0], u
    cdef int64_t worst = 0
    with nogil:
        for u in range(units):
            correction[u] = (bias[u] if bias is not None else 0) - \
                <int64_t>x_zero_point * wsum[u]
            worst = max(worst, correction[u] if correction[u] >= 0 else -correction[u])
            correction32[u] = <int32_t>correction[u]
    return 255 * 128 * 4 * k4 + worst < INT32_HI


def _corrections(const int8_t[:, :, ::1] packed, bias, int x_zero_point,
                 int64_t[::1] correction, int32_t[::1] correction32):
    """_fold_corrections from the pack's weight sums. A static layer makes these once per
    weight value; the public ops make them per call."""
    _weight_sums(packed, correction)
    return _fold_corrections(correction, bias, x_zero_point, packed.shape[1], correction,
                             correction32)


def _dynamic_operands(const float[::1] x,          # IN (n,) the batch, flat
                      uint8_t[::1] xq,               # OUT (n,) its codes
                      const double[::1] w_scale,     # IN (U,) per-unit weight scales
                      const double[::1] bias,        # IN (U,) float bias, or None
                      const int64_t[::1] wsum,       # IN (U,) _weight_sums
                      Py_ssize_t k4,
                      float[::1] multiplier,         # OUT (U,) x_scale * w_scale
                      int64_t[::1] correction,       # OUT (U,) (_fold_corrections)
                      int32_t[::1] correction32):    # OUT (U,)
    """A dynamic int8 layer's per-batch operands in one call, with the bits of
    QuantizedDense._int8_matmul's NumPy (activation_params' min-max scale and zero point,
    the quantized batch, the multiplier, the rounded bias and its corrections): ->
    (x_zero_point, whether the int32 corrections may be used), or None for a batch holding
    NaN or inf (the layer's call words that error)."""
    cdef Py_ssize_t n = x.shape[0], units = w_scale.shape[0], i, u
    cdef float lo = 0, hi = 0, v
    cdef bint finite = True
    cdef double dlo, dhi, scale, per_unit, q
    cdef int zp
    cdef int64_t worst = 0, bq
    with nogil:
        for i in range(n):
            v = x[i]
            finite = finite and isfinite(v)
            lo = v if v < lo else lo
            hi = v if v > hi else hi
    if not finite:
        return None
    # activation_params: the range with 0 in it, float64; the scale rounded to float32
    dlo, dhi = lo, hi
    scale = (dhi - dlo) / 255.0 if dhi > dlo else 1.0
    zp = <int>min(max(rint(-dlo / scale), 0.0), 255.0)
    scale = <float>scale
    if n:
        _quantize(x, xq, <float>scale, <float>zp)
    with nogil:
        for u in range(units):
            per_unit = scale * w_scale[u]
            multiplier[u] = <float>per_unit
            bq = 0
            if bias is not None:
                q = rint(bias[u] / per_unit)
                q = -2147483648.0 if q < -2147483648.0 else (2147483647.0 if q > 2147483647.0
                                                             else q)
                bq = <int32_t>q
            correction[u] = bq - <int64_t>zp * wsum[u]
            worst = max(worst, correction[u] if correction[u] >= 0 else -correction[u])
            correction32[u] = <int32_t>correction[u]
    return zp, 255 * 128 * 4 * k4 + worst < INT32_HI


cdef void _fill_epilogue(pynn_qgemm_args* a, const int8_t[:, :, ::1] packed,
                        const int64_t[::1] correction, const int32_t[::1] correction32,
                        const float[::1] multiplier, uint8_t[:, ::1] yq, float[:, ::1] yf,
                        float y_zero_point, float lo, bint relu) noexcept nogil:
    """Everything of ``a`` but its input rows: the weights, the corrections (the int32 copy
    None where a sum could leave int32), the requantization and the output."""
    a.packed = &packed[0, 0, 0]
    a.k4 = packed.shape[1]
    a.units = multiplier.shape[0]
    a.correction = &correction[0]
    a.correction32 = &correction32[0] if correction32 is not None else NULL
    a.multiplier = &multiplier[0]
    a.y_zero_point = y_zero_point
    a.lo = lo
    a.y = &yq[0, 0] if yq is not None else NULL
    a.yf = &yf[0, 0] if yf is not None else NULL
    a.relu = relu


def _int8_dense(const uint8_t[:, ::1] xq,          # IN (N, 4 * K4), rows zero-padded
                const int8_t[:, :, ::1] packed,    # IN (ceil(U / 16), K4, 64)
                const int64_t[::1] correction,     # IN (U,) (_corrections)
                const int32_t[::1] correction32,   # IN (U,) or None (_corrections)
                const float[::1] multiplier,       # IN (U,)
                uint8_t[:, ::1] yq,                # OUT (N, U), or None:
                float[:, ::1] yf,                  # OUT (N, U) float output
                float y_zero_point, float lo, bint relu):
    cdef Py_ssize_t n = xq.shape[0], units = multiplier.shape[0], k4 = packed.shape[1], t
    cdef Py_ssize_t nblocks = packed.shape[0]
    cdef int isa = pynn_qgemm_isa()
    cdef Py_ssize_t bpt = pynn_qgemm_blocks_per_tile(isa)
    cdef Py_ssize_t col_tiles = (nblocks + bpt - 1) // bpt
    cdef Py_ssize_t row_tiles = (n + ROWS_PER_TILE - 1) // ROWS_PER_TILE, r0, r1
    cdef pynn_qgemm_args a
    cdef bint parallel = n * units * k4 * 4 >= GEMM_PARALLEL_MIN
    with nogil:
        _fill_epilogue(&a, packed, correction, correction32, multiplier, yq, yf,
                       y_zero_point, lo, relu)
        a.x = &xq[0, 0]
        a.ldx = xq.shape[1]
        a.n = n
        # column tiles outermost: a static schedule hands each thread whole weight panels
        for t in prange(col_tiles * row_tiles, schedule="static", use_threads_if=parallel):
            r0 = (t % row_tiles) * ROWS_PER_TILE
            r1 = min(r0 + ROWS_PER_TILE, n)
            pynn_qgemm_tile(&a, isa, r0, r1, (t // row_tiles) * bpt)


cdef class Int8Row:
    """A static int8 Dense's one-row inference with its operands bound once (an inference
    plan's batch-1 step, as rnn.OneRow is a recurrence's): ``run(x)`` takes one row as the
    layer does, float32 (quantized here by the input's scale and zero point) or its uint8
    codes, and returns a fresh (1, U) array, float32 (dequantized by the output's) or uint8
    codes; None for any other x (the caller's checked way). _quantize, _int8_dense and
    _dequantize's arithmetic: the same bits. The plan's per-layer calls spent ~4 us a layer
    acquiring nine memoryviews and opening OpenMP regions, the products ~0.5."""
    cdef pynn_qgemm_args base
    cdef object keep
    cdef Py_ssize_t k
    cdef bint quantize_in, dequantize_out
    cdef float in_scale, in_zero_point, out_scale, out_zero_point

    def __init__(self, const int8_t[:, :, ::1] packed, const int64_t[::1] correction,
                 const int32_t[::1] correction32, const float[::1] multiplier,
                 float y_zero_point, float lo, bint relu, Py_ssize_t k, quantize_in=None,
                 dequantize_out=None):
        """packed, correction(32), multiplier, y_zero_point, lo, relu: _int8_dense's; k the
        input's width (<= 4 * K4); quantize_in / dequantize_out: (scale, zero point) of a
        float input or output, or None for uint8 codes."""
        cdef uint8_t[:, ::1] no_codes = None
        cdef float[:, ::1] no_floats = None
        if not 0 < k <= 4 * packed.shape[1] or packed.shape[0] * 16 < multiplier.shape[0] \
                or correction.shape[0] != multiplier.shape[0]:
            raise ValueError(f"Int8Row: {k} inputs, a pack of {packed.shape[1]} groups and "
                             f"{multiplier.shape[0]} units do not fit")
        _fill_epilogue(&self.base, packed, correction, correction32, multiplier, no_codes,
                       no_floats, y_zero_point, lo, relu)
        self.base.ldx = 4 * packed.shape[1]
        self.base.n = 1
        self.keep = (packed, correction, correction32, multiplier)
        self.k = k
        self.quantize_in = quantize_in is not None
        self.dequantize_out = dequantize_out is not None
        if self.quantize_in:
            self.in_scale, self.in_zero_point = quantize_in
        if self.dequantize_out:
            self.out_scale, self.out_zero_point = dequantize_out

    def run(self, x):
        cdef cnp.ndarray a, out, codes
        cdef cnp.npy_intp dims[2]
        cdef pynn_qgemm_args t = self.base
        cdef Py_ssize_t i, ub, units = t.units, ldx = t.ldx
        cdef int isa = pynn_qgemm_isa()
        cdef Py_ssize_t bpt = pynn_qgemm_blocks_per_tile(isa)
        cdef uint8_t* row
        cdef uint8_t* q
        if type(x) is not np.ndarray:
            return None
        a = <cnp.ndarray>x
        if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIM(a, 0) != 1
                or cnp.PyArray_DIM(a, 1) != self.k
                or cnp.PyArray_TYPE(a) != (cnp.NPY_FLOAT32 if self.quantize_in
                                           else cnp.NPY_UINT8)
                or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
            return None
        dims[0], dims[1] = 1, units
        out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32 if self.dequantize_out
                                else cnp.NPY_UINT8, 0)
        codes = cnp.PyArray_EMPTY(2, dims, cnp.NPY_UINT8, 0) if self.dequantize_out else out
        cdef const void* src = cnp.PyArray_DATA(a)
        cdef float* y = <float*>cnp.PyArray_DATA(out) if self.dequantize_out else NULL
        cdef Py_ssize_t nblocks = (units + QGEMM_NB - 1) // QGEMM_NB
        q = <uint8_t*>cnp.PyArray_DATA(codes)
        row = <uint8_t*>malloc(ldx)
        if row == NULL:
            raise MemoryError("Int8Row: no memory for one row")
        with nogil:
            memset(row, 0, ldx)  # the row padded with zeros to 4 K4 bytes
            if self.quantize_in:
                _quantize_run(<const float*>src, row, self.k, self.in_scale,
                              self.in_zero_point)
            else:
                memcpy(row, src, self.k)
            t.x = row
            t.y = q
            ub = 0
            while ub < nblocks:
                pynn_qgemm_tile(&t, isa, 0, 1, ub)
                ub += bpt
            if self.dequantize_out:
                for i in range(units):
                    y[i] = (<float>q[i] - self.out_zero_point) * self.out_scale
        free(row)
        return out


def _call_corrections(packed, bias, x_zero_point, units):
    correction = np.empty(units, np.int64)
    correction32 = np.empty(units, np.int32)
    if not _corrections(packed, bias, x_zero_point, correction, correction32):
        correction32 = None
    return correction, correction32


def int8_dense_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu):
    """uint8 (N, U) from uint8 xq (N, K) and int8 weights: by unit (U, K), or packed by
    int8_pack_weights (what layers pass); see the module docstring. ``y_zero_point`` None:
    float32 (N, U) = sat_int32(acc) * multiplier[u] (relu: max(., 0)), dynamic quantization's
    output."""
    xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu = operands.int8_dense_forward(
        HOST, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu)
    units = multiplier.shape[0]
    float_out = y_zero_point is None
    yq = np.empty((xq.shape[0], units), np.float32 if float_out else np.uint8)
    if not yq.size:
        return yq
    if wq.ndim == 2:
        wq = int8_pack_weights(wq)
    k = xq.shape[1]
    if k == 0:  # no products: the loops below read no row
        xq = np.zeros((xq.shape[0], 4), np.uint8)
        wq = np.zeros((wq.shape[0], 1, 64), np.int8)
    elif k % 4:  # the GEMM reads activations 4 bytes at a time
        padded = np.zeros((xq.shape[0], k + 4 - k % 4), np.uint8)
        padded[:, :k] = xq
        xq = padded
    correction, correction32 = _call_corrections(wq, bias, x_zero_point, units)
    if float_out:
        _int8_dense(xq, wq, correction, correction32, multiplier, None, yq, 0.0, 0.0, relu)
    else:
        _int8_dense(xq, wq, correction, correction32, multiplier, yq, None, y_zero_point,
                    y_zero_point if relu else 0.0, relu)
    return yq


def _im2col(const uint8_t[:, :, :, ::1] xq,   # IN (N, H, W, C)
            uint8_t[:, ::1] cols,             # OUT (N * HO * WO, KH * KW * C)
            int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl, int ho, int wo,
            uint8_t pad_value):
    cdef Py_ssize_t n = xq.shape[0], h = xq.shape[1], w = xq.shape[2], c = xq.shape[3]
    cdef Py_ssize_t t
    with nogil:
        # one (sample, output row) per iteration
        for t in prange(n * ho, schedule="static",
                        use_threads_if=cols.shape[0] * cols.shape[1] >= STREAM_PARALLEL_MIN):
            pynn_qim2col_row(&xq[0, 0, 0, 0], &cols[t * wo, 0], cols.shape[1], t // ho, t % ho,
                             h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, wo, 0, pad_value, n,
                             0)


def int8_im2col(xq, kernel_size, strides, padding, dilation_rate, pad_value):
    """uint8 patches (N * HO * WO, KH * KW * C) of uint8 xq (N, H, W, C), in Conv2D's kernel
    order (kh, kw, c), so int8_dense_forward over them with the (F, KH * KW * C) weights is
    the int8 Conv2D. Padding reads ``pad_value`` (the input zero point: the real 0)."""
    xq, g, pad_value = operands.int8_im2col(HOST, xq, kernel_size, strides, padding,
                                            dilation_rate, pad_value)
    cols = np.empty((g["N"] * g["HO"] * g["WO"], g["KH"] * g["KW"] * g["C"]), np.uint8)
    if cols.size:
        _im2col(xq, cols, g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"], g["PT"],
                g["PL"], g["HO"], g["WO"], pad_value)
    return cols


# -- int8 depthwise convolution (issue 18, branch qbreadth) --------------------------------
# Per-channel int8 dot products: what DepthwiseConv2D and SeparableConv2D's first part run
# (pynn.layers.quantized_extra), C times fewer products than the GEMM over block-diagonal
# weights would do.
from _openmp cimport omp_get_max_threads, omp_get_thread_num


cdef extern from "_qdepthwise.h" nogil:
    void pynn_qdw_row_tap(int32_t* acc, const uint8_t* x, const int8_t* w, Py_ssize_t c,
                          Py_ssize_t wo, Py_ssize_t w_in, Py_ssize_t sw, Py_ssize_t ix0,
                          int32_t zero_point)
    void pynn_qdw_epilogue_u8(const int32_t* acc, const int32_t* bias, const float* mult,
                              uint8_t* y, Py_ssize_t cm, float zero_point, float lo)
    void pynn_qdw_epilogue_f32(const int32_t* acc, const int32_t* bias, const float* mult,
                               float* y, Py_ssize_t cm, int relu)


def _int8_depthwise(const uint8_t[:, :, :, ::1] xq,    # IN (N, H, W, C)
                    const int8_t[:, :, :, ::1] wq,     # IN (KH, KW, C, M)
                    const int32_t[::1] bias,           # IN (C * M,) (zeros when none)
                    const float[::1] multiplier,       # IN (C * M,)
                    int32_t[:, ::1] acc,               # SCRATCH (threads, WO * C * M)
                    uint8_t[:, ::1] yq,                # OUT (N * HO, WO * C * M), or None:
                    float[:, ::1] yf,                  # OUT float output
                    int x_zero_point, float y_zero_point, float lo, bint relu,
                    int sh, int sw, int dh, int dw, int pt, int pl, int ho, int wo):
    cdef Py_ssize_t n = xq.shape[0], h = xq.shape[1], w = xq.shape[2], c = xq.shape[3]
    cdef Py_ssize_t kh = wq.shape[0], kw = wq.shape[1], m = wq.shape[3], cm = c * m
    cdef Py_ssize_t t, b, oy, ox, i, j, iy, ix, u, o
    cdef int32_t* a
    cdef const uint8_t* xr
    cdef const int8_t* wr
    with nogil:
        # one (sample, output row) per iteration, accumulated tap by tap into the thread's
        # scratch row (small and hot: a whole-output int32 scratch costs its page faults)
        for t in prange(n * ho, schedule="static",
                        use_threads_if=n * ho * wo * cm * kh * kw >= PARALLEL_MIN):
            b = t // ho
            oy = t % ho
            a = &acc[omp_get_thread_num(), 0]
            memset(a, 0, wo * cm * sizeof(int32_t))
            for i in range(kh):
                iy = oy * sh - pt + i * dh
                if iy < 0 or iy >= h:
                    continue  # padding reads the zero point: (zp - zp) w adds nothing
                for j in range(kw):
                    wr = &wq[i, j, 0, 0]
                    if m == 1:  # the common case: contiguous channels, in C (restrict)
                        pynn_qdw_row_tap(a, &xq[b, iy, 0, 0], wr, c, wo, w, sw,
                                         j * dw - pl, x_zero_point)
                        continue
                    for ox in range(wo):
                        ix = ox * sw - pl + j * dw
                        if ix < 0 or ix >= w:
                            continue
                        xr = &xq[b, iy, ix, 0]
                        for u in range(cm):
                            a[ox * cm + u] += (<int32_t>xr[u // m] - x_zero_point) * wr[u]
            for ox in range(wo):  # the epilogue, in C so that it vectorizes
                o = ox * cm
                if yq is None:
                    pynn_qdw_epilogue_f32(a + o, &bias[0], &multiplier[0], &yf[t, o], cm, relu)
                else:
                    pynn_qdw_epilogue_u8(a + o, &bias[0], &multiplier[0], &yq[t, o], cm,
                                         y_zero_point, lo)


def int8_depthwise_conv2d_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                                  strides, padding, dilation_rate):
    """uint8 (N, HO, WO, C * M) from uint8 xq (N, H, W, C) and int8 weights (KH, KW, C, M)
    (Keras's depthwise layout, symmetric per output channel c * M + m):

        acc = sat_int32(sum over the window's taps inside the input of
                        (xq - x_zero_point) wq[kh, kw, c, m] + bias[c * M + m])

    (padding reads the zero point, the real 0, so it adds nothing), then int8_dense_forward's
    epilogue: uint8 clamp(rint(float32(acc) * multiplier) + y_zero_point, lo, 255), or with
    ``y_zero_point`` None float32 acc * multiplier (relu: max(., 0))."""
    xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu, g = \
        operands.int8_depthwise_conv2d_forward(HOST, xq, wq, bias, x_zero_point, multiplier,
                                               y_zero_point, relu, strides, padding,
                                               dilation_rate)
    cm = multiplier.shape[0]
    float_out = y_zero_point is None
    shape = (g["N"], g["HO"], g["WO"], cm)
    y = np.empty(shape, np.float32 if float_out else np.uint8)
    if not y.size:
        return y
    if bias is None:
        bias = np.zeros(cm, np.int32)
    acc = np.empty((omp_get_max_threads(), g["WO"] * cm), np.int32)
    flat = y.reshape(g["N"] * g["HO"], g["WO"] * cm)
    _int8_depthwise(xq, wq, bias, multiplier, acc, None if float_out else flat,
                    flat if float_out else None, x_zero_point,
                    0.0 if float_out else y_zero_point,
                    0.0 if float_out else (y_zero_point if relu else 0.0), relu,
                    g["SH"], g["SW"], g["DH"], g["DW"], g["PT"], g["PL"], g["HO"], g["WO"])
    return y
# -- end int8 depthwise convolution --



# -- int8 chained inference (issue 18, branch q8) ------------------------------------------
cdef extern from "_qpool.h" nogil:
    void pynn_qmaxpool_row(const uint8_t* x, uint8_t* y, Py_ssize_t b, Py_ssize_t oy,
                           Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t ph,
                           Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                           Py_ssize_t pl, Py_ssize_t wo)


def _int8_max_pool(const uint8_t[:, :, :, ::1] xq,   # IN (N, H, W, C)
                   uint8_t[:, :, :, ::1] y,          # OUT (N, HO, WO, C)
                   int ph, int pw, int sh, int sw, int pt, int pl):
    cdef Py_ssize_t n = xq.shape[0], h = xq.shape[1], w = xq.shape[2], c = xq.shape[3]
    cdef Py_ssize_t ho = y.shape[1], wo = y.shape[2], t
    with nogil:
        # one (sample, output row) per iteration
        for t in prange(n * ho, schedule="static",
                        use_threads_if=n * ho * wo * c * ph * pw >= STREAM_PARALLEL_MIN):
            pynn_qmaxpool_row(&xq[0, 0, 0, 0], &y[t // ho, t % ho, 0, 0], t // ho, t % ho,
                              h, w, c, ph, pw, sh, sw, pt, pl, wo)


def int8_max_pool2d(xq, pool_size, strides, padding):
    """uint8 (N, HO, WO, C): the max over each window's taps inside uint8 xq (N, H, W, C),
    MaxPooling2D's geometry (strides None: pool_size). Max commutes with requantization (a
    monotone map), so this pools the values the codes stand for."""
    xq, g = operands.int8_max_pool2d(HOST, xq, pool_size, strides, padding)
    y = np.empty((g["N"], g["HO"], g["WO"], g["C"]), np.uint8)
    if y.size:
        _int8_max_pool(xq, y, g["KH"], g["KW"], g["SH"], g["SW"], g["PT"], g["PL"])
    return y


def _int8_conv(const uint8_t[:, :, :, ::1] xq,     # IN (N, H, W, C)
               const int8_t[:, :, ::1] packed,     # IN (ceil(F / 16), K4, 64)
               const int64_t[::1] correction,      # IN (F,) (_corrections)
               const int32_t[::1] correction32,    # IN (F,) or None (_corrections)
               const float[::1] multiplier,        # IN (F,)
               uint8_t[:, ::1] bufs,               # SCRATCH (threads, TILE_BYTES(K4))
               uint8_t[:, ::1] yq,                 # OUT (N * HO * WO, F), or None:
               float[:, ::1] yf,                   # OUT float output
               uint8_t pad, float y_zero_point, float lo, bint relu,
               int kh, int kw, int sh, int sw, int dh, int dw, int pt, int pl, int ho, int wo):
    cdef Py_ssize_t units = multiplier.shape[0], k4 = packed.shape[1], t
    cdef Py_ssize_t rows = xq.shape[0] * ho * wo
    cdef Py_ssize_t tiles = (rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    cdef int isa = pynn_qgemm_isa()
    cdef pynn_qgemm_args a
    cdef pynn_qconv_geom g
    cdef bint parallel = rows * units * k4 * 4 >= GEMM_PARALLEL_MIN
    cdef Py_ssize_t n = xq.shape[0], h = xq.shape[1], w = xq.shape[2], c = xq.shape[3]
    # the input rows and columns the outputs read, padding included
    cdef Py_ssize_t hp = (ho - 1) * sh + (kh - 1) * dh + 1, wp = (wo - 1) * sw + (kw - 1) * dw + 1
    cdef uint8_t* padded = NULL
    with nogil:
        _fill_epilogue(&a, packed, correction, correction32, multiplier, yq, yf,
                       y_zero_point, lo, relu)
        a.x = NULL
        a.ldx = 4 * k4
        a.n = rows
        g.x = &xq[0, 0, 0, 0]
        g.n, g.h, g.w, g.c = n, h, w, c
        g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.ho, g.wo = \
            kh, kw, sh, sw, dh, dw, pt, pl, ho, wo
        g.pad = pad
        if kw * c <= 16 and dw == 1 and (pt > 0 or pl > 0 or hp > h or wp > w):
            # Window rows of at most 16 bytes (C = 1 or 3: a first layer) gather as one
            # move each, but only inside the input: the border pixels' per-tap checks and
            # pad fills cost most of the layer on small images (44% of an 8 x 8 image's
            # pixels touch the border). Over an input padded once with the zero point, every
            # pixel takes the move (digits CNN's first conv at batch 64: 78 -> 50 us).
            padded = <uint8_t*>malloc(n * hp * wp * c)
            if padded != NULL:
                for t in prange(n * hp, schedule="static",
                                use_threads_if=n * hp * wp * c >= STREAM_PARALLEL_MIN):
                    _pad_row(&xq[0, 0, 0, 0], padded + t * wp * c, t // hp, t % hp - pt,
                             h, w, c, pl, wp, pad)
                g.x = padded
                g.h, g.w, g.pt, g.pl = hp, wp, 0, 0
        # row tiles: each thread gathers its tile's patches into its own scratch (cache
        # resident) and runs every column tile over them
        for t in prange(tiles, schedule="static", use_threads_if=parallel):
            pynn_qconv_tile(&a, &g, isa, &bufs[omp_get_thread_num(), 0], t * ROWS_PER_TILE,
                            min(t * ROWS_PER_TILE + ROWS_PER_TILE, rows))
        free(padded)


cdef inline void _pad_row(const uint8_t* x, uint8_t* dst, Py_ssize_t b, Py_ssize_t iy,
                          Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t pl,
                          Py_ssize_t wp, uint8_t pad) noexcept nogil:
    """Row iy of sample b (any row: outside the input, all pad) as wp columns of C bytes,
    input column ix at column ix + pl."""
    cdef Py_ssize_t inside = min(w, wp - pl)
    if iy < 0 or iy >= h or inside <= 0:
        memset(dst, pad, wp * c)
        return
    memset(dst, pad, pl * c)
    memcpy(dst + pl * c, x + (b * h + iy) * w * c, inside * c)
    memset(dst + (pl + inside) * c, pad, (wp - pl - inside) * c)


def int8_conv2d_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu,
                        kernel_size, strides, padding, dilation_rate):
    """The int8 Conv2D: uint8 (N, HO, WO, F) (float32 with ``y_zero_point`` None) equal to
    int8_dense_forward(int8_im2col(xq, kernel_size, strides, padding, dilation_rate,
    x_zero_point), wq, ...), without the patch matrix: weights (F, KH * KW * C) by unit or
    packed by int8_pack_weights (what layers pass)."""
    xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu, g = \
        operands.int8_conv2d_forward(HOST, xq, wq, bias, x_zero_point, multiplier,
                                     y_zero_point, relu, kernel_size, strides, padding,
                                     dilation_rate)
    units = multiplier.shape[0]
    float_out = y_zero_point is None
    y = np.empty((g["N"], g["HO"], g["WO"], units), np.float32 if float_out else np.uint8)
    if not y.size:
        return y
    if wq.ndim == 2:
        wq = int8_pack_weights(wq)
    correction, correction32 = _call_corrections(wq, bias, x_zero_point, units)
    bufs = np.zeros((omp_get_max_threads(), TILE_BYTES(wq.shape[1])), np.uint8)
    flat = y.reshape(-1, units)
    _int8_conv(xq, wq, correction, correction32, multiplier, bufs, None if float_out else flat,
               flat if float_out else None, x_zero_point,
               0.0 if float_out else y_zero_point,
               0.0 if float_out else (y_zero_point if relu else 0.0), relu,
               g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"], g["PT"], g["PL"], g["HO"],
               g["WO"])
    return y
# -- end int8 chained inference --
