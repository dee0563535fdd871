/* Elementwise activations shared by activation.cl (the standalone op) and the kernels that fuse
 * bias + activation into their epilogue (gemm.cl / dense.cl / conv.cl).
 *
 * The OpenCL twin of native/_activation.pxd: codes follow pynn.backend.api.ACTIVATIONS and the
 * formulas are the same, so the two backends agree to float32 rounding. Derivatives use the
 * output y where that is exact; only gelu, silu, hard_silu, mish and tanh_shrink (and the row
 * ops glu and sparsemax) read the pre-activation x.
 * Softmax is a row operation and lives in activation.cl (softmax_forward / softmax_backward);
 * act_value and act_grad treat its code like linear.
 *
 * Plain (non-static, non-inline) definitions: every .cl file is its own translation unit, and
 * OpenCL C 1.2 compilers disagree on the C99 rules for bare `inline`.
 */
#ifndef PYNN_ACTIVATION_H
#define PYNN_ACTIVATION_H

#define ACT_LINEAR 0
#define ACT_RELU 1
#define ACT_SIGMOID 2
#define ACT_TANH 3
#define ACT_SOFTMAX 4
#define ACT_LEAKY_RELU 5
#define ACT_ELU 6
#define ACT_SELU 7
#define ACT_GELU 8
#define ACT_SOFTPLUS 9
/* issue 12 (activations): Keras 3's remaining elementwise names */
#define ACT_RELU6 10
#define ACT_HARD_SIGMOID 11
#define ACT_SILU 12
#define ACT_HARD_SILU 13
#define ACT_MISH 14
#define ACT_EXPONENTIAL 15
#define ACT_SOFTSIGN 16
/* Keras 3's remaining activations; glu, log_softmax and sparsemax are row operations of
 * activation.cl (row_activation_*), treated here like linear */
#define ACT_CELU 17
#define ACT_GLU 18
#define ACT_HARD_SHRINK 19
#define ACT_HARD_TANH 20
#define ACT_LOG_SIGMOID 21
#define ACT_LOG_SOFTMAX 22
#define ACT_SOFT_SHRINK 23
#define ACT_SPARSE_PLUS 24
#define ACT_SPARSE_SIGMOID 25
#define ACT_SPARSEMAX 26
#define ACT_SQUAREPLUS 27
#define ACT_TANH_SHRINK 28

#define PYNN_SELU_ALPHA 1.6732632423543772848170429916717f
#define PYNN_SELU_SCALE 1.0507009873554804934193349852946f
#define PYNN_INV_SQRT2 0.70710678118654752440f
#define PYNN_INV_SQRT_2PI 0.39894228040143267794f

float act_sigmoid(float x)
{
    /* Two branches keep exp() from overflowing for large |x|. */
    if (x >= 0.0f)
        return 1.0f / (1.0f + exp(-x));
    return exp(x) / (1.0f + exp(x));
}

float act_softplus(float x) { return fmax(x, 0.0f) + log1p(exp(-fabs(x))); }

