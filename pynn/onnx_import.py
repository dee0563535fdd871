"""Import of ONNX files as pynn functional models: ``pynn.onnx.load``, ``pynn.load_model``.

    model = pynn.onnx.load("m.onnx")        # or bytes, or an onnx.ModelProto
    model.predict(x)                        # == onnxruntime's run on the same x

The result is a ``pynn.Model`` of ``pynn.Input`` and existing pynn layers (with the ONNX
initializers as their weights), or ``pynn.ops`` op nodes where no layer fits, so it trains,
saves and exports like any pynn model. The ``onnx`` package is an optional extra, imported
only when ``load`` runs.

Layout. ONNX images are NCHW; pynn's layers are channels-last. Each ONNX tensor is held as a
pynn tensor (batch always on axis 0) and a permutation: the ONNX tensor is
``transpose(pynn_tensor, perm)`` (the exporter's convention, read backwards). Conv and pooling
ask for the channels-first permutation, which puts the pynn tensor in NHWC; ONNX Transposes
only change the permutation; elementwise ops, normalizations and reductions work in whatever
layout their input has (their axes and constants are mapped). A Permute layer runs only where
a layout must change for real (a Reshape of NCHW data, a graph output). A Flatten of NCHW data
that only feeds Gemm/MatMul with constant weights is folded into those weights' rows.

Subgraphs whose inputs are constants or static shapes (torch's Shape -> Gather -> Unsqueeze ->
Concat -> Reshape) are folded with NumPy at load time; the batch axis of a Shape is tracked as
a marker so a Reshape keeps it dynamic.

Refused with a ValueError naming the node: an op or attribute without a pynn form, external
data outside the model's directory, absurd sizes (checked before allocating), dangling or
cyclic graphs, opsets below MIN_OPSET, and non-float32 inputs feeding float layers.
"""

import math
import os

import numpy as np

MIN_OPSET = 7
# Refused before anything is allocated: one dimension, one tensor's elements, all
# initializers' elements together.
MAX_DIM = 1 << 24
MAX_TENSOR_ELEMENTS = 1 << 28
MAX_TOTAL_ELEMENTS = 1 << 30
MAX_NODES = 1 << 20
MAX_FILE_BYTES = 1 << 31
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_GAMMA = 1.0507009873554804934193349852946
_FLOAT32_MIN = float(np.finfo(np.float32).min)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("pynn.onnx.load needs the 'onnx' package: install the optional "
                          "extra with `pip install pynn[onnx]` (or `pip install onnx`)") from None
    return onnx


def _identity(rank):
    return tuple(range(rank))


def _channels_first(rank):
    return (0, rank - 1) + tuple(range(1, rank - 1))


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


class _Batch:
    """The batch entry of a folded Shape: dynamic, so only moved around, never computed."""

    def __repr__(self):
        return "batch"


BATCH = _Batch()


class _Value:
    """An activation: ONNX tensor = ``transpose(tensor, perm)``, ``tensor`` a pynn symbolic
    tensor (batch on axis 0). ``rows``: a folded Flatten, ONNX column j = pynn column
    rows[j] (only Gemm and MatMul with constant weights read it)."""

    __slots__ = ("copies", "perm", "rows", "tensor")

    def __init__(self, tensor, perm=None, rows=None, copies=None):
        self.tensor = tensor
        self.perm = tuple(perm) if perm is not None else _identity(len(tensor.shape))
        self.rows = rows
        # perm -> _Value: this same ONNX tensor held in other layouts (shared by the copies)
        self.copies = {} if copies is None else copies
        self.copies.setdefault(self.perm, self)

    @property
    def shape(self):
        """The ONNX shape (None where dynamic)."""
        return tuple(self.tensor.shape[p] for p in self.perm)

    @property
    def batch_axis(self):
        return self.perm.index(0)


class _Importer:
    def __init__(self, onnx, proto, base_dir, channels_last_inputs):
        self.onnx = onnx
        self.proto = proto
        self.graph = proto.graph
        self.base_dir = base_dir
        self.channels_last_inputs = channels_last_inputs
        self.opset = 1
        for o in proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                self.opset = int(o.version)
        # ONNX name -> np.ndarray (a constant; dtype object: a folded shape holding BATCH)
        # or _Value (an activation)
        self.values = {}
        self.consumers = {}
        self.producer = {}
        self.skipped = set()  # ids of nodes fused into an earlier one
        self.file_batch = None

    # -- errors ---------------------------------------------------------------------------
    @staticmethod
    def label(node):
        return f"{node.op_type} node '{node.name or (node.output[0] if node.output else '?')}'"

    def refuse(self, node, why):
        return ValueError(f"pynn.onnx.load: {self.label(node)}: {why}")

    # -- the file -------------------------------------------------------------------------
    def check_file(self):
        if self.opset < MIN_OPSET:
            raise ValueError(f"pynn.onnx.load: the model's opset is {self.opset}; pynn reads "
                             f"opset {MIN_OPSET} and newer")
        for o in self.proto.opset_import:
            if o.domain not in ("", "ai.onnx"):
                used = [n for n in self.graph.node if n.domain == o.domain]
                if used:
                    raise ValueError(f"pynn.onnx.load: {self.label(used[0])}: operator domain "
                                     f"{o.domain!r} is not supported (only the default ONNX "
                                     f"domain)")
        if len(self.graph.sparse_initializer):
            raise ValueError(f"pynn.onnx.load: sparse initializer "
                             f"'{self.graph.sparse_initializer[0].values.name}' is not "
                             f"supported")
        if len(self.graph.node) > MAX_NODES:
            raise ValueError(f"pynn.onnx.load: {len(self.graph.node)} nodes, more than "
                             f"{MAX_NODES}")
        total = 0
        for init in self.graph.initializer:
            total += self.check_tensor_size(init, f"initializer '{init.name}'")
            if total > MAX_TOTAL_ELEMENTS:
                raise ValueError(f"pynn.onnx.load: the initializers hold more than "
                                 f"{MAX_TOTAL_ELEMENTS} elements in all")
        for node in self.graph.node:
            for a in node.attribute:
                if a.type == self.onnx.AttributeProto.TENSOR:
                    self.check_tensor_size(a.t, self.label(node))
                elif a.type == self.onnx.AttributeProto.GRAPH or a.g.node:
                    raise self.refuse(node, "subgraph attributes (If, Loop, Scan) are not "
                                            "supported")

    def check_tensor_size(self, t, what):
        for d in t.dims:
            if d < 0 or d > MAX_DIM:
                raise ValueError(f"pynn.onnx.load: {what}: dimension {d} is out of range "
                                 f"[0, {MAX_DIM}]")
        n = math.prod(int(d) for d in t.dims)
        if n > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"pynn.onnx.load: {what}: {n} elements, more than "
                             f"{MAX_TENSOR_ELEMENTS}")
        if t.data_location == self.onnx.TensorProto.EXTERNAL:
            self.check_external(t, what)
        return n

    def check_external(self, t, what):
        entries = {e.key: e.value for e in t.external_data}
        location = entries.get("location", "")
        if self.base_dir is None:
            raise ValueError(f"pynn.onnx.load: {what} keeps its data in external file "
                             f"{location!r}; load the model from its path so the file can be "
                             f"found beside it")
        base = os.path.realpath(self.base_dir)
        path = os.path.realpath(os.path.join(base, location))
        if not location or os.path.isabs(location) or os.path.commonpath([base, path]) != base:
            raise ValueError(f"pynn.onnx.load: {what}: external data path {location!r} is "
                             f"outside the model's directory {base!r}; refused")
        if not os.path.isfile(path):
            raise ValueError(f"pynn.onnx.load: {what}: external data file {location!r} is "
                             f"missing")
        need = int(entries.get("offset", 0)) + int(entries.get("length", 0) or 0)
        if need > os.path.getsize(path):
            raise ValueError(f"pynn.onnx.load: {what}: external data {location!r} is shorter "
                             f"than its offset and length")

    def array(self, t):
        try:
            if t.data_location == self.onnx.TensorProto.EXTERNAL:
                a = self.onnx.numpy_helper.to_array(t, base_dir=self.base_dir)
            else:
                a = self.onnx.numpy_helper.to_array(t)
        except Exception as e:  # data that does not fill the dims, an unknown type, ...
            raise ValueError(f"pynn.onnx.load: tensor '{t.name}' cannot be read: "
                             f"{type(e).__name__}: {e}") from None
        if a.dtype == object:
            raise ValueError(f"pynn.onnx.load: tensor '{t.name}' holds strings; pynn reads "
                             f"numbers")
        return a

    def sorted_nodes(self):
        """The nodes in an order where each reads only what is already made; dangling inputs
        and cycles are refused by name."""
        known = {i.name for i in self.graph.initializer} | {i.name for i in self.graph.input}
        known.add("")
        producer = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    producer[o] = node
        for node in self.graph.node:
            for i in node.input:
                if i not in known and i not in producer:
                    raise self.refuse(node, f"input '{i}' is made by no node, initializer or "
                                            f"graph input")
        order, state = [], {}
        for root in self.graph.node:
            stack = [(root, False)]
            while stack:
                node, done = stack.pop()
                key = id(node)
                if done:
                    state[key] = 2
                    order.append(node)
                    continue
                if state.get(key) == 2:
                    continue
                if state.get(key) == 1:
                    continue
                state[key] = 1
                stack.append((node, True))
                for i in node.input:
                    dep = producer.get(i)
                    if dep is None or i in known:
                        continue
                    if state.get(id(dep)) == 1:
                        raise self.refuse(node, f"the graph has a cycle through input '{i}'")
                    if state.get(id(dep)) != 2:
                        stack.append((dep, False))
        for out in self.graph.output:
            if out.name not in known and out.name not in producer:
                raise ValueError(f"pynn.onnx.load: graph output '{out.name}' is made by no "
                                 f"node")
        return order

    # -- layouts --------------------------------------------------------------------------
    def wrap(self, tensor, perm=None):
        return _Value(tensor, perm)

    def layout(self, v, perm, node=None):
        """``v`` held in layout ``perm``: the copy made before, or one Permute layer."""
        from pynn import layers

        perm = tuple(perm)
        if v.rows is not None:
            raise self.refuse(node, "internal: a folded Flatten read by a non-Gemm op")
        if v.perm == perm:
            return v
        copies = v.copies
        if perm in copies:
            return copies[perm]
        inv = _inverse(perm)
        q = tuple(v.perm[inv[i]] for i in range(len(perm)))
        if q[0] != 0:
            raise self.refuse(node, f"needs the batch axis first, the tensor has it on axis "
                                    f"{v.batch_axis}")
        out = layers.Permute(tuple(int(a) for a in q[1:]))(v.tensor)
        return _Value(out, perm, copies=copies)

    def plain(self, v, node=None):
        return self.layout(v, _identity(len(v.perm)), node)

    def batch_first(self, v, node=None):
        """``v`` in a layout whose pynn tensor is the ONNX tensor with its batch axis moved
        first (the order a Reshape keeps)."""
        b = v.batch_axis
        others = [j for j in range(len(v.perm)) if j != b]
        perm = [0] * len(v.perm)
        for k, j in enumerate(others, 1):
            perm[j] = k
        return self.layout(v, perm, node)

    def to_pynn_const(self, c, v, node):
        """Constant ``c`` (ONNX broadcasting against ``v``) in ``v``'s pynn layout."""
        c = np.asarray(c)
        rank = len(v.perm)
        if c.ndim > rank:
            raise self.refuse(node, f"a constant of rank {c.ndim} broadcast to a rank-{rank} "
                                    f"tensor would add batch axes")
        c = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if c.shape[v.batch_axis] != 1:
            raise self.refuse(node, f"a constant of shape {c.shape} varies along the batch "
                                    f"axis")
        return c.transpose(_inverse(v.perm))

    # -- inputs and outputs ---------------------------------------------------------------
    def make_inputs(self):
        from pynn.layers import Input

        inits = {i.name for i in self.graph.initializer}
        inputs = []
        for info in self.graph.input:
            if info.name in inits:
                continue
            tt = info.type.tensor_type
            elem = self.onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if not dims:
                raise ValueError(f"pynn.onnx.load: graph input '{info.name}' is a scalar; "
                                 f"pynn's inputs have a batch axis")
            if dims[0] is not None:
                self.file_batch = dims[0]
            for d in dims[1:]:
                if d is not None and not 0 < d <= MAX_DIM:
                    raise ValueError(f"pynn.onnx.load: graph input '{info.name}' has "
                                     f"dimension {d}")
            if elem not in (np.float32, np.int32, np.int64):
                raise ValueError(f"pynn.onnx.load: graph input '{info.name}' is {elem}; pynn "
                                 f"reads float32, int32 and int64 inputs")
            rank = len(dims)
            perm = None
            if self.channels_last_inputs and rank >= 3 and elem == np.float32:
                perm = _channels_first(rank)
                dims = [dims[p] for p in _inverse(perm)]
            x = Input(tuple(dims[1:]), name=_layer_name(info.name),
                           dtype=np.dtype(elem).name)
            inputs.append(x)
            self.values[info.name] = self.wrap(x, perm)
        return inputs

    def make_outputs(self):
        outputs = []
        for out in self.graph.output:
            v = self.get(out.name)
            if not isinstance(v, _Value):
                raise ValueError(f"pynn.onnx.load: graph output '{out.name}' is a constant; "
                                 f"a pynn model's outputs depend on its inputs")
            if v.rows is not None:
                raise ValueError(f"pynn.onnx.load: graph output '{out.name}' is a folded "
                                 f"Flatten")
            if v.batch_axis != 0:
                raise ValueError(f"pynn.onnx.load: graph output '{out.name}' has its batch "
                                 f"axis on axis {v.batch_axis}; pynn's outputs have it first")
            outputs.append(self.plain(v).tensor)
        return outputs

    # -- values ---------------------------------------------------------------------------
    def get(self, name):
        return self.values[name]

    def const(self, node, k, default=None, required=True):
        """Input ``k`` of ``node`` as a NumPy constant (None when absent and not required)."""
        if k >= len(node.input) or node.input[k] == "":
            if required and default is None:
                raise self.refuse(node, f"input {k} is missing")
            return default
        v = self.get(node.input[k])
        if isinstance(v, _Value):
            raise self.refuse(node, f"input {k} ('{node.input[k]}') must be a constant (an "
                                    f"initializer or a folded subgraph), it depends on the "
                                    f"model's input")
        if v.dtype == object:
            raise self.refuse(node, f"input {k} ('{node.input[k]}') holds the dynamic batch "
                                    f"size, which pynn does not compute with")
        return v

    def activation(self, node, k=0):
        v = self.get(node.input[k])
        if not isinstance(v, _Value):
            raise self.refuse(node, f"input {k} ('{node.input[k]}') is a constant where pynn "
                                    f"expects the model's data")
        return v

    def float_activation(self, node, k=0):
        v = self.activation(node, k)
        if np.dtype(v.tensor.dtype) != np.float32:
            raise self.refuse(node, f"input {k} ('{node.input[k]}') is {v.tensor.dtype}; this "
                                    f"op takes float32")
        return v

    # -- driver ---------------------------------------------------------------------------
    def run(self):
        from pynn.models import Model

        self.check_file()
        nodes = self.sorted_nodes()
        for init in self.graph.initializer:
            self.values[init.name] = self.array(init)
        inputs = self.make_inputs()
        for node in nodes:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
            for o in node.output:
                self.producer[o] = node
        for out in self.graph.output:
            self.consumers.setdefault(out.name, []).append(None)
        for node in nodes:
            # Constants first: a fused pattern looks at constants its later nodes read.
            if node.op_type == "Constant":
                self.convert(node)
        for node in nodes:
            if id(node) in self.skipped or node.op_type == "Constant":
                continue
            self.convert(node)
        outputs = self.make_outputs()
        name = _layer_name(self.graph.name or "onnx_model")
        return Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)

    def convert(self, node):
        if node.domain not in ("", "ai.onnx"):
            raise self.refuse(node, f"domain {node.domain!r} is not supported")
        ins = [self.get(i) if i else None for i in node.input]
        try:
            if node.op_type in FOLDERS and all(not isinstance(v, _Value) for v in ins):
                outs = FOLDERS[node.op_type](self, node, ins)
            elif node.op_type in CONVERTERS:
                outs = CONVERTERS[node.op_type](self, node)
            else:
                outs = None
        except (ValueError, TypeError, IndexError, KeyError) as e:
            if str(e).startswith("pynn.onnx.load"):
                raise
            # a layer's own refusal (or NumPy's, folding a malformed constant subgraph)
            raise self.refuse(node, f"{type(e).__name__}: {e}") from None
        if outs is None:
            known = sorted(set(CONVERTERS) | set(FOLDERS))
            raise self.refuse(node, f"op type {node.op_type!r} is not supported; pynn reads "
                                    f"{', '.join(known)}")
        outs = outs if isinstance(outs, tuple) else (outs,)
        for name, v in zip(node.output, outs):
            if v is BATCH or isinstance(v, (np.generic, int, float)):
                v = np.asarray(v, dtype=object if v is BATCH else None)
            if isinstance(v, np.ndarray) and v.dtype == object and not any(
                    e is BATCH for e in v.reshape(-1)):
                v = v.astype(np.int64)  # a folded shape without its batch entry: plain ints
            if name:
                self.values[name] = v

    def sole_consumer(self, name):
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 else None


