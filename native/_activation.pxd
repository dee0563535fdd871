# Elementwise activations shared by activation.pyx (the standalone op) and the layers that fuse
# bias + activation into the pass after their GEMM (dense.pyx, conv.pyx).
# Codes follow pynn.backend.api.ACTIVATIONS. Derivatives use the output y where that is exact,
# so only ACTIVATIONS_NEEDING_INPUT (gelu, silu, hard_silu, mish, glu, tanh_shrink) need the
# pre-activation kept.
from cython.parallel cimport prange
from libc.math cimport exp, expm1, log1p, tanh, erf, sqrt, fabs, fmax, fmin

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
    # -- issue 12 (activations): Keras 3's remaining elementwise names
    ACT_RELU6 = 10
    ACT_HARD_SIGMOID = 11
    ACT_SILU = 12
    ACT_HARD_SILU = 13
    ACT_MISH = 14
    ACT_EXPONENTIAL = 15
    ACT_SOFTSIGN = 16
    # -- Keras 3's remaining activations (glu, log_softmax and sparsemax are row operations
    # of activation.pyx; act_value and act_grad treat their codes like linear)
    ACT_CELU = 17
    ACT_GLU = 18
    ACT_HARD_SHRINK = 19
    ACT_HARD_TANH = 20
    ACT_LOG_SIGMOID = 21
    ACT_LOG_SOFTMAX = 22
    ACT_SOFT_SHRINK = 23
    ACT_SPARSE_PLUS = 24
    ACT_SPARSE_SIGMOID = 25
    ACT_SPARSEMAX = 26
    ACT_SQUAREPLUS = 27
    ACT_TANH_SHRINK = 28

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


# float32's transcendental functions, branch-free so the loops calling them vectorize
# (libm's are scalar calls, and libc.math's names the double ones): native/_vmath.h.
cdef extern from "_vmath.h" nogil:
    float pynn_expf(float x)
    float pynn_expm1f(float x)
    float pynn_sigmoidf(float x)
    float pynn_tanhf(float x)
    float pynn_elu_f(float x, float alpha)
    float pynn_selu_f(float x)
    float pynn_gelu_f(float x)
    float pynn_gelu_grad_f(float x)
    float pynn_softplus_f(float x)
    float pynn_silu_f(float x)
    float pynn_silu_grad_f(float x)
    float pynn_mish_f(float x)
    float pynn_mish_grad_f(float x)
    float pynn_celu_f(float x, float alpha)
    float pynn_log_sigmoid_f(float x)
    float pynn_tanh_shrink_f(float x)
    void pynn_softmax_row_f(const float* z, float* y, Py_ssize_t cols)
    void pynn_softmax_grad_row_f(const float* dy, const float* y, float* dx, Py_ssize_t cols)
    float pynn_max_f(const float* x, Py_ssize_t n)
    double pynn_exp_sum_f(const float* x, float m, float* out, Py_ssize_t n)


cdef inline float act_value_f(float x, int act, float alpha) noexcept nogil:
    """act_value of a float32 transcendental activation, else x unchanged: the one
    expression its scalar and vector loops share."""
    if act == ACT_SIGMOID:
        return pynn_sigmoidf(x)
    elif act == ACT_TANH:
        return pynn_tanhf(x)
    elif act == ACT_ELU:
        return pynn_elu_f(x, alpha)
    elif act == ACT_SELU:
        return pynn_selu_f(x)
    elif act == ACT_GELU:
        return pynn_gelu_f(x)
    elif act == ACT_SOFTPLUS:
        return pynn_softplus_f(x)
    elif act == ACT_SILU:
        return pynn_silu_f(x)
    elif act == ACT_MISH:
        return pynn_mish_f(x)
    elif act == ACT_EXPONENTIAL:
        return pynn_expf(x)
    elif act == ACT_CELU:
        return pynn_celu_f(x, alpha)
    elif act == ACT_LOG_SIGMOID:
        return pynn_log_sigmoid_f(x)
    elif act == ACT_TANH_SHRINK:
        return pynn_tanh_shrink_f(x)
    return x


