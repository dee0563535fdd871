"""The prepared inference plan (pynn/inference.py, issue 16) against the general path.

The general path is the model's graph plan run step by step through the public ops
(``model._plan.predict``: checked operands, fresh arrays); the plan calls the same kernels'
buffer-taking entry points, so without BatchNormalization it gives the same bits. With a
BatchNormalization folded into the op before it the arithmetic differs: the reference is
then the unfolded eager forward (``model._plan.forward(xs, False)``).
"""

import itertools
import threading

import numpy as np
import pytest

import pynn
from pynn import inference
from pynn import layers as L
from tests.backend_util import assert_close, hammer_equal, rand


@pytest.fixture(autouse=True)
def _untimed(monkeypatch):
    """These tests ask which runner a plan takes for correctness' sake: the plan-time race of
    a small conv against its public op (tests/test_inference_lane.py times it on a fake clock)
    would make the answer depend on the machine's load."""
    monkeypatch.setattr(inference, "TUNE_MAX_MACS", -1)


def general(model, xs):
    """The general path's outputs (a list), BatchNormalization folded as the plan does."""
    return model._plan.predict(list(xs))


def unfolded(model, xs):
    """The eager inference forward, every layer separately (no folding, no fusion)."""
    return model._plan.forward(list(xs), False)[0]


def plan_of(model, xs):
    """The plan serving ``xs`` (so a test can see that it ran, and through which runners)."""
    state = model.__dict__.get("_inference")
    assert isinstance(state, inference._State), "the model took the general path"
    return state.plans[tuple(np.shape(x) for x in xs) if len(xs) > 1 else np.shape(xs[0])]


def runners(model, xs):
    return [type(r).__name__ for r in plan_of(model, xs).steps]


def randomize(model, rng):
    model.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def mlp(dtype="float32"):
    return pynn.Sequential([L.Input((37,), dtype=dtype), L.Dense(29, activation="relu"),
                            L.Dense(13, activation="tanh"), L.Dense(5, activation="softmax")])


def cnn():
    return pynn.Sequential([
        L.Input((11, 9, 3)),
        L.Conv2D(7, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(5, (2, 3), strides=(1, 2), activation="elu"), L.MaxPooling2D(padding="same"),
        L.Flatten(), L.Dense(6, activation="relu"), L.Dense(3, activation="softmax"),
    ])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 7])
def test_sequential_mlp_equals_general_path(dtype, batch, monkeypatch):
    monkeypatch.setattr(pynn._config, "_floatx", dtype)
    rng = np.random.default_rng(0)
    model = mlp(dtype)
    randomize(model, rng)
    x = rand(rng, (batch, 37), dtype)
    want = general(model, [x])[0]
    for got in (model.predict_on_batch(x), model(x), model.predict(x, verbose=0)):
        assert got.dtype == np.dtype(dtype)
        if dtype == "float64":
            np.testing.assert_array_equal(got, want)
        else:  # one native chain call: BLAS without dense_forward's bands, float32 rounding
            assert_close(got, want, 1e-6, "MLP through the plan")
    assert runners(model, [x]) == (["_Dense"] * 3 if dtype == "float64"
                                   else ["_DenseChainRunner"])


@pytest.mark.parametrize("path", ["micro", "blas"])
def test_dense_runner_takes_dense_forwards_path(path):
    """A plan's Dense gives dense_forward's bits on either side of the microkernel rule
    (which differs between CPU kinds), so _checked keeps the direct runner."""
    from pynn._native import dense

    old = dense._set_gemm_path(path)
    try:
        rng = np.random.default_rng(2)
        model = pynn.Sequential([L.Input((5, 37)), L.Dense(19, activation="relu")])
        randomize(model, rng)
        x = rand(rng, (3, 5, 37))
        np.testing.assert_array_equal(model.predict_on_batch(x), general(model, [x])[0])
        assert runners(model, [x]) == ["_Dense"]
    finally:
        dense._set_gemm_path(old)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_parallel_plans_dense_layers_run_as_one_chain_over_its_threads(threads,
                                                                          num_threads,
                                                                          monkeypatch):
    """A plan too large for one thread still runs its Dense layers as one chain call, its
    rows in a block per thread: the same bits for every thread count, the general path's
    numbers to float32 rounding."""
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    rng = np.random.default_rng(23)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (41, 37))
    num_threads(1)
    alone = model.predict_on_batch(x)
    num_threads(threads)
    model._inference = None  # a fresh plan for this thread count
    got = model.predict_on_batch(x)
    plan = plan_of(model, [x])
    assert not plan.serial and runners(model, [x]) == ["_DenseChainRunner"]
    assert plan.steps[0].parallel
    np.testing.assert_array_equal(got, alone)
    assert_close(got, general(model, [x])[0], 1e-6, "MLP chain over threads")


def test_cnn_equals_general_path():
    rng = np.random.default_rng(1)
    model = cnn()
    randomize(model, rng)
    x = rand(rng, (3, 11, 9, 3))
    assert_close(model.predict_on_batch(x), general(model, [x])[0], 1e-6, "CNN plan")
    # A one-thread plan pools without argmax (native/infer.pyx).
    assert runners(model, [x]) == ["_Conv2DSerial", "_MaxPool2DValues", "_Conv2D",
                                   "_MaxPool2DValues", "_Flatten", "_DenseChainRunner"]


@pytest.mark.parametrize("activation", ["gelu", "sigmoid", "linear"])
def test_conv_over_several_kernel_sweeps_keeps_the_activation(activation):
    # K = 3 * 3 * 40 = 360 rows: the direct forward makes two sweeps through its output
    # buffer before the activation, which the plan gives it as y and pre-activation at once.
    rng = np.random.default_rng(14)
    model = pynn.Sequential([L.Input((5, 6, 40)),
                             L.Conv2D(9, 3, padding="same", activation=activation)])
    randomize(model, rng)
    x = rand(rng, (2, 5, 6, 40))
    np.testing.assert_array_equal(model.predict_on_batch(x), general(model, [x])[0])
    # A one-thread plan's linear (or relu) conv: native/infer.pyx's twin, the same bits.
    assert runners(model, [x]) == ["_Conv2DSerial" if activation == "linear" else "_Conv2D"]


def test_cnn_float64_equals_general_path(float64):
    rng = np.random.default_rng(2)
    model = cnn()
    randomize(model, rng)
    x = rand(rng, (2, 11, 9, 3), np.float64)
    np.testing.assert_array_equal(model(x), general(model, [x])[0])


def test_functional_two_inputs_two_outputs_shared_and_nested():
    rng = np.random.default_rng(3)
    inner_in = L.Input((6,))
    inner = pynn.Model(inner_in, L.Dense(4, activation="relu")(L.Dense(5)(inner_in)),
                       name="inner")
    a, b = L.Input((6,), name="a"), L.Input((6,), name="b")
    shared = L.Dense(6, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)
    merged = L.Concatenate()([inner(ha), shared(hb)])
    out1 = L.Dense(3, activation="softmax", name="p")(merged)
    out2 = L.Dense(2, name="q")(L.Add()([ha, hb]))
    model = pynn.Model([a, b], [out1, out2])
    randomize(model, rng)
    xa, xb = rand(rng, (5, 6)), rand(rng, (5, 6))
    want = general(model, [xa, xb])
    for got in (model.predict_on_batch([xa, xb]), model([xa, xb]),
                model.predict({"a": xa, "b": xb}, verbose=0)):
        assert len(got) == 2
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    kinds = runners(model, [xa, xb])
    assert kinds.count("_Dense") == 5 and "_Generic" in kinds  # the nested model, the merges


@pytest.mark.parametrize("center,scale", [(True, True), (False, False), (True, False)])
def test_batchnorm_folded_into_dense(center, scale):
    rng = np.random.default_rng(4)
    model = pynn.Sequential([L.Input((9,)), L.Dense(8), L.BatchNormalization(
        center=center, scale=scale), L.Activation("relu"), L.Dense(3)])
    randomize(model, rng)
    bn = model.layers[1]
    bn.moving_variance.value[...] = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    before = model.get_weights()
    x = rand(rng, (4, 9))
    got = model.predict_on_batch(x)
    assert_close(got, unfolded(model, [x])[0], 1e-6, "dense+bn+relu folded")
    # BN and relu inside the first Dense, both Dense one chain call.
    assert runners(model, [x]) == ["_DenseChainRunner"]
    for w, w0 in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, w0)  # the training weights stay as they were


