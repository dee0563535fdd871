"""Symbolic tensors and nodes of the functional API: what ``pynn.Input`` returns and what a
layer called on such tensors records. No data, no backend: shapes and connections only."""


def shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


class KerasTensor:
    """A symbolic tensor of the functional API: a shape (batch axis None), a dtype, and the
    node that made it (``pynn.Input`` or a layer called on symbolic tensors). It holds no
    data; ``Model(inputs, outputs)`` turns the nodes between them into a plan."""

    __slots__ = ("shape", "dtype", "name", "node", "index", "__weakref__")

    def __init__(self, shape, dtype, name, node=None, index=0):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.name = name
        self.node = node
        self.index = index

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={shape_str(self.shape)}, dtype={self.dtype}, name={self.name}>"


def is_symbolic(inputs):
    """Whether a layer's argument is (or holds) a symbolic tensor of the functional API."""
    if type(inputs) is KerasTensor:
        return True
    if isinstance(inputs, (list, tuple)):
        return any(type(x) is KerasTensor for x in inputs)
    if isinstance(inputs, dict):
        return any(type(x) is KerasTensor for x in inputs.values())
    return False


class Node:
    """One call of ``layer``: the symbolic tensors it read and those it made. ``several``:
    the layer was called with a list (a merge layer), so it takes and returns lists."""

    __slots__ = ("layer", "inputs", "outputs", "several")

    def __init__(self, layer, inputs, outputs, several):
        self.layer = layer
        self.inputs = inputs
        self.outputs = outputs
        self.several = several

    @property
    def is_input(self):
        return not self.inputs and self.layer.__class__.__name__ == "InputLayer"


def _describe(x):
    if isinstance(x, KerasTensor):
        return f"a symbolic tensor of shape {shape_str(x.shape)}"
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def record(layer, inputs, kwargs):
    """``layer(inputs)`` on symbolic tensors: build the layer for their shapes (or check them
    against the shapes it was built for), add a node, return its symbolic output(s)."""
    label = f"Layer '{layer.name}' ({type(layer).__name__})"
    unknown = set(kwargs) - {"training", "mask"}
    if unknown:
        raise TypeError(f"{label}: unexpected call arguments {sorted(unknown)}")
    if isinstance(inputs, dict):
        raise TypeError(f"{label}: takes a tensor or a list of tensors, got a dict")
    several = isinstance(inputs, (list, tuple))
    flat = list(inputs) if several else [inputs]
    for x in flat:
        if type(x) is not KerasTensor:
            raise TypeError(f"{label}: called on {_describe(x)} among symbolic tensors; every "
                            f"input of a functional model's layer must come from pynn.Input or "
                            f"from another layer called on one")
    shapes = [x.shape for x in flat]
    in_shape = shapes if several else shapes[0]
    if not layer.built:
        layer.build(in_shape)
    elif layer.weights:
        # A layer without weights (Permute, Flatten, pooling, merges) may be called again on
        # other shapes, as in Keras; compute_output_shape below checks what it needs.
        _check_built_shape(layer, label, in_shape, several)
    out_shape = layer.compute_output_shape(in_shape)
    multi_out = isinstance(out_shape, list)
    out_shapes = out_shape if multi_out else [out_shape]
    node = Node(layer, flat, [], several)
    node.outputs = [KerasTensor(s, layer.dtype, f"{layer.name}/{i}", node, i)
                    for i, s in enumerate(out_shapes)]
    layer._inbound_nodes.append(node)
    return list(node.outputs) if multi_out else node.outputs[0]


def _check_built_shape(layer, label, in_shape, several):
    expected = layer.input_shape
    if several != isinstance(expected, list):
        raise ValueError(f"{label}: built for {_shapes(expected)}, called on {_shapes(in_shape)}")
    pairs = zip(expected, in_shape) if several else [(expected, in_shape)]
    if several and len(expected) != len(in_shape):
        raise ValueError(f"{label}: built for {len(expected)} inputs, called on {len(in_shape)}: "
                         f"{_shapes(in_shape)}")
    # Layers whose weights fix only the features may be called again on other step counts
    # (a shared Embedding over an encoder's and a decoder's ids; Keras allows it):
    # ``_steps_free`` compares only the last axis, and Embedding (its ids' axes are all steps)
    # only the rank.
    free = getattr(layer, "_steps_free", False)
    for want, got in pairs:
        compared = list(zip(want[1:], got[1:]))
        if free:
            compared = [] if free == "all" else compared[-1:]
        if len(want) != len(got) or any(
            w is not None and g is not None and w != g for w, g in compared
        ):
            raise ValueError(f"{label} expected input shape {_shapes(expected)}, got "
                             f"{_shapes(in_shape)}")


def _shapes(shape):
    if isinstance(shape, list):
        return "[" + ", ".join(shape_str(s) for s in shape) + "]"
    return shape_str(shape)
