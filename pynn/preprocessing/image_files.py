"""Image files: load_img, img_to_array, array_to_img, save_img (Keras's ``keras.utils``
names and numbers), the class-folder index shared by ``flow_from_directory`` and
``image_dataset_from_directory``, and ``image_dataset_from_directory`` itself.

Pillow decodes files; it is the optional extra ``pynn[image]`` and is imported only when a file
is read or written. A file that cannot be decoded is reported by its path: an error when its
batch is read, or (``on_bad_image='skip'``) a warning when the folder is indexed, the file left
out with its label. Folders are walked in Keras's order (roots sorted, then files sorted); with
``follow_links`` a folder reached twice (a symlink loop) is read once.
"""

import io
import os
import pathlib
import warnings

import numpy as np

from pynn import _config
from pynn.data import PyDataset

_PIL_HINT = "install Pillow, pynn's optional extra: pip install 'pynn[image]'"
# Keras's legacy iterators read these extensions; image_dataset_from_directory its own list.
WHITE_LIST_FORMATS = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff")
DATASET_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_COLOR_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}

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


# -- image_dataset_from_directory -----------------------------------------------------------------
class FileDataset(PyDataset):
    """The batches of the ``*_dataset_from_directory`` functions (images here, text and
    audio in pynn.keras_utils): ``(x, y)`` (``x`` alone when label_mode is None), with
    ``class_names`` and ``file_paths``, x from ``load_batch(paths)``; reshuffled each epoch
    when ``shuffle``."""

    def __init__(self, file_paths, labels, class_names, label_mode, batch_size, shuffle, seed,
                 load_batch):
        super().__init__()
        self.file_paths = list(file_paths)
        self.labels = labels
        self.class_names = class_names
        self.label_mode = label_mode
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._seed = seed
        self._load_batch = load_batch
        self.epoch = 0
        self._order = self._epoch_order()

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
            raise IndexError(f"{type(self).__name__}: batch {idx!r} out of range: it has "
                             f"{len(self)} batches")
        size = self.batch_size or 1
        index = self._order[idx * size:(idx + 1) * size]
        x = self._load_batch([self.file_paths[i] for i in index])
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


class ImageDataset(FileDataset):
    """What ``image_dataset_from_directory`` returns: an iterable of ``(x, y)`` batches
    (``x`` alone when label_mode is None) with ``class_names`` and ``file_paths``; each
    iteration is one epoch, reshuffled when ``shuffle``. Also a PyDataset (``__len__``,
    ``__getitem__``, ``on_epoch_end``)."""

    def __init__(self, file_paths, labels, class_names, label_mode, color_mode, batch_size,
                 image_size, shuffle, seed, interpolation, crop_to_aspect_ratio):
        self.color_mode = color_mode
        self.image_size = tuple(image_size)
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        super().__init__(file_paths, labels, class_names, label_mode, batch_size, shuffle,
                         seed, self._images)

    def _images(self, paths):
        return _load_batch(paths, self.color_mode, self.image_size, self.interpolation,
                           self.crop_to_aspect_ratio, "float32")


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
