"""OpenCL loss op: the host side of ``opencl/loss.cl``.

Same name, signature and semantics as ``native/loss.pyx``; operands are checked by
``pynn.backend.operands.loss``. One fused pass plus one fold; the loss (and, for sparse
labels, a bad-label flag) is the only read-back. A sparse label outside [0, K) sets that flag
and raises the CPU's ValueError.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE
from pynn.backend.opencl.launch import PARTIAL, fold, kernel, reduce, sizes
from pynn.backend.operands import loss as operands


def loss_forward_backward(name, y_true, y_pred, from_logits=False, param=None,
                          need_grad=True):
    """-> (mean loss: float, grad or None); grad = d(mean loss)/d(y_pred) shaped like y_pred.
    ``param`` is huber's delta (None: 1.0)."""
    op = "loss_forward_backward"
    code, targets, y_pred, from_logits, delta, need_grad = operands.loss_forward_backward(
        DEVICE, name, y_true, y_pred, from_logits, param, need_grad)
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    if y_pred.size == 0:
        return 0.0, grad
    # Keras clips in y_pred's dtype: eps and 1 - eps rounded to float32.
    lo = np.float32(operands.KERAS_EPSILON)
    hi = np.float32(1.0 - operands.KERAS_EPSILON)
    if code in (operands.LOSS_CCE, operands.LOSS_SCCE):
        k = y_pred.shape[-1]
        rows = y_pred.size // k
        sparse = code == operands.LOSS_SCCE
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        result = rt.zeros((2,), what=f"{op} result")  # [loss sum, bad-label flag]
        row_wg = sizes()[1]
        rt.launch(kernel("loss", "categorical_rows"), (rows * row_wg,), (row_wg,),
                  y_pred if sparse else targets, targets if sparse else result, y_pred,
                  grad if need_grad else row_loss, row_loss, result, rows, k, sparse,
                  from_logits, need_grad, lo, hi, np.float32(1.0 / rows))
        fold("loss", row_loss, out=result)
        total, bad = (float(v) for v in result.get())
        if bad:
            raise ValueError(f"{op}: a label is out of range: class ids must lie in [0, {k}) "
                             f"for y_pred with K={k} classes")
        return total / rows, grad
    n = y_pred.size
    out = reduce("loss", "pointwise_partial", n,
                 (targets, y_pred, grad if need_grad else y_pred, PARTIAL, n, code,
                  from_logits, need_grad, np.float32(delta), lo, hi, np.float32(1.0 / n)))
    return float(out.get()[0]) / n, grad
