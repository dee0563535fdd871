"""Adaptive pooling: the adaptive_{avg,max}pool ops (native/pool.pyx, opencl/pool.cl) against
their float64 references (tests/reference/pool_ref.py), thread counts, and Keras 3's
AdaptiveAveragePooling1D/2D/3D and AdaptiveMaxPooling1D/2D/3D layers: central differences,
Keras parity of outputs and input gradients, OpenCL against the CPU, configs, bad inputs.
Keras files and ONNX export are in tests/test_keras_files.py and tests/test_onnx_export.py.
"""

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn._native import info
from tests.backend_util import check_op, keras_on_torch, rand
from tests.reference import pool_ref as ref
from tests.reference.gradcheck import check_layer

# (x shape (N, *spatial, C), output_size): divisible bins, overlapping bins (the output does
# not divide the input), outputs larger than the input (repeated pixels), 1x1 outputs, a
# channel count past a vector block, an empty batch.
CASES = [
    ((2, 8, 3), (4,)),
    ((2, 7, 3), (3,)),
    ((1, 5, 2), (9,)),
    ((3, 13, 1), (1,)),
    ((2, 6, 8, 3), (3, 4)),
    ((2, 7, 5, 3), (3, 2)),
    ((1, 5, 7, 2), (9, 11)),
    ((2, 5, 6, 65), (4, 4)),
    ((1, 1, 1, 3), (2, 3)),
    ((0, 4, 4, 2), (2, 2)),
    ((1, 4, 6, 8, 2), (2, 3, 4)),
    ((2, 5, 4, 7, 3), (3, 3, 2)),
    ((1, 3, 2, 4, 2), (5, 3, 7)),
]
IDS = [f"{x}-o{o}" for x, o in CASES]


def _distinct(rng, shape, dtype):
    """Random values without ties (ties are tested on their own)."""
    size = int(np.prod(shape))
    values = rng.permutation(size).reshape(shape) / max(size, 1) - 0.5
    if size:
        values.flat[0] = 0.75
    return values.astype(dtype)


# -- the ops against the float64 references ------------------------------------------------


def test_bins_are_torchs_rule():
    # start floor(o*L/O), end ceil((o+1)*L/O): overlapping where O does not divide L,
    # repeated pixels where O > L
    assert ref.adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert ref.adaptive_bins(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert ref.adaptive_bins(2, 5) == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]


@pytest.mark.parametrize("shape,out", CASES, ids=IDS)
def test_adaptive_avgpool_forward_and_backward(target, shape, out):
    rng = np.random.default_rng(len(shape) * 31 + sum(shape))
    x = rand(rng, shape, target.dtype)
    _, y = check_op(target, "adaptive_avgpool_forward", x, out,
                    ref=ref.adaptive_avgpool_forward_ref, kind="reduction")
    assert y.shape == (shape[0],) + out + (shape[-1],)
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "adaptive_avgpool_backward", dy, shape,
             ref=ref.adaptive_avgpool_backward_ref, kind="reduction")


@pytest.mark.parametrize("shape,out", CASES, ids=IDS)
def test_adaptive_maxpool_forward_and_backward(target, shape, out):
    rng = np.random.default_rng(len(shape) * 17 + sum(shape))
    x = _distinct(rng, shape, target.dtype)
    _, (y, argmax) = check_op(target, "adaptive_maxpool_forward", x, out,
                              ref=ref.adaptive_maxpool_forward_ref, dtype=None)
    assert argmax.dtype == np.int32
    dy = rand(rng, y.shape, target.dtype)
    check_op(target, "adaptive_maxpool_backward", dy, argmax, shape,
             ref=ref.adaptive_maxpool_backward_ref)


def test_adaptive_maxpool_ties_keep_the_first_pixel(backend):
    # a constant map: every bin's first pixel in row-major order wins, so argmax is the bin
    # start; the gradient of overlapping bins adds there
    x = np.ones((1, 5, 7, 2), np.float32)
    _, (y, argmax) = check_op(backend, "adaptive_maxpool_forward", x, (3, 4),
                              ref=ref.adaptive_maxpool_forward_ref, dtype=None)
    starts_h = [s for s, _ in ref.adaptive_bins(5, 3)]
    starts_w = [s for s, _ in ref.adaptive_bins(7, 4)]
    want = np.array([[h * 7 + w for w in starts_w] for h in starts_h])
    np.testing.assert_array_equal(argmax[0, :, :, 0], want)


