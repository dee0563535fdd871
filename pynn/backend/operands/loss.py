"""Operands of the loss and metric ops' targets (native/loss.pyx, native/metric.pyx,
pynn/backend/opencl/loss.py and metric.py)."""

import numpy as np

from pynn.backend.api import LOSSES
from pynn.backend.operands.common import huber_delta, number

KERAS_EPSILON = 1e-7  # Keras's backend.epsilon(): probabilities are clipped to [eps, 1-eps]
LOSS_HUBER = LOSSES.index("huber")
LOSS_CCE = LOSSES.index("categorical_crossentropy")
LOSS_SCCE = LOSSES.index("sparse_categorical_crossentropy")
LOSS_BCE = LOSSES.index("binary_crossentropy")
LOSS_KLD = LOSSES.index("kl_divergence")
LOSS_HINGE = LOSSES.index("hinge")
LOSS_SQUARED_HINGE = LOSSES.index("squared_hinge")
LOSS_CATEGORICAL_HINGE = LOSSES.index("categorical_hinge")
LOSS_COSINE = LOSSES.index("cosine_similarity")
LOSS_FOCAL = LOSSES.index("binary_focal_crossentropy")
LOSS_CATEGORICAL_FOCAL = LOSSES.index("categorical_focal_crossentropy")
LOSS_DICE = LOSSES.index("dice")
LOSS_TVERSKY = LOSSES.index("tversky")
# Losses of a whole row (the last axis): one kernel call per row, not per element.
ROW_LOSSES = (LOSS_CCE, LOSS_SCCE, LOSS_CATEGORICAL_HINGE, LOSS_COSINE,
              LOSS_CATEGORICAL_FOCAL)
# Losses of the whole batch at once (Keras's dice / tversky with axis=None): one scalar.
OVERLAP_LOSSES = (LOSS_DICE, LOSS_TVERSKY)
# Pointwise losses whose per-sample loss sums the last axis (Keras's kl_divergence) instead
# of averaging it.
SUM_OVER_LAST_AXIS = (LOSS_KLD,)
FOCAL_DEFAULTS = {"apply_class_balancing": False, "alpha": 0.25, "gamma": 2.0,
                  "label_smoothing": 0.0}
CATEGORICAL_FOCAL_DEFAULTS = {"alpha": 0.25, "gamma": 2.0, "label_smoothing": 0.0}
TVERSKY_DEFAULTS = {"alpha": 0.5, "beta": 0.5}
# -- Keras 3's CategoricalGeneralizedCrossEntropy: integer labels, as sparse CE's --------
LOSS_GCE = LOSSES.index("categorical_generalized_cross_entropy")
SPARSE_LOSSES = (LOSS_SCCE, LOSS_GCE)
ROW_LOSSES = ROW_LOSSES + (LOSS_GCE,)
GCE_DEFAULTS = {"q": 0.5}


def label_smoothing(op, value):
    if value is None:
        return 0.0
    return number(op, "label_smoothing", value, lo=0.0, hi=1.0)


def loss_params(op, code, param):
    """-> 4 floats the kernels read: huber (delta), cross-entropies (label_smoothing),
    focal (alpha, gamma, apply_class_balancing, label_smoothing), categorical focal (alpha,
    gamma, label_smoothing), dice / tversky (c, u, a, b below); zeros otherwise."""
    if code == LOSS_HUBER:
        return (huber_delta(op, param), 0.0, 0.0, 0.0)
    if code in (LOSS_BCE, LOSS_CCE):
        return (label_smoothing(op, param), 0.0, 0.0, 0.0)
    if code == LOSS_CATEGORICAL_FOCAL:
        cfg = _param_dict(op, code, param, CATEGORICAL_FOCAL_DEFAULTS)
        return (number(op, "alpha", cfg["alpha"]), number(op, "gamma", cfg["gamma"], lo=0.0),
                label_smoothing(op, cfg["label_smoothing"]), 0.0)
    if code == LOSS_DICE:
        # The overlap losses as 1 - c I / (u I + a FP + b FN + eps), I = sum t p,
        # FP = sum t (1 - p), FN = sum p (1 - t) (Keras's names): dice is c = u = 2, a = b = 1.
        return (2.0, 2.0, 1.0, 1.0)
    if code == LOSS_TVERSKY:
        cfg = _param_dict(op, code, param, TVERSKY_DEFAULTS)
        return (1.0, 1.0, number(op, "alpha", cfg["alpha"]), number(op, "beta", cfg["beta"]))
    if code == LOSS_GCE:
        cfg = _param_dict(op, code, param, GCE_DEFAULTS)
        return (number(op, "q", cfg["q"], lo=0.0, hi=1.0, lo_open=True, hi_open=True),
                0.0, 0.0, 0.0)
    if code == LOSS_FOCAL:
        cfg = _param_dict(op, code, param, FOCAL_DEFAULTS)
        return (number(op, "alpha", cfg["alpha"]),
                number(op, "gamma", cfg["gamma"], lo=0.0),
                float(bool(cfg["apply_class_balancing"])),
                label_smoothing(op, cfg["label_smoothing"]))
    return (0.0, 0.0, 0.0, 0.0)


