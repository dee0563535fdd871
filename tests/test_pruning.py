"""Pruning (pynn.compression.pruning, structured): the masks of the fused optimizer updates
(native/optim.pyx, opencl/optim.cl), TF-MOT's schedules, the PruneLowMagnitude wrapper over
every prunable layer and optimizer, strip_pruning, saving, and structured pruning."""

import zipfile

import numpy as np
import pytest

import pynn
from pynn import layers, optimizers
from pynn.compression import (
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    UpdatePruningStep,
    prune_low_magnitude,
    prune_structured,
    sparsity,
    strip_pruning,
)
from pynn.compression.structured import kept_units
from pynn.layers.pruning import magnitude_mask
from tests.backend_util import rand
from tests.reference.gradcheck import check_layer


@pytest.fixture
def rng():
    return np.random.default_rng(1818)


# -- the mask operand of every optimizer update -------------------------------------------
# (op, number of slot arrays after g, the hyper-parameters after the slots). Slots start
# nonzero so that the test sees the mask zero them; accumulators start positive.
UPDATES = [
    ("sgd_update", 1, (0.1, 0.9, True, 1.0, 0.0, 0.01)),
    ("adam_update", 3, (0.01, 0.9, 0.999, 1e-7, 3, 1.0, 0.0, 0.004)),
    ("rmsprop_update", 3, (0.01, 0.9, 0.5, 1e-7, 1.0, 0.0, 0.01)),
    ("adagrad_update", 1, (0.1, 1e-7, 1.0, 0.5, 0.01)),
    ("nadam_update", 2, (0.01, 0.9, 0.999, 1e-7, 2, 0.8, 1.0, 0.0, 0.01)),
    ("adamax_update", 2, (0.01, 0.9, 0.999, 1e-7, 2, 1.0, 0.0, 0.01)),
    ("adadelta_update", 2, (1.0, 0.95, 1e-7, 1.0, 0.0, 0.01)),
    ("ftrl_update", 2, (0.1, -0.5, 0.01, 0.01, 0.0, 0.0, 1.0, 0.0, 0.01)),
    ("lion_update", 1, (0.01, 0.9, 0.99, 1.0, 0.0, 0.01)),
]


@pytest.mark.parametrize("op,nslots,hyper", UPDATES, ids=[u[0] for u in UPDATES])
@pytest.mark.parametrize("shape", [(7,), (5, 33), (3, 2, 65)])
def test_masked_update_zeroes_pruned_and_matches_unmasked(target, rng, op, nslots, hyper,
                                                           shape):
    """Pruned elements: w and every slot exactly 0 after the step (FTRL's accumulator, which
    must stay positive, unchanged). Kept elements: bit for bit the unmasked update's result
    (which test_optim / test_optimizers check against the float64 references)."""
    dt = target.dtype
    w = rand(rng, shape, dt)
    g = rand(rng, shape, dt)
    slots = [np.abs(rand(rng, shape, dt)) + dt.type(0.1) for _ in range(nslots)]
    mask = (rng.random(shape) > 0.6).astype(np.uint8)
    mask.flat[0], mask.flat[-1] = 0, 1

    def run(with_mask):
        arrays = [target.up(a.copy()) for a in [w, g, *slots]]
        m = target.up(mask) if with_mask else None
        target.op(op)(*arrays, *hyper, m)
        return [target.down(a) for a in arrays]

    masked, plain = run(True), run(False)
    pruned = mask == 0
    for i, (got, want) in enumerate(zip(masked, plain)):
        if i == 1:
            continue  # g is only read
        name = "w" if i == 0 else f"slot {i - 1}"
        np.testing.assert_array_equal(got[~pruned], want[~pruned], err_msg=f"{op} {name}")
        if op == "ftrl_update" and i == 2:
            np.testing.assert_array_equal(got[pruned], slots[0][pruned], err_msg=f"{op} {name}")
        else:
            assert not np.any(got[pruned]), f"{op}: {name} of pruned elements is not zero"
    if target.is_opencl:  # the same step as the CPU's
        from pynn.backend import cpu

        arrays = [a.copy() for a in [w, g, *slots]]
        getattr(cpu, op)(*arrays, *hyper, mask)
        for got, want in zip(masked, arrays):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,message", [
    (np.ones((3, 4), np.uint8), (r"adam_update: 'mask' must have the shape of 'w' \(3, 5\), "
                                r"got \(3, 4\)")),
    (np.ones((3, 5), np.float32), r"adam_update: 'mask' must (be uint8|have dtype uint8)"),
])
def test_mask_bad_input_names_op_expected_and_got(backend, bad, message):
    w = backend.up(np.ones((3, 5), np.float32))
    m, v = backend.up(np.zeros((3, 5), np.float32)), backend.up(np.zeros((3, 5), np.float32))
    with pytest.raises((ValueError, TypeError), match=message):
        backend.op("adam_update")(w, backend.up(np.ones((3, 5), np.float32)), m, v, None,
                                  0.1, 0.9, 0.999, 1e-7, 1, 1.0, 0.0, 0.0,
                                  backend.up(bad, bad.dtype))


