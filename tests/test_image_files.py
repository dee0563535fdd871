"""Image files (pynn/preprocessing/image_files.py): load_img/img_to_array/array_to_img/
save_img, flow_from_directory and image_dataset_from_directory against Keras on a generated
folder of images, and bad folders and files (empty, one class, non-image files, symlink loops,
corrupt images)."""

import os
import sys
import warnings

import numpy as np
import pytest

import pynn
from pynn.preprocessing.image import ImageDataGenerator

Image = pytest.importorskip("PIL.Image")

# The generated folder holds a text file on purpose; tests that check the warning use
# pytest.warns, which sees it regardless.
pytestmark = pytest.mark.filterwarnings("ignore:.*skipped 1 files that are not images")

# class -> [(relative path, (width, height), PIL mode)]: odd sizes, grey/RGB/RGBA, a nested
# folder, a JPEG; sorted class order is birds, cats, dogs.
LAYOUT = {
    "cats": [("c1.png", (13, 9), "RGB"), ("c2.png", (9, 13), "L"), ("c3.png", (7, 7), "RGBA"),
             ("c4.jpg", (15, 11), "RGB"), ("c5.png", (8, 10), "RGB")],
    "dogs": [("d1.png", (11, 5), "RGB"), ("deep/d2.png", (6, 9), "RGB"),
             ("deep/d3.bmp", (9, 9), "RGB"), ("d4.png", (12, 12), "L")],
    "birds": [("b1.png", (5, 7), "RGB"), ("b2.png", (17, 3), "RGB"), ("b3.png", (9, 8), "RGB")],
}
CLASSES = sorted(LAYOUT)