def _param_dict(op, code, param, defaults):
    """A loss's dict param (None: Keras's defaults) merged over its defaults."""
    given = {} if param is None else param
    if not isinstance(given, dict) or set(given) - set(defaults):
        raise ValueError(f"{op}: {LOSSES[code]}'s param must be None or a dict with keys "
                         f"among {sorted(defaults)}, got {param!r}")
    return {**defaults, **given}


def match_target_shape(op, y_true, y_pred):
    """y_true viewed with y_pred's shape, accepting Keras's squeeze_or_expand_to_same_rank
    case (ranks differ by one and the longer shape ends in 1)."""
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if ts == ps:
        return y_true
    if (len(ts) == len(ps) + 1 and ts[-1] == 1 and ts[:-1] == ps) or (
        len(ps) == len(ts) + 1 and ps[-1] == 1 and ps[:-1] == ts
    ):
        return y_true.reshape(ps)
    raise ValueError(f"{op}: 'y_true' must have the shape of 'y_pred' {ps}, got {ts}")


def dense_targets(arrays, op, y_true, y_pred):
    """y_true in y_pred's dtype and shape (one-hot or per-element targets)."""
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    return match_target_shape(op, arrays.float_input(op, "y_true", y_true, like=y_pred),
                              y_pred)


def sparse_labels(arrays, op, y_true, lead_shape, k):
    """Flat int32 class ids from y_true of shape lead_shape or lead_shape + (1,), for y_pred
    with k classes; the policy checks their range [0, k) or leaves it to its kernels."""
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    labels = arrays.label_input(op, "y_true", y_true)
    lead_shape = tuple(lead_shape)
    if labels.shape != lead_shape and labels.shape != lead_shape + (1,):
        raise ValueError(f"{op}: sparse 'y_true' must have shape {lead_shape} or "
                         f"{lead_shape + (1,)} for y_pred with {k} classes, got {labels.shape}")
    return arrays.check_labels(op, labels.reshape(labels.size), k)


def sample_weights(arrays, op, sample_weight, y_pred):
    """-> (weights or None, rows per weight). Keras weighs the per-sample losses, whose shape
    is y_pred's without the last axis: the weights have that shape or a leading part of it
    ((N,) for (N, T, K) predictions weighs every step of a sample alike), or that shape plus
    a trailing 1 (squeezed as Keras's squeeze_or_expand_to_same_rank does)."""
    if sample_weight is None:
        return None, 1
    lead = tuple(y_pred.shape[:-1])
    if not lead:
        raise ValueError(f"{op}: 'sample_weight' needs y_pred of rank >= 2 (one loss per "
                         f"sample), got y_pred of shape {tuple(y_pred.shape)}")
    weights = arrays.float_input(op, "sample_weight", sample_weight, like=y_pred)
    ws = tuple(weights.shape)
    if not (1 <= len(ws) <= len(lead) and ws == lead[:len(ws)]) and ws != lead + (1,):
        raise ValueError(f"{op}: 'sample_weight' must have shape {lead[:1]} or {lead} (the "
                         f"per-sample losses of y_pred {tuple(y_pred.shape)}), got {ws}")
    rows = 1
    for d in lead:
        rows *= d
    return weights.reshape(weights.size), rows // max(weights.size, 1)


