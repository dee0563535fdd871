"""OpenCL loss op: the host side of ``opencl/loss.cl``.

Same name, signature and semantics as ``native/loss.pyx``; operands are checked by
``pynn.backend.operands.loss``. One fused pass plus one fold; the loss (and, for sparse
labels, a bad-label flag) is the only read-back. A sparse label outside [0, K) sets that flag
and raises the CPU's ValueError.
"""

import numpy as np
from pyopencl.cltypes import float4 as cl_float4

from pynn.backend.opencl import runtime as rt
from pynn.backend.opencl.arrays import DEVICE, asarray
from pynn.backend.opencl.launch import PARTIAL, elementwise, fold, kernel, reduce, sizes
from pynn.backend.operands import loss as operands


def loss_forward_backward(name, y_true, y_pred, from_logits=False, param=None,
                          need_grad=True, sample_weight=None):
    """-> (mean loss: float, grad or None); grad = d(mean loss)/d(y_pred) shaped like y_pred.
    ``param``: see pynn.backend.api; ``sample_weight`` weighs the per-sample losses."""
    op = "loss_forward_backward"
    (code, targets, y_pred, from_logits, params, need_grad, weights,
     rows_per_weight) = operands.loss_forward_backward(
        DEVICE, name, y_true, y_pred, from_logits, param, need_grad, sample_weight)
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    if y_pred.size == 0:
        return 0.0, grad
    # Keras clips in y_pred's dtype: eps and 1 - eps rounded to float32 (kl_divergence: 1).
    lo = np.float32(operands.KERAS_EPSILON)
    hi = np.float32(1.0 if code == operands.LOSS_KLD else 1.0 - operands.KERAS_EPSILON)
    # Without weights the kernels never read w: y_pred stands in for the buffer argument.
    has_w = weights is not None
    w = weights if has_w else y_pred
    k = y_pred.shape[-1]
    rows = y_pred.size // k
    n = y_pred.size
    if code in (operands.LOSS_CCE, operands.LOSS_SCCE):
        sparse = code == operands.LOSS_SCCE
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        result = rt.zeros((2,), what=f"{op} result")  # [loss sum, bad-label flag]
        row_wg = sizes()[1]
        rt.launch(kernel("loss", "categorical_rows"), (rows * row_wg,), (row_wg,),
                  y_pred if sparse else targets, targets if sparse else result, y_pred,
                  grad if need_grad else row_loss, row_loss, result, rows, k, sparse,
                  from_logits, need_grad, lo, hi, np.float32(1.0 / rows), w, has_w,
                  rows_per_weight, np.float32(params[0]))
        fold("loss", row_loss, out=result)
        total, bad = (float(v) for v in result.get())
        if bad:
            raise ValueError(f"{op}: a label is out of range: class ids must lie in [0, {k}) "
                             f"for y_pred with K={k} classes")
        return total / rows, grad
    if code == operands.LOSS_GCE:   # params[0]: q
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        result = rt.zeros((2,), what=f"{op} result")  # [loss sum, bad-label flag]
        rt.launch(kernel("loss", "generalized_ce_rows"), (rows * sizes()[1],), (sizes()[1],),
                  targets, y_pred, grad if need_grad else row_loss, row_loss, result, rows, k,
                  need_grad, np.float32(1.0 / rows), w, has_w, rows_per_weight,
                  np.float32(params[0]))
        fold("loss", row_loss, out=result)
        total, bad = (float(v) for v in result.get())
        if bad:
            raise ValueError(f"{op}: a label is out of range: class ids must lie in [0, {k}) "
                             f"for y_pred with K={k} classes")
        return total / rows, grad
    if code in operands.OVERLAP_LOSSES:
        return _overlap(targets, y_pred, grad, n, params, lo, weights), grad
    if code == operands.LOSS_CATEGORICAL_FOCAL:
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        row_wg = sizes()[1]
        rt.launch(kernel("loss", "categorical_focal_rows"), (rows * row_wg,), (row_wg,),
                  targets, y_pred, grad if need_grad else row_loss, row_loss, rows, k,
                  from_logits, need_grad, lo, hi, np.float32(1.0 / rows), w, has_w,
                  rows_per_weight, np.array(params, np.float32).view(cl_float4)[0])
        return float(fold("loss", row_loss).get()[0]) / rows, grad
    if code in operands.ROW_LOSSES:
        row_loss = rt.empty((rows,), what=f"{op} row losses")
        row_wg = sizes()[1]
        rt.launch(kernel("loss", "pairwise_rows"), (rows * row_wg,), (row_wg,), targets,
                  y_pred, grad if need_grad else row_loss, row_loss, rows, k, code, need_grad,
                  lo, np.float32(1.0 / rows), w, has_w, rows_per_weight)
        return float(fold("loss", row_loss).get()[0]) / rows, grad
    if code in (operands.LOSS_HINGE, operands.LOSS_SQUARED_HINGE):
        # Keras converts {0, 1} labels to {-1, 1} only when all of y_true is binary.
        others = reduce("loss", "non_binary_partial", n, (targets, PARTIAL, n), dtype=np.int32)
        params = (float(int(others.get()[0]) == 0), 0.0, 0.0, 0.0)
    denom = rows if code in operands.SUM_OVER_LAST_AXIS else n
    out = reduce("loss", "pointwise_partial", n,
                 (targets, y_pred, grad if need_grad else y_pred, PARTIAL, n, code,
                  from_logits, need_grad, np.array(params, np.float32).view(cl_float4)[0],
                  lo, hi, np.float32(1.0 / denom), w, has_w, rows_per_weight * k))
    return float(out.get()[0]) / denom, grad


