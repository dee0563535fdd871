"""The batch-1 fast route of prepared plans (pynn/inference.py, native/infer.pyx, issue 16):
the one-row GEMV (native/_gemv.h) against a float64 reference at every microkernel level,
and the MLP lane (one native call per request) against the layer-by-layer path."""

import itertools
import threading

import numpy as np
import pytest

import pynn
from pynn import inference
from pynn import layers as L
from tests.backend_util import assert_close, hammer_equal, rand
from tests.reference.dense_ref import dense_forward_ref


class _Clock:
    """The plan's timer, made deterministic: a candidate costs what `lag` adds, never what
    the machine happens to be doing (under `pytest -n 2` a two-thread conv can wait a whole
    scheduler slice for its second core, outrunning any sleep a test could afford)."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(inference, "time", self)

    def perf_counter(self):
        return self.now

    def lag(self):
        self.now += 1.0


def chain_of(sizes, rng, acts=None):
    from pynn._native.infer import DenseChain

    from pynn.backend.api import ACTIVATIONS

    kernels = [rand(rng, (c, u)) / np.sqrt(c) for c, u in itertools.pairwise(sizes)]
    biases = [rand(rng, (u,)) if j % 2 == 0 else None for j, u in enumerate(sizes[1:])]
    acts = acts or [("relu", 0.0)] * (len(kernels) - 1) + [("linear", 0.0)]
    chain = DenseChain(1, kernels, biases, [ACTIVATIONS.index(a) for a, _ in acts],
                       [alpha for _, alpha in acts])
    return chain, kernels, biases, acts


def reference(x, kernels, biases, acts):
    want = x.astype(np.float64)
    for k, b, (act, alpha) in zip(kernels, biases, acts):
        want, _ = dense_forward_ref(want, k.astype(np.float64),
                                    None if b is None else b.astype(np.float64), act, alpha)
    return want


# Widths on both sides of every block edge: 16/256 floats (avx512), 8/96 (avx2), 64 (generic).
SIZES = [[1, 1], [7, 17, 5], [33, 95, 97, 15], [19, 255, 257, 16], [5, 300, 65, 9]]


@pytest.mark.parametrize("kernel", pynn._config.available_kernels())
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_gemv_chain_against_float64_reference(kernel, sizes):
    rng = np.random.default_rng(len(sizes) * 100 + sizes[1])
    chain, kernels, biases, acts = chain_of(sizes, rng)
    x = rand(rng, (1, sizes[0]))
    with pynn._config.kernel(kernel):
        got = chain.predict_one(x)
        out = np.empty_like(got)
        chain.run(x, chain.scratch(), out)
    assert_close(got, reference(x, kernels, biases, acts), 1e-5, f"GEMV chain ({kernel})")
    np.testing.assert_array_equal(out, got)  # run and predict_one share the arithmetic


@pytest.mark.parametrize("kernel", ["avx512", "avx2", "generic"])
def test_few_rows_chain_gives_each_rows_gemv_bits(kernel):
    """Chains of 2-4 rows stream the kernel once for all rows (_gemv.h pynn_gemv_rows_f)
    at the FMA levels: each row gets the one-row GEMV's bits (and the rows product's, which
    sums alike), on widths across every block edge; 5 rows take the rows product. The
    generic level keeps the rows product for every several-row block."""
    if kernel not in pynn._config.available_kernels():
        pytest.skip(f"this CPU cannot run the {kernel} kernels")
    from pynn._native.infer import DenseChain

    rng = np.random.default_rng(13)
    for sizes in SIZES[1:] + [[130, 47, 3]]:
        one, kernels, biases, acts = chain_of(sizes, rng)
        codes = [pynn.backend.api.ACTIVATIONS.index(a) for a, _ in acts]
        with pynn._config.kernel(kernel):
            for n in (2, 3, 4, 5):
                chain = DenseChain(n, kernels, biases, codes, [a for _, a in acts])
                x = rand(rng, (n, sizes[0]))
                got = np.empty((n, sizes[-1]), np.float32)
                chain.run(x, chain.scratch(), got)
                assert_close(got, reference(x, kernels, biases, acts), 1e-5,
                             f"{n} rows {sizes} ({kernel})")
                if kernel != "generic":
                    want = np.concatenate([one.predict_one(x[r:r + 1]) for r in range(n)])
                    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_gemv_fma_levels_give_the_same_bits():
    """avx512 and avx2 sum each output in the same order with one FMA per term."""
    levels = [k for k in ("avx512", "avx2") if k in pynn._config.available_kernels()]
    if len(levels) < 2:
        pytest.skip("needs a CPU with both AVX-512 and AVX2")
    rng = np.random.default_rng(3)
    chain, *_ = chain_of([129, 300, 41], rng)
    x = rand(rng, (1, 129))
    got = []
    for level in levels:
        with pynn._config.kernel(level):
            got.append(chain.predict_one(x))
    np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.parametrize("kernel", pynn._config.available_kernels())
def test_a_gemv_skipping_its_inputs_zeros_gives_the_dense_gemvs_values(kernel):
    """A one-row layer reading a relu's output skips the kernel rows of its input's zeros
    (_gemv.h pynn_gemv_skip_f): the dense GEMV's values (to the sign of an exact zero) and
    float64's, at any share of zeros (none, 5%, 40%, 97%, all), with -0.0 and NaN among
    the inputs, widths across every block edge, and rows past the index buffer (8192: the
    dense GEMV). A kernel holding an infinity reads every row (0 * inf is NaN)."""
    from pynn._native.infer import DenseChain

    rng = np.random.default_rng(31)
    for c, u in ((1, 5), (17, 16), (300, 257), (4099, 97), (9000, 20)):
        k = rand(rng, (c, u)) / np.sqrt(c)
        b = rand(rng, (u,))
        skipping = DenseChain(1, [k], [b], [0], [0.0])
        dense = DenseChain(1, [k], [b], [0], [0.0])
        assert skipping.skips == [False]
        skipping.skip_input_zeros()
        assert skipping.skips == [True] and dense.skips == [False]
        for share in (0.0, 0.05, 0.4, 0.97, 1.0):
            x = rand(rng, (1, c))
            x[rng.random((1, c)) < share] = 0.0
            x[0, 3::11] = -0.0
            with pynn._config.kernel(kernel):
                got, want = skipping.predict_one(x), dense.predict_one(x)
            assert np.all(got == want), (c, u, share)
            assert_close(got, x.astype(np.float64) @ k + b, 1e-5, f"{c}x{u} {share}")
        x[0, c // 2] = np.nan
        with pynn._config.kernel(kernel):
            assert np.isnan(skipping.predict_one(x)).all()
    k[5, 1] = np.inf
    chain = DenseChain(1, [k], [None], [0], [0.0])
    chain.skip_input_zeros()
    assert chain.skips == [False]
    # a layer after a relu skips on its own; after another activation, or with an infinity
    acts = [pynn.backend.api.ACTIVATIONS.index(a) for a in ("relu", "tanh", "linear")]
    ks = [rand(rng, (6, 9)), rand(rng, (9, 4)), rand(rng, (4, 3))]
    assert DenseChain(1, ks, [None] * 3, acts, [0.0] * 3).skips == [False, True, False]
    ks[1][2, 2] = -np.inf
    assert DenseChain(1, ks, [None] * 3, acts, [0.0] * 3).skips == [False, False, False]


def test_a_lane_whose_first_input_had_zeros_skips_them_in_its_first_layer():
    """An MLP lane made on an input with zeros (a digit's background) skips its first
    layer's zero rows, one made on a dense input does not (later layers after a relu
    always may); either answers every input with the general path's numbers (BLAS there:
    float32 rounding apart)."""
    rng = np.random.default_rng(33)
    digit = rand(rng, (1, 37))
    digit[0, rng.random(37) < 0.6] = 0.0
    dense = rand(rng, (1, 37)) + 3.0
    for first, skips in ((digit, [True, True, False]), (dense, [False, True, False])):
        model = mlp()
        randomize(model, rng)
        model.predict_on_batch(first)
        chain = model._inference.plans[first.shape].steps[0].chain
        assert chain.skips == skips
        for x in (digit, dense, np.zeros_like(dense)):
            got = model.predict_on_batch(x)
            assert_close(got, model._plan.predict([x])[0], 1e-6, "lane")
            np.testing.assert_array_equal(model(x), got)


def test_predict_one_refuses_what_it_does_not_take():
    rng = np.random.default_rng(4)
    chain, *_ = chain_of([6, 4, 3], rng)
    x = rand(rng, (1, 6))
    assert chain.predict_one(x).shape == (1, 3)
    for bad in (x.astype(np.float64), x.tolist(), rand(rng, (2, 6)), rand(rng, (1, 5)),
                x.reshape(1, 1, 6), np.asfortranarray(rand(rng, (1, 6)))[:, ::2],
                x.astype(">f4"), rand(rng, (6,))):
        assert chain.predict_one(bad) is None, bad


def mlp(units=(29, 13, 5)):
    return pynn.Sequential([L.Input((37,)), L.Dense(units[0], activation="relu"),
                            L.Dense(units[1], activation="tanh"),
                            L.Dense(units[2], activation="softmax")])


def randomize(model, rng):
    model.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def test_mlp_lane_equals_layer_by_layer_and_follows_set_weights():
    rng = np.random.default_rng(5)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (1, 37))
    first = model.predict_on_batch(x)
    state = model._inference
    assert state.lane is not None, "a batch-1 MLP plan gets the lane"
    for got in (model.predict_on_batch(x), model(x), model.predict(x, verbose=0)):
        assert_close(got, model._plan.forward([x], False)[0][0], 1e-6, "MLP lane")
        np.testing.assert_array_equal(got, first)
    y = model.predict_on_batch(x)
    assert y is not model.predict_on_batch(x)  # each call's array is the caller's
    randomize(model, rng)  # new weights: the lane must not answer with the old ones
    assert_close(model.predict_on_batch(x), model._plan.forward([x], False)[0][0], 1e-6,
                 "MLP lane after set_weights")
    assert not np.array_equal(model.predict_on_batch(x), first)
    # Another batch size takes its own plan; the batch-1 lane keeps answering after it.
    x7 = rand(rng, (7, 37))
    assert_close(model.predict_on_batch(x7), model._plan.forward([x7], False)[0][0], 1e-6,
                 "MLP batch 7")
    np.testing.assert_array_equal(model.predict_on_batch(x), model(x))


@pytest.mark.parametrize("batch", [1, 64])
def test_first_call_answers_with_the_later_calls_bits(batch):
    """A plan's DenseChain sums in its own order (GEMV, rows product), not BLAS's, and the
    plan is made by a run through the public ops: the first call must still answer as the
    later ones do (on Zen 3's OpenBLAS the first answer of this MLP differed by 2e-6)."""
    rng = np.random.default_rng(12)
    model = pynn.Sequential([L.Input((784,)), L.Dense(256, activation="relu"),
                             L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")])
    randomize(model, rng)
    x = rand(rng, (batch, 784))
    first = model.predict_on_batch(x)
    assert "_DenseChainRunner" in [type(r).__name__ for p in model._inference.plans.values()
                                   for r in p.steps]
    for got in (model.predict_on_batch(x), model(x), model.predict_on_batch(x.copy())):
        np.testing.assert_array_equal(got, first)


def test_mlp_lane_eight_threads_equal_one():
    rng = np.random.default_rng(6)
    model = mlp((300, 65, 9))
    randomize(model, rng)
    xs = [rand(rng, (1, 37)) for _ in range(8)]
    want = [model.predict_on_batch(x) for x in xs]
    assert model._inference.lane is not None
    hammer_equal(model.predict_on_batch, xs, want, 200)


def test_a_lane_thread_blocked_elsewhere_does_not_hold_up_the_others():
    """native/_gil.h: a thread back from a lane call marks the GIL as held by a lane thread,
    and another coming back from its own native part meanwhile spins (bounded) for it
    rather than sleep. Here this thread makes one lane call while another streams them
    (so the other is most likely inside its native part then) and then blocks outside
    pynn, its mark left set: the other's calls must go on and finish while it waits, as an
    unbounded spin would never let them (the 10 s wait is the failure). Five times over."""
    rng = np.random.default_rng(21)
    model = mlp((300, 65, 9))
    randomize(model, rng)
    xa, xb = rand(rng, (1, 37)), rand(rng, (1, 37))
    want_b = model.predict_on_batch(xb)
    assert model._inference.lane is not None
    for _ in range(5):
        started, marked, done = threading.Event(), threading.Event(), threading.Event()
        got, errors = [], []

        def caller():
            try:
                while not marked.is_set():
                    got.append(model.predict_on_batch(xb))
                    started.set()
                for _ in range(300):
                    got.append(model.predict_on_batch(xb))
                done.set()
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)
                done.set()

        thread = threading.Thread(target=caller)
        thread.start()
        assert started.wait(10.0)
        model.predict_on_batch(xa)  # leaves this thread's mark behind
        marked.set()
        assert done.wait(10.0), "a lane thread spun on the mark of one blocked elsewhere"
        thread.join()
        assert not errors, errors
        assert len(got) > 300
        for y in got:
            np.testing.assert_array_equal(y, want_b)


def test_model_call_lane_steps_aside_under_a_tape(monkeypatch):
    """model(x) takes the lane first, but never under a tape (gradients need the recorded
    ops): there the general path answers as it does without the lane."""
    rng = np.random.default_rng(11)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (1, 37))
    want = model(x)
    assert model._inference.lane is not None
    with pynn.GradientTape() as tape:
        y = model(x, training=True)  # (no dropout here: the same function as inference)
        loss = pynn.ops.sum(y * y)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == 6 and all(g is not None for g in grads)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(model._inference, "lane",
                        lambda x: pytest.fail("the lane ran under a tape"))
    with pynn.GradientTape():
        try:
            model(x)
        except RuntimeError:  # the general path's own answer to inference under a tape
            pass


def test_a_tape_in_another_thread_leaves_this_threads_calls_to_the_plan():
    """model(x) first reads one process-wide count of listening recorders: a tape open in
    another thread sends this thread's call the longer way, which still takes the plan and
    gives the same answer; the count is back to zero after tapes closed normally, by an
    error, nested, and paused by stop_recording."""
    from pynn import autodiff

    rng = np.random.default_rng(8)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (1, 37))
    want = model(x)
    opened, close = threading.Event(), threading.Event()

    def hold_a_tape():
        with pynn.GradientTape():
            opened.set()
            close.wait(10)

    holder = threading.Thread(target=hold_a_tape)
    holder.start()
    try:
        assert opened.wait(10)
        assert autodiff._listening[0] == 1 and not autodiff.recording()
        np.testing.assert_array_equal(model(x), want)
        np.testing.assert_array_equal(model.predict_on_batch(x), want)
    finally:
        close.set()
        holder.join()
    assert autodiff._listening[0] == 0
    with pytest.raises(ZeroDivisionError):
        with pynn.GradientTape():
            1 / 0
    with pynn.GradientTape() as outer:
        with pynn.GradientTape():
            assert autodiff._listening[0] == 2
        with outer.stop_recording():
            assert autodiff._listening[0] == 0 and not autodiff.recording()
        assert autodiff._listening[0] == 1 and autodiff.recording()
    assert autodiff._listening[0] == 0
    np.testing.assert_array_equal(model(x), want)


