"""Float64 NumPy oracles for the losses (native/loss.pyx, opencl/loss.cl); the metrics' are in
metric_ref.py.

Written straight from Keras 3's definitions (keras/src/losses/losses.py,
keras/src/backend/torch/nn.py): slow and obvious.
Gradients are checked separately by finite differences and by torch autograd through Keras.
"""

import numpy as np

EPSILON = 1e-7


def _clip_bounds(dtype):
    """Keras clips in the input dtype: eps and 1 - eps rounded to it."""
    dt = np.dtype(dtype).type
    return float(dt(EPSILON)), float(dt(1.0 - EPSILON))


def per_sample_weights_ref(sample_weight, y_pred):
    """Weights broadcast to the per-sample losses' shape y_pred.shape[:-1] (a leading part of
    it, or it plus a trailing 1); None stays None."""
    if sample_weight is None:
        return None
    lead = np.shape(y_pred)[:-1]
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape == lead + (1,):
        return w.reshape(lead)
    return np.broadcast_to(w.reshape(w.shape + (1,) * (len(lead) - w.ndim)), lead)


def loss_forward_ref(name, y_true, y_pred, from_logits=False, param=None, dtype=np.float64,
                     sample_weight=None):
    """Mean over the batch of the (weighted) per-sample loss (Keras 'sum_over_batch_size':
    the sum of weight * loss over the number of losses, not over the weights' sum)."""
    p = np.asarray(y_pred, dtype=np.float64)
    lo, hi = _clip_bounds(dtype)
    if name in SPARSE_LABEL_LOSSES:
        labels = np.asarray(y_true).reshape(p.shape[:-1]).astype(np.int64)
        t = np.zeros_like(p)
        np.put_along_axis(t, labels[..., None], 1.0, axis=-1)
    else:
        t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    if p.size == 0:
        return 0.0
    if name in NEW_LOSSES:
        per_sample = _new_loss_ref(name, t, p, from_logits, param, dtype)[0]
        w = per_sample_weights_ref(sample_weight, p)
        return float(np.mean(per_sample if w is None else per_sample * w))
    t = _smoothed(name, t, param)
    if name == "mean_squared_error":
        per_sample = np.mean((t - p) ** 2, axis=-1)
    elif name == "mean_absolute_error":
        per_sample = np.mean(np.abs(t - p), axis=-1)
    elif name == "huber":
        delta = 1.0 if param is None else float(param)
        err = np.abs(p - t)
        per_sample = np.mean(np.where(err <= delta, 0.5 * err**2, delta * err - 0.5 * delta**2),
                             axis=-1)
    elif name == "binary_crossentropy":
        if from_logits:
            elem = np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
        else:
            pc = np.clip(p, lo, hi)
            elem = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
        per_sample = np.mean(elem, axis=-1)
    else:  # categorical and sparse categorical
        if from_logits:
            m = np.max(p, axis=-1, keepdims=True)
            logp = p - m - np.log(np.sum(np.exp(p - m), axis=-1, keepdims=True))
        else:
            q = p / np.sum(p, axis=-1, keepdims=True)
            logp = np.log(np.clip(q, lo, hi))
        per_sample = -np.sum(t * logp, axis=-1)
    w = per_sample_weights_ref(sample_weight, p)
    return float(np.mean(per_sample if w is None else per_sample * w))


def loss_backward_ref(name, y_true, y_pred, from_logits=False, param=None, dtype=np.float64,
                      sample_weight=None):
    """Analytic d(mean loss)/d(y_pred), including the clip's zero gradient outside
    [lo, hi] (torch's clamp: bounds included) and the row renormalization's Jacobian. Each
    per-sample loss depends on its own row only, so a weight scales that row's gradient."""
    grad = _unweighted_backward_ref(name, y_true, y_pred, from_logits, param, dtype)
    w = per_sample_weights_ref(sample_weight, grad)
    if w is not None and name in OVERLAP_LOSSES:
        return grad * np.mean(w)  # one loss for the batch, times the weights' mean
    return grad if w is None else grad * w[..., None]


