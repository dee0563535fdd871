"""Reverse-mode automatic differentiation over ``pynn.ops``: ``Tensor``, ``GradientTape``, and
the recording that custom layers replay in their backward.

One mechanism serves all three (micrograd's idea, karpathy/micrograd ``engine.py``): while a
recorder is active (a ``GradientTape``, or the private one a custom layer opens when it is
called in training) an op whose inputs are tracked returns a Tensor that keeps a ``Node``: the
tracked inputs and a closure mapping the output's gradient to theirs, holding only what that
closure needs. ``backprop`` sorts the nodes reachable from the targets once and walks them in
reverse, adding gradients up. Nothing is recorded when no recorder is active (inference), and
an op none of whose inputs is tracked records nothing either.

A built-in layer (one with its own ``backward``) is ONE node whose closure is that fused
backward, with the layer's ``_cache`` saved per call as the functional executor saves it.

Gradients are backend arrays (NumPy on the CPU, device arrays on OpenCL); the tape returns
them as Tensors.
"""

import inspect
import threading

import numpy as np

from pynn import backend
from pynn.variables import Variable

_local = threading.local()
# Recorders listening in any thread: while none is (the usual case) an op or a model call
# learns that it records nothing from this one cell, without the thread-local lookup (a
# batch-1 predict whose caches other work evicted paid ~4 us for that lookup alone).
_listening = [0]
_listening_lock = threading.Lock()


def _recorders():
    stack = getattr(_local, "recorders", None)
    if stack is None:
        stack = _local.recorders = []
    return stack


def _listen(rec, index=None):
    """Put ``rec`` on this thread's recorder stack (at ``index``, else on top)."""
    stack = _recorders()
    with _listening_lock:
        stack.append(rec) if index is None else stack.insert(index, rec)
        _listening[0] += 1


def _unlisten(rec):
    """Take ``rec`` off this thread's recorder stack; its former index."""
    stack = _recorders()
    with _listening_lock:
        index = stack.index(rec)
        stack.pop(index)
        _listening[0] -= 1
    return index


def recording():
    """Whether an op called now may record (some tape or custom layer is listening)."""
    return _listening[0] != 0 and bool(getattr(_local, "recorders", None))


class Node:
    """How one op's output was made: ``inputs`` (the tracked Tensors/Variables, None where an
    input is not tracked) and ``backward(dy, need) -> one gradient per input`` (None allowed;
    ``need[i]`` says whether input i is tracked, so untracked ones cost nothing)."""

    __slots__ = ("backward", "inputs", "name")

    def __init__(self, inputs, backward, name):
        self.inputs = inputs
        self.backward = backward
        self.name = name


class Tensor:
    """A backend array with, when recorded, the node that made it. Operators and indexing
    call ``pynn.ops``; ``numpy()`` (and ``np.asarray``) bring the values to the host."""

    __slots__ = ("__weakref__", "node", "value")
    # NumPy must defer to our reflected operators (array * tensor -> Tensor.__rmul__).
    __array_priority__ = 100

    def __init__(self, value, node=None):
        self.value = value
        self.node = node

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return len(self.value.shape)

    def __len__(self):
        return self.value.shape[0]

    def numpy(self):
        return np.asarray(backend.current().to_numpy(self.value))

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __float__(self):
        return float(self.numpy())

    def __repr__(self):
        return f"<pynn.Tensor shape={self.shape} dtype={self.dtype}>\n{self.numpy()!r}"


# -- recording -------------------------------------------------------------------------------
class _Recorder:
    """What is tracked while it is active: the ids of watched Tensors/Variables, and (when
    ``watch_variables``) every trainable Variable an op reads, as Keras's tape does."""

    def __init__(self, watch_variables=True):
        self.watched = set()
        self.watch_variables = watch_variables
        # Keeps watched objects alive so their ids stay theirs while the recorder lives.
        self._keep = []

    def watch(self, x):
        self.watched.add(id(x))
        self._keep.append(x)

    def __enter__(self):
        _listen(self)
        return self

    def __exit__(self, *exc):
        _unlisten(self)