def _layer_name(name):
    clean = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(name)).strip("_")
    return clean or "tensor"


def _read(onnx, source):
    """``source`` as (ModelProto, the directory of its external data or None)."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(source)), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"pynn.onnx.load: takes a path, bytes or an onnx.ModelProto, got "
                        f"{type(source).__name__}")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"pynn.onnx.load: no file {path!r}")
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ValueError(f"pynn.onnx.load: {path!r} is larger than protobuf's 2 GiB limit; "
                         f"keep large weights as external data beside it")
    with open(path, "rb") as f:
        proto = onnx.load_from_string(f.read())
    return proto, os.path.dirname(os.path.abspath(path))


def load(source, channels_last_inputs=False):
    """A pynn functional ``Model`` from an ONNX model: a path, bytes or ``onnx.ModelProto``.

    The model takes the inputs onnxruntime takes (NCHW images stay NCHW: a Permute after the
    Input puts them channels-last once) and gives what onnxruntime gives.
    ``channels_last_inputs=True``: image inputs (rank >= 3, float) are taken channels-last
    instead (N, H, W, C), so no Permute runs at the input.

    Weights are the file's initializers; the model trains, saves and exports as any pynn
    model. An op or attribute pynn cannot express is a ValueError naming the node.
    """
    onnx = _onnx()
    if not isinstance(channels_last_inputs, bool):
        raise ValueError(f"pynn.onnx.load: channels_last_inputs must be a bool, got "
                         f"{channels_last_inputs!r}")
    try:
        proto, base_dir = _read(onnx, source)
    except OSError as e:
        raise ValueError(f"pynn.onnx.load: cannot read {source!r}: {e}") from None
    except Exception as e:
        if type(e).__name__ == "DecodeError":  # protobuf's word for "not an ONNX model"
            raise ValueError(f"pynn.onnx.load: not an ONNX model: {e}") from None
        raise
    return _Importer(onnx, proto, base_dir, channels_last_inputs).run()


# -- helpers of the converters ------------------------------------------------------------
def _attrs(node):
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8", "replace") for s in v]
        out[a.name] = v
    return out


def _check_attrs(imp, node, allowed):
    """Attributes outside ``allowed`` (a dict name -> the only value pynn supports, or
    None where any value is read) are refused by name."""
    attrs = _attrs(node)
    for name, v in attrs.items():
        if name not in allowed:
            raise imp.refuse(node, f"attribute {name}={v!r} is not supported (pynn reads "
                                   f"{', '.join(sorted(allowed)) or 'none'})")
        want = allowed[name]
        if want is not None and v != want and not (isinstance(want, tuple) and v in want):
            raise imp.refuse(node, f"attribute {name}={v!r} is not supported (pynn reads "
                                   f"{name}={want!r})")
    return attrs


def _axes(imp, node, attrs, k):
    """A node's axes: the attribute (older opsets) or input ``k`` (newer); None if absent."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    c = imp.const(node, k, required=False)
    return None if c is None else [int(a) for a in np.asarray(c).reshape(-1)]


def _layer(imp, layer, x, weights=None, node=None):
    """``layer`` called on pynn tensor ``x``, its weights set (ONNX's, as float32); named
    after its node, so a summary and the weights' paths say where each came from."""
    from pynn.layers.base import _unique_name

    if node is not None and node.name:
        layer.name = _unique_name(_layer_name(node.name))
    try:
        y = layer(x)
    except ValueError as e:
        raise imp.refuse(node, str(e)) from None
    if weights is not None:
        layer.set_weights([np.ascontiguousarray(w, dtype=np.float32) for w in weights])
    return y


def _ops():
    from pynn import ops

    return ops


def _float(c):
    return np.asarray(c, dtype=np.float32)


def _scalar(imp, node, c, what):
    c = np.asarray(c)
    if c.size != 1:
        raise imp.refuse(node, f"{what} must be a scalar, got shape {c.shape}")
    return float(c.reshape(()))


CONVERTERS = {}
FOLDERS = {}


def _converts(*op_types):
    def register(fn):
        for t in op_types:
            CONVERTERS[t] = fn
        return fn
    return register


def _folds(*op_types):
    def register(fn):
        for t in op_types:
            FOLDERS[t] = fn
        return fn
    return register


# -- constant folding (NumPy at load time) -------------------------------------------------
def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.asarray(x).dtype)


_UNARY = {"Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Abs": np.abs,
          "Floor": np.floor, "Ceil": np.ceil, "Reciprocal": np.reciprocal,
          "Relu": lambda x: np.maximum(x, 0), "Tanh": np.tanh, "Not": np.logical_not,
          "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Erf": _erf, "Sign": np.sign,
          "Round": np.round, "Sin": np.sin, "Cos": np.cos}


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))
    return np.true_divide(a, b)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div,
           "Pow": np.power, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
           "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
           "And": np.logical_and, "Or": np.logical_or, "Mod": np.fmod}


def _typed(result, like):
    """NumPy's result in the ONNX dtype of the operands (NumPy may widen float32)."""
    if result.dtype == object or result.dtype == bool:
        return result
    return result.astype(like.dtype, copy=False) if like.dtype != object else result


@_folds(*_UNARY)
def _fold_unary(imp, node, ins):
    x = ins[0]
    if x.dtype == object:
        raise imp.refuse(node, "computes with the dynamic batch size")
    return _typed(np.asarray(_UNARY[node.op_type](x)), x)


@_folds(*_BINARY, "Max", "Min", "Sum", "Mean")
def _fold_binary(imp, node, ins):
    if any(x.dtype == object for x in ins):
        raise imp.refuse(node, "computes with the dynamic batch size")
    if node.op_type in _BINARY:
        return _typed(np.asarray(_BINARY[node.op_type](ins[0], ins[1])), ins[0])
    fn = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[node.op_type]
    out = ins[0]
    for x in ins[1:]:
        out = fn(out, x)
    if node.op_type == "Mean":
        out = out / len(ins)
    return _typed(np.asarray(out), ins[0])


