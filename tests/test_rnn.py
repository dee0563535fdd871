"""Recurrent ops (native/rnn.pyx, opencl/rnn.cl) and layers (pynn/layers/recurrent.py).

Ops against the float64 oracles of tests/reference/rnn_ref.py (forward) and central finite
differences (backward), thread-count invariance, bad inputs; layers against Keras 3 itself
(outputs and weight gradients, same weights through set_weights).

The checks that hold on both backends take the ``backend`` fixture (tests/conftest.py) and
run one body on each; OpenCL-only checks are marked ``opencl``.
"""

import os

import numpy as np
import pytest

from pynn._native import rnn
from pynn._native.info import get_max_threads, set_num_threads
from tests.backend_util import assert_close, assert_same, rand
from tests.reference import rnn_ref

CELLS = ["simple_rnn", "lstm", "gru", "gru_before"]
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3, "gru_before": 3}
REF = {"simple_rnn": rnn_ref.simple_rnn_forward_ref, "lstm": rnn_ref.lstm_forward_ref,
       "gru": rnn_ref.gru_forward_ref, "gru_before": rnn_ref.gru_forward_ref}
# (N, T, C, U): awkward sizes; N = 6 and 13 split into row blocks of 4 with a remainder.
SHAPES = [(3, 5, 7, 4), (1, 1, 1, 1), (6, 3, 2, 5), (13, 4, 3, 2)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


# -- one helper for every op call ------------------------------------------------------------

def cell_options(cell, activation="tanh", recurrent_activation="sigmoid"):
    """The op arguments between the cache/bias and return_sequences."""
    if cell == "simple_rnn":
        return (activation,)
    if cell == "lstm":
        return (activation, recurrent_activation)
    return (activation, recurrent_activation, cell == "gru")


def op_name(cell):
    return "gru" if cell.startswith("gru") else cell


def forward(cell, x, w, r, b, opts, return_sequences=True, go_backwards=False):
    return getattr(rnn, op_name(cell) + "_forward")(x, w, r, b, *opts, return_sequences,
                                                    go_backwards)


def backward(cell, dy, x, w, r, cache, opts, return_sequences=True, go_backwards=False,
             need_input_grad=True):
    return getattr(rnn, op_name(cell) + "_backward")(dy, x, w, r, cache, *opts,
                                                     return_sequences, go_backwards,
                                                     need_input_grad)


def reference(cell, x, w, r, b, opts, return_sequences=True, go_backwards=False):
    return REF[cell](x, w, r, b, *opts, return_sequences, go_backwards)


def bias_shape(cell, units):
    g = GATES[cell] * units
    return (2, g) if cell == "gru" else (g,)


def make(cell, shape, dtype=np.float64, seed=0, scale=0.5):
    """Random never-all-zero (x, kernel, recurrent_kernel, bias) for a cell."""
    n, t, c, u = shape
    rng = np.random.default_rng(seed)
    g = GATES[cell] * u
    x = rng.standard_normal((n, t, c))
    w = rng.standard_normal((c, g)) * scale
    r = rng.standard_normal((u, g)) * scale
    b = rng.standard_normal(bias_shape(cell, u)) * scale
    for a in (x, w, r, b):
        if a.size:
            a.flat[0] = 0.5 + abs(a.flat[0])
    return tuple(a.astype(dtype) for a in (x, w, r, b))


def check_cell(cell, shape, dtype, return_sequences, go_backwards, opts=None):
    """Forward against the oracle, backward against finite differences of the oracle."""
    opts = opts or cell_options(cell)
    x, w, r, b = make(cell, shape, dtype)
    what = f"{cell} {shape} {np.dtype(dtype).name} seq={return_sequences} back={go_backwards}"
    y, cache = forward(cell, x, w, r, b, opts, return_sequences, go_backwards)
    want = reference(cell, x, w, r, b, opts, return_sequences, go_backwards)
    assert y.dtype == dtype and y.shape == want.shape, (what, y.dtype, y.shape)
    np.testing.assert_allclose(y, want, **TOL[dtype], err_msg=f"forward {what}")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    grads = backward(cell, dy, x, w, r, cache, opts, return_sequences, go_backwards)
    fd = rnn_ref.numerical_grads(
        lambda *a: reference(cell, *a, opts, return_sequences, go_backwards), [x, w, r, b], dy)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-6, atol=1e-8)
    for name, got, exp in zip(("dx", "dkernel", "drecurrent_kernel", "dbias"), grads, fd):
        assert got.dtype == dtype and got.shape == exp.shape, (what, name, got.shape)
        np.testing.assert_allclose(got, exp, **tol, err_msg=f"{name} {what}")


# -- ops vs oracles --------------------------------------------------------------------------

@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, dtype, return_sequences, go_backwards):
    check_cell(cell, (3, 5, 7, 4), dtype, return_sequences, go_backwards)


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("cell", CELLS)
def test_awkward_shapes(cell, shape):
    check_cell(cell, shape, np.float64, True, shape[0] % 2 == 0)