def _unweighted_backward_ref(name, y_true, y_pred, from_logits, param, dtype):
    p = np.asarray(y_pred, dtype=np.float64)
    lo, hi = _clip_bounds(dtype)
    if name in SPARSE_LABEL_LOSSES:
        labels = np.asarray(y_true).reshape(p.shape[:-1]).astype(np.int64)
        t = np.zeros_like(p)
        np.put_along_axis(t, labels[..., None], 1.0, axis=-1)
    else:
        t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    if p.size == 0:
        return np.zeros_like(p)
    if name in NEW_LOSSES:
        return _new_loss_ref(name, t, p, from_logits, param, dtype)[1]
    t = _smoothed(name, t, param)
    d = p - t
    if name == "mean_squared_error":
        return 2 * d / p.size
    if name == "mean_absolute_error":
        return np.sign(d) / p.size
    if name == "huber":
        delta = 1.0 if param is None else float(param)
        return np.where(np.abs(d) <= delta, d, delta * np.sign(d)) / p.size
    if name == "binary_crossentropy":
        if from_logits:
            return (1 / (1 + np.exp(-p)) - t) / p.size
        inside = (p >= lo) & (p <= hi)
        pc = np.clip(p, lo, hi)
        return np.where(inside, -t / pc + (1 - t) / (1 - pc), 0.0) / p.size
    rows = p.size // p.shape[-1]
    if from_logits:
        e = np.exp(p - np.max(p, axis=-1, keepdims=True))
        sm = e / np.sum(e, axis=-1, keepdims=True)
        return (np.sum(t, axis=-1, keepdims=True) * sm - t) / rows
    s = np.sum(p, axis=-1, keepdims=True)
    q = p / s
    inside = (q >= lo) & (q <= hi)
    dq = np.where(inside, -t / np.where(inside, q, 1.0), 0.0)  # dL/dq through the clip
    # q = p / s: dL/dp_k = (dq_k - sum_j dq_j q_j) / s
    return (dq - np.sum(dq * q, axis=-1, keepdims=True)) / s / rows


def loss_forward_backward_ref(name, y_true, y_pred, from_logits=False, param=None,
                              need_grad=True, sample_weight=None, dtype=np.float64):
    """(loss, grad or None): the op's two results from the two oracles above (``dtype``: the
    kernel's, which sets the probability clip)."""
    loss = loss_forward_ref(name, y_true, y_pred, from_logits, param, dtype, sample_weight)
    grad = loss_backward_ref(name, y_true, y_pred, from_logits, param, dtype,
                             sample_weight) if need_grad else None
    return loss, grad


# -- the losses of issue 15 ---------------------------------------------------------------

NEW_LOSSES = ("kl_divergence", "hinge", "squared_hinge", "categorical_hinge", "log_cosh",
              "poisson", "mean_squared_logarithmic_error", "mean_absolute_percentage_error",
              "cosine_similarity", "binary_focal_crossentropy",
              "categorical_focal_crossentropy", "dice", "tversky",
              "categorical_generalized_cross_entropy")
# Losses of integer class ids (one per row), one-hot encoded by the oracles.
SPARSE_LABEL_LOSSES = ("sparse_categorical_crossentropy", "categorical_generalized_cross_entropy")
# Keras's dice / tversky with axis=None: one loss for the whole batch.
OVERLAP_LOSSES = ("dice", "tversky")
FOCAL_DEFAULTS = {"apply_class_balancing": False, "alpha": 0.25, "gamma": 2.0,
                  "label_smoothing": 0.0}


def _smoothed(name, t, param):
    """Keras's label_smoothing of the binary (towards 1/2) and categorical (towards 1/K)
    cross-entropies."""
    ls = float(param or 0.0)
    if name == "binary_crossentropy":
        return t * (1 - ls) + 0.5 * ls
    if name == "categorical_crossentropy":
        return t * (1 - ls) + ls / t.shape[-1]
    return t


