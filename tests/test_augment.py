"""ImageDataGenerator: the native resampling kernel against scipy.ndimage.affine_transform (the
oracle Keras itself calls), the composed matrices against Keras's composition, Keras parity of
apply_transform / random_transform / fit / standardize, the iterators' batches and seeds, and
bad arguments."""

import os

import numpy as np
import pytest

from pynn._native import augment as native_augment
from pynn.preprocessing.image import ImageDataGenerator, affine_matrices
from tests.reference.augment_ref import affine_resample_ref, keras_matrix_ref

# Keras's legacy code calls scipy through its deprecated ndimage.interpolation namespace.
pytestmark = pytest.mark.filterwarnings("ignore:Please import `affine_transform`")

FILL_MODES = ["constant", "nearest", "reflect", "wrap"]
# odd sizes, a single-pixel axis, non-square images, 1, 3 and 4 channels
SHAPES = [(3, 7, 9, 2), (2, 13, 5, 3), (1, 1, 6, 1), (2, 5, 1, 4)]


def random_matrices(rng, n, h, w):
    """Matrices that reach far outside the image (every fill mode is exercised)."""
    m = np.zeros((n, 2, 3))
    m[:, :, :2] = rng.normal(size=(n, 2, 2)) * 1.5
    m[:, 0, 2] = rng.normal(size=n) * 2 * h
    m[:, 1, 2] = rng.normal(size=n) * 2 * w
    return m


def resample(x, matrices, order, fill_mode, cval):
    out = np.empty_like(x)
    source = np.arange(len(x), dtype=np.intp)
    native_augment.affine_resample(x, source, np.ascontiguousarray(matrices.reshape(len(x), 6)),
                                   out, order, native_augment.FILL_MODES[fill_mode], cval)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_resample_matches_scipy(shape, order, fill_mode, dtype):
    rng = np.random.default_rng(sum(shape) + order)
    x = (rng.normal(size=shape) + 2).astype(dtype)
    matrices = random_matrices(rng, shape[0], shape[1], shape[2])
    got = resample(x, matrices, order, fill_mode, 0.75)
    want = affine_resample_ref(x, matrices, order, fill_mode, 0.75)
    assert got.dtype == dtype
    if order == 0:
        np.testing.assert_array_equal(got, want.astype(dtype))
    else:
        tol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(x).max())


def test_affine_resample_identity_and_integer_shift_are_exact():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    identity = np.tile([[1.0, 0, 0], [0, 1, 0]], (2, 1, 1))
    for mode in FILL_MODES:
        np.testing.assert_array_equal(resample(x, identity, 1, mode, 0.0), x)
    shifted = identity.copy()
    shifted[:, 1, 2] = 2          # out[:, :, c] = x[:, :, c + 2]
    got = resample(x, shifted, 1, "constant", -5.0)
    np.testing.assert_array_equal(got[:, :, :-2], x[:, :, 2:])
    assert np.all(got[:, :, -2:] == -5.0)


def test_affine_resample_reads_the_batch_from_a_pool_of_images():
    rng = np.random.default_rng(6)
    pool = rng.normal(size=(6, 7, 5, 3))
    source = np.array([4, 0, 4], dtype=np.intp)
    matrices = random_matrices(rng, 3, 7, 5)
    out = np.empty((3, 7, 5, 3))
    native_augment.affine_resample(pool, source, matrices.reshape(3, 6), out, 1,
                                   native_augment.FILL_MODES["reflect"], 0.0)
    np.testing.assert_array_equal(out, resample(pool[source], matrices, 1, "reflect", 0.0))


def test_affine_resample_rejects_bad_operands():
    x = np.ones((2, 5, 5, 3), np.float32)
    out = np.empty_like(x)
    two = np.arange(2, dtype=np.intp)
    with pytest.raises(ValueError, match=r"expected matrices of shape \(2, 6\), got \(1, 6\)"):
        native_augment.affine_resample(x, two, np.zeros((1, 6)), out, 1, 0, 0.0)
    with pytest.raises(ValueError, match=r"expected out of shape \(2, HO, WO, 3\)"):
        native_augment.affine_resample(x, two, np.zeros((2, 6)), out[:, :, :, :2].copy(), 1, 0,
                                       0.0)
    with pytest.raises(ValueError, match="order must be 0 or 1, got 3"):
        native_augment.affine_resample(x, two, np.zeros((2, 6)), out, 3, 0, 0.0)
    with pytest.raises(ValueError, match="unknown fill_mode 7"):
        native_augment.affine_resample(x, two, np.zeros((2, 6)), out, 1, 7, 0.0)
    bad = np.zeros((2, 6))
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"matrix 1 is not finite: \[0.0, 0.0, 0.0, 0.0, nan"):
        native_augment.affine_resample(x, two, bad, out, 1, 0, 0.0)
    with pytest.raises(ValueError, match=r"apply_transform: transform parameters must be finite, "
                                         r"got \{'theta': inf\}"):
        ImageDataGenerator().apply_transform(x[0], {"theta": np.inf})
    with pytest.raises(ValueError, match=r"source\[1\] = 2 is not an image of x \(it holds 2\)"):
        native_augment.affine_resample(x, np.array([0, 2], np.intp), np.zeros((2, 6)), out, 1,
                                       0, 0.0)