@_folds("Identity", "Dropout")
def _fold_identity(imp, node, ins):
    return ins[0] if node.op_type == "Identity" or len(node.output) < 2 else (
        ins[0], np.ones(ins[0].shape, dtype=bool))


@_folds("Constant")
def _fold_constant(imp, node, ins):
    attrs = _attrs(node)
    if "value" in attrs:
        t = node.attribute[[a.name for a in node.attribute].index("value")].t
        return imp.array(t)
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
        if name in attrs:
            return np.asarray(attrs[name], dtype=dtype)
    raise imp.refuse(node, f"only tensor, float(s) and int(s) constants are supported, got "
                           f"{sorted(attrs)}")


def _np_dtype(imp, elem, node):
    try:
        return imp.onnx.helper.tensor_dtype_to_np_dtype(elem)
    except Exception:  # an unknown enum value
        raise imp.refuse(node, f"unknown element type {elem}") from None


@_folds("Cast")
def _fold_cast(imp, node, ins):
    to = _np_dtype(imp, _attrs(node).get("to"), node)
    x = ins[0]
    if x.dtype == object:
        return x if np.issubdtype(to, np.integer) else _fold_unary(imp, node, ins)
    return x.astype(to)


@_folds("Shape")
def _fold_shape(imp, node, ins):
    attrs = _attrs(node)
    dims = np.asarray(ins[0].shape, dtype=np.int64)
    return dims[attrs.get("start", 0):attrs.get("end", None)]


@_folds("Size")
def _fold_size(imp, node, ins):
    return np.asarray(ins[0].size, dtype=np.int64)


@_folds("Gather")
def _fold_gather(imp, node, ins):
    data, idx = ins
    return np.take(data, idx.astype(np.int64), axis=_attrs(node).get("axis", 0))


@_folds("Unsqueeze")
def _fold_unsqueeze(imp, node, ins):
    x = ins[0]
    axes = _axes(imp, node, _attrs(node), 1)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return x


@_folds("Squeeze")
def _fold_squeeze(imp, node, ins):
    x = ins[0]
    axes = _axes(imp, node, _attrs(node), 1)
    return np.squeeze(x, axis=tuple(a % x.ndim for a in axes) if axes else None)


@_folds("Concat")
def _fold_concat(imp, node, ins):
    xs = [x for x in ins if x is not None and x.size]
    if any(x.dtype == object for x in xs):
        xs = [x.astype(object) for x in xs]
    return np.concatenate(xs, axis=_attrs(node)["axis"]) if xs else ins[0]


def _reshape_target(imp, node, in_shape, target):
    target = [int(t) for t in target]
    allowzero = _attrs(node).get("allowzero", 0)
    return [in_shape[i] if t == 0 and not allowzero else t for i, t in enumerate(target)]


@_folds("Reshape")
def _fold_reshape(imp, node, ins):
    x, target = ins[0], imp.const(node, 1)
    return x.reshape(_reshape_target(imp, node, x.shape, target))


@_folds("Flatten")
def _fold_flatten(imp, node, ins):
    x = ins[0]
    axis = _attrs(node).get("axis", 1) % max(x.ndim, 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


@_folds("Transpose")
def _fold_transpose(imp, node, ins):
    return np.transpose(ins[0], _attrs(node).get("perm"))


def _slice_args(imp, node, rank):
    attrs = _attrs(node)
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = imp.const(node, 1), imp.const(node, 2)
        axes, steps = imp.const(node, 3, required=False), imp.const(node, 4, required=False)
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    return [(a, int(b), int(e), s) for a, b, e, s in zip(axes, starts, ends, steps)]


@_folds("Slice")
def _fold_slice(imp, node, ins):
    x = ins[0]
    key = [slice(None)] * x.ndim
    for a, b, e, s in _slice_args(imp, node, x.ndim):
        key[a] = slice(max(min(b, _INT_BIG), -_INT_BIG), max(min(e, _INT_BIG), -_INT_BIG), s)
    return x[tuple(key)]


_INT_BIG = 1 << 62


@_folds("ConstantOfShape")
def _fold_constant_of_shape(imp, node, ins):
    shape = _batch_as_one(ins[0])
    if math.prod(int(d) for d in shape) > MAX_TENSOR_ELEMENTS or (shape < 0).any():
        raise imp.refuse(node, f"shape {shape.tolist()} is out of range")
    value = np.zeros(1, np.float32)
    for a in node.attribute:
        if a.name == "value":
            value = imp.array(a.t).reshape(-1)
    return np.full(tuple(int(d) for d in shape), value[0], dtype=value.dtype)


@_folds("Range")
def _fold_range(imp, node, ins):
    start, limit, delta = (np.asarray(x).reshape(()) for x in ins)
    if delta == 0 or abs((limit - start) / delta) > MAX_TENSOR_ELEMENTS:
        raise imp.refuse(node, "range too long or with a zero step")
    return np.arange(start, limit, delta, dtype=np.result_type(start))


def _batch_as_one(shape):
    """A folded shape with the batch entry as 1: a constant the same for every sample
    (torch's zero initial states, Expand(0, (1, batch, H))) broadcasts along the batch."""
    return np.asarray([1 if d is BATCH else int(d) for d in np.asarray(shape).reshape(-1)],
                      dtype=np.int64)


@_folds("Expand")
def _fold_expand(imp, node, ins):
    shape = _batch_as_one(ins[1])
    out = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in shape))
    if math.prod(out) > MAX_TENSOR_ELEMENTS:
        raise imp.refuse(node, f"shape {out} is too large")
    return np.broadcast_to(ins[0], out).copy()


@_folds("Where")
def _fold_where(imp, node, ins):
    return np.where(ins[0], ins[1], ins[2])


@_folds("Clip")
def _fold_clip(imp, node, ins):
    attrs = _attrs(node)
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("min", -np.inf)
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else attrs.get("max", np.inf)
    return np.clip(ins[0], lo, hi).astype(ins[0].dtype)


@_folds("ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
def _fold_reduce(imp, node, ins):
    attrs = _attrs(node)
    axes = _axes(imp, node, attrs, 1) if node.op_type == "ReduceSum" or imp.opset >= 18 \
        else attrs.get("axes")
    fn = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMean": np.mean,
          "ReduceMax": np.max, "ReduceMin": np.min}[node.op_type]
    axis = None if not axes else tuple(axes)
    return np.asarray(fn(ins[0], axis=axis, keepdims=bool(attrs.get("keepdims", 1))),
                      dtype=ins[0].dtype)


# -- converters: shapes and layouts --------------------------------------------------------
@_converts("Shape")
def _shape(imp, node):
    attrs = _check_attrs(imp, node, {"start": None, "end": None})
    x = imp.activation(node)
    dims = []
    for j, d in enumerate(x.shape):
        if j == x.batch_axis:
            dims.append(BATCH)
        elif d is None:
            raise imp.refuse(node, f"axis {j} of '{node.input[0]}' is dynamic; pynn folds the "
                                   f"shapes it reads and only the batch axis may vary")
        else:
            dims.append(int(d))
    return np.asarray(dims, dtype=object)[attrs.get("start", 0):attrs.get("end", None)]


@_converts("Identity", "Dropout")
def _identity_op(imp, node):
    if node.op_type == "Dropout":
        _check_attrs(imp, node, {"seed": None, "ratio": None})
        if len(node.input) > 2 and node.input[2]:
            training = imp.const(node, 2)
            if bool(np.asarray(training).reshape(())):
                raise imp.refuse(node, "training_mode=True: pynn reads inference graphs")
        if len(node.output) > 1 and node.output[1]:
            raise imp.refuse(node, "its mask output is read; pynn's Dropout has none")
    return imp.activation(node)


@_converts("Cast")
def _cast(imp, node):
    x = imp.activation(node)
    to = _np_dtype(imp, _attrs(node).get("to"), node)
    have = np.dtype(x.tensor.dtype)
    if to == have or (np.issubdtype(to, np.integer) and np.issubdtype(have, np.integer)):
        return x  # ids keep their dtype: Embedding reads int32 and int64 alike
    if np.dtype(to) not in (np.float32, np.bool_, np.int32, np.int64):
        raise imp.refuse(node, f"casting the model's {have} data to {np.dtype(to)} is not "
                               f"supported")
    return imp.wrap(_ops().cast(x.tensor, np.dtype(to).name), x.perm)


@_converts("Transpose")
def _transpose(imp, node):
    x = imp.activation(node)
    rank = len(x.perm)
    t = _attrs(node).get("perm", list(reversed(range(rank))))
    if sorted(t) != list(range(rank)):
        raise imp.refuse(node, f"perm {list(t)} is not a permutation of {rank} axes")
    if x.rows is not None:
        raise imp.refuse(node, "transposes a folded Flatten")
    # Nothing runs: the permutation is remembered until a layout matters.
    return _Value(x.tensor, [x.perm[i] for i in t])


def _static(imp, node, shape, what):
    if any(d is None for d in shape):
        raise imp.refuse(node, f"{what} needs static sizes, got {shape}")
    return [int(d) for d in shape]


@_converts("Reshape")
def _reshape(imp, node):
    from pynn import layers

    x = imp.activation(node)
    target = imp.get(node.input[1])
    if isinstance(target, _Value):
        raise imp.refuse(node, "its target shape depends on the model's data")
    target = list(np.asarray(target).reshape(-1))
    shape = list(x.shape)
    b = x.batch_axis
    if _attrs(node).get("allowzero", 0) and any(t is not BATCH and int(t) == 0
                                                for t in target):
        raise imp.refuse(node, "allowzero with a zero in the target is not supported")
    target = [shape[i] if t is not BATCH and int(t) == 0 else t for i, t in enumerate(target)]
    marks = [i for i, t in enumerate(target) if t is BATCH]
    if len(marks) > 1:
        raise imp.refuse(node, "its target repeats the batch axis")
    if marks:
        bt = marks[0]
    elif b < len(target) and (target[b] is None or int(target[b]) in (-1, imp.file_batch)):
        bt = b  # the file's fixed batch size (or -1) where the batch is: the batch axis
    else:
        raise imp.refuse(node, f"target {[int(t) if t is not BATCH else 'batch' for t in target]}"
                               f" does not keep the batch axis ({b}) apart")
    before = _static(imp, node, shape[:b], "reshaping axes before the batch axis")
    t_before = [int(t) for t in target[:bt]]
    if -1 in t_before or math.prod(before) != math.prod(t_before):
        raise imp.refuse(node, f"target {target} mixes the batch axis with others")
    rest = [-1 if t is None else int(t) for t in target[bt + 1:]]
    sample = [d for j, d in enumerate(shape) if j != b]
    if -1 not in rest and None not in sample and math.prod(t_before + rest) != math.prod(
            sample):
        raise imp.refuse(node, f"target {[int(t) if t is not BATCH else 'batch' for t in target]}"
                               f" does not keep the batch axis ({b}) apart")
    if b == 0 and bt == 0 and len(target) == 2:
        return _flatten_value(imp, node, x)  # torch's x.view(x.size(0), -1)
    x = imp.batch_first(x, node)
    new = tuple(t_before + rest)
    if tuple(x.tensor.shape[1:]) == new:
        y = x.tensor
    else:
        y = _layer(imp, layers.Reshape(new), x.tensor, node=node)
    rank = len(target)
    perm = [0] * rank
    for k, j in enumerate([j for j in range(rank) if j != bt], 1):
        perm[j] = k
    return imp.wrap(y, perm)


