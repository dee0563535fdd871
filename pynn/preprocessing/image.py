"""Image augmentation (Keras's legacy ``ImageDataGenerator``) and image files.

Design:
- Names, arguments, defaults and numbers are those of ``keras.src.legacy.preprocessing.image``
  and ``keras.utils`` (load_img, img_to_array, array_to_img, save_img,
  image_dataset_from_directory). Data are channels_last (NHWC), pynn's only layout.
- Every geometric transform of an image (rotation, shifts, shear, zoom and the flips) is composed
  in NumPy into one 2x3 matrix, in Keras's order and with Keras's conventions, and a whole batch
  is resampled in one call of the native kernel ``pynn._native.augment.affine_resample``
  (OpenMP over the images, GIL released). Keras resamples each channel of each image with
  scipy.ndimage.affine_transform and flips afterwards; the kernel reproduces scipy's fill modes
  and interpolation, and a flip folded into the matrix reads the same pixels.
- Random parameters are drawn in NumPy, never in the kernel: batch ``i`` of epoch ``e`` of an
  iterator draws from ``default_rng([seed, e, i])``, so a batch depends only on its seed and
  position: the same at any thread count, in any order of ``__getitem__`` calls, from any
  number of worker threads. (Keras reseeds the global NumPy generator with ``seed + batches
  seen``, which depends on the call order; the draws therefore differ from Keras's, the
  transforms given the same parameters do not.) With ``seed=None`` an iterator draws its seed
  from NumPy's global generator, which ``pynn.set_random_seed`` seeds.
- Pillow decodes files; it is the optional extra ``pynn[image]`` and is imported only when a
  file is read or written. A file that cannot be decoded is reported by its path.
"""

import io
import math
import os
import pathlib
import threading
import warnings

import numpy as np

from pynn import _config

_PIL_HINT = "install Pillow, pynn's optional extra: pip install 'pynn[image]'"
# Keras's legacy iterators read these extensions; image_dataset_from_directory its own list.
WHITE_LIST_FORMATS = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff")
DATASET_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_COLOR_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


def _resample(x, source, matrices, order, fill_mode, cval):
    """The native pass; imported here so that ``import pynn`` (whose utils re-export this
    module) never needs the kernel, only augmenting does."""
    from pynn._native import augment

    _config.apply_to_this_thread()
    out = np.empty((len(source),) + x.shape[1:], x.dtype)
    augment.affine_resample(x, source, matrices, out, order, augment.FILL_MODES[fill_mode],
                            float(cval))
    return out


def _pil_image():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"reading and writing image files needs Pillow: {_PIL_HINT}") from exc
    return Image


def _interpolation(name):
    Image = _pil_image()
    methods = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
    if name not in methods:
        raise ValueError(f"invalid interpolation {name!r}: expected one of {sorted(methods)}")
    return methods[name]


def _check_data_format(where, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{where}: pynn's images are channels_last (NHWC), got "
                         f"data_format={data_format!r}")


