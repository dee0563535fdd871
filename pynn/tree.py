"""``pynn.tree``: Keras 3's ``keras.tree`` for nested lists, tuples (namedtuples too), dicts
(OrderedDict, defaultdict) and deques; anything else, None included, is a leaf.

As Keras's: a plain dict or defaultdict is visited in sorted key order (``flatten`` and
``pack_sequence_as``), an OrderedDict in its own order; ``map_structure`` returns each dict
with the keys in the first structure's order.
"""

import collections

__all__ = [
    "MAP_TO_NONE", "assert_same_paths", "assert_same_structure", "flatten",
    "flatten_with_path", "is_nested", "lists_to_tuples", "map_shape_structure",
    "map_structure", "map_structure_up_to", "pack_sequence_as", "traverse",
]


class MAP_TO_NONE:
    """Returned by a ``traverse`` function: put None here (returning None means "go on")."""


def is_nested(structure):
    return isinstance(structure, (list, tuple, dict, collections.deque))


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _keys(node):
    """The children's keys in visiting order."""
    if isinstance(node, dict):
        if isinstance(node, collections.OrderedDict):
            return list(node)
        return sorted(node)
    return list(range(len(node)))


def _children(node):
    return [node[k] for k in _keys(node)] if isinstance(node, dict) else list(node)


def _rebuild(node, keys, values):
    """A node of ``node``'s type holding ``values`` under ``keys``."""
    if isinstance(node, dict):
        if isinstance(node, collections.defaultdict):
            out = collections.defaultdict(node.default_factory)
            out.update(zip(keys, values))
            return out
        if type(node) is dict:
            return dict(zip(keys, values))
        return type(node)(zip(keys, values))
    if _is_namedtuple(node):
        return type(node)(*values)
    if isinstance(node, collections.deque):
        return collections.deque(values, maxlen=node.maxlen)
    return type(node)(values)


def flatten(structure):
    """Every leaf, depth first."""
    if not is_nested(structure):
        return [structure]
    out = []
    stack = [structure]
    while stack:  # iterative so deep nests do not hit the recursion limit
        node = stack.pop()
        if is_nested(node):
            stack.extend(reversed(_children(node)))
        else:
            out.append(node)
    return out


def flatten_with_path(structure):
    """[(path, leaf)]: a path is the tuple of indices and keys leading to the leaf
    (namedtuples by index, as Keras's)."""
    out = []

    def visit(node, path):
        if not is_nested(node):
            out.append((path, node))
            return
        for key, child in zip(_keys(node), _children(node)):
            visit(child, (*path, key))

    visit(structure, ())
    return out


def pack_sequence_as(structure, flat_sequence):
    """``flat_sequence``'s items in ``structure``'s shape (dicts in sorted key order)."""
    flat = list(flat_sequence)
    count = len(flatten(structure))
    if len(flat) != count:
        raise ValueError(f"pynn.tree.pack_sequence_as: the structure has {count} leaves but "
                         f"flat_sequence has {len(flat)} items")
    position = iter(flat)

    def build(node):
        if not is_nested(node):
            return next(position)
        keys = _keys(node)
        return _rebuild(node, keys, [build(node[k]) for k in keys])

    return build(structure)


def _same_node(a, b, check_types=True):
    if not is_nested(a) or not is_nested(b):
        return is_nested(a) == is_nested(b)
    if check_types:
        kinds = (dict, collections.deque, list)
        same_kind = any(isinstance(a, k) and isinstance(b, k) for k in kinds) or (
            isinstance(a, tuple) and isinstance(b, tuple) and not isinstance(a, list)
            and (type(a) is type(b) or not (_is_namedtuple(a) or _is_namedtuple(b))))
        if not same_kind:
            return False
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b)
    return len(a) == len(b)


def assert_same_structure(a, b, check_types=None):
    """ValueError where ``a`` and ``b`` differ in nesting, container kind, lengths or keys
    (``check_types`` is Keras's deprecated argument and changes nothing)."""
    def check(x, y, path):
        if not _same_node(x, y):
            raise ValueError(f"pynn.tree: the structures differ at path {path}: "
                             f"{type(x).__name__} {_preview(x)} vs {type(y).__name__} "
                             f"{_preview(y)}")
        if is_nested(x):
            for key in _keys(x):
                check(x[key] if isinstance(x, dict) else x[key],
                      y[key] if isinstance(y, dict) else list(y)[key], (*path, key))

    check(a, b, ())