def test_adaptive_pools_are_the_same_for_any_thread_count():
    from pynn.backend import cpu

    rng = np.random.default_rng(5)
    x = rand(rng, (4, 23, 19, 97))   # past the kernels' serial threshold
    previous = info.get_max_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            info.set_num_threads(threads)
            y = cpu.adaptive_avgpool_forward(x, (7, 5))
            m, a = cpu.adaptive_maxpool_forward(x, (6, 9))
            dx = cpu.adaptive_avgpool_backward(np.cos(y), x.shape)
            dm = cpu.adaptive_maxpool_backward(np.sin(m), a, x.shape)
            results.append((y, m, a, dx, dm))
    finally:
        info.set_num_threads(previous)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.opencl
def test_opencl_bins_of_long_axes(backend_opencl):
    # o*L past 2^31 (65536 * 70000): the bins' products are taken in 64 bits
    from pynn.backend import cpu

    x = rand(np.random.default_rng(9), (1, 70000, 1))
    dy = rand(np.random.default_rng(10), (1, 65537, 1))
    check_op(backend_opencl, "adaptive_avgpool_forward", x, (65537,), kind="reduction")
    _, (_, argmax) = check_op(backend_opencl, "adaptive_maxpool_forward", x, (65537,),
                              dtype=None)
    check_op(backend_opencl, "adaptive_avgpool_backward", dy, x.shape, kind="reduction")
    np.testing.assert_array_equal(argmax, cpu.adaptive_maxpool_forward(x, (65537,))[1])


# -- bad operands: clear errors naming the op ------------------------------------------------

BAD_OPS = [
    ("adaptive_avgpool_forward", lambda: (np.ones((2, 3), np.float32), (2,)),
     "1 to 3 spatial axes"),
    ("adaptive_avgpool_forward", lambda: (np.ones((2, 3, 4, 5, 6, 7), np.float32), (2,)),
     "1 to 3 spatial axes"),
    ("adaptive_maxpool_forward", lambda: (np.ones((2, 5, 3), np.float32), (2, 2)),
     "output_size"),
    ("adaptive_maxpool_forward", lambda: (np.ones((2, 5, 4, 3), np.float32), (0, 2)),
     "output_size"),
    ("adaptive_avgpool_forward", lambda: (np.ones((2, 5, 4, 3), np.float32), "big"),
     "output_size"),
    ("adaptive_avgpool_forward", lambda: (np.ones((2, 0, 4, 3), np.float32), (2, 2)),
     "spatial axis"),
    ("adaptive_avgpool_backward", lambda: (np.ones((2, 3, 3), np.float32), (2, 5, 4)),
     "dy"),
    ("adaptive_avgpool_backward", lambda: (np.ones((2, 3, 3), np.float32), (2, 5, 4, 3)),
     "rank"),
    ("adaptive_maxpool_backward",
     lambda: (np.ones((1, 2, 1), np.float32), np.array([[[0], [9]]], np.int32), (1, 4, 1)),
     "argmax"),
    ("adaptive_maxpool_backward",
     lambda: (np.ones((1, 2, 1), np.float32), np.zeros((1, 3, 1), np.int32), (1, 4, 1)),
     "argmax"),
]


@pytest.mark.parametrize("name,args,match", BAD_OPS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_OPS)])
def test_bad_operands_name_the_op(name, args, match):
    from pynn.backend import cpu

    with pytest.raises((ValueError, TypeError), match=match) as info_:
        getattr(cpu, name)(*args())
    assert name in str(info_.value)


# -- the layers ------------------------------------------------------------------------------

LAYER_CASES = [
    ("AdaptiveAveragePooling1D", {"output_size": 3}, (2, 7, 3)),
    ("AdaptiveMaxPooling1D", {"output_size": 4}, (2, 7, 3)),
    ("AdaptiveAveragePooling1D", {"output_size": 9}, (1, 4, 2)),
    ("AdaptiveMaxPooling1D", {"output_size": (6,)}, (2, 4, 2)),
    ("AdaptiveAveragePooling2D", {"output_size": (3, 2)}, (2, 5, 7, 2)),
    ("AdaptiveMaxPooling2D", {"output_size": 3}, (2, 5, 7, 2)),
    ("AdaptiveAveragePooling2D", {"output_size": (7, 4), "data_format": "channels_first"},
     (2, 3, 5, 3)),
    ("AdaptiveMaxPooling2D", {"output_size": (2, 5), "data_format": "channels_first"},
     (1, 2, 4, 3)),
    ("AdaptiveAveragePooling3D", {"output_size": (2, 3, 2)}, (1, 3, 5, 4, 2)),
    ("AdaptiveMaxPooling3D", {"output_size": 2}, (1, 3, 5, 4, 2)),
    ("AdaptiveMaxPooling3D", {"output_size": (4, 2, 3), "data_format": "channels_first"},
     (1, 2, 3, 4, 5)),
]
LAYER_IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(LAYER_CASES)]


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_gradients_by_central_differences(float64, seeded, name, kwargs, shape):
    layer = getattr(layers, name)(**kwargs)
    x = _distinct(seeded, shape, np.float64)   # no ties: max is differentiable there
    y = check_layer(layer, x, seeded)
    assert y.shape == layer.compute_output_shape(shape)


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_config_round_trip(seeded, name, kwargs, shape):
    layer = getattr(layers, name)(**kwargs)
    x = rand(seeded, shape)
    y = layer(x)
    config = layer.get_config()
    assert layers.LAYERS[name] is type(layer)
    assert config["data_format"] == kwargs.get("data_format", "channels_last")
    assert len(config["output_size"]) == int(name[-2])
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(x), y)


