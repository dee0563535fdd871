"""keras.ops' remaining structural ops: splitting and stacking, diagonals and rotations,
select and meshgrid, block moves between space and depth, sliding windows (extract_sequences,
unfold/fold), einops' rearrange, the tensor queries (shape, size, ndim, dtype, ...) and
constructors, multi_hot, the cross-entropies as ops, and CTC's loss and decoders.

Each op is a composition of the ops of ``numpy_ops``/``numpy_extra`` (reshape, transpose,
take, concatenate, where, segment_sum, the elementwise and reduction ops), so it runs on
every backend through their kernels and its gradient is theirs. Index arrays (unfold's
patches, fold's pixel of each patch element, extract_sequences' frames) are built on the host
from shapes alone, never from values. The categorical cross-entropies run on the loss
family's row kernels (``crossentropy_rows``: each row's loss, the kernels of
keras.losses.CategoricalCrossentropy unaveraged); binary_crossentropy, unreduced per element,
is its elementwise formula on the elementwise ops. ctc_loss runs on the loss family's CTC
kernels (``ctc_loss_samples``: per-sample losses, the alpha-beta recursion of keras.losses.CTC);
ctc_decode's greedy path is an argmax and a stable compaction on the device ops, its beam
search runs on the host (Keras's own beam search is a loop over time steps).
"""

import builtins
import math
import re

import numpy as np

from pynn import backend
from pynn.autodiff import Tensor
from pynn.layers.symbolic import KerasTensor
from pynn.ops import numpy_extra as npx
from pynn.ops import numpy_ops as npo
from pynn.ops.nn import log_softmax
from pynn.ops._core import cpu_only, op, record, shape_of, value
from pynn.variables import Variable

__all__ = [
    "array", "array_split", "binary_crossentropy", "categorical_crossentropy", "convert_to_numpy",
    "copy", "ctc_decode", "ctc_loss", "depth_to_space", "diagflat", "dsplit", "dstack", "dtype",
    "empty", "empty_like", "extract_sequences", "fold", "get_item", "hsplit", "is_tensor",
    "meshgrid", "multi_hot", "ndim", "rearrange", "rot90", "select", "shape", "size",
    "space_to_depth", "sparse_categorical_crossentropy", "unfold", "view", "view_as_complex",
    "view_as_real", "vsplit",
]


def _shape(x):
    if type(x) is KerasTensor:
        return tuple(x.shape)
    return shape_of(value(x))


def _int(name, what, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"pynn.ops.{name}: {what} must be an int >= {lo}, got {v!r}")
    return int(v)


def _pair(name, what, v, lo):
    vs = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
    if len(vs) != 2:
        raise ValueError(f"pynn.ops.{name}: {what} must be an int or a pair of ints, got {v!r}")
    return tuple(_int(name, what, i, lo) for i in vs)


