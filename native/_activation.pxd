# Elementwise activations shared by activation.pyx (the standalone op) and the layers that fuse
# bias + activation into the pass after their GEMM (dense.pyx, conv.pyx).
# Codes follow pynn.backend.api.ACTIVATIONS. Derivatives use the output y where that is exact,
# so only gelu needs the pre-activation kept.
from cython.parallel cimport prange
from libc.math cimport exp, expm1, log1p, tanh, erf, sqrt, fabs, fmax

ctypedef fused floating:
    float
    double

cdef enum:
    ACT_LINEAR = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3
    ACT_SOFTMAX = 4
    ACT_LEAKY_RELU = 5
    ACT_ELU = 6
    ACT_SELU = 7
    ACT_GELU = 8
    ACT_SOFTPLUS = 9

# Constants as C macros: module-level cdef variables would turn this .pxd into a module that
# every kernel file must import at run time.
cdef extern from *:
    """
    #define PYNN_SELU_ALPHA 1.6732632423543772848170429916717
    #define PYNN_SELU_SCALE 1.0507009873554804934193349852946
    #define PYNN_INV_SQRT2 0.70710678118654752440
    #define PYNN_INV_SQRT_2PI 0.39894228040143267794
    """
    double SELU_ALPHA "PYNN_SELU_ALPHA"
    double SELU_SCALE "PYNN_SELU_SCALE"
    double INV_SQRT2 "PYNN_INV_SQRT2"
    double INV_SQRT_2PI "PYNN_INV_SQRT_2PI"


cdef inline floating act_value(floating x, int act, floating alpha) noexcept nogil:
    if act == ACT_RELU:
        return 0 if x < 0 else x  # NaN passes through, as in Keras and PyTorch
    elif act == ACT_SIGMOID:
        # Two branches keep exp() from overflowing for large |x|.
        if x >= 0:
            return 1 / (1 + exp(-x))
        return exp(x) / (1 + exp(x))
    elif act == ACT_TANH:
        return tanh(x)
    elif act == ACT_LEAKY_RELU:
        return x if x > 0 else alpha * x
    elif act == ACT_ELU:
        return x if x > 0 else alpha * expm1(x)
    elif act == ACT_SELU:
        return SELU_SCALE * x if x > 0 else SELU_SCALE * SELU_ALPHA * expm1(x)
    elif act == ACT_GELU:
        return 0.5 * x * (1 + erf(x * INV_SQRT2))
    elif act == ACT_SOFTPLUS:
        return fmax(x, 0) + log1p(exp(-fabs(x)))
    return x


cdef inline floating act_grad(floating dy, floating x, floating y, int act,
                              floating alpha) noexcept nogil:
    """dL/dx for every activation but softmax (x is only read by gelu)."""
    if act == ACT_RELU:
        return dy if y > 0 else 0
    elif act == ACT_SIGMOID:
        return dy * y * (1 - y)
    elif act == ACT_TANH:
        return dy * (1 - y * y)
    elif act == ACT_LEAKY_RELU:
        return dy if y > 0 else alpha * dy
    elif act == ACT_ELU:
        return dy if y > 0 else dy * (y + alpha)
    elif act == ACT_SELU:
        return SELU_SCALE * dy if y > 0 else dy * (y + SELU_SCALE * SELU_ALPHA)
    elif act == ACT_GELU:
        return dy * (0.5 * (1 + erf(x * INV_SQRT2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x))
    elif act == ACT_SOFTPLUS:
        return -dy * expm1(-y)
    return dy


cdef inline void softmax_row(const floating* z, floating* y, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m
    cdef double s = 0
    if cols <= 0:
        return
    m = z[0]
    for j in range(1, cols):
        if z[j] > m:
            m = z[j]
    for j in range(cols):
        y[j] = exp(z[j] - m)
        s += y[j]
    for j in range(cols):
        y[j] = <floating>(y[j] / s)


cdef inline void softmax_grad_row(const floating* dy, const floating* y, floating* dx,
                                  Py_ssize_t cols) noexcept nogil:
    """dx = y * (dy - sum(dy * y)): the softmax Jacobian-vector product from the output."""
    cdef Py_ssize_t j
    cdef double dot = 0
    for j in range(cols):
        dot += <double>dy[j] * y[j]
    for j in range(cols):
        dx[j] = <floating>(y[j] * (dy[j] - dot))


cdef inline void bias_activation_rows(floating* z, floating* y, const floating* bias,
                                      Py_ssize_t rows, Py_ssize_t cols, int act,
                                      floating alpha) noexcept nogil:
    """z[r, :] += bias (when bias is not NULL), then y = act(z), row-parallel.

    y may alias z (in-place); when it does not, z keeps the pre-activation for backward.
    """
    cdef Py_ssize_t r, j
    cdef floating* zr
    cdef floating* yr
    for r in prange(rows, schedule="static", nogil=True):
        zr = z + r * cols
        yr = y + r * cols
        if bias != NULL:
            for j in range(cols):
                zr[j] = zr[j] + bias[j]
        if act == ACT_SOFTMAX:
            softmax_row(zr, yr, cols)
        elif act == ACT_LINEAR:
            if yr != zr:
                for j in range(cols):
                    yr[j] = zr[j]
        else:
            for j in range(cols):
                yr[j] = act_value(zr[j], act, alpha)