# -- the composed matrices -------------------------------------------------------------------------
SINGLE_TRANSFORMS = [
    {"theta": 23.0}, {"tx": 2.5}, {"ty": -3.25}, {"shear": 17.0}, {"zx": 0.8, "zy": 1.3},
    {"flip_horizontal": True}, {"flip_vertical": True},
    {"theta": -31.0, "tx": 1.5, "ty": -2.0, "shear": 9.0, "zx": 1.2, "zy": 0.9,
     "flip_horizontal": True, "flip_vertical": True},
]


def full_params(p):
    keys = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
            "flip_horizontal": False, "flip_vertical": False}
    return {k: np.array([p.get(k, v)]) for k, v in keys.items()}


@pytest.mark.parametrize("params", SINGLE_TRANSFORMS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("order", [0, 1])
def test_each_transform_against_scipy_oracle(params, fill_mode, order):
    h, w = 11, 7   # non-square: Keras's centre offsets swap with its axes
    got_m = affine_matrices(full_params(params), 1, h, w)
    want_m = keras_matrix_ref(h, w, **params)
    np.testing.assert_allclose(got_m[0], want_m, atol=1e-12)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(h, w, 3)) + 1
    gen = ImageDataGenerator(fill_mode=fill_mode, cval=-2.0, interpolation_order=order,
                             dtype="float64")
    got = gen.apply_transform(x, params)
    want = affine_resample_ref(x[None], want_m[None], order, fill_mode, -2.0)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_matrices_are_batched_per_image():
    rng = np.random.default_rng(8)
    n, h, w = 5, 9, 13
    params = {"theta": rng.uniform(-30, 30, n), "tx": rng.uniform(-3, 3, n),
              "ty": rng.uniform(-3, 3, n), "shear": rng.uniform(-10, 10, n),
              "zx": rng.uniform(0.8, 1.2, n), "zy": rng.uniform(0.8, 1.2, n),
              "flip_horizontal": rng.random(n) < 0.5, "flip_vertical": rng.random(n) < 0.5}
    got = affine_matrices(params, n, h, w)
    for i in range(n):
        one = {k: v[i] for k, v in params.items()}
        np.testing.assert_allclose(got[i], keras_matrix_ref(h, w, **one), atol=1e-12)


# -- random parameters -----------------------------------------------------------------------------
def test_random_parameters_follow_keras_ranges():
    gen = ImageDataGenerator(rotation_range=15, width_shift_range=0.25, height_shift_range=[2, 5],
                             shear_range=7, zoom_range=[0.5, 0.75], channel_shift_range=9,
                             brightness_range=(0.2, 0.4))
    p = gen._draw_parameters(np.random.default_rng(0), 4000, (20, 12, 3))
    assert np.abs(p["theta"]).max() <= 15 and np.abs(p["theta"]).max() > 14
    assert np.abs(p["ty"]).max() <= 0.25 * 12 and np.abs(p["ty"]).max() > 2.9   # fraction of W
    assert set(np.unique(p["tx"])) == {-5, -2, 2, 5}                            # list: pixels
    assert np.abs(p["shear"]).max() <= 7
    assert 0.5 <= p["zx"].min() and p["zy"].max() <= 0.75
    assert not np.array_equal(p["zx"], p["zy"])                                  # two draws
    assert np.abs(p["channel_shift_intensity"]).max() <= 9
    assert 0.2 <= p["brightness"].min() and p["brightness"].max() <= 0.4
    assert not p["flip_horizontal"].any() and not p["flip_vertical"].any()
    ints = ImageDataGenerator(width_shift_range=3, horizontal_flip=True)
    q = ints._draw_parameters(np.random.default_rng(1), 4000, (9, 9, 1))
    assert set(np.unique(q["ty"])) == {-2, -1, 0, 1, 2}      # an int n: [0, n) with a sign
    assert 0.45 < q["flip_horizontal"].mean() < 0.55