@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_matches_keras_outputs_and_gradients(name, kwargs, shape):
    keras = keras_on_torch()
    import torch

    rng = np.random.default_rng(7)
    x = _distinct(rng, shape, np.float32)
    klayer = getattr(keras.layers, name)(**kwargs)
    xt = torch.tensor(x, requires_grad=True)
    yt = klayer(xt)
    r = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (yt * torch.tensor(r)).sum().backward()

    layer = getattr(layers, name)(**kwargs)
    y = layer(x, training=True)
    dx = layer.backward(r)
    assert y.shape == tuple(yt.shape) == tuple(klayer.compute_output_shape(shape))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert layer.get_config()["output_size"] == list(klayer.get_config()["output_size"])


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


@pytest.mark.opencl
@pytest.mark.parametrize("name,kwargs,shape", LAYER_CASES, ids=LAYER_IDS)
def test_opencl_layer_matches_cpu(restore_device, name, kwargs, shape):
    from tests.opencl_util import skip_without_opencl

    skip_without_opencl()
    x = _distinct(np.random.default_rng(sum(shape)), shape, np.float32)
    results = {}
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        ops = pynn.backend.current()
        layer = getattr(layers, name)(**kwargs)
        y = layer(ops.asarray(x), training=True)
        dy = np.cos(np.arange(int(np.prod(y.shape)))).reshape(y.shape).astype(np.float32)
        dx = layer.backward(ops.asarray(dy))
        results[device] = [ops.to_numpy(y), ops.to_numpy(dx)]
    for got, want in zip(results["opencl"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_with_adaptive_pooling_trains_saves_and_loads(seeded, tmp_path):
    # inputs of two spatial sizes through one model: the adaptive pool fixes the Dense width
    inputs = pynn.Input((None, None, 3))
    h = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = layers.AdaptiveMaxPooling2D((3, 2))(h)
    outputs = layers.Dense(2)(layers.Flatten()(layers.AdaptiveAveragePooling2D(2)(h)))
    model = pynn.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    for hw in ((9, 7), (5, 6)):
        x, y = rand(seeded, (8, *hw, 3)), rand(seeded, (8, 2))
        before = model.evaluate(x, y, verbose=0)
        model.fit(x, y, epochs=3, batch_size=8, verbose=0)
        assert model.evaluate(x, y, verbose=0) < before
    model.save(tmp_path / "adaptive.pynn")
    loaded = pynn.load_model(tmp_path / "adaptive.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


BAD_LAYERS = [
    (lambda: layers.AdaptiveAveragePooling2D((2, 2, 2)), "output_size"),
    (lambda: layers.AdaptiveMaxPooling1D((2, 3)), "output_size"),
    (lambda: layers.AdaptiveMaxPooling3D(0), "output_size"),
    (lambda: layers.AdaptiveAveragePooling1D(2.5), "output_size"),
    (lambda: layers.AdaptiveAveragePooling2D(2, data_format="channels_middle"),
     "data_format"),
]


@pytest.mark.parametrize("make,match", BAD_LAYERS,
                         ids=[str(i) for i in range(len(BAD_LAYERS))])
def test_bad_arguments_name_the_layer(make, match):
    with pytest.raises(ValueError, match=match) as raised:
        make()
    assert "Adaptive" in str(raised.value)


@pytest.mark.parametrize("layer,shape", [
    (layers.AdaptiveAveragePooling2D(2, name="pool2"), (2, 5, 3)),
    (layers.AdaptiveMaxPooling1D(2, name="pool1"), (2, 5, 4, 3)),
    (layers.AdaptiveMaxPooling3D(2, name="pool3"), (2, 5, 4, 3)),
], ids=["2d-on-3d", "1d-on-4d", "3d-on-4d"])
def test_bad_input_shapes_name_the_layer(layer, shape):
    with pytest.raises(ValueError, match=f"'{layer.name}': expected input shape"):
        layer(np.ones(shape, np.float32))