def test_lane_steps_aside_for_other_backends_and_graphs(monkeypatch):
    rng = np.random.default_rng(7)
    model = mlp()
    x = rand(rng, (1, 37))
    model.predict_on_batch(x)
    calls = []
    monkeypatch.setattr(model._inference, "lane", lambda x: calls.append(x))
    monkeypatch.setattr(model._inference, "cpu", object())  # as if another backend ran
    assert model.predict_on_batch(x).shape == (1, 5)
    assert not calls
    assert inference.outputs(model, x.astype(np.float64))[0].shape == (1, 5)


@pytest.mark.parametrize("shape,pool,strides,padding", [
    ((2, 9, 7, 37), (2, 2), (2, 2), "valid"),
    ((1, 11, 9, 8), (3, 2), (2, 1), "same"),
    ((3, 5, 6, 3), (2, 3), (1, 2), "same"),
    ((1, 32, 32, 33), (2, 2), (2, 2), "valid"),
])
def test_values_only_max_pooling_gives_the_pool_kernels_bits(shape, pool, strides, padding):
    """NaNs (the first one wins), -0.0 against 0.0 (the earlier pixel wins) and infinities
    (their sum is NaN: the exact rule's fallback) as maxpool2d_forward has them."""
    from pynn._native.infer import MaxPool2D

    from pynn.backend import cpu
    from pynn.backend.operands import pool as operands
    from pynn.backend.operands.common import HOST

    rng = np.random.default_rng(sum(shape))
    x = rand(rng, shape)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=(4, max(flat.size // 50, 1)), replace=False)
    flat[picks[0]] = np.nan
    flat[picks[1]] = -0.0
    flat[picks[2]] = 0.0
    flat[picks[3][: len(picks[3]) // 2]] = np.inf
    flat[picks[3][len(picks[3]) // 2:]] = -np.inf
    nan_payload = np.float32(np.nan).view(np.uint32) | np.uint32(1)
    flat[picks[0][::2]] = nan_payload.view(np.float32)  # two NaNs: the first one's bits
    want, _ = cpu.maxpool2d_forward(x, pool, strides, padding)
    _, g = operands.maxpool2d_forward(HOST, x, pool, strides, padding)
    got = np.empty_like(want)
    MaxPool2D(g).run(x, got)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError, match=r"MaxPool2D.run: x \[.*\] and y .* do not fit"):
        MaxPool2D(g).run(x[:, 1:].copy(), got)


def small_cnn():
    return pynn.Sequential([L.Input((11, 9, 3)),
                            L.Conv2D(7, 3, padding="same", activation="relu"),
                            L.MaxPooling2D(), L.Flatten(), L.Dense(3)])


@pytest.mark.parametrize("slower", ["direct", "public"])
def test_conv_plans_keep_the_faster_of_direct_and_public(slower, monkeypatch):
    """Timed at plan time: a direct runner slower than the public op (say, one that moved
    to Winograd) gives way to it; the answers agree either way."""
    rng = np.random.default_rng(9)
    model = small_cnn()
    randomize(model, rng)
    x = rand(rng, (1, 11, 9, 3))
    want = model._plan.forward([x], False)[0][0]
    clock = _Clock(monkeypatch)
    if slower == "direct":
        for runner in (inference._Conv2D, inference._Conv2DSerial):
            def slow(self, x, buf, run=runner.run):
                clock.lag()
                return run(self, x, buf)

            monkeypatch.setattr(runner, "run", slow)
    else:
        call = inference._Generic.run

        def slow(self, x, buf):
            clock.lag()
            return call(self, x, buf)

        monkeypatch.setattr(inference._Generic, "run", slow)
    assert_close(model.predict_on_batch(x), want, 1e-6, "tuned CNN")
    kinds = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
    assert kinds[0] == ("_Generic" if slower == "direct" else "_Conv2DSerial"), kinds
    assert_close(model.predict_on_batch(x), want, 1e-6, "tuned CNN, second call")


def test_a_public_op_that_disagrees_is_never_chosen(monkeypatch):
    rng = np.random.default_rng(10)
    model = small_cnn()
    randomize(model, rng)
    x = rand(rng, (1, 11, 9, 3))
    want = model._plan.forward([x], False)[0][0]
    # The public op's answer as the tuner sees it (the validation run is the layer's own).
    monkeypatch.setattr(inference._Generic, "run",
                        lambda self, x, buf: (np.zeros((1, 11, 9, 7), np.float32), False))
    monkeypatch.setattr(inference, "TUNE_ROUNDS", 1)
    model.predict_on_batch(x)
    kinds = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
    assert kinds[0] == "_Conv2DSerial", kinds  # the direct path (one thread's twin)
    monkeypatch.undo()
    assert_close(model.predict_on_batch(x), want, 1e-6, "CNN after a disagreeing candidate")


@pytest.mark.parametrize("kernel", pynn._config.available_kernels())
def test_a_samples_answer_does_not_depend_on_its_batch(kernel):
    """At the FMA levels one row (the GEMV) and many (the rows microkernel) sum each output
    in the same order with one FMA per term: a sample alone or in a batch gives the same
    bits. (The generic level's compiler-made vectors group the sums differently.) The 300-,
    65- and 9-unit layers take the rows product on kernels zero-padded to whole vectors."""
    rng = np.random.default_rng(12)
    # 4100 inputs: the rows product reduces over 5 blocks of the kernel's rows
    sizes = [4100, 300, 65, 9]
    chain1, kernels, biases, acts = chain_of(sizes, rng)
    from pynn._native.infer import DenseChain

    from pynn.backend.api import ACTIVATIONS

    chain7 = DenseChain(7, kernels, biases, [ACTIVATIONS.index(a) for a, _ in acts],
                        [alpha for _, alpha in acts])
    assert chain7.pad_width == 304  # 300 and 65 and 9 units padded
    x = rand(rng, (7, 4100))
    out = np.empty((7, 9), np.float32)
    with pynn._config.kernel(kernel):
        chain7.run(x, chain7.scratch(), out)
        alone = np.concatenate([chain1.predict_one(x[i:i + 1]) for i in range(7)])
    if kernel != "generic":
        np.testing.assert_array_equal(alone, out)
    assert_close(alone, reference(x, kernels, biases, acts), 1e-5, f"GEMV ({kernel})")
    assert_close(out, reference(x, kernels, biases, acts), 1e-5, f"rows GEMM ({kernel})")


@pytest.mark.parametrize("kernel", pynn._config.available_kernels())
def test_a_chains_packed_panels_give_the_unpacked_products_bits(kernel):
    """A several-row chain reads its kernels packed in 64-column panels (the last one
    narrower, the width zero-padded to 16): each output keeps the unpacked rows product's
    sum, bit for bit, for widths under, at and across panels."""
    from pynn._native import info
    from pynn._native.infer import DenseChain

    rng = np.random.default_rng(14)
    for rows, c, u in ((5, 37, 130), (9, 200, 64), (2, 7, 3), (64, 129, 200)):
        k = rand(rng, (c, u))
        x = rand(rng, (rows, c))
        chain = DenseChain(rows, [k], [None], [0], [0.0])
        out, want = np.empty((rows, u), np.float32), np.empty((rows, u), np.float32)
        with pynn._config.kernel(kernel):
            chain.run(x, chain.scratch(), out)
            info._rows_gemm(x, k, want)
        np.testing.assert_array_equal(out, want)
        assert_close(out, x.astype(np.float64) @ k.astype(np.float64), 1e-5, "packed panels")
        assert chain.packed[0].ctypes.data % 64 == 0  # whole vectors never straddle lines


@pytest.mark.parametrize("kernel", pynn._config.available_kernels())
def test_a_chains_row_blocks_give_the_same_bits(kernel):
    """run in row blocks (one OpenMP thread each, every layer) gives run's bits whatever
    the blocks (one-row blocks included, at every level), and refuses a scratch made for
    fewer blocks."""
    from pynn._native.infer import DenseChain

    from pynn.backend.api import ACTIVATIONS

    rng = np.random.default_rng(13)
    sizes = [37, 300, 65, 9]
    _, kernels, biases, acts = chain_of(sizes, rng)
    chain = DenseChain(23, kernels, biases, [ACTIVATIONS.index(a) for a, _ in acts],
                       [alpha for _, alpha in acts])
    x = rand(rng, (23, 37))
    outs = []
    with pynn._config.kernel(kernel):
        for blocks in (1, 2, 3, 23, 40):
            out = np.empty((23, 9), np.float32)
            chain.run(x, chain.scratch(blocks), out, blocks)
            outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert_close(outs[0], reference(x, kernels, biases, acts), 1e-5, "row blocks")
    with pytest.raises(ValueError, match="short for 3 blocks"):
        chain.run(x, chain.scratch(1), np.empty((23, 9), np.float32), 3)


@pytest.mark.parametrize("shape,kernel,strides,padding,act,bias", [
    ((1, 32, 32, 3), (3, 3, 3, 32), (1, 1), "same", 1, True),
    ((2, 11, 9, 5), (3, 2, 5, 7), (1, 2), "same", 0, False),
    ((1, 13, 7, 33), (2, 3, 33, 65), (2, 1), "valid", 1, True),
    ((3, 6, 5, 40), (3, 3, 40, 9), (1, 1), "same", 0, True),
])
def test_conv2d_direct_gives_conv_pyx_bits_and_the_reference(shape, kernel, strides,
                                                             padding, act, bias):
    from pynn._native.infer import Conv2DDirect

    from pynn._native import conv
    from pynn.backend import cpu
    from pynn.backend.operands import conv as operands
    from pynn.backend.operands.common import HOST
    from tests.reference.conv_ref import conv2d_forward_ref

    rng = np.random.default_rng(sum(shape) + sum(kernel))
    x = rand(rng, shape)
    k = rand(rng, kernel) / np.sqrt(np.prod(kernel[:3]))
    b = rand(rng, (kernel[3],)) if bias else None
    name = "relu" if act else "linear"
    want, _ = cpu.conv2d_forward(x, k, b, strides, padding, (1, 1), name)
    g = conv._planned(operands.conv2d_forward(HOST, x, k, b, strides, padding, (1, 1), name,
                                              0.0)[5])
    aseg, bseg, tn = conv._kernel_segments(g)
    direct = Conv2DDirect(k, b, g, aseg, bseg, tn, 48, act, 0.0)
    pad = direct.pad_shape()
    xp = np.zeros(int(np.prod(pad)) if pad else 0, np.float32)
    got = np.empty_like(want)
    for _ in range(2):  # the margins stay zero from one call to the next
        direct.run(x, xp, got)
        np.testing.assert_array_equal(got, want)
    ref, _ = conv2d_forward_ref(x, k, None if b is None else b.astype(np.float64), strides,
                                padding, (1, 1), name)
    assert_close(got, ref, 1e-5, "Conv2DDirect")
    with pytest.raises(ValueError, match=r"Conv2DDirect.run: x \[.*\], y .* do not fit"):
        direct.run(x[:, 1:].copy(), xp, got)


def test_conv2d_direct_repacks_when_the_kernel_level_changes():
    from pynn._native.infer import Conv2DDirect

    from pynn._native import conv
    from pynn.backend import cpu
    from pynn.backend.operands import conv as operands
    from pynn.backend.operands.common import HOST

    rng = np.random.default_rng(13)
    x, k, b = rand(rng, (1, 9, 8, 6)), rand(rng, (3, 3, 6, 37)) * 0.2, rand(rng, (37,))
    g = conv._planned(operands.conv2d_forward(HOST, x, k, b, (1, 1), "same", (1, 1), "relu",
                                              0.0)[5])
    direct = Conv2DDirect(k, b, g, *conv._kernel_segments(g), 48, 1, 0.0)
    xp = np.zeros(int(np.prod(direct.pad_shape())), np.float32)
    got = np.empty((1, 9, 8, 37), np.float32)
    for level in pynn._config.available_kernels():  # panel widths differ between levels
        with pynn._config.kernel(level):
            want, _ = cpu.conv2d_forward(x, k, b, (1, 1), "same", (1, 1), "relu")
            direct.run(x, xp, got)
        np.testing.assert_array_equal(got, want, err_msg=level)


def test_cnn_lane_is_one_native_call_with_the_steps_bits():
    """A one-thread chain whose steps all have native twins (conv, pool, flatten, a Dense
    chain last) answers batch 1 through native/infer.pyx's Program: the plan's own bits,
    after set_weights too, and from 8 threads."""
    rng = np.random.default_rng(14)
    model = pynn.Sequential([
        L.Input((13, 11, 3)),
        L.Conv2D(9, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(17, (2, 3), activation="relu"), L.MaxPooling2D(padding="same"),
        L.Flatten(), L.Dense(19, activation="relu"), L.Dense(5, activation="softmax")])
    randomize(model, rng)
    x = rand(rng, (1, 13, 11, 3))
    for _ in range(2):  # the weights, then new ones: the lane is rebuilt with the plan
        model.predict_on_batch(x)
        state = model._inference
        plan = state.plans[x.shape]
        assert state.lane is not None and type(state.lane.__self__).__name__ == "Program"
        want = plan._run([x])[0]
        for got in (model.predict_on_batch(x), model(x)):
            np.testing.assert_array_equal(got, want)
        assert_close(want, model._plan.forward([x], False)[0][0], 1e-6, "CNN lane")
        assert state.lane(x[:, :, :5].copy()) is None  # another shape: the checked route
        randomize(model, rng)
    xs = [rand(rng, (1, 13, 11, 3)) for _ in range(8)]
    wants = [model.predict_on_batch(xk) for xk in xs]
    hammer_equal(model.predict_on_batch, xs, wants, 30)


def test_program_refuses_steps_it_cannot_run():
    from pynn._native.infer import DenseChain, Program

    chain = DenseChain(2, [np.ones((4, 3), np.float32)], [None], [0], [0.0])
    with pytest.raises(ValueError, match=r"step 0 \(dense\) is not a native step here"):
        Program([("dense", chain, 6)], (2, 4), (2, 3))
    with pytest.raises(ValueError, match="needs steps, the last one computing"):
        Program([("flatten", None, 12)], (1, 3, 4), (1, 12))


@pytest.mark.parametrize("slower", ["direct", "public"])
def test_a_public_conv_that_rounds_otherwise_is_timed_against_the_direct_path(
        slower, monkeypatch):
    """A public Conv2D that takes another algorithm (a Winograd stand-in: the same numbers
    to float32 rounding) leaves the direct runner a candidate; the faster one is kept."""
    rng = np.random.default_rng(15)
    model = small_cnn()
    randomize(model, rng)
    x = rand(rng, (1, 11, 9, 3))
    conv = model.layers[0]
    own = type(conv).call
    clock = _Clock(monkeypatch)

    def other_algorithm(x, training=False):
        if slower == "public":
            clock.lag()
        return own(conv, x, training) * np.float32(1 + 2 ** -22)

    monkeypatch.setattr(conv, "call", other_algorithm)
    if slower == "direct":
        for runner in (inference._Conv2D, inference._Conv2DSerial):
            def slow(self, x, buf, run=runner.run):
                clock.lag()
                return run(self, x, buf)

            monkeypatch.setattr(runner, "run", slow)
    model.predict_on_batch(x)
    kinds = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
    assert kinds[0] == ("_Generic" if slower == "direct" else "_Conv2DSerial"), kinds
    assert_close(model.predict_on_batch(x), model._plan.forward([x], False)[0][0], 1e-6,
                 "CNN after tuning")


def split_calls_equal(model, xs, wants, calls):
    """`calls` predictions cycling through xs, each wants[i]'s bits, with the lane made to
    post its split layers (under pytest -n 2 another process may hold the worker's core, and
    the lane would rightly run alone); at least two layers of each call ran as team jobs."""
    from pynn._native import info

    ran, _ = info.team_counts()
    info._team_lane_force(True)
    try:
        for i in range(calls):
            np.testing.assert_array_equal(model.predict_on_batch(xs[i % len(xs)]),
                                          wants[i % len(xs)])
    finally:
        info._team_lane_force(False)
    assert info.team_counts()[0] - ran >= 2 * calls, "the lane's layers did not split"


@pytest.mark.skipif(pynn._config.usable_cores() < 2, reason="needs two cores")
@pytest.mark.parametrize("which", ["mlp", "cnn", "cnn_winograd"])
def test_lanes_split_their_large_layers_over_the_team_with_the_same_bits(which):
    """With pynn on two threads, a lane's large layers (a Dense kernel of 65,536 floats or
    more; a convolution of as many multiply-adds; a pooling of 8,192 values) run their
    column blocks, pixel blocks or rows on pynn's worker team while requests come close
    together: each output is summed alike wherever it runs, so the answers are one thread's
    bits, from 1 or 8 Python threads, and again after the thread count changes (the Dense
    kernels are split per count)."""
    from pynn._native import info

    rng = np.random.default_rng(21)
    if which == "mlp":
        model = pynn.Sequential([  # 155,100 and 135,971 multiply-adds: both split
            L.Input((300,)), L.Dense(517, activation="relu"), L.Dense(263, activation="tanh"),
            L.Dense(7, activation="softmax")])
        shape = (1, 300)
    else:
        model = pynn.Sequential([  # the first pooling reads 9,576 values: split too
            L.Input((21, 19, 3)),
            L.Conv2D(24, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Conv2D(33, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Flatten(), L.Dense(130, activation="relu"), L.Dense(6, activation="softmax")])
        shape = (1, 21, 19, 3)
    if which == "cnn_winograd":
        model = pynn.Sequential([  # the second conv (16 x 15 x 32 -> 40) runs F(4x4, 3x3)
            L.Input((32, 30, 3)),
            L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Conv2D(40, 3, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Flatten(), L.Dense(20, activation="relu"), L.Dense(9, activation="softmax")])
        shape = (1, 32, 30, 3)
    randomize(model, rng)
    xs = [rand(rng, shape) for _ in range(8)]
    with pynn.threads(1):
        model.predict_on_batch(xs[0])  # (the plan's first call answers with the public ops)
        wants = [model.predict_on_batch(x) for x in xs]
        assert model._inference.lane is not None
        if which == "cnn_winograd":
            assert "_Conv2DWinograd" in [
                type(r).__name__ for r in model._inference.plans[shape].steps]
        ran, _ = info.team_counts()
        for _ in range(50):
            model.predict_on_batch(xs[0])
        assert info.team_counts()[0] == ran  # one thread: the lane posts no job
    with pynn.threads(2):
        split_calls_equal(model, xs, wants, 200)
        hammer_equal(model.predict_on_batch, xs, wants, 50)
    for n in (3, 2):
        with pynn.threads(n):
            for i in range(200):
                np.testing.assert_array_equal(model.predict_on_batch(xs[i % 8]), wants[i % 8])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_batch_1_recurrences_split_their_steps_over_the_team_with_the_same_bits(cell):
    """A batch-1 plan runs with OpenMP at one thread, but a recurrent layer's steps, like a
    lane's split layers, cut their recurrent products over pynn's worker team while requests
    come close together (native/rnn.pyx, _forward_one): one thread's bits, from one Python
    thread or eight; with pynn at one thread nothing is posted."""
    from pynn._native import info

    rng = np.random.default_rng(29)
    units = {"LSTM": 190, "GRU": 215, "SimpleRNN": 370}[cell]  # 2 ranges of 64K+ MACs
    model = pynn.Sequential([L.Input((11, 13)), getattr(L, cell)(units, return_sequences=True),
                             getattr(L, cell)(units), L.Dense(5, activation="softmax")])
    randomize(model, rng)
    xs = [rand(rng, (1, 11, 13)) for _ in range(4)]
    with pynn.threads(1):
        model.predict_on_batch(xs[0])
        wants = [model.predict_on_batch(x) for x in xs]
        kinds = [type(r).__name__ for r in model._inference.plans[(1, 11, 13)].steps]
        assert kinds[:2] == ["_Recurrent"] * 2, kinds  # the packed recurrent kernels
        for x, want in zip(xs, wants):
            np.testing.assert_array_equal(model._plan.predict([x])[0], want)
        ran, _ = info.team_counts()
        for _ in range(20):
            model.predict_on_batch(xs[0])
        assert info.team_counts()[0] == ran
    with pynn.threads(2):
        split_calls_equal(model, xs, wants, 40)
        hammer_equal(model.predict_on_batch, xs, wants, 20)
    # new weights: the plan packs the new recurrent kernels
    model.set_weights([0.5 * w for w in model.get_weights()])
    for x in xs[:2]:
        np.testing.assert_array_equal(model.predict_on_batch(x), model._plan.predict([x])[0])


@pytest.mark.skipif(pynn._config.usable_cores() < 2, reason="needs two cores")
def test_a_lane_splits_a_kernel_over_4_mib_in_place_with_the_same_bits():
    """A split layer's kernel is copied in per-thread column blocks only up to 4 MiB (no
    core's L2 would keep a larger one): a 1024 x 1040 kernel (4.26 MB) is split in place,
    next to a copied 1040 x 70 one, and the answers are one thread's bits."""
    rng = np.random.default_rng(23)
    model = pynn.Sequential([L.Input((1024,)), L.Dense(1040, activation="relu"),
                             L.Dense(70, activation="tanh"), L.Dense(3)])
    randomize(model, rng)
    xs = [rand(rng, (1, 1024)) for _ in range(4)]
    with pynn.threads(1):
        model.predict_on_batch(xs[0])
        wants = [model.predict_on_batch(x) for x in xs]
    with pynn.threads(2):
        split_calls_equal(model, xs, wants, 40)


WINO_CASES = [  # (N, H, W, C, F, padding, activation, bias, algorithm)
    (1, 16, 16, 32, 64, "same", "relu", True, "auto"),       # F(4x4): 16 tiles
    (1, 9, 8, 32, 33, "same", "relu", True, "auto"),         # F(2x2): 20 tiles
    (2, 13, 11, 33, 35, "valid", "linear", False, "winograd"),
    (1, 13, 11, 33, 35, "same", "relu", True, "winograd4"),
    (3, 9, 7, 5, 3, "same", "relu", True, "winograd"),
    (1, 31, 29, 8, 9, "same", "linear", True, "winograd4"),  # blocks of T tiles, several
]


@pytest.mark.parametrize("case", WINO_CASES, ids=lambda c: "x".join(map(str, c[:5])) + c[8])
def test_conv2d_winograd_gives_the_ops_bits(case):
    """native/infer.pyx Conv2DWinograd (the kernel transformed and packed once) against
    conv2d_forward taking the same Winograd tile: the same bits, and the float64
    reference to Winograd's rounding."""
    from pynn._native import conv
    from pynn._native.infer import Conv2DWinograd
    from pynn.backend.operands import conv as operands
    from pynn.backend.operands.common import HOST
    from tests.reference.conv_ref import conv2d_forward_ref

    n, h, w, c, f, padding, act, use_bias, algo = case
    rng = np.random.default_rng(h * w + c)
    x = rand(rng, (n, h, w, c))
    kernel = rand(rng, (3, 3, c, f)) / np.sqrt(9 * c)
    bias = rand(rng, (f,)) if use_bias else None
    old = conv._set_conv_algo(None if algo == "auto" else algo)
    try:
        g = conv._planned(operands.conv2d_forward(HOST, x, kernel, bias, (1, 1), padding,
                                                  (1, 1), act, 0.0)[-1])
        assert conv._use_winograd(g, np.float32, "forward")
        want, _ = conv.conv2d_forward(x, kernel, bias, (1, 1), padding, activation=act)
        m = conv._wino_tile(g)
        native = Conv2DWinograd(kernel, bias, g, m, conv._wino_block_tiles(g, m),
                                0 if act == "linear" else 1)
    finally:
        conv._set_conv_algo(old)
    got = np.full_like(want, np.nan)
    native.run(x, np.empty(native.work_size(), np.float32), got)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    ref, _ = conv2d_forward_ref(x.astype(np.float64), kernel.astype(np.float64),
                                None if bias is None else bias.astype(np.float64), (1, 1),
                                padding, (1, 1), act)
    assert_close(got, ref, 2e-5, f"Conv2DWinograd F({m}x{m}, 3x3)")


def test_conv2d_winograd_refuses_what_it_does_not_run():
    from pynn._native import conv
    from pynn._native.infer import Conv2DWinograd
    from pynn.backend.operands import conv as operands
    from pynn.backend.operands.common import HOST

    rng = np.random.default_rng(7)
    x, kernel = rand(rng, (1, 8, 8, 32)), rand(rng, (3, 3, 32, 32))

    def geom(strides=(1, 1), k=kernel):
        return conv._planned(operands.conv2d_forward(HOST, x, k, None, strides, "same",
                                                     (1, 1), "linear", 0.0)[-1])

    with pytest.raises(ValueError, match="linear or relu only"):
        Conv2DWinograd(kernel, None, geom(), 2, 8, 5)
    with pytest.raises(ValueError, match="tile must be 2 or 4, got 3"):
        Conv2DWinograd(kernel, None, geom(), 3, 8, 0)
    with pytest.raises(ValueError, match="3x3 stride-1 conv"):
        Conv2DWinograd(kernel, None, geom((2, 2)), 2, 8, 0)
    native = Conv2DWinograd(kernel, None, geom(), 2, 8, 0)
    y = np.empty((1, 8, 8, 32), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        native.run(rand(rng, (1, 8, 7, 32)), np.empty(native.work_size(), np.float32), y)
    with pytest.raises(ValueError, match="do not fit"):
        native.run(x, np.empty(native.work_size() - 1, np.float32), y)


def test_a_batch1_cnn_plan_runs_its_winograd_conv_natively_with_the_ops_bits():
    """A one-thread plan's conv that the op runs by Winograd becomes Conv2DWinograd (in the
    batch-1 Program lane too): predict_on_batch gives the layer-by-layer bits on every call."""
    rng = np.random.default_rng(8)
    model = pynn.Sequential([L.Input((16, 16, 32)),
                             L.Conv2D(48, 3, padding="same", activation="relu"),
                             L.Conv2D(32, 3, padding="same")])
    randomize(model, rng)
    x = rand(rng, (1, 16, 16, 32))
    want = model._plan.forward([x], False)[0][0]
    for _ in range(3):
        np.testing.assert_array_equal(model.predict_on_batch(x), want)
    steps = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
    assert steps == ["_Conv2DWinograd"] * 2, steps
    assert type(model._inference.lane.__self__).__name__ == "Program"
    np.testing.assert_array_equal(model.predict_on_batch(np.asfortranarray(x)), want)


@pytest.mark.skipif(pynn._config.usable_cores() < 2, reason="needs two cores")
def test_a_large_winograd_conv_wakes_sleeping_workers_and_a_small_one_does_not():
    """A plan's Winograd conv of WAKE_MIN_MACS or more posts its runs as a team job even
    when the workers sleep (a residual CNN's batch-64 predict, too large for keep-warm,
    found them asleep at nearly every such conv and ran it on one thread); a small one (a
    lane's layer) runs alone rather than pay a wake-up. The same bits either way."""
    import time

    from pynn._native import info

    rng = np.random.default_rng(12)
    model = pynn.Sequential([L.Input((16, 16, 32)),
                             L.Conv2D(32, 3, padding="same", activation="relu")])
    randomize(model, rng)
    large, small = rand(rng, (16, 16, 16, 32)), rand(rng, (1, 16, 16, 32))
    assert 16 * 16 * 16 * 9 * 32 * 32 >= 1 << 25 > 16 * 16 * 9 * 32 * 32
    with pynn.threads(2):
        for x in (large, small):
            want = model._plan.forward([x], False)[0][0]
            np.testing.assert_array_equal(model.predict_on_batch(x), want)
            steps = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
            assert steps == ["_Conv2DWinograd"], steps
            time.sleep(0.2)   # the workers' spin (at most 50 ms with keep-warm) runs out
            ran, _ = info.team_counts()
            np.testing.assert_array_equal(model.predict_on_batch(x), want)
            posted = info.team_counts()[0] - ran
            if x is large:
                assert posted >= 1, "the large conv ran alone while its worker slept"
            else:
                assert posted == 0, "the small conv woke the workers"


@pytest.mark.parametrize("batch", [2, 9])
def test_a_multi_thread_plans_winograd_conv_gives_the_ops_bits_on_any_thread_count(batch):
    """Plans of several rows run Conv2DWinograd too, its tiles split over the plan's
    threads: every count gives the op's bits (a tile's sums do not depend on its run)."""
    rng = np.random.default_rng(9)
    model = pynn.Sequential([L.Input((17, 15, 32)),
                             L.Conv2D(40, 3, padding="same", activation="relu"),
                             L.Conv2D(33, 3, padding="valid")])
    randomize(model, rng)
    x = rand(rng, (batch, 17, 15, 32))
    want = model._plan.forward([x], False)[0][0]
    for n in (1, 2, 3, 2):
        with pynn.threads(n):
            for _ in range(2):
                np.testing.assert_array_equal(model.predict_on_batch(x), want)
    steps = [type(r).__name__ for r in model._inference.plans[x.shape].steps]
    assert steps == ["_Conv2DWinograd"] * 2, steps