def is_tracked(x):
    """Whether gradients flow to ``x`` from ops called now."""
    if type(x) is Tensor and x.node is not None:
        return True
    for rec in getattr(_local, "recorders", ()):
        if id(x) in rec.watched:
            return True
        if rec.watch_variables and type(x) is Variable and x.trainable:
            return True
    return False


def record(value, inputs, backward, name):
    """The op's output as a Tensor; with a node when recording and any input is tracked.
    ``inputs`` are the op's arguments as given (Tensor, Variable, array, scalar);
    ``backward(dy, need)`` returns one gradient (or None) per input."""
    if not _listening[0] or not getattr(_local, "recorders", None):
        return Tensor(value)
    tracked = [x if is_tracked(x) else None for x in inputs]
    if not any(t is not None for t in tracked):
        return Tensor(value)
    return Tensor(value, Node(tracked, backward, name))


def _accumulate(b, grads, owned, key, g):
    current = grads.get(key)
    if current is None:
        grads[key] = g
        return
    if key not in owned:  # never add into an array an op's backward may still hold
        current = b.copy(current)
        owned.add(key)
        grads[key] = current
    b.add_inplace(current, g)


_DONE = object()


def _topological(targets):
    """The recorded Tensors reachable from ``targets``, each after every Tensor it reads
    (an iterative post-order walk: deep chains must not hit Python's recursion limit)."""
    order, seen = [], set()
    for t in targets:
        if type(t) is not Tensor or t.node is None or id(t) in seen:
            continue
        seen.add(id(t))
        stack = [(t, iter(t.node.inputs))]
        while stack:
            current, pending = stack[-1]
            child = next(pending, _DONE)
            if child is _DONE:
                stack.pop()
                order.append(current)
                continue
            if type(child) is Tensor and child.node is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append((child, iter(child.node.inputs)))
    return order


def backprop(targets, seeds):
    """Gradients of sum(seed * target) with respect to every tracked leaf (and intermediate)
    reachable from ``targets``, as {id(object): backend array}."""
    b = backend.current()
    grads, owned = {}, set()
    for t, s in zip(targets, seeds):
        if s is not None:
            _accumulate(b, grads, owned, id(t), s)
    for t in reversed(_topological(targets)):
        g = grads.get(id(t))
        if g is None:
            continue
        node = t.node
        in_grads = node.backward(g, [x is not None for x in node.inputs])
        for x, gx in zip(node.inputs, in_grads):
            if x is not None and gx is not None:
                _accumulate(b, grads, owned, id(x), gx)
    return grads


def _as_backend(x, dtype=None):
    b = backend.current()
    if type(x) is Tensor or type(x) is Variable:
        return x.value
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return b.asarray(np.asarray(x, dtype=dtype), dtype or np.asarray(x).dtype)
    return x