@pytest.mark.parametrize("cell,activation,recurrent", [
    ("simple_rnn", "relu", None), ("simple_rnn", "linear", None),
    ("simple_rnn", "softplus", None), ("simple_rnn", "elu", None),
    ("lstm", "relu", "sigmoid"), ("lstm", "tanh", "tanh"), ("lstm", "selu", "sigmoid"),
    ("gru", "relu", "sigmoid"), ("gru", "leaky_relu", "tanh"), ("gru_before", "elu", "sigmoid"),
    # issue 12's output-derived activations
    ("lstm", "softsign", "hard_sigmoid"), ("gru", "relu6", "hard_sigmoid"),
    ("simple_rnn", "relu6", None), ("gru_before", "softsign", "hard_sigmoid"),
])
def test_other_activations(cell, activation, recurrent):
    """Non-default activations (Keras's default alpha for leaky_relu / elu)."""
    opts = cell_options(cell, activation, recurrent)
    check_cell(cell, (3, 4, 3, 3), np.float64, True, False, opts)


@pytest.mark.parametrize("cell", CELLS)
def test_native_backward_finite_differences(cell):
    """The brief's check on the native op itself: central differences of its own float64
    forward, for every weight and the input, last-output gradient only."""
    x, w, r, b = make(cell, (3, 4, 5, 3), seed=4)
    opts = cell_options(cell)
    y, cache = forward(cell, x, w, r, b, opts, False, True)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    grads = backward(cell, dy, x, w, r, cache, opts, False, True)
    fd = rnn_ref.numerical_grads(lambda *a: forward(cell, *a, opts, False, True)[0],
                                 [x, w, r, b], dy)
    for name, got, exp in zip(("dx", "dkernel", "drecurrent_kernel", "dbias"), grads, fd):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-8, err_msg=f"{cell} {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_bias_none_is_zero_bias(cell):
    x, w, r, b = make(cell, (3, 4, 2, 3))
    opts = cell_options(cell)
    y0, c0 = forward(cell, x, w, r, None, opts)
    y1, c1 = forward(cell, x, w, r, np.zeros_like(b), opts)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_allclose(y0, reference(cell, x, w, r, None, opts), rtol=1e-12)
    dy = np.ones_like(y0)
    for g0, g1 in zip(backward(cell, dy, x, w, r, c0, opts),
                      backward(cell, dy, x, w, r, c1, opts)):
        np.testing.assert_array_equal(g0, g1)


@pytest.mark.parametrize("cell", CELLS)
def test_need_input_grad_false(cell):
    x, w, r, b = make(cell, (3, 4, 2, 3), np.float32)
    opts = cell_options(cell)
    y, cache = forward(cell, x, w, r, b, opts)
    dy = np.ones_like(y)
    full = backward(cell, dy, x, w, r, cache, opts)
    part = backward(cell, dy, x, w, r, cache, opts, need_input_grad=False)
    assert part[0] is None
    for a, e in zip(part[1:], full[1:]):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_invariance(cell):
    """Bit-identical outputs and gradients for 1, 2 and 3 threads (N = 13: 4 row blocks)."""
    x, w, r, b = make(cell, (13, 6, 5, 7), np.float32, seed=2)
    opts = cell_options(cell)
    dy = np.random.default_rng(3).standard_normal((13, 6, 7)).astype(np.float32)
    before = get_max_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            y, cache = forward(cell, x, w, r, b, opts, True, True)
            results.append((y,) + backward(cell, dy, x, w, r, cache, opts, True, True))
    finally:
        set_num_threads(before)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_register_tile_paths(cell, dtype):
    """Sizes past one register tile: 37 units (LSTM: 148 gate columns = 4 full panels of 32
    floats + a tail taking one vector and single columns), N = 19 (row groups of 8, 6, 4 and
    fewer), C = 37 and T = 7 against the float64 oracle; the backward along random
    directions (central differences of the oracle's loss, one per argument)."""
    shape = (19, 7, 37, 37)
    opts = cell_options(cell)
    x, w, r, b = make(cell, shape, dtype, seed=11, scale=0.3)
    for go_backwards in (False, True):
        y, cache = forward(cell, x, w, r, b, opts, True, go_backwards)
        want = reference(cell, x, w, r, b, opts, True, go_backwards)
        tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else TOL[np.float64]
        np.testing.assert_allclose(y, want, **tol, err_msg=f"{cell} back={go_backwards}")
    rng = np.random.default_rng(12)
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = backward(cell, dy, x, w, r, cache, opts, True, True)
    args = [a.astype(np.float64) for a in (x, w, r, b)]

    def loss(*a):
        return float(np.sum(dy * reference(cell, *a, opts, True, True)))

    eps = 1e-6
    for i, (name, got) in enumerate(zip(("dx", "dkernel", "drecurrent_kernel", "dbias"),
                                        grads)):
        v = rng.standard_normal(args[i].shape)
        up = [a + eps * v if j == i else a for j, a in enumerate(args)]
        down = [a - eps * v if j == i else a for j, a in enumerate(args)]
        want = (loss(*up) - loss(*down)) / (2 * eps)
        terms = got.astype(np.float64) * v
        # Relative to sum |terms|, so that one wrong element among thousands still shows.
        rtol = 1e-5 if dtype == np.float32 else 1e-9
        assert abs(terms.sum() - want) <= rtol * np.abs(terms).sum(), (cell, name, want)