# -- splitting and stacking ---------------------------------------------------------------
@op
def array_split(x, indices_or_sections, axis=0):
    """keras.ops.array_split (NumPy's): n sections of near-equal length, the first
    len % n one longer, or the cuts at the given indices."""
    shape = _shape(x)
    axis = npx._axis("array_split", axis, len(shape))
    n = shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = _int("array_split", "indices_or_sections", indices_or_sections)
        each, extra = divmod(n, sections)
        sizes = [each + 1] * extra + [each] * (sections - extra)
        cuts = np.cumsum(sizes)[:-1].tolist()
    else:
        cuts = [int(i) for i in indices_or_sections]
    lead = (builtins.slice(None),) * axis
    bounds = [0] + cuts + [n]
    return [npo.getitem(x, lead + (builtins.slice(lo, builtins.max(lo, hi)),))
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _split_on(name, x, indices_or_sections, axis, at_least):
    npx._need_ndim(name, x, at_least)
    if isinstance(indices_or_sections, (int, np.integer)):
        n = _shape(x)[axis]
        sections = _int(name, "indices_or_sections", indices_or_sections)
        if n % sections:
            raise ValueError(f"pynn.ops.{name}: axis {axis} of length {n} does not split into "
                             f"{sections} equal parts (array_split allows unequal ones)")
    return npo.split(x, indices_or_sections, axis=axis)


@op
def hsplit(x, indices_or_sections):
    """keras.ops.hsplit: split along axis 1 (axis 0 of a 1-D input), equal parts only."""
    return _split_on("hsplit", x, indices_or_sections, 0 if len(_shape(x)) == 1 else 1, 1)


@op
def vsplit(x, indices_or_sections):
    return _split_on("vsplit", x, indices_or_sections, 0, 2)


@op
def dsplit(x, indices_or_sections):
    return _split_on("dsplit", x, indices_or_sections, 2, 3)


@op
def dstack(xs):
    """keras.ops.dstack: each input made at least 3-D (NumPy's atleast_3d), joined on axis
    2."""
    def at_least_3d(x):
        shape = _shape(x)
        if len(shape) == 0:
            return npo.reshape(x, (1, 1, 1))
        if len(shape) == 1:
            return npo.reshape(x, (1, shape[0], 1))
        if len(shape) == 2:
            return npo.reshape(x, shape + (1,))
        return x

    if not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError(f"pynn.ops.dstack: expected a non-empty list of tensors, got {xs!r}")
    return npo.concatenate([at_least_3d(x) for x in xs], axis=2)


@op
def diagflat(x, k=0):
    """keras.ops.diagflat: x flattened onto the k-th diagonal of a square matrix."""
    return npx.diag(npo.reshape(x, (-1,)), int(k))


@op
def rot90(array, k=1, axes=(0, 1)):
    """keras.ops.rot90 (NumPy's): k quarter turns from axes[0] towards axes[1], as flips
    and one transpose."""
    ndim = len(_shape(array))
    if ndim < 2:
        raise ValueError(f"pynn.ops.rot90: expected an input of at least 2 dimensions, got "
                         f"shape {_shape(array)}")
    if len(axes) != 2:
        raise ValueError(f"pynn.ops.rot90: axes must be 2 distinct axes, got {axes!r}")
    a0, a1 = (npx._axis("rot90", int(a), ndim) for a in axes)
    if a0 == a1:
        raise ValueError(f"pynn.ops.rot90: axes must be 2 distinct axes, got {axes!r}")
    k = int(k) % 4
    if k == 0:
        return copy(array)
    if k == 2:
        return npo.flip(npo.flip(array, a0), a1)
    perm = list(range(ndim))
    perm[a0], perm[a1] = perm[a1], perm[a0]
    if k == 1:
        return npo.transpose(npo.flip(array, a1), perm)
    return npo.flip(npo.transpose(array, perm), a1)


@op
def select(condlist, choicelist, default=0):
    """keras.ops.select (NumPy's): the choice of the first true condition, else default."""
    if not isinstance(condlist, (list, tuple)) or not isinstance(choicelist, (list, tuple)):
        raise TypeError("pynn.ops.select: condlist and choicelist must be lists of tensors")
    if len(condlist) != len(choicelist) or not condlist:
        raise ValueError(f"pynn.ops.select: condlist and choicelist must be non-empty and of "
                         f"one length, got {len(condlist)} and {len(choicelist)}")
    shapes = [_shape(c) for c in (*condlist, *choicelist)]
    try:
        shape = np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"pynn.ops.select: the conditions and choices must broadcast "
                         f"together, got shapes {shapes}") from None
    dtype = np.result_type(*[npx._dtype(c) for c in choicelist])
    if isinstance(default, (int, float, bool, np.generic)):
        base = Tensor(backend.current().full((), default, dtype))
    else:
        base = npo.cast(default, dtype)
    out = npo.broadcast_to(base, shape)
    for cond, choice in zip(reversed(condlist), reversed(choicelist)):
        out = npo.where(cond, choice, out)
    return out


@op
def meshgrid(*x, indexing="xy"):
    """keras.ops.meshgrid: each 1-D input broadcast over the grid ('xy' swaps the first two
    axes, as NumPy)."""
    if indexing not in ("xy", "ij"):
        raise ValueError(f"pynn.ops.meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    sizes = []
    for i, v in enumerate(x):
        s = _shape(v)
        if len(s) != 1:
            raise ValueError(f"pynn.ops.meshgrid: input {i} must be 1-D, got shape {s}")
        sizes.append(s[0])
    n = len(sizes)
    grid = list(sizes)
    if indexing == "xy" and n >= 2:
        grid[0], grid[1] = grid[1], grid[0]
    out = []
    for i, v in enumerate(x):
        at = 1 - i if indexing == "xy" and n >= 2 and i < 2 else i
        view_shape = [1] * n
        view_shape[at] = sizes[i]
        out.append(npo.broadcast_to(npo.reshape(v, view_shape), grid))
    return out


# -- space and depth ----------------------------------------------------------------------
def _image_4d(name, x, data_format):
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"pynn.ops.{name}: data_format must be 'channels_last' or "
                         f"'channels_first', got {data_format!r}")
    shape = _shape(x)
    if len(shape) != 4:
        raise ValueError(f"pynn.ops.{name}: expected a 4-D input, got shape {shape}")
    return shape


@op
def depth_to_space(x, block_size, data_format="channels_last"):
    """keras.ops.depth_to_space (TensorFlow's order): channel blocks of block_size**2 become
    block_size x block_size pixels."""
    shape = _image_4d("depth_to_space", x, data_format)
    bs = _int("depth_to_space", "block_size", block_size, 2)
    if data_format == "channels_last":
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    if c % (bs * bs):
        raise ValueError(f"pynn.ops.depth_to_space: channels ({c}) must be a multiple of "
                         f"block_size**2 ({bs * bs})")
    nc = c // (bs * bs)
    if data_format == "channels_last":
        y = npo.transpose(npo.reshape(x, (n, h, w, bs, bs, nc)), (0, 1, 3, 2, 4, 5))
        return npo.reshape(y, (n, h * bs, w * bs, nc))
    y = npo.transpose(npo.reshape(x, (n, nc, bs, bs, h, w)), (0, 1, 4, 2, 5, 3))
    return npo.reshape(y, (n, nc, h * bs, w * bs))