class GradientTape:
    """Keras/TensorFlow's tape: ``with pynn.GradientTape() as tape: loss = ...`` then
    ``tape.gradient(loss, model.trainable_weights)``.

    Trainable Variables are watched automatically (``watch_accessed_variables``); Tensors
    and arrays only when ``watch``-ed. A non-scalar target's gradient is that of its sum;
    an unconnected source gets None. A tape answers one ``gradient`` call unless
    ``persistent=True``.
    """

    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = bool(persistent)
        self._recorder = _Recorder(bool(watch_accessed_variables))
        self._used = False
        self._active = False

    def __enter__(self):
        self._recorder.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc):
        self._active = False
        self._recorder.__exit__(*exc)

    def watch(self, x):
        """Track ``x`` (a Tensor or Variable, or a list of them). Arrays must be made
        Tensors first (``pynn.ops.convert_to_tensor``) so the tape can tell them apart."""
        for item in x if isinstance(x, (list, tuple)) else [x]:
            if type(item) not in (Tensor, Variable):
                raise TypeError(f"GradientTape.watch: expected a pynn.Tensor or Variable, got "
                                f"{type(item).__name__} (wrap arrays with "
                                f"pynn.ops.convert_to_tensor first)")
            self._recorder.watch(item)

    def stop_recording(self):
        """A context in which ops are not recorded (Keras's ``tape.stop_recording()``)."""
        tape = self

        class _Paused:
            def __enter__(self):
                self.index = _unlisten(tape._recorder)

            def __exit__(self, *exc):
                _listen(tape._recorder, self.index)

        return _Paused()

    def gradient(self, target, sources, output_gradients=None):
        if self._used and not self.persistent:
            raise RuntimeError("GradientTape.gradient can only be called once on a "
                               "non-persistent tape; use GradientTape(persistent=True)")
        self._used = True
        b = backend.current()
        targets = list(target) if isinstance(target, (list, tuple)) else [target]
        if output_gradients is None:
            seeds = [b.full(tuple(t.shape), 1.0, t.dtype) if type(t) in (Tensor, Variable)
                     else None for t in targets]
        else:
            outs = (list(output_gradients) if isinstance(output_gradients, (list, tuple))
                    else [output_gradients])
            seeds = [None if g is None else _as_backend(g, t.dtype)
                     for t, g in zip(targets, outs)]
        grads = backprop(targets, seeds)
        single = not isinstance(sources, (list, tuple, dict))
        flat = list(sources.values()) if isinstance(sources, dict) else (
            [sources] if single else list(sources))
        result = [None if grads.get(id(s)) is None else Tensor(grads[id(s)]) for s in flat]
        if not self.persistent:
            self._recorder.watched.clear()
            self._recorder._keep.clear()
        if single:
            return result[0]
        if isinstance(sources, dict):
            return dict(zip(sources, result))
        return result


# -- layers in a recorded computation ------------------------------------------------------
def _unwrap(x):
    if isinstance(x, (list, tuple)):
        return [_unwrap(v) for v in x]
    return x.value if type(x) in (Tensor, Variable) else x


def _has_tensor(x):
    if isinstance(x, (list, tuple)):
        return any(type(v) is Tensor for v in x)
    return type(x) is Tensor


def call_builtin(layer, inputs, training):
    """A built-in layer (its own fused backward) called on Tensors or under a tape: one
    node whose inputs are the layer's inputs and its trainable variables."""
    several = isinstance(inputs, (list, tuple))
    xs = list(inputs) if several else [inputs]
    raw = [_unwrap(x) for x in xs]
    y = layer.call(raw if several else raw[0], training=training)
    cache, layer._cache = layer._cache, None
    variables = list(layer.trainable_weights)
    sources = xs + variables
    if not recording() or not any(is_tracked(s) for s in sources):
        return [Tensor(v) for v in y] if isinstance(y, (list, tuple)) else Tensor(y)
    input_tracked = any(is_tracked(x) for x in xs)
    multi_out = isinstance(y, (list, tuple))
    outs = [Tensor(v) for v in y] if multi_out else [Tensor(y)]

    def backward(dy, need=None):
        if cache is None and (variables or input_tracked):
            raise RuntimeError(f"Layer '{layer.name}' ({type(layer).__name__}) was called "
                               f"with training=False under a GradientTape: its fused "
                               f"backward keeps what it needs only in training; call it "
                               f"with training=True to differentiate it")
        previous = [v.grad for v in variables]
        layer._cache = cache
        layer.needs_input_grad = input_tracked
        try:
            dx = layer.backward(dy)
            own = [v.grad for v in variables]
        finally:
            layer._cache = None
            for v, g in zip(variables, previous):
                v.grad = g
        dxs = (list(dx) if several else [dx]) if input_tracked else [None] * len(xs)
        return dxs + own

    if not multi_out:
        return record(y, sources, backward, layer.name)
    # Several outputs share one backward: each output's node passes its own gradient in its
    # position, zeros elsewhere (a multi-output built-in layer under a tape is rare).
    b = backend.current()

    def backward_for(k):
        def one(dy, need):
            dys = [dy if j == k else b.zeros(tuple(o.shape), o.dtype)
                   for j, o in enumerate(outs)]
            return backward(dys)
        return one

    return [record(o.value, sources, backward_for(k), layer.name) for k, o in enumerate(outs)]