@pytest.mark.parametrize("units,features", [(37, 11), (300, 263)])
@pytest.mark.parametrize("cell", CELLS)
def test_one_row_takes_the_gemv_with_the_rows_bits(cell, units, features):
    """A one-row float32 forward (batch-1 inference) runs every product as _gemv.h's GEMV
    on the unpacked kernels: each sample's outputs equal its row's in a batch of five (the
    rows microkernel on packed panels) bit for bit at every microkernel level, past the
    microkernel's 256-deep k blocks too (300 units, 263 features), and the float64
    reference."""
    import pynn

    opts = cell_options(cell)
    x, w, r, b = make(cell, (5, 6, features, units), np.float32, seed=13, scale=0.2)
    for level in pynn._config.available_kernels():
        with pynn._config.kernel(level):
            for go_backwards in (False, True):
                whole, _ = forward(cell, x, w, r, b, opts, True, go_backwards)
                for i in range(len(x)):
                    alone, _ = forward(cell, x[i:i + 1], w, r, b, opts, True, go_backwards)
                    np.testing.assert_array_equal(alone[0], whole[i],
                                                  err_msg=f"{cell} {level} row {i}")
    want = reference(cell, *(a.astype(np.float64) for a in (x[:1], w, r, b)), opts, True,
                     False)
    alone, _ = forward(cell, x[:1], w, r, b, opts, True, False)
    np.testing.assert_allclose(alone, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("units", [37, 300])
@pytest.mark.parametrize("cell", CELLS)
def test_one_row_of_many_steps_packs_its_recurrent_kernel_with_the_rows_bits(cell, units):
    """From 16 steps a one-row float32 forward on one thread copies its recurrent kernel
    into 256-column panels (scratch) before the recurrence, as an inference plan keeps
    them: outputs and caches equal its row's in a batch of three bit for bit at every
    microkernel level (panels cut at 256 columns: 300 LSTM units are 1,200 gate columns),
    and again on two threads, where a split call reads the kernel in place."""
    import pynn

    opts = cell_options(cell)
    before = pynn.get_num_threads()
    x, w, r, b = make(cell, (3, 17, 5, units), np.float32, seed=37, scale=0.2)
    try:
        for threads in (1, 2):
            pynn.set_num_threads(threads)
            for level in pynn._config.available_kernels():
                with pynn._config.kernel(level):
                    for go_backwards in (False, True):
                        whole = forward(cell, x, w, r, b, opts, True, go_backwards)
                        alone = forward(cell, x[1:2], w, r, b, opts, True, go_backwards)
                        np.testing.assert_array_equal(alone[0][0], whole[0][1])
                        for a, e in zip(alone[1], whole[1]):
                            np.testing.assert_array_equal(a[0], e[1], err_msg=level)
    finally:
        pynn.set_num_threads(before)


@pytest.mark.parametrize("cell,units", [("simple_rnn", 370), ("lstm", 190), ("gru", 215),
                                        ("gru_before", 215)])
def test_one_row_splits_its_recurrent_product_over_the_team_with_one_threads_bits(cell,
                                                                                  units):
    """With pynn on two or three threads a one-row forward cuts each step's recurrent
    product into column ranges (multiples of 16) run as team jobs, its input products made
    for all steps first: outputs and caches equal one thread's bit for bit (units that are
    no multiple of 16, both directions, Keras's activations and others), and the steps did
    run on the team (reset_after=False, whose step is two products, stays unsplit). The
    lane is made to post (another process may hold the worker's core under pytest -n 2)."""
    import pynn
    from pynn._native import info

    before = pynn.get_num_threads()
    x, w, r, b = make(cell, (1, 9, 11, units), np.float32, seed=23, scale=0.2)
    for opts in (cell_options(cell), cell_options(cell, "relu", "hard_sigmoid")):
        for go_backwards in (False, True):
            try:
                pynn.set_num_threads(1)
                want = forward(cell, x, w, r, b, opts, True, go_backwards)
                info._team_lane_force(True)
                for threads in (2, 3):
                    pynn.set_num_threads(threads)
                    ran, _ = info.team_counts()
                    got = forward(cell, x, w, r, b, opts, True, go_backwards)
                    ran = info.team_counts()[0] - ran
                    np.testing.assert_array_equal(got[0], want[0])
                    for a, e in zip(got[1], want[1]):
                        np.testing.assert_array_equal(a, e)
                    if cell == "gru_before":
                        assert ran == 0, ran
                    else:
                        assert ran >= x.shape[1], (cell, threads, ran)
            finally:
                info._team_lane_force(False)
                pynn.set_num_threads(before)


@pytest.mark.parametrize("cell,units", [("simple_rnn", 370), ("lstm", 70), ("gru", 215),
                                        ("gru_before", 90)])
def test_packed_forward_reads_the_recurrent_kernels_panels_with_the_ops_bits(cell, units):
    """packed_forward with pack_recurrent's panels (an inference plan's, 256 columns each: the
    kernels here end in a partial panel, and the two threads' column ranges cut panels) gives
    the op's outputs and caches bit for bit, one row on one thread and split over the team;
    other batch sizes and float64 ignore the panels; a wrong panel size or op name is an
    error."""
    import pynn
    from pynn._native import info

    name = "simple_rnn" if cell == "simple_rnn" else op_name(cell)
    opts = cell_options(cell)
    before = pynn.get_num_threads()
    x, w, r, b = make(cell, (3, 7, 9, units), np.float32, seed=31, scale=0.2)
    packed = rnn.pack_recurrent(r)
    for rows in (x[:1], x):
        for go_backwards in (False, True):
            args = (w, r, b, *opts, True, go_backwards)
            try:
                info._team_lane_force(True)
                for threads in (1, 2):
                    pynn.set_num_threads(threads)
                    want = forward(cell, rows, w, r, b, opts, True, go_backwards)
                    got = rnn.packed_forward(name, packed, rows, *args)
                    np.testing.assert_array_equal(got[0], want[0])
                    for a, e in zip(got[1], want[1]):
                        np.testing.assert_array_equal(a, e)
            finally:
                info._team_lane_force(False)
                pynn.set_num_threads(before)
    x64, w64, r64, b64 = (a.astype(np.float64) for a in (x[:1], w, r, b))
    np.testing.assert_array_equal(
        rnn.packed_forward(name, packed, x64, w64, r64, b64, *opts, True, False)[0],
        forward(cell, x64, w64, r64, b64, opts, True, False)[0])
    with pytest.raises(ValueError, match="pack_recurrent"):
        rnn.packed_forward(name, packed[:-1], x[:1], w, r, b, *opts, True, False)
    with pytest.raises(ValueError, match="packed_forward"):
        rnn.packed_forward("rnn", packed, x[:1], w, r, b, *opts, True, False)


@pytest.mark.parametrize("cell", CELLS)
def test_one_row_checked_once_gives_the_ops_bits(cell):
    """rnn.OneRow (an inference plan's batch-1 step: the operands checked once) gives the
    op's output bit for bit, on one thread and two (split at 300 units), both directions,
    with and without the whole sequence and a bias, one step or many, no input columns,
    and for any number of steps (fewer or more than it was made with: a masked request's
    kept steps); for another batch, feature count, dtype or layout, or at the generic
    microkernel level (which the one-row path does not serve), run returns None; a wrong
    panel size is an error."""
    import pynn

    name = "simple_rnn" if cell == "simple_rnn" else op_name(cell)
    opts = cell_options(cell)
    before = pynn.get_num_threads()
    try:
        for shape in ((1, 17, 5, 300), (1, 1, 3, 7), (1, 6, 0, 33)):
            x, w, r, b = make(cell, shape, np.float32, seed=41, scale=0.2)
            packed = rnn.pack_recurrent(r)
            for bias in (b, None):
                for sequences in (False, True):
                    for go_backwards in (False, True):
                        rest = (w, r, bias, *opts, sequences, go_backwards)
                        want = forward(cell, x, w, r, bias, opts, sequences, go_backwards)[0]
                        one = rnn.OneRow(name, packed, x, *rest)
                        for threads in (1, 2):
                            pynn.set_num_threads(threads)
                            np.testing.assert_array_equal(one.run(x), want)
                        for steps in (x[:, 1::2], np.concatenate([x, x[:, ::-1]], axis=1)):
                            steps = np.ascontiguousarray(steps)
                            if steps.shape[1]:
                                np.testing.assert_array_equal(one.run(steps), forward(
                                    cell, steps, w, r, bias, opts, sequences,
                                    go_backwards)[0])
                        assert one.run(x[:, :0]) is None
                        assert one.run(x.astype(np.float64)) is None
                        assert one.run(np.concatenate([x, x])) is None
                        if x.shape[2]:  # the same shape, not contiguous
                            assert one.run(np.repeat(x, 2, axis=2)[:, :, ::2]) is None
                        with pynn._config.kernel("generic"):
                            assert one.run(x) is None
    finally:
        pynn.set_num_threads(before)
    x, w, r, b = make(cell, (1, 4, 3, 40), np.float32, seed=43)
    if cell != "gru_before":  # (its steps read R in place: no panels taken)
        with pytest.raises(ValueError, match="pack_recurrent"):
            rnn.OneRow(name, rnn.pack_recurrent(r)[:-1], x, w, r, b, *opts, False, False)
    with pytest.raises(ValueError, match="one float32 sample"):
        rnn.OneRow(name, None, np.concatenate([x, x]), w, r, b, *opts, False, False)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_invariance_large(cell):
    """Bit-identical for 1, 2 and 3 threads where one thread's rows span several chunks of
    the time loop (N = 75) and the weight gradient several column panels (37 units)."""
    x, w, r, b = make(cell, (75, 5, 6, 37), np.float32, seed=6, scale=0.3)
    opts = cell_options(cell)
    dy = np.random.default_rng(7).standard_normal((75, 5, 37)).astype(np.float32)
    before = get_max_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            y, cache = forward(cell, x, w, r, b, opts, True, False)
            results.append((y,) + backward(cell, dy, x, w, r, cache, opts, True, False))
    finally:
        set_num_threads(before)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            np.testing.assert_array_equal(a, e)


def test_backward_twice_and_scratch_reuse():
    """Backward keeps scratch between calls: a second call with the same cache, and a call
    of another shape in between, give the same gradients; nothing returned aliases it."""
    x, w, r, b = make("lstm", (9, 6, 5, 7), np.float32, seed=8)
    opts = cell_options("lstm")
    y, cache = forward("lstm", x, w, r, b, opts)
    dy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
    first = backward("lstm", dy, x, w, r, cache, opts)
    x2, w2, r2, b2 = make("lstm", (31, 11, 3, 9), np.float32, seed=10)
    y2, cache2 = forward("lstm", x2, w2, r2, b2, opts)
    backward("lstm", np.ones_like(y2), x2, w2, r2, cache2, opts)
    second = backward("lstm", dy, x, w, r, cache, opts)
    for a, e in zip(second, first):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("cell", CELLS)
def test_concurrent_backward_from_python_threads_matches_serial(cell):
    """Backward releases the GIL and takes its scratch from the shared pool: calls from
    several Python threads at once, on two shapes, give the serial results bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    opts = cell_options(cell)
    jobs = []
    for shape, seed in [((9, 6, 5, 7), 11), ((13, 4, 3, 10), 12)]:
        x, w, r, b = make(cell, shape, np.float32, seed=seed)
        y, cache = forward(cell, x, w, r, b, opts)
        dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
        jobs.append(lambda dy=dy, x=x, w=w, r=r, cache=cache: backward(cell, dy, x, w, r,
                                                                       cache, opts))
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            for i, got in enumerate(pool.map(lambda job: job(), jobs * 4)):
                for a, e in zip(got, serial[i % len(jobs)]):
                    np.testing.assert_array_equal(a, e)


# -- empty and odd inputs --------------------------------------------------------------------

@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(0, 4, 3, 2), (2, 0, 3, 2), (2, 3, 0, 2)])
def test_empty(cell, shape, return_sequences):
    """N = 0, T = 0 or C = 0: correctly shaped results (zero state and gradients where there
    is no sequence; C = 0 leaves only the recurrence and bias)."""
    x, w, r, b = make(cell, shape, np.float32)
    n, t, c, u = shape
    opts = cell_options(cell)
    y, cache = forward(cell, x, w, r, b, opts, return_sequences)
    assert y.shape == ((n, t, u) if return_sequences else (n, u))
    if t and n:
        np.testing.assert_allclose(y, reference(cell, x, w, r, b, opts, return_sequences),
                                   rtol=2e-5, atol=2e-6)
    else:
        assert not np.any(y)
    dx, dw, dr, db = backward(cell, np.ones_like(y), x, w, r, cache, opts, return_sequences)
    assert dx.shape == x.shape and dw.shape == w.shape and dr.shape == r.shape
    assert db.shape == b.shape
    if not (n and t):
        assert not (np.any(dw) or np.any(dr) or np.any(db))


@pytest.mark.parametrize("cell", CELLS)
def test_layouts_and_read_only_inputs(cell):
    """Fortran-ordered, strided and read-only inputs give the same results."""
    x, w, r, b = make(cell, (3, 4, 5, 2), np.float32)
    opts = cell_options(cell)
    want, _ = forward(cell, x, w, r, b, opts)
    xs = np.zeros((3, 8, 5), np.float32)
    xs[:, ::2] = x
    wf = np.asfortranarray(w)
    rr = r.copy()
    rr.setflags(write=False)
    got, _ = forward(cell, xs[:, ::2], wf, rr, b, opts)
    np.testing.assert_array_equal(got, want)


# -- bad inputs ------------------------------------------------------------------------------

def _bad(cell, **change):
    x, w, r, b = make(cell, (3, 4, 5, 2), np.float32)
    args = dict(x=x, kernel=w, recurrent_kernel=r, bias=b)
    args.update(change)
    return args


@pytest.mark.parametrize("cell", CELLS)
def test_bad_forward_inputs(cell):
    f = getattr(rnn, op_name(cell) + "_forward")
    opts = cell_options(cell)
    name = op_name(cell) + "_forward"

    def call(**change):
        a = _bad(cell, **change)
        return f(a["x"], a["kernel"], a["recurrent_kernel"], a["bias"], *opts)

    x, w, r, b = make(cell, (3, 4, 5, 2), np.float32)
    with pytest.raises(ValueError, match=f"{name}: 'x' is required"):
        call(x=None)
    with pytest.raises(ValueError, match="'x' must have 3 dimensions"):
        call(x=x[0])
    with pytest.raises(ValueError, match="'kernel' must have shape"):
        call(kernel=w[:4])
    with pytest.raises(ValueError, match="'recurrent_kernel' must have shape"):
        call(recurrent_kernel=r[:, :-1])
    with pytest.raises(ValueError, match="'bias' must have shape"):
        call(bias=np.zeros(b.size + 1, np.float32).reshape(-1) if b.ndim == 1
             else np.zeros((2, b.shape[1] + 1), np.float32))
    with pytest.raises(TypeError, match="'x' must be a numeric array"):
        call(x=np.array([["a"]], dtype=object))
    with pytest.raises(ValueError, match="not supported by the recurrent kernels"):
        f(x, w, r, b, "softmax", *opts[1:])
    with pytest.raises(ValueError, match="unknown activation"):
        f(x, w, r, b, "swishy", *opts[1:])
    if cell != "simple_rnn":
        with pytest.raises(ValueError, match="recurrent_activation 'gelu' is not supported"):
            f(x, w, r, b, opts[0], "gelu", *opts[2:])
    with pytest.raises(TypeError, match="'go_backwards' must be a bool"):
        f(x, w, r, b, *opts, True, "yes")


@pytest.mark.parametrize("cell", CELLS)
def test_bad_backward_inputs(cell):
    x, w, r, b = make(cell, (3, 4, 5, 2), np.float32)
    opts = cell_options(cell)
    y, cache = forward(cell, x, w, r, b, opts, True)
    dy = np.ones_like(y)
    name = op_name(cell) + "_backward"
    with pytest.raises(ValueError, match=f"{name}: 'dy' must have shape"):
        backward(cell, dy[:, :2], x, w, r, cache, opts)
    with pytest.raises(ValueError, match="'dy' must have 2 dimensions"):
        backward(cell, dy, x, w, r, cache, opts, return_sequences=False)
    with pytest.raises(ValueError, match="'cache' must be the tuple"):
        backward(cell, dy, x, w, r, cache[:-1] if len(cache) > 1 else (), opts)
    with pytest.raises(ValueError, match="'cache' must be the tuple"):
        backward(cell, dy, x, w, r, None, opts)
    wrong = (cache[0][:, :2],) + tuple(cache[1:])
    with pytest.raises(ValueError, match=r"cache\[0\]' must have shape"):
        backward(cell, dy, x, w, r, wrong, opts)
    with pytest.raises(TypeError, match=r"cache\[0\] has dtype float64"):
        backward(cell, dy, x, w, r, (cache[0].astype(np.float64),) + tuple(cache[1:]), opts)
    with pytest.raises(ValueError, match="'kernel' must have shape"):
        backward(cell, dy, x, w[:3], r, cache, opts)


def test_activation_lists_agree():
    """The ops and the layer take the activations of the one list in the op table."""
    from pynn.backend import api
    from pynn.backend.operands import rnn as operands
    from pynn.layers import recurrent

    assert recurrent.RNN_ACTIVATIONS is api.RNN_ACTIVATIONS is operands.RNN_ACTIVATIONS


# The native ops and their OpenCL twins; the OpenCL ones only in a run that includes opencl.
OP_MODULES = ["native", pytest.param("opencl", marks=pytest.mark.opencl)]


def _op_module(which):
    if which == "native":
        return rnn
    from pynn.backend.opencl import rnn as cl_rnn

    return cl_rnn


@pytest.mark.parametrize("which", OP_MODULES)
def test_signatures_match_api(which):
    import inspect

    from pynn.backend.api import OPS

    module = _op_module(which)
    names = [k for k in OPS if k.split("_")[0] in ("simple", "lstm", "gru")]
    assert len(names) == 6
    for name in names:
        params = tuple(inspect.signature(getattr(module, name)).parameters)
        assert params == OPS[name], (module.__name__, name, params)


# -- layers ----------------------------------------------------------------------------------

LAYER_OPS = ("simple_rnn_forward", "simple_rnn_backward", "lstm_forward", "lstm_backward",
             "gru_forward", "gru_backward")


@pytest.fixture
def cpu_backend(monkeypatch):
    """The CPU backend with the recurrent ops (added by hand until pynn.backend.cpu imports
    them itself)."""
    from pynn import backend
    from pynn.backend import cpu

    for name in LAYER_OPS:
        if not hasattr(cpu, name):
            monkeypatch.setattr(cpu, name, getattr(rnn, name), raising=False)
    backend.set_device("cpu")
    return cpu


LAYER_CASES = [
    ("SimpleRNN", {}),
    ("SimpleRNN", {"activation": "relu", "return_sequences": True, "go_backwards": True}),
    ("SimpleRNN", {"use_bias": False}),
    ("LSTM", {}),
    ("LSTM", {"return_sequences": True, "go_backwards": True}),
    ("LSTM", {"activation": "relu", "recurrent_activation": "tanh", "use_bias": False}),
    ("LSTM", {"unit_forget_bias": False, "return_sequences": True}),
    ("GRU", {}),
    ("GRU", {"reset_after": False, "return_sequences": True}),
    ("GRU", {"go_backwards": True, "use_bias": False}),
    ("GRU", {"reset_after": False, "activation": "relu", "go_backwards": True}),
]


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="keras is not installed")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras parity runs with KERAS_BACKEND=torch, got {keras.backend.backend()}")
    return keras


@pytest.mark.parametrize("cls,kwargs", LAYER_CASES)
def test_layer_keras_parity(cpu_backend, cls, kwargs):
    """Same weights -> same outputs and same weight/input gradients as Keras 3."""
    keras = _keras()
    import torch

    from pynn.layers import recurrent

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    klayer = getattr(keras.layers, cls)(4, **kwargs)
    klayer.build(x.shape)
    # Perturb Keras's own initial weights so zero biases hide nothing.
    weights = [w + 0.2 * rng.standard_normal(w.shape).astype(np.float32)
               for w in klayer.get_weights()]
    klayer.set_weights(weights)
    xt = torch.tensor(x, requires_grad=True)
    ky = klayer(xt)
    dy = rng.standard_normal(tuple(ky.shape)).astype(np.float32)
    (ky * torch.tensor(dy)).sum().backward()

    layer = getattr(recurrent, cls)(4, **kwargs)
    layer.build((None, 5, 7))
    layer.set_weights(weights)
    y = layer(x, training=True)
    scale = float(np.abs(ky.detach().numpy()).max())
    np.testing.assert_allclose(y, ky.detach().numpy(), rtol=0, atol=1e-5 * scale,
                               err_msg=f"{cls} {kwargs} output")
    dx = layer.backward(dy)
    grads = [(layer.kernel, klayer.weights[0]), (layer.recurrent_kernel, klayer.weights[1])]
    if layer.use_bias:
        grads.append((layer.bias, klayer.weights[2]))
    for var, kvar in grads:
        kgrad = kvar.value.grad.numpy()
        np.testing.assert_allclose(var.grad, kgrad, rtol=0,
                                   atol=1e-5 * max(1.0, float(np.abs(kgrad).max())),
                                   err_msg=f"{cls} {kwargs} d{var.name}")
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0,
                               atol=1e-5 * max(1.0, float(np.abs(xt.grad.numpy()).max())))


def test_layer_weights_and_config(cpu_backend):
    from pynn import regularizers
    from pynn.layers import recurrent

    lstm = recurrent.LSTM(5, return_sequences=True, kernel_regularizer=regularizers.L2(0.01))
    y = lstm(np.ones((2, 3, 4), np.float32))
    assert y.shape == (2, 3, 5) and lstm.output_shape == (None, 3, 5)
    assert [v.name for v in lstm.weights] == ["kernel", "recurrent_kernel", "bias"]
    assert [v.shape for v in lstm.weights] == [(4, 20), (5, 20), (20,)]
    bias = lstm.get_weights()[2]
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
    rk = lstm.get_weights()[1]
    # Orthogonal recurrent kernel: its rows are orthonormal.
    np.testing.assert_allclose(rk @ rk.T, np.eye(5), atol=1e-5)
    again = recurrent.LSTM.from_config(lstm.get_config())
    assert again.get_config() == lstm.get_config()

    gru = recurrent.GRU(3, reset_after=False)
    assert gru(np.ones((2, 4, 6), np.float32)).shape == (2, 3)
    assert [v.shape for v in gru.weights] == [(6, 9), (3, 9), (9,)]
    assert recurrent.GRU(3).get_config()["reset_after"] is True
    gru2 = recurrent.GRU(3)
    gru2.build((None, 4, 6))
    assert gru2.bias.shape == (2, 9)
    rnn_layer = recurrent.SimpleRNN(2, use_bias=False)
    rnn_layer.build((None, None, 3))
    assert [v.name for v in rnn_layer.weights] == ["kernel", "recurrent_kernel"]
    assert rnn_layer.compute_output_shape((None, None, 3)) == (None, 2)


def test_layer_backward_and_regularizer(cpu_backend):
    from pynn import regularizers
    from pynn.layers import recurrent

    layer = recurrent.GRU(3, recurrent_regularizer=regularizers.L2(0.1))
    x = np.random.default_rng(0).standard_normal((4, 5, 2)).astype(np.float32)
    y = layer(x, training=True)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert all(v.grad is not None and v.grad.shape == v.shape for v in layer.weights)
    before = layer.recurrent_kernel.grad.copy()
    penalty = layer.regularization_penalty()
    rk = layer.get_weights()[1]
    assert penalty == pytest.approx(0.1 * float(np.sum(rk.astype(np.float64) ** 2)), rel=1e-5)
    np.testing.assert_allclose(layer.recurrent_kernel.grad, before + 0.2 * rk, rtol=1e-5)
    layer.needs_input_grad = False
    layer(x, training=True)
    assert layer.backward(np.ones_like(y)) is None
    with pytest.raises(RuntimeError, match="needs a preceding call"):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("kwargs,match", [
    ({"dropout": 1.5}, "dropout must be a float in"),
    ({"recurrent_dropout": -0.2}, "recurrent_dropout must be a float in"),
    ({"activation": "softmax"}, "activation must be one of"),
    ({"units": 0}, "units must be a positive int"),
])
def test_layer_rejects(cpu_backend, kwargs, match):
    from pynn.layers import recurrent

    kwargs = dict(kwargs)
    units = kwargs.pop("units", 3)
    with pytest.raises(ValueError, match=match):
        recurrent.LSTM(units, **kwargs)


def test_layer_bad_input(cpu_backend):
    from pynn.layers import recurrent

    layer = recurrent.SimpleRNN(2)
    with pytest.raises(ValueError, match=r"expected input shape \(None, timesteps, features\)"):
        layer.build((None, 3))
    layer = recurrent.SimpleRNN(2)
    layer(np.ones((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="expected input shape"):
        layer(np.ones((1, 3, 5), np.float32))
    layer = recurrent.SimpleRNN(2)
    layer.build((None, None, 4))
    with pytest.raises(ValueError, match="0 time steps"):
        layer(np.ones((1, 0, 4), np.float32))


# -- over both backends (the `backend` fixture): float32 against the float64 oracle ----------
# The forward against rnn_ref's <cell>_forward_ref, the backward against central differences
# of it, within 1e-4; on OpenCL both also against the CPU op.

BACKEND_RTOL = 1e-4


def make32(cell, shape, seed=0):
    n, t, c, u = shape
    rng = np.random.default_rng(seed)
    return (rand(rng, (n, t, c)), 0.5 * rand(rng, (c, GATES[cell] * u)),
            0.5 * rand(rng, (u, GATES[cell] * u)), 0.5 * rand(rng, bias_shape(cell, u)))


def compare_on_backend(backend, cell, shape, return_sequences, go_backwards, opts=None,
                       bias=True, need_input_grad=True, seed=0):
    """Forward and backward of one cell on ``backend``: y against the float64 oracle, every
    gradient against its central differences (and, on OpenCL, the CPU op's). Returns the
    backend's (y, grads) as it returned them."""
    from pynn.backend import cpu

    opts = opts or cell_options(cell)
    x, w, r, b = make32(cell, shape, seed)
    if not bias:
        b = None
    name = op_name(cell)
    what = f"{cell} on {backend.name} {shape} seq={return_sequences} back={go_backwards} {opts}"
    ops, up, down = backend.ops, backend.up, backend.down
    dev = [up(a) for a in (x, w, r, b)]
    y, cache = getattr(ops, name + "_forward")(*dev, *opts, return_sequences, go_backwards)
    assert isinstance(cache, tuple) and all(type(a) is type(y) for a in cache), what
    y_host = down(y)
    y_ref = reference(cell, x, w, r, b, opts, return_sequences, go_backwards)
    assert_same(f"forward {what}", y_host, y_ref, BACKEND_RTOL, np.float32)
    dy = rand(np.random.default_rng(seed + 1), y_host.shape)
    grads = getattr(ops, name + "_backward")(up(dy), dev[0], dev[1], dev[2], cache, *opts,
                                             return_sequences, go_backwards, need_input_grad)
    fd = rnn_ref.numerical_grads(
        lambda *a: reference(cell, *a, opts, return_sequences, go_backwards), [x, w, r, b], dy)
    if not need_input_grad:
        fd[0] = None
    labels = ("dx", "dkernel", "drecurrent_kernel", "dbias")
    host = tuple(down(g) for g in grads)
    for label, got, want in zip(labels, host, fd):
        if want is None:
            continue  # dbias without a bias: compared with the CPU's below
        assert_same(f"{label} {what}", got, want, BACKEND_RTOL, np.float32)
    if not need_input_grad:
        assert host[0] is None, f"dx {what}: expected None"
    if backend.is_opencl:
        y_cpu, cache_cpu = getattr(cpu, name + "_forward")(x, w, r, b, *opts, return_sequences,
                                                           go_backwards)
        assert_close(y_host, y_cpu, BACKEND_RTOL, f"forward {what} vs CPU")
        grads_cpu = getattr(cpu, name + "_backward")(dy, x, w, r, cache_cpu, *opts,
                                                     return_sequences, go_backwards,
                                                     need_input_grad)
        for label, got, want in zip(labels, host, grads_cpu):
            if want is None:
                assert got is None, f"{label} {what}: expected None"
                continue
            assert_close(got, want, BACKEND_RTOL, f"{label} {what} vs CPU")
    return y, grads


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_on_backend(backend, cell, return_sequences, go_backwards):
    compare_on_backend(backend, cell, (5, 4, 3, 7), return_sequences, go_backwards)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (17, 3, 33, 9)])