@op
def space_to_depth(x, block_size, data_format="channels_last"):
    """keras.ops.space_to_depth: block_size x block_size pixels become channels (the
    inverse of depth_to_space)."""
    shape = _image_4d("space_to_depth", x, data_format)
    bs = _int("space_to_depth", "block_size", block_size, 2)
    if data_format == "channels_last":
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    if h % bs or w % bs:
        raise ValueError(f"pynn.ops.space_to_depth: height and width ({h}, {w}) must be "
                         f"multiples of block_size ({bs})")
    nh, nw = h // bs, w // bs
    if data_format == "channels_last":
        y = npo.transpose(npo.reshape(x, (n, nh, bs, nw, bs, c)), (0, 1, 3, 2, 4, 5))
        return npo.reshape(y, (n, nh, nw, c * bs * bs))
    y = npo.transpose(npo.reshape(x, (n, c, nh, bs, nw, bs)), (0, 1, 3, 5, 2, 4))
    return npo.reshape(y, (n, c * bs * bs, nh, nw))


# -- sliding windows ----------------------------------------------------------------------
@op
def extract_sequences(x, sequence_length, sequence_stride):
    """keras.ops.extract_sequences: frames of the last axis, (..., frames, sequence_length),
    one gather (its gradient adds overlapping frames back)."""
    shape = _shape(x)
    if not shape:
        raise ValueError("pynn.ops.extract_sequences: expected an input of at least 1 "
                         "dimension, got a scalar")
    length = _int("extract_sequences", "sequence_length", sequence_length)
    stride = _int("extract_sequences", "sequence_stride", sequence_stride)
    t = shape[-1]
    if length > t:
        raise ValueError(f"pynn.ops.extract_sequences: sequence_length ({length}) is longer "
                         f"than the last axis ({t})")
    frames = (t - length) // stride + 1
    index = np.arange(frames)[:, None] * stride + np.arange(length)[None, :]
    y = npo.take(x, index.reshape(-1), axis=len(shape) - 1)
    return npo.reshape(y, shape[:-1] + (frames, length))


def _patch_geometry(name, kernel_size, dilation, padding, stride, height, width):
    """-> (kh, kw), (ph, pw), (oh, ow) blocks and the padded image's flat pixel of every
    (kernel element, block): (kh*kw, oh*ow) host ints."""
    kh, kw = _pair(name, "kernel_size", kernel_size, 1)
    dh, dw = _pair(name, "dilation", dilation, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    sh, sw = _pair(name, "stride", stride, 1)
    hp, wp = height + 2 * ph, width + 2 * pw
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"pynn.ops.{name}: kernel_size {(kh, kw)} with dilation {(dh, dw)} "
                         f"does not fit the padded {hp}x{wp} image")
    rows = (np.arange(kh) * dh)[:, None, None, None] + (np.arange(oh) * sh)[None, None, :,
                                                                              None]
    cols = (np.arange(kw) * dw)[None, :, None, None] + (np.arange(ow) * sw)[None, None, None,
                                                                              :]
    pixel = (rows * wp + cols).reshape(kh * kw, oh * ow)
    return (kh, kw), (ph, pw), (hp, wp), pixel


@op
def unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """keras.ops.unfold (torch's im2col): (N, C, H, W) -> (N, C*kh*kw, L) blocks, a zero pad
    and one gather."""
    shape = _shape(x)
    if len(shape) != 4:
        raise ValueError(f"pynn.ops.unfold: expected a 4-D (N, C, H, W) input, got shape "
                         f"{shape}")
    n, c, h, w = shape
    (kh, kw), (ph, pw), (hp, wp), pixel = _patch_geometry("unfold", kernel_size, dilation,
                                                          padding, stride, h, w)
    padded = npx.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    flat = npo.reshape(padded, (n, c, hp * wp))
    y = npo.take(flat, pixel.reshape(-1), axis=2)
    return npo.reshape(y, (n, c * kh * kw, pixel.shape[1]))


@op
def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """keras.ops.fold (torch's col2im): (N, C*kh*kw, L) blocks summed into (N, C, oH, oW)
    with segment_sum over the padded image's pixels (the padding then cropped)."""
    shape = _shape(x)
    if len(shape) != 3:
        raise ValueError(f"pynn.ops.fold: expected a 3-D (N, C*kh*kw, L) input, got shape "
                         f"{shape}")
    out_h, out_w = _pair("fold", "output_size", output_size, 1)
    (kh, kw), (ph, pw), (hp, wp), pixel = _patch_geometry("fold", kernel_size, dilation,
                                                          padding, stride, out_h, out_w)
    n, ck, blocks = shape
    if ck % (kh * kw) or blocks != pixel.shape[1]:
        raise ValueError(f"pynn.ops.fold: expected (N, C*{kh * kw}, {pixel.shape[1]}) blocks "
                         f"for output_size {(out_h, out_w)}, got shape {shape}")
    c = ck // (kh * kw)
    # rows (kernel element, block), columns (N, C): one segment per padded pixel
    rows = npo.reshape(npo.transpose(npo.reshape(x, (n, c, kh * kw, blocks)), (2, 3, 0, 1)),
                       (kh * kw * blocks, n * c))
    image = npx.segment_sum(rows, pixel.reshape(-1).astype(np.int32), num_segments=hp * wp)
    image = npo.reshape(image, (hp, wp, n, c))
    if ph or pw:
        image = npo.getitem(image, (builtins.slice(ph, ph + out_h), builtins.slice(pw, pw + out_w)))
    return npo.transpose(image, (2, 3, 0, 1))


