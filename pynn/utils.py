"""Random seeding and small helpers shared by the API."""

import numpy as np

from pynn.data import PyDataset  # keras.utils.PyDataset, re-exported

_rng = None  # made on first use: importing numpy.random costs ~9 ms of `import pynn`


def set_random_seed(seed):
    """Seed every source of randomness pynn uses (initializers, shuffling, dropout seeds).

    With a fixed seed and thread count a CPU run is bit-reproducible. A model draws its own
    shuffle generator from this one when ``fit`` first shuffles, and keeps it (it is saved with
    the model, so a resumed ``fit`` continues its stream); a Dropout layer draws its seed when
    it is created.
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: expected a non-negative int, got {seed!r}")
    _rng = np.random.default_rng(int(seed))
    np.random.seed(int(seed) % (2**32))


def rng():
    """The generator all of pynn draws from."""
    global _rng
    if _rng is None:
        _rng = np.random.default_rng()
    return _rng


def new_seed():
    return int(rng().integers(0, 2**63 - 1))


def to_categorical(y, num_classes=None):
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must lie in [0, {num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    out = np.zeros((y.size, num_classes), dtype=np.float32)
    out[np.arange(y.size), y] = 1
    return out


# -- pictures -----------------------------------------------------------------------------------
def write_png(path, image):
    """Write an (H, W) grey or (H, W, 3) RGB uint8 array as a PNG: zlib and a few chunk
    headers, so examples can save pictures without an imaging library."""
    import struct
    import zlib

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise ValueError(f"write_png: expected a non-empty (H, W) or (H, W, 3) uint8 array, "
                         f"got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    color = 0 if image.ndim == 2 else 2
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                 + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _graph_rows(model, show_shapes, show_dtype, show_layer_names, show_layer_activations):
    """(labels per layer, edges as (from, to) layer indices) of a built model."""
    graph = getattr(model, "_graph", None)
    if graph is None:
        raise ValueError(f"plot_model: model '{model.name}' is not built yet")
    layers = model.layers
    listed = {id(layer) for layer in layers}
    # A Sequential does not list its InputLayer; the picture shows it, as Keras's does.
    layers = [t.node.layer for t in graph.inputs if id(t.node.layer) not in listed] + layers
    index = {id(layer): i for i, layer in enumerate(layers)}
    labels = []
    for layer in layers:
        text = type(layer).__name__
        if show_layer_names:
            text = f"{layer.name} ({text})"
        activation = getattr(layer, "activation", None)
        if show_layer_activations and isinstance(activation, str):
            text += f"\nactivation: {activation}"
        if show_shapes:
            out = layer.output_shape
            shape = (", ".join(_shape_text(s) for s in out) if isinstance(out, list)
                     else _shape_text(out))
            text += f"\noutput: {shape}"
        if show_dtype:
            text += f"\ndtype: {layer.dtype}"
        labels.append(text)
    edges = []
    for node in graph.nodes:
        for t in node.inputs:
            edge = (index[id(t.node.layer)], index[id(node.layer)])
            if edge not in edges:
                edges.append(edge)
    return labels, edges


def _shape_text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def model_to_dot(model, show_shapes=False, show_dtype=False, show_layer_names=True,
                 rankdir="TB", show_layer_activations=False):
    """The model's graph in graphviz's DOT language (a string)."""
    labels, edges = _graph_rows(model, show_shapes, show_dtype, show_layer_names,
                                show_layer_activations)
    lines = [f'digraph "{model.name}" {{', f"  rankdir={rankdir};",
             '  node [shape=record, fontname="Helvetica"];']
    for i, text in enumerate(labels):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'  n{i} [label="{escaped}"];')
    lines += [f"  n{a} -> n{b};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def plot_model(model, to_file="model.png", show_shapes=False, show_dtype=False,
               show_layer_names=True, rankdir="TB", dpi=200, show_layer_activations=False):
    """Draw the model's graph to ``to_file`` (.png, .svg, .pdf; .dot writes the DOT text).

    Uses graphviz's ``dot`` program when it is on PATH (the layout Keras users know), else
    matplotlib (``pip install pynn[plot]``): layers as boxes in rows by depth, arrows between.
    Returns the path written."""
    import os
    import shutil
    import subprocess

    if rankdir not in ("TB", "LR"):
        raise ValueError(f"plot_model: rankdir must be 'TB' or 'LR', got {rankdir!r}")
    to_file = os.fspath(to_file)
    ext = os.path.splitext(to_file)[1].lower().lstrip(".") or "png"
    dot = model_to_dot(model, show_shapes, show_dtype, show_layer_names, rankdir,
                       show_layer_activations)
    if ext == "dot":
        with open(to_file, "w") as fh:
            fh.write(dot)
        return to_file
    if shutil.which("dot"):
        subprocess.run(["dot", f"-T{ext}", f"-Gdpi={int(dpi)}", "-o", to_file],
                       input=dot.encode(), check=True, timeout=60)
        return to_file
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_model needs graphviz's `dot` program or matplotlib "
                          "(pip install pynn[plot]); model_to_dot(model) gives the graph as "
                          "text") from None
    labels, edges = _graph_rows(model, show_shapes, show_dtype, show_layer_names,
                                show_layer_activations)
    depth = [0] * len(labels)
    for a, b in sorted(edges, key=lambda e: e[1]):  # layers are in topological order
        depth[b] = max(depth[b], depth[a] + 1)
    rows = {}
    for i, d in enumerate(depth):
        rows.setdefault(d, []).append(i)
    width = max(len(r) for r in rows.values())
    pos = {}
    for d, members in rows.items():
        for k, i in enumerate(members):
            across = (k + 1) / (len(members) + 1) * width
            pos[i] = (across, -d) if rankdir == "TB" else (d, -across)
    fig_w = max(4.0, 3.2 * (width if rankdir == "TB" else len(rows)))
    fig_h = max(3.0, 1.1 * (len(rows) if rankdir == "TB" else width))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    for a, b in edges:
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops={"arrowstyle": "->", "color": "0.3", "shrinkA": 14,
                                "shrinkB": 14})
    for i, text in enumerate(labels):
        ax.text(*pos[i], text, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "#eef3fb", "edgecolor": "0.4"})
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    fig.savefig(to_file, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return to_file


# -- image files (pynn.preprocessing.image_files; Pillow is the optional extra pynn[image]) -----
from pynn.preprocessing.image_files import (  # noqa: F401  (re-exported as Keras's keras.utils)
    array_to_img,
    image_dataset_from_directory,
    img_to_array,
    load_img,
    save_img,
)


# -- sequences and time series (issue 14, branch seq) ----------------------------------------
def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """Keras's ``keras.utils.pad_sequences``: a list of N sequences (each of length L_i, items
    of one shape S) -> an (N, maxlen) + S array of ``dtype`` filled with ``value``.

    ``maxlen`` None: the longest sequence. ``truncating`` 'pre' keeps the last ``maxlen``
    items of a longer sequence, 'post' the first; ``padding`` 'pre' puts the values before the
    sequence, 'post' after. Empty sequences are all ``value``. A string ``value`` needs
    ``dtype=object`` or a string dtype (Keras's rule). All sequences are placed by one
    scatter over their concatenation, not sample by sample.
    """
    if not hasattr(sequences, "__len__") or isinstance(sequences, (str, bytes)):
        raise ValueError(f"pad_sequences: sequences must be a list of sequences, got "
                         f"{type(sequences).__name__}")
    if padding not in ("pre", "post"):
        raise ValueError(f"pad_sequences: padding must be 'pre' or 'post', got {padding!r}")
    if truncating not in ("pre", "post"):
        raise ValueError(f"pad_sequences: truncating must be 'pre' or 'post', got "
                         f"{truncating!r}")
    lengths = []
    for i, s in enumerate(sequences):
        try:
            lengths.append(len(s))
        except TypeError:
            raise ValueError(f"pad_sequences: sequences must be a list of sequences; item {i} "
                             f"is {s!r}") from None
    lengths = np.asarray(lengths, dtype=np.int64)
    if maxlen is None:
        maxlen = int(lengths.max()) if lengths.size else 0
    elif isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 0:
        raise ValueError(f"pad_sequences: maxlen must be None or a non-negative int, got "
                         f"{maxlen!r}")
    maxlen = int(maxlen)
    is_text = np.issubdtype(np.dtype(dtype), np.str_) or np.issubdtype(np.dtype(dtype),
                                                                        np.bytes_)
    if isinstance(value, str) and np.dtype(dtype) != object and not is_text:
        raise ValueError(f"pad_sequences: dtype {dtype} cannot hold the string value "
                         f"{value!r}; use dtype=object for variable-length strings")
    filled = [np.asarray(s, dtype=dtype) for s in sequences if len(s)]
    shapes = {a.shape[1:] for a in filled}
    if len(shapes) > 1:
        raise ValueError(f"pad_sequences: every item must have the same shape, got item "
                         f"shapes {sorted(shapes)}")
    item_shape = shapes.pop() if shapes else ()
    out = np.full((len(lengths), maxlen) + item_shape, value, dtype=dtype)
    if not filled or maxlen == 0:
        return out
    flat = np.concatenate(filled)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    # Position of each item inside its own sequence.
    pos = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    seq_len = np.repeat(lengths, lengths)
    kept = np.minimum(seq_len, maxlen)
    first = seq_len - kept if truncating == "pre" else np.zeros_like(seq_len)
    keep = (pos >= first) & (pos < first + kept)
    col = pos - first + (maxlen - kept if padding == "pre" else 0)
    out[rows[keep], col[keep]] = flat[keep]
    return out


class TimeseriesDataset(PyDataset):
    """The batches of ``timeseries_dataset_from_array``: a PyDataset (``fit`` takes it) that
    also iterates like Keras's tf.data dataset. Batch i is (x, y), or x without targets;
    x gathers data[start + p + k * sampling_rate] for k < sequence_length at its start
    positions p, with one fancy index per batch."""

    def __init__(self, data, targets, starts, sequence_length, sampling_rate, batch_size):
        super().__init__()
        self.data, self.targets, self.starts = data, targets, starts
        self.offsets = np.arange(sequence_length) * sampling_rate
        self.batch_size = batch_size

    def __len__(self):
        if self.batch_size is None:
            return len(self.starts)
        return (len(self.starts) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"TimeseriesDataset: batch {index} out of range ({len(self)})")
        index %= len(self)
        if self.batch_size is None:
            starts = self.starts[index]
        else:
            starts = self.starts[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.data[np.asarray(starts)[..., None] + self.offsets]
        return x if self.targets is None else (x, self.targets[starts])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def timeseries_dataset_from_array(data, targets, sequence_length, sequence_stride=1,
                                  sampling_rate=1, batch_size=128, shuffle=False, seed=None,
                                  start_index=None, end_index=None):
    """Keras's ``keras.utils.timeseries_dataset_from_array``: sliding windows over ``data``
    (T, ...) as batches of (batch, sequence_length, ...) inputs.

    Window i starts at step start_index + i * sequence_stride and takes every
    ``sampling_rate``-th step; its target is ``targets[start_index + i * sequence_stride]``
    (so ``targets = data[sequence_length:]`` pairs a window with the step after it). Windows
    end before ``end_index`` (default len(data)); there are at most len(targets) of them.
    ``shuffle`` permutes the window starts with ``np.random.RandomState(seed)`` as Keras does
    first (Keras's tf.data pipeline then also shuffles within a buffer of 8 batches, which
    is not reproduced). ``batch_size`` None yields single windows. Returns a
    TimeseriesDataset (a PyDataset: ``fit`` takes it, and it iterates like tf.data)."""
    data = np.asarray(data)
    length = len(data)

    def check_int(name, v, low, high=None):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low or (
                high is not None and v >= high):
            bound = f" and lower than the length of the data ({length})" if high else ""
            raise ValueError(f"timeseries_dataset_from_array: {name} must be an int of at "
                             f"least {low}{bound}, got {v!r}")
        return int(v)

    sequence_length = check_int("sequence_length", sequence_length, 1)
    sampling_rate = check_int("sampling_rate", sampling_rate, 1, length)
    sequence_stride = check_int("sequence_stride", sequence_stride, 1, length)
    start = 0 if start_index is None else check_int("start_index", start_index, 0, length)
    end = length if end_index is None else check_int("end_index", end_index, 1, length)
    if end <= start:
        raise ValueError(f"timeseries_dataset_from_array: end_index ({end}) must be higher "
                         f"than start_index ({start})")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    count = end - start - (sequence_length - 1) * sampling_rate
    if targets is not None:
        targets = np.asarray(targets)
        count = min(count, len(targets))
    starts = np.arange(0, max(count, 0), sequence_stride, dtype=np.int64)
    if shuffle:
        np.random.RandomState(np.random.randint(1e6) if seed is None else seed).shuffle(starts)
    window = data[start:end]
    return TimeseriesDataset(window, None if targets is None else targets[start:end], starts,
                             sequence_length, sampling_rate, batch_size)


# -- bbox: keras.utils.bounding_boxes (pynn/bounding_boxes.py) ---------------------------------
from pynn import bounding_boxes  # noqa: E402,F401
