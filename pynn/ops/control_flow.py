"""keras.ops' control flow: cond, switch, while_loop, fori_loop, scan, associative_scan, map,
vectorized_map, custom_gradient, jvp.

As on Keras's torch backend these are eager Python control flow: each branch or step runs
the ops it calls, and a GradientTape records through them like any other op sequence (the
gradient of a loop is the gradient of the ops its steps ran). pynn's functional graph stores
op nodes by name with JSON arguments, so it cannot hold a Python callable: on symbolic
tensors these ops are refused by name (wrap the computation in a custom layer's ``call``,
which the graph replays eagerly).

associative_scan runs Hillis and Steele's log-depth scan (ceil(log2 n) calls of ``f`` on
shifted slices), so its steps are whole-tensor ops. vectorized_map calls the function once
per element of the leading axis, as Keras's map does (there is no vmap to batch a Python
function). custom_gradient records one node whose backward is the user's grad_fn. jvp is
refused: pynn's tape is reverse-mode only and its backward closures are not themselves
recorded, so neither forward mode nor the double-backward trick is available.
"""

import builtins
import contextlib
import functools
import inspect

import numpy as np

from pynn import autodiff
from pynn.autodiff import Tensor
from pynn.layers.symbolic import KerasTensor
from pynn.ops import numpy_ops as npo
from pynn.ops._core import record, value
from pynn.variables import Variable

__all__ = ["associative_scan", "cond", "custom_gradient", "fori_loop", "jvp", "map", "scan",
           "switch", "vectorized_map", "while_loop"]


def _leaves(tree):
    """The leaves of a structure of tuples, lists and dicts, in order."""
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [tree]