# -- schedules (TF-MOT's semantics) --------------------------------------------------------
def test_constant_sparsity_prunes_on_frequency_inside_range():
    s = ConstantSparsity(0.75, begin_step=10, end_step=40, frequency=10)
    got = [s(step) for step in (0, 9, 10, 15, 20, 40, 50)]
    assert got == [(False, 0.75), (False, 0.75), (True, 0.75), (False, 0.75), (True, 0.75),
                   (True, 0.75), (False, 0.75)]
    assert ConstantSparsity(0.5, 0)(10**6) == (True, 0.5)  # end_step -1: no end


def test_polynomial_decay_follows_tf_mot_formula():
    s = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=300, power=3, frequency=50)
    for step in (0, 100, 150, 200, 300, 400):
        p = min(1.0, max(0.0, (step - 100) / 200))
        want = 0.8 + (0.2 - 0.8) * (1 - p) ** 3
        should, got = s(step)
        assert got == pytest.approx(want, abs=1e-12)
        assert should == (100 <= step <= 300 and (step - 100) % 50 == 0)


@pytest.mark.parametrize("make,message", [
    (lambda: ConstantSparsity(1.0, 0), (r"ConstantSparsity: `target_sparsity` must be a float "
                                       r"in \[0, 1\), got 1.0")),
    (lambda: ConstantSparsity(0.5, -1), r"`begin_step` must be >= 0, got -1"),
    (lambda: ConstantSparsity(0.5, 0, frequency=0), r"`frequency` must be >= 1, got 0"),
    (lambda: PolynomialDecay(0.1, 0.9, 10, 5), (r"`end_step` must be -1 or >= begin_step 10, "
                                               r"got 5")),
    (lambda: PolynomialDecay(0.1, 0.9, 0, -1), r"PolynomialDecay: `end_step` must be set"),
])
def test_schedule_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_magnitude_mask_prunes_exactly_the_smallest(rng):
    w = rand(rng, (13, 7))
    mask = magnitude_mask(w, 0.6)
    assert mask.dtype == np.uint8 and mask.shape == w.shape
    assert np.count_nonzero(mask == 0) == round(0.6 * w.size)
    assert np.abs(w[mask == 0]).max() <= np.abs(w[mask == 1]).min()


def test_block_mask_keeps_or_prunes_whole_blocks(rng):
    w = rand(rng, (3, 3, 4, 6))  # viewed as (36, 6), blocks of (4, 2)
    mask = magnitude_mask(w, 0.5, (4, 2)).reshape(36, 6)
    blocks = mask.reshape(9, 4, 3, 2)
    assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3)))
    assert np.count_nonzero(blocks[:, 0, :, 0] == 0) == round(0.5 * 27)


# -- the wrapper on every prunable layer and optimizer -------------------------------------
def _model(kind):
    if kind == "dense":
        return pynn.Sequential([layers.Input((11,)), layers.Dense(13, activation="relu"),
                                layers.Dense(3)]), (11,), 3
    if kind == "conv2d":
        return pynn.Sequential([layers.Input((7, 6, 3)), layers.Conv2D(9, 3, activation="relu"),
                                layers.Flatten(), layers.Dense(3)]), (7, 6, 3), 3
    if kind == "conv1d":
        return pynn.Sequential([layers.Input((9, 4)), layers.Conv1D(7, 3, activation="relu"),
                                layers.Flatten(), layers.Dense(3)]), (9, 4), 3
    if kind == "lstm":
        return pynn.Sequential([layers.Input((5, 4)), layers.LSTM(6), layers.Dense(3)]), \
            (5, 4), 3
    if kind == "embedding":
        return pynn.Sequential([layers.Input((6,)), layers.Embedding(17, 5), layers.Flatten(),
                                layers.Dense(3)]), None, 3
    raise AssertionError(kind)


OPTIMIZERS = {
    "sgd_momentum": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.1),
    "rmsprop_momentum": lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
    "adagrad": lambda: optimizers.Adagrad(0.1),
    "nadam": lambda: optimizers.Nadam(0.01),
    "lion": lambda: optimizers.Lion(0.001, weight_decay=0.1),
}