def test_get_random_transform_is_seeded_and_keras_shaped():
    gen = ImageDataGenerator(rotation_range=30, zoom_range=0.1, horizontal_flip=True)
    a = gen.get_random_transform((8, 8, 3), seed=11)
    assert a == gen.get_random_transform((8, 8, 3), seed=11)
    assert a != gen.get_random_transform((8, 8, 3), seed=12)
    assert set(a) == {"theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal",
                      "flip_vertical", "channel_shift_intensity", "brightness"}
    assert a["channel_shift_intensity"] is None and a["brightness"] is None


# -- Keras parity ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_image():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        from keras.src.legacy.preprocessing import image
    except Exception as exc:  # keras missing or its backend cannot load
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    return image


@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("order", [0, 1])
def test_apply_transform_matches_keras(keras_image, fill_mode, order):
    rng = np.random.default_rng(21)
    kwargs = dict(fill_mode=fill_mode, cval=7.5, interpolation_order=order)
    ours, theirs = ImageDataGenerator(**kwargs), keras_image.ImageDataGenerator(**kwargs)
    for trial, channels in enumerate([3, 1, 4, 3, 3, 3]):
        x = (rng.random((13, 9, channels)) * 255).astype(np.float32)
        if trial == 4:
            x = x - 400     # outside [0, 255]: Keras's brightness rescales around Pillow
        params = {"theta": rng.uniform(-45, 45), "tx": rng.uniform(-4, 4),
                  "ty": rng.uniform(-4, 4), "shear": rng.uniform(-20, 20),
                  "zx": rng.uniform(0.7, 1.3), "zy": rng.uniform(0.7, 1.3),
                  "flip_horizontal": bool(trial % 2), "flip_vertical": trial in (2, 3),
                  "channel_shift_intensity": rng.uniform(-30, 30) if trial >= 2 else None,
                  "brightness": rng.uniform(0.5, 1.5) if trial >= 3 else None}
        want = theirs.apply_transform(x.copy(), params)
        got = ours.apply_transform(x.copy(), params)
        assert got.dtype == np.float32 and got.shape == x.shape
        # one float32 rounding apart (scipy rounds the double result once, as the kernel)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())


def test_random_transform_matches_keras_given_the_same_parameters(keras_image):
    kwargs = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=3,
                  shear_range=12, zoom_range=0.25, horizontal_flip=True, vertical_flip=True,
                  channel_shift_range=20, fill_mode="reflect")
    ours, theirs = ImageDataGenerator(**kwargs), keras_image.ImageDataGenerator(**kwargs)
    x = (np.random.default_rng(4).random((15, 11, 3)) * 255).astype(np.float32)
    for seed in range(6):
        params = ours.get_random_transform(x.shape, seed=seed)
        got = ours.random_transform(x, seed=seed)
        want = theirs.apply_transform(x.copy(), params)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())