float act_value(float x, int act, float alpha)
{
    switch (act) {
    case ACT_RELU:
        return x < 0.0f ? 0.0f : x; /* NaN passes through, as in Keras and PyTorch */
    case ACT_SIGMOID:
        return act_sigmoid(x);
    case ACT_TANH:
        return tanh(x);
    case ACT_LEAKY_RELU:
        return x > 0.0f ? x : alpha * x;
    case ACT_ELU:
        return x > 0.0f ? x : alpha * expm1(x);
    case ACT_SELU:
        return x > 0.0f ? PYNN_SELU_SCALE * x : PYNN_SELU_SCALE * PYNN_SELU_ALPHA * expm1(x);
    case ACT_GELU:
        return 0.5f * x * (1.0f + erf(x * PYNN_INV_SQRT2));
    case ACT_SOFTPLUS:
        return act_softplus(x);
    case ACT_RELU6:
        return fmin(fmax(x, 0.0f), 6.0f);
    case ACT_HARD_SIGMOID:
        /* torch's hardsigmoid (Keras 3's backend op): relu6(x + 3) / 6, a true division. */
        return fmin(fmax(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    case ACT_SILU:
        return x * act_sigmoid(x);
    case ACT_HARD_SILU:
        return x * fmin(fmax(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    case ACT_MISH:
        return x * tanh(act_softplus(x));
    case ACT_EXPONENTIAL:
        return exp(x);
    case ACT_SOFTSIGN:
        return x / (1.0f + fabs(x));
    /* Keras 3's remaining activations (alpha: celu's alpha, the shrinks' threshold,
     * squareplus's b) */
    case ACT_CELU:
        return x > 0.0f ? x : alpha * expm1(x / alpha);
    case ACT_HARD_SHRINK:
        return (x >= -alpha && x <= alpha) ? 0.0f : x;
    case ACT_HARD_TANH: /* compares, not fmin/fmax: NaN passes through as in torch */
        return x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
    case ACT_LOG_SIGMOID:
        return fmin(x, 0.0f) - log1p(exp(-fabs(x)));
    case ACT_SOFT_SHRINK:
        return x > alpha ? x - alpha : (x < -alpha ? x + alpha : 0.0f);
    case ACT_SPARSE_PLUS:
        return x <= -1.0f ? 0.0f : (x < 1.0f ? 0.25f * (x + 1.0f) * (x + 1.0f) : x);
    case ACT_SPARSE_SIGMOID:
        return x <= -1.0f ? 0.0f : (x >= 1.0f ? 1.0f : 0.5f * (x + 1.0f));
    case ACT_SQUAREPLUS:
        return (x + sqrt(x * x + alpha)) / 2.0f;
    case ACT_TANH_SHRINK:
        return x - tanh(x);
    default:
        return x;
    }
}

/* dL/dx from dL/dy for every activation but softmax (x is only read by gelu). */
float act_grad(float dy, float x, float y, int act, float alpha)
{
    switch (act) {
    case ACT_RELU:
        return y > 0.0f ? dy : 0.0f;
    case ACT_SIGMOID:
        return dy * y * (1.0f - y);
    case ACT_TANH:
        return dy * (1.0f - y * y);
    case ACT_LEAKY_RELU:
        return y > 0.0f ? dy : alpha * dy;
    case ACT_ELU:
        return y > 0.0f ? dy : dy * (y + alpha);
    case ACT_SELU:
        return y > 0.0f ? PYNN_SELU_SCALE * dy : dy * (y + PYNN_SELU_SCALE * PYNN_SELU_ALPHA);
    case ACT_GELU:
        return dy * (0.5f * (1.0f + erf(x * PYNN_INV_SQRT2))
                     + x * PYNN_INV_SQRT_2PI * exp(-0.5f * x * x));
    case ACT_SOFTPLUS:
        return -dy * expm1(-y);
    case ACT_RELU6: /* torch's hardtanh backward: zero at both kinks */
        return (y > 0.0f && y < 6.0f) ? dy : 0.0f;
    case ACT_HARD_SIGMOID:
        return (y > 0.0f && y < 1.0f) ? dy / 6.0f : 0.0f;
    case ACT_SILU: {
        const float s = act_sigmoid(x);
        return dy * s * (1.0f + x * (1.0f - s));
    }
    case ACT_HARD_SILU: /* torch's hardswish backward */
        if (x < -3.0f)
            return 0.0f;
        return x <= 3.0f ? dy * (x / 3.0f + 0.5f) : dy;
    case ACT_MISH: {
        const float t = tanh(act_softplus(x));
        return dy * (t + x * (1.0f - t * t) * act_sigmoid(x));
    }
    case ACT_EXPONENTIAL:
        return dy * y;
    case ACT_SOFTSIGN: {
        const float s = 1.0f - fabs(y); /* 1 / (1 + |x|) */
        return dy * s * s;
    }
    /* Keras 3's remaining activations; zero at the kinks as torch's backwards */
    case ACT_CELU: /* exp(x / alpha) = y / alpha + 1 on the negative branch */
        return y > 0.0f ? dy : dy * (y / alpha + 1.0f);
    case ACT_HARD_SHRINK: /* y != 0 exactly where |x| > threshold (threshold >= 0) */
    case ACT_SOFT_SHRINK:
        return y != 0.0f ? dy : 0.0f;
    case ACT_HARD_TANH:
        return (y > -1.0f && y < 1.0f) ? dy : 0.0f;
    case ACT_LOG_SIGMOID: /* sigmoid(-x) = 1 - exp(y) */
        return -dy * expm1(y);
    case ACT_SPARSE_PLUS: /* (x + 1) / 2 = sqrt(y) on (-1, 1) */
        return y >= 1.0f ? dy : dy * sqrt(y);
    case ACT_SPARSE_SIGMOID:
        return (y > 0.0f && y < 1.0f) ? 0.5f * dy : 0.0f;
    case ACT_SQUAREPLUS: /* (1 + x / sqrt(x^2 + b)) / 2 = y^2 / (y^2 + b / 4) */
        return y > 0.0f ? dy * (y * y / (y * y + 0.25f * alpha)) : 0.0f;
    case ACT_TANH_SHRINK: {
        const float t = tanh(x);
        return dy * t * t;
    }
    default:
        return dy;
    }
}

#endif /* PYNN_ACTIVATION_H */