def _data(rng, in_shape, n=24, k=3):
    if in_shape is None:
        return rng.integers(0, 17, (n, 6)).astype(np.int32), rng.integers(0, k, n)
    return rand(rng, (n, *in_shape)), rng.integers(0, k, n)


@pytest.mark.parametrize("kind", ["dense", "conv2d", "conv1d", "lstm", "embedding"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_pruned_weights_stay_zero_through_training(rng, kind, opt):
    """Masks set at step 0 (ConstantSparsity, frequency larger than the run): every later step
    of every optimizer leaves the pruned weights exactly zero, and the kept ones train."""
    model, in_shape, _ = _model(kind)
    x, y = _data(rng, in_shape)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.7, 0, frequency=1000))
    assert all(isinstance(layer, PruneLowMagnitude) for layer in pruned.layers
               if type(layer).__name__ != "Flatten")
    pruned.compile(OPTIMIZERS[opt](), pynn.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    first = {v.path: np.array(v.value) for v in pruned.weights}
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    for layer in pruned.layers:
        if not isinstance(layer, PruneLowMagnitude):
            continue
        for path, mask in layer.masks().items():
            w = pruned.get_layer(layer.name).layer
            value = next(np.array(v.value) for v in w.weights if v.path == path)
            assert mask is not None and np.count_nonzero(mask == 0) == round(0.7 * mask.size)
            assert not np.any(value[mask == 0]), f"{opt}: pruned weights of {path} moved"
            assert np.any(value[mask == 1] != first[path][mask == 1]), f"{path} did not train"
    for name, value in sparsity(pruned).items():
        assert value >= 0.69, name  # round(0.7 * size) of size


def test_polynomial_decay_reaches_final_sparsity_during_fit(rng):
    model, in_shape, _ = _model("dense")
    x, y = _data(rng, in_shape, n=40)
    pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.8, 0, 8, frequency=2))
    pruned.compile("adam", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    assert sparsity(pruned) == pytest.approx({"dense": 0.8, "dense_1": 0.8}, abs=0.02) or \
        all(abs(v - 0.8) < 0.02 for v in sparsity(pruned).values())


def test_block_pruning_of_a_model(rng):
    model, in_shape, _ = _model("dense")
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0), block_size=(1, 13))
    pruned.compile("sgd", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(rng, in_shape)
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    kernel = pruned.layers[0].layer.kernel.value  # (11, 13): a block is a whole input row
    rows_zero = np.all(kernel == 0, axis=1)
    assert np.count_nonzero(rows_zero) == round(0.5 * 11)
    assert np.all(np.any(kernel[~rows_zero] != 0, axis=1))


def test_strip_pruning_gives_the_plain_model_with_the_same_outputs(rng, tmp_path):
    model, in_shape, _ = _model("conv2d")
    x, y = _data(rng, in_shape)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.85, 0))
    pruned.compile("adam", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    plain = strip_pruning(pruned)
    assert [type(layer).__name__ for layer in plain.layers] == ["Conv2D", "Flatten", "Dense"]
    np.testing.assert_array_equal(plain.predict(x, verbose=0), pruned.predict(x, verbose=0))
    assert sparsity(plain) == sparsity(pruned)
    # Saved compressed: the pruned kernels' zeros cost (almost) nothing.
    dense_path, pruned_path = tmp_path / "dense.pynn", tmp_path / "pruned.pynn"
    model.save(dense_path)
    plain.save(pruned_path)
    assert _weight_bytes(pruned_path) < 0.35 * _weight_bytes(dense_path)
    loaded = pynn.load_model(pruned_path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), plain.predict(x, verbose=0))