def test_fit_and_standardize_match_keras(keras_image):
    rng = np.random.default_rng(9)
    x = (rng.random((24, 5, 7, 3)) * 255).astype(np.float32)
    for kwargs in [dict(featurewise_center=True, featurewise_std_normalization=True,
                        rescale=1 / 255),
                   dict(samplewise_center=True, samplewise_std_normalization=True),
                   dict(zca_whitening=True, zca_epsilon=1e-3)]:
        with pytest.warns(UserWarning) if "zca_whitening" in kwargs else _no_warning():
            ours = ImageDataGenerator(**kwargs)
        with pytest.warns(UserWarning) if "zca_whitening" in kwargs else _no_warning():
            theirs = keras_image.ImageDataGenerator(**kwargs)
        ours.fit(x)
        theirs.fit(x)
        want = np.stack([theirs.standardize(image.copy()) for image in x])
        got = ours.standardize(x.copy())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_flow_batches_match_keras_without_augmentation(keras_image):
    rng = np.random.default_rng(2)
    x = rng.random((10, 6, 5, 3)).astype(np.float32)
    y = np.arange(10)
    w = rng.random(10)
    kwargs = dict(rescale=0.5, samplewise_center=True)
    ours = ImageDataGenerator(**kwargs).flow(x, y, batch_size=4, shuffle=False, sample_weight=w)
    theirs = keras_image.ImageDataGenerator(**kwargs).flow(x, y, batch_size=4, shuffle=False,
                                                           sample_weight=w)
    assert len(ours) == len(theirs) == 3
    for i in range(3):
        for a, b in zip(ours[i], theirs[i]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- iterators -------------------------------------------------------------------------------------
# Brightness goes through 8-bit values as in Keras, so images are given in [0, 255].
AUGMENT = dict(rotation_range=25, width_shift_range=0.2, height_shift_range=0.2, shear_range=10,
               zoom_range=0.2, horizontal_flip=True, channel_shift_range=5,
               brightness_range=(0.8, 1.2))


def batches(iterator):
    return [iterator[i] for i in range(len(iterator))]


def test_flow_reproducible_across_thread_counts(num_threads):
    x = (np.random.default_rng(0).random((37, 17, 15, 3)) * 255).astype(np.float32)
    y = np.arange(37)
    gen = ImageDataGenerator(**AUGMENT)
    runs = []
    for threads in (1, 2, 3):
        num_threads(threads)
        runs.append(batches(gen.flow(x, y, batch_size=8, seed=42)))
    for run in runs[1:]:
        for (xa, ya), (xb, yb) in zip(runs[0], run):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_flow_batches_depend_on_seed_and_position_only():
    x = (np.random.default_rng(1).random((20, 9, 9, 1)) * 255).astype(np.float32)
    gen = ImageDataGenerator(**AUGMENT)
    a = gen.flow(x, batch_size=6, seed=3)
    b = gen.flow(x, batch_size=6, seed=3)
    backwards = [b[i] for i in reversed(range(len(b)))][::-1]
    for u, v in zip(batches(a), backwards):
        np.testing.assert_array_equal(u, v)
    c = gen.flow(x, batch_size=6, seed=4)
    assert not np.array_equal(a[0], c[0])
    first_epoch = a[0]
    a.on_epoch_end()
    assert not np.array_equal(a[0], first_epoch)


def test_flow_shapes_order_and_epochs():
    x = np.arange(11 * 3 * 5 * 1, dtype=np.float32).reshape(11, 3, 5, 1)
    y = np.arange(11) * 10
    w = np.linspace(0.1, 1.1, 11)
    it = ImageDataGenerator().flow(x, y, batch_size=4, shuffle=False, sample_weight=w)
    assert len(it) == 3 and it.num_batches == 3
    xb, yb, wb = it[2]
    assert xb.shape == (3, 3, 5, 1) and xb.dtype == np.float32
    np.testing.assert_array_equal(xb, x[8:])        # no transform: the images themselves
    np.testing.assert_array_equal(yb, y[8:])
    np.testing.assert_array_equal(wb, w[8:])
    with pytest.raises(IndexError, match="batch 3 out of range: it has 3 batches"):
        it[3]
    shuffled = ImageDataGenerator().flow(x, y, batch_size=4, seed=0)
    seen = np.concatenate([b[1] for b in batches(shuffled)])
    assert sorted(seen) == sorted(y) and not np.array_equal(seen, y)
    # iteration runs on across epochs, like Keras's iterator
    stream = iter(shuffled)
    labels = [next(stream)[1] for _ in range(6)]
    assert sorted(np.concatenate(labels[3:])) == sorted(y)
    assert not np.array_equal(np.concatenate(labels[:3]), np.concatenate(labels[3:]))
    only_x = ImageDataGenerator().flow(x, batch_size=5, shuffle=False)
    assert isinstance(only_x[0], np.ndarray) and only_x[0].shape == (5, 3, 5, 1)
    misc = ImageDataGenerator().flow((x, y[:, None] * 1.0), y, batch_size=5, shuffle=False)
    (_, extra), _ = misc[1]
    np.testing.assert_array_equal(extra[:, 0], y[5:10])


def test_flow_validation_split_subsets():
    x = np.random.default_rng(0).random((10, 4, 4, 3))
    y = np.array([0, 1] * 5)
    gen = ImageDataGenerator(validation_split=0.3)
    val = gen.flow(x, y, batch_size=10, shuffle=False, subset="validation")
    train = gen.flow(x, y, batch_size=10, shuffle=False, subset="training")
    np.testing.assert_allclose(val[0][0], x[:3], rtol=1e-6)
    np.testing.assert_array_equal(train[0][1], y[3:])
    with pytest.raises(ValueError, match="different classes after the split"):
        gen.flow(x, np.sort(y), subset="training")
    assert gen.flow(x, np.sort(y), subset="training", ignore_class_split=True).n == 7


def test_preprocessing_function_runs_per_image_after_augmentation():
    x = np.random.default_rng(0).random((7, 5, 5, 3)).astype(np.float32)
    shapes = []

    def fn(image):
        shapes.append(image.shape)
        return image * 2 + 1

    it = ImageDataGenerator(preprocessing_function=fn, rescale=0.5).flow(x, batch_size=7,
                                                                          shuffle=False)
    np.testing.assert_allclose(it[0], (x * 2 + 1) * 0.5, rtol=1e-6)
    assert shapes == [(5, 5, 3)] * 7


def test_fit_with_augment_is_seeded():
    x = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
    a = ImageDataGenerator(featurewise_center=True, rotation_range=30)
    b = ImageDataGenerator(featurewise_center=True, rotation_range=30)
    a.fit(x, augment=True, rounds=2, seed=5)
    b.fit(x, augment=True, rounds=2, seed=5)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.mean.shape == (1, 1, 3)
    assert not np.allclose(a.mean, x.mean(axis=(0, 1, 2)), rtol=0, atol=1e-7)


def test_standardize_warns_before_fit():
    gen = ImageDataGenerator(featurewise_center=True)
    with pytest.warns(UserWarning, match="has not been fit on data"):
        gen.standardize(np.ones((1, 2, 2, 3), np.float32))


# -- bad arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(fill_mode="mirror"), r"ImageDataGenerator: fill_mode must be one of .*got 'mirror'"),
    (dict(interpolation_order=3),
     r"interpolation_order must be 0 \(nearest\) or 1 \(bilinear\), got 3"),
    (dict(zoom_range=[0.5, 1, 2]), r"zoom_range must be a float or a list of two floats, got "),
    (dict(brightness_range=0.5),
     "brightness_range must be a tuple or list of two floats, got 0.5"),
    (dict(width_shift_range="wide"),
     "width_shift_range must be a float, an int or a list of numbers, got 'wide'"),
    (dict(validation_split=1.5), "validation_split must be strictly between 0 and 1, got 1.5"),
    (dict(data_format="channels_first"), "channels_last .*got data_format='channels_first'"),
    (dict(dtype="int32"), "dtype must be float32 or float64, got 'int32'"),
])
def test_generator_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDataGenerator(**kwargs)