def loss_forward_backward(arrays, name, y_true, y_pred, from_logits, param, need_grad,
                          sample_weight=None, op="loss_forward_backward"):
    """-> (code, targets, y_pred, from_logits, params, need_grad, weights, rows_per_weight):
    targets are flat int32 labels for the sparse loss, else y_true shaped like y_pred; params
    the 4 floats of loss_params; weights flat per-sample weights or None (sample_weights)."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"{op}: unknown loss {name!r}; expected one of {LOSSES}")
    code = LOSSES.index(name)
    params = loss_params(op, code, param)
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim < 1:
        raise ValueError(f"{op}: 'y_pred' must have at least 1 dimension, got shape ()")
    if code in SPARSE_LOSSES:
        k = y_pred.shape[-1]
        targets = sparse_labels(arrays, op, y_true, y_pred.shape[:-1], k)
    else:
        targets = dense_targets(arrays, op, y_true, y_pred)
    weights, rows_per_weight = sample_weights(arrays, op, sample_weight, y_pred)
    return (code, targets, y_pred, bool(from_logits), params, bool(need_grad), weights,
            rows_per_weight)


# -- opss: keras.ops' categorical cross-entropies, one loss per row --
CROSSENTROPY_ROWS = ("categorical_crossentropy", "sparse_categorical_crossentropy")


def crossentropy_rows(arrays, name, y_true, y_pred, from_logits, need_grad):
    """-> (code, targets, y_pred, from_logits, need_grad), as loss_forward_backward's."""
    op = "crossentropy_rows"
    if not isinstance(name, str) or name not in CROSSENTROPY_ROWS:
        raise ValueError(f"{op}: 'name' must be one of {CROSSENTROPY_ROWS}, got {name!r}")
    code, targets, y_pred, from_logits, _, need_grad, _, _ = loss_forward_backward(
        arrays, name, y_true, y_pred, from_logits, None, need_grad, None, op=op)
    return code, targets, y_pred, from_logits, need_grad


# -- Keras 3's CTC and Circle losses (their own ops: targets not shaped like y_pred) ------

def per_sample_weights(arrays, op, sample_weight, y_pred):
    """None, or flat (B,) weights from (B,) or (B, 1): one per sample of y_pred."""
    if sample_weight is None:
        return None
    weights = arrays.float_input(op, "sample_weight", sample_weight, like=y_pred)
    b = y_pred.shape[0]
    if tuple(weights.shape) not in ((b,), (b, 1)):
        raise ValueError(f"{op}: 'sample_weight' must have shape ({b},) or ({b}, 1) (one "
                         f"weight per sample of y_pred {tuple(y_pred.shape)}), got "
                         f"{tuple(weights.shape)}")
    return weights.reshape(b)


def check_ctc_labels(op, labels, classes, steps):
    """Host int labels (B, S) -> their lengths (B,) int32, after Keras's rules: 0 is the
    blank and pads each row at its end (Keras counts the non-zero entries as the length);
    a label lies in [1, C); a row of L labels with r adjacent repeats needs L + r steps
    (a blank between repeats), else no alignment exists (Keras's loss would be inf)."""
    if labels.size and np.any((labels < 0) | (labels >= classes)):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise ValueError(f"{op}: label {int(bad)} out of range: CTC labels must lie in "
                         f"[1, {classes}) for y_pred with C={classes} classes (0 is the "
                         f"blank, only padding)")
    nonzero = labels != 0
    lengths = np.count_nonzero(nonzero, axis=1)
    width = labels.shape[1]
    padded_inside = nonzero & (np.arange(width) >= lengths[:, None])
    if padded_inside.any():
        row = int(np.argmax(padded_inside.any(axis=1)))
        raise ValueError(f"{op}: CTC labels must be padded with 0 (the blank) at the end "
                         f"only; row {row} is {labels[row].tolist()}")
    repeats = np.count_nonzero(nonzero[:, 1:] & (labels[:, 1:] == labels[:, :-1]), axis=1)
    needed = lengths + repeats
    if needed.size and int(needed.max()) > steps:
        row = int(np.argmax(needed))
        raise ValueError(f"{op}: the labels of row {row} ({int(lengths[row])} labels, "
                         f"{int(repeats[row])} repeated) need at least {int(needed[row])} "
                         f"time steps, but y_pred has T={steps}")
    return lengths.astype(np.int32)