def _feeds_only_constant_matmuls(imp, name):
    readers = imp.consumers.get(name, [])
    for r in readers:
        if r is None or r.input[0] != name or len(r.input) < 2:
            return False
        if r.op_type == "Gemm":
            if _attrs(r).get("transA", 0):
                return False
        elif r.op_type != "MatMul":
            return False
        weights = imp.values.get(r.input[1])
        if not isinstance(weights, np.ndarray) or weights.ndim != 2:
            return False
    return bool(readers)


@_converts("Flatten")
def _flatten(imp, node):
    from pynn import layers

    x = imp.activation(node)
    rank = len(x.perm)
    axis = _attrs(node).get("axis", 1) % max(rank, 1)
    if axis != 1 or x.batch_axis != 0:
        if axis == 0 or x.batch_axis != 0:
            raise imp.refuse(node, f"axis={axis} folds the batch axis into others")
        shape = _static(imp, node, x.shape[1:], "Flatten")
        x = imp.plain(x, node)
        target = (math.prod(shape[:axis - 1]), math.prod(shape[axis - 1:]))
        return imp.wrap(_layer(imp, layers.Reshape(target), x.tensor, node=node))
    return _flatten_value(imp, node, x)


def _flatten_value(imp, node, x):
    """(N, ...) -> (N, features) in ONNX's order."""
    from pynn import layers

    rank = len(x.perm)
    if rank == 2:
        return imp.plain(x, node)
    if x.perm != _identity(rank) and _feeds_only_constant_matmuls(imp, node.output[0]):
        # Fold the layout into the weights' rows: no transpose runs per call.
        pshape = _static(imp, node, x.tensor.shape[1:], "Flatten")
        idx = np.arange(math.prod(pshape)).reshape([1] + pshape)
        rows = np.transpose(idx, x.perm).reshape(-1)
        y = _layer(imp, layers.Flatten(), x.tensor, node=node)
        return _Value(y, None, rows)
    x = imp.plain(x, node)
    return imp.wrap(_layer(imp, layers.Flatten(), x.tensor, node=node))


@_converts("Squeeze")
def _squeeze(imp, node):
    x = imp.activation(node)
    axes = _axes(imp, node, _attrs(node), 1)
    shape = x.shape
    axes = [j for j, d in enumerate(shape) if d == 1] if axes is None else \
        sorted({a % len(shape) for a in axes})
    if x.batch_axis in axes:
        raise imp.refuse(node, "squeezes the batch axis")
    if any(shape[j] != 1 for j in axes):
        raise imp.refuse(node, f"axes {axes} of shape {shape} are not all 1")
    if not axes:
        return x
    y = x.tensor
    for p in sorted((x.perm[j] for j in axes), reverse=True):  # one int axis per op node
        y = _ops().squeeze(y, axis=p)
    kept = [p for j, p in enumerate(x.perm) if j not in axes]
    return imp.wrap(y, [sorted(kept).index(p) for p in kept])


@_converts("Unsqueeze")
def _unsqueeze(imp, node):
    x = imp.activation(node)
    axes = _axes(imp, node, _attrs(node), 1)
    rank = len(x.perm) + len(axes)
    axes = sorted({a % rank for a in axes})
    y = x.tensor
    for _ in axes:
        y = _ops().expand_dims(y, -1)
    old = iter(x.perm)
    new = iter(range(len(x.perm), rank))
    return imp.wrap(y, [next(new) if j in axes else next(old) for j in range(rank)])


@_converts("Concat")
def _concat(imp, node):
    from pynn import layers

    vals = [imp.get(i) for i in node.input]
    if not all(isinstance(v, _Value) for v in vals):
        raise imp.refuse(node, "concatenates constants with the model's data")
    first = vals[0]
    axis = _attrs(node)["axis"] % len(first.perm)
    if axis == first.batch_axis:
        raise imp.refuse(node, "concatenates along the batch axis")
    xs = [imp.layout(v, first.perm, node) for v in vals]
    y = _layer(imp, layers.Concatenate(axis=first.perm[axis]), [v.tensor for v in xs],
               node=node)
    return imp.wrap(y, first.perm)


@_converts("Slice")
def _slice(imp, node):
    x = imp.activation(node)
    y = x
    for a, b, e, s in _slice_args(imp, node, len(x.perm)):
        n = x.shape[a]
        if a == x.batch_axis:
            if (b, s) == (0, 1) and e >= _INT_BIG // 4:
                continue
            raise imp.refuse(node, "slices the batch axis")
        if n is None:
            raise imp.refuse(node, f"slices axis {a} of unknown size")
        idx = np.arange(n)[slice(b, e, s)]
        if idx.size == n and s == 1:
            continue
        t = _ops().take(y.tensor, idx.astype(np.int64), axis=x.perm[a])
        y = imp.wrap(t, y.perm)
    return y


@_converts("Gather")
def _gather(imp, node):
    from pynn import layers

    data, idx = imp.get(node.input[0]), imp.get(node.input[1])
    axis = _attrs(node).get("axis", 0)
    if not isinstance(data, _Value):
        # A constant table read by the model's ids: an Embedding.
        if axis != 0 or data.ndim != 2:
            raise imp.refuse(node, f"a constant table is read as an Embedding (axis 0 of a "
                                   f"2-D table), got axis {axis} of shape {data.shape}")
        if not np.issubdtype(np.dtype(idx.tensor.dtype), np.integer):
            raise imp.refuse(node, f"indices are {idx.tensor.dtype}, Embedding reads ints")
        idx = imp.plain(idx, node)
        emb = layers.Embedding(data.shape[0], data.shape[1])
        return imp.wrap(_layer(imp, emb, idx.tensor, [data], node))
    if isinstance(idx, _Value):
        raise imp.refuse(node, "gathers the model's data at indices from the model's data")
    axis %= len(data.perm)
    if axis == data.batch_axis:
        raise imp.refuse(node, "gathers along the batch axis")
    n = data.shape[axis]
    idx = np.asarray(idx, dtype=np.int64)
    idx = np.where(idx < 0, idx + (n or 0), idx)
    t = _ops().take(data.tensor, idx.reshape(-1), axis=data.perm[axis])
    y = imp.wrap(t, data.perm)
    if idx.ndim == 1:
        return y
    if idx.ndim == 0:
        return _squeeze_axis(imp, node, y, axis)
    raise imp.refuse(node, f"indices of rank {idx.ndim} on the model's data")


def _squeeze_axis(imp, node, x, axis):
    y = _ops().squeeze(x.tensor, axis=x.perm[axis])
    kept = [p for j, p in enumerate(x.perm) if j != axis]
    return imp.wrap(y, [sorted(kept).index(p) for p in kept])


@_converts("Pad")
def _pad(imp, node):
    attrs = _check_attrs(imp, node, {"mode": ("constant", "reflect", "edge"), "pads": None,
                                     "value": None})
    x = imp.float_activation(node)
    rank = len(x.perm)
    if imp.opset < 11:
        pads, value = attrs["pads"], attrs.get("value", 0.0)
    else:
        pads = imp.const(node, 1).reshape(-1)
        value = imp.const(node, 2, default=np.zeros(()), required=False)
        value = _scalar(imp, node, value, "the pad value")
        axes = imp.const(node, 3, required=False)
        if axes is not None:
            full = [0] * (2 * rank)
            for k, a in enumerate(int(a) % rank for a in axes.reshape(-1)):
                full[a], full[rank + a] = int(pads[k]), int(pads[len(axes.reshape(-1)) + k])
            pads = full
    pads = [int(p) for p in pads]
    if len(pads) != 2 * rank or min(pads) < 0:
        raise imp.refuse(node, f"pads {pads} (negative pads crop: not supported)")
    width = [[0, 0] for _ in range(rank)]
    for j in range(rank):
        width[x.perm[j]] = [pads[j], pads[rank + j]]
    if width[0] != [0, 0]:
        raise imp.refuse(node, "pads the batch axis")
    mode = attrs.get("mode", "constant")
    kwargs = {"constant_values": float(value)} if mode == "constant" else {}
    return imp.wrap(_ops().pad(x.tensor, width, mode=mode, **kwargs), x.perm)


# -- converters: elementwise -----------------------------------------------------------------
_MERGES = {"Add": "Add", "Sub": "Subtract", "Mul": "Multiply"}
_BINARY_OPS = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide",
               "Pow": "power"}


@_converts("Add", "Sub", "Mul", "Div", "Pow")
def _binary(imp, node):
    from pynn import layers

    a, b = imp.get(node.input[0]), imp.get(node.input[1])
    fn = getattr(_ops(), _BINARY_OPS[node.op_type])
    if isinstance(a, _Value) and isinstance(b, _Value):
        a, b = imp.float_activation(node, 0), imp.float_activation(node, 1)
        if len(a.perm) != len(b.perm):
            raise imp.refuse(node, f"operands of ranks {len(a.perm)} and {len(b.perm)}")
        b = imp.layout(b, a.perm, node)
        if a.tensor.shape == b.tensor.shape and node.op_type in _MERGES:
            merge = getattr(layers, _MERGES[node.op_type])()
            return imp.wrap(_layer(imp, merge, [a.tensor, b.tensor], node=node), a.perm)
        return imp.wrap(fn(a.tensor, b.tensor), a.perm)
    first = isinstance(a, _Value)
    x = imp.float_activation(node, 0 if first else 1)
    c = imp.const(node, 1 if first else 0)
    c = _float(imp.to_pynn_const(c, x, node))
    c = float(c.reshape(())) if c.size == 1 else c
    if node.op_type == "Pow" and first and isinstance(c, float) and c == 2.0:
        return imp.wrap(_ops().square(x.tensor), x.perm)
    if node.op_type == "Pow" and first and isinstance(c, float) and c == 0.5:
        return imp.wrap(_ops().sqrt(x.tensor), x.perm)
    return imp.wrap(fn(x.tensor, c) if first else fn(c, x.tensor), x.perm)


_VARIADIC_OPS = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}


@_converts("Sum", "Max", "Min", "Mean")
def _variadic(imp, node):
    from pynn import layers

    vals = [imp.get(i) for i in node.input]
    acts = [k for k, v in enumerate(vals) if isinstance(v, _Value)]
    first = imp.float_activation(node, acts[0])
    if len(vals) == 1:
        return first
    xs = [imp.layout(imp.float_activation(node, k), first.perm, node) for k in acts]
    if len(xs) == len(vals) and all(x.tensor.shape == first.tensor.shape for x in xs):
        merge = {"Sum": layers.Add, "Max": layers.Maximum, "Min": layers.Minimum,
                 "Mean": layers.Average}[node.op_type]()
        return imp.wrap(_layer(imp, merge, [x.tensor for x in xs], node=node), first.perm)
    # Broadcasting, or constants among the operands: the elementwise ops, pairwise.
    if any(len(x.perm) != len(first.perm) for x in xs):
        raise imp.refuse(node, "operands of different ranks")
    fn = getattr(_ops(), _VARIADIC_OPS[node.op_type])
    y = xs[0].tensor
    for x in xs[1:]:
        y = fn(y, x.tensor)
    for k, v in enumerate(vals):
        if k not in acts:
            c = _float(imp.to_pynn_const(imp.const(node, k), first, node))
            y = fn(y, float(c.reshape(())) if c.size == 1 else c)
    if node.op_type == "Mean":
        y = _ops().multiply(y, 1.0 / len(vals))
    return imp.wrap(y, first.perm)