def test_flow_rejects_bad_inputs():
    gen = ImageDataGenerator()
    x = np.ones((4, 5, 5, 3))
    with pytest.raises(ValueError, match=r"flow: expected images of rank 4 \(N, H, W, C\), got "
                                         r"shape \(4, 5, 5\)"):
        gen.flow(x[..., 0])
    with pytest.raises(ValueError, match=r"x \(images\) and y \(labels\) must have the same "
                                         r"length, got x.shape=\(4, 5, 5, 3\), y.shape=\(3,\)"):
        gen.flow(x, np.arange(3))
    with pytest.raises(ValueError, match="x and sample_weight must have the same length"):
        gen.flow(x, np.arange(4), sample_weight=np.ones(2))
    with pytest.raises(ValueError, match="subset must be \"training\" or \"validation\", got "
                                         "'test'"):
        gen.flow(x, subset="test")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        gen.flow(x, batch_size=0)
    with pytest.raises(ValueError, match=r"apply_transform: expected one image \(H, W, C\), "
                                         r"got shape \(4, 5, 5, 3\)"):
        gen.apply_transform(x, {})
    with pytest.warns(UserWarning, match="expected 1, 3 or 4 channels"):
        gen.flow(np.ones((2, 3, 3, 5)))


def test_batches_from_worker_threads_equal_the_serial_ones():
    """A fit that prepares batches in threads calls __getitem__ concurrently and out of order;
    each batch depends on its seed and position only."""
    from concurrent.futures import ThreadPoolExecutor

    x = (np.random.default_rng(2).random((40, 11, 13, 3)) * 255).astype(np.float32)
    it = ImageDataGenerator(**AUGMENT).flow(x, np.arange(40), batch_size=4, seed=9)
    serial = batches(it)
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(it.__getitem__, reversed(range(len(it)))))[::-1]
    for (xa, ya), (xb, yb) in zip(serial, threaded):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_save_to_dir_writes_the_augmented_batch(tmp_path):
    pytest.importorskip("PIL")
    x = (np.random.default_rng(0).random((5, 6, 7, 3)) * 255).astype(np.float32)
    it = ImageDataGenerator(rotation_range=10).flow(x, batch_size=5, shuffle=False, seed=1,
                                                    save_to_dir=str(tmp_path),
                                                    save_prefix="aug", save_format="png")
    it[0]
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 5 and all(n.startswith("aug_") and n.endswith(".png") for n in names)
