"""Central finite differences for layers, models and losses (float64 only).

One helper checks a whole layer: the analytic input gradient and every weight gradient that
``backward`` produces against ``(f(x + h e_i) - f(x - h e_i)) / 2h`` of the scalar
``sum(y * r)`` for a fixed random ``r``, so every output element contributes with a different
weight. Sizes are kept small, so every coordinate is perturbed (no sampling).
"""

import numpy as np

EPS = 1e-6


def numerical_grad(f, x, eps=EPS):
    """d f / d x for a scalar function ``f`` of the array ``x`` (perturbed in place, restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        up = f()
        flat[i] = orig - eps
        down = f()
        flat[i] = orig
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_close(name, analytic, numeric, rtol=1e-5, atol=1e-7):
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, (
        f"{name}: analytic gradient has shape {analytic.shape}, numeric {numeric.shape}")
    assert np.any(numeric != 0), f"{name}: numeric gradient is all zero (test would be vacuous)"
    err = np.abs(analytic - numeric)
    tol = atol + rtol * np.abs(numeric)
    bad = np.argmax(err - tol)
    assert np.all(err <= tol), (
        f"{name}: max |analytic - numeric| = {err.max():.3e} at flat index {bad} "
        f"(analytic {analytic.reshape(-1)[bad]:.8e}, numeric {numeric.reshape(-1)[bad]:.8e})")


def check_layer(layer, x, rng, rtol=1e-5, atol=1e-7, training=True, check_input=True,
                before_call=None):
    """Gradient-check ``layer`` (already built or built on ``x``) at input ``x`` (float64).

    ``before_call()`` runs before every forward: a random layer (Dropout) uses it to rewind
    its generator so that every call draws the same mask.
    """
    x = np.array(x, dtype=np.float64)
    before_call = before_call or (lambda: None)
    before_call()
    y = np.array(layer(x, training=training))
    r = rng.standard_normal(y.shape)

    def loss():
        before_call()
        return float(np.sum(np.asarray(layer(x, training=training)) * r))

    before_call()
    layer(x, training=training)
    layer.needs_input_grad = check_input
    dx = layer.backward(r.copy())
    grads = {v.path: np.array(v.grad, dtype=np.float64) for v in layer.weights}
    if check_input:
        assert dx is not None, f"{layer.name}: backward returned no input gradient"
        assert_close(f"{layer.name} d/dx", dx, numerical_grad(loss, x), rtol, atol)
    for v in layer.weights:
        assert_close(f"{v.path}", grads[v.path], numerical_grad(loss, v.value), rtol, atol)
    return y


def check_model(model, x, y, rtol=1e-5, atol=1e-7, before_forward=None):
    """Gradient-check a compiled model's loss (plus regularization) w.r.t. every weight, using
    one training forward/backward exactly as ``fit`` runs it (without the update). ``x``/``y``
    are an array or a list per input/output; ``before_forward`` runs before each forward (to
    replay a random layer's stream)."""
    xs = [np.array(a, dtype=np.float64) for a in (x if isinstance(x, list) else [x])]
    ys = [None if a is None else np.asarray(a) for a in (y if isinstance(y, list) else [y])]
    hook = before_forward or (lambda: None)
    model._prepare_train()

    def loss():
        hook()
        outs, _ = model._plan.forward(xs, True)
        value, _, _ = model._losses_and_grads(ys, outs, False)
        return value + model._penalty_value()

    for v in model.trainable_weights:
        v.grad = None
    hook()
    outs, saved = model._plan.forward(xs, True)
    _, _, grads = model._losses_and_grads(ys, outs, True)
    model._plan.backward(grads, saved)
    model.regularization_penalty()
    analytic = {v.path: None if v.grad is None else np.array(v.grad, np.float64)
                for v in model.trainable_weights}
    for v in model.trainable_weights:
        numeric = numerical_grad(loss, v.value)
        if analytic[v.path] is None:
            # No gradient: no loss reaches the weight, so the loss must not depend on it.
            assert not np.any(numeric), f"{v.path}: no gradient, yet the loss depends on it"
            continue
        assert_close(v.path, analytic[v.path], numeric, rtol, atol)