_UNARY_OPS = {"Neg": "negative", "Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Abs": "abs",
              "Reciprocal": "reciprocal", "Erf": "erf", "Floor": "floor", "Ceil": "ceil",
              "Sin": "sin", "Cos": "cos", "Sign": "sign"}


@_converts(*_UNARY_OPS)
def _unary(imp, node):
    x = imp.float_activation(node)
    if node.op_type == "Erf":
        gelu = _match_erf_gelu(imp, node, x)
        if gelu is not None:
            return gelu
    return imp.wrap(getattr(_ops(), _UNARY_OPS[node.op_type])(x.tensor), x.perm)


@_converts("Det")
def _det(imp, node):
    """linalg's det over the last two axes (pynn exports its det op nodes as Det)."""
    x = imp.plain(imp.float_activation(node), node)
    if len(x.perm) < 3:
        raise imp.refuse(node, f"Det of a rank-{len(x.perm)} tensor: pynn's tensors keep a "
                               f"batch axis before the matrices")
    y = _ops().det(x.tensor)
    return imp.wrap(y, _identity(len(x.perm) - 2))


def _const_near(imp, name, value):
    v = imp.get(name)
    return not isinstance(v, _Value) and v.dtype != object and v.size == 1 and \
        abs(float(v.reshape(())) - value) <= 1e-6 * abs(value)


def _other_input(node, name):
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1 - ins.index(name)]


def _match_erf_gelu(imp, node, x):
    """torch's exact GELU (and pynn's exported one): x * 0.5 * (1 + erf(x / sqrt 2)), in
    either order of the products, as one GELU activation."""
    from pynn import layers

    scaled = imp.producer.get(node.input[0])
    if scaled is None or len(scaled.input) != 2:
        return None
    src = scaled.input[0]
    if not ((scaled.op_type == "Div" and _const_near(imp, scaled.input[1], math.sqrt(2.0)))
            or (scaled.op_type == "Mul" and _const_near(imp, scaled.input[1],
                                                        1 / math.sqrt(2.0)))):
        return None
    add = imp.sole_consumer(node.output[0])
    if add is None or add.op_type != "Add" or not _const_near(
            imp, _other_input(add, node.output[0]) or "", 1.0):
        return None
    mul = imp.sole_consumer(add.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    other = _other_input(mul, add.output[0])
    fused = [add, mul]
    if other == src:  # torch: (x * (1 + erf)) * 0.5
        last = imp.sole_consumer(mul.output[0])
        if last is None or last.op_type != "Mul" or not _const_near(
                imp, _other_input(last, mul.output[0]) or "", 0.5):
            return None
        fused.append(last)
    else:  # pynn's export: (x * 0.5) * (1 + erf)
        half = imp.producer.get(other)
        if half is None or half.op_type != "Mul" or _other_input(half, src) is None or \
                not _const_near(imp, _other_input(half, src), 0.5):
            return None
    x = imp.get(src)
    if not isinstance(x, _Value):
        return None
    y = imp.wrap(_layer(imp, layers.Activation("gelu"), x.tensor, node=node), x.perm)
    for n in fused:
        imp.skipped.add(id(n))
    imp.values[fused[-1].output[0]] = y
    return y


_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
                "Softsign": "softsign", "HardSwish": "hard_silu"}


@_converts(*_ACTIVATIONS, "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Gelu", "Celu")
def _activation_op(imp, node):
    from pynn import layers

    x = imp.float_activation(node)
    attrs = _attrs(node)
    op = node.op_type
    if op in _ACTIVATIONS:
        layer = layers.Activation(_ACTIVATIONS[op])
    elif op == "LeakyRelu":
        layer = layers.LeakyReLU(negative_slope=attrs.get("alpha", 0.01))
    elif op == "Elu":
        layer = layers.ELU(alpha=attrs.get("alpha", 1.0))
    elif op == "Selu":
        alpha, gamma = attrs.get("alpha", _SELU_ALPHA), attrs.get("gamma", _SELU_GAMMA)
        if abs(alpha - _SELU_ALPHA) > 1e-6 or abs(gamma - _SELU_GAMMA) > 1e-6:
            raise imp.refuse(node, f"alpha={alpha}, gamma={gamma}: pynn's selu has the "
                                   f"standard constants only")
        layer = layers.Activation("selu")
    elif op == "HardSigmoid":
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        if abs(alpha - 1 / 6) <= 1e-7 and beta == 0.5:
            layer = layers.Activation("hard_sigmoid")
        else:
            o = _ops()
            y = o.clip(o.add(o.multiply(x.tensor, float(alpha)), float(beta)), 0.0, 1.0)
            return imp.wrap(y, x.perm)
    elif op == "Gelu":
        approximate = attrs.get("approximate", "none")
        if approximate == "tanh":
            return imp.wrap(_ops().gelu(x.tensor, approximate=True), x.perm)
        layer = layers.Activation("gelu")
    else:  # Celu
        return imp.wrap(_ops().celu(x.tensor, alpha=attrs.get("alpha", 1.0)), x.perm)
    return imp.wrap(_layer(imp, layer, x.tensor, node=node), x.perm)


@_converts("PRelu")
def _prelu(imp, node):
    from pynn import layers

    x = imp.float_activation(node)
    slope = imp.to_pynn_const(_float(imp.const(node, 1)), x, node)[0]
    shape = x.tensor.shape[1:]
    shared = [k + 1 for k, (d, s) in enumerate(zip(shape, slope.shape)) if s == 1 and d != 1]
    full = np.broadcast_to(slope, [1 if k + 1 in shared else d
                                   for k, d in enumerate(shape)])
    layer = layers.PReLU(shared_axes=shared or None)
    return imp.wrap(_layer(imp, layer, x.tensor, [full], node), x.perm)


@_converts("Clip")
def _clip(imp, node):
    from pynn import layers

    x = imp.float_activation(node)
    attrs = _attrs(node)
    if imp.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo = imp.const(node, 1, required=False)
        hi = imp.const(node, 2, required=False)
        lo = None if lo is None else _scalar(imp, node, lo, "min")
        hi = None if hi is None else _scalar(imp, node, hi, "max")
    if lo == 0.0 and hi == 6.0:
        layer = layers.Activation("relu6")
    elif lo == 0.0:
        layer = layers.ReLU(max_value=hi)
    else:
        lo = _FLOAT32_MIN if lo is None else lo
        hi = -_FLOAT32_MIN if hi is None else hi
        return imp.wrap(_ops().clip(x.tensor, float(lo), float(hi)), x.perm)
    return imp.wrap(_layer(imp, layer, x.tensor, node=node), x.perm)


@_converts("Softmax", "LogSoftmax")
def _softmax(imp, node):
    from pynn import layers

    x = imp.float_activation(node)
    rank = len(x.perm)
    axis = _attrs(node).get("axis", -1 if imp.opset >= 13 else 1) % rank
    if imp.opset < 13 and axis != rank - 1:
        raise imp.refuse(node, f"opset {imp.opset}'s softmax over the flattened axes "
                               f"{axis}.. is supported on the last axis only")
    if axis == x.batch_axis:
        raise imp.refuse(node, "normalizes over the batch axis")
    if node.op_type == "Softmax":
        y = _layer(imp, layers.Softmax(axis=x.perm[axis]), x.tensor, node=node)
    else:
        y = _ops().log_softmax(x.tensor, axis=x.perm[axis])
    return imp.wrap(y, x.perm)


_REDUCERS = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}


@_converts("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(imp, node):
    x = imp.float_activation(node)
    attrs = _attrs(node)
    axes = _axes(imp, node, attrs, 1) if (node.op_type == "ReduceSum" and imp.opset >= 13) \
        or imp.opset >= 18 else attrs.get("axes")
    rank = len(x.perm)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        raise imp.refuse(node, "reduces over every axis, the batch axis included")
    axes = sorted({int(a) % rank for a in axes})
    if x.batch_axis in axes:
        raise imp.refuse(node, "reduces over the batch axis")
    keep = bool(attrs.get("keepdims", 1))
    paxes = tuple(x.perm[a] for a in axes)
    if sorted(paxes) == list(range(1, rank - 1)) and 3 <= rank <= 5 and node.op_type in (
            "ReduceMean", "ReduceMax"):
        # Over every step or pixel, channels kept: the global pooling layer (a Keras layer,
        # so the model also saves as .keras).
        from pynn import layers

        kind = "Average" if node.op_type == "ReduceMean" else "Max"
        cls = getattr(layers, f"Global{kind}Pooling{rank - 2}D")
        y = _layer(imp, cls(keepdims=keep), x.tensor, node=node)
    else:
        y = getattr(_ops(), _REDUCERS[node.op_type])(x.tensor, axis=paxes, keepdims=keep)
    if keep:
        return imp.wrap(y, x.perm)
    kept = [p for j, p in enumerate(x.perm) if j not in axes]
    return imp.wrap(y, [sorted(kept).index(p) for p in kept])


# -- converters: weighted layers ---------------------------------------------------------------
def _dense(imp, node, x, kernel, bias):
    """Dense on ``x``'s last ONNX axis; a folded Flatten's rows permute the kernel."""
    from pynn import layers

    kernel = _float(kernel)
    if x.rows is not None:
        folded = np.empty_like(kernel)
        folded[x.rows] = kernel
        kernel = folded
    elif x.perm[-1] != len(x.perm) - 1:
        x = imp.plain(x, node)
    if x.rows is None and len(x.perm) > 2 and x.perm != _identity(len(x.perm)):
        x = imp.plain(x, node)
    if kernel.shape[0] != x.tensor.shape[-1]:
        raise imp.refuse(node, f"weights of shape {kernel.shape} on features of size "
                               f"{x.tensor.shape[-1]}")
    units = kernel.shape[1]
    layer = layers.Dense(units, use_bias=bias is not None)
    weights = [kernel] + ([np.broadcast_to(_float(bias).reshape(-1), (units,))]
                          if bias is not None else [])
    y = _layer(imp, layer, x.tensor, weights, node)
    return imp.wrap(y, x.perm if x.rows is None else None)


def _bias_of_sole_add(imp, out_name, units):
    """A constant (units,) added to ``out_name`` by its only reader: that Add, to fold into
    the layer's bias (None when there is none)."""
    add = imp.sole_consumer(out_name)
    if add is None or add.op_type != "Add":
        return None, None
    other = _other_input(add, out_name)
    if other is None:
        return None, None
    c = imp.get(other)
    if isinstance(c, _Value) or c.dtype == object or c.size != units or \
            c.ndim > 1 and any(d != 1 for d in c.shape[:-1]) or c.shape[-1:] != (units,):
        return None, None
    return add, c.reshape(units)


@_converts("Gemm")
def _gemm(imp, node):
    attrs = _check_attrs(imp, node, {"alpha": None, "beta": None, "transA": (0,),
                                     "transB": None})
    x = imp.float_activation(node)
    if len(x.perm) != 2 or x.batch_axis != 0:
        raise imp.refuse(node, f"reads a rank-{len(x.perm)} tensor with the batch on axis "
                               f"{x.batch_axis}")
    w = imp.get(node.input[1])
    if isinstance(w, _Value):
        raise imp.refuse(node, "B depends on the model's data; pynn maps Gemm with constant "
                               "weights to Dense")
    w = _float(w)
    if attrs.get("transB", 0):
        w = w.T
    w = w * np.float32(attrs.get("alpha", 1.0))
    c = imp.const(node, 2, required=False)
    units = w.shape[1]
    if c is not None:
        c = _float(c) * np.float32(attrs.get("beta", 1.0))
        if c.size not in (1, units) or (c.ndim == 2 and c.shape[0] != 1):
            raise imp.refuse(node, f"C of shape {c.shape} varies along the batch; pynn's "
                                   f"Dense takes a bias of ({units},)")
        c = np.broadcast_to(c.reshape(-1), (units,))
    return _dense(imp, node, x, w, c)


@_converts("MatMul")
def _matmul(imp, node):
    a, b = imp.get(node.input[0]), imp.get(node.input[1])
    if isinstance(a, _Value) and not isinstance(b, _Value) and b.ndim == 2:
        x = imp.float_activation(node)
        if x.perm[-1] == 0 and x.rows is None:
            raise imp.refuse(node, "multiplies along the batch axis")
        add, bias = _bias_of_sole_add(imp, node.output[0], b.shape[1])
        y = _dense(imp, node, x, b, bias)
        if add is not None:
            imp.skipped.add(id(add))
            imp.values[add.output[0]] = y
        return y
    if isinstance(a, _Value) and isinstance(b, _Value):
        a, b = imp.float_activation(node, 0), imp.float_activation(node, 1)
        if len(a.perm) != len(b.perm) or len(a.perm) < 3:
            raise imp.refuse(node, "multiplies tensors of different ranks or without batch")
        a, b = imp.plain(a, node), imp.plain(b, node)
        return imp.wrap(_ops().matmul(a.tensor, b.tensor))
    if not isinstance(a, _Value) and isinstance(b, _Value) and a.ndim == 2:
        # W @ x over x's second-to-last axis: x transposed, Dense, transposed back.
        x = imp.float_activation(node, 1)
        rank = len(x.perm)
        t = list(range(rank))
        t[-1], t[-2] = t[-2], t[-1]
        xt = _Value(x.tensor, [x.perm[i] for i in t])
        y = _dense(imp, node, xt, _float(a).T, None)
        return _Value(y.tensor, [y.perm[i] for i in t])
    raise imp.refuse(node, "a constant operand must be 2-D (a Dense kernel)")


def _spatial_attrs(imp, node, attrs, kernel):
    n = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * n))]
    return strides, dilations, pads


