"""Bad and awkward input through the public API: a clear ValueError/TypeError (naming the layer,
the expected and the given shapes) or a correct result — never a crash, never silent damage."""

import numpy as np
import pytest

import pynn
from pynn import layers


def mlp():
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(4, activation="relu", name="hidden"),
                             layers.Dense(3, activation="softmax", name="out")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def cnn(shape=(6, 6, 2)):
    model = pynn.Sequential([layers.Input(shape), layers.Conv2D(3, 3, padding="same"),
                             layers.MaxPooling2D(2, padding="same"), layers.Flatten(),
                             layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def rng_data(n=12):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


# -- shapes -----------------------------------------------------------------------------------
def test_shape_mismatch_at_build_names_layer_and_shapes():
    dense = layers.Dense(4, name="d1")
    dense.build((None, 6))
    model = pynn.Sequential([dense])
    with pytest.raises(ValueError, match=r"Layer 'd1' \(Dense\) expected input shape "
                                         r"\(None, 6\), got \(None, 7\)"):
        model.build((None, 7))
    with pytest.raises(ValueError, match=r"Conv2D '\w+': expected input shape \(None, H, W, C\), "
                                         r"got \(None, 5\)"):
        pynn.Sequential([layers.Input((5,)), layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=r"MaxPooling2D '\w+': expected input shape"):
        pynn.Sequential([layers.Input((5, 4)), layers.MaxPooling2D()])
    with pytest.raises(ValueError, match=r"Reshape '\w+': cannot reshape \(None, 2, 3\)"):
        pynn.Sequential([layers.Input((2, 3)), layers.Reshape((4, 2))])


def test_shape_mismatch_at_call_time():
    model = mlp()
    for bad in (np.zeros((3, 6)), np.zeros((3, 5, 1)), np.zeros((3, 4))):
        with pytest.raises(ValueError, match=r"expects input shape \(None, 5\), got x with "
                                             r"shape \(None, "):
            model.predict(bad)
    layer = model.layers[0]
    with pytest.raises(ValueError, match=r"Layer 'hidden' \(Dense\) expected input shape "
                                         r"\(None, 5\), got \(None, 8\)"):
        layer(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="x must have a batch axis"):
        model.predict(np.zeros(5))


def test_target_shape_mismatch():
    model = mlp()
    x, y = rng_data()
    with pytest.raises(ValueError, match="x has 12 samples but y has shape"):
        model.fit(x, y[:10], verbose=0)
    with pytest.raises(ValueError, match=r"sparse labels must have shape \(None\)"):
        model.fit(x, np.zeros((12, 3)), verbose=0)
    categorical = pynn.Sequential([layers.Input((5,)), layers.Dense(3, activation="softmax")])
    categorical.compile("sgd", "categorical_crossentropy")
    with pytest.raises(ValueError, match="integer labels need loss='sparse_categorical"):
        categorical.fit(x, y, verbose=0)


# -- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.uint8, np.float16, bool])
def test_numeric_dtypes_are_converted(dtype):
    model = mlp()
    x, _ = rng_data()
    xc = (x * 3).astype(dtype)
    np.testing.assert_allclose(model.predict(xc), model.predict(xc.astype(np.float32)),
                               rtol=1e-6)
    assert model.predict(xc).dtype == np.float32


@pytest.mark.parametrize("x", [np.array([["a"] * 5] * 2), np.array([[None] * 5] * 2),
                               np.zeros((2, 5), dtype=complex)],
                         ids=["strings", "objects", "complex"])
def test_non_numeric_inputs_are_rejected(x):
    model = mlp()
    with pytest.raises(TypeError, match="must be numeric"):
        model.predict(x)


def test_labels_dtype_checks():
    model = mlp()
    x, y = rng_data()
    model.fit(x, y.astype(np.float32), verbose=0)  # integral floats are fine
    model.fit(x, y.astype(np.uint8).reshape(-1, 1), verbose=0)  # (N, 1) labels too
    with pytest.raises(ValueError, match="sparse labels must be integers"):
        model.fit(x, y + 0.5, verbose=0)
    with pytest.raises(TypeError, match="sparse labels must be integers"):
        model.fit(x, y.astype(str), verbose=0)


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_out_of_range_labels_rejected_before_training(bad):
    model = mlp()
    x, y = rng_data()
    y = y.copy()
    y[7] = bad
    before = model.get_weights()
    iterations = model.optimizer.iterations
    with pytest.raises(ValueError, match=rf"label {bad} is out of range for "
                                         r"sparse_categorical_crossentropy with 3 classes"):
        model.fit(x, y, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == iterations
    with pytest.raises(ValueError, match="out of range"):
        model.evaluate(x, y, verbose=0)


def test_nan_loss_is_reported_with_epoch_and_batch():
    model = pynn.Sequential([layers.Input((5,)), layers.Dense(4, activation="tanh"),
                             layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = rng_data()
    x[5, 2] = np.nan  # poisons the first batch's loss
    with pytest.warns(RuntimeWarning, match=r"loss became nan at epoch 1, batch 1/2"):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)


# -- sizes --------------------------------------------------------------------------------------
def test_empty_inputs():
    model = mlp()
    empty = np.zeros((0, 5), np.float32)
    assert model.predict(empty).shape == (0, 3)
    with pytest.raises(ValueError, match="no samples"):
        model.fit(empty, np.zeros(0, np.int32), verbose=0)
    with pytest.raises(ValueError, match="no samples"):
        model.evaluate(empty, np.zeros(0, np.int32), verbose=0)
    conv = cnn()
    assert conv.predict(np.zeros((0, 6, 6, 2), np.float32)).shape == (0, 2)
    for layer in (layers.Conv2D(2, 3), layers.MaxPooling2D(), layers.AveragePooling2D(),
                  layers.GlobalMaxPooling2D(), layers.GlobalAveragePooling2D(),
                  layers.Dense(3), layers.Activation("softmax"), layers.Flatten()):
        out = layer(np.zeros((0, 5, 5, 2), np.float32))
        assert out.shape[0] == 0, type(layer).__name__
    dropout = layers.Dropout(0.5)
    assert dropout(np.zeros((0, 4), np.float32), training=True).shape == (0, 4)


def test_one_by_one_images_train():
    model = pynn.Sequential([layers.Input((1, 1, 3)), layers.Conv2D(4, 1, activation="relu"),
                             layers.MaxPooling2D(1), layers.Conv2D(2, 3, padding="same"),
                             layers.AveragePooling2D(2, padding="same"),
                             layers.GlobalMaxPooling2D(), layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 1, 1, 3)).astype(np.float32)
    history = model.fit(x, rng.integers(0, 2, 9), batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert model.layers[2].output_shape == (None, 1, 1, 2)


def test_kernel_larger_than_input():
    with pytest.raises(ValueError, match=r"Conv2D '\w+': kernel \(5, 5\) with dilation \(1, 1\) "
                                         r"is larger than the input \(None, 3, 3, 1\)"):
        pynn.Sequential([layers.Input((3, 3, 1)), layers.Conv2D(2, 5)])
    with pytest.raises(ValueError, match="is larger than the input"):
        pynn.Sequential([layers.Input((5, 5, 1)), layers.Conv2D(2, 3, dilation_rate=3)])
    with pytest.raises(ValueError, match=r"pool_size \(4, 4\) is larger than the input"):
        pynn.Sequential([layers.Input((3, 3, 1)), layers.MaxPooling2D(4)])
    same = pynn.Sequential([layers.Input((3, 3, 1)), layers.Conv2D(2, 5, padding="same"),
                            layers.MaxPooling2D(4, padding="same")])
    assert same.predict(np.ones((2, 3, 3, 1), np.float32)).shape == (2, 1, 1, 2)
    layer = layers.Conv2D(2, 5)
    with pytest.raises(ValueError, match="larger than the input"):
        layer(np.ones((1, 3, 3, 1), np.float32))


@pytest.mark.parametrize("make", [
    lambda: layers.Dense(0), lambda: layers.Dense(-3), lambda: layers.Dense(2.5),
    lambda: layers.Dense(True), lambda: layers.Conv2D(0, 3), lambda: layers.Conv2D(2, 0),
    lambda: layers.Conv2D(2, (3, -1)), lambda: layers.Conv2D(2, 3, strides=0),
    lambda: layers.Conv2D(2, 3, dilation_rate=(0, 1)), lambda: layers.Conv2D(2, (1, 2, 3)),
    lambda: layers.Conv2D(2, 3, padding="full"), lambda: layers.Conv2D(2, 3, strides=2,
                                                                       dilation_rate=2),
    lambda: layers.Conv2D(2, 3, data_format="channels_first"),
    lambda: layers.MaxPooling2D(0), lambda: layers.AveragePooling2D(2, strides=-1),
    lambda: layers.Dropout(1.0), lambda: layers.Dropout(-0.1), lambda: layers.Reshape((0, 2)),
    lambda: layers.Reshape((-1, -1)), lambda: layers.Input((0, 3)), lambda: layers.Input(None),
    lambda: layers.Activation("swishy"), lambda: layers.Dense(3, activation=max),
    lambda: layers.Dense(3, kernel_initializer="nope"), lambda: layers.Dense(3, dtype="int32"),
])
def test_invalid_layer_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_invalid_fit_arguments():
    model = mlp()
    x, y = rng_data()
    for kwargs, message in (({"batch_size": 0}, "batch_size"), ({"batch_size": -2}, "batch_size"),
                            ({"batch_size": 2.5}, "batch_size"),
                            ({"validation_split": 1.0}, "validation_split"),
                            ({"validation_data": (x,)}, "validation_data")):
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, verbose=0, **kwargs)
    with pytest.raises(ValueError, match="x is required"):
        model.fit(None, y)
    with pytest.raises(RuntimeError, match="compile"):
        pynn.Sequential([layers.Input((5,)), layers.Dense(2)]).fit(x, y)
    with pytest.raises(ValueError, match="a loss is required"):
        model.compile("sgd")
    with pytest.raises(ValueError, match="Unknown loss"):
        model.compile("sgd", "hinge_loss_of_doom")


# -- memory layouts ---------------------------------------------------------------------------
def _layouts(x):
    fortran = np.asfortranarray(x)
    strided = np.repeat(x, 2, axis=-1)[..., ::2]
    readonly = x.copy()
    readonly.setflags(write=False)
    big_endian = x.astype(x.dtype.newbyteorder(">"))
    return {"fortran": fortran, "strided": strided, "readonly": readonly,
            "big_endian": big_endian}


def test_memory_layouts_give_identical_results():
    model = cnn()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 2, 7)
    expected = model.predict(x)
    for name, variant in _layouts(x).items():
        assert not variant.flags.c_contiguous or not variant.flags.writeable or \
            variant.dtype.byteorder == ">", name
        np.testing.assert_array_equal(model.predict(variant), expected, err_msg=name)
        assert model.evaluate(variant, y, verbose=0) == model.evaluate(x, y, verbose=0)
    ro_y = y.copy()
    ro_y.setflags(write=False)
    weights = model.get_weights()
    model.fit(_layouts(x)["readonly"], ro_y, verbose=0, shuffle=False)
    trained = model.get_weights()
    model.set_weights(weights)
    model.optimizer = pynn.optimizers.get("adam")
    model.fit(x, y, verbose=0, shuffle=False)
    for a, b in zip(trained, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_set_weights_validation():
    model = mlp()
    weights = model.get_weights()
    with pytest.raises(ValueError, match="expected 4 weight arrays, got 3"):
        model.set_weights(weights[:3])
    with pytest.raises(ValueError, match=r"weight 'kernel' expects shape \(5, 4\), got \(4, 5\)"):
        model.set_weights([weights[0].T] + weights[1:])
    with pytest.raises(TypeError, match="must be numeric"):
        model.set_weights([weights[0].astype(str)] + weights[1:])
    fortran = [np.asfortranarray(w) for w in weights]
    model.set_weights(fortran)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    weights[0][0, 0] = 123.0  # set_weights copies: later edits to the input do not leak in
    model.set_weights(weights)
    weights[0][0, 0] = -5.0
    assert model.get_weights()[0][0, 0] == 123.0


def test_relu_propagates_nan_like_keras():
    x = np.array([[np.nan, 1.0]], np.float32)
    assert np.isnan(layers.Activation("relu")(x)[0, 0])
    assert np.isnan(layers.Dense(2, activation="relu")(x)).all()


# -- issue 11.7: sizes that cannot be C ints, memory, complex, empty batches -----------------
@pytest.mark.parametrize("make,name", [
    (lambda: layers.Conv2D(2, 3, strides=2**64, name="c"), "strides"),
    (lambda: layers.Conv2D(2, 3, dilation_rate=(1, 2**31), name="c"), "dilation_rate"),
    (lambda: layers.Conv2D(2, (2**63, 1), name="c"), "kernel_size"),
    (lambda: layers.MaxPooling2D(2**64, name="c"), "pool_size"),
    (lambda: layers.AveragePooling2D(2, strides=(2**32, 1), name="c"), "strides"),
    (lambda: layers.Conv2D(2, 3, strides=float("inf"), name="c"), "strides"),
])
def test_sizes_beyond_a_c_int_are_rejected_at_construction(make, name):
    """Before: accepted, then OverflowError deep in predict."""
    with pytest.raises(ValueError, match=rf"'c': {name} must be"):
        make()


def test_largest_c_int_stride_still_works():
    model = pynn.Sequential([layers.Input((4, 4, 1)),
                             layers.MaxPooling2D(2, strides=2**31 - 1, padding="same")])
    assert model.predict(np.ones((1, 4, 4, 1), np.float32)).shape == (1, 1, 1, 1)


def test_huge_layer_memory_error_names_the_layer():
    # 2**59 float32 values: no allocator can map 2 EiB, whatever the overcommit policy.
    with pytest.raises(MemoryError, match=r"Layer 'huge' \(Dense\): weight 'kernel' of shape "
                                          r"\(536870912, 1073741824\)"):
        pynn.Sequential([layers.Input((2**29,)), layers.Dense(2**30, name="huge")])
    with pytest.raises(ValueError, match=r"Layer 'huger' \(Dense\): .*address space"):
        pynn.Sequential([layers.Input((2**40,)), layers.Dense(2**40, name="huger")])


def test_weights_beyond_the_memory_left_are_refused_before_drawing(monkeypatch):
    """Before: each weight was checked against the machine's whole memory only, so a model
    whose weights fitted one by one but not together was killed by the OOM killer."""
    from pynn.layers import base

    drawn = []
    monkeypatch.setattr(base, "_free_memory", lambda: 100 << 20)
    monkeypatch.setattr(base.initializers, "get", lambda init: lambda shape, dtype: (
        drawn.append(shape), np.zeros(shape, dtype))[1])
    with pytest.raises(MemoryError, match=r"Layer 'wide' \(Dense\): weight 'kernel' of shape "
                                          r"\(8192, 8192\) .*only 0\.1 GiB of memory is free"):
        pynn.Sequential([layers.Input((8192,)), layers.Dense(8192, name="wide")])
    assert (8192, 8192) not in drawn
    # Small weights are not checked (no /proc read per bias); large ones that fit pass.
    pynn.Sequential([layers.Input((4096,)), layers.Dense(4096)])  # 64 MiB: at the limit
    monkeypatch.setattr(base, "_free_memory", lambda: None)  # unknown: the allocator decides
    pynn.Sequential([layers.Input((8192,)), layers.Dense(8192)])


def test_lists_and_scalars_given_to_a_layer():
    """Before: a list of numbers reached ``x.shape`` in the base layer (AttributeError)."""
    dense = layers.Dense(3, name="d")
    x = [[1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_allclose(dense(x), dense(np.asarray(x, np.float32)), rtol=1e-6)
    with pytest.raises(TypeError, match=r"Layer 'd' \(Dense\): input must be an array with a "
                                        r"batch axis, got the scalar 3\.0"):
        dense(3.0)
    with pytest.raises(TypeError, match=r"Layer 'd' \(Dense\): input must be an array or a "
                                        r"nested list of numbers of one shape"):
        dense([[1.0, 2.0], [3.0]])
    add = layers.Add(name="a")  # a list holding arrays is several inputs; lists among them too
    a = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(add([a, [[1, 2, 3], [4, 5, 6]]]), a + [[1, 2, 3], [4, 5, 6]])


def test_memory_error_in_a_forward_pass_names_the_layer(monkeypatch):
    model = mlp()

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pynn.backend.current(), "dense_forward", exhausted)
    with pytest.raises(MemoryError, match=r"Layer 'hidden' \(Dense\): out of memory"):
        model.predict(rng_data()[0])


def test_complex_input_is_rejected_everywhere():
    """Before: a complex tensor through model(x) or a layer lost its imaginary part."""
    torch = pytest.importorskip("torch")
    model = mlp()
    x, y = rng_data()
    xc = x * (1 + 1j)
    for call in (lambda: model(torch.tensor(xc)), lambda: model.layers[0](xc),
                 lambda: model(xc), lambda: model.predict(xc), lambda: model.fit(xc, y),
                 lambda: model.evaluate(xc, y), lambda: model.train_on_batch(xc, y),
                 lambda: model.predict_on_batch(xc), lambda: model.test_on_batch(xc, y),
                 lambda: model.fit(x, y, validation_data=(xc, y), verbose=0)):
        with pytest.raises(TypeError, match="real"):
            call()
    binary = pynn.Sequential([layers.Input((5,)), layers.Dense(1, activation="sigmoid")])
    binary.compile("sgd", "binary_crossentropy")
    with pytest.raises(TypeError, match="real"):
        binary.fit(x, y * 1j, verbose=0)


def test_train_on_batch_on_an_empty_batch_does_not_step():
    model = mlp()
    before = model.get_weights()
    with pytest.raises(ValueError, match="train_on_batch: x holds no samples"):
        model.train_on_batch(np.zeros((0, 5), np.float32), np.zeros(0, np.int32))
    assert model.optimizer.iterations == 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