cdef inline float act_grad_f(float dy, float x, float y, int act) noexcept nogil:
    """act_grad of a float32 activation whose derivative needs a transcendental function
    (see vmath_grad), else dy unchanged."""
    cdef float t
    if act == ACT_GELU:
        return dy * pynn_gelu_grad_f(x)
    elif act == ACT_SOFTPLUS:
        return -dy * pynn_expm1f(-y)
    elif act == ACT_SILU:
        return dy * pynn_silu_grad_f(x)
    elif act == ACT_MISH:
        return dy * pynn_mish_grad_f(x)
    elif act == ACT_LOG_SIGMOID:
        return -dy * pynn_expm1f(y)
    elif act == ACT_TANH_SHRINK:
        t = pynn_tanhf(x)
        return dy * t * t
    return dy


cdef inline bint vmath_forward(int act) noexcept nogil:
    """Whether act_value_f computes `act` (float32)."""
    return (act == ACT_SIGMOID or act == ACT_TANH or act == ACT_ELU or act == ACT_SELU
            or act == ACT_GELU or act == ACT_SOFTPLUS or act == ACT_SILU or act == ACT_MISH
            or act == ACT_EXPONENTIAL or act == ACT_CELU or act == ACT_LOG_SIGMOID
            or act == ACT_TANH_SHRINK)


cdef inline bint vmath_grad(int act) noexcept nogil:
    """Whether act_grad_f computes `act`'s derivative (float32)."""
    return (act == ACT_GELU or act == ACT_SOFTPLUS or act == ACT_SILU or act == ACT_MISH
            or act == ACT_LOG_SIGMOID or act == ACT_TANH_SHRINK)


cdef inline floating act_value(floating x, int act, floating alpha) noexcept nogil:
    if floating is float:
        if vmath_forward(act):
            return act_value_f(x, act, alpha)
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
    elif act == ACT_RELU6:
        return fmin(fmax(x, 0), 6)
    elif act == ACT_HARD_SIGMOID:
        # torch's hardsigmoid (Keras 3's backend op): relu6(x + 3) / 6, a true division.
        return fmin(fmax(x + 3, 0), 6) / 6
    elif act == ACT_SILU:
        return x * act_value(x, ACT_SIGMOID, alpha)
    elif act == ACT_HARD_SILU:
        return x * fmin(fmax(x + 3, 0), 6) / 6
    elif act == ACT_MISH:
        return x * tanh(act_value(x, ACT_SOFTPLUS, alpha))
    elif act == ACT_EXPONENTIAL:
        return exp(x)
    elif act == ACT_SOFTSIGN:
        return x / (1 + fabs(x))
    # -- Keras 3's remaining activations, as its torch backend computes them (alpha: celu's
    # alpha, the shrinks' threshold, squareplus's b)
    elif act == ACT_CELU:
        return x if x > 0 else alpha * expm1(x / alpha)
    elif act == ACT_HARD_SHRINK:
        return 0 if (x >= -alpha and x <= alpha) else x
    elif act == ACT_HARD_TANH:
        # compares, not fmin/fmax: NaN passes through as in torch
        return -1 if x < -1 else (1 if x > 1 else x)
    elif act == ACT_LOG_SIGMOID:
        return fmin(x, 0) - log1p(exp(-fabs(x)))
    elif act == ACT_SOFT_SHRINK:
        return x - alpha if x > alpha else (x + alpha if x < -alpha else 0)
    elif act == ACT_SPARSE_PLUS:
        return 0 if x <= -1 else (0.25 * (x + 1) * (x + 1) if x < 1 else x)
    elif act == ACT_SPARSE_SIGMOID:
        return 0 if x <= -1 else (1 if x >= 1 else 0.5 * (x + 1))
    elif act == ACT_SQUAREPLUS:
        return (x + sqrt(x * x + alpha)) / 2
    elif act == ACT_TANH_SHRINK:
        return x - tanh(x)
    return x