def _same_pads(sizes, kernel, strides, dilations, upper=True):
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _window_padding(imp, node, x, attrs, kernel, strides, dilations, pads):
    """The pynn padding ('valid' or 'same') and any explicit pads left to apply first."""
    auto = attrs.get("auto_pad", "NOTSET")
    n = len(kernel)
    sizes = x.shape[2:]
    if auto == "VALID":
        return "valid", [0] * (2 * n)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        sizes = _static(imp, node, sizes, "auto_pad")
        pads = _same_pads(sizes, kernel, strides, dilations, auto == "SAME_UPPER")
    elif auto != "NOTSET":
        raise imp.refuse(node, f"auto_pad={auto!r}")
    if not any(pads):
        return "valid", pads
    if None not in sizes and pads == _same_pads(sizes, kernel, strides, dilations):
        return "same", [0] * (2 * n)
    return "valid", pads


def _explicit_pads(imp, node, x, pads, value=0.0):
    """``x`` (channels-first ONNX layout) padded by ONNX ``pads`` with ``value``."""
    from pynn import layers

    n = len(pads) // 2
    if min(pads) < 0:
        raise imp.refuse(node, f"negative pads {pads}")
    pairs = tuple((pads[i], pads[n + i]) for i in range(n))
    if value == 0.0 and n in (1, 2, 3):
        cls = {1: layers.ZeroPadding1D, 2: layers.ZeroPadding2D, 3: layers.ZeroPadding3D}[n]
        y = _layer(imp, cls(pairs if n > 1 else pairs[0]), x.tensor, node=node)
    else:
        width = [[0, 0]] + [list(p) for p in pairs] + [[0, 0]]
        y = _ops().pad(x.tensor, width, constant_values=value)
    return imp.wrap(y, x.perm)


@_converts("Conv")
def _conv(imp, node):
    from pynn import layers

    attrs = _check_attrs(imp, node, {"auto_pad": None, "dilations": None, "group": None,
                                     "kernel_shape": None, "pads": None, "strides": None})
    x = imp.float_activation(node)
    w = _float(imp.const(node, 1))
    bias = imp.const(node, 2, required=False)
    n = w.ndim - 2
    if n not in (1, 2, 3) or len(x.perm) != n + 2:
        raise imp.refuse(node, f"weights of rank {w.ndim} on a rank-{len(x.perm)} input")
    x = imp.layout(x, _channels_first(n + 2), node)
    kernel = list(w.shape[2:])
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != kernel:
        raise imp.refuse(node, f"kernel_shape {attrs['kernel_shape']} differs from the "
                               f"weights' {kernel}")
    strides, dilations, pads = _spatial_attrs(imp, node, attrs, kernel)
    padding, pads = _window_padding(imp, node, x, attrs, kernel, strides, dilations, pads)
    if any(pads):
        x = _explicit_pads(imp, node, x, pads)
    group = int(attrs.get("group", 1))
    filters, per_group = w.shape[0], w.shape[1]
    channels = per_group * group
    if x.shape[1] != channels:
        raise imp.refuse(node, f"weights for {channels} channels on {x.shape[1]}")
    common = {"strides": tuple(strides), "padding": padding,
              "dilation_rate": tuple(dilations), "use_bias": bias is not None}
    weights = [None] + ([_float(bias)] if bias is not None else [])
    to_keras = tuple(range(2, n + 2)) + (1, 0)
    if n == 2 and group == channels and group > 1:
        mult = filters // channels
        layer = layers.DepthwiseConv2D(tuple(kernel), depth_multiplier=mult, **common)
        # ONNX output channel c*mult + m -> Keras's (kh, kw, c, m)
        weights[0] = w[:, 0].transpose(1, 2, 0).reshape(kernel[0], kernel[1], channels, mult)
    else:
        cls = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[n]
        if n == 1:
            common = {k: (v[0] if isinstance(v, tuple) else v) for k, v in common.items()}
        kwargs = {"groups": group} if group > 1 else {}
        layer = cls(filters, tuple(kernel) if n > 1 else kernel[0], **common, **kwargs)
        weights[0] = w.transpose(to_keras)
    return imp.wrap(_layer(imp, layer, x.tensor, weights, node), x.perm)


@_converts("ConvTranspose")
def _conv_transpose(imp, node):
    from pynn import layers
    from pynn.backend.operands.conv import conv_transpose_output_size

    attrs = _check_attrs(imp, node, {"auto_pad": ("NOTSET",), "dilations": None,
                                     "group": (1,), "kernel_shape": None, "pads": None,
                                     "strides": None, "output_padding": None})
    x = imp.float_activation(node)
    w = _float(imp.const(node, 1))  # (C, F, k...)
    bias = imp.const(node, 2, required=False)
    n = w.ndim - 2
    if n not in (1, 2, 3) or len(x.perm) != n + 2:
        raise imp.refuse(node, f"weights of rank {w.ndim} on a rank-{len(x.perm)} input")
    x = imp.layout(x, _channels_first(n + 2), node)
    kernel = list(w.shape[2:])
    strides, dilations, pads = _spatial_attrs(imp, node, attrs, kernel)
    extra = [int(p) for p in attrs.get("output_padding", [0] * n)]
    sizes = _static(imp, node, x.shape[2:], "ConvTranspose")
    want = [s * (i - 1) + e + (k - 1) * d + 1 - pb - pe for i, k, s, d, e, pb, pe in
            zip(sizes, kernel, strides, dilations, extra, pads[:n], pads[n:])]
    # The pynn padding/output_padding whose crop and size are ONNX's, if any; else the
    # full ('valid') output cropped by a Cropping layer.
    choice, crops = None, None
    for padding, op in [("valid", None), ("same", None)] + [
            (p, o) for p in ("valid", "same") for o in range(max(strides))]:
        try:
            sized = [conv_transpose_output_size(i, k, s, d, padding, op) for i, k, s, d in
                     zip(sizes, kernel, strides, dilations)]
        except ValueError:
            continue
        if op is not None and op >= min(strides):
            continue
        if all(c == pb and out == o for (c, _, out), pb, o in zip(sized, pads[:n], want)):
            choice = (padding, op)
            break
    if choice is None:
        sized = [conv_transpose_output_size(i, k, s, d, "valid", None) for i, k, s, d in
                 zip(sizes, kernel, strides, dilations)]
        if all(c == 0 and out == full for c, full, out in sized) and all(
                e <= pe for e, pe in zip(extra, pads[n:])):
            choice = ("valid", None)
            crops = [(pb, pe - e) for pb, pe, e in zip(pads[:n], pads[n:], extra)]
    if choice is None:
        raise imp.refuse(node, f"pads {pads} with output_padding {extra}: no pynn "
                               f"Conv{n}DTranspose padding gives ONNX's output size {want}")
    padding, op = choice
    cls = {1: layers.Conv1DTranspose, 2: layers.Conv2DTranspose, 3: layers.Conv3DTranspose}[n]
    one = (lambda v: v) if n > 1 else (lambda v: v[0])
    layer = cls(w.shape[1], one(tuple(kernel)), strides=one(tuple(strides)), padding=padding,
                output_padding=None if op is None else one((op,) * n),
                dilation_rate=one(tuple(dilations)), use_bias=bias is not None)
    weights = [w.transpose(tuple(range(2, n + 2)) + (1, 0))]
    weights += [_float(bias)] if bias is not None else []
    y = _layer(imp, layer, x.tensor, weights, node)
    if crops and any(a or b for a, b in crops):
        crop = {1: lambda: layers.Cropping1D(crops[0]), 2: lambda: layers.Cropping2D(tuple(crops)),
                3: lambda: layers.Cropping3D(tuple(crops))}[n]()
        y = _layer(imp, crop, y, node=node)
    return imp.wrap(y, x.perm)


