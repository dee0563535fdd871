"""Post-training int8 kernels (issue 18).

Legend: N batch, K input features, U output units.

``quantize_forward``: float -> uint8, q = clamp(rint(x / scale) + zero_point, 0, 255)
(per-tensor, round half to even). ``int8_dense_forward``: uint8 activations (N, K) with a
per-tensor zero point times int8 weights stored by unit (U, K), symmetric per channel:

    acc[n, u] = sat_int32(sum_k xq[n, k] wq[u, k] - x_zero_point sum_k wq[u, k] + bias[u])
    yq[n, u]  = clamp(rint(float32(acc) * multiplier[u]) + y_zero_point, lo, 255)

with lo = y_zero_point under relu (the fused activation), else 0; multiplier[u] =
x_scale * w_scale[u] / y_scale, formed by the caller. The dot products run on
``_qgemm.h`` (AVX-512 VNNI vpdpbusd / AVX2 vpmaddwd / scalar, chosen at build time), exact in
int32; the correction and bias add in int64, saturated to int32. ``dequantize_forward``:
(q - zero_point) * scale as float32.

Every output element is one thread's (prange over the flattened (N, U) outputs, static), so
results are bit-identical for any thread count and equal the integer NumPy reference.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.math cimport nearbyintf

from pynn.backend.operands import quant as operands
from pynn.backend.operands.common import HOST

cdef extern from "_qgemm.h" nogil:
    int32_t pynn_dot_u8s8(const uint8_t* x, const int8_t* w, Py_ssize_t k)
    const char* PYNN_QGEMM_ISA
    int QGEMM_MAX_K

ISA = PYNN_QGEMM_ISA.decode()
MAX_K = QGEMM_MAX_K

cdef enum:
    PARALLEL_MIN = 32768

cdef int64_t INT32_LO = -2147483648
cdef int64_t INT32_HI = 2147483647


cdef inline uint8_t requantize(float v, float zero_point, float lo) noexcept nogil:
    cdef float r = nearbyintf(v) + zero_point
    if r < lo:
        r = lo
    if r > 255:
        r = 255
    return <uint8_t>r


def _quantize(const float[::1] x, uint8_t[::1] q, float scale, float zero_point):
    cdef Py_ssize_t n = x.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            q[i] = requantize(x[i] / scale, zero_point, 0)


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
        for i in prange(n, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            y[i] = (<float>q[i] - zero_point) * scale


def dequantize_forward(q, scale, zero_point):
    """float32 (q - zero_point) * scale, any shape."""
    q, scale, zero_point = operands.dequantize_forward(HOST, q, scale, zero_point)
    y = np.empty(q.shape, np.float32)
    if q.size:
        _dequantize(q.reshape(-1), y.reshape(-1), scale, zero_point)
    return y


def _int8_dense(const uint8_t[:, ::1] xq,      # IN (N, K)
                const int8_t[:, ::1] wq,       # IN (U, K)
                const int32_t[::1] bias,       # IN (U,) (zeros when the layer has none)
                const float[::1] multiplier,   # IN (U,)
                uint8_t[:, ::1] yq,            # OUT (N, U)
                int x_zero_point, float y_zero_point, float lo):
    cdef Py_ssize_t n = xq.shape[0], k = xq.shape[1], units = wq.shape[0], t, r, u, j
    cdef int64_t[::1] wsum = np.empty(units, np.int64)
    cdef int64_t acc, s
    with nogil:
        for u in prange(units, schedule="static", use_threads_if=units * k >= PARALLEL_MIN):
            s = 0
            for j in range(k):
                s = s + wq[u, j]
            wsum[u] = s
        for t in prange(n * units, schedule="static",
                        use_threads_if=n * units * k >= PARALLEL_MIN):
            r = t // units
            u = t % units
            acc = <int64_t>pynn_dot_u8s8(&xq[r, 0], &wq[u, 0], k) \
                - <int64_t>x_zero_point * wsum[u] + bias[u]
            if acc < INT32_LO:
                acc = INT32_LO
            if acc > INT32_HI:
                acc = INT32_HI
            yq[r, u] = requantize(<float>(<int32_t>acc) * multiplier[u], y_zero_point, lo)


def int8_dense_forward(xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu):
    """uint8 (N, U) from uint8 xq (N, K) and int8 wq (U, K); see the module docstring."""
    xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu = operands.int8_dense_forward(
        HOST, xq, wq, bias, x_zero_point, multiplier, y_zero_point, relu)
    yq = np.empty((xq.shape[0], wq.shape[0]), np.uint8)
    if bias is None:
        bias = np.zeros(wq.shape[0], np.int32)
    if yq.size:
        if xq.shape[1] == 0:  # no products: the loops below read no row
            xq = np.zeros((xq.shape[0], 1), np.uint8)
            wq = np.zeros((wq.shape[0], 1), np.int8)
        _int8_dense(xq, wq, bias, multiplier, yq, x_zero_point, y_zero_point,
                    y_zero_point if relu else 0.0)
    return yq