cdef inline floating act_grad(floating dy, floating x, floating y, int act,
                              floating alpha) noexcept nogil:
    """dL/dx for every activation but softmax (x is only read by those in
    ACTIVATIONS_NEEDING_INPUT)."""
    cdef floating s, t
    if floating is float:
        if vmath_grad(act):
            return act_grad_f(dy, x, y, act)
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
    elif act == ACT_RELU6:
        # torch's hardtanh backward: zero at both kinks.
        return dy if (y > 0 and y < 6) else 0
    elif act == ACT_HARD_SIGMOID:
        return dy / 6 if (y > 0 and y < 1) else 0
    elif act == ACT_SILU:
        s = act_value(x, ACT_SIGMOID, alpha)
        return dy * s * (1 + x * (1 - s))
    elif act == ACT_HARD_SILU:
        # torch's hardswish backward: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above.
        if x < -3:
            return 0
        return dy * (x / 3 + 0.5) if x <= 3 else dy
    elif act == ACT_MISH:
        t = tanh(act_value(x, ACT_SOFTPLUS, alpha))
        return dy * (t + x * (1 - t * t) * act_value(x, ACT_SIGMOID, alpha))
    elif act == ACT_EXPONENTIAL:
        return dy * y
    elif act == ACT_SOFTSIGN:
        # 1 / (1 + |x|)^2 = (1 - |y|)^2
        s = 1 - fabs(y)
        return dy * s * s
    # -- Keras 3's remaining activations; zero at the kinks as torch's backwards
    elif act == ACT_CELU:
        # exp(x / alpha) = y / alpha + 1 on the negative branch
        return dy if y > 0 else dy * (y / alpha + 1)
    elif act == ACT_HARD_SHRINK or act == ACT_SOFT_SHRINK:
        # y != 0 exactly where |x| > threshold (threshold >= 0)
        return dy if y != 0 else 0
    elif act == ACT_HARD_TANH:
        return dy if (y > -1 and y < 1) else 0
    elif act == ACT_LOG_SIGMOID:
        # sigmoid(-x) = 1 - exp(y)
        return -dy * expm1(y)
    elif act == ACT_SPARSE_PLUS:
        # (x + 1) / 2 = sqrt(y) on (-1, 1), 1 from x = 1 (y = 1) on
        return dy if y >= 1 else dy * sqrt(y)
    elif act == ACT_SPARSE_SIGMOID:
        return dy * 0.5 if (y > 0 and y < 1) else 0
    elif act == ACT_SQUAREPLUS:
        # (1 + x / sqrt(x^2 + b)) / 2 = y^2 / (y^2 + b / 4); y > 0 unless b == 0 and x <= 0
        return dy * (y * y / (y * y + 0.25 * alpha)) if y > 0 else 0
    elif act == ACT_TANH_SHRINK:
        t = tanh(x)
        return dy * t * t
    return dy