@_converts("MaxPool", "AveragePool")
def _pool(imp, node):
    from pynn import layers

    attrs = _check_attrs(imp, node, {"auto_pad": None, "ceil_mode": None, "dilations": None,
                                     "kernel_shape": None, "pads": None, "strides": None,
                                     "storage_order": (0,), "count_include_pad": None})
    if len(node.output) > 1 and node.output[1]:
        raise imp.refuse(node, "its Indices output is read")
    x = imp.float_activation(node)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    n = len(kernel)
    if n not in (1, 2, 3) or len(x.perm) != n + 2:
        raise imp.refuse(node, f"a {n}-D window on a rank-{len(x.perm)} input")
    if any(d != 1 for d in attrs.get("dilations", [1] * n)):
        raise imp.refuse(node, f"dilations {attrs['dilations']}: pynn pools without dilation")
    x = imp.layout(x, _channels_first(n + 2), node)
    strides, dilations, pads = _spatial_attrs(imp, node, attrs, kernel)
    is_max = node.op_type == "MaxPool"
    padding, pads = _window_padding(imp, node, x, attrs, kernel, strides, dilations, pads)
    if padding == "same" and not is_max and attrs.get("count_include_pad", 0):
        # Keras's 'same' average leaves the padding out; ONNX counts it here: pad zeros.
        padding = "valid"
        sizes = _static(imp, node, x.shape[2:], "AveragePool")
        pads = _same_pads(sizes, kernel, strides, dilations)
    if attrs.get("ceil_mode", 0):
        sizes = _static(imp, node, x.shape[2:], "ceil_mode")
        if padding == "same":
            raise imp.refuse(node, "ceil_mode with 'same' pads")
        for i in range(n):
            span = sizes[i] + pads[i] + pads[n + i] - kernel[i]
            # ceil's extra window counts only if it starts inside the input or the begin pad
            if span % strides[i] and (span // strides[i] + 1) * strides[i] < sizes[i] + pads[i]:
                # ceil keeps a last window that starts inside the padded input.
                if not is_max:
                    raise imp.refuse(node, "ceil_mode=1 that adds a partial window")
                pads[n + i] += strides[i] - span % strides[i]
    if any(pads):
        if not is_max and not attrs.get("count_include_pad", 0):
            raise imp.refuse(node, f"pads {pads} with count_include_pad=0 other than "
                                   f"Keras's 'same' ones")
        x = _explicit_pads(imp, node, x, pads, _FLOAT32_MIN if is_max else 0.0)
    kind = "Max" if is_max else "Average"
    cls = getattr(layers, f"{kind}Pooling{n}D")
    one = (lambda v: tuple(v)) if n > 1 else (lambda v: v[0])
    layer = cls(one(kernel), strides=one(strides), padding=padding)
    return imp.wrap(_layer(imp, layer, x.tensor, node=node), x.perm)


@_converts("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, node):
    x = imp.float_activation(node)
    rank = len(x.perm)
    if x.batch_axis != 0 or rank < 3:
        raise imp.refuse(node, f"a rank-{rank} input with the batch on axis {x.batch_axis}")
    paxes = tuple(x.perm[a] for a in range(2, rank))
    fn = _ops().mean if node.op_type == "GlobalAveragePool" else _ops().max
    if x.perm == _channels_first(rank):
        from pynn import layers

        kind = "Average" if node.op_type == "GlobalAveragePool" else "Max"
        if rank in (3, 4, 5):
            cls = getattr(layers, f"Global{kind}Pooling{rank - 2}D")
            y = _layer(imp, cls(keepdims=True), x.tensor, node=node)
            return imp.wrap(y, x.perm)
    return imp.wrap(fn(x.tensor, axis=paxes, keepdims=True), x.perm)


# -- converters: normalization ---------------------------------------------------------------
@_converts("BatchNormalization")
def _batch_norm(imp, node):
    from pynn import layers

    attrs = _check_attrs(imp, node, {"epsilon": None, "momentum": None, "spatial": (1,),
                                     "training_mode": (0,), "is_test": (1,)})
    if len(node.output) > 1 and any(node.output[1:]):
        raise imp.refuse(node, "its training outputs (running statistics) are read")
    x = imp.float_activation(node)
    if len(x.perm) < 2 or x.batch_axis != 0:
        raise imp.refuse(node, "needs (N, C, ...) input")
    gamma, beta, mean, var = (_float(imp.const(node, k)) for k in range(1, 5))
    layer = layers.BatchNormalization(axis=x.perm[1], epsilon=attrs.get("epsilon", 1e-5),
                                      momentum=attrs.get("momentum", 0.9))
    return imp.wrap(_layer(imp, layer, x.tensor, [gamma, beta, mean, var], node), x.perm)


@_converts("InstanceNormalization")
def _instance_norm(imp, node):
    from pynn import layers

    attrs = _check_attrs(imp, node, {"epsilon": None})
    x = imp.float_activation(node)
    if len(x.perm) < 3 or x.batch_axis != 0:
        raise imp.refuse(node, "needs (N, C, ...) input")
    gamma, beta = _float(imp.const(node, 1)), _float(imp.const(node, 2))
    layer = layers.GroupNormalization(groups=gamma.size, axis=x.perm[1],
                                      epsilon=attrs.get("epsilon", 1e-5))
    return imp.wrap(_layer(imp, layer, x.tensor, [gamma, beta], node), x.perm)


@_converts("LayerNormalization")
def _layer_norm(imp, node):
    from pynn import layers

    attrs = _check_attrs(imp, node, {"axis": None, "epsilon": None, "stash_type": (1,)})
    if len(node.output) > 1 and any(node.output[1:]):
        raise imp.refuse(node, "its Mean / InvStdDev outputs are read")
    x = imp.float_activation(node)
    rank = len(x.perm)
    axis = attrs.get("axis", -1) % rank
    if axis <= x.batch_axis:
        raise imp.refuse(node, "normalizes over the batch axis")
    paxes = [x.perm[a] for a in range(axis, rank)]
    if paxes != list(range(rank - len(paxes), rank)):
        x = imp.plain(x, node)
        paxes = list(range(axis, rank))
    shape = x.tensor.shape[paxes[0]:]
    scale = np.broadcast_to(_float(imp.const(node, 1)), shape)
    bias = imp.const(node, 2, required=False)
    weights = [scale] + ([np.broadcast_to(_float(bias), shape)] if bias is not None else [])
    layer = layers.LayerNormalization(axis=paxes if len(paxes) > 1 else paxes[0],
                                      epsilon=attrs.get("epsilon", 1e-5),
                                      center=bias is not None)
    return imp.wrap(_layer(imp, layer, x.tensor, weights, node), x.perm)


# -- converters: resampling -------------------------------------------------------------------
@_converts("Resize", "Upsample")
def _resize(imp, node):
    from pynn import layers

    attrs = _attrs(node)
    x = imp.float_activation(node)
    rank = len(x.perm)
    if rank not in (3, 4, 5) or x.batch_axis != 0:
        raise imp.refuse(node, "pynn resizes (N, C, ...) data with 1 to 3 spatial axes only")
    mode = attrs.get("mode", "nearest")
    if node.op_type == "Upsample":
        scales = attrs.get("scales") if imp.opset < 9 else imp.const(node, 1)
    else:
        scales = imp.const(node, 2, required=False) if imp.opset >= 11 else imp.const(node, 1)
        sizes = None
        if imp.opset >= 11 and len(node.input) > 3 and node.input[3]:
            sizes = imp.get(node.input[3])
            if isinstance(sizes, _Value):
                raise imp.refuse(node, "its sizes depend on the model's data")
        if scales is None or np.asarray(scales).size == 0:
            if sizes is None:
                raise imp.refuse(node, "neither scales nor sizes")
            have = x.shape
            want = [have[j] if d is BATCH else int(d) for j, d in
                    enumerate(np.asarray(sizes).reshape(-1))]
            have = _static(imp, node, have[1:], "Resize to sizes")
            scales = [1.0] + [s / h for s, h in zip(want[1:], have)]
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != rank:
        raise imp.refuse(node, f"{len(scales)} scales for a rank-{rank} input")
    # The factors of pynn's axes: Resize acts on whatever layout the data has if its
    # channels stay last there; else the data goes channels-last (ONNX's axis 1) first.
    factors = [scales[x.perm.index(a)] for a in range(rank)]
    if factors[-1] != 1.0 and scales[1] == 1.0 and x.batch_axis == 0:
        x = imp.layout(x, _channels_first(rank), node)
        factors = [scales[x.perm.index(a)] for a in range(rank)]
    coord = attrs.get("coordinate_transformation_mode", "half_pixel" if
                      node.op_type == "Resize" and imp.opset >= 11 else "asymmetric")
    nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
    if factors[0] != 1.0 or factors[-1] != 1.0 or any(
            s != int(s) or s < 1 for s in factors[1:-1]):
        return _resize_to_size(imp, node, x, factors, mode, coord, nearest_mode, attrs)
    if mode == "nearest" and (coord == "asymmetric" and nearest_mode == "floor" or
                              coord in ("half_pixel", "pytorch_half_pixel") and nearest_mode
                              in ("round_prefer_floor", "round_prefer_ceil") or
                              node.op_type == "Upsample" or imp.opset < 11):
        interpolation = "nearest"  # whole factors: each pixel repeated
    elif mode in ("linear", "bilinear") and coord in ("half_pixel", "pytorch_half_pixel") \
            and node.op_type == "Resize" and rank == 4:
        interpolation = "bilinear"
    else:
        raise imp.refuse(node, f"mode={mode!r} with coordinate_transformation_mode={coord!r}"
                               f" and nearest_mode={nearest_mode!r}: pynn reads nearest "
                               f"(repeat) and linear with half_pixel centres")
    if attrs.get("exclude_outside", 0) or attrs.get("antialias", 0):
        raise imp.refuse(node, "exclude_outside / antialias")
    factors = tuple(int(s) for s in factors[1:-1])
    if rank == 4:
        layer = layers.UpSampling2D(factors, interpolation=interpolation)
    elif rank == 3:
        layer = layers.UpSampling1D(factors[0])
    else:
        layer = layers.UpSampling3D(factors)
    return imp.wrap(_layer(imp, layer, x.tensor, node=node), x.perm)


# -- converters: recurrent ---------------------------------------------------------------------
_ONNX_TO_KERAS_GATES = {"LSTM": [0, 2, 3, 1], "GRU": [0, 1, 2], "RNN": [0]}  # iofc -> ifco


def _regate(a, kind, units):
    """(gates*units, ...) rows from ONNX's gate order to Keras's."""
    return np.concatenate([a[g * units:(g + 1) * units] for g in _ONNX_TO_KERAS_GATES[kind]])


_RNN_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                 "RNN": ["Tanh"]}
# ONNX's recurrent activations (with their alpha, beta) that are pynn's named ones
_RNN_ACTIVATIONS = {("Sigmoid", None, None): "sigmoid", ("Tanh", None, None): "tanh",
                    ("Relu", None, None): "relu", ("Softsign", None, None): "softsign",
                    ("Softplus", None, None): "softplus", ("Affine", 1.0, 0.0): "linear",
                    ("Elu", 1.0, None): "elu", ("LeakyRelu", 0.2, None): "leaky_relu",
                    ("HardSigmoid", 1.0 / 6.0, 0.5): "hard_sigmoid"}
_TAKES_ALPHA = {"LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "ScaledTanh": None,
                "HardSigmoid": 0.2, "Elu": 1.0, "Affine": None}
_TAKES_BETA = {"ScaledTanh": None, "HardSigmoid": 0.5, "Affine": None}


def _rnn_activation_names(imp, node, attrs, kind, dirs):
    """pynn's names of the node's activations, one list per direction (alpha and beta are
    consumed in the order of the activations, as ONNX says)."""
    acts = attrs.get("activations") or _RNN_DEFAULTS[kind] * dirs
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    names = []
    for a in acts:
        alpha = (alphas.pop(0) if alphas else _TAKES_ALPHA[a]) if a in _TAKES_ALPHA else None
        beta = (betas.pop(0) if betas else _TAKES_BETA[a]) if a in _TAKES_BETA else None
        match = [v for (n, al, be), v in _RNN_ACTIVATIONS.items() if n == a and (
            al is None or alpha is not None and abs(alpha - al) < 1e-6) and (
            be is None or beta is not None and abs(beta - be) < 1e-6)]
        if not match:
            raise imp.refuse(node, f"activation {a} (alpha {alpha}, beta {beta}) has no pynn "
                                   f"name; pynn reads {sorted(set(_RNN_ACTIVATIONS.values()))}")
        names.append(match[0])
    per = len(_RNN_DEFAULTS[kind])
    if len(names) != per * dirs:
        raise imp.refuse(node, f"{len(names)} activations for {dirs} direction(s)")
    out = [names[d * per:(d + 1) * per] for d in range(dirs)]
    for d in out:
        if kind == "LSTM" and d[1] != d[2]:
            raise imp.refuse(node, f"cell activation {d[1]} differs from the output one "
                                   f"{d[2]}; pynn's LSTM uses one activation for both")
    return out


@_converts("LSTM", "GRU", "RNN")
def _recurrent(imp, node):
    from pynn import layers

    kind = node.op_type
    attrs = _check_attrs(imp, node, {"activations": None, "direction": None,
                                     "hidden_size": None, "layout": None,
                                     "linear_before_reset": None, "activation_alpha": None,
                                     "activation_beta": None})
    x = imp.float_activation(node)
    w, r = _float(imp.const(node, 1)), _float(imp.const(node, 2))
    b = imp.const(node, 3, required=False)
    if len(node.input) > 4 and node.input[4]:
        raise imp.refuse(node, "sequence_lens is not supported (pynn runs every step; mask "
                               "with a Masking layer instead)")
    for k, what in ((5, "initial_h"), (6, "initial_c"), (7, "P (peepholes)")):
        if len(node.input) > k and node.input[k]:
            v = imp.get(node.input[k])
            if isinstance(v, _Value) or np.any(v):
                raise imp.refuse(node, f"{what} other than zeros is not supported")
    direction = attrs.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    acts = _rnn_activation_names(imp, node, attrs, kind, dirs)
    units = int(attrs.get("hidden_size", r.shape[-1]))
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    if attrs.get("layout", 0):
        raise imp.refuse(node, "layout=1 (batch-major X and Y) is not supported; pynn reads "
                               "ONNX's default time-major layout=0")
    x = imp.layout(x, (1, 0, 2), node)  # ONNX (T, N, C) = pynn (N, T, C) transposed
    reset_after = bool(attrs.get("linear_before_reset", 0))
    if b is None:
        b = np.zeros((dirs, 2 * gates * units), np.float32)
    b = _float(b)
    used = [bool(o) and bool(imp.consumers.get(o)) for o in node.output]
    sequences = used[0]
    states = sequences and any(used[1:]) or len(used) > 2 and used[2]
    if states and dirs == 2:
        raise imp.refuse(node, "a bidirectional node whose final states are read with its "
                               "sequences (or its cell state) is not supported")

    def cell(d, backwards):
        kernel = _regate(w[d], kind, units).T
        recurrent = _regate(r[d], kind, units).T
        wb, rb = _regate(b[d, :gates * units], kind, units), _regate(
            b[d, gates * units:], kind, units)
        common = {"return_sequences": sequences, "go_backwards": backwards,
                  "return_state": states}
        names = acts[d]
        if kind == "LSTM":
            layer = layers.LSTM(units, activation=names[1], recurrent_activation=names[0],
                                unit_forget_bias=False, **common)
            weights = [kernel, recurrent, wb + rb]
        elif kind == "GRU":
            layer = layers.GRU(units, activation=names[1], recurrent_activation=names[0],
                               reset_after=reset_after, **common)
            weights = [kernel, recurrent, np.stack([wb, rb]) if reset_after else wb + rb]
        else:
            layer = layers.SimpleRNN(units, activation=names[0], **common)
            weights = [kernel, recurrent, wb + rb]
        return layer, weights

    finals = []
    if dirs == 1:
        layer, weights = cell(0, direction == "reverse")
        y = _layer(imp, layer, x.tensor, weights, node)
        if states:
            y, finals = y[0], y[1:]
        if sequences and direction == "reverse":
            # Keras's go_backwards gives the steps last-first; ONNX keeps them in place.
            y = _ops().flip(y, axis=1)
    else:
        forward, fw = cell(0, False)
        backward, bw = cell(1, True)
        layer = layers.Bidirectional(forward, backward_layer=backward)
        y = _layer(imp, layer, x.tensor, fw + bw, node)
    # final states: pynn (N, H) -> ONNX (1, N, H)
    finals = [imp.wrap(_ops().expand_dims(f, 1), (1, 0, 2)) for f in finals]
    if sequences:  # pynn (N, T, dirs*H) -> ONNX Y (T, dirs, N, H)
        y = _layer(imp, layers.Reshape((-1, dirs, units)), y, node=node)
        return (imp.wrap(y, (1, 2, 0, 3)), *(finals or [None, None]))
    if states:  # the cell state is read: Y_h and Y_c are the layer's states
        return (None, *finals)
    # pynn (N, dirs*H) -> ONNX Y_h (dirs, N, H)
    y = _layer(imp, layers.Reshape((dirs, units)), y, node=node)
    return None, imp.wrap(y, (1, 0, 2)), None


@_converts("Tile")
def _tile(imp, node):
    x = imp.activation(node)
    repeats = [int(r) for r in imp.const(node, 1).reshape(-1)]
    if len(repeats) != len(x.perm) or repeats[x.batch_axis] != 1 or min(repeats) < 1:
        raise imp.refuse(node, f"repeats {repeats}: pynn tiles the non-batch axes")
    prepeats = [1] * len(repeats)
    for j, r in enumerate(repeats):
        prepeats[x.perm[j]] = r
    return imp.wrap(_ops().tile(x.tensor, prepeats), x.perm)


@_converts("Split")
def _split(imp, node):
    x = imp.activation(node)
    attrs = _attrs(node)
    axis = attrs.get("axis", 0) % len(x.perm)
    if axis == x.batch_axis:
        raise imp.refuse(node, "splits the batch axis")
    n = x.shape[axis]
    if n is None:
        raise imp.refuse(node, f"splits axis {axis} of unknown size")
    if "split" in attrs:
        sizes = list(attrs["split"])
    elif len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in imp.const(node, 1).reshape(-1)]
    else:
        parts = attrs.get("num_outputs", len(node.output))
        step = -(-n // parts)
        sizes = [min(step, n - k * step) for k in range(parts)]
    if sum(sizes) != n or len(sizes) != len(node.output) or min(sizes) < 1:
        raise imp.refuse(node, f"sizes {sizes} for an axis of {n} into {len(node.output)}")
    starts = np.cumsum([0] + sizes)
    return tuple(imp.wrap(_ops().take(x.tensor, np.arange(a, b), axis=x.perm[axis]), x.perm)
                 for a, b in zip(starts[:-1], starts[1:]))


# -- converters: comparisons and selection (masks) ------------------------------------------------
_COMPARISONS = {"Equal": "equal", "Less": "less", "Greater": "greater",
                "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
                "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}


def _aligned_operands(imp, node, names):
    """The node's operands (activations and constants) in the pynn layout of its first
    activation: pynn tensors, constant arrays and Python scalars."""
    vals = [imp.get(n) for n in names]
    first = next(v for v in vals if isinstance(v, _Value))
    out = []
    for k, v in enumerate(vals):
        if isinstance(v, _Value):
            if len(v.perm) != len(first.perm):
                raise imp.refuse(node, f"operands of ranks {len(v.perm)} and "
                                       f"{len(first.perm)}")
            out.append(imp.layout(v, first.perm, node).tensor)
        else:
            c = imp.to_pynn_const(imp.const(node, k), first, node)
            out.append(c.reshape(()).item() if c.size == 1 else c)
    return first, out


@_converts(*_COMPARISONS)
def _compare(imp, node):
    first, (a, b) = _aligned_operands(imp, node, node.input[:2])
    return imp.wrap(getattr(_ops(), _COMPARISONS[node.op_type])(a, b), first.perm)


@_converts("Not")
def _not(imp, node):
    x = imp.activation(node)
    return imp.wrap(_ops().logical_not(x.tensor), x.perm)


@_converts("Where")
def _where(imp, node):
    first, (cond, a, b) = _aligned_operands(imp, node, node.input[:3])
    return imp.wrap(_ops().where(cond, a, b), first.perm)


@_converts("IsNaN")
def _isnan(imp, node):
    x = imp.float_activation(node)
    return imp.wrap(_ops().isnan(x.tensor), x.perm)


@_converts("Einsum")
def _einsum(imp, node):
    from pynn import layers

    equation = _attrs(node)["equation"].replace(" ", "")
    vals = [imp.get(i) for i in node.input]
    if "->" not in equation or "." in equation:
        raise imp.refuse(node, f"equation {equation!r}: pynn reads explicit outputs without "
                               f"ellipses")
    terms, out = equation.split("->")
    terms = terms.split(",")
    first = imp.activation(node, 0) if isinstance(vals[0], _Value) else None
    if first is None or len(terms) != len(vals) or terms[0][:1] != out[:1] or any(
            terms[0][:1] in t for t in terms[1:]):
        raise imp.refuse(node, f"equation {equation!r}: pynn reads the model's data first, "
                               f"its batch letter leading the output and in no other term")
    x = imp.plain(imp.float_activation(node, 0), node)
    if len(vals) == 2 and not isinstance(vals[1], _Value):
        # The data times a constant kernel: Keras's EinsumDense, its kernel trainable.
        kernel = _float(vals[1])
        probe = np.einsum(equation, np.zeros([1] + _static(imp, node, x.tensor.shape[1:],
                                                             "Einsum"), np.float32), kernel)
        layer = layers.EinsumDense(equation, probe.shape[1:])
        return imp.wrap(_layer(imp, layer, x.tensor, [kernel], node))
    if not all(isinstance(v, _Value) for v in vals):
        raise imp.refuse(node, "mixes constants and the model's data beyond one kernel")
    xs = [imp.plain(imp.float_activation(node, k), node).tensor for k in range(len(vals))]
    return imp.wrap(_ops().einsum(equation, *xs))


@_converts("Shrink")
def _shrink(imp, node):
    attrs = _check_attrs(imp, node, {"lambd": None, "bias": None})
    x = imp.float_activation(node)
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    o = _ops()
    if bias == 0.0:
        return imp.wrap(o.hard_shrink(x.tensor, lambd), x.perm)
    if bias == lambd:
        return imp.wrap(o.soft_shrink(x.tensor, lambd), x.perm)
    above = o.where(o.greater(x.tensor, lambd), o.subtract(x.tensor, bias), 0.0)
    return imp.wrap(o.where(o.less(x.tensor, -lambd), o.add(x.tensor, bias), above), x.perm)


@_converts("CumSum")
def _cumsum(imp, node):
    _check_attrs(imp, node, {"exclusive": (0,), "reverse": (0,)})
    x = imp.activation(node)
    axis = int(np.asarray(imp.const(node, 1)).reshape(())) % len(x.perm)
    if axis == x.batch_axis:
        raise imp.refuse(node, "sums along the batch axis")
    return imp.wrap(_ops().cumsum(x.tensor, axis=x.perm[axis]), x.perm)


def _resize_to_size(imp, node, x, factors, mode, coord, nearest_mode, attrs):
    """A Resize by other than whole factors: Keras's Resizing, whose torch-backend forms are
    linear with half-pixel centres (no antialias) and nearest-exact, floor((o + 0.5) * in /
    out), which is ONNX's half-pixel nearest rounding halves up."""
    from pynn import layers

    rank = len(x.perm)
    bilinear = mode == "linear" and coord == "half_pixel"
    nearest = mode == "nearest" and coord == "half_pixel" and nearest_mode == "round_prefer_ceil"
    if rank != 4 or factors[0] != 1.0 or factors[-1] != 1.0 or not (bilinear or nearest) or \
            attrs.get("antialias", 0) or attrs.get("exclude_outside", 0):
        raise imp.refuse(node, f"scales {factors} (pynn's axes) with mode={mode!r}, "
                               f"coordinate_transformation_mode={coord!r}: pynn resizes by "
                               f"whole factors, or images (N, C, H, W) as Keras's Resizing "
                               f"does (linear or nearest with half-pixel centres)")
    sizes = _static(imp, node, x.tensor.shape[1:3], "Resize")
    height, width = (round(n * f) for n, f in zip(sizes, factors[1:3]))
    if height < 1 or width < 1:
        raise imp.refuse(node, f"output size ({height}, {width})")
    layer = layers.Resizing(height, width, interpolation="bilinear" if bilinear else "nearest")
    return imp.wrap(_layer(imp, layer, x.tensor, node=node), x.perm)
