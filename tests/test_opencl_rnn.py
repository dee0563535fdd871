"""OpenCL recurrent ops (opencl/rnn.cl, pynn/backend/opencl/rnn.py) against the CPU ops of
native/rnn.pyx (themselves checked against NumPy oracles and Keras in tests/test_rnn.py).

Runs on any OpenCL device (PoCL's CPU device in CI); skipped, with the reason, only when
pyopencl or a device is missing.
"""

import numpy as np
import pytest

from pynn._native import rnn as cpu_rnn
from tests.opencl_util import assert_close, ocl, rand  # noqa: F401

pytestmark = pytest.mark.opencl

CELLS = ["simple_rnn", "lstm", "gru", "gru_before"]
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3, "gru_before": 3}
RTOL = 1e-4


def cell_options(cell, activation="tanh", recurrent_activation="sigmoid"):
    if cell == "simple_rnn":
        return (activation,)
    if cell == "lstm":
        return (activation, recurrent_activation)
    return (activation, recurrent_activation, cell == "gru")


def op_name(cell):
    return "gru" if cell.startswith("gru") else cell


def make(cell, shape, seed=0):
    n, t, c, u = shape
    rng = np.random.default_rng(seed)
    g = GATES[cell] * u
    bias_shape = (2, g) if cell == "gru" else (g,)
    return (rand(rng, (n, t, c)), 0.5 * rand(rng, (c, g)), 0.5 * rand(rng, (u, g)),
            0.5 * rand(rng, bias_shape))


def compare(ocl, cell, shape, return_sequences, go_backwards, opts=None, bias=True,
            need_input_grad=True, seed=0):
    """Forward and backward on both backends; every output within RTOL of the CPU's."""
    from pynn.backend.opencl import rnn as _cl_rnn

    opts = opts or cell_options(cell)
    x, w, r, b = make(cell, shape, seed)
    if not bias:
        b = None
    name = op_name(cell)
    what = f"{cell} {shape} seq={return_sequences} back={go_backwards} {opts}"
    y, cache = getattr(cpu_rnn, name + "_forward")(x, w, r, b, *opts, return_sequences,
                                                   go_backwards)
    dev = [None if a is None else ocl.asarray(a) for a in (x, w, r, b)]
    y_cl, cache_cl = getattr(_cl_rnn, name + "_forward")(*dev, *opts, return_sequences,
                                                         go_backwards)
    assert_close(y_cl.get(), y, RTOL, f"forward {what}")
    assert all(type(a) is type(y_cl) for a in cache_cl)
    dy = rand(np.random.default_rng(seed + 1), y.shape)
    grads = getattr(cpu_rnn, name + "_backward")(dy, x, w, r, cache, *opts, return_sequences,
                                                 go_backwards, need_input_grad)
    grads_cl = getattr(_cl_rnn, name + "_backward")(ocl.asarray(dy), dev[0], dev[1], dev[2],
                                                    cache_cl, *opts, return_sequences,
                                                    go_backwards, need_input_grad)
    for label, got, want in zip(("dx", "dkernel", "drecurrent_kernel", "dbias"), grads_cl,
                                grads):
        if want is None:
            assert got is None, f"{label} {what}: expected None"
            continue
        assert_close(got.get(), want, RTOL, f"{label} {what}")
    return y_cl, grads_cl


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_cpu(ocl, cell, return_sequences, go_backwards):
    compare(ocl, cell, (5, 4, 3, 7), return_sequences, go_backwards)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (17, 3, 33, 9)])
def test_awkward_shapes(ocl, cell, shape):
    compare(ocl, cell, shape, True, shape[0] % 2 == 1)


@pytest.mark.parametrize("cell,activation,recurrent", [
    ("simple_rnn", "relu", None), ("lstm", "relu", "tanh"), ("gru", "elu", "sigmoid"),
    ("gru_before", "leaky_relu", "tanh"),
])
def test_other_activations(ocl, cell, activation, recurrent):
    compare(ocl, cell, (3, 4, 5, 3), True, False, cell_options(cell, activation, recurrent))


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_and_no_input_grad(ocl, cell):
    compare(ocl, cell, (3, 4, 5, 3), False, True, bias=False, need_input_grad=False)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reproducible(ocl, cell):
    """Two runs give the same bits (no atomics, fixed summation order)."""
    a = compare(ocl, cell, (6, 5, 4, 5), True, False, seed=3)
    b = compare(ocl, cell, (6, 5, 4, 5), True, False, seed=3)
    for u, v in zip((a[0],) + tuple(a[1]), (b[0],) + tuple(b[1])):
        np.testing.assert_array_equal(u.get(), v.get())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(0, 3, 2, 4), (2, 0, 2, 4)])