cdef inline void softmax_row(const floating* z, floating* y, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m
    cdef double s = 0
    if cols <= 0:
        return
    if floating is float:
        pynn_softmax_row_f(z, y, cols)
    else:
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
    if floating is float:
        pynn_softmax_grad_row_f(dy, y, dx, cols)
    else:
        for j in range(cols):
            dot += <double>dy[j] * y[j]
        for j in range(cols):
            dx[j] = <floating>(y[j] * (dy[j] - dot))


# Below this many elements a kernel runs on the calling thread: waking the OpenMP team costs
# more than the pass, and a busy machine can stall a region on its slowest thread. With pynn's
# passive waiters the team's wake-up measured 70-85 us (Zen 3, 2 threads), while one thread
# streams relu over 1 Mi float32 in ~100 us: 2 threads first paid at ~1.5 Mi elements (relu:
# 32 Ki 5.7 vs 90 us, 1 Mi 103 vs 121 us, 2 Mi 263 vs 197 us; bench/README.md).
cdef enum:
    ACT_PARALLEL_MIN = 1048576
    # The same passes as jobs of pynn's worker team (native/_team.h): a posted job costs the
    # master no wait (a late worker finds the items taken), so two threads pay far earlier.
    TEAM_PARALLEL_MIN = 32768


cdef inline void act_forward_vec(const floating* x, floating* y, Py_ssize_t n, int act,
                                 floating alpha) noexcept nogil:
    """y = act(x) over n contiguous elements (not softmax); y may alias x.

    The activation is chosen once, outside the element loop: a per-element switch keeps gcc
    from vectorizing. Every loop computes exactly act_value's expression, so the result does
    not depend on which loop (or thread split) an element lands in."""
    cdef Py_ssize_t j
    cdef floating v
    if floating is float:
        if vmath_forward(act):
            # one loop per activation calling act_value_f's function itself (GCC need not
            # inline act_value_f into the loop): they vectorize, with act_value_f's bits
            if act == ACT_SIGMOID:
                for j in range(n):
                    y[j] = pynn_sigmoidf(x[j])
            elif act == ACT_TANH:
                for j in range(n):
                    y[j] = pynn_tanhf(x[j])
            elif act == ACT_ELU:
                for j in range(n):
                    y[j] = pynn_elu_f(x[j], alpha)
            elif act == ACT_SELU:
                for j in range(n):
                    y[j] = pynn_selu_f(x[j])
            elif act == ACT_GELU:
                for j in range(n):
                    y[j] = pynn_gelu_f(x[j])
            elif act == ACT_SOFTPLUS:
                for j in range(n):
                    y[j] = pynn_softplus_f(x[j])
            elif act == ACT_SILU:
                for j in range(n):
                    y[j] = pynn_silu_f(x[j])
            elif act == ACT_MISH:
                for j in range(n):
                    y[j] = pynn_mish_f(x[j])
            elif act == ACT_CELU:
                for j in range(n):
                    y[j] = pynn_celu_f(x[j], alpha)
            elif act == ACT_LOG_SIGMOID:
                for j in range(n):
                    y[j] = pynn_log_sigmoid_f(x[j])
            elif act == ACT_TANH_SHRINK:
                for j in range(n):
                    y[j] = pynn_tanh_shrink_f(x[j])
            else:
                for j in range(n):
                    y[j] = pynn_expf(x[j])
            return
    if act == ACT_RELU:
        for j in range(n):
            v = x[j]
            y[j] = 0 if v < 0 else v
    elif act == ACT_LINEAR:
        if y != x:
            for j in range(n):
                y[j] = x[j]
    elif act == ACT_LEAKY_RELU:
        for j in range(n):
            v = x[j]
            y[j] = v if v > 0 else alpha * v
    # The capped relus as compares, which vectorize (fmin/fmax do not without fast-math):
    # the same values as act_value's fmin(fmax(...)) (NaN -> 0 below the cap, +inf -> 6;
    # only a -0.0 comes out +0.0), the arithmetic in double as there. MobileNets run them
    # in every block's epilogue: relu6 over 56x56x144 took 1.1 ms, relu 0.12.
    elif act == ACT_RELU6:
        for j in range(n):
            v = x[j]
            v = v if v > 0 else 0
            y[j] = v if v < 6 else 6
    elif act == ACT_HARD_SIGMOID:
        for j in range(n):
            v = x[j] + 3
            v = v if v > 0 else 0
            y[j] = <floating>(<double>(v if v < 6 else 6) / 6)
    elif act == ACT_HARD_SILU:
        for j in range(n):
            v = x[j] + 3
            v = v if v > 0 else 0
            y[j] = <floating>(<double>x[j] * <double>(v if v < 6 else 6) / 6)
    elif act == ACT_TANH:
        for j in range(n):
            y[j] = tanh(x[j])
    elif act == ACT_SIGMOID:
        for j in range(n):
            y[j] = act_value(x[j], ACT_SIGMOID, alpha)
    else:
        for j in range(n):
            y[j] = act_value(x[j], act, alpha)


cdef inline void act_backward_vec(const floating* dy, const floating* x, const floating* y,
                                  floating* dx, Py_ssize_t n, int act,
                                  floating alpha) noexcept nogil:
    """dx = act_grad(dy, x, y) over n contiguous elements (not softmax), one loop per
    activation as in act_forward_vec; dx may alias dy."""
    cdef Py_ssize_t j
    cdef floating v
    if floating is float:
        if vmath_grad(act):
            if act == ACT_GELU:
                for j in range(n):
                    dx[j] = dy[j] * pynn_gelu_grad_f(x[j])
            elif act == ACT_SILU:
                for j in range(n):
                    dx[j] = dy[j] * pynn_silu_grad_f(x[j])
            elif act == ACT_MISH:
                for j in range(n):
                    dx[j] = dy[j] * pynn_mish_grad_f(x[j])
            elif act == ACT_LOG_SIGMOID:
                for j in range(n):
                    dx[j] = -dy[j] * pynn_expm1f(y[j])
            elif act == ACT_TANH_SHRINK:
                for j in range(n):
                    v = pynn_tanhf(x[j])
                    dx[j] = dy[j] * v * v
            else:
                for j in range(n):
                    dx[j] = -dy[j] * pynn_expm1f(-y[j])
            return
    if act == ACT_RELU:
        # dy read unconditionally: read under the condition, gcc vectorized it as a masked
        # load merging into the last iteration's value, kept on the stack, a store-forwarded
        # chain of ~8 cycles per vector (relu backward at ~1 element per cycle, in cache).
        for j in range(n):
            v = dy[j]
            dx[j] = v if y[j] > 0 else 0
    elif act == ACT_SIGMOID:
        for j in range(n):
            v = y[j]
            dx[j] = dy[j] * v * (1 - v)
    elif act == ACT_TANH:
        for j in range(n):
            v = y[j]
            dx[j] = dy[j] * (1 - v * v)
    elif act == ACT_LEAKY_RELU:
        for j in range(n):
            v = dy[j]
            dx[j] = v if y[j] > 0 else alpha * v
    elif act == ACT_LINEAR:
        if dx != dy:
            for j in range(n):
                dx[j] = dy[j]
    else:
        for j in range(n):
            dx[j] = act_grad(dy[j], x[j], y[j], act, alpha)


cdef inline void bias_activation_rows(floating* z, floating* y, const floating* bias,
                                      Py_ssize_t rows, Py_ssize_t cols, int act,
                                      floating alpha) noexcept nogil:
    """z[r, :] += bias (when bias is not NULL), then y = act(z), row-parallel.

    y may alias z (in-place); when it does not, z keeps the pre-activation for backward.
    """
    cdef Py_ssize_t r, j
    cdef floating* zr
    cdef floating* yr
    cdef floating v
    for r in prange(rows, schedule="static", nogil=True,
                    use_threads_if=rows * cols >= ACT_PARALLEL_MIN):
        zr = z + r * cols
        yr = y + r * cols
        if bias != NULL and act == ACT_RELU and yr == zr:
            # The common dense/conv case in one vectorized sweep.
            for j in range(cols):
                v = zr[j] + bias[j]
                zr[j] = 0 if v < 0 else v
            continue
        if bias != NULL:
            for j in range(cols):
                zr[j] = zr[j] + bias[j]
        if act == ACT_SOFTMAX:
            softmax_row(zr, yr, cols)
        else:
            act_forward_vec(zr, yr, cols, act, alpha)


cdef inline void add_rows_double(const floating* a, double* acc, Py_ssize_t rows, Py_ssize_t w,
                                 Py_ssize_t stride) noexcept nogil:
    """acc[j] += sum over i < rows of a[i * stride + j], rows in a fixed order (the bias
    gradients' column sums, kept in double). Four rows go into each pass over acc: with one,
    acc's loads and stores bound the loop (activation_bias_backward measured about 1.7x
    slower on 32 columns)."""
    cdef Py_ssize_t i = 0, j
    cdef const floating* d
    while i + 4 <= rows:
        d = a + i * stride
        for j in range(w):
            acc[j] += ((<double>d[j] + <double>d[j + stride])
                       + (<double>d[j + 2 * stride] + <double>d[j + 3 * stride]))
        i += 4
    while i < rows:
        d = a + i * stride
        for j in range(w):
            acc[j] += d[j]
        i += 1


# Tiling of activation_bias_backward (activation.pyx; dense.pyx's input gradient with the
# layer below's relu and bias makes the same tiles' sums band by band). A tile spans at most
# FUSED_COL_BLOCK columns (softmax: whole rows), at least FUSED_MIN_TILE elements (or one
# row), and the row blocks aim at FUSED_TILES tiles in all: enough for a team of threads, few
# enough that the partial sums stay a small fraction of dz. A tile's rows go through the
# activation and the column sums fused_step(w) rows at a time, so the sums read dz from L1:
# on (64*32*32, 32) float32, one thread, steps of 256 or 512 elements ran as fast as
# activation_backward alone, 1024 or more about 1.5x slower (float64: 256 best); at least
# four rows, as add_rows_double sums four at a time (one row a pass is bound by its
# accumulators' loads and stores: a 128 x 512 relu layer's backward took 2.4x
# activation_backward). db[j] depends on the row blocks and the steps alone: the same sums
# whichever columns a pass covers.
cdef enum:
    FUSED_COL_BLOCK = 512
    FUSED_MIN_TILE = 4096
    FUSED_TILES = 64
    FUSED_SUB = 256


cdef inline void fused_tiling(Py_ssize_t rows, Py_ssize_t cols, int act, Py_ssize_t* cbw,
                              Py_ssize_t* ncb, Py_ssize_t* nrb,
                              Py_ssize_t* rb_rows) noexcept nogil:
    """activation_bias_backward's tiles of a (rows, cols) gradient: cbw columns a tile (ncb
    column blocks), rb_rows rows (nrb row blocks)."""
    cdef Py_ssize_t width = cols, blocks, least
    if act != ACT_SOFTMAX and cols > FUSED_COL_BLOCK:
        width = FUSED_COL_BLOCK
    blocks = (cols + width - 1) // width
    least = <Py_ssize_t>FUSED_TILES // blocks
    if least < 1:
        least = 1
    rb_rows[0] = (rows + least - 1) // least
    least = (<Py_ssize_t>FUSED_MIN_TILE + width - 1) // width
    if rb_rows[0] < least:
        rb_rows[0] = least
    cbw[0], ncb[0] = width, blocks
    nrb[0] = (rows + rb_rows[0] - 1) // rb_rows[0]


cdef inline Py_ssize_t fused_step(Py_ssize_t w) noexcept nogil:
    """Rows per activation-and-sum pass of a tile w columns wide."""
    cdef Py_ssize_t step = <Py_ssize_t>FUSED_SUB // w
    return step if step > 4 else 4


cdef inline void sum_row_blocks(double* partial, Py_ssize_t nrb, Py_ssize_t cols,
                                floating* db) noexcept nogil:
    """db[j] = ((0 + partial[0, j]) + partial[1, j]) + ... in float64, rounded once: the
    blocks in order, a row of partials at a time (contiguous, vectorized; walking each
    column down the blocks took a third of a 128 x 512 layer's backward). Accumulated in
    partial's first row."""
    cdef Py_ssize_t rb, j
    cdef double* acc = partial
    cdef const double* row
    for j in range(cols):
        acc[j] = 0.0 + acc[j]   # the sum's +0 start: a -0 partial sums to +0
    for rb in range(1, nrb):
        row = partial + rb * cols
        for j in range(cols):
            acc[j] = acc[j] + row[j]
    for j in range(cols):
        db[j] = <floating>acc[j]


cdef inline void block_epilogue(floating* z, floating* y, const floating* bias, int r0, int r1,
                                int j0, int j1, int ld, int act, floating alpha) noexcept nogil:
    """Rows [r0, r1) x columns [j0, j1) of z (row stride ld): + bias, then y = act(z)
    (softmax: whole rows, j0 = 0 and j1 = ld), on the calling thread: the epilogue of one
    block of a GEMM while it is in cache. The same expressions as bias_activation_rows, so the
    result does not depend on the path."""
    cdef int r, j
    cdef floating* zr
    for r in range(r0, r1):
        zr = z + r * ld
        if bias != NULL:
            for j in range(j0, j1):
                zr[j] = zr[j] + bias[j]
        if act == ACT_SOFTMAX:
            softmax_row(zr, y + r * ld, ld)
        elif act != ACT_LINEAR or y != z:
            act_forward_vec(zr + j0, y + r * ld + j0, j1 - j0, act, alpha)