# -- einops ---------------------------------------------------------------------------------
_AXIS = re.compile(r"\(([^()]*)\)|(\S+)")


def _parse_side(pattern, side):
    groups = []
    for group, name in _AXIS.findall(side):
        names = group.split() if group or not name else [name]
        for a in names:
            if not re.fullmatch(r"[A-Za-z_]\w*", a):
                raise ValueError(f"pynn.ops.rearrange: {a!r} in {pattern!r} is not an axis "
                                 f"name (Keras 3's rearrange takes names and (groups); no "
                                 f"'...', no numbers)")
        groups.append(names)
    return groups


@op
def rearrange(tensor, pattern, **axes_lengths):
    """keras.ops.rearrange (einops' rearrange as Keras 3 supports it): the input's groups
    split by reshape, the axes permuted by one transpose, the output's groups merged by
    reshape."""
    if not isinstance(pattern, str) or pattern.count("->") != 1:
        raise ValueError(f"pynn.ops.rearrange: pattern must be 'input axes -> output axes', "
                         f"got {pattern!r}")
    left, right = pattern.split("->")
    inputs, outputs = _parse_side(pattern, left), _parse_side(pattern, right)
    shape = _shape(tensor)
    if len(inputs) != len(shape):
        raise ValueError(f"pynn.ops.rearrange: {pattern!r} names {len(inputs)} input axes, "
                         f"the tensor has shape {shape}")
    flat_in = [a for g in inputs for a in g]
    flat_out = [a for g in outputs for a in g]
    if len(set(flat_in)) != len(flat_in) or sorted(flat_in) != sorted(flat_out):
        raise ValueError(f"pynn.ops.rearrange: {pattern!r} must name each axis once on each "
                         f"side")
    lengths = {}
    for group, dim in zip(inputs, shape):
        unknown = [a for a in group if a not in axes_lengths]
        known = math.prod(int(axes_lengths[a]) for a in group if a in axes_lengths)
        if len(unknown) > 1:
            raise ValueError(f"pynn.ops.rearrange: the group {group} of {pattern!r} needs the "
                             f"lengths of all but one axis, got {axes_lengths}")
        if unknown:
            if known == 0 or dim % known:
                raise ValueError(f"pynn.ops.rearrange: axis of length {dim} does not split "
                                 f"into {group} with {axes_lengths}")
            lengths[unknown[0]] = dim // known
        elif known != dim:
            raise ValueError(f"pynn.ops.rearrange: the group {group} has length {known}, the "
                             f"axis {dim}")
        lengths.update({a: int(axes_lengths[a]) for a in group if a in axes_lengths})
    y = npo.reshape(tensor, [lengths[a] for a in flat_in])
    perm = [flat_in.index(a) for a in flat_out]
    if perm != sorted(perm):
        y = npo.transpose(y, perm)
    return npo.reshape(y, [math.prod(lengths[a] for a in g) for g in outputs])


# -- views, queries, constructors ---------------------------------------------------------
def _refuse_complex(name, dtype=None):
    got = f" (got {dtype})" if dtype else ""
    raise TypeError(f"pynn.ops.{name}: pynn has no complex dtype{got}; "
                    f"Keras represents a complex tensor as a (real, imag) pair of real "
                    f"tensors, as pynn.ops.fft/rfft/stft take and return")


@op
def view(x, dtype=None):
    """keras.ops.view: the same bytes read as another dtype (NumPy's ndarray.view: the last
    axis scales by the itemsizes); no gradient. Host arrays only: a device bitcast has no
    kernel."""
    if dtype is None:
        return copy(x)
    target = np.dtype(dtype)
    if target.kind == "c":
        _refuse_complex("view", target)
    cpu_only("view")
    xv = np.asarray(value(x))
    if xv.ndim == 0 and target.itemsize != xv.dtype.itemsize:
        raise ValueError(f"pynn.ops.view: a scalar of {xv.dtype} cannot be viewed as {target}")
    if xv.ndim and (xv.shape[-1] * xv.dtype.itemsize) % target.itemsize:
        raise ValueError(f"pynn.ops.view: the last axis ({xv.shape[-1]} x {xv.dtype}) does not "
                         f"divide into {target}")
    return Tensor(np.ascontiguousarray(xv).view(target))


def view_as_real(x):
    """keras.ops.view_as_real: refused (pynn has no complex tensors to view)."""
    _refuse_complex("view_as_real")


def view_as_complex(x):
    """keras.ops.view_as_complex: refused (pynn has no complex dtype)."""
    _refuse_complex("view_as_complex")


@op
def get_item(x, key):
    """keras.ops.get_item: ``x[key]``."""
    return npo.getitem(x, key)


def shape(x):
    """keras.ops.shape: a tuple of ints (None for a symbolic tensor's batch axis)."""
    return _shape(x)


def size(x):
    """keras.ops.size: the number of elements (None while a symbolic axis is unknown)."""
    dims = _shape(x)
    return None if None in dims else math.prod(dims)