def training_context():
    """The ``training`` flag of the traced call being run (Keras passes it on to the layers
    called inside a call that do not get it explicitly); None outside any."""
    return getattr(_local, "training", None)


def _run_user_call(user_call, layer, inputs, training, kwargs):
    previous = getattr(_local, "training", None)
    _local.training = bool(training)
    try:
        if user_call._pynn_takes_training:
            return user_call(layer, inputs, training=training, **kwargs)
        return user_call(layer, inputs, **kwargs)  # Keras passes training only if asked
    finally:
        _local.training = previous


def traced_call(user_call):
    """Wrap the ``call`` of a layer that has no ``backward`` of its own (a custom layer, a
    subclassed model) so that the model executor can train it: in training its ops are
    recorded on a private recorder whose nodes ``replay`` walks back in ``backward``."""
    params = inspect.signature(user_call).parameters
    user_call._pynn_takes_training = "training" in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values())

    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = bool(training_context())
        if _has_tensor(inputs) or recording():
            # Part of an enclosing recorded computation (a tape, or an outer custom layer):
            # the ops record into it directly.
            return _run_user_call(user_call, self, inputs, training, kwargs)
        if not training:
            return _unwrap(_run_user_call(user_call, self, inputs, training, kwargs))
        several = isinstance(inputs, (list, tuple))
        xs = [Tensor(x) for x in (inputs if several else [inputs])]
        with _Recorder() as rec:
            if self.needs_input_grad:
                for x in xs:
                    rec.watch(x)
            out = _run_user_call(user_call, self, xs if several else xs[0], training, kwargs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        outs = [o if type(o) is Tensor else Tensor(_unwrap(o)) for o in outs]
        self._cache = _Trace(xs, outs, several)
        values = [o.value for o in outs]
        return values if isinstance(out, (list, tuple)) else values[0]

    call._pynn_traced = True
    call.__wrapped__ = user_call
    call.__doc__ = user_call.__doc__
    call.__name__ = getattr(user_call, "__name__", "call")
    return call


class _Trace:
    """A custom layer's training call: its input Tensors and output Tensors (whose nodes
    hold everything backward needs)."""

    __slots__ = ("inputs", "outputs", "several")

    def __init__(self, inputs, outputs, several):
        self.inputs = inputs
        self.outputs = outputs
        self.several = several


def replay(layer, dy):
    """The backward of a traced layer: walk its recorded call back from ``dy``; set each
    trainable variable's grad (None where the output does not depend on it) and return the
    input gradient(s) (None when ``needs_input_grad`` is False)."""
    trace, layer._cache = layer._cache, None
    if trace is None or type(trace) is not _Trace:  # a state error, not an argument's type
        raise RuntimeError(f"Layer '{layer.name}' ({type(layer).__name__}): backward without "
                           f"a training call before it")
    dys = list(dy) if isinstance(dy, (list, tuple)) else [dy]
    grads = backprop(trace.outputs, dys)
    for v in layer.trainable_weights:
        v.grad = grads.get(id(v))
    if not layer.needs_input_grad:
        return None
    b = backend.current()
    dxs = [grads.get(id(x)) for x in trace.inputs]
    # The executor adds input gradients up: one the output does not depend on is zero.
    dxs = [b.zeros(x.shape, x.dtype) if g is None else g for x, g in zip(trace.inputs, dxs)]
    return dxs if trace.several else dxs[0]