def test_batchnorm_folded_into_conv_float64(float64):
    rng = np.random.default_rng(5)
    model = pynn.Sequential([L.Input((7, 8, 3)), L.Conv2D(4, 3, padding="same"),
                             L.BatchNormalization(), L.Flatten(), L.Dense(2)])
    randomize(model, rng)
    model.layers[1].moving_variance.value[...] = rng.uniform(0.5, 2.0, 4)
    x = rand(rng, (2, 7, 8, 3), np.float64)
    np.testing.assert_allclose(model(x), unfolded(model, [x])[0], rtol=1e-12, atol=1e-12)
    assert runners(model, [x])[0] == "_Conv2D"


def test_rebuilt_after_set_weights_fit_and_new_shape():
    rng = np.random.default_rng(6)
    model = mlp()
    x = rand(rng, (2, 37))
    first = model.predict_on_batch(x)
    plan = plan_of(model, [x])
    model.set_weights([w * 0.5 for w in model.get_weights()])
    second = model.predict_on_batch(x)
    assert plan_of(model, [x]) is not plan
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, general(model, [x])[0])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.full((2, 5), 0.2, np.float32), epochs=1, verbose=0)
    third = model.predict_on_batch(x)
    assert not np.array_equal(second, third)
    np.testing.assert_array_equal(third, general(model, [x])[0])
    x3 = rand(rng, (3, 37))
    np.testing.assert_array_equal(model.predict_on_batch(x3), general(model, [x3])[0])
    assert set(model._inference.plans) == {(2, 37), (3, 37)}


def test_large_plans_take_recycled_host_memory(monkeypatch):
    """A plan whose intermediates reach RECYCLE_MIN_BYTES is made and run on recycled host
    memory (after training, the step's idle blocks rather than fresh pages: a residual
    CNN's predict after fit grew its RSS by 36 MB); a batch-1 plan runs without the
    scope's cost. The pool served the large predict (its hits grew, no new misses)."""
    from pynn import backend
    from pynn._native import memory

    pynn.utils.set_random_seed(3)
    model = pynn.Sequential([L.Input((32, 32, 4)), L.Conv2D(32, 3, padding="same",
                                                           activation="relu"),
                             L.GlobalAveragePooling2D(), L.Dense(3)])
    model.compile("sgd", "mse")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 32, 32, 4)).astype(np.float32)
    model.train_on_batch(x, rng.standard_normal((32, 3)).astype(np.float32))
    entered, real = [], backend.host_memory_loop
    monkeypatch.setattr(backend, "host_memory_loop",
                        lambda *a, **k: entered.append(1) or real(*a, **k))
    want = model.predict_on_batch(x)          # made (validated) in the scope
    before = memory.stats()
    got = model.predict_on_batch(x)           # run in the scope
    after = memory.stats()
    np.testing.assert_array_equal(got, want)
    assert len(entered) == 2
    assert after["hits"] > before["hits"] and after["misses"] == before["misses"]
    model.predict_on_batch(x[:1])             # a small plan: made in the scope ...
    model.predict_on_batch(x[:1])             # ... and run without it
    assert len(entered) == 3


def test_returned_array_is_the_callers():
    rng = np.random.default_rng(7)
    model = cnn()
    x1, x2 = rand(rng, (1, 11, 9, 3)), rand(rng, (1, 11, 9, 3))
    model.predict_on_batch(x2)  # the first call builds the plan; the next ones run it
    y1 = model.predict_on_batch(x1)
    kept = y1.copy()
    y2 = model(x2)
    np.testing.assert_array_equal(y1, kept)
    assert not np.shares_memory(y1, y2)
    # An output that is a view of a plan buffer (a Flatten or Reshape after a Dense on 3-D
    # input) is copied out.
    for last in (L.Flatten(), L.Reshape((12,))):
        flat = pynn.Sequential([L.Input((4, 5)), L.Dense(3, activation="relu"), last])
        x1 = rand(rng, (2, 4, 5))
        flat.predict_on_batch(x1)
        z1 = flat.predict_on_batch(x1)
        np.testing.assert_array_equal(z1, general(flat, [x1])[0])
        kept = z1.copy()
        flat.predict_on_batch(rand(rng, (2, 4, 5)))
        np.testing.assert_array_equal(z1, kept)


def test_eight_threads_equal_one():
    rng = np.random.default_rng(8)
    model = cnn()
    randomize(model, rng)
    xs = [rand(rng, (1, 11, 9, 3)) for _ in range(8)]
    want = [model.predict_on_batch(x) for x in xs]
    with pynn.threads(1):
        hammer_equal(model.predict_on_batch, xs, want, 25)


def test_small_plans_run_serial():
    rng = np.random.default_rng(9)
    model = mlp()
    x = rand(rng, (1, 37))
    model.predict_on_batch(x)
    assert plan_of(model, [x]).serial
    assert plan_of(model, [x]).macs == 37 * 29 + 29 * 13 + 13 * 5


def test_inputs_the_plan_does_not_take_use_the_general_path():
    rng = np.random.default_rng(10)
    model = mlp()
    x = rand(rng, (3, 37))
    want = model.predict_on_batch(x)
    # float64 and Fortran-ordered inputs are converted; both give the plan's numbers.
    np.testing.assert_array_equal(model.predict_on_batch(x.astype(np.float64)), want)
    np.testing.assert_array_equal(model.predict_on_batch(np.asfortranarray(x)), want)
    assert inference.outputs(model, x.tolist()) is None  # a list of lists: general path
    np.testing.assert_array_equal(model.predict_on_batch(x.tolist()), want)
    with pytest.raises(ValueError, match="expects input shape"):
        model.predict_on_batch(x[:, :5])


def test_plans_of_several_batch_sizes_share_one_packed_copy_of_the_kernels():
    """The Dense chains of a model's plans for several batch sizes read one packed copy of
    each kernel; new weights get a new copy with their numbers."""
    rng = np.random.default_rng(24)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (41, 37))
    model.predict_on_batch(x)
    model.predict_on_batch(x[:9])
    chains = [plan_of(model, [a]).steps[0].chain for a in (x, x[:9])]
    assert all(p1 is p2 for p1, p2 in zip(chains[0].packed, chains[1].packed))
    assert len(chains[0].packed) == 3
    randomize(model, rng)
    got = model.predict_on_batch(x[:9])
    assert not any(p1 is p2 for p1, p2 in zip(
        chains[0].packed, plan_of(model, [x[:9]]).steps[0].chain.packed))
    assert_close(got, general(model, [x[:9]])[0], 1e-6, "new weights")


@pytest.mark.parametrize("rows", [1, 5])
def test_dense_chain_against_float64_reference(rows):
    from pynn._native.infer import DenseChain

    from pynn.backend.api import ACTIVATIONS
    from tests.reference.dense_ref import dense_forward_ref

    rng = np.random.default_rng(12)
    sizes = [33, 17, 31, 7]
    kernels = [rand(rng, (c, u)) * 0.3 for c, u in itertools.pairwise(sizes)]
    biases = [rand(rng, (17,)), None, rand(rng, (7,))]
    acts = [("leaky_relu", 0.2), ("tanh", 0.0), ("softmax", 0.0)]
    chain = DenseChain(rows, kernels, biases, [ACTIVATIONS.index(a) for a, _ in acts],
                       [alpha for _, alpha in acts])
    x = rand(rng, (rows, 33))
    want = x.astype(np.float64)
    for k, b, (act, alpha) in zip(kernels, biases, acts):
        want, _ = dense_forward_ref(want, k.astype(np.float64),
                                    None if b is None else b.astype(np.float64), act, alpha)
    out = np.empty((rows, 7), np.float32)
    chain.run(x, chain.scratch(), out)
    assert_close(out, want, 1e-5, "DenseChain")


def test_dense_chain_bad_shapes_name_what_was_expected():
    from pynn._native.infer import DenseChain

    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match=r"kernel of shape \(5, 3\) does not follow 4"):
        DenseChain(1, [rand(rng, (6, 4)), rand(rng, (5, 3))], [None, None], [0, 0], [0, 0])
    chain = DenseChain(2, [rand(rng, (6, 4))], [None], [0], [0.0])
    with pytest.raises(ValueError, match=r"x \(1, 6\) .* do not fit the chain \(2, 6\)"):
        chain.run(rand(rng, (1, 6)), chain.scratch(), np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="1 packed kernels for 2 layers"):
        DenseChain(2, [rand(rng, (6, 4)), rand(rng, (4, 3))], [None, None], [0, 0], [0, 0],
                   [None])
    with pytest.raises(ValueError, match=r"packed kernel for \(6, 4\) must be float32 \(96,\)"):
        DenseChain(2, [rand(rng, (6, 4))], [None], [0], [0.0], [np.zeros(24, np.float32)])
    assert chain.packed[0].shape == (96,)  # 4 units padded to 16 columns
    np.testing.assert_array_equal(chain.packed[0].reshape(6, 16)[:, 4:], 0)