def crossentropy_rows(name, y_true, y_pred, from_logits=False, need_grad=True):
    """-> (losses y_pred.shape[:-1], grad or None): keras.ops' categorical / sparse
    categorical cross-entropy of each row, as native/loss.pyx (the row kernel of
    loss_forward_backward, unscaled and unweighted)."""
    op = "crossentropy_rows"
    code, targets, y_pred, from_logits, need_grad = operands.crossentropy_rows(
        DEVICE, name, y_true, y_pred, from_logits, need_grad)
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    k = y_pred.shape[-1]
    rows = y_pred.size // k
    row_loss = rt.empty((rows,), what=f"{op} row losses")
    if y_pred.size == 0:
        return row_loss.reshape(y_pred.shape[:-1]), grad
    sparse = code == operands.LOSS_SCCE
    result = rt.zeros((2,), what=f"{op} bad-label flag")  # [unused, bad-label flag]
    row_wg = sizes()[1]
    rt.launch(kernel("loss", "categorical_rows"), (rows * row_wg,), (row_wg,),
              y_pred if sparse else targets, targets if sparse else result, y_pred,
              grad if need_grad else row_loss, row_loss, result, rows, k, sparse,
              from_logits, need_grad, np.float32(operands.KERAS_EPSILON),
              np.float32(1.0 - operands.KERAS_EPSILON), np.float32(1.0), y_pred, False, 1,
              np.float32(0.0))
    if sparse and float(result.get()[1]):
        raise ValueError(f"{op}: a label is out of range: class ids must lie in [0, {k}) for "
                         f"y_pred with K={k} classes")
    return row_loss.reshape(y_pred.shape[:-1]), grad


def _overlap(targets, y_pred, grad, n, params, eps, weights):
    """dice / tversky: the three sums (one reduction, read back), the loss on the host, then
    the gradient kernel (operands.loss_params gives c, u, a, b; see native/loss.pyx)."""
    inter, fp, fn = (float(v) for v in reduce(
        "loss", "overlap_partial", n, (targets, y_pred, PARTIAL, n), counts=3).get())
    c, u, a, b = params
    num = c * inter
    den = u * inter + a * fp + b * fn + float(eps)
    # Keras's scalar loss times the weights, averaged: the loss times the weights' mean.
    wmean = 1.0 if weights is None else float(fold("loss", weights).get()[0]) / weights.size
    if grad is not None:
        elementwise("loss", "overlap_grad", n, targets, grad, n,
                    np.array(params, np.float32).view(cl_float4)[0], np.float32(num),
                    np.float32(den), np.float32(wmean))
    return (1 - num / den) * wmean


# -- Keras 3's CTC and Circle losses (loss family) ------------------------------------------