def ndim(x):
    return len(_shape(x))


def dtype(x):
    """keras.ops.dtype: the dtype's standard name ('float32', 'int32', ...)."""
    if type(x) is KerasTensor:
        return str(np.dtype(x.dtype))
    return str(np.dtype(npx._dtype(x)))


def is_tensor(x):
    """keras.ops.is_tensor: a pynn Tensor or Variable (arrays and scalars are not)."""
    return type(x) in (Tensor, Variable)


def convert_to_numpy(x):
    """keras.ops.convert_to_numpy: the values as a NumPy array on the host."""
    if type(x) is KerasTensor:
        raise ValueError("pynn.ops.convert_to_numpy: a symbolic tensor has no values")
    v = value(x)
    return np.asarray(backend.current().to_numpy(v) if hasattr(v, "shape") and
                      not isinstance(v, np.ndarray) else v)


@op
def copy(x):
    """keras.ops.copy: a new tensor of the same values (gradient: the identity)."""
    b = backend.current()
    xv = value(x)
    if not hasattr(xv, "shape"):
        return npo.convert_to_tensor(xv)
    return record(b.copy(xv), (x,), lambda dy, need: (dy,), "copy")


def array(x, dtype=None):
    """keras.ops.array: x as a tensor (of dtype)."""
    return npo.convert_to_tensor(x, dtype=dtype)


@op
def empty(shape, dtype=None):
    """keras.ops.empty: a tensor of the shape (zeros: pynn never hands out uninitialised
    memory)."""
    return npo.zeros(shape, dtype=npx._float_dtype(dtype))


@op
def empty_like(x, dtype=None):
    return npo.zeros_like(x, dtype=dtype)


@op
def multi_hot(inputs, num_classes=None, axis=-1, dtype=None, sparse=False, **kwargs):
    """keras.ops.multi_hot: one_hot of each id, the maximum over the ids' axis (axis 1 of a
    batch, axis 0 of one sample)."""
    if sparse:
        raise ValueError("pynn.ops.multi_hot: sparse=True is not supported (pynn has no "
                         "sparse tensors; Keras's torch backend refuses it too)")
    if num_classes is None:
        num_classes = kwargs.pop("num_tokens", None)
    if kwargs:
        raise TypeError(f"pynn.ops.multi_hot: unexpected arguments {sorted(kwargs)}")
    classes = _int("multi_hot", "num_classes", num_classes)
    ids = npo.cast(inputs, "int32") if npx._dtype(inputs).kind != "i" else inputs
    hot = npo.one_hot(ids, classes, axis=axis, dtype=npx._float_dtype(dtype))
    return npo.max(hot, axis=1 if len(_shape(inputs)) > 1 else 0)


# -- cross-entropies as ops (per element / per sample, unreduced) ---------------------------
def _same_shape(name, target, output):
    if _shape(target) != _shape(output):
        raise ValueError(f"pynn.ops.{name}: target and output must have the same shape, got "
                         f"{_shape(target)} and {_shape(output)}")


# Keras's backend.epsilon(), the cross-entropies' clip
EPSILON = 1e-7


def _clipped_log(output):
    eps = EPSILON
    return npo.log(npo.clip(output, eps, 1.0 - eps))


@op
def binary_crossentropy(target, output, from_logits=False):
    """keras.ops.binary_crossentropy: elementwise, unreduced; probabilities clipped to
    [eps, 1 - eps], logits through the stable max(x, 0) - x t + log1p(exp(-|x|))."""
    _same_shape("binary_crossentropy", target, output)
    if from_logits:
        return npo.add(npo.subtract(npo.maximum(output, 0.0), npo.multiply(output, target)),
                       npo.log1p(npo.exp(npo.negative(npo.abs(output)))))
    eps = EPSILON
    p = npo.clip(output, eps, 1.0 - eps)
    return npo.negative(npo.add(npo.multiply(target, npo.log(p)),
                                npo.multiply(npo.subtract(1.0, target),
                                             npo.log(npo.subtract(1.0, p)))))


def _log_probabilities(output, axis, from_logits):
    if from_logits:
        return log_softmax(output, axis=axis)
    return _clipped_log(npo.divide(output, npo.sum(output, axis=axis, keepdims=True)))


def _backend_value(b, x, dtype=None):
    v = value(x)
    if b.NAME == "cpu":
        v = np.asarray(v)
        return v if dtype is None else v.astype(dtype, copy=False)
    from pynn.ops import device
    if isinstance(v, (np.ndarray, np.generic, int, float, list)):
        return b.asarray(np.asarray(v), np.dtype(dtype or np.float32))
    return device._device(b, v)