def _new_loss_ref(name, t, p, from_logits, param, dtype):
    """(per-sample losses, d(mean of them)/dp) straight from keras/src/losses/losses.py;
    the gradients are the analytic ones (torch's at the clips: 1 inside, bounds included)."""
    eps = float(np.dtype(dtype).type(EPSILON))
    rows = p.size // p.shape[-1]
    n = p.size
    if name in ("hinge", "squared_hinge"):
        tt = 2 * t - 1 if np.all((t == 0) | (t == 1)) else t
        m = np.maximum(1 - tt * p, 0)
        if name == "hinge":
            return np.mean(m, axis=-1), np.where(m > 0, -tt, 0) / n
        return np.mean(m**2, axis=-1), -2 * tt * m / n
    if name == "log_cosh":
        d = p - t
        return np.mean(np.log(np.cosh(d)), axis=-1), np.tanh(d) / n
    if name == "poisson":
        return np.mean(p - t * np.log(p + eps), axis=-1), (1 - t / (p + eps)) / n
    if name == "mean_squared_logarithmic_error":
        a = np.log(np.maximum(p, eps) + 1) - np.log(np.maximum(t, eps) + 1)
        return np.mean(a**2, axis=-1), np.where(p > eps, 2 * a / (p + 1), 0) / n
    if name == "mean_absolute_percentage_error":
        scale = 100 / np.maximum(np.abs(t), eps)
        return np.mean(scale * np.abs(t - p), axis=-1), scale * np.sign(p - t) / n
    if name == "kl_divergence":
        tc, pc = np.clip(t, eps, 1), np.clip(p, eps, 1)
        inside = (p >= eps) & (p <= 1)
        return np.sum(tc * np.log(tc / pc), axis=-1), np.where(inside, -tc / pc, 0) / rows
    if name == "categorical_hinge":
        pos = np.sum(t * p, axis=-1)
        negs = (1 - t) * p
        loss = np.maximum(np.max(negs, axis=-1) - pos + 1, 0)
        onehot = np.zeros_like(p)
        np.put_along_axis(onehot, np.argmax(negs, axis=-1)[..., None], 1.0, axis=-1)
        grad = np.where(loss[..., None] > 0, -t + (1 - t) * onehot, 0)
        return loss, grad / rows
    if name == "categorical_generalized_cross_entropy":
        # Keras's (1 - p_y^q) / q on y_pred as given: no clip, no renormalization.
        q = {"q": 0.5, **(param or {})}["q"]
        p_true = np.sum(t * p, axis=-1)
        return (1 - p_true**q) / q, -t * p_true[..., None] ** (q - 1) / rows
    if name == "categorical_focal_crossentropy":
        return _categorical_focal_ref(t, p, from_logits, param, dtype, rows)
    if name in OVERLAP_LOSSES:
        return _overlap_ref(name, t, p, param, eps)
    if name == "cosine_similarity":
        it = np.minimum(1 / np.sqrt(np.sum(t * t, axis=-1, keepdims=True)), 1 / EPSILON)
        ip = np.minimum(1 / np.sqrt(np.sum(p * p, axis=-1, keepdims=True)), 1 / EPSILON)
        tp = np.sum(t * p, axis=-1, keepdims=True)
        capped = ip >= 1 / EPSILON
        grad = -it * (t * ip - np.where(capped, 0, tp * ip**3 * p))
        return -(tp * it * ip)[..., 0], grad / rows
    # binary focal cross-entropy
    cfg = {**FOCAL_DEFAULTS, **(param or {})}
    alpha, gamma, ls = cfg["alpha"], cfg["gamma"], cfg["label_smoothing"]
    t = t * (1 - ls) + 0.5 * ls
    q = 1 / (1 + np.exp(-p)) if from_logits else p
    dq = q * (1 - q) if from_logits else 1.0
    lo, hi = _clip_bounds(dtype)
    qc = np.clip(q, lo, hi)
    bce = -(t * np.log(qc) + (1 - t) * np.log(1 - qc))
    dbce = np.where((q >= lo) & (q <= hi), (qc - t) / (qc * (1 - qc)), 0)
    base = 1 - (t * q + (1 - t) * (1 - q))
    f = base**gamma
    df = -gamma * base ** (gamma - 1) * (2 * t - 1) if gamma != 0 else 0 * base
    w = t * alpha + (1 - t) * (1 - alpha) if cfg["apply_class_balancing"] else 1.0
    return np.mean(w * f * bce, axis=-1), w * (df * bce + f * dbce) * dq / n


def _categorical_focal_ref(t, p, from_logits, param, dtype, rows):
    """sum_j alpha (1 - q_j)^gamma (-t_j log q_j), q the row renormalized (softmax from
    logits) and clipped; t label-smoothed towards 1/K."""
    cfg = {"alpha": 0.25, "gamma": 2.0, "label_smoothing": 0.0, **(param or {})}
    alpha, gamma, ls = cfg["alpha"], cfg["gamma"], cfg["label_smoothing"]
    t = t * (1 - ls) + ls / t.shape[-1]
    lo, hi = _clip_bounds(dtype)
    if from_logits:
        e = np.exp(p - np.max(p, axis=-1, keepdims=True))
        q = e / np.sum(e, axis=-1, keepdims=True)
    else:
        s = np.sum(p, axis=-1, keepdims=True)
        # Keras divides in the input dtype: round q so the clip decisions match.
        q = (p / s).astype(dtype).astype(np.float64)
    qc = np.clip(q, lo, hi)
    inside = (q >= lo) & (q <= hi)
    loss = np.sum(alpha * (1 - qc) ** gamma * -t * np.log(qc), axis=-1)
    # dL/dq through the clip: alpha t (gamma (1 - q)^(gamma - 1) log q - (1 - q)^gamma / q)
    dfac = gamma * (1 - qc) ** (gamma - 1) if gamma != 0 else 0 * qc
    c = np.where(inside, alpha * t * (dfac * np.log(qc) - (1 - qc) ** gamma / qc), 0.0)
    cq = np.sum(c * q, axis=-1, keepdims=True)
    grad = q * (c - cq) if from_logits else (c - cq) / s
    return loss, grad / rows