def write_image(path, size, mode, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(1, 256, (size[1], size[0], bands), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls, files in LAYOUT.items():
        for rel, size, mode in files:
            write_image(str(root / cls / rel), size, mode, rng)
    (root / "cats" / "notes.txt").write_text("not an image")
    return str(root)


@pytest.fixture(scope="module")
def keras_modules():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        from keras.src.legacy.preprocessing import image as legacy
        from keras.src.utils import dataset_utils, image_utils
    except Exception as exc:  # keras missing or its backend cannot load
        pytest.skip(f"keras (torch backend) is not available: {exc}")
    return legacy, image_utils, dataset_utils


def quiet(fn, *args, **kwargs):
    """Calls that warn about the deliberate notes.txt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


# -- single files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale", "rgba"])
@pytest.mark.parametrize("target_size, interpolation, keep",
                         [(None, "nearest", False), ((6, 11), "bilinear", False),
                          ((5, 5), "nearest", True), ((9, 4), "bicubic", True)])
def test_load_img_matches_keras(folder, keras_modules, color_mode, target_size, interpolation,
                                keep):
    _, image_utils, _ = keras_modules
    for rel in ["cats/c1.png", "cats/c2.png", "cats/c3.png", "cats/c4.jpg", "dogs/deep/d3.bmp"]:
        path = os.path.join(folder, rel)
        kwargs = dict(color_mode=color_mode, target_size=target_size,
                      interpolation=interpolation, keep_aspect_ratio=keep)
        got = pynn.utils.img_to_array(pynn.utils.load_img(path, **kwargs))
        want = image_utils.img_to_array(image_utils.load_img(path, **kwargs))
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32


def test_array_to_img_and_save_img_round_trip(tmp_path, keras_modules):
    _, image_utils, _ = keras_modules
    rng = np.random.default_rng(1)
    for channels in (1, 3, 4):
        x = rng.random((7, 5, channels)).astype(np.float32) * 3 - 1
        got = np.asarray(pynn.utils.array_to_img(x))
        want = np.asarray(image_utils.array_to_img(x))
        np.testing.assert_array_equal(got, want)
        path = tmp_path / f"x{channels}.png"
        pynn.utils.save_img(path, x)
        mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[channels]
        back = pynn.utils.img_to_array(pynn.utils.load_img(path, color_mode=mode))
        np.testing.assert_array_equal(back.reshape(got.shape), got)
    unscaled = (rng.random((4, 6, 3)) * 255).astype(np.float32)
    pynn.utils.save_img(tmp_path / "u.png", unscaled, scale=False)
    np.testing.assert_array_equal(pynn.utils.img_to_array(pynn.utils.load_img(tmp_path / "u.png")),
                                  unscaled.astype(np.uint8))
    with pytest.raises(ValueError, match=r"expected a rank-3 \(H, W, C\) image, got shape"):
        pynn.utils.array_to_img(np.ones((2, 2)))


def test_missing_pillow_names_the_extra(monkeypatch, folder):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'pynn\[image\]'"):
        pynn.utils.load_img(os.path.join(folder, "cats", "c1.png"))
    # augmenting arrays needs no Pillow
    x = np.random.default_rng(0).random((3, 5, 5, 3)).astype(np.float32) * 255
    assert ImageDataGenerator(rotation_range=10).flow(x, batch_size=3, seed=0)[0].shape == x.shape


# -- flow_from_directory ---------------------------------------------------------------------------
@pytest.mark.parametrize("class_mode", ["categorical", "sparse", "input", None])
@pytest.mark.parametrize("color_mode, keep_aspect_ratio",
                         [("rgb", False), ("grayscale", False), ("rgba", True)])
def test_flow_from_directory_matches_keras(folder, keras_modules, class_mode, color_mode,
                                           keep_aspect_ratio):
    legacy, _, _ = keras_modules
    kwargs = dict(target_size=(6, 8), color_mode=color_mode, class_mode=class_mode,
                  batch_size=5, shuffle=False, interpolation="bilinear",
                  keep_aspect_ratio=keep_aspect_ratio)
    ours = quiet(ImageDataGenerator(rescale=1 / 255).flow_from_directory, folder, **kwargs)
    theirs = legacy.ImageDataGenerator(rescale=1 / 255).flow_from_directory(folder, **kwargs)
    assert ours.class_indices == theirs.class_indices == {c: i for i, c in enumerate(CLASSES)}
    assert ours.filenames == theirs.filenames
    assert ours.samples == theirs.samples == 12
    np.testing.assert_array_equal(ours.classes, theirs.classes)
    assert ours.filepaths == theirs.filepaths
    assert len(ours) == len(theirs) == 3
    for i in range(3):
        got, want = ours[i], theirs[i]
        if class_mode is None:
            got, want = (got,), (want,)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flow_from_directory_subsets_classes_and_augmentation(folder, keras_modules):
    legacy, _, _ = keras_modules
    for subset in ("training", "validation"):
        ours = quiet(ImageDataGenerator(validation_split=0.4).flow_from_directory, folder,
                     subset=subset, shuffle=False)
        theirs = legacy.ImageDataGenerator(validation_split=0.4).flow_from_directory(
            folder, subset=subset, shuffle=False)
        assert ours.filenames == theirs.filenames
        np.testing.assert_array_equal(ours.classes, theirs.classes)
    ours = ImageDataGenerator().flow_from_directory(folder, classes=["dogs", "birds"],
                                                    shuffle=False)
    theirs = legacy.ImageDataGenerator().flow_from_directory(folder, classes=["dogs", "birds"],
                                                             shuffle=False)
    assert ours.class_indices == theirs.class_indices == {"dogs": 0, "birds": 1}
    assert ours.filenames == theirs.filenames
    binary = ImageDataGenerator().flow_from_directory(folder, classes=["dogs", "birds"],
                                                      class_mode="binary", batch_size=4,
                                                      shuffle=False)
    x, y = binary[0]
    np.testing.assert_array_equal(y, [0, 0, 0, 0])
    assert x.shape == (4, 256, 256, 3) and y.dtype == np.float32
    augmented = quiet(ImageDataGenerator(rotation_range=30, horizontal_flip=True, zoom_range=0.2)
                      .flow_from_directory, folder, target_size=(9, 7), batch_size=5, seed=1)
    again = quiet(ImageDataGenerator(rotation_range=30, horizontal_flip=True, zoom_range=0.2)
                  .flow_from_directory, folder, target_size=(9, 7), batch_size=5, seed=1)
    for i in range(len(augmented)):
        (xa, ya), (xb, yb) = augmented[i], again[i]
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x, y = augmented[2]
    assert x.shape == (2, 9, 7, 3) and y.shape == (2, 3)


def test_flow_from_directory_labels_follow_their_files(folder):
    it = quiet(ImageDataGenerator().flow_from_directory, folder, class_mode="sparse",
               batch_size=4, seed=3)
    seen = []
    for i in range(len(it)):
        _, y = it[i]
        start = i * it.batch_size
        index = it.index_array[start:start + it.batch_size]
        for j, label in zip(index, y):
            assert it.filenames[j].split(os.sep)[0] == CLASSES[int(label)]
            seen.append(j)
    assert sorted(seen) == list(range(12))


# -- image_dataset_from_directory ------------------------------------------------------------------
@pytest.mark.parametrize("label_mode", ["int", "categorical", None])
def test_image_dataset_from_directory_matches_keras_index(folder, keras_modules, label_mode):
    _, _, dataset_utils = keras_modules
    ds = pynn.utils.image_dataset_from_directory(folder, label_mode=label_mode, batch_size=5,
                                                 image_size=(10, 12), seed=7, verbose=False)
    paths, labels, names = dataset_utils.index_directory(
        folder, "inferred", formats=(".bmp", ".gif", ".jpeg", ".jpg", ".png"), shuffle=True,
        seed=7, verbose=False)
    assert ds.class_names == names == CLASSES
    assert ds.file_paths == paths
    np.testing.assert_array_equal(ds.labels, labels)
    assert len(ds) == 3
    count = 0
    for batch in ds:
        x = batch if label_mode is None else batch[0]
        assert x.dtype == np.float32 and x.shape[1:] == (10, 12, 3)
        if label_mode == "int":
            assert batch[1].dtype == np.int32
        if label_mode == "categorical":
            assert batch[1].shape == (len(x), 3) and np.all(batch[1].sum(1) == 1)
        count += len(x)
    assert count == 12


def test_image_dataset_split_matches_keras(folder, keras_modules):
    _, _, dataset_utils = keras_modules
    train, val = pynn.utils.image_dataset_from_directory(
        folder, validation_split=0.25, subset="both", seed=3, image_size=(4, 4), verbose=False)
    paths, labels, _ = dataset_utils.index_directory(
        folder, "inferred", formats=(".bmp", ".gif", ".jpeg", ".jpg", ".png"), shuffle=True,
        seed=3, verbose=False)
    want_train, _ = dataset_utils.get_training_or_validation_split(paths, labels, 0.25,
                                                                   "training")
    want_val, _ = dataset_utils.get_training_or_validation_split(paths, labels, 0.25,
                                                                 "validation")
    assert train.file_paths == want_train and val.file_paths == want_val
    binary = pynn.utils.image_dataset_from_directory(
        folder, class_names=["dogs", "cats"], label_mode="binary", shuffle=False,
        image_size=(3, 3), batch_size=20, verbose=False)
    _, y = binary[0]
    assert y.shape == (9, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], [0] * 4 + [1] * 5)
    with pytest.raises(ValueError, match="give a seed"):
        pynn.utils.image_dataset_from_directory(folder, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match='label_mode="binary" needs exactly 2 classes'):
        pynn.utils.image_dataset_from_directory(folder, label_mode="binary", verbose=False)


# -- bad folders and files -------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*has one class folder")   # checked once, by pytest.warns
def test_bad_folders(tmp_path):
    gen = ImageDataGenerator()
    with pytest.raises(FileNotFoundError, match="flow_from_directory: .*missing is not a "
                                                "directory"):
        gen.flow_from_directory(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no class subfolders"):
        gen.flow_from_directory(str(empty))
    with pytest.raises(ValueError, match="image_dataset_from_directory: .*has no class "
                                         "subfolders"):
        pynn.utils.image_dataset_from_directory(str(empty))
    (empty / "a").mkdir()
    (empty / "a" / "readme.txt").write_text("x")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 files that are not images.*readme.txt"), \
            pytest.raises(ValueError, match=r"found no images \(png, jpg"):
        gen.flow_from_directory(str(empty))
    rng = np.random.default_rng(0)
    write_image(str(empty / "a" / "x.png"), (4, 4), "RGB", rng)
    with pytest.raises(ValueError, match="class_mode='binary' needs exactly 2 class folders, "
                                         "found 1"):
        quiet(gen.flow_from_directory, str(empty), class_mode="binary")
    with pytest.warns(RuntimeWarning, match="has one class folder \\(a\\): every label is 0"):
        gen.flow_from_directory(str(empty))
    with pytest.raises(ValueError, match=r"classes \['b'\] have no folder"):
        gen.flow_from_directory(str(empty), classes=["a", "b"])
    with pytest.raises(ValueError, match="class_mode must be one of"):
        gen.flow_from_directory(str(empty), class_mode="multi")
    with pytest.raises(ValueError, match="color_mode must be"):
        gen.flow_from_directory(str(empty), color_mode="cmyk")


def test_symlink_loop_is_read_once(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        write_image(str(tmp_path / cls / "sub" / "x.png"), (4, 4), "RGB", rng)
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")   # a/sub/loop -> a
    gen = ImageDataGenerator()
    with pytest.warns(RuntimeWarning, match="symlink loop"):
        it = gen.flow_from_directory(str(tmp_path), follow_links=True, shuffle=False)
    assert it.filenames == [os.path.join("a", "sub", "x.png"), os.path.join("b", "sub", "x.png")]
    plain = gen.flow_from_directory(str(tmp_path), follow_links=False, shuffle=False)
    assert plain.filenames == it.filenames


@pytest.fixture
def folder_with_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(3):
            write_image(str(tmp_path / cls / f"{i}.png"), (5, 6), "RGB", rng)
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(good[:len(good) // 2])    # truncated
    (tmp_path / "b" / "2.png").write_text("this is text, not a png")    # wrong content
    return tmp_path


def test_corrupt_file_is_reported_by_path(folder_with_corrupt_files):
    root = folder_with_corrupt_files
    it = ImageDataGenerator().flow_from_directory(str(root), batch_size=6, shuffle=False)
    with pytest.raises(ValueError, match=r"cannot decode image file .*a/1\.png"):
        it[0]
    ds = pynn.utils.image_dataset_from_directory(str(root), shuffle=False, batch_size=6,
                                                 verbose=False)
    with pytest.raises(ValueError, match=r"cannot decode image file .*a/1\.png"):
        ds[0]


def test_corrupt_files_skipped_when_asked(folder_with_corrupt_files):
    root = str(folder_with_corrupt_files)
    with pytest.warns(RuntimeWarning, match=r"skipped 2 unreadable image files: .*a/1\.png.*"
                                            r"b/2\.png"):
        it = ImageDataGenerator().flow_from_directory(root, batch_size=10, shuffle=False,
                                                      class_mode="sparse",
                                                      on_bad_image="skip")
    assert it.filenames == [os.path.join("a", "0.png"), os.path.join("a", "2.png"),
                            os.path.join("b", "0.png"), os.path.join("b", "1.png")]
    x, y = it[0]
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable"):
        ds = pynn.utils.image_dataset_from_directory(root, shuffle=False, batch_size=10,
                                                     image_size=(5, 6), on_bad_image="skip",
                                                     verbose=False)
    x, y = ds[0]
    assert x.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="on_bad_image must be 'raise' or 'skip', got 'warn'"):
        ImageDataGenerator().flow_from_directory(root, on_bad_image="warn")