def ctc_loss_forward_backward(arrays, y_true, y_pred, need_grad, sample_weight,
                              op="ctc_loss_forward_backward"):
    """-> (labels (B, S) int32, lengths (B,) int32 or None, y_pred (B, T, C), need_grad,
    weights or None). The host checks the labels here (check_ctc_labels); a device backend
    gets lengths None and its kernel flags a bad row, then calls check_ctc_labels."""
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim != 3:
        raise ValueError(f"{op}: 'y_pred' must be (batch, time, classes) logits, got shape "
                         f"{tuple(y_pred.shape)}")
    batch, steps, classes = y_pred.shape
    if classes < 2 and batch:
        raise ValueError(f"{op}: 'y_pred' needs at least 2 classes (0 is the blank), got "
                         f"C={classes}")
    if steps < 1 and batch:
        raise ValueError(f"{op}: 'y_pred' needs at least one time step, got T=0")
    labels = arrays.label_input(op, "y_true", y_true)
    if labels.ndim != 2 or labels.shape[0] != batch:
        raise ValueError(f"{op}: 'y_true' must be ({batch}, max_length) integer labels for "
                         f"y_pred {tuple(y_pred.shape)}, got shape {tuple(labels.shape)}")
    weights = per_sample_weights(arrays, op, sample_weight, y_pred)
    if isinstance(labels, np.ndarray):
        lengths = check_ctc_labels(op, labels, classes, steps)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
    else:
        lengths = None
    return labels, lengths, y_pred, bool(need_grad), weights



def ctc_loss_samples(arrays, y_true, y_pred, need_grad, sample_weight):
    """opss: keras.ops.ctc_loss's per-sample op; the operands of ctc_loss_forward_backward."""
    return ctc_loss_forward_backward(arrays, y_true, y_pred, need_grad, sample_weight,
                                     op="ctc_loss_samples")

def circle_loss_forward_backward(arrays, y_true, y_pred, gamma, margin, remove_diagonal,
                                 need_grad, sample_weight):
    """-> (labels (N,) int32, y_pred (N, D), gamma, margin, remove_diagonal, need_grad,
    weights or None). Labels are any integers (only their equality counts)."""
    op = "circle_loss_forward_backward"
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim != 2:
        raise ValueError(f"{op}: 'y_pred' must be (batch, embedding) embeddings, got shape "
                         f"{tuple(y_pred.shape)}")
    if y_pred.shape[1] < 1:
        raise ValueError(f"{op}: 'y_pred' needs embeddings of at least one value, got shape "
                         f"{tuple(y_pred.shape)}")
    labels = arrays.label_input(op, "y_true", y_true)
    n = y_pred.shape[0]
    if tuple(labels.shape) not in ((n,), (n, 1)):
        raise ValueError(f"{op}: 'y_true' must be ({n},) or ({n}, 1) integer labels for "
                         f"y_pred {tuple(y_pred.shape)}, got shape {tuple(labels.shape)}")
    labels = labels.reshape(n)
    if isinstance(labels, np.ndarray):
        if labels.size and (labels.min() < -2**31 or labels.max() >= 2**31):
            raise ValueError(f"{op}: 'y_true' labels must fit in int32 (the kernels compare "
                             f"them as int32), got values in [{labels.min()}, "
                             f"{labels.max()}]")
        labels = np.ascontiguousarray(labels, dtype=np.int32)
    gamma = number(op, "gamma", gamma)
    margin = number(op, "margin", margin)
    if not isinstance(remove_diagonal, (bool, np.bool_)):
        raise TypeError(f"{op}: 'remove_diagonal' must be a bool, got {remove_diagonal!r}")
    weights = per_sample_weights(arrays, op, sample_weight, y_pred)
    return labels, y_pred, gamma, margin, bool(remove_diagonal), bool(need_grad), weights
