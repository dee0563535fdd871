"""float64 references of the bfloat16 ops (native/bf16.pyx): the operands rounded to bf16 as
the kernels round them, the products in float64. ``bf16_round_ref`` is the bit-exact oracle
of the rounding; the others bound the kernels' float32 accumulation error."""

import numpy as np

from tests.reference.conv_ref import (
    conv2d_backward_input_ref,
    conv2d_backward_weight_ref,
    conv2d_forward_ref,
    conv2d_pool_backward_ref,
    conv2d_pool_forward_ref,
)
from tests.reference.dense_ref import dense_forward_ref


def bf16_round_ref(x):
    """float32 -> float32 of the nearest bfloat16, ties to even; NaN stays a (quiet) NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet = (u >> 16) | 0x40
    half = np.where(nan, quiet, rounded).astype(np.uint32)
    return (half << 16).view(np.float32)


def _r(a):
    return bf16_round_ref(a).astype(np.float64)


def bf16_matmul_ref(a, b):
    """float64 bf16(a) @ bf16(b) and the bound |bf16(a)| @ |bf16(b)| its float32 sum error
    scales with."""
    ar, br = _r(a), _r(b)
    return ar @ br, np.abs(ar) @ np.abs(br)


def bf16_dense_forward_ref(x, kernel, bias, activation="linear", alpha=0.0):
    return dense_forward_ref(_r(x), _r(kernel), bias, activation, alpha)


def bf16_dense_backward_input_ref(dz, kernel):
    return _r(dz) @ _r(kernel).T


def bf16_dense_backward_weight_ref(x, dz):
    return _r(x).T @ _r(dz)


def bf16_conv2d_forward_ref(x, kernel, bias, strides=(1, 1), padding="valid",
                            dilation_rate=(1, 1), activation="linear", alpha=0.0):
    return conv2d_forward_ref(_r(x), _r(kernel), bias, strides, padding, dilation_rate,
                              activation, alpha)


def bf16_conv2d_backward_input_ref(dz, kernel, input_shape, strides=(1, 1), padding="valid",
                                   dilation_rate=(1, 1)):
    return conv2d_backward_input_ref(_r(dz), _r(kernel), input_shape, strides, padding,
                                     dilation_rate)


def bf16_conv2d_backward_weight_ref(x, dz, kernel_shape, strides=(1, 1), padding="valid",
                                    dilation_rate=(1, 1)):
    return conv2d_backward_weight_ref(_r(x), _r(dz), kernel_shape, strides, padding,
                                      dilation_rate)


def bf16_conv2d_pool_forward_ref(x, kernel, bias, strides=(1, 1), padding="valid",
                                 dilation_rate=(1, 1), activation="linear", alpha=0.0,
                                 pool_size=(2, 2), pool_strides=(2, 2), pool_padding="valid"):
    return conv2d_pool_forward_ref(_r(x), _r(kernel), bias, strides, padding, dilation_rate,
                                   activation, alpha, pool_size, pool_strides, pool_padding)


def bf16_conv2d_pool_backward_ref(dpool, argmax, x, kernel, bias, strides=(1, 1),
                                  padding="valid", dilation_rate=(1, 1), activation="linear",
                                  alpha=0.0, use_bias=True, need_input_grad=True):
    """conv2d_pool_backward_ref with dpool (so dz), x and kernel rounded to bf16."""
    return conv2d_pool_backward_ref(_r(dpool), argmax, _r(x), _r(kernel), bias, strides,
                                    padding, dilation_rate, activation, alpha, use_bias,
                                    need_input_grad)
