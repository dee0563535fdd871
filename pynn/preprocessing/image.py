"""Image augmentation: Keras's legacy ``ImageDataGenerator`` and its iterators.

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
- Files are read by pynn/preprocessing/image_files.py (Pillow, the optional extra
  ``pynn[image]``, imported only when a file is read); arrays augment without it.
"""

import math
import os
import threading
import warnings

import numpy as np

from pynn import _config

# The file helpers are re-exported: Keras's keras.preprocessing.image has them too.
from pynn.preprocessing.image_files import (  # noqa: F401
    _COLOR_CHANNELS,
    WHITE_LIST_FORMATS,
    _check_data_format,
    _check_on_bad_image,
    _class_folders,
    _drop_unreadable,
    _index_class_files,
    _interpolation,
    _load_batch,
    array_to_img,
    image_dataset_from_directory,
    img_to_array,
    load_img,
    save_img,
)

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