@pytest.mark.opencl
def test_opencl_models_keep_the_general_path():
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    rng = np.random.default_rng(11)
    previous = pynn.backend.device()
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (2, 37))
    want = model.predict_on_batch(x)
    try:
        pynn.set_device("opencl")
        cl_model = mlp()
        cl_model.set_weights(model.get_weights())
        assert inference.outputs(cl_model, x) is None
        assert_close(cl_model.predict_on_batch(x), want, 1e-5, "OpenCL predict")
        assert_close(cl_model.predict(x, verbose=0), want, 1e-5, "OpenCL predict")
    finally:
        pynn.set_device(previous)


def test_out_of_memory_in_a_prepared_plan_names_the_layer(monkeypatch):
    rng = np.random.default_rng(15)
    model = cnn()
    x = rand(rng, (1, 11, 9, 3))
    model.predict_on_batch(x)
    runner = plan_of(model, [x]).steps[2]

    def exhausted(*args):
        raise MemoryError("no room")

    monkeypatch.setattr(runner, "run", exhausted)
    with pytest.raises(MemoryError, match=r"Layer 'conv2d_\d+' \(Conv2D\): out of memory for "
                                          r"input shape \(1, 5, 4, 7\) \(no room\)"):
        model.predict_on_batch(x)


@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_a_kernel_entry_point_that_changed_costs_speed_not_correctness(broken, monkeypatch):
    """The plan checks each direct kernel call against the public op on the first call: an
    entry point that now fails, or computes something else, leaves that step on the
    layer's own call."""
    rng = np.random.default_rng(16)
    model = cnn()
    randomize(model, rng)
    x = rand(rng, (2, 11, 9, 3))
    want = general(model, [x])[0]

    def changed(self, x, buf):  # a direct call whose kernel now wants other arguments...
        if broken == "raises":
            raise TypeError("_run_forward_direct() takes 16 positional arguments")
        return np.zeros(self.shape, self.dtype), False  # ...or computes something else

    monkeypatch.setattr(inference._Conv2D, "run", changed)
    model.predict_on_batch(x)
    np.testing.assert_array_equal(model.predict_on_batch(x), want)
    assert runners(model, [x])[:3] == ["_Generic", "_MaxPool2DValues", "_Generic"]