def _row_crossentropy(name, target, output, from_logits, axis, sparse):
    """The loss family's crossentropy_rows on the classes moved last; the target's
    gradient (dense targets: -log p) composed only when the tape asks for it."""
    from pynn.autodiff import recording
    b = backend.current()
    ndim = len(_shape(output))
    if not sparse and isinstance(target, (np.ndarray, list, tuple, int, float)):
        target = npo.convert_to_tensor(np.asarray(target), dtype=npx._dtype(output))
    if axis != ndim - 1:
        output = npx.moveaxis(output, axis, -1)
        if not sparse:
            target = npx.moveaxis(target, axis, -1)
    ov = _backend_value(b, output)
    tv = _backend_value(b, target, np.int32 if sparse else np.dtype(ov.dtype))
    losses, grad = b.crossentropy_rows(name, tv, ov, bool(from_logits), recording())
    shape = _shape(output)

    def backward(dy, need):
        dy = b.reshape(dy, shape[:-1] + (1,))
        d_output = npo.multiply(Tensor(grad), Tensor(dy)).value if need[1] else None
        d_target = None
        if need[0] and not sparse:
            log_p = _log_probabilities(Tensor(ov), -1, from_logits)
            d_target = npo.multiply(npo.negative(log_p), Tensor(dy)).value
        return d_target, d_output

    return record(losses, (target, output), backward, name)


@op
def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """keras.ops.categorical_crossentropy: -sum(target * log p) over ``axis`` (log_softmax
    of logits, or the output renormalised along axis and clipped to [eps, 1 - eps]), on the
    loss family's row kernels."""
    _same_shape("categorical_crossentropy", target, output)
    if not _shape(output):
        raise ValueError("pynn.ops.categorical_crossentropy: target and output must be at "
                         "least 1-D, got scalars")
    axis = npx._axis("categorical_crossentropy", axis, len(_shape(output)))
    return _row_crossentropy("categorical_crossentropy", target, output, from_logits, axis,
                             sparse=False)


@op
def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """keras.ops.sparse_categorical_crossentropy: -log p of each integer target's class
    (a target with a trailing axis of 1 is squeezed, as Keras does), on the loss family's
    row kernels."""
    name = "sparse_categorical_crossentropy"
    oshape, tshape = _shape(output), _shape(target)
    if not oshape:
        raise ValueError(f"pynn.ops.{name}: output must be at least 1-D, got a scalar")
    axis = npx._axis(name, axis, len(oshape))
    if len(tshape) == len(oshape) and tshape[axis] == 1:
        target = npo.squeeze(target, axis)
        tshape = _shape(target)
    want = oshape[:axis] + oshape[axis + 1:]
    if tshape != want:
        raise ValueError(f"pynn.ops.{name}: target must be shaped like output without its "
                         f"class axis, {want}, got {tshape}")
    # The class ids come to the host once (integers, no gradient) so a bad one is named, not
    # gathered from a neighbouring row.
    ids = _host_ints(name, "target", target)
    classes = oshape[axis]
    if ids.size and (ids.min() < 0 or ids.max() >= classes):
        bad = ids[(ids < 0) | (ids >= classes)]
        raise ValueError(f"pynn.ops.{name}: target class ids must lie in [0, {classes}), got "
                         f"{int(bad[0])}")
    return _row_crossentropy(name, ids.astype(np.int32), output, from_logits, axis,
                             sparse=True)


# -- CTC ------------------------------------------------------------------------------------
# A padded step's logits: the blank's 0, every other class's this far below, so the step is
# blank with probability 1 in float32 (exp(-1e4) underflows) and adds nothing to any path.
_PADDED_STEP_GAP = 1e4


def _host_ints(name, what, x, shape=None):
    a = np.asarray(convert_to_numpy(x))
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
        raise ValueError(f"pynn.ops.{name}: {what} must be integers, got {a.dtype}")
    a = a.astype(np.int64)
    if shape is not None and a.shape != shape:
        raise ValueError(f"pynn.ops.{name}: {what} must have shape {shape}, got {a.shape}")
    return a


def _blank_first(output, mask_index, classes):
    """output's classes reordered so mask_index (the blank) is class 0, as the loss family's
    CTC kernels read it; -> (output, the new id of each old class)."""
    if mask_index == 0:
        return output, np.arange(classes)
    order = np.concatenate([[mask_index], np.delete(np.arange(classes), mask_index)])
    return npo.take(output, order, axis=2), np.argsort(order)