def test_empty(ocl, cell, shape):
    from pynn.backend.opencl import rnn as _cl_rnn

    x, w, r, b = make(cell, shape)
    name = op_name(cell)
    opts = cell_options(cell)
    for return_sequences in (True, False):
        y, cache = getattr(_cl_rnn, name + "_forward")(
            ocl.asarray(x), ocl.asarray(w), ocl.asarray(r), ocl.asarray(b), *opts,
            return_sequences, False)
        n, t, _, u = shape
        assert y.shape == ((n, t, u) if return_sequences else (n, u))
        assert not np.any(y.get())
        dx, dw, dr, db = getattr(_cl_rnn, name + "_backward")(
            ocl.zeros(y.shape), ocl.asarray(x), ocl.asarray(w), ocl.asarray(r), cache, *opts,
            return_sequences, False, True)
        assert (dx.shape, dw.shape, dr.shape, db.shape) == (x.shape, w.shape, r.shape, b.shape)
        assert not (np.any(dw.get()) or np.any(dr.get()) or np.any(db.get()))


@pytest.mark.parametrize("cell", CELLS)
def test_bad_inputs(ocl, cell):
    from pynn.backend.opencl import rnn as _cl_rnn

    x, w, r, b = (ocl.asarray(a) for a in make(cell, (3, 4, 5, 2)))
    name = op_name(cell)
    opts = cell_options(cell)
    fwd = getattr(_cl_rnn, name + "_forward")
    bwd = getattr(_cl_rnn, name + "_backward")
    with pytest.raises(ValueError, match=f"{name}_forward: 'x' is required"):
        fwd(None, w, r, b, *opts)
    with pytest.raises(ValueError, match="'kernel' must have shape"):
        fwd(x, w[:4], r, b, *opts)
    with pytest.raises(ValueError, match="'recurrent_kernel' must have shape"):
        fwd(x, w, r[:1], b, *opts)
    with pytest.raises(ValueError, match="'bias' must have shape"):
        fwd(x, w, r, ocl.copy(b.reshape(b.size)[1:]) if b.ndim == 1 else ocl.copy(b[:1]),
            *opts)
    with pytest.raises(TypeError, match="'kernel' must have dtype float32"):
        fwd(x, ocl.asarray(w, np.int32), r, b, *opts)
    with pytest.raises(ValueError, match="not supported by the recurrent kernels"):
        fwd(x, w, r, b, "gelu", *opts[1:])
    y, cache = fwd(x, w, r, b, *opts, True, False)
    with pytest.raises(ValueError, match=f"{name}_backward: 'dy' must have shape"):
        bwd(ocl.zeros((3, 3, 2)), x, w, r, cache, *opts, True)
    with pytest.raises(ValueError, match="'cache' must be the tuple"):
        bwd(y, x, w, r, cache[:0], *opts, True)
    with pytest.raises(ValueError, match=r"cache\[0\]' must have shape"):
        bwd(y, x, w, r, (ocl.zeros((3, 4, 3)),) + tuple(cache[1:]), *opts, True)


@pytest.mark.parametrize("cls,kwargs", [
    ("LSTM", {"return_sequences": True}), ("GRU", {"go_backwards": True}),
    ("GRU", {"reset_after": False}), ("SimpleRNN", {"activation": "relu"}),
])
def test_layer_on_opencl_matches_cpu(ocl, monkeypatch, cls, kwargs):
    """The same layer code on both backends: outputs and gradients agree."""
    from pynn import backend
    from pynn.backend import cpu
    from pynn.backend.opencl import rnn as _cl_rnn
    from pynn.layers import recurrent

    ops = [f"{c}_{d}" for c in ("simple_rnn", "lstm", "gru") for d in ("forward", "backward")]
    for op in ops:  # until the backends import the recurrent ops themselves
        if not hasattr(cpu, op):
            monkeypatch.setattr(cpu, op, getattr(cpu_rnn, op), raising=False)
        if not hasattr(ocl, op):
            monkeypatch.setattr(ocl, op, getattr(_cl_rnn, op), raising=False)
    rng = np.random.default_rng(5)
    x = rand(rng, (4, 6, 3))
    results = []
    weights = None
    try:
        for device in ("cpu", "opencl"):
            backend.set_device(device)
            b = backend.current()
            layer = getattr(recurrent, cls)(5, **kwargs)
            layer.build((None, 6, 3))
            if weights is None:
                weights = layer.get_weights()
            layer.set_weights(weights)
            y = layer(b.asarray(x), training=True)
            dy = np.ones(y.shape, np.float32)
            dx = layer.backward(b.asarray(dy))
            results.append([b.to_numpy(a) for a in [y, dx] + [v.grad for v in layer.weights]])
    finally:
        backend.set_device("cpu")
    for got, want in zip(results[1], results[0]):
        assert_close(got, want, RTOL, f"{cls} {kwargs}")