def _overlap_ref(name, t, p, param, eps):
    """Keras's dice / tversky over every element (axis=None): the one loss, broadcast to the
    per-sample shape so that the weighted mean is loss times the weights' mean, and its
    gradient (the reduction of a scalar is the scalar: no 1/n)."""
    inter = np.sum(t * p)
    fp = np.sum((1 - p) * t)
    fn = np.sum(p * (1 - t))
    if name == "dice":
        num, den = 2 * inter, np.sum(t) + np.sum(p) + eps
        dnum, dden = 2 * t, np.ones_like(p)
    else:
        cfg = {"alpha": 0.5, "beta": 0.5, **(param or {})}
        a, b = cfg["alpha"], cfg["beta"]
        num, den = inter, inter + a * fp + b * fn + eps
        dnum, dden = t, t - a * t + b * (1 - t)
    loss = 1 - num / den
    grad = -(dnum * den - num * dden) / den**2
    return np.full(p.shape[:-1], loss), grad


# -- Keras 3's CTC and Circle losses (their own ops) ----------------------------------------

def numerical_loss_grad(f, x, h=1e-5):
    """d f / d x of a scalar float64 function by central differences (the oracles'
    gradients: CTC's and Circle's analytic ones are what the kernels must get right)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        up = f(x)
        flat[i] = orig - h
        down = f(x)
        flat[i] = orig
        gflat[i] = (up - down) / (2 * h)
    return grad


def _log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def ctc_per_sample_ref(y_true, y_pred):
    """Keras's ctc (keras/src/losses/losses.py, torch's ctc_loss under it): per sample
    -log p(labels | log_softmax(y_pred)), the labels the row's non-zero entries (0 is the
    blank and pads the row's end), every sample T steps. Graves's forward recursion in
    log space, one step and one state at a time."""
    labels = np.asarray(y_true)
    lp = _log_softmax(np.asarray(y_pred, dtype=np.float64))
    steps = lp.shape[1]
    out = np.empty(lp.shape[0])
    for b in range(lp.shape[0]):
        row = [int(v) for v in labels[b] if v != 0]
        ext = [0]
        for v in row:
            ext += [v, 0]
        alpha = np.full(len(ext), -np.inf)
        alpha[0] = lp[b, 0, 0]
        if len(ext) > 1:
            alpha[1] = lp[b, 0, ext[1]]
        for t in range(1, steps):
            new = np.full(len(ext), -np.inf)
            for s, sym in enumerate(ext):
                terms = [alpha[s]]
                if s >= 1:
                    terms.append(alpha[s - 1])
                if s >= 2 and sym != 0 and sym != ext[s - 2]:
                    terms.append(alpha[s - 2])
                new[s] = np.logaddexp.reduce(terms) + lp[b, t, sym]
            alpha = new
        out[b] = -np.logaddexp.reduce(alpha[-2:] if len(ext) > 1 else alpha[-1:])
    return out


def ctc_brute_force_ref(y_true, y_pred):
    """The same per-sample losses by summing every path of T symbols that collapses
    (repeats merged, then blanks dropped) to the labels: C^T paths, for tiny cases."""
    import itertools

    labels = np.asarray(y_true)
    probs = np.exp(_log_softmax(np.asarray(y_pred, dtype=np.float64)))
    batch, steps, classes = probs.shape
    out = np.empty(batch)
    for b in range(batch):
        target = [int(v) for v in labels[b] if v != 0]
        total = 0.0
        for path in itertools.product(range(classes), repeat=steps):
            merged = [v for i, v in enumerate(path) if i == 0 or v != path[i - 1]]
            if [v for v in merged if v != 0] == target:
                total += np.prod(probs[b, np.arange(steps), list(path)])
        out[b] = -np.log(total)
    return out


def ctc_loss_forward_ref(y_true, y_pred, sample_weight=None):
    per_sample = ctc_per_sample_ref(y_true, y_pred)
    if sample_weight is not None:
        per_sample = per_sample * np.asarray(sample_weight, np.float64).reshape(-1)
    return float(np.mean(per_sample)) if per_sample.size else 0.0


def ctc_loss_forward_backward_ref(y_true, y_pred, need_grad=True, sample_weight=None):
    """(mean loss, its gradient by central differences of the float64 oracle, or None)."""
    loss = ctc_loss_forward_ref(y_true, y_pred, sample_weight)
    if not need_grad:
        return loss, None
    return loss, numerical_loss_grad(lambda x: ctc_loss_forward_ref(y_true, x, sample_weight),
                                     y_pred)


def crossentropy_rows_ref(name, y_true, y_pred, from_logits=False, need_grad=True,
                          dtype=np.float32):
    """opss: (each row's categorical / sparse categorical cross-entropy, the gradient of
    their sum or None): loss_forward_ref of each row alone, loss_backward_ref's mean
    gradient times the number of rows (``dtype``: the kernel's, which sets the clip)."""
    p = np.asarray(y_pred, dtype=np.float64)
    k = p.shape[-1]
    rows = p.size // k
    p2, t2 = p.reshape(rows, k), np.asarray(y_true).reshape(rows, -1)
    losses = np.array([loss_forward_ref(name, t2[i:i + 1], p2[i:i + 1], from_logits, None,
                                        dtype) for i in range(rows)]).reshape(p.shape[:-1])
    if not need_grad:
        return losses, None
    return losses, loss_backward_ref(name, y_true, y_pred, from_logits, None, dtype) * rows


def ctc_loss_samples_ref(y_true, y_pred, need_grad=True, sample_weight=None):
    """opss: (each sample's weighted loss, the gradient of their sum by central differences
    of the float64 oracle, or None)."""
    weights = 1.0 if sample_weight is None else np.asarray(sample_weight, np.float64)
    losses = ctc_per_sample_ref(y_true, y_pred) * weights
    if not need_grad:
        return losses, None
    return losses, numerical_loss_grad(
        lambda x: float(np.sum(ctc_per_sample_ref(y_true, x) * weights)), y_pred)


def circle_per_sample_ref(y_true, y_pred, gamma=80.0, margin=0.4, remove_diagonal=True):
    """Keras's circle (keras/src/losses/losses.py) on the batch as its own reference: the
    per-sample losses (0 where a sample has no positive or no negative pair)."""
    e = np.asarray(y_pred, dtype=np.float64)
    labels = np.asarray(y_true).reshape(-1)
    dist = np.maximum(1 - e @ e.T, 0.0)
    positive = labels[:, None] == labels[None, :]
    negative = ~positive
    if remove_diagonal:
        positive &= ~np.eye(len(labels), dtype=bool)
    pos_w = np.maximum((margin + dist) * positive, 0.0)
    neg_w = np.maximum((1 + margin - dist) * negative, 0.0)
    pos_logits = np.where(positive, -gamma * pos_w * (margin - dist), -np.inf)
    neg_logits = np.where(negative, gamma * neg_w * ((1 - margin) - dist), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.logaddexp.reduce(pos_logits, axis=1) + np.logaddexp.reduce(neg_logits, axis=1)
    return np.where(np.isneginf(z), 0.0, np.logaddexp(0.0, z))


def circle_loss_forward_ref(y_true, y_pred, gamma=80.0, margin=0.4, remove_diagonal=True,
                            sample_weight=None, dtype=np.float64):
    """Keras's reduction with the loss's mask (loss > 0 in ``dtype``): the sum of the
    weighted losses over the number of unmasked samples (0 when there are none)."""
    per_sample = circle_per_sample_ref(y_true, y_pred, gamma, margin, remove_diagonal)
    valid = np.count_nonzero(per_sample.astype(dtype) > 0)
    if sample_weight is not None:
        per_sample = per_sample * np.asarray(sample_weight, np.float64).reshape(-1)
    return float(np.sum(per_sample) / valid) if valid else 0.0


def circle_loss_forward_backward_ref(y_true, y_pred, gamma=80.0, margin=0.4,
                                     remove_diagonal=True, need_grad=True, sample_weight=None,
                                     dtype=np.float64):
    """(mean loss, its gradient by central differences of the float64 oracle, or None); the
    mask is held fixed, as Keras's boolean mask carries no gradient."""
    args = (gamma, margin, remove_diagonal)
    loss = circle_loss_forward_ref(y_true, y_pred, *args, sample_weight, dtype)
    if not need_grad:
        return loss, None
    mask = circle_per_sample_ref(y_true, y_pred, *args).astype(dtype) > 0
    weights = np.ones(len(mask)) if sample_weight is None else np.asarray(
        sample_weight, np.float64).reshape(-1)
    valid = max(np.count_nonzero(mask), 1)

    def masked_mean(x):
        return float(np.sum(circle_per_sample_ref(y_true, x, *args) * weights * mask) / valid)

    return loss, numerical_loss_grad(masked_mean, y_pred)