def ctc_loss_forward_backward(y_true, y_pred, need_grad=True, sample_weight=None):
    """-> (mean loss: float, grad or None): Keras 3's CTC, as native/loss.pyx. The kernel
    checks each row's labels; a bad row brings the labels back once to name the fault."""
    op = "ctc_loss_forward_backward"
    losses, grad = _ctc(op, y_true, y_pred, need_grad, sample_weight, mean=True)
    return float(losses.astype(np.float64).sum()) / max(len(losses), 1), grad


def _ctc(op, y_true, y_pred, need_grad, sample_weight, mean):
    """-> (the per-sample weighted losses on the host, grad or None), grad scaled by 1/B
    when ``mean``."""
    labels, _, y_pred, need_grad, weights = getattr(operands, op)(
        DEVICE, y_true, y_pred, need_grad, sample_weight)
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    batch, steps, classes = y_pred.shape
    if y_pred.size == 0:
        return np.zeros(batch, np.float32), grad
    width = labels.shape[1]
    states = 2 * width + 1
    lp = rt.empty(y_pred.shape, what=f"{op} log-softmax")
    alpha = rt.empty((batch * steps * states,), what=f"{op} forward variables")
    beta = rt.empty((batch * steps * states,) if need_grad else (1,),
                    what=f"{op} backward variables")
    out = rt.empty((2 * batch,), what=f"{op} losses and label status")
    # A row of no labels reads none: any int buffer stands in for an empty one.
    lab = labels if width else rt.zeros((1,), np.int32, what=f"{op} no labels")
    has_w = weights is not None
    elementwise("loss", "ctc_log_softmax", batch * steps, y_pred, lp, batch * steps, classes)
    row_wg = sizes()[1]
    rt.launch(kernel("loss", "ctc_alpha_beta"), (batch * row_wg,), (row_wg,), lab, width, lp,
              alpha, beta, grad if need_grad else out, out, batch, steps, classes, need_grad,
              np.float32(1.0 / batch if mean else 1.0), weights if has_w else out, has_w)
    host = out.get()
    if host[batch:].any():
        operands.check_ctc_labels(op, labels.get(), classes, steps)
        raise ValueError(f"{op}: bad CTC labels")   # check_ctc_labels names the fault first
    return host[:batch], grad


def ctc_loss_samples(y_true, y_pred, need_grad=True, sample_weight=None):
    """-> (losses (B,), grad or None): keras.ops.ctc_loss's per-sample weighted losses and
    d(their sum)/d(y_pred), as native/loss.pyx."""
    losses, grad = _ctc("ctc_loss_samples", y_true, y_pred, need_grad, sample_weight,
                        mean=False)
    return asarray(np.ascontiguousarray(losses, np.float32), np.float32), grad


def circle_loss_forward_backward(y_true, y_pred, gamma=80.0, margin=0.4, remove_diagonal=True,
                                 need_grad=True, sample_weight=None):
    """-> (mean loss: float, grad or None): Keras 3's Circle loss, as native/loss.pyx: the
    rows' losses come back, the host counts the unmasked ones (loss > 0) for the mean."""
    op = "circle_loss_forward_backward"
    labels, y_pred, gamma, margin, remove_diagonal, need_grad, weights = \
        operands.circle_loss_forward_backward(DEVICE, y_true, y_pred, gamma, margin,
                                              remove_diagonal, need_grad, sample_weight)
    n, dim = y_pred.shape
    grad = rt.empty(y_pred.shape, what=f"{op} gradient") if need_grad else None
    if n == 0:
        return 0.0, grad
    sim = rt.empty((n * n,), what=f"{op} similarities")
    coef = rt.empty((n * n,), what=f"{op} pair coefficients")
    out = rt.empty((2 * n,), what=f"{op} losses")
    has_w = weights is not None
    elementwise("loss", "circle_rows", n, labels, y_pred, sim, coef, out, n, dim,
                np.float32(gamma), np.float32(margin), remove_diagonal, need_grad,
                weights if has_w else out, has_w)
    host = out.get()
    valid = int(np.count_nonzero(host[:n] > 0))
    if need_grad:
        elementwise("loss", "circle_grad", n * dim, y_pred, coef, grad, n, dim,
                    np.float32(1.0 / valid if valid else 0.0))
    # No unmasked row: Keras's mean is 0 (NaN if a loss is NaN: NaN * 0 stays NaN).
    total = float(host[n:].astype(np.float64).sum())
    return (total / valid if valid else total), grad