def test_awkward_shapes_on_backend(backend, cell, shape):
    compare_on_backend(backend, cell, shape, True, shape[0] % 2 == 1)


@pytest.mark.parametrize("cell,activation,recurrent", [
    ("simple_rnn", "relu", None), ("lstm", "relu", "tanh"), ("gru", "elu", "sigmoid"),
    ("gru_before", "leaky_relu", "tanh"),
    ("lstm", "softsign", "hard_sigmoid"), ("gru", "relu6", "hard_sigmoid"),
])
def test_other_activations_on_backend(backend, cell, activation, recurrent):
    compare_on_backend(backend, cell, (3, 4, 5, 3), True, False,
                       cell_options(cell, activation, recurrent))


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_and_no_input_grad_on_backend(backend, cell):
    compare_on_backend(backend, cell, (3, 4, 5, 3), False, True, bias=False,
                       need_input_grad=False)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reproducible_on_backend(backend, cell):
    """Two runs give the same bits (no atomics, fixed summation order)."""
    a = compare_on_backend(backend, cell, (6, 5, 4, 5), True, False, seed=3)
    b = compare_on_backend(backend, cell, (6, 5, 4, 5), True, False, seed=3)
    for u, v in zip((a[0],) + tuple(a[1]), (b[0],) + tuple(b[1])):
        np.testing.assert_array_equal(backend.down(u), backend.down(v))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(0, 3, 2, 4), (2, 0, 2, 4)])