@pytest.mark.parametrize("inner", ["LSTM", "GRU"])
def test_a_pruned_masked_text_model_keeps_its_masks(rng, inner):
    """Embedding(mask_zero=True) -> recurrent -> Dense, every layer wrapped: the wrappers pass
    masks through their inner layers (made, consumed), so the pruned model computes what the
    plain one does, in training too, and its stripped twin answers as it does."""
    ids = rng.integers(1, 30, (12, 7))
    ids[:, 4:] = 0
    ids[3, 1:] = 0
    y = rng.integers(0, 3, 12)
    model = pynn.Sequential([layers.Input((7,), dtype="int32"),
                             layers.Embedding(30, 6, mask_zero=True),
                             getattr(layers, inner)(5), layers.Dense(3)])
    model.set_weights([rng.uniform(-0.4, 0.4, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    pruned = prune_low_magnitude(model, ConstantSparsity(0.3, 0))
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude"] * 3
    np.testing.assert_allclose(pruned.predict(ids, verbose=0), model.predict(ids, verbose=0),
                               rtol=1e-6, atol=1e-7)
    loss = pynn.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned.compile("sgd", loss)
    model.compile("sgd", loss)
    # before any mask prunes a weight (the schedule's first update is at the first batch),
    # one evaluation: the same loss as the plain model's
    np.testing.assert_allclose(pruned.evaluate(ids, y, verbose=0),
                               model.evaluate(ids, y, verbose=0), rtol=1e-6)
    pruned.fit(ids, y, batch_size=4, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    plain = strip_pruning(pruned)
    np.testing.assert_allclose(plain.predict(ids, verbose=0), pruned.predict(ids, verbose=0),
                               rtol=1e-6, atol=1e-7)


def _weight_bytes(path):
    with zipfile.ZipFile(path) as zf:
        return sum(i.compress_size for i in zf.infolist() if i.filename.startswith("weights/"))


def test_pruned_model_saves_loads_and_resumes_with_its_masks(rng, tmp_path):
    model, in_shape, _ = _model("dense")
    x, y = _data(rng, in_shape)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.6, 0, frequency=1000))
    pruned.compile("adam", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    pruned.save(tmp_path / "p.pynn")
    loaded = pynn.load_model(tmp_path / "p.pynn")
    assert [type(layer).__name__ for layer in loaded.layers] == ["PruneLowMagnitude"] * 2
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    zeros = {v.path: np.array(v.value) == 0 for v in loaded.weights if v.name == "kernel"}
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    for v in loaded.weights:
        if v.name == "kernel":
            assert not np.any(np.array(v.value)[zeros[v.path]]), v.path


def test_wrapper_config_round_trip_and_layer_pruning():
    inner = layers.Dense(5, activation="tanh", name="d")
    wrapped = prune_low_magnitude(inner, PolynomialDecay(0.1, 0.5, 2, 9, power=2, frequency=3),
                                  block_size=(2, 1))
    config = wrapped.get_config()
    again = PruneLowMagnitude.from_config(config)
    assert again.get_config() == config
    assert again.name == "d" and type(again.layer) is layers.Dense
    assert again.pruning_schedule.get_config() == wrapped.pruning_schedule.get_config()
    assert "PruneLowMagnitude" in layers.LAYERS


def test_wrapper_backward_matches_finite_differences(rng, float64):
    layer = PruneLowMagnitude(layers.Dense(4, activation="tanh"), ConstantSparsity(0.5, 0))
    x = rand(rng, (3, 5), np.float64)
    layer(x)
    layer.update_pruning_step(0)
    check_layer(layer, x, rng)


@pytest.mark.parametrize("make,message", [
    (lambda: prune_low_magnitude(layers.Flatten()),
     None),
    (lambda: prune_low_magnitude("dense"), r"expected a pynn Layer or Model, got str"),
    (lambda: PruneLowMagnitude(layers.Dense(2), block_size=(0, 1)),
     r"block_size must be two ints >= 1, got \(0, 1\)"),
])
def test_prune_bad_input(make, message):
    if message is None:  # a layer without prunable weights is refused once built
        wrapped = make()
        with pytest.raises(ValueError, match=r"Flatten has no weight magnitude pruning "
                                             r"applies to"):
            wrapped.build((None, 3, 2))
        return
    with pytest.raises(ValueError, match=message):
        make()


def test_update_pruning_step_needs_a_pruned_model(rng):
    model, in_shape, _ = _model("dense")
    model.compile("sgd", pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(rng, in_shape)
    with pytest.raises(ValueError, match="has no PruneLowMagnitude layer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])


@pytest.mark.opencl
def test_pruned_training_on_opencl_keeps_zeros(rng):
    previous = pynn.get_device() if hasattr(pynn, "get_device") else "cpu"
    pynn.set_device("opencl")
    try:
        model, in_shape, _ = _model("conv2d")
        x, y = _data(rng, in_shape)
        pruned = prune_low_magnitude(model, ConstantSparsity(0.75, 0, frequency=1000))
        pruned.compile(optimizers.Adam(0.01, weight_decay=0.01),
                       pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
        for layer in pruned.layers:
            if isinstance(layer, PruneLowMagnitude):
                for path, mask in layer.masks().items():
                    value = next(np.asarray(v.value.get()) for v in layer.weights
                                 if v.path == path)
                    assert not np.any(value[mask == 0]), path
                    assert np.count_nonzero(mask == 0) == round(0.75 * mask.size)
    finally:
        pynn.set_device(previous)


# -- structured pruning ---------------------------------------------------------------------
def test_kept_units_by_l1_and_l2():
    kernel = np.array([[3.0, 1.0, 0.0, 2.0],
                       [0.0, 1.0, 2.5, 2.0]])  # L1: 3, 2, 2.5, 4   L2: 3, 1.41, 2.5, 2.83
    np.testing.assert_array_equal(kept_units(kernel, 0.5, "l1"), [0, 3])
    np.testing.assert_array_equal(kept_units(kernel, 0.5, "l2"), [0, 3])
    np.testing.assert_array_equal(kept_units(kernel, 0.25, "l1"), [0, 2, 3])
    np.testing.assert_array_equal(kept_units(kernel, 0.75, "l2"), [0])


def test_structured_pruning_shrinks_the_chain_and_keeps_kept_outputs(rng):
    model = pynn.Sequential([
        layers.Input((8, 7, 3)), layers.Conv2D(10, 3, name="c1"),
        layers.BatchNormalization(name="bn"), layers.Activation("relu", name="act"),
        layers.MaxPooling2D(2, name="pool"), layers.Flatten(name="flat"),
        layers.Dense(9, activation="relu", name="d1"), layers.Dense(4, name="out")])
    x = rand(rng, (5, 8, 7, 3))
    model.compile("adam", "mse")
    model.fit(x, rand(rng, (5, 4)), epochs=1, verbose=0)  # moving statistics move
    small = prune_structured(model, 0.4, "l2")
    shapes = {layer.name: [w.shape for w in layer.get_weights()] for layer in small.layers}
    assert shapes["c1"] == [(3, 3, 3, 6), (6,)]
    assert shapes["bn"] == [(6,)] * 4
    assert shapes["d1"] == [(3 * 2 * 6, 5), (5,)]
    assert shapes["out"] == [(5, 4), (4,)]
    assert small.count_params() < model.count_params()
    keep = kept_units(model.get_layer("c1").kernel.value, 0.4, "l2")
    # The kept filters compute what they did, through conv, BN (inference) and pooling.
    big, little = x, x
    for name in ("c1", "bn", "act", "pool"):
        big = model.get_layer(name)(big)
        little = small.get_layer(name)(little)
        np.testing.assert_allclose(little, np.asarray(big)[..., keep], rtol=1e-5, atol=1e-6)
    # d1's kept units read exactly the kept filters' flattened features (channels fastest);
    # its own units are ranked by the norms of what is left of their kernel columns.
    flat = np.asarray(model.get_layer("flat")(big))
    d1 = model.get_layer("d1")
    kernel, bias = np.asarray(d1.kernel.value), np.asarray(d1.bias.value)
    kept_features = np.isin(np.arange(flat.shape[1]) % big.shape[-1], keep)
    keep_d1 = kept_units(kernel[kept_features], 0.4, "l2")
    want = np.maximum(flat[:, kept_features] @ kernel[kept_features][:, keep_d1]
                      + bias[keep_d1], 0)
    np.testing.assert_allclose(small.get_layer("d1")(small.get_layer("flat")(little)), want,
                               rtol=1e-5, atol=1e-5)


def test_structured_pruning_of_dead_units_changes_nothing(rng):
    """Units whose kernel columns are zero (and bias zero) contribute relu(0) = 0: removing
    them must leave the model's outputs exactly as they were."""
    model = pynn.Sequential([layers.Input((6,)), layers.Dense(8, activation="relu"),
                             layers.Dense(7, activation="relu"), layers.Dense(2)])
    weights = model.get_weights()
    weights[0][:, [1, 4, 6]] = 0
    weights[2][:, [0, 3, 5]] = 0
    weights[3][[0, 3, 5]] = 0
    weights[1][[1, 4, 6]] = 0
    weights[3][:] = np.abs(weights[3]) + 0.1
    weights[3][[0, 3, 5]] = 0
    model.set_weights(weights)
    small = prune_structured(model, 3 / 8 + 1e-9, "l1")
    assert [layer.get_weights()[0].shape for layer in small.layers] == [(6, 5), (5, 4), (4, 2)]
    x = rand(rng, (9, 6))
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make,message", [
    (lambda m: prune_structured(m, 1.0), r"fraction must be a float in \[0, 1\), got 1.0"),
    (lambda m: prune_structured(m, 0.5, "l3"), r"norm must be 'l1' or 'l2', got 'l3'"),
    (lambda m: prune_structured(pynn.Model(m.inputs, m.outputs), 0.5),
     r"expected a Sequential model \(a chain\), got Model"),
])
def test_structured_bad_input(make, message):
    model = pynn.Sequential([layers.Input((4,)), layers.Dense(3), layers.Dense(2)])
    with pytest.raises(ValueError, match=message):
        make(model)