def _rebuild(tree, leaves):
    """``tree``'s structure with ``leaves`` (an iterator) in its leaves' places."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuild(item, leaves) for item in tree)
    if isinstance(tree, dict):
        return {key: _rebuild(tree[key], leaves) for key in sorted(tree)}
    return next(leaves)


def _map_tree(fn, tree):
    return _rebuild(tree, iter([fn(leaf) for leaf in _leaves(tree)]))


def _refuse_symbolic(name, *trees):
    if builtins.any(type(leaf) is KerasTensor for tree in trees for leaf in _leaves(tree)):
        raise NotImplementedError(
            f"pynn.ops.{name}: a functional graph cannot hold a Python callable (its op nodes "
            f"are saved by name); call {name} inside a custom layer's call(), which runs "
            f"eagerly")


def _truth(name, v):
    if type(v) is KerasTensor:
        _refuse_symbolic(name, v)
    a = np.asarray(v.numpy() if hasattr(v, "numpy") else value(v))
    if a.size != 1:
        raise ValueError(f"pynn.ops.{name}: the predicate must be a single boolean, got shape "
                         f"{a.shape}")
    return bool(a.reshape(()))


def _host_int(v):
    return int(np.asarray(v.numpy() if hasattr(v, "numpy") else value(v)))


def _callable(name, what, f):
    if not callable(f):
        raise TypeError(f"pynn.ops.{name}: {what} must be callable, got {type(f).__name__}")


def cond(pred, true_fn, false_fn):
    """keras.ops.cond: true_fn() if pred else false_fn()."""
    _callable("cond", "true_fn", true_fn)
    _callable("cond", "false_fn", false_fn)
    return true_fn() if _truth("cond", pred) else false_fn()


def switch(index, branches, *operands):
    """keras.ops.switch: branches[index](*operands), index clipped to the branches (as
    Keras's)."""
    if not branches:
        raise ValueError("pynn.ops.switch: branches must be a non-empty list of callables")
    for i, f in enumerate(branches):
        _callable("switch", f"branches[{i}]", f)
    _refuse_symbolic("switch", index, operands)
    i = _host_int(index)
    return branches[builtins.min(builtins.max(i, 0), len(branches) - 1)](*operands)


def while_loop(cond, body, loop_vars, maximum_iterations=None):
    """keras.ops.while_loop: loop_vars = body(*loop_vars) while cond(*loop_vars) (and fewer
    than maximum_iterations steps); a tuple or list of loop_vars comes back as a tuple."""
    _callable("while_loop", "cond", cond)
    _callable("while_loop", "body", body)
    _refuse_symbolic("while_loop", loop_vars)
    several = isinstance(loop_vars, (tuple, list))
    state = tuple(loop_vars) if several else (loop_vars,)
    steps = 0
    while (maximum_iterations is None or steps < maximum_iterations) and \
            _truth("while_loop", cond(*state)):
        state = body(*state)
        state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        steps += 1
    return state if several else state[0]


def fori_loop(lower, upper, body_fun, init_val):
    """keras.ops.fori_loop: val = body_fun(i, val) for i in [lower, upper)."""
    _callable("fori_loop", "body_fun", body_fun)
    _refuse_symbolic("fori_loop", init_val)
    val = init_val
    for i in range(_host_int(lower), _host_int(upper)):
        val = body_fun(i, val)
    return val


def _leading(name, leaves):
    sizes = {int(np.shape(value(leaf))[0]) if np.ndim(value(leaf)) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"pynn.ops.{name}: every input must have one leading axis length, "
                         f"got shapes {[tuple(np.shape(value(leaf))) for leaf in leaves]}")
    return sizes.pop()


def _stack_steps(outputs):
    """The steps' outputs (each a structure) stacked leaf by leaf on a new leading axis."""
    first = outputs[0]
    columns = zip(*[_leaves(out) for out in outputs])
    return _rebuild(first, iter([npo.stack(list(column), axis=0) for column in columns]))


def scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """keras.ops.scan: carry, y = f(carry, x) over the leading axis of xs (a structure of
    tensors, or None for ``length`` steps) -> (the last carry, the stacked ys)."""
    _callable("scan", "f", f)
    _refuse_symbolic("scan", init, xs)
    if xs is None:
        if length is None:
            raise ValueError("pynn.ops.scan: pass xs or length")
        n = int(length)
    else:
        n = _leading("scan", _leaves(xs))
        if length is not None and int(length) != n:
            raise ValueError(f"pynn.ops.scan: length={length} but xs has {n} steps")
    carry, ys = init, []
    order = range(n - 1, -1, -1) if reverse else range(n)
    for i in order:  # the steps are sequential: each needs the last carry
        x = None if xs is None else _map_tree(lambda leaf, i=i: npo.getitem(leaf, i), xs)
        carry, y = f(carry, x)
        ys.append(y)
    if reverse:
        ys.reverse()
    if not ys or builtins.all(leaf is None for leaf in _leaves(ys[0])):
        return carry, None
    return carry, _stack_steps(ys)


def associative_scan(f, elems, reverse=False, axis=0):
    """keras.ops.associative_scan: inclusive prefix of the associative f along ``axis``
    (f(earlier, later); reverse: of the flipped elements, flipped back, as Keras and JAX);
    Hillis and Steele's scan: at offset d = 1, 2, 4, ... every element past d becomes
    f(element - d, element), one f call on whole slices per level."""
    _callable("associative_scan", "f", f)
    _refuse_symbolic("associative_scan", elems)
    leaves = _leaves(elems)
    ndim = np.ndim(value(leaves[0]))
    ax = int(axis) % builtins.max(ndim, 1)
    n = {int(np.shape(value(leaf))[ax]) for leaf in leaves}
    if len(n) != 1:
        raise ValueError(f"pynn.ops.associative_scan: the inputs' axis {axis} lengths differ: "
                         f"{sorted(n)}")
    n = n.pop()

    def cut(leaf, lo, hi):
        return npo.getitem(leaf, (builtins.slice(None),) * ax + (builtins.slice(lo, hi),))

    if reverse:
        leaves = [npo.flip(leaf, ax) for leaf in leaves]
    d = 1
    while d < n:
        earlier = _rebuild(elems, iter([cut(leaf, 0, n - d) for leaf in leaves]))
        later = _rebuild(elems, iter([cut(leaf, d, n) for leaf in leaves]))
        combined = _leaves(f(earlier, later))
        leaves = [npo.concatenate([cut(leaf, 0, d), new], axis=ax)
                  for leaf, new in zip(leaves, combined)]
        d *= 2
    if reverse:
        leaves = [npo.flip(leaf, ax) for leaf in leaves]
    return _rebuild(elems, iter(leaves))


def map(f, xs):
    """keras.ops.map: f of each element along the leading axis of xs, stacked."""
    _callable("map", "f", f)
    _refuse_symbolic("map", xs)
    n = _leading("map", _leaves(xs))
    outputs = [f(_map_tree(lambda leaf, i=i: npo.getitem(leaf, i), xs)) for i in range(n)]
    if not outputs:
        raise ValueError("pynn.ops.map: xs has no elements to map over")
    return _stack_steps(outputs)


def vectorized_map(function, elements):
    """keras.ops.vectorized_map: as map (pynn has no vmap to batch a Python function)."""
    _callable("vectorized_map", "function", function)
    return map(function, elements)


@contextlib.contextmanager
def _unrecorded():
    """No recorder listens inside: custom_gradient's forward is one node, not its ops."""
    stack = list(autodiff._recorders())
    for rec in reversed(stack):
        autodiff._unlisten(rec)
    try:
        yield
    finally:
        for rec in stack:
            autodiff._listen(rec)


def _call_grad_fn(grad_fn, upstream):
    """Keras's documented grad_fn(*args, upstream=None) takes the upstream gradient by
    keyword (its torch backend passes it so); a grad_fn of one positional parameter gets it
    positionally (its TensorFlow and JAX backends' call)."""
    try:
        params = inspect.signature(grad_fn).parameters.values()
    except (TypeError, ValueError):
        return grad_fn(upstream)
    if builtins.any(p.name == "upstream" and p.kind != p.POSITIONAL_ONLY or
                    p.kind == p.VAR_KEYWORD for p in params):
        return grad_fn(upstream=upstream)
    return grad_fn(upstream)


def custom_gradient(f):
    """keras.ops.custom_gradient: ``f(*args)`` returns ``(y, grad_fn)``; the tape records one
    node for y whose backward is ``grad_fn(upstream)`` (by keyword where grad_fn takes
    ``upstream=``, as Keras documents it); one gradient per tensor argument, a tuple or, for
    one argument, a tensor. Keyword arguments are passed through untracked."""
    _callable("custom_gradient", "f", f)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        _refuse_symbolic("custom_gradient", args, kwargs)
        with _unrecorded():
            result = f(*args, **kwargs)
        if not isinstance(result, (tuple, list)) or len(result) != 2 or \
                not callable(result[1]):
            raise ValueError(f"pynn.ops.custom_gradient: {getattr(f, '__name__', 'f')} must "
                             f"return (y, grad_fn), got {type(result).__name__}")
        y, grad_fn = result
        y = npo.convert_to_tensor(y)
        inputs = tuple(a for a in args if type(a) in (Tensor, Variable) or
                       isinstance(a, np.ndarray))

        def backward(dy, need):
            with _unrecorded():
                grads = _call_grad_fn(grad_fn, Tensor(dy))
            grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
            if len(grads) != len(inputs):
                raise ValueError(f"pynn.ops.custom_gradient: grad_fn returned {len(grads)} "
                                 f"gradients for {len(inputs)} tensor arguments")
            return tuple(None if g is None else value(npo.convert_to_tensor(g))
                         for g in grads)

        return record(y.value, inputs, backward, f"custom_gradient({f.__name__})")

    return wrapper


def jvp(fun, primals, tangents, has_aux=False):
    """keras.ops.jvp: refused. pynn's tape is reverse-mode only, and its backward passes are
    not recorded, so a Jacobian-vector product would need a Jacobian per output; use
    GradientTape for vector-Jacobian products."""
    raise NotImplementedError(
        "pynn.ops.jvp: forward-mode differentiation is not supported (pynn's tape is "
        "reverse-mode only and does not record its own backward passes); use "
        "pynn.GradientTape for vector-Jacobian products")