@pytest.mark.parametrize("batch", [1, 5])
def test_static_int8_models_run_direct_and_equal_the_general_path(batch):
    """A calibrated int8 model (pynn.compression.quantization.quantize) runs its int8 layers
    through the plan's direct runners (weight sums and buffers made once), with the general
    path's very bits: a CNN whose codes stay uint8 between layers, and an MLP whose K = 37
    leaves its rows to be padded to whole groups of 4."""
    from pynn.compression.quantization import quantize

    rng = np.random.default_rng(17)
    float_cnn = pynn.Sequential([
        L.Input((11, 9, 3)),
        L.Conv2D(7, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(5, (2, 3), strides=(1, 2)), L.Flatten(),
        L.Dense(6, activation="relu"), L.Dense(3)])
    float_mlp = pynn.Sequential([L.Input((37,)), L.Dense(29, activation="relu"), L.Dense(5)])
    for model, shape, want_runners in (
            (float_cnn, (11, 9, 3), ["_Int8Gemm", "_Int8MaxPool2D", "_Int8Gemm", "_Flatten",
                                     "_Int8Gemm", "_Int8Gemm"]),
            (float_mlp, (37,), ["_Int8Gemm", "_Int8Gemm"])):
        randomize(model, rng)
        int8 = quantize(model, rand(rng, (64,) + shape), "minmax")
        x = rand(rng, (batch,) + shape)
        want = general(int8, [x])[0]
        for _ in range(2):  # the first call validates; the second runs the prepared steps
            got = int8.predict_on_batch(x)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
        assert runners(int8, [x]) == want_runners
        # one row: each static Dense step is one native call (quant.Int8Row)
        rows = [r.row for r in plan_of(int8, [x]).steps if type(r).__name__ == "_Int8Gemm"
                and r.g is None]
        assert rows and all((row is not None) == (batch == 1) for row in rows)
        # one request to the MLP: those calls in a row, as the model's lane (the CNN's
        # int8 convolutions have none); from 8 threads too
        lane = int8._inference.lane
        assert (lane is not None) == (batch == 1 and model is float_mlp)
        if lane is not None:
            xs = [rand(rng, (1,) + shape) for _ in range(8)]
            wants = [general(int8, [x1])[0] for x1 in xs]
            hammer_equal(int8.predict_on_batch, xs, wants, 20)
            assert lane(xs[0][:, :-1]) is None and lane(xs[0].tolist()) is None
            assert lane(xs[0].astype(np.float64)) is None
        # and the int8 model still answers like the float one, to quantization error
        assert_close(got, model.predict_on_batch(x), 0.1, "int8 against float")


@pytest.mark.parametrize("batch", [1, 6])
def test_dynamic_int8_models_run_direct_and_equal_the_general_path(batch):
    """model.quantize("int8") (each batch quantized by its own range): the plan's direct
    runners make the scale, zero point and corrections per call as the layers do, bit for
    bit; a batch holding a NaN or an infinity is a clear error on both paths."""
    rng = np.random.default_rng(18)
    model = pynn.Sequential([
        L.Input((10, 7, 2)), L.Conv2D(6, 3, padding="same", activation="relu"),
        L.Conv2D(5, 2, strides=2), L.Flatten(), L.Dense(9, activation="relu"), L.Dense(4)])
    randomize(model, rng)
    model.quantize("int8")
    for _ in range(3):
        x = rand(rng, (batch, 10, 7, 2)) * rng.uniform(0.5, 3.0)  # a new range each call
        np.testing.assert_array_equal(model.predict_on_batch(x), general(model, [x])[0])
    assert runners(model, [x]) == ["_Int8Gemm", "_Int8Gemm", "_Flatten", "_Int8Gemm",
                                   "_Int8Gemm"]
    for bad in (np.nan, np.inf):
        x[0, 1, 2, 1] = bad
        for path in (model.predict_on_batch, lambda x: general(model, [x])):
            with pytest.raises(ValueError, match=r"QuantizedConv2D 'conv2d_\d+': dynamic int8 "
                                                 r"quantization needs finite inputs, got a "
                                                 r"batch ranging from"):
                path(x)


def test_dynamic_operands_are_the_layers_numpy():
    """native/quant.pyx's _dynamic_operands (the dynamic runner's one call) against
    QuantizedDense._int8_matmul's NumPy on batches of either sign, on one side of zero only,
    all zeros, tiny ranges and rounding ties: the same zero point, codes, multiplier and
    corrections; None for NaN or inf."""
    from pynn._native import quant
    from pynn.layers.quantized import activation_params

    rng = np.random.default_rng(19)
    units, k = 13, 10
    wq = rng.integers(-127, 128, (units, k)).astype(np.int8)
    packed = quant.int8_pack_weights(wq)
    wsum = np.empty(units, np.int64)
    quant._weight_sums(packed, wsum)
    w_scale = rng.uniform(1e-3, 1e-2, units)
    bias = rng.normal(0, 1, units)
    batches = [np.zeros(k), np.array([1.0, 2.0] * 5), np.array([-2.0, -1.0] * 5),
               np.array([-1.0, 254.0] * 5), np.array([-0.5, 0.5] * 5),
               np.array([-1.5, 1.0] * 5)]
    batches += [rng.normal(0, s, k) for s in (10.0, 1e-3, 1.0) for _ in range(30)]
    for x in batches:
        x = x.astype(np.float32)
        for b in (bias, None):
            x_scale, x_zp = activation_params(np.array([x.min(), x.max()]))
            per_unit = x_scale * w_scale
            bias_q = None if b is None else np.clip(np.rint(b / per_unit), -2**31,
                                                    2**31 - 1).astype(np.int32)
            want = np.empty(units, np.int64), np.empty(units, np.int32)
            quant._fold_corrections(wsum, bias_q, x_zp, packed.shape[1], *want)
            xq = np.empty(k, np.uint8)
            mult = np.empty(units, np.float32)
            got = np.empty(units, np.int64), np.empty(units, np.int32)
            zp, _ = quant._dynamic_operands(x, xq, w_scale, b, wsum, packed.shape[1], mult,
                                            *got)
            assert zp == x_zp
            np.testing.assert_array_equal(xq, quant.quantize_forward(x, x_scale, x_zp))
            np.testing.assert_array_equal(mult, per_unit.astype(np.float32))
            np.testing.assert_array_equal(got[0], want[0])
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(k, np.float32)
        x[3] = bad
        assert quant._dynamic_operands(x, np.empty(k, np.uint8), w_scale, bias, wsum,
                                       packed.shape[1], np.empty(units, np.float32),
                                       np.empty(units, np.int64),
                                       np.empty(units, np.int32)) is None


def test_multi_thread_plan_pools_without_argmax(num_threads):
    """A plan too large for one thread also pools through native/infer.pyx's kernel (no
    argmax; output rows split over the threads), with the public op's values."""
    rng = np.random.default_rng(20)
    model = pynn.Sequential([
        L.Input((41, 39, 8)), L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(3, strides=2, padding="same"), L.Flatten(), L.Dense(5)])
    randomize(model, rng)
    x = rand(rng, (17, 41, 39, 8))
    want = general(model, [x])[0]
    for threads in (2, 3):
        num_threads(threads)
        model._inference = None  # a plan made under this thread count
        np.testing.assert_array_equal(model.predict_on_batch(x), want)
        np.testing.assert_array_equal(model.predict_on_batch(x), want)
        assert not plan_of(model, [x]).serial
        assert runners(model, [x])[1] == "_MaxPool2DValues"


def pool_pairs_cnn(activation="relu", pool=(2, 2), pool_strides=None, width=23):
    return pynn.Sequential([
        L.Input((width, 21, 5)), L.Conv2D(9, 3, padding="same", activation=activation),
        L.MaxPooling2D(pool, strides=pool_strides), L.Conv2D(6, (2, 3), activation="relu"),
        L.MaxPooling2D(padding="same"), L.Flatten(), L.Dense(4, activation="softmax")])


@pytest.mark.parametrize("activation, pool, pool_strides", [
    ("relu", (2, 2), None), ("linear", (3, 2), (4, 3)), ("tanh", (2, 3), None),
    ("relu", (1, 1), None)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_multi_thread_plan_runs_a_conv_and_its_pool_as_one_step(
        activation, pool, pool_strides, threads, num_threads, monkeypatch):
    """A direct Conv2D whose output only a 'valid' max pooling with windows that tile it
    reads runs with it as one step (_Conv2DPool: band by band, the conv's output never
    whole), windows that leave rows and columns unread included: the two steps' bits, on
    every call and thread count, and the pair-free plan's bits. A pool that pads keeps two
    steps."""
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS_BATCHED", 0)
    num_threads(threads)
    rng = np.random.default_rng(31)
    model = pool_pairs_cnn(activation, pool, pool_strides)
    randomize(model, rng)
    x = rand(rng, (7, 23, 21, 5))
    got = model.predict_on_batch(x)
    assert runners(model, [x])[:3] == ["_Conv2DPool", "_Conv2D", "_MaxPool2DValues"]
    assert not plan_of(model, [x]).serial
    np.testing.assert_array_equal(model.predict_on_batch(x), got)
    monkeypatch.setattr(inference, "PAIR_CONV_POOL", False)
    model._inference = None
    np.testing.assert_array_equal(model.predict_on_batch(x), got)
    assert runners(model, [x])[:2] == ["_Conv2D", "_MaxPool2DValues"]
    assert_close(got, unfolded(model, [x])[0], 1e-5, "eager forward")


def test_conv_pool_pairs_only_where_the_pool_alone_reads_the_conv(num_threads, monkeypatch):
    """No pair where the conv's output is also a model output or another layer's input, or
    the pool is the model's output (then the pair writes the caller's fresh array)."""
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS_BATCHED", 0)
    num_threads(2)
    rng = np.random.default_rng(32)
    inp = L.Input((12, 10, 3))
    conv = L.Conv2D(8, 3, activation="relu")(inp)
    pooled = L.MaxPooling2D()(conv)
    both = pynn.Model(inp, [pooled, conv])
    side = pynn.Model(inp, [pooled, L.GlobalAveragePooling2D()(conv)])
    alone = pynn.Model(inp, pooled)
    x = rand(rng, (5, 12, 10, 3))
    for model, paired in ((both, False), (side, False), (alone, True)):
        randomize(model, rng)
        got = model.predict_on_batch(x)
        want = general(model, [x])
        for g, w in zip(got if isinstance(got, list) else [got], want):
            assert_close(g, w, 1e-6, model.name)
        assert ("_Conv2DPool" in runners(model, [x])) == paired
        if paired:
            again = model.predict_on_batch(x)
            assert again is not got and np.shares_memory(again, got) is False
            np.testing.assert_array_equal(again, got)


def chunky_cnn():
    return pynn.Sequential([
        L.Input((19, 17, 3)), L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(), L.Conv2D(48, 3, padding="same"), L.MaxPooling2D(padding="same"),
        L.Flatten(), L.Dense(9, activation="relu"), L.Dense(4, activation="softmax")])


@pytest.mark.parametrize("threads", [1, 2])
def test_large_batch_runs_its_conv_prefix_in_chunks(threads, num_threads, monkeypatch):
    """A batch whose intermediates outgrow CHUNK_BYTES runs the convolutional prefix a chunk
    of samples at a time (the chunk plan's runners and buffers), the Dense suffix on the
    whole batch: the same answer as the general path to float32 rounding, bit for bit the
    same on every call (the first included) and from every Python thread."""
    monkeypatch.setattr(inference, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    num_threads(threads)
    rng = np.random.default_rng(21)
    model = chunky_cnn()
    randomize(model, rng)
    x = rand(rng, (24, 19, 17, 3))
    first = model.predict_on_batch(x)
    plan = plan_of(model, [x])
    assert plan.chunked is not None
    sub, prefix, suffix, chunk = plan.chunked
    assert chunk == 3 * threads  # 64 KiB per thread over the 20 KiB of conv2d's output
    # the first conv and its pool as one step (_Conv2DPool); the second pool pads: two
    assert [type(r).__name__ for r in prefix][0] == "_Conv2DPool"
    assert [type(r.layer).__name__ for r in prefix] == ["Conv2D", "Conv2D", "MaxPooling2D"]
    assert_close(first, general(model, [x])[0], 1e-5, "chunked plan")
    np.testing.assert_array_equal(model.predict_on_batch(x), first)
    np.testing.assert_array_equal(model.predict(x, batch_size=24, verbose=0), first)
    # this thread holds the chunk plan's buffers and the suffix's, not the whole batch's
    assert getattr(plan._local, "bufs", None) is None
    assert len(plan._local.suffix_bufs) == len(suffix)
    # each chunk's samples as the chunk plan alone answers them
    for start in range(0, 24, chunk):
        assert_close(first[start:start + chunk], model.predict_on_batch(x[start:start + chunk]),
                     1e-6, f"chunk at {start}")
    got, errors = [None] * 4, []

    def worker(k):
        try:
            got[k] = [model.predict_on_batch(x) for _ in range(5)]
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    for results in got:
        for y in results:
            np.testing.assert_array_equal(y, first)


def test_batches_that_do_not_chunk(num_threads, monkeypatch):
    """No chunking where it would not pay or would mix kernels within a batch: the
    intermediates fit, a batch under two chunks, a prime batch (no chunk size divides it)."""
    monkeypatch.setattr(inference, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    num_threads(1)
    rng = np.random.default_rng(22)
    model = chunky_cnn()
    randomize(model, rng)
    for n in (3, 5, 23):
        x = rand(rng, (n, 19, 17, 3))
        assert_close(model.predict_on_batch(x), general(model, [x])[0], 1e-5, f"batch {n}")
        assert plan_of(model, [x]).chunked is None, n


# -- residual MLPs: Dense layers and two-input Adds as one chain call with a program ------


def residual_mlp(blocks=3, width=24, swap=False, second_output=False):
    x = L.Input((19,))
    h = L.Dense(width, activation="relu", name="stem")(x)
    taps = []
    for i in range(blocks):
        a = L.Dense(width + 5, activation="tanh", name=f"a{i}")(h)
        b = L.Dense(width, name=f"b{i}")(a)
        h = L.Add(name=f"add{i}")([b, h] if swap else [h, b])
        taps.append(h)
    out = L.Dense(7, activation="softmax", name="head")(h)
    return pynn.Model(x, [out, taps[0]] if second_output else out)


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_residual_mlp_runs_as_one_chain_call(swap, threads, num_threads, monkeypatch):
    """Dense layers and the Adds of their outputs with earlier values become one native
    call (values in rotating buffers, the Adds in the epilogues): the general path's
    numbers, the same bits at every thread count and row split."""
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    rng = np.random.default_rng(31)
    model = residual_mlp(swap=swap)
    randomize(model, rng)
    x = rand(rng, (37, 19))
    num_threads(1)
    alone = model.predict_on_batch(x)
    num_threads(threads)
    model._inference = None
    got = model.predict_on_batch(x)
    assert runners(model, [x]) == ["_DenseChainRunner"]
    chain = plan_of(model, [x]).steps[0].chain
    assert chain.layers == 8 and chain.values == 3   # three buffers carry every value
    np.testing.assert_array_equal(got, alone)
    assert_close(got, general(model, [x])[0], 1e-6, "residual chain")
    np.testing.assert_array_equal(model.predict_on_batch(x), got)  # the plan's second call


def test_a_residual_mlp_answers_batch_1_through_its_lane():
    """At batch 1 a residual MLP's graph, which one DenseChain program runs whole, is the
    model's lane (DenseChain.predict_one, no Python between its layers), with the plan's
    bits; a model with a second output is not."""
    rng = np.random.default_rng(34)
    model = residual_mlp(width=300)
    randomize(model, rng)
    x = rand(rng, (1, 19))
    model.predict_on_batch(x)
    state = model._inference
    assert state.lane is not None and type(state.lane.__self__).__name__ == "DenseChain"
    want = state.plans[x.shape]._run([x])[0]
    for got in (model.predict_on_batch(x), model(x)):
        np.testing.assert_array_equal(got, want)
    assert_close(want, general(model, [x])[0], 1e-5, "residual lane")
    two = residual_mlp(second_output=True)
    randomize(two, rng)
    two.predict_on_batch(x)
    assert two._inference.lane is None


@pytest.mark.parametrize("residual", [False, True])
def test_a_first_input_that_overflows_keeps_the_chain_and_warns_nothing(residual, recwarn):
    """A plan checks a chain's answer on its first input against the steps it replaces; where
    that input overflows (an exponential layer, huge weights) the infinities agree, so the
    chain stays, and comparing them is no NumPy warning in the caller's console (the check
    once subtracted inf from inf: 'invalid value encountered', and the chain was dropped)."""
    if residual:
        x_in = L.Input((6,))
        h = L.Dense(9, activation="exponential")(x_in)
        h = L.Add()([h, L.Dense(9)(h)])
        model = pynn.Model(x_in, L.Dense(3)(h))
    else:
        model = pynn.Sequential([L.Input((6,)), L.Dense(9, activation="exponential"),
                                 L.Dense(5), L.Dense(3)])
    rng = np.random.default_rng(41)
    randomize(model, rng)
    first = model.layers[1] if residual else model.layers[0]
    first.kernel.value[...] = 40.0     # e^(40 * 6 * 3) overflows: inf and, past it, nan
    x = np.abs(rand(rng, (4, 6))) + 0.5
    got = model.predict_on_batch(x)
    want = general(model, [x])[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isinf(want).any() or np.isnan(want).any(), "the input must overflow"
    assert_close(np.nan_to_num(got, posinf=0, neginf=0), np.nan_to_num(want, posinf=0,
                 neginf=0), 1e-6, "overflowing chain")
    assert "_DenseChainRunner" in runners(model, [x])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    # the next input, finite, through the same chain
    x2 = rand(rng, (4, 6)) * 1e-3
    assert_close(model.predict_on_batch(x2), general(model, [x2])[0], 1e-6, "after overflow")


def test_close_values_takes_nonfinite_values_where_they_agree():
    close = inference._close_values
    a = np.array([1.0, np.inf, -np.inf, np.nan, 2.0], np.float32)
    assert close(a.copy(), a)
    assert close(a + np.float32(5e-6), a)
    assert not close(a + np.float32(5e-5), a)
    for i, v in [(0, np.nan), (1, -np.inf), (2, 3.0), (3, 1.0), (4, np.inf)]:
        b = a.copy()
        b[i] = v
        assert not close(b, a), (i, v)
    assert not close(a[:4], a)
    assert close(a[:0], a[:0])


def test_a_value_the_caller_also_gets_ends_the_chain():
    """An Add's output that is also a model output is not kept inside a chain: the chain
    stops there and the caller gets both outputs right."""
    rng = np.random.default_rng(32)
    model = residual_mlp(second_output=True)
    randomize(model, rng)
    x = rand(rng, (5, 19))
    got = model.predict_on_batch(x)
    want = general(model, [x])
    assert "_DenseChainRunner" in runners(model, [x])
    for g, w in zip(got, want):
        assert_close(g, w, 1e-6, "two outputs")


def test_a_dense_chain_program_against_float64():
    """DenseChain's program (reads, writes and Adds of values) on a skip over two layers,
    against NumPy float64, at several row blocks."""
    from pynn._native.infer import DenseChain

    from pynn.backend.api import ACTIVATIONS

    rng = np.random.default_rng(33)
    k = [rand(rng, (9, 20)) * 0.3, rand(rng, (20, 13)) * 0.3, rand(rng, (13, 9)) * 0.3,
         rand(rng, (9, 4)) * 0.3]
    b = [rand(rng, (20,)), None, rand(rng, (9,)), rand(rng, (4,))]
    acts = [ACTIVATIONS.index(a) for a in ("relu", "tanh", "linear", "linear")]
    # v0 = relu(x k0 + b0); v1 = tanh(v0 k1); v2 = v1 k2 + b2 + x; out = v2 k3 + b3
    program = ([-1, 0, 1, 0], [0, 1, 0, -2], [-3, -3, -1, -3], 2)
    chain = DenseChain(11, k, b, acts, [0.0] * 4, None, program)
    x = rand(rng, (11, 9))
    x64 = x.astype(np.float64)
    v0 = np.maximum(x64 @ k[0] + b[0], 0)
    v1 = np.tanh(v0 @ k[1])
    v2 = v1 @ k[2] + b[2] + x64
    want = v2 @ k[3] + b[3]
    outs = []
    for blocks in (1, 2, 4):
        out = np.empty((11, 4), np.float32)
        chain.run(x, chain.scratch(blocks), out, blocks)
        outs.append(out)
    assert_close(outs[0], want, 1e-5, "program")
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("program, match", [
    (([-1, 0], [0, -2], [-3], 1), "a program of 2, 2, 1 steps for 2 layers"),
    (([-1, 1], [0, -2], [-3, -3], 1), "step 1 of the program reads 1"),
    (([-1, 0], [0, 0], [-3, -3], 1), "step 1 of the program"),
    (([-1, 0], [0, -2], [-3, 1], 1), "step 1 of the program"),
    (([-1, 0], [0, -2], [-3, -1], 1), "layer 1 adds a value of 6 features to its 3"),
    (([-1, -1], [0, -2], [-3, -3], 1), r"kernel of shape \(5, 3\) does not follow 6"),
])
def test_a_dense_chain_program_is_checked(program, match):
    from pynn._native.infer import DenseChain

    rng = np.random.default_rng(34)
    with pytest.raises(ValueError, match=match):
        DenseChain(2, [rand(rng, (6, 5)), rand(rng, (5, 3))], [None, None], [0, 0], [0, 0],
                   None, program)


def test_small_multi_thread_plans_keep_the_workers_awake(num_threads, monkeypatch):
    """A multi-thread plan under KEEP_WARM_MAX_MACS asks for keep-warm on each call; a
    serial plan and a large one do not."""
    calls = []
    monkeypatch.setattr(pynn._config, "keep_warm", lambda: calls.append(1))
    rng = np.random.default_rng(35)
    model = mlp()
    randomize(model, rng)
    x = rand(rng, (41, 37))
    num_threads(2)
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    assert plan_of(model, [x]).serial and not calls
    monkeypatch.setattr(inference, "SERIAL_MAX_MACS", 0)
    model._inference = None
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    # both calls ran the plan (the first also made it: a DenseChain answers with its bits)
    assert len(calls) == 2
    monkeypatch.setattr(inference, "KEEP_WARM_MAX_MACS", 0)
    model.predict_on_batch(x)
    assert len(calls) == 2


def text_classifier(mask_zero=False):
    return pynn.Sequential([L.Input((11,)), L.Embedding(50, 8, mask_zero=mask_zero),
                            L.GlobalAveragePooling1D(), L.Dense(6, activation="relu"),
                            L.Dense(3, activation="softmax")])


def test_an_embedding_model_takes_the_plan_masked_or_not():
    """Integer token ids through Embedding and GlobalAveragePooling1D: the prepared plan,
    with the general path's numbers, with mask_zero too (the pooling takes the mask); a bad
    id is the Embedding's own error either way."""
    rng = np.random.default_rng(36)
    model = text_classifier()
    randomize(model, rng)
    x = rng.integers(0, 50, (9, 11)).astype(np.int32)
    got = model.predict_on_batch(x)
    assert isinstance(model._inference, inference._State)
    assert runners(model, [x.astype(np.float32)]) == ["_EmbeddingMean", "_DenseChainRunner"]
    np.testing.assert_array_equal(model.predict_on_batch(x), got)
    assert_close(got, general(model, [x.astype(np.float32)])[0], 1e-6, "embedding plan")
    bad = x.copy()
    bad[3, 4] = 50
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        model.predict_on_batch(bad)
    masked = text_classifier(mask_zero=True)
    randomize(masked, rng)
    x[:, 8:] = 0  # padded
    x[2] = 0      # all padding
    got = masked.predict_on_batch(x)
    assert isinstance(masked._inference, inference._State)
    assert runners(masked, [x.astype(np.float32)]) == ["_Embedding", "_Generic",
                                                        "_DenseChainRunner"]
    np.testing.assert_array_equal(masked.predict_on_batch(x), got)
    # (the all-padding row's mean is 0 / 0, NaN, as Keras's)
    np.testing.assert_array_equal(got, general(masked, [x.astype(np.float32)])[0])
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        masked.predict_on_batch(bad)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_embedding_mean_against_float64_and_the_two_ops(threads, num_threads):
    """native/infer.pyx embedding_mean: the mean of the gathered rows (float64 reference),
    with the Embedding-then-pooling ops' bits at any thread count; a bad index raises."""
    from pynn._native import infer
    from pynn.backend import cpu

    rng = np.random.default_rng(37)
    num_threads(threads)
    for n, t, v, d in ((7, 13, 29, 5), (70, 31, 97, 33), (1, 1, 3, 1)):
        ids = rng.integers(0, v, (n, t)).astype(np.int32)
        table = rand(rng, (v, d))
        out = np.empty((n, d), np.float32)
        infer.embedding_mean(ids, table, out)
        assert_close(out, table.astype(np.float64)[ids].mean(axis=1), 1e-6, "embedding_mean")
        gathered = cpu.embedding_forward(ids, table)
        want = cpu.global_avgpool2d_forward(gathered.reshape(n, 1, t, d))
        np.testing.assert_array_equal(out, want)
    ids[0, 0] = 3
    with pytest.raises(ValueError, match=r"1 indices outside \[0, 3\)"):
        infer.embedding_mean(ids, table, out)
    with pytest.raises(ValueError, match="do not fit"):
        infer.embedding_mean(ids, table, np.empty((2, 1), np.float32))


def test_embedding_rows_ids_gathers_checked_ids():
    """native/infer.pyx embedding_rows_ids: table[ids] exactly (the Embedding op's bits) for
    int32, int64 and float32 ids on odd sizes; False for ids it does not take (out of
    range, negative, not whole, another dtype, layout or shape), which the plan's runner
    then hands to the layer's own call."""
    from pynn._native import infer
    from pynn.backend import cpu

    rng = np.random.default_rng(38)
    for n, t, v, d in ((7, 13, 29, 5), (3, 1, 97, 33), (1, 1, 3, 1)):
        ids = rng.integers(0, v, (n, t)).astype(np.int32)
        table = rand(rng, (v, d))
        want = cpu.embedding_forward(ids, table)
        np.testing.assert_array_equal(want, table[ids])
        for dtype in (np.int32, np.int64, np.float32):
            out = np.full((n, t, d), np.nan, np.float32)
            assert infer.embedding_rows_ids(ids.astype(dtype), table, out)
            np.testing.assert_array_equal(out, want)
    out = np.empty((n, t, d), np.float32)
    for bad in (ids + v, ids - 1, ids.astype(np.float32) + 0.5, ids.astype(np.int16),
                np.asfortranarray(np.repeat(ids, 2, axis=1)), ids[:, :0], ids.reshape(-1)):
        assert not infer.embedding_rows_ids(bad, table, out)
    assert not infer.embedding_rows_ids(ids.tolist(), table, out)
    assert not infer.embedding_rows_ids(ids, table, np.empty((n, t, d + 1), np.float32))
    # embedding_kept_rows: one sample's rows of its nonzero ids (the steps its mask keeps)
    table = rand(rng, (29, 7))
    one = rng.integers(1, 29, (1, 11))
    for zeros in ([], [0, 1, 2], [10], [3, 5, 6]):
        ids = one.copy()
        ids[0, zeros] = 0
        for dtype in (np.int32, np.int64, np.float32):
            got = infer.embedding_kept_rows(ids.astype(dtype), table)
            np.testing.assert_array_equal(got, table[ids[ids != 0]][None])
    for bad in (one * 0, one + 29, -one, one.astype(np.float32) + 0.5, one.astype(np.int16),
                np.concatenate([one, one]), one[:, :0], one.reshape(-1)):
        assert infer.embedding_kept_rows(bad, table) is None


def test_an_embeddings_plan_runner_takes_any_ids_the_layer_does():
    """A plan's Embedding (its rows gathered natively) answers as the layer: the same bits
    for int32, int64 and float32 ids, an int16 input through the layer's own call, the
    layer's error for a bad id, and fresh arrays when it is the model's output."""
    rng = np.random.default_rng(40)
    model = pynn.Sequential([L.Input((6,)), L.Embedding(17, 5)])
    randomize(model, rng)
    ids = rng.integers(0, 17, (3, 6))
    want = model.layers[0].embeddings.value[ids]
    for dtype in (np.float32, np.int32, np.int64):
        got = model.predict_on_batch(ids.astype(dtype))
        np.testing.assert_array_equal(got, want)
        assert got is not model.predict_on_batch(ids.astype(dtype))
    assert runners(model, [ids.astype(np.float32)]) == ["_Embedding"]
    runner = plan_of(model, [ids.astype(np.float32)]).steps[0]
    np.testing.assert_array_equal(runner.run(ids.astype(np.int16), runner.allocate())[0], want)
    bad = ids.astype(np.float32)
    bad[1, 2] = 17
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        model.predict_on_batch(bad)
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        runner.run(bad, runner.allocate())


@pytest.mark.parametrize("batch", [1, 9])
def test_an_embedding_models_one_thread_plan_is_one_native_call(batch):
    """At batch 1, or at any batch of a one-thread plan, an Embedding-and-mean then a Dense
    chain (the text model) is the model's lane (EmbeddingMeanChain): the plan's bits for
    int32, int64 and float32 ids, from 8 threads too; ids it does not take (out of range in
    any row, not whole, another dtype, order or shape) go the checked way, a bad one with
    the Embedding's own error."""
    rng = np.random.default_rng(39)
    model = text_classifier()
    randomize(model, rng)
    x = rng.integers(0, 50, (batch, 11)).astype(np.int32)
    want = model.predict_on_batch(x)
    state = model._inference
    assert type(state.lane.__self__).__name__ == "EmbeddingMeanChain"
    plan = state.plans[x.shape]
    np.testing.assert_array_equal(want, plan._run([x.astype(np.float32)])[0])
    for ids in (x, x.astype(np.int64), x.astype(np.float32)):
        assert state.lane(ids) is not None
        np.testing.assert_array_equal(model.predict_on_batch(ids), want)
        np.testing.assert_array_equal(model(ids), want)
    assert_close(want, general(model, [x.astype(np.float32)])[0], 1e-6, "embedding lane")
    for odd in (x.astype(np.int16), np.asfortranarray(np.repeat(x, 2, 0))[:batch],
                x.astype(np.float32) + 0.5, np.concatenate([x, x], 1),
                np.concatenate([x, x], 0)):
        assert state.lane(odd) is None
    bad = x.copy()
    bad[-1, 4] = 50
    assert state.lane(bad) is None
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        model.predict_on_batch(bad)
    with pytest.raises(ValueError, match="Embedding 'embedding"):
        model.predict_on_batch(bad.astype(np.float32) - 60)
    xs = [rng.integers(0, 50, (batch, 11)).astype(np.int32) for _ in range(8)]
    hammer_equal(model.predict_on_batch, xs, [plan._run([v.astype(np.float32)])[0]
                                             for v in xs], 30)


def test_a_batch_lane_leaves_the_batch_1_lane_its_slot():
    """The model keeps one lane to try before any plan lookup: a batch-1 lane's, which a
    larger batch's lane (EmbeddingMeanChain of several rows) does not take over; that one
    serves its own plan's calls, integer ids unconverted. Both batches answer with their
    plans' bits, alternated."""
    rng = np.random.default_rng(44)
    model = text_classifier()
    randomize(model, rng)
    one, nine = (rng.integers(0, 50, (n, 11)).astype(np.int32) for n in (1, 9))
    want_one, want_nine = model.predict_on_batch(one), model.predict_on_batch(nine)
    state = model._inference
    assert state.lane_rows == 1 and state.lane(one) is not None and state.lane(nine) is None
    plan = state.plans[nine.shape]
    assert plan.lane is not None
    calls = []
    lane = plan.lane
    plan.lane = lambda x: calls.append(x) or lane(x)
    for _ in range(3):
        np.testing.assert_array_equal(model.predict_on_batch(nine), want_nine)
        np.testing.assert_array_equal(model.predict_on_batch(one), want_one)
    # the int32 ids as they came (the model's input is float32: converted, each would be
    # checked as a float)
    assert len(calls) == 3 and all(c.dtype == np.int32 for c in calls)
    np.testing.assert_array_equal(want_nine, plan._run([nine.astype(np.float32)])[0])


def test_embedding_mean_ids_checks_ids_in_c_with_embedding_means_bits():
    """embedding_mean_ids: int32, int64 and float32 ids (whole numbers in range) give
    embedding_mean's bits; any other ids return False and leave the output untouched."""
    from pynn._native import infer

    rng = np.random.default_rng(43)
    table = rand(rng, (37, 9))
    ids = rng.integers(0, 37, (13, 7)).astype(np.int32)
    want = np.empty((13, 9), np.float32)
    infer.embedding_mean(ids, table, want)
    for x in (ids, ids.astype(np.int64), ids.astype(np.float32)):
        out = np.full((13, 9), 7.0, np.float32)
        assert infer.embedding_mean_ids(x, table, out) is True
        np.testing.assert_array_equal(out, want)
    bad_range, bad_whole, bad_nan = (ids.astype(np.float32) for _ in range(3))
    bad_range[12, 6] = 37
    bad_whole[3, 2] += 0.25
    bad_nan[0, 0] = np.nan
    negative = ids.astype(np.int64)
    negative[5, 5] = -1
    for x in (bad_range, bad_whole, bad_nan, negative, ids.astype(np.int16),
              np.asfortranarray(ids), ids[:, :3], ids[:12], ids.reshape(-1), [[1, 2]]):
        out = np.full((13, 9), 7.0, np.float32)
        assert infer.embedding_mean_ids(x, table, out) is False
        assert (out == 7.0).all()


def test_an_embedding_mean_keeps_the_poolings_keepdims():
    rng = np.random.default_rng(38)
    model = pynn.Sequential([L.Input((9,)), L.Embedding(20, 6),
                             L.GlobalAveragePooling1D(keepdims=True), L.Flatten(),
                             L.Dense(4)])
    x = rng.integers(0, 20, (5, 9)).astype(np.int32)
    got = model.predict_on_batch(x)
    assert runners(model, [x.astype(np.float32)])[0] == "_EmbeddingMean"
    np.testing.assert_array_equal(got, general(model, [x.astype(np.float32)])[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_an_add_and_its_activation_run_as_one_pass(activation, num_threads):
    """A residual block's close (an Add whose only reader is an Activation) is one inference
    step writing into the plan's buffer (native/merge.pyx's pass with the activation): the
    separate layers' numbers bit for bit, at one and two threads. An Add whose output is
    read twice keeps its own call."""
    rng = np.random.default_rng(41)
    x_in = L.Input((9, 7, 5))
    a = L.Conv2D(5, 3, padding="same", activation="relu")(x_in)
    b = L.Conv2D(5, 1)(a)
    h = L.Activation(activation)(L.Add()([x_in, b]))
    s = L.Add()([h, a])  # read by two layers: not fused
    out = L.Dense(3)(L.Flatten()(L.Concatenate()([s, L.Activation("relu")(s)])))
    model = pynn.Model(x_in, out)
    randomize(model, rng)
    x = rand(rng, (3, 9, 7, 5))
    want = unfolded(model, [x])[0]
    for n in (1, 2):
        num_threads(n)
        model._inference = None
        for _ in range(2):  # the plan's first call, then its runners
            got = model.predict_on_batch(x)
            assert_close(got, want, 1e-6, "fused add")
        kinds = runners(model, [x])
        assert kinds.count("_Add") == 1 and kinds.count("_Generic") >= 2, kinds
        add = next(r for r in plan_of(model, [x]).steps if type(r).__name__ == "_Add")
        y, _ = add.run([x, x * 0.5], add.allocate())
        act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
        np.testing.assert_allclose(y, act(x + x * 0.5), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["lstm", "gru", "bidirectional", "stateful"])
def test_recurrent_models_take_the_plan(kind):
    """A recurrent layer passes an input mask on and makes none itself, so a model with
    one takes the prepared plan (its Dense head a direct runner) with the general path's
    numbers; a stateful layer's states advance once per predict either way."""
    rng = np.random.default_rng(42)

    def build():
        if kind == "bidirectional":
            rnn = L.Bidirectional(L.GRU(6, return_sequences=True))
        else:
            cell = L.GRU if kind == "gru" else L.LSTM
            rnn = cell(7, stateful=kind == "stateful")
        model = pynn.Sequential([L.Input((5, 3), batch_size=2 if kind == "stateful" else None),
                                 rnn, L.Flatten() if kind == "bidirectional" else L.Identity(),
                                 L.Dense(4, activation="softmax")])
        return model

    model, twin = build(), build()
    randomize(model, rng)
    twin.set_weights(model.get_weights())
    x = rand(rng, (2, 5, 3))
    for _ in range(3):  # the plan's first call, then its runners; states advance alike
        got = model.predict_on_batch(x)
        want = general(twin, [x])[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert isinstance(model._inference, inference._State)
    assert runners(model, [x])[-1] == "_Dense"
    # the recurrent step's multiply-adds count towards the plan's threads
    gates = {"lstm": 4, "stateful": 4}.get(kind, 3)
    units = 6 if kind == "bidirectional" else 7
    step = 2 * 5 * (3 + units) * gates * units * (2 if kind == "bidirectional" else 1)
    assert plan_of(model, [x]).macs >= step
    if kind in ("lstm", "gru"):
        # its own runner, whose op's per-call caches (h, the gates, the cell state or rh)
        # count in the plan's bytes: a large batch's run recycles them
        assert runners(model, [x])[0] == "_Recurrent"
        rows = {"lstm": 6, "gru": 5}[kind]
        assert plan_of(model, [x]).nbytes >= 2 * 5 * units * rows * 4
    if kind == "bidirectional":  # each direction its own _Recurrent, bytes counted
        assert runners(model, [x])[0] == "_Bidirectional"
        assert plan_of(model, [x]).nbytes >= 2 * (2 * 5 * units * 5 * 4)
        one = x[:1]
        np.testing.assert_array_equal(model.predict_on_batch(one), general(twin, [one])[0])
        assert runners(model, [one])[0] == "_Bidirectional"


def masked_text_model(kind, kw=None, bidirectional=False, stacked=False):
    kw = dict(kw or {})
    layers = [L.Input((9,), dtype="int32"), L.Embedding(40, 6, mask_zero=True)]
    if stacked:
        layers.append(getattr(L, kind)(5, **{**kw, "return_sequences": True}))
    rnn = getattr(L, kind)(7, **kw)
    layers += [L.Bidirectional(rnn) if bidirectional else rnn,
               L.Dense(3, activation="softmax")]
    return pynn.Sequential(layers)


MASKED_CASES = [("SimpleRNN", {}, False, False), ("LSTM", {}, False, False),
                ("GRU", {}, False, False), ("GRU", {"reset_after": False}, False, False),
                ("LSTM", {"go_backwards": True}, False, False), ("GRU", {}, True, False),
                ("LSTM", {}, False, True), ("SimpleRNN", {"return_sequences": True}, True, True)]


@pytest.mark.parametrize("kind,kw,bidirectional,stacked", MASKED_CASES)
def test_a_masked_sequence_model_takes_the_plan(kind, kw, bidirectional, stacked):
    """Embedding(mask_zero=True) on int32 ids, then recurrent layers: the plan carries the
    mask to each step; one request's recurrent step runs its kept steps through the packed
    one-row path (_Recurrent.run_masked), with the general path's bits on every padding
    (before, after, inside, none, all) and on a batch of mixed lengths, from the first call
    on; a padded request answers as its unpadded tokens do where the last token is kept."""
    rng = np.random.default_rng(52)
    model = masked_text_model(kind, kw, bidirectional, stacked)
    randomize(model, rng)
    ids = rng.integers(1, 40, (1, 9)).astype(np.int32)
    paddings = [ids.copy() for _ in range(5)]
    paddings[0][:, :4] = 0
    paddings[1][:, 6:] = 0
    paddings[2][:, [1, 2, 5]] = 0
    paddings[4][:] = 0
    for x in paddings:
        first = model.predict_on_batch(x)
        for got in (model.predict_on_batch(x), np.asarray(model(x))):
            np.testing.assert_array_equal(got, first)
        np.testing.assert_array_equal(first, general(model, [x])[0])
    assert isinstance(model._inference, inference._State)
    kinds = runners(model, [ids])
    assert kinds[0] == "_Embedding" and kinds[-1] == "_Dense"
    assert kinds[-2] == ("_Bidirectional" if bidirectional else "_Recurrent")
    # one request without its stack of sequences: the lane (the kept ids' rows gathered,
    # the recurrence, the head); a bad id is the Embedding's error, every way in
    lane = model._inference.lane
    assert (lane is None) == (stacked or kw.get("return_sequences", False))
    if lane is not None:
        for x in paddings[:4]:
            np.testing.assert_array_equal(lane(x), general(model, [x])[0])
        assert lane(paddings[4]) is None  # nothing kept: the plan's steps answer
    bad = paddings[0].copy()
    bad[0, 5] = 40
    for call in (model.predict_on_batch, model, model.predict):
        with pytest.raises(ValueError, match="Embedding 'embedding"):
            call(bad)
    # ids as a list, or as a dict by input name: the same answer the checked way
    for given in (paddings[0].tolist(), {model.input_names[0]: paddings[0]}):
        np.testing.assert_array_equal(model.predict_on_batch(given),
                                      model.predict_on_batch(paddings[0]))
    batch = np.concatenate(paddings)
    np.testing.assert_array_equal(model.predict_on_batch(batch), general(model, [batch])[0])
    assert_close(model.predict_on_batch(batch)[:4], np.concatenate(
        [model.predict_on_batch(x) for x in paddings[:4]]), 1e-5, "rows alone")
    if not (bidirectional or stacked or kw.get("go_backwards")):
        # (the same weights on 5 ids)
        short = pynn.Sequential([L.Input((5,), dtype="int32"), L.Embedding(40, 6),
                                 getattr(L, kind)(7, **kw), L.Dense(3, activation="softmax")])
        short.set_weights(model.get_weights())
        np.testing.assert_array_equal(model.predict_on_batch(paddings[0]),
                                      short.predict_on_batch(ids[:, 4:]))


def test_a_masked_plan_hammered_from_threads():
    """One masked LSTM model called from 8 threads (its padded-text lane), each request
    padded its own way: each thread's answers are the single-threaded ones."""
    rng = np.random.default_rng(53)
    model = masked_text_model("LSTM")
    randomize(model, rng)
    xs = rng.integers(1, 40, (16, 1, 9)).astype(np.int32)
    for i, x in enumerate(xs):
        x[:, :i % 9] = 0
    want = [model.predict_on_batch(x) for x in xs]
    assert model._inference.lane is not None
    hammer_equal(model.predict_on_batch, xs[:8], want[:8], 30)
    hammer_equal(model, xs[8:], want[8:], 30)


def test_integer_ids_take_the_plan_in_a_dtype_that_casts_safely():
    """An int32 input takes the plan for ids of int32 or a narrower type; wider or float ids
    go to the general path, which checks their range and whole values."""
    rng = np.random.default_rng(54)
    model = masked_text_model("GRU")
    randomize(model, rng)
    ids = rng.integers(0, 40, (2, 9))
    want = general(model, [ids.astype(np.int32)])[0]
    for dtype in (np.int32, np.int16, np.uint8, np.int64, np.float64):
        np.testing.assert_array_equal(model.predict_on_batch(ids.astype(dtype)), want)
    assert isinstance(model._inference, inference._State)
    assert plan_of(model, [ids]) is not None
    big = ids.copy()
    big[0, 0] = 2 ** 40
    with pytest.raises(ValueError, match="outside its range"):
        model.predict_on_batch(big)
    with pytest.raises(ValueError, match="whole numbers"):
        model.predict_on_batch(ids + 0.5)
    assert inference._State.of(model).inputs(ids) is None
    assert inference._State.of(model).inputs(ids.astype(np.int16)) is not None
    one = ids[:1].copy()  # one request, through the lane
    one[0, :3] = 0
    want = general(model, [one.astype(np.int32)])[0]
    for dtype in (np.int32, np.int16, np.int64, np.float32, np.float64):
        np.testing.assert_array_equal(model.predict_on_batch(one.astype(dtype)), want)
        np.testing.assert_array_equal(model(one.astype(dtype)), want)
    assert model._inference.lane is not None
    big = one.copy()
    big[0, 4] = 2 ** 40
    with pytest.raises(ValueError, match="outside its range"):
        model.predict_on_batch(big)
    with pytest.raises(ValueError, match="whole numbers"):
        model.predict_on_batch(one.astype(np.float32) + 0.5)


def test_a_free_length_model_plans_a_length_the_second_time_and_keeps_the_last_used(
        monkeypatch):
    """Input((None,)): each request length is a signature. A length met once takes the
    general path (making a plan costs more than that call); met again it gets its plan;
    the least recently used plan goes first past MAX_SIGNATURES_FREE (a fixed-shape model
    still plans on its first call). Every answer is the general path's."""
    monkeypatch.setattr(inference, "MAX_SIGNATURES_FREE", 3)
    rng = np.random.default_rng(55)
    model = pynn.Sequential([L.Input((None,), dtype="int32"), L.Embedding(30, 5),
                             L.GRU(4), L.Dense(2)])
    randomize(model, rng)
    xs = {t: rng.integers(1, 30, (1, t)).astype(np.int32) for t in (3, 4, 5, 6)}
    for t in (3, 3, 4, 5, 4, 6):
        np.testing.assert_array_equal(model.predict_on_batch(xs[t]),
                                      general(model, [xs[t]])[0])
    state = model._inference
    assert state.free and list(state.plans) == [(1, 3), (1, 4)]  # 5 and 6 met once
    for t in (5, 3, 6):
        model.predict_on_batch(xs[t])
    assert list(state.plans) == [(1, 5), (1, 3), (1, 6)]  # 4 was the least recently used
    np.testing.assert_array_equal(model(xs[4]), general(model, [xs[4]])[0])
    assert list(state.plans) == [(1, 3), (1, 6), (1, 4)]
    fixed = masked_text_model("GRU")
    fixed.predict_on_batch(xs[3][:, :1].repeat(9, axis=1))
    assert not fixed._inference.free and len(fixed._inference.plans) == 1


def test_a_fixed_shape_model_past_its_plans_evicts_the_least_recently_used():
    """Batch sizes are signatures too: a model plans each new one at once until it holds
    MAX_SIGNATURES (one call each), then a new one by the second-time rule, evicting the
    least recently used (it cleared all its plans before). Every answer is the general
    path's."""
    rng = np.random.default_rng(56)
    model = mlp()
    randomize(model, rng)
    cap = inference.MAX_SIGNATURES
    xs = {n: rand(rng, (n, 37)) for n in range(1, cap + 3)}
    for n in range(1, cap + 1):
        model.predict_on_batch(xs[n])
    plans = model._inference.plans
    assert list(plans) == [(n, 37) for n in range(1, cap + 1)]
    model.predict_on_batch(xs[2])  # used again: now the most recent
    for n in (cap + 1, cap + 1, cap + 2):
        assert_close(model.predict_on_batch(xs[n]), general(model, [xs[n]])[0], 1e-6,
                     f"batch {n}")
    # (batch 1 answers through the lane, which needs no plan of the list: it went first)
    assert list(plans) == [(n, 37) for n in range(3, cap + 1)] + [(2, 37), (cap + 1, 37)]
    np.testing.assert_array_equal(model.predict_on_batch(xs[1]),
                                  model._inference.lane(xs[1]))


def test_a_padded_embedding_mean_classifier_is_a_lane():
    """Embedding(mask_zero=True) -> GlobalAveragePooling1D -> Dense head at batch 1: the
    lane gathers the nonzero ids' rows and averages them as the masked pooling does
    (infer.kept_rows_mean: float64 sums of float32(1 / K) times each row, rounded once),
    the general path's bits for every padding; an all-padding request (0 / 0: NaN, as
    Keras's) takes the plan's steps; keepdims=True takes no lane."""
    from pynn._native import infer

    rng = np.random.default_rng(57)
    rows = rand(rng, (1, 7, 5))
    got = infer.kept_rows_mean(rows, np.float32(1 / 7))
    np.testing.assert_allclose(got, rows.astype(np.float64).mean(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="one sample"):
        infer.kept_rows_mean(np.concatenate([rows, rows]), np.float32(0.5))
    model = text_classifier(mask_zero=True)
    randomize(model, rng)
    ids = rng.integers(1, 50, (1, 11)).astype(np.int32)
    cases = [ids.copy() for _ in range(4)]
    cases[0][:, :4] = 0
    cases[1][:, [2, 5, 9]] = 0
    cases[3][:] = 0
    for x in cases:
        np.testing.assert_array_equal(model.predict_on_batch(x), general(model, [x])[0])
    lane = model._inference.lane
    assert lane is not None
    for x in cases[:3]:
        np.testing.assert_array_equal(lane(x), general(model, [x])[0])
    assert lane(cases[3]) is None and np.isnan(model.predict_on_batch(cases[3])).all()
    kept = pynn.Sequential([L.Input((11,)), L.Embedding(50, 8, mask_zero=True),
                            L.GlobalAveragePooling1D(keepdims=True), L.Flatten(),
                            L.Dense(3)])
    randomize(kept, rng)
    np.testing.assert_array_equal(kept.predict_on_batch(cases[0]),
                                  general(kept, [cases[0]])[0])
    assert kept._inference.lane is None