def test_empty_on_backend(backend, cell, shape):
    ops, up, down = backend.ops, backend.up, backend.down
    x, w, r, b = make32(cell, shape)
    name = op_name(cell)
    opts = cell_options(cell)
    for return_sequences in (True, False):
        y, cache = getattr(ops, name + "_forward")(up(x), up(w), up(r), up(b), *opts,
                                                   return_sequences, False)
        n, t, _, u = shape
        assert y.shape == ((n, t, u) if return_sequences else (n, u))
        assert not np.any(down(y))
        dx, dw, dr, db = getattr(ops, name + "_backward")(
            ops.zeros(y.shape), up(x), up(w), up(r), cache, *opts, return_sequences, False,
            True)
        assert (dx.shape, dw.shape, dr.shape, db.shape) == (x.shape, w.shape, r.shape, b.shape)
        assert not (np.any(down(dw)) or np.any(down(dr)) or np.any(down(db)))


# -- OpenCL only ------------------------------------------------------------------------------


@pytest.mark.opencl
@pytest.mark.parametrize("cell", CELLS)
def test_bad_inputs_opencl(ocl, cell):
    x, w, r, b = (ocl.asarray(a) for a in make32(cell, (3, 4, 5, 2)))
    name = op_name(cell)
    opts = cell_options(cell)
    fwd = getattr(ocl, name + "_forward")
    bwd = getattr(ocl, name + "_backward")
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


@pytest.mark.opencl
@pytest.mark.parametrize("cls,kwargs", [
    ("LSTM", {"return_sequences": True}), ("GRU", {"go_backwards": True}),
    ("GRU", {"reset_after": False}), ("SimpleRNN", {"activation": "relu"}),
])
def test_layer_on_opencl_matches_cpu(ocl, cls, kwargs):
    """The same layer code on both backends: outputs and gradients agree."""
    from pynn import backend
    from pynn.layers import recurrent

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
        assert_close(got, want, BACKEND_RTOL, f"{cls} {kwargs}")