@op
def ctc_loss(target, output, target_length, output_length, mask_index=0):
    """keras.ops.ctc_loss: each sample's -log p(target | output) (B,), output (B, T, C)
    logits (log-softmaxed, as Keras does), on the loss family's CTC kernels. Labels past
    target_length are padding; steps past output_length become certain blanks."""
    name = "ctc_loss"
    oshape = _shape(output)
    if len(oshape) != 3:
        raise ValueError(f"pynn.ops.{name}: output must be (batch, time, classes) logits, got "
                         f"shape {oshape}")
    batch, steps, classes = oshape
    mask_index = _int(name, "mask_index", mask_index, 0)
    if mask_index >= classes:
        raise ValueError(f"pynn.ops.{name}: mask_index {mask_index} is not a class of the "
                         f"{classes} in output")
    labels = _host_ints(name, "target", target)
    if labels.ndim != 2 or labels.shape[0] != batch:
        raise ValueError(f"pynn.ops.{name}: target must be ({batch}, max_length) labels, got "
                         f"shape {labels.shape}")
    label_lengths = _host_ints(name, "target_length", target_length, (batch,))
    step_lengths = _host_ints(name, "output_length", output_length, (batch,))
    if np.any(label_lengths < 0) or np.any(label_lengths > labels.shape[1]):
        raise ValueError(f"pynn.ops.{name}: target_length must lie in [0, "
                         f"{labels.shape[1]}], got {label_lengths.tolist()}")
    if np.any(step_lengths < 1) or np.any(step_lengths > steps):
        raise ValueError(f"pynn.ops.{name}: output_length must lie in [1, {steps}], got "
                         f"{step_lengths.tolist()}")
    inside = np.arange(labels.shape[1])[None, :] < label_lengths[:, None]
    bad = inside & ((labels < 0) | (labels >= classes) | (labels == mask_index))
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise ValueError(f"pynn.ops.{name}: target row {row} holds labels outside [0, "
                         f"{classes}) or the blank {mask_index} within its target_length: "
                         f"{labels[row, :label_lengths[row]].tolist()}")
    repeats = np.count_nonzero(inside[:, 1:] & (labels[:, 1:] == labels[:, :-1]), axis=1)
    short = label_lengths + repeats > step_lengths
    if short.any():
        row = int(np.argmax(short))
        need = int(label_lengths[row] + repeats[row])
        raise ValueError(f"pynn.ops.{name}: the {int(label_lengths[row])} labels of row {row} "
                         f"({int(repeats[row])} repeated) need {need} steps, its "
                         f"output_length is {int(step_lengths[row])} (no alignment exists; "
                         f"Keras's loss would be inf)")
    logits, new_id = _blank_first(output, mask_index, classes)
    dense_labels = np.where(inside, new_id[np.clip(labels, 0, classes - 1)], 0).astype(np.int32)
    if np.any(step_lengths < steps):
        padded = np.full((1, 1, classes), -_PADDED_STEP_GAP, npx._dtype(output))
        padded[..., 0] = 0
        live = (np.arange(steps)[None, :] < step_lengths[:, None])[..., None]
        logits = npo.where(live, logits, padded)
    b = backend.current()
    lv = value(logits)
    if b.NAME != "cpu":
        from pynn.ops import device
        lv = device._device(b, lv)
    from pynn.autodiff import recording
    losses, grad = b.ctc_loss_samples(b.asarray(dense_labels, np.int32) if b.NAME != "cpu"
                                      else dense_labels, lv, recording(), None)

    def backward(dy, need):
        return (npo.multiply(Tensor(grad), npo.reshape(Tensor(dy), (batch, 1, 1))).value,)

    return record(losses, (logits,), backward, name)


def _greedy_decode(b, inputs, lengths, merge_repeated, mask_index):
    """Keras's greedy CTC decoding: the best class per step (argmax and max on the backend),
    then the blanks, padded steps and (merge_repeated) repeats dropped by a stable compaction
    of the (B, T) ids, vectorised on the host."""
    batch, steps, _ = _shape(inputs)
    ids = np.asarray(convert_to_numpy(npo.argmax(inputs, axis=-1))).astype(np.int32)
    best = npo.max(inputs, axis=-1)
    padded = np.arange(steps)[None, :] >= lengths[:, None]
    ids = np.where(padded, mask_index, ids)
    if merge_repeated:
        repeat = np.zeros_like(padded)
        repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
        ids = np.where(repeat, mask_index, ids)
    dropped = ids == mask_index
    order = np.argsort(np.where(dropped, steps, np.arange(steps)[None, :]), axis=1,
                       kind="stable")
    decoded = np.take_along_axis(np.where(dropped, -1, ids), order, axis=1)
    scores = npo.negative(npo.sum(npo.where(padded, 0.0, best), axis=1, keepdims=True))
    return Tensor(b.asarray(decoded[None], np.int32)), scores


# Keras's polynomial row hash (int64, wrapping): the order in which beam search meets the
# unique paths, and so its ties, follow it.
_KNUTH_HASH_CONSTANT = 2654435769


def _unique_padded(paths, size, pad):
    n, t = paths.shape
    with np.errstate(over="ignore"):
        powers = np.full(t, _KNUTH_HASH_CONSTANT, np.int64) ** np.arange(t, dtype=np.int64)
        hashes = ((paths.astype(np.int64) + 1) * powers).sum(axis=1)
    order = np.argsort(hashes, kind="stable")
    sorted_paths, sorted_hashes = paths[order], hashes[order]
    first = np.ones(n, bool)
    first[1:] = ~((sorted_hashes[1:] == sorted_hashes[:-1])
                  & np.all(sorted_paths[1:] == sorted_paths[:-1], axis=1))
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(first) - 1
    unique = sorted_paths[first]
    if len(unique) < size:
        unique = np.concatenate([unique, np.full((size - len(unique), t), pad, unique.dtype)])
    return unique, inverse


