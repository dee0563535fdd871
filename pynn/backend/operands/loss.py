"""Operands of the loss and metric ops' targets (native/loss.pyx, native/metric.pyx,
pynn/backend/opencl/loss.py and metric.py)."""

from pynn.backend.api import LOSSES
from pynn.backend.operands.common import huber_delta

KERAS_EPSILON = 1e-7  # Keras's backend.epsilon(): probabilities are clipped to [eps, 1-eps]
LOSS_HUBER = LOSSES.index("huber")
LOSS_CCE = LOSSES.index("categorical_crossentropy")
LOSS_SCCE = LOSSES.index("sparse_categorical_crossentropy")


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


def loss_forward_backward(arrays, name, y_true, y_pred, from_logits, param, need_grad):
    """-> (code, targets, y_pred, from_logits, delta, need_grad): targets are flat int32
    labels for the sparse loss, else y_true shaped like y_pred; delta is huber's (else 0)."""
    op = "loss_forward_backward"
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"{op}: unknown loss {name!r}; expected one of {LOSSES}")
    code = LOSSES.index(name)
    delta = huber_delta(op, param) if code == LOSS_HUBER else 0.0
    if y_true is None:
        raise ValueError(f"{op}: 'y_true' is required, got None")
    y_pred = arrays.float_input(op, "y_pred", y_pred)
    if y_pred.ndim < 1:
        raise ValueError(f"{op}: 'y_pred' must have at least 1 dimension, got shape ()")
    if code == LOSS_SCCE:
        k = y_pred.shape[-1]
        targets = sparse_labels(arrays, op, y_true, y_pred.shape[:-1], k)
    else:
        targets = dense_targets(arrays, op, y_true, y_pred)
    return code, targets, y_pred, bool(from_logits), delta, bool(need_grad)
