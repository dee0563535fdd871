"""OpenCL box and mixing ops: the host side of ``opencl/augment_mix.cl``.

Same names, signatures and semantics as ``native/augment_mix.pyx``; operands are checked by
``pynn.backend.operands.augment_mix``. The permutation (host ints, checked whole there) is
uploaded here: N int32 per batch.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import elementwise
from pynn.backend.operands import augment_mix as operands


def image_mix_forward(x, permutation, weights, boxes):
    """y[n] = w[n] x[n] + (1 - w[n]) x[permutation[n]] inside boxes[n], x[n] outside."""
    op = "image_mix_forward"
    x, perm, _, weights, boxes = operands.image_mix_forward(DEVICE, x, permutation, weights,
                                                            boxes)
    y = rt.empty(x.shape, what=f"{op} output")
    if y.size:
        elementwise("augment_mix", op, y.size, x, rt.to_device(perm, np.int32), weights, boxes,
                    y, *x.shape)
    return y


def image_mix_backward(dy, permutation, weights, boxes):
    """dx of image_mix_forward, gathered through the inverse permutation."""
    op = "image_mix_backward"
    dy, _, inverse, weights, boxes = operands.image_mix_backward(DEVICE, dy, permutation,
                                                                 weights, boxes)
    dx = rt.empty(dy.shape, what=f"{op} output")
    if dx.size:
        elementwise("augment_mix", op, dx.size, dy, rt.to_device(inverse, np.int32), weights,
                    boxes, dx, *dy.shape)
    return dx


def image_erase_forward(x, boxes, fill, value_range):
    """clip(fill, *value_range) inside boxes[n], x outside; fill (C,) or x's shape."""
    op = "image_erase_forward"
    x, boxes, fill, per_element, (lo, hi) = operands.image_erase_forward(
        DEVICE, x, boxes, fill, value_range)
    y = rt.empty(x.shape, what=f"{op} output")
    if y.size:
        elementwise("augment_mix", op, y.size, x, boxes, fill, y, *x.shape, int(per_element),
                    float(lo), float(hi))
    return y


def image_blur_forward(x, vertical, horizontal, blur, value_range):
    """clip(the blurred images where blur[n] != 0, the others as they are, *value_range)."""
    op = "image_blur_forward"
    x, vertical, horizontal, blur, (lo, hi) = operands.image_blur_forward(
        DEVICE, x, vertical, horizontal, blur, value_range)
    y = rt.empty(x.shape, what=f"{op} output")
    if y.size:
        # Two passes of K taps (down the rows, then across), as the CPU kernel.
        down = rt.empty(x.shape, what=f"{op} scratch")
        k = vertical.shape[0]
        elementwise("augment_mix", "image_blur_down", y.size, x, vertical, blur, down,
                    *x.shape, k)
        elementwise("augment_mix", op, y.size, x, down, horizontal, blur, y, *x.shape, k,
                    float(lo), float(hi))
    return y