def _merge_scores(inverse, scores, n):
    top = scores.max()
    out = np.zeros(n, scores.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.add.at(out, inverse, np.exp(scores - top))
        return np.log(out) + top


def _beam_extend(paths, scores, masked, x, classes, mask_index, pad):
    paths = np.repeat(paths, classes, axis=0)
    scores = np.repeat(scores, classes)
    prev_masked = np.repeat(masked, classes)
    rows = np.arange(len(paths))
    tail_at = np.argmax(paths == pad, axis=1)
    tails = np.where(tail_at == 0, pad, paths[rows, tail_at - 1])
    ids = np.arange(classes, dtype=paths.dtype)
    ids[mask_index] = pad
    ids = np.tile(ids, len(paths) // classes)
    masked = ids == pad
    ids = np.where(~prev_masked & (tails == ids), pad, ids)
    paths[rows, tail_at] = ids
    return paths, scores + np.tile(x, len(paths) // classes), masked


def _beam_prune(paths, scores, masked, classes, width, pad):
    unique, inverse = _unique_padded(paths, 2 * classes * width, pad)
    emit = _merge_scores(inverse, np.where(masked, -np.inf, scores), len(unique))
    blank = _merge_scores(inverse, np.where(masked, scores, -np.inf), len(unique))
    top = np.argsort(np.logaddexp(emit, blank), kind="stable")[-width:]
    return (np.tile(unique[top], (2, 1)), np.concatenate([emit[top], blank[top]]),
            np.repeat([False, True], width))


def _beam_search_decode(inputs, lengths, beam_width, top_paths, mask_index):
    """Keras 3's beam search (its torch backend's port of the JAX one: the classes flipped
    for the ties, emit and blank tracks merged in log space), sample by sample and step by
    step as Keras runs it; each step's work is vectorised over the beams."""
    logits = np.asarray(convert_to_numpy(inputs), np.float64)
    batch, steps, classes = logits.shape
    logp = logits - logits.max(axis=-1, keepdims=True)
    logp = np.flip(logp - np.log(np.exp(logp).sum(axis=-1, keepdims=True)), 2)
    mask_index = classes - mask_index - 1
    pad = -1
    init = builtins.min(classes, beam_width)
    all_paths, all_scores = [], []
    for s in range(batch):  # Keras's loop over samples: each has its own beams
        x = logp[s]
        paths = np.full((2 * beam_width, steps), pad, np.int32)
        best = np.argsort(x[0], kind="stable")[-init:]
        paths[:init, 0] = np.where(best == mask_index, pad, best)
        scores = np.full(2 * beam_width, -np.inf)
        scores[:init] = x[0, best]
        masked = paths[:, 0] == pad
        for t in range(1, int(lengths[s])):
            paths, scores, masked = _beam_extend(paths, scores, masked, x[t], classes,
                                                 mask_index, pad)
            paths, scores, masked = _beam_prune(paths, scores, masked, classes, beam_width,
                                                pad)
        unique, inverse = _unique_padded(paths, 2 * classes * beam_width, pad)
        merged = _merge_scores(inverse, scores, len(unique))
        top = np.argsort(merged, kind="stable")[-top_paths:][::-1]
        all_paths.append(unique[top])
        all_scores.append(merged[top])
    paths = np.stack(all_paths)
    paths = np.where(paths == pad, pad, classes - paths - 1).transpose(1, 0, 2)
    return paths.astype(np.int32), np.stack(all_scores)


def ctc_decode(inputs, sequence_lengths, strategy="greedy", beam_width=100, top_paths=1,
               merge_repeated=True, mask_index=0):
    """keras.ops.ctc_decode -> (decoded (top_paths, B, T) int32 padded with -1, scores
    (B, top_paths)): greedy (scores the negated sum of each step's best logit) or Keras's
    beam search (log-probabilities of the top paths; on the CPU backend)."""
    name = "ctc_decode"
    if type(inputs) is KerasTensor:
        raise NotImplementedError(f"pynn.ops.{name}: decoding is eager only (its output "
                                  f"length depends on the values); call it on the model's "
                                  f"outputs")
    shape = _shape(inputs)
    if len(shape) != 3:
        raise ValueError(f"pynn.ops.{name}: inputs must be (batch, time, classes), got shape "
                         f"{shape}")
    batch, steps, classes = shape
    lengths = _host_ints(name, "sequence_lengths", sequence_lengths, (batch,))
    if np.any(lengths < 0) or np.any(lengths > steps):
        raise ValueError(f"pynn.ops.{name}: sequence_lengths must lie in [0, {steps}], got "
                         f"{lengths.tolist()}")
    mask_index = classes - 1 if mask_index is None else _int(name, "mask_index", mask_index, 0)
    if mask_index >= classes:
        raise ValueError(f"pynn.ops.{name}: mask_index {mask_index} is not a class of the "
                         f"{classes} in inputs")
    b = backend.current()
    if strategy == "greedy":
        return _greedy_decode(b, inputs, lengths, bool(merge_repeated), mask_index)
    if strategy != "beam_search":
        raise ValueError(f"pynn.ops.{name}: strategy must be 'greedy' or 'beam_search', got "
                         f"{strategy!r}")
    beam_width = _int(name, "beam_width", beam_width)
    top_paths = _int(name, "top_paths", top_paths)
    if top_paths > beam_width:
        raise ValueError(f"pynn.ops.{name}: top_paths ({top_paths}) must be <= beam_width "
                         f"({beam_width})")
    cpu_only(f"{name}(strategy='beam_search')")
    paths, scores = _beam_search_decode(inputs, lengths, beam_width, top_paths, mask_index)
    return Tensor(paths), Tensor(scores.astype(npx._dtype(inputs)))