def _preview(x):
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def assert_same_paths(a, b):
    a_paths = {p for p, _ in flatten_with_path(a)}
    b_paths = {p for p, _ in flatten_with_path(b)}
    if a_paths != b_paths:
        raise ValueError(f"pynn.tree.assert_same_paths: `a` and `b` don't have the same "
                         f"paths; only in a: {sorted(a_paths - b_paths, key=repr)}, only in "
                         f"b: {sorted(b_paths - a_paths, key=repr)}")


def map_structure(func, *structures, none_is_leaf=True):
    """``func`` over the leaves of equally nested structures, in the first one's shape.
    ``none_is_leaf=False``: a None leaf stays None without calling ``func``."""
    if not structures:
        raise ValueError("pynn.tree.map_structure: must provide at least one structure")
    for other in structures[1:]:
        assert_same_structure(structures[0], other)

    def apply(*leaves):
        if not none_is_leaf and leaves[0] is None:
            if not all(v is None for v in leaves):
                raise ValueError(f"pynn.tree.map_structure: structure mismatch: some "
                                 f"arguments are None, others are not: {leaves}")
            return None
        return func(*leaves)

    def build(*nodes):
        first = nodes[0]
        if not is_nested(first):
            return apply(*nodes)
        keys = list(first) if isinstance(first, dict) else list(range(len(first)))
        picked = [[n[k] if isinstance(n, dict) else list(n)[k] for n in nodes] for k in keys]
        return _rebuild(first, keys, [build(*p) for p in picked])

    return build(*structures)


def map_structure_up_to(shallow_structure, func, *structures):
    """``func`` on the sub-structures of ``structures`` that sit at ``shallow_structure``'s
    leaves; deeper nesting is handed to ``func`` whole."""
    if not structures:
        raise ValueError("pynn.tree.map_structure_up_to: must provide at least one structure")

    def build(shallow, *nodes):
        if not is_nested(shallow):
            return func(*nodes)
        for n in nodes:
            if not _same_node(shallow, n):
                raise ValueError("pynn.tree.map_structure_up_to: the structures don't have "
                                 "the same nested structure as shallow_structure")
        keys = list(shallow) if isinstance(shallow, dict) else list(range(len(shallow)))
        values = [build(shallow[k], *[n[k] if isinstance(n, dict) else list(n)[k]
                                      for n in nodes]) for k in keys]
        return _rebuild(shallow, keys, values)

    return build(shallow_structure, *structures)


def traverse(func, structure, top_down=True):
    """Keras's traverse: ``func`` on every node; top down, a non-None result replaces the
    node (its children not visited), None goes on into it; bottom up, ``func`` sees the node
    already rebuilt from its traversed children. ``MAP_TO_NONE`` puts None."""
    def children_done(node):
        if not is_nested(node):
            return node
        keys = _keys(node)
        return _rebuild(node, keys, [traverse(func, node[k], top_down) for k in keys])

    if top_down:
        result = func(structure)
        if result is None:
            return children_done(structure)
    else:
        structure = children_done(structure)
        result = func(structure)
        if result is None:
            return structure
    return None if result is MAP_TO_NONE else result


def lists_to_tuples(structure):
    return traverse(lambda x: tuple(x) if isinstance(x, list) else None, structure,
                    top_down=False)


def _is_shape(x):
    return isinstance(x, (list, tuple)) and all(isinstance(e, (int, type(None))) for e in x)


def map_shape_structure(func, structure):
    """map_structure where a list or tuple of ints and Nones (a shape) is one leaf."""
    if _is_shape(structure) or not is_nested(structure):
        return func(structure)
    keys = list(structure) if isinstance(structure, dict) else list(range(len(structure)))
    return _rebuild(structure, keys, [map_shape_structure(func, structure[k]) for k in keys])