# -- image files ----------------------------------------------------------------------------------
def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest",
             keep_aspect_ratio=False):
    """Load an image file into a PIL image (Keras's ``keras.utils.load_img``).

    ``target_size`` is ``(height, width)``; ``keep_aspect_ratio`` crops the centre to the target
    aspect ratio before resizing. A file Pillow cannot decode (corrupt, truncated, not an image)
    raises ValueError naming the path.
    """
    Image = _pil_image()
    if color_mode not in _COLOR_CHANNELS:
        raise ValueError(f'load_img: color_mode must be "grayscale", "rgb" or "rgba", got '
                         f"{color_mode!r}")
    if isinstance(path, io.BytesIO):
        source, name = path, "<BytesIO>"
    elif isinstance(path, (str, bytes, pathlib.Path)):
        name = os.fsdecode(path)
        with open(path, "rb") as f:
            source = io.BytesIO(f.read())
    else:
        raise TypeError(f"load_img: path should be path-like or io.BytesIO, got {type(path)}")
    try:
        img = Image.open(source)
        img.load()   # decodes now: a truncated file fails here, not later in a batch
    except (OSError, ValueError, SyntaxError) as exc:   # Pillow's decoders raise all three
        raise ValueError(f"load_img: cannot decode image file {name}: {exc}") from exc
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif img.mode != color_mode.upper():
        img = img.convert(color_mode.upper())
    if target_size is not None:
        size = (int(target_size[1]), int(target_size[0]))   # PIL sizes are (width, height)
        if img.size != size:
            resample = _interpolation(interpolation)
            box = None
            if keep_aspect_ratio:
                width, height = img.size
                crop_height = min(height, (width * size[1]) // size[0])
                crop_width = min(width, (height * size[0]) // size[1])
                top, left = (height - crop_height) // 2, (width - crop_width) // 2
                box = [left, top, left + crop_width, top + crop_height]
            img = img.resize(size, resample, box=box)
    return img


def img_to_array(img, data_format=None, dtype=None):
    """A PIL image as an (H, W, C) float array (C = 1 for grayscale)."""
    _check_data_format("img_to_array", data_format)
    x = np.asarray(img, dtype=dtype or _config.floatx())
    if x.ndim == 2:
        return x.reshape(x.shape[0], x.shape[1], 1)
    if x.ndim != 3:
        raise ValueError(f"img_to_array: unsupported image shape {x.shape}")
    return x


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """An (H, W, C) array, C in {1, 3, 4}, as a PIL image; ``scale`` maps [min, max] to
    [0, 255]. Values are truncated to uint8 as Keras does."""
    _check_data_format("array_to_img", data_format)
    Image = _pil_image()
    x = np.array(x, dtype=dtype or _config.floatx())
    if x.ndim != 3:
        raise ValueError(f"array_to_img: expected a rank-3 (H, W, C) image, got shape {x.shape}")
    if scale:
        x -= np.min(x)
        x_max = np.max(x)
        if x_max != 0:
            x /= x_max
        x *= 255
    if x.shape[2] == 4:
        return Image.fromarray(x.astype("uint8"), "RGBA")
    if x.shape[2] == 3:
        return Image.fromarray(x.astype("uint8"), "RGB")
    if x.shape[2] == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"), "I")
        return Image.fromarray(x[:, :, 0].astype("uint8"), "L")
    raise ValueError(f"array_to_img: expected 1, 3 or 4 channels, got {x.shape[2]}")


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Save an (H, W, C) array as an image file; the format comes from the extension unless
    ``file_format`` is given. kwargs go to ``PIL.Image.save``."""
    if file_format is None and isinstance(path, (str, pathlib.Path)):
        file_format = pathlib.Path(path).suffix[1:].lower()
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("save_img: JPEG does not support RGBA images, converting to RGB",
                      stacklevel=2)
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


def _load_batch(paths, color_mode, target_size, interpolation, keep_aspect_ratio, dtype):
    """Decode files into one (n, H, W, C) array. Pillow releases the GIL while it decodes and
    resizes, so a few threads overlap the files of a batch."""
    out = np.empty((len(paths),) + tuple(target_size) + (_COLOR_CHANNELS[color_mode],), dtype)

    def load(i):
        img = load_img(paths[i], color_mode=color_mode, target_size=target_size,
                       interpolation=interpolation, keep_aspect_ratio=keep_aspect_ratio)
        out[i] = img_to_array(img, dtype=dtype)
        img.close()

    if len(paths) < 4:
        for i in range(len(paths)):
            load(i)
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, _config.usable_cores())) as pool:
        list(pool.map(load, range(len(paths))))   # list() re-raises the first error
    return out


def _walk_files(directory, extensions, follow_links, where):
    """(root, filename) of the files under ``directory`` whose lower-cased name ends with one of
    ``extensions``, in Keras's order (roots sorted, files sorted), and the other files skipped.
    With follow_links a directory reached twice (a symlink loop or two links to one folder) is
    walked once, with a warning; os.walk alone would follow a loop until the path is too long."""
    seen = set()
    found, skipped = [], []
    walk = []
    for root, dirs, files in os.walk(directory, followlinks=follow_links):
        if follow_links:
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                warnings.warn(f"{where}: {root} leads to a folder already read (a symlink "
                              f"loop?); skipped", RuntimeWarning, stacklevel=3)
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        walk.append((root, files))
    for root, files in sorted(walk, key=lambda item: item[0]):
        for fname in sorted(files):
            if fname.lower().endswith(extensions):
                found.append((root, fname))
            elif not fname.startswith("."):
                skipped.append(os.path.join(root, fname))
    return found, skipped


def _class_folders(directory, classes, where, skip_hidden):
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{where}: {directory} is not a directory")
    subdirs = [d for d in sorted(os.listdir(directory))
               if os.path.isdir(os.path.join(directory, d))
               and not (skip_hidden and d.startswith("."))]
    if classes:
        missing = [c for c in classes if c not in subdirs]
        if missing:
            raise ValueError(f"{where}: classes {missing} have no folder in {directory} "
                             f"(folders found: {subdirs})")
        return list(classes)
    if not subdirs:
        raise ValueError(f"{where}: {directory} has no class subfolders: put the images of "
                         f"each class in a folder of its own ({directory}/<class>/<image>)")
    return subdirs


def _index_class_files(directory, class_names, extensions, follow_links, where, split=None):
    """(relative filenames, class index per file, paths skipped as not images)."""
    filenames, labels, skipped = [], [], []
    for index, name in enumerate(class_names):
        class_dir = os.path.join(directory, name)
        found, other = _walk_files(class_dir, extensions, follow_links, where)
        if split is not None:
            found = found[int(split[0] * len(found)):int(split[1] * len(found))]
        filenames += [os.path.join(name, os.path.relpath(os.path.join(root, fname), class_dir))
                      for root, fname in found]
        labels += [index] * len(found)
        skipped += other
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"{where}: skipped {len(skipped)} files that are not images of the "
                      f"formats {extensions}: {shown}", RuntimeWarning, stacklevel=3)
    if not filenames:
        raise ValueError(f"{where}: found no images ({', '.join(extensions)}) in the class "
                         f"folders {class_names} of {directory}")
    return filenames, np.asarray(labels, dtype=np.int32), skipped


def _drop_unreadable(directory, filenames, labels, where):
    """on_bad_image='skip': decode every file once, warn about those that fail, keep the rest
    (with their own labels, so no label shifts onto another file)."""
    keep = []
    bad = []
    for i, fname in enumerate(filenames):
        try:
            load_img(os.path.join(directory, fname)).close()
            keep.append(i)
        except (ValueError, OSError) as exc:
            bad.append(f"{os.path.join(directory, fname)} ({exc.__cause__ or exc})")
    if bad:
        warnings.warn(f"{where}: skipped {len(bad)} unreadable image files: " + "; ".join(bad),
                      RuntimeWarning, stacklevel=3)
    if not keep:
        raise ValueError(f"{where}: no readable image in {directory}")
    return [filenames[i] for i in keep], labels[keep]


def _check_on_bad_image(where, on_bad_image):
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"{where}: on_bad_image must be 'raise' or 'skip', got "
                         f"{on_bad_image!r}")


# -- iterators ------------------------------------------------------------------------------------
class Iterator:
    """A Keras-style Sequence of batches (Keras 3's PyDataset protocol: ``__len__``,
    ``__getitem__``, ``on_epoch_end``). Iterating it, as Keras's does, never ends: it runs
    through the epochs, reshuffling between them."""

    white_list_formats = WHITE_LIST_FORMATS

    def __init__(self, n, batch_size, shuffle, seed, workers=1, use_multiprocessing=False,
                 max_queue_size=10):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = seed
        # NumPy's global generator, which pynn.set_random_seed seeds, picks a missing seed.
        self._base_seed = int(seed) if seed is not None else int(np.random.randint(2**31 - 1))
        self.epoch = 0
        self.index_array = None
        self.batch_index = 0
        self.total_batches_seen = 0
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size
        self._lock = threading.Lock()

    def _set_index_array(self):
        if self.shuffle:
            self.index_array = np.random.default_rng([self._base_seed, self.epoch]) \
                .permutation(self.n)
        else:
            self.index_array = np.arange(self.n)

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    @property
    def num_batches(self):
        return len(self)

    def __getitem__(self, idx):
        if not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(self):
            raise IndexError(f"{type(self).__name__}: batch {idx!r} out of range: it has "
                             f"{len(self)} batches")
        with self._lock:
            if self.index_array is None:
                self._set_index_array()
            index_array, epoch = self.index_array, self.epoch
        return self._batch(index_array, epoch, int(idx))

    def _batch(self, index_array, epoch, idx):
        rng = np.random.default_rng([self._base_seed, epoch, idx])
        return self._get_batches_of_transformed_samples(
            index_array[self.batch_size * idx:self.batch_size * (idx + 1)], rng)

    def on_epoch_end(self):
        with self._lock:
            self.epoch += 1
            self._set_index_array()

    def reset(self):
        self.batch_index = 0

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self.index_array is None:
                self._set_index_array()
            if self.batch_index >= len(self):
                self.epoch += 1
                self._set_index_array()
                self.batch_index = 0
            idx = self.batch_index
            self.batch_index += 1
            self.total_batches_seen += 1
            index_array, epoch = self.index_array, self.epoch
        return self._batch(index_array, epoch, idx)

    def _save_batch(self, batch_x, index_array, rng):
        for x, j in zip(batch_x, index_array):
            fname = f"{self.save_prefix}_{j}_{int(rng.integers(10**7))}.{self.save_format}"
            save_img(os.path.join(self.save_to_dir, fname), x, scale=True)

    def _get_batches_of_transformed_samples(self, index_array, rng):
        raise NotImplementedError


class NumpyArrayIterator(Iterator):
    """Batches of augmented images from an array (``ImageDataGenerator.flow``)."""

    def __init__(self, x, y, image_data_generator, batch_size=32, shuffle=False,
                 sample_weight=None, seed=None, data_format=None, save_to_dir=None,
                 save_prefix="", save_format="png", subset=None, ignore_class_split=False,
                 dtype=None):
        where = "ImageDataGenerator.flow"
        _check_data_format(where, data_format)
        self.dtype = dtype or image_data_generator.dtype
        x_misc = []
        if isinstance(x, (tuple, list)):
            x_misc = [np.asarray(m) for m in (x[1] if isinstance(x[1], list) else [x[1]])]
            x = x[0]
            for m in x_misc:
                if len(m) != len(x):
                    raise ValueError(f"{where}: all arrays in x must have the same length, "
                                     f"got {len(x)} images and {len(m)} rows")
        x = np.asarray(x)
        if y is not None and len(x) != len(y):
            raise ValueError(f"{where}: x (images) and y (labels) must have the same length, "
                             f"got x.shape={x.shape}, y.shape={np.shape(y)}")
        if sample_weight is not None and len(x) != len(sample_weight):
            raise ValueError(f"{where}: x and sample_weight must have the same length, got "
                             f"x.shape={x.shape}, sample_weight.shape={np.shape(sample_weight)}")
        if subset is not None:
            if subset not in ("training", "validation"):
                raise ValueError(f'{where}: subset must be "training" or "validation", got '
                                 f"{subset!r}")
            split = int(len(x) * image_data_generator._validation_split)
            if (y is not None and not ignore_class_split
                    and not np.array_equal(np.unique(y[:split]), np.unique(y[split:]))):
                raise ValueError(f"{where}: the training and validation subsets have different "
                                 f"classes after the split; if the arrays are sorted by label, "
                                 f"shuffle them first")
            part = slice(None, split) if subset == "validation" else slice(split, None)
            x, x_misc = x[part], [m[part] for m in x_misc]
            y = None if y is None else y[part]
            sample_weight = None if sample_weight is None else sample_weight[part]
        if x.ndim != 4:
            raise ValueError(f"{where}: expected images of rank 4 (N, H, W, C), got shape "
                             f"{x.shape}")
        if x.shape[3] not in (1, 3, 4):
            warnings.warn(f"{where}: expected 1, 3 or 4 channels on the last axis "
                          f"(channels_last), got shape {x.shape}", stacklevel=3)
        self.x = np.asarray(x, dtype=self.dtype)
        self.x_misc = x_misc
        self.y = None if y is None else np.asarray(y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.image_data_generator = image_data_generator
        self.data_format = "channels_last"
        self.save_to_dir, self.save_prefix, self.save_format = save_to_dir, save_prefix, \
            save_format
        super().__init__(len(self.x), batch_size, shuffle, seed)

    def _get_batches_of_transformed_samples(self, index_array, rng):
        gen = self.image_data_generator
        batch_x = gen.standardize(gen._transform_batch(self.x, rng, index_array))
        if self.save_to_dir:
            self._save_batch(batch_x, index_array, rng)
        misc = [m[index_array] for m in self.x_misc]
        out_x = [batch_x] + misc if misc else batch_x
        if self.y is None:
            return out_x
        if self.sample_weight is None:
            return out_x, self.y[index_array]
        return out_x, self.y[index_array], self.sample_weight[index_array]


class DirectoryIterator(Iterator):
    """Batches of augmented images read from class folders (``flow_from_directory``).

    ``class_indices`` maps folder names to labels (sorted folder names unless ``classes``
    orders them), ``filenames`` are relative to ``directory``, ``classes`` holds each file's
    label and ``samples`` their count, all as Keras.
    """

    allowed_class_modes = frozenset({"categorical", "binary", "sparse", "input", None})

    def __init__(self, directory, image_data_generator, target_size=(256, 256),
                 color_mode="rgb", classes=None, class_mode="categorical", batch_size=32,
                 shuffle=True, seed=None, data_format=None, save_to_dir=None, save_prefix="",
                 save_format="png", follow_links=False, subset=None, interpolation="nearest",
                 keep_aspect_ratio=False, dtype=None, on_bad_image="raise"):
        where = "flow_from_directory"
        _check_data_format(where, data_format)
        _check_on_bad_image(where, on_bad_image)
        if color_mode not in _COLOR_CHANNELS:
            raise ValueError(f'{where}: color_mode must be "grayscale", "rgb" or "rgba", got '
                             f"{color_mode!r}")
        if class_mode not in self.allowed_class_modes:
            raise ValueError(f"{where}: class_mode must be one of 'categorical', 'binary', "
                             f"'sparse', 'input' or None, got {class_mode!r}")
        _interpolation(interpolation)
        split = None
        if subset is not None:
            vs = image_data_generator._validation_split
            if subset not in ("training", "validation"):
                raise ValueError(f'{where}: subset must be "training" or "validation", got '
                                 f"{subset!r}")
            split = (0, vs) if subset == "validation" else (vs, 1)
        self.directory = os.fspath(directory)
        self.image_data_generator = image_data_generator
        self.target_size = tuple(int(s) for s in target_size)
        self.color_mode = color_mode
        self.image_shape = self.target_size + (_COLOR_CHANNELS[color_mode],)
        self.class_mode = class_mode
        self.dtype = dtype or (image_data_generator.dtype if image_data_generator
                               else _config.floatx())
        self.data_format = "channels_last"
        self.interpolation = interpolation
        self.keep_aspect_ratio = keep_aspect_ratio
        self.subset, self.split = subset, split
        self.save_to_dir, self.save_prefix, self.save_format = save_to_dir, save_prefix, \
            save_format
        names = _class_folders(self.directory, classes, where, skip_hidden=False)
        if class_mode == "binary" and len(names) != 2:
            raise ValueError(f"{where}: class_mode='binary' needs exactly 2 class folders, "
                             f"found {len(names)} in {self.directory}: {names}")
        if len(names) == 1 and class_mode in ("categorical", "sparse"):
            warnings.warn(f"{where}: {self.directory} has one class folder ({names[0]}): every "
                          f"label is 0", RuntimeWarning, stacklevel=3)
        self.num_classes = len(names)
        self.class_indices = dict(zip(names, range(len(names))))
        filenames, labels, _ = _index_class_files(self.directory, names,
                                                  tuple(self.white_list_formats),
                                                  follow_links, where, split)
        if on_bad_image == "skip":
            filenames, labels = _drop_unreadable(self.directory, filenames, labels, where)
        self.filenames = filenames
        self.classes = labels
        self.samples = len(filenames)
        self._filepaths = [os.path.join(self.directory, f) for f in filenames]
        print(f"Found {self.samples} images belonging to {self.num_classes} classes.")
        super().__init__(self.samples, batch_size, shuffle, seed)

    @property
    def filepaths(self):
        return self._filepaths

    @property
    def labels(self):
        return self.classes

    @property
    def sample_weight(self):
        return None

    def _get_batches_of_transformed_samples(self, index_array, rng):
        batch_x = _load_batch([self._filepaths[j] for j in index_array], self.color_mode,
                              self.target_size, self.interpolation, self.keep_aspect_ratio,
                              self.dtype)
        gen = self.image_data_generator
        if gen:
            batch_x = gen.standardize(gen._transform_batch(batch_x, rng))
        if self.save_to_dir:
            self._save_batch(batch_x, index_array, rng)
        labels = self.classes[index_array]
        if self.class_mode == "input":
            return batch_x, batch_x.copy()
        if self.class_mode in ("binary", "sparse"):
            return batch_x, labels.astype(self.dtype)
        if self.class_mode == "categorical":
            batch_y = np.zeros((len(batch_x), self.num_classes), dtype=self.dtype)
            batch_y[np.arange(len(batch_x)), labels] = 1
            return batch_x, batch_y
        return batch_x


# -- the generator ---------------------------------------------------------------------------------
def _shift_spec(name, value):
    """Keras's shift ranges: a float draws uniformly in (-v, v); an int n draws an integer in
    [0, n) and a random sign; a list draws one of its values and a sign. Values below 1 are
    fractions of the image size."""
    if isinstance(value, bool):
        raise ValueError(f"ImageDataGenerator: {name} must be a float, an int or a list of "
                         f"numbers, got {value!r}")
    if isinstance(value, (float, np.floating)):
        return ("uniform", float(value))
    if isinstance(value, (int, np.integer)):
        return ("choice", np.arange(int(value))) if value else ("none", 0.0)
    values = np.asarray(value)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"ImageDataGenerator: {name} must be a float, an int or a list of "
                         f"numbers, got {value!r}")
    return ("choice", values)


class ImageDataGenerator:
    """Real-time image augmentation with Keras's arguments (``keras.preprocessing.image.
    ImageDataGenerator``): ``flow`` for arrays, ``flow_from_directory`` for class folders.

    Per image, in Keras's order: one affine resampling (rotation, shifts, shear, zoom and the
    flips, composed into one matrix), channel shift, brightness (through 8-bit values, as
    Keras's Pillow-based brightness), then ``standardize``: preprocessing_function, rescale,
    samplewise and featurewise normalization, ZCA whitening.
    """

    def __init__(self, featurewise_center=False, samplewise_center=False,
                 featurewise_std_normalization=False, samplewise_std_normalization=False,
                 zca_whitening=False, zca_epsilon=1e-6, rotation_range=0, width_shift_range=0.0,
                 height_shift_range=0.0, brightness_range=None, shear_range=0.0, zoom_range=0.0,
                 channel_shift_range=0.0, fill_mode="nearest", cval=0.0, horizontal_flip=False,
                 vertical_flip=False, rescale=None, preprocessing_function=None,
                 data_format=None, validation_split=0.0, interpolation_order=1, dtype=None):
        where = "ImageDataGenerator"
        _check_data_format(where, data_format)
        if fill_mode not in FILL_MODES:
            raise ValueError(f"{where}: fill_mode must be one of {FILL_MODES}, got "
                             f"{fill_mode!r}")
        if interpolation_order not in (0, 1):
            raise ValueError(f"{where}: interpolation_order must be 0 (nearest) or 1 "
                             f"(bilinear), got {interpolation_order!r}")
        if validation_split and not 0 < validation_split < 1:
            raise ValueError(f"{where}: validation_split must be strictly between 0 and 1, got "
                             f"{validation_split!r}")
        dtype = str(np.dtype(dtype or _config.floatx()))
        if dtype not in ("float32", "float64"):
            raise ValueError(f"{where}: dtype must be float32 or float64, got {dtype!r}")
        if isinstance(zoom_range, (float, int)) and not isinstance(zoom_range, bool):
            zoom = [1 - zoom_range, 1 + zoom_range]
        elif (isinstance(zoom_range, (list, tuple)) and len(zoom_range) == 2
              and all(isinstance(v, (float, int)) for v in zoom_range)):
            zoom = [zoom_range[0], zoom_range[1]]
        else:
            raise ValueError(f"{where}: zoom_range must be a float or a list of two floats, got "
                             f"{zoom_range!r}")
        if brightness_range is not None and (not isinstance(brightness_range, (tuple, list))
                                             or len(brightness_range) != 2):
            raise ValueError(f"{where}: brightness_range must be a tuple or list of two floats, "
                             f"got {brightness_range!r}")
        self._width_shift = _shift_spec("width_shift_range", width_shift_range)
        self._height_shift = _shift_spec("height_shift_range", height_shift_range)
        self.featurewise_center = featurewise_center
        self.samplewise_center = samplewise_center
        self.featurewise_std_normalization = featurewise_std_normalization
        self.samplewise_std_normalization = samplewise_std_normalization
        self.zca_whitening = zca_whitening
        self.zca_epsilon = zca_epsilon
        self.rotation_range = rotation_range
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.shear_range = shear_range
        self.zoom_range = zoom
        self.channel_shift_range = channel_shift_range
        self.fill_mode = fill_mode
        self.cval = cval
        self.horizontal_flip = horizontal_flip
        self.vertical_flip = vertical_flip
        self.rescale = rescale
        self.preprocessing_function = preprocessing_function
        self.data_format = "channels_last"
        self.channel_axis, self.row_axis, self.col_axis = 3, 1, 2
        self.interpolation_order = interpolation_order
        self.brightness_range = brightness_range
        self.dtype = dtype
        self._validation_split = validation_split
        self.mean = None
        self.std = None
        self.zca_whitening_matrix = None
        # Keras's implied settings: each of these needs the centring it builds on.
        if zca_whitening:
            if not featurewise_center:
                self.featurewise_center = True
                warnings.warn(f"{where}: zca_whitening overrides featurewise_center",
                              stacklevel=2)
            if featurewise_std_normalization:
                self.featurewise_std_normalization = False
                warnings.warn(f"{where}: zca_whitening overrides "
                              f"featurewise_std_normalization", stacklevel=2)
        if self.featurewise_std_normalization and not self.featurewise_center:
            self.featurewise_center = True
            warnings.warn(f"{where}: featurewise_std_normalization overrides "
                          f"featurewise_center", stacklevel=2)
        if samplewise_std_normalization and not samplewise_center:
            self.samplewise_center = True
            warnings.warn(f"{where}: samplewise_std_normalization overrides samplewise_center",
                          stacklevel=2)

    # -- iterators --
    def flow(self, x, y=None, batch_size=32, shuffle=True, sample_weight=None, seed=None,
             save_to_dir=None, save_prefix="", save_format="png", ignore_class_split=False,
             subset=None):
        """Batches ``(x, y)`` (or ``(x, y, sample_weight)``; ``x`` alone without y) of
        augmented, standardized images from the array ``x`` (N, H, W, C)."""
        return NumpyArrayIterator(x, y, self, batch_size=batch_size, shuffle=shuffle,
                                  sample_weight=sample_weight, seed=seed,
                                  save_to_dir=save_to_dir, save_prefix=save_prefix,
                                  save_format=save_format, ignore_class_split=ignore_class_split,
                                  subset=subset, dtype=self.dtype)

    def flow_from_directory(self, directory, target_size=(256, 256), color_mode="rgb",
                            classes=None, class_mode="categorical", batch_size=32, shuffle=True,
                            seed=None, save_to_dir=None, save_prefix="", save_format="png",
                            follow_links=False, subset=None, interpolation="nearest",
                            keep_aspect_ratio=False, on_bad_image="raise"):
        """Batches of augmented images read from ``directory/<class>/...`` image files.

        ``on_bad_image`` (pynn's): 'raise' (default) fails at the batch that holds an
        undecodable file, naming it; 'skip' decodes every file once up front and leaves out,
        with a warning, those that fail.
        """
        return DirectoryIterator(directory, self, target_size=target_size,
                                 color_mode=color_mode, classes=classes, class_mode=class_mode,
                                 batch_size=batch_size, shuffle=shuffle, seed=seed,
                                 save_to_dir=save_to_dir, save_prefix=save_prefix,
                                 save_format=save_format, follow_links=follow_links,
                                 subset=subset, interpolation=interpolation,
                                 keep_aspect_ratio=keep_aspect_ratio, dtype=self.dtype,
                                 on_bad_image=on_bad_image)

    # -- random parameters --
    def _draw_shift(self, rng, spec, n, size):
        kind, values = spec
        if kind == "none":
            return np.zeros(n)
        if kind == "uniform":
            if not values:
                return np.zeros(n)
            shift = rng.uniform(-values, values, n)
        else:
            shift = rng.choice(values, n).astype(np.float64) * rng.choice([-1, 1], n)
        if np.max(values) < 1:
            shift *= size
        return shift

    def _draw_parameters(self, rng, n, img_shape):
        """Transform parameters of ``n`` images of shape (H, W, C), as arrays keyed by Keras's
        names (``channel_shift_intensity`` and ``brightness`` are None when unused)."""
        h, w = img_shape[0], img_shape[1]
        rotation = self.rotation_range
        zoom = self.zoom_range
        if zoom[0] == 1 and zoom[1] == 1:
            zx = zy = np.ones(n)
        else:
            zx, zy = rng.uniform(zoom[0], zoom[1], (n, 2)).T
        params = {
            "theta": rng.uniform(-rotation, rotation, n) if rotation else np.zeros(n),
            "tx": self._draw_shift(rng, self._height_shift, n, h),
            "ty": self._draw_shift(rng, self._width_shift, n, w),
            "shear": (rng.uniform(-self.shear_range, self.shear_range, n) if self.shear_range
                      else np.zeros(n)),
            "zx": zx,
            "zy": zy,
            "flip_horizontal": (rng.random(n) < 0.5) & bool(self.horizontal_flip),
            "flip_vertical": (rng.random(n) < 0.5) & bool(self.vertical_flip),
            "channel_shift_intensity": None,
            "brightness": None,
        }
        if self.channel_shift_range != 0:
            params["channel_shift_intensity"] = rng.uniform(
                -self.channel_shift_range, self.channel_shift_range, n)
        if self.brightness_range is not None:
            params["brightness"] = rng.uniform(self.brightness_range[0],
                                               self.brightness_range[1], n)
        return params

    def get_random_transform(self, img_shape, seed=None):
        """Random transform parameters of one image of shape (H, W, C), a dict of Keras's
        keys: theta, tx, ty, shear, zx, zy, flip_horizontal, flip_vertical,
        channel_shift_intensity, brightness."""
        if seed is None:
            seed = int(np.random.randint(2**31 - 1))
        params = self._draw_parameters(np.random.default_rng(seed), 1, img_shape)
        return {key: (None if value is None else value[0].item())
                for key, value in params.items()}

    # -- applying them --
    def _transform_batch(self, x, rng, source=None):
        """The images ``x[source]`` (all of x by default) randomly transformed."""
        n = len(x) if source is None else len(source)
        return self._apply_batch(x, self._draw_parameters(rng, n, x.shape[1:]), source)

    def _apply_batch(self, x, params, source=None):
        """Transform the images ``x[source]`` (x: (M, H, W, C)) by per-image parameter arrays;
        the kernel reads them from ``x`` directly, so a batch is never gathered first."""
        source = np.arange(len(x), dtype=np.intp) if source is None \
            else np.ascontiguousarray(source, dtype=np.intp)
        n, (h, w) = len(source), x.shape[1:3]
        matrices = affine_matrices(params, n, h, w)
        if np.array_equal(matrices, np.broadcast_to(_IDENTITY, matrices.shape)):
            out = np.asarray(x[source], dtype=self.dtype)
        else:
            out = _resample(np.ascontiguousarray(x, dtype=self.dtype), source,
                            np.ascontiguousarray(matrices.reshape(n, 6)),
                            self.interpolation_order, self.fill_mode, self.cval)
        if params.get("channel_shift_intensity") is not None:
            out = _channel_shift(out, np.asarray(params["channel_shift_intensity"], float))
        if params.get("brightness") is not None:
            out = _brightness_shift(out, np.asarray(params["brightness"], float))
        return out

    def apply_transform(self, x, transform_parameters):
        """Transform one image (H, W, C) by a dict of parameters as ``get_random_transform``
        makes (missing keys mean no change)."""
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"ImageDataGenerator.apply_transform: expected one image (H, W, C), "
                             f"got shape {x.shape}")
        defaults = {"theta": 0, "tx": 0, "ty": 0, "shear": 0, "zx": 1, "zy": 1,
                    "flip_horizontal": False, "flip_vertical": False}
        params = {key: np.atleast_1d(np.asarray(transform_parameters.get(key, default),
                                                dtype=float))
                  for key, default in defaults.items()}
        for key in ("channel_shift_intensity", "brightness"):
            value = transform_parameters.get(key)
            params[key] = None if value is None else np.atleast_1d(float(value))
        bad = {k: float(v[0]) for k, v in params.items()
               if v is not None and not np.isfinite(v).all()}
        if bad:
            raise ValueError(f"ImageDataGenerator.apply_transform: transform parameters must be "
                             f"finite, got {bad}")
        return self._apply_batch(x[None], params)[0]

    def random_transform(self, x, seed=None):
        """One image (H, W, C) randomly transformed."""
        return self.apply_transform(x, self.get_random_transform(np.shape(x), seed))

    # -- normalization --
    def standardize(self, x):
        """Normalize one image (H, W, C) or a batch (N, H, W, C), in place where the dtype
        allows (as Keras), and return it."""
        if self.preprocessing_function:
            if x.ndim == 4:
                x = np.stack([self.preprocessing_function(image) for image in x])
            else:
                x = self.preprocessing_function(x)
        if self.rescale:
            x *= self.rescale
        axes = (-3, -2, -1)
        if self.samplewise_center:
            x -= np.mean(x, axis=axes, keepdims=True)
        if self.samplewise_std_normalization:
            x /= np.std(x, axis=axes, keepdims=True) + 1e-6
        if self.featurewise_center:
            if self.mean is None:
                warnings.warn("ImageDataGenerator specifies featurewise_center but has not been "
                              "fit on data: call .fit(x) first", stacklevel=2)
            else:
                x -= self.mean
        if self.featurewise_std_normalization:
            if self.std is None:
                warnings.warn("ImageDataGenerator specifies featurewise_std_normalization but "
                              "has not been fit on data: call .fit(x) first", stacklevel=2)
            else:
                x /= self.std + 1e-6
        if self.zca_whitening:
            if self.zca_whitening_matrix is None:
                warnings.warn("ImageDataGenerator specifies zca_whitening but has not been fit "
                              "on data: call .fit(x) first", stacklevel=2)
            else:
                flat = x.reshape(-1, math.prod(x.shape[-3:]))
                x = (flat @ self.zca_whitening_matrix).reshape(x.shape).astype(x.dtype)
        return x

    def fit(self, x, augment=False, rounds=1, seed=None):
        """Compute the featurewise mean, std and ZCA matrix from sample images (N, H, W, C),
        rescaled first; ``augment`` fits on ``rounds`` randomly augmented copies."""
        x = np.array(x, dtype=self.dtype)
        if x.ndim != 4:
            raise ValueError(f"ImageDataGenerator.fit: expected images of rank 4 (N, H, W, C), "
                             f"got shape {x.shape}")
        if x.shape[3] not in (1, 3, 4):
            warnings.warn(f"ImageDataGenerator.fit: expected 1, 3 or 4 channels on the last "
                          f"axis, got shape {x.shape}", stacklevel=2)
        if self.rescale:
            x *= self.rescale
        if augment:
            rng = np.random.default_rng(seed)
            x = np.concatenate([self._transform_batch(x, rng) for _ in range(rounds)])
        if self.featurewise_center:
            self.mean = np.mean(x, axis=(0, 1, 2)).reshape(1, 1, -1)
            x -= self.mean
        if self.featurewise_std_normalization:
            self.std = np.std(x, axis=(0, 1, 2)).reshape(1, 1, -1)
            x /= self.std + 1e-6
        if self.zca_whitening:
            flat = x.reshape(len(x), -1)
            u, s, _ = np.linalg.svd(flat.T, full_matrices=False)
            s_inv = np.sqrt(len(x)) / (s + self.zca_epsilon)
            self.zca_whitening_matrix = (u * s_inv) @ u.T


_IDENTITY = np.array([[1.0, 0, 0], [0, 1, 0]])


def affine_matrices(params, n, h, w):
    """(n, 2, 3) matrices mapping output (row, col, 1) to input (row, col) for images of
    H x W: Keras's composition rotation @ shift @ shear @ zoom about the centre, in Keras's
    x/y convention (its axes are swapped at the end, so tx, scaled by the height, moves
    columns and the centre offsets swap on non-square images, exactly as Keras), then the
    flips Keras applies to the result folded in as index reversals."""
    def stack(rows):
        return np.stack([np.stack(np.broadcast_arrays(*row), -1) for row in rows], -2)

    zero, one = np.zeros(n), np.ones(n)
    theta = np.deg2rad(np.broadcast_to(params["theta"], n))
    shear = np.deg2rad(np.broadcast_to(params["shear"], n))
    rotation = stack([[np.cos(theta), -np.sin(theta), zero], [np.sin(theta), np.cos(theta), zero],
                      [zero, zero, one]])
    shift = stack([[one, zero, params["tx"]], [zero, one, params["ty"]], [zero, zero, one]])
    shear_m = stack([[one, -np.sin(shear), zero], [zero, np.cos(shear), zero],
                     [zero, zero, one]])
    zoom = stack([[params["zx"], zero, zero], [zero, params["zy"], zero], [zero, zero, one]])
    m = rotation @ shift @ shear_m @ zoom
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    m = offset @ m @ reset
    m = m[:, [1, 0]][:, :, [1, 0, 2]]
    flip_v = np.broadcast_to(np.asarray(params["flip_vertical"], bool), n)
    flip_h = np.broadcast_to(np.asarray(params["flip_horizontal"], bool), n)
    # out(r, c) = affine(h-1-r, c) for a vertical flip: the row column of m negates and its
    # constant gains (h-1) times it; likewise for columns.
    m[flip_v, :, 2] += (h - 1) * m[flip_v, :, 0]
    m[flip_v, :, 0] *= -1
    m[flip_h, :, 2] += (w - 1) * m[flip_h, :, 1]
    m[flip_h, :, 1] *= -1
    return np.ascontiguousarray(m)


def _channel_shift(x, intensity):
    """Keras's apply_channel_shift per image: x + intensity, clipped to the image's own range
    (computed in float64 as Keras's NumPy does, then rounded to the batch dtype)."""
    axes = (1, 2, 3)
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    shifted = x.astype(np.float64) + intensity[:, None, None, None]
    return np.clip(shifted, lo, hi).astype(x.dtype)


def _brightness_shift(x, brightness):
    """Keras's apply_brightness_shift(scale=False) per image, which goes through Pillow's
    ImageEnhance.Brightness on an 8-bit copy: the image is truncated to uint8 (after mapping
    [min, max] to [0, 255] when it leaves that range), multiplied by the float32 factor and
    truncated again, then mapped back. Pillow's blend is reproduced in float32 here."""
    x32 = x.astype(np.float32)
    axes = (1, 2, 3)
    x_min = x32.min(axis=axes, keepdims=True)
    x_max = x32.max(axis=axes, keepdims=True)
    local_scale = (x_min < 0) | (x_max > 255)
    scaled = x32 - x_min
    span = scaled.max(axis=axes, keepdims=True)
    scaled = np.where(span != 0, scaled / np.where(span != 0, span, 1), scaled) * np.float32(255)
    as_bytes = np.where(local_scale, scaled, x32).astype(np.uint8).astype(np.float32)
    factor = brightness.astype(np.float32)[:, None, None, None]
    out = np.clip(np.trunc(factor * as_bytes), 0, 255)
    if x.shape[3] == 4:
        out[..., 3] = as_bytes[..., 3]   # Pillow keeps the alpha band of an RGBA image
    out = np.where(local_scale, out / np.float32(255) * (x_max - x_min) + x_min, out)
    return out.astype(x.dtype)


# -- image_dataset_from_directory -----------------------------------------------------------------
class ImageDataset:
    """What ``image_dataset_from_directory`` returns: an iterable of ``(x, y)`` batches
    (``x`` alone when label_mode is None) with ``class_names`` and ``file_paths``; each
    iteration is one epoch, reshuffled when ``shuffle``. Also a PyDataset (``__len__``,
    ``__getitem__``, ``on_epoch_end``)."""

    def __init__(self, file_paths, labels, class_names, label_mode, color_mode, batch_size,
                 image_size, shuffle, seed, interpolation, crop_to_aspect_ratio):
        self.file_paths = list(file_paths)
        self.labels = labels
        self.class_names = class_names
        self.label_mode = label_mode
        self.color_mode = color_mode
        self.batch_size = batch_size
        self.image_size = tuple(image_size)
        self.shuffle = shuffle
        self._seed = seed
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.epoch = 0
        self._order = self._epoch_order()
        self.workers, self.use_multiprocessing, self.max_queue_size = 1, False, 10

    def _epoch_order(self):
        n = len(self.file_paths)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self._seed, self.epoch]).permutation(n)

    def __len__(self):
        if self.batch_size is None:
            return len(self.file_paths)
        return -(-len(self.file_paths) // self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    def __getitem__(self, idx):
        if not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(self):
            raise IndexError(f"ImageDataset: batch {idx!r} out of range: it has {len(self)} "
                             f"batches")
        size = self.batch_size or 1
        index = self._order[idx * size:(idx + 1) * size]
        x = _load_batch([self.file_paths[i] for i in index], self.color_mode, self.image_size,
                        self.interpolation, self.crop_to_aspect_ratio, "float32")
        if self.label_mode is None:
            return x if self.batch_size else x[0]
        labels = self.labels[index]
        if self.label_mode == "int":
            y = labels.astype(np.int32)
        elif self.label_mode == "binary":
            y = labels.astype(np.float32).reshape(-1, 1)
        else:
            y = np.zeros((len(index), len(self.class_names)), np.float32)
            y[np.arange(len(index)), labels] = 1
        return (x, y) if self.batch_size else (x[0], y[0])

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._epoch_order()

    def __iter__(self):
        for idx in range(len(self)):
            yield self[idx]
        self.on_epoch_end()


def image_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                 class_names=None, color_mode="rgb", batch_size=32,
                                 image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear",
                                 follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, data_format=None, verbose=True,
                                 on_bad_image="raise"):
    """Batches of images from ``directory/<class>/...`` with Keras 3's arguments
    (``keras.utils.image_dataset_from_directory``); returns an ``ImageDataset`` (a pair of them
    for ``subset='both'``).

    The file order (shuffled once with ``np.random.RandomState(seed)``), the labels and the
    train/validation split are Keras's. Images are resized by Pillow with ``interpolation``
    (Keras resizes decoded tensors with its own resize op, so pixel values of resized images
    differ slightly). ``on_bad_image`` (pynn's): 'raise' fails naming an undecodable file when
    its batch is read; 'skip' decodes every file up front and leaves the bad ones out with a
    warning.
    """
    where = "image_dataset_from_directory"
    _check_data_format(where, data_format)
    _check_on_bad_image(where, on_bad_image)
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(f'{where}: label_mode must be "int", "categorical", "binary" or None, '
                         f"got {label_mode!r}")
    if color_mode not in _COLOR_CHANNELS:
        raise ValueError(f'{where}: color_mode must be "grayscale", "rgb" or "rgba", got '
                         f"{color_mode!r}")
    if pad_to_aspect_ratio:
        raise ValueError(f"{where}: pad_to_aspect_ratio is not supported; use "
                         f"crop_to_aspect_ratio or resize")
    if labels is None:
        label_mode = None
    _interpolation(interpolation)
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"{where}: validation_split must be between 0 and 1, got "
                         f"{validation_split!r}")
    if (validation_split is None) != (subset is None):
        raise ValueError(f"{where}: validation_split and subset go together: got "
                         f"validation_split={validation_split!r}, subset={subset!r}")
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f'{where}: subset must be "training", "validation" or "both", got '
                         f"{subset!r}")
    if validation_split and shuffle and seed is None:
        raise ValueError(f"{where}: with validation_split and shuffle=True, give a seed so the "
                         f"training and validation subsets do not overlap")
    directory = os.fspath(directory)
    if labels == "inferred":
        names = _class_folders(directory, class_names, where, skip_hidden=True)
        filenames, label_array, _ = _index_class_files(directory, names, DATASET_FORMATS,
                                                       follow_links, where)
    else:
        if class_names is not None:
            raise ValueError(f"{where}: class_names goes with labels='inferred' only")
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{where}: {directory} is not a directory")
        found, _ = _walk_files(directory, DATASET_FORMATS, follow_links, where)
        filenames = [os.path.relpath(os.path.join(r, f), directory) for r, f in found]
        if not filenames:
            raise ValueError(f"{where}: found no images in {directory}")
        if labels is None:
            label_array, names = np.zeros(len(filenames), np.int32), None
        else:
            label_array = np.asarray(labels)
            if len(label_array) != len(filenames):
                raise ValueError(f"{where}: got {len(label_array)} labels for "
                                 f"{len(filenames)} files in {directory}")
            names = [str(v) for v in sorted(set(label_array.tolist()))]
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(f'{where}: label_mode="binary" needs exactly 2 classes, got '
                         f"class_names={names}")
    if on_bad_image == "skip":
        filenames, label_array = _drop_unreadable(directory, filenames, label_array, where)
    if verbose:
        suffix = f" belonging to {len(names)} classes" if names is not None else ""
        print(f"Found {len(filenames)} files{suffix}.")
    file_paths = [os.path.join(directory, f) for f in filenames]
    label_array = np.asarray(label_array)
    if shuffle:
        # Keras's order: both lists shuffled by RandomState generators of one seed.
        if seed is None:
            seed = int(np.random.randint(1e6))
        np.random.RandomState(seed).shuffle(file_paths)
        np.random.RandomState(seed).shuffle(label_array)
    dataset_seed = seed if seed is not None else 0

    def make(part):
        return ImageDataset([file_paths[i] for i in part], label_array[part], names,
                            label_mode, color_mode, batch_size, image_size, shuffle,
                            dataset_seed, interpolation, crop_to_aspect_ratio)

    everything = np.arange(len(file_paths))
    if subset is None:
        return make(everything)
    num_val = int(validation_split * len(file_paths))
    if num_val == 0 or num_val == len(file_paths):
        raise ValueError(f"{where}: validation_split={validation_split} of {len(file_paths)} "
                         f"files leaves an empty subset")
    training, validation = everything[:-num_val], everything[-num_val:]
    if subset == "both":
        return make(training), make(validation)
    return make(training if subset == "training" else validation)
