"""Random seeding and small helpers shared by the API."""

import numpy as np

from pynn.data import PyDataset  # noqa: F401  (keras.utils.PyDataset)

_rng = np.random.default_rng()


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
    return _rng


def new_seed():
    return int(_rng.integers(0, 2**63 - 1))


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
