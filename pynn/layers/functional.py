"""The functional API's graph: nodes recorded when layers are called on symbolic tensors, and
the plan a model runs them by.

A node is one call of a layer (a layer called twice, a shared layer, has two). ``Graph`` walks
the nodes between a model's inputs and outputs once, in Keras's order, and ``Plan`` turns
them into a list of steps over integer slots: running a model is then a Python loop over that
list, with no graph walking, dict look-ups or shape inference per step.
"""

import math

import numpy as np

from pynn import backend, variables
from pynn.backend import api
from pynn.layers.base import makes_mask, takes_mask
from pynn.layers.pooling import MaxPooling2D, PoolGrad
from pynn.layers.symbolic import shape_str


class Graph:
    """The nodes that lead from ``inputs`` to ``outputs`` (lists of KerasTensor), checked:
    every tensor the outputs need is computable from the inputs, every input is used, no
    cycle. ``nodes`` is a topological order (Keras's post-order walk from the outputs);
    ``layers`` Keras's ``model.layers`` order (by depth from the outputs, then walk order)."""

    def __init__(self, inputs, outputs, owner):
        self.owner = owner
        self.inputs = inputs
        self.outputs = outputs
        declared = {id(t) for t in inputs}
        finished, in_progress = set(), set()
        self.nodes, walk_index = [], {}

        def visit(tensor):
            node = tensor.node
            if node is None or id(node) in finished:
                return
            if id(tensor) in declared and not node.is_input:
                finished.add(id(node))
                return
            if id(node) in in_progress:
                raise ValueError(f"{owner}: layer '{node.layer.name}' is part of a cycle")
            walk_index.setdefault(id(node.layer), len(walk_index))
            in_progress.add(id(node))
            stack = [(node, iter(node.inputs))]
            # Iterative depth-first walk: a deep graph must not hit Python's recursion limit.
            while stack:
                current, pending = stack[-1]
                child = next(pending, None)
                if child is None:
                    stack.pop()
                    in_progress.discard(id(current))
                    finished.add(id(current))
                    self.nodes.append(current)
                    continue
                cnode = child.node
                if cnode is None or id(cnode) in finished:
                    continue
                if id(child) in declared and not cnode.is_input:
                    finished.add(id(cnode))
                    continue
                if id(cnode) in in_progress:
                    raise ValueError(f"{owner}: layer '{cnode.layer.name}' is part of a cycle")
                walk_index.setdefault(id(cnode.layer), len(walk_index))
                in_progress.add(id(cnode))
                stack.append((cnode, iter(cnode.inputs)))

        for t in outputs:
            visit(t)
        self._check_computable(declared)
        self._order_layers(walk_index)

    def _check_computable(self, declared):
        known = set(declared)
        for node in self.nodes:
            if node.is_input:
                if id(node.outputs[0]) not in declared:
                    layer = node.layer
                    raise ValueError(
                        f"{self.owner}: the outputs depend on Input '{layer.name}' of shape "
                        f"{shape_str(node.outputs[0].shape)}, which is not among the model's "
                        f"inputs (a tensor from another graph?); pass it in inputs=")
                continue
            for t in node.inputs:
                if id(t) not in known:
                    raise ValueError(
                        f"{self.owner}: graph disconnected: layer '{node.layer.name}' "
                        f"({type(node.layer).__name__}) reads a tensor of shape "
                        f"{shape_str(t.shape)} made by layer '{t.node.layer.name}' that cannot "
                        f"be computed from the model's inputs")
            known.update(id(t) for t in node.outputs)
        # An input that reaches no output is taken and ignored, as Keras 3 does (a Keras
        # file with one loads: it was refused here).

    def _order_layers(self, walk_index):
        depth = {}
        layer_depth = {}
        for node in reversed(self.nodes):
            d = max(depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
            layer_depth[id(node.layer)] = d
            depth[id(node)] = d
            for t in node.inputs:
                if t.node is not None:
                    depth[id(t.node)] = max(depth.get(id(t.node), 0), d + 1)
        by_id = {id(node.layer): node.layer for node in self.nodes}
        for t in self.inputs:  # an input that is also an output has no node of its own
            if t.node is not None and id(t.node.layer) not in by_id:
                by_id[id(t.node.layer)] = t.node.layer
                layer_depth[id(t.node.layer)] = 0
                walk_index[id(t.node.layer)] = -1
        self.layers = sorted(by_id.values(),
                             key=lambda layer: (-layer_depth[id(layer)], walk_index[id(layer)]))


class Step:
    """One node, as the plan runs it: ``ins``/``outs`` are slot numbers."""

    __slots__ = ("layer", "ins", "outs", "several", "multi_out", "shared", "free_after",
                 "needs_input_grad", "input_grad_slots", "backprop", "activity", "grads_final",
                 "fused", "passthrough", "makes_mask", "pool_grad", "pools", "pooled",
                 "act_below")

    def __init__(self, layer, ins, outs, several, multi_out):
        self.layer = layer
        self.ins = ins
        self.outs = outs
        self.several = several
        self.multi_out = multi_out
        self.shared = False
        self.free_after = ()
        self.needs_input_grad = True
        self.input_grad_slots = ()
        self.backprop = True
        self.activity = None
        self.grads_final = False
        # (activation, alpha) a BatchNormalization or Add applies for the Activation after
        # it, whose own step is then a passthrough (_fuse_activations).
        self.fused = None
        self.passthrough = False
        # A MaxPooling2D whose input only a Conv2D makes: its backward hands that conv a
        # PoolGrad (its output gradient, argmax and output) instead of its input gradient
        # (_fuse_conv_pool).
        self.pool_grad = False
        # A Conv2D (pools: the MaxPooling2D layer) whose step makes that pool's output itself
        # in forward (Conv2D.call_pooled: conv2d_pool_forward); the pool's step (pooled) then
        # passes it on.
        self.pools = None
        self.pooled = False
        # A Dense whose input is the relu output of a Dense below that only it reads: its
        # backward makes that layer's dz and bias gradient (an ActGrad) rather than its own
        # input gradient (_fuse_dense_activation). The layer below, or None.
        self.act_below = None
        # Whether the layer may make a mask from unmasked inputs, once rather than per call
        # (set again wherever a step's layer is replaced).
        self.makes_mask = makes_mask(layer)


class Plan:
    """The graph as a list of steps over slots (one slot per tensor). Built once per model;
    ``prepare_backward`` (re)computes which steps need gradients from the layers' current
    ``trainable`` flags, once per fit/train call."""

    def __init__(self, graph):
        slot_of = {}

        def slot(t):
            return slot_of.setdefault(id(t), len(slot_of))

        self.input_slots = [slot(t) for t in graph.inputs]
        steps = []
        for node in graph.nodes:
            if node.is_input:
                continue
            steps.append(Step(node.layer, [slot(t) for t in node.inputs],
                              [slot(t) for t in node.outputs], node.several,
                              len(node.outputs) > 1 or isinstance(
                                  node.layer.compute_output_shape(
                                      [t.shape for t in node.inputs] if node.several
                                      else node.inputs[0].shape), list)))
        self.output_slots = [slot(t) for t in graph.outputs]
        self.nslots = len(slot_of)
        calls = {}
        for st in steps:
            calls[id(st.layer)] = calls.get(id(st.layer), 0) + 1
        for st in steps:
            st.shared = calls[id(st.layer)] > 1
        # Free each intermediate value after its last reader: inference then holds only the
        # live tensors, as a Sequential model passing one array along did.
        last_read = {}
        for j, st in enumerate(steps):
            for s in st.ins:
                last_read[s] = j
        keep = set(self.output_slots) | set(self.input_slots)
        frees = [[] for _ in steps]
        for s, j in last_read.items():
            if s not in keep:
                frees[j].append(s)
        for st, f in zip(steps, frees):
            st.free_after = tuple(f)
        readers = {}
        for st in steps:
            for s in st.ins:
                readers[s] = readers.get(s, 0) + 1
        for s in self.output_slots:
            readers[s] = readers.get(s, 0) + 1
        # Slots whose gradient arrives from more than one reader: added up, into a buffer the
        # plan owns (a layer may hand the same array to two inputs, as Add does).
        self.fan_in = {s for s, n in readers.items() if n > 1}
        self.readers = readers
        self.steps = steps
        _fuse_activations(steps, readers, calls, set(self.output_slots))
        if FUSE_DENSE_ACTIVATION:
            _fuse_dense_activation(steps, readers, calls, set(self.output_slots))
        if FUSE_CONV_POOL:
            _fuse_conv_pool(steps, readers, calls, set(self.output_slots))
        self._prepared_for = None
        self._inference_steps = None
        self.output_masks = [None] * len(self.output_slots)

    def prepare_backward(self, input_grads_needed):
        key = (input_grads_needed,
               tuple(bool(st.layer.trainable_weights) for st in self.steps),
               tuple(id(getattr(st.layer, "activity_regularizer", None)) for st in self.steps))
        if key == self._prepared_for:
            return
        upstream = [False] * self.nslots
        for s in self.input_slots:
            upstream[s] = input_grads_needed
        for st in self.steps:
            needed = [s for s in st.ins if upstream[s]]
            st.needs_input_grad = bool(needed)
            st.layer.needs_input_grad = st.needs_input_grad
            st.input_grad_slots = tuple(s if upstream[s] else None for s in st.ins)
            own = bool(st.layer.trainable_weights)
            st.backprop = own or st.needs_input_grad
            st.activity = getattr(st.layer, "activity_regularizer", None)
            for s in st.outs:
                upstream[s] = st.backprop
        # Backward visits steps last to first, so a layer's first backprop step is where its
        # grads are complete (summed over every call of a shared layer).
        seen = set()
        for st in self.steps:
            st.grads_final = st.backprop and bool(st.layer.trainable_weights) \
                and id(st.layer) not in seen
            if st.backprop:
                seen.add(id(st.layer))
        self._prepared_for = key

    # -- inference ------------------------------------------------------------------------
    def inference_steps(self):
        """The steps as inference runs them: a Dense or Conv2D (linear, called once) whose
        output only a BatchNormalization reads becomes one step with the normalization folded
        into its kernel and bias, and an Activation layer reading only that takes its place in
        the same op's epilogue. Built once; the folded weights follow weight changes."""
        if self._inference_steps is not None:
            return self._inference_steps
        outputs = set(self.output_slots)
        only_reader = {}
        for j, st in enumerate(self.steps):
            for s in st.ins:
                only_reader.setdefault(s, []).append(j)
        calls = {}
        for st in self.steps:
            calls[id(st.layer)] = calls.get(id(st.layer), 0) + 1

        def sole_reader(slot):
            readers = only_reader.get(slot, [])
            if slot in outputs or len(readers) != 1:
                return None
            return self.steps[readers[0]]

        out, skip = [], set()
        for j, st in enumerate(self.steps):
            if j in skip:
                continue
            layer = st.layer
            bn = sole_reader(st.outs[0]) if not st.multi_out else None
            if (type(layer).__name__ in ("Dense", "Conv2D", "DepthwiseConv2D")
                    and layer.activation == "linear"
                    and getattr(layer, "_activation_fn", None) is None
                    and calls[id(layer)] == 1 and bn is not None
                    and type(bn.layer).__name__ == "BatchNormalization"
                    and calls[id(bn.layer)] == 1
                    and bn.layer._axis == len(bn.layer.input_shape) - 1):
                act = sole_reader(bn.outs[0])
                fused = None if act is None or calls[id(act.layer)] != 1 else \
                    _epilogue_activation(act.layer)
                if fused is None:
                    act = None
                last = act or bn
                folded = Step(_FoldedLayer(layer, bn.layer, act.layer if act else None, fused),
                              st.ins, last.outs, False, False)
                skip.add(self.steps.index(bn))
                if act is not None:
                    skip.add(self.steps.index(act))
                out.append(folded)
                continue
            act = sole_reader(st.outs[0]) if not st.multi_out else None
            if (type(layer).__name__ == "Add" and st.several and calls[id(layer)] == 1
                    and layer.activity_regularizer is None and act is not None
                    and type(act.layer).__name__ == "Activation"
                    and act.layer.activation != "softmax" and calls[id(act.layer)] == 1
                    and act.layer.activation not in api.ACTIVATIONS_ON_ROWS
                    and act.layer.activity_regularizer is None
                    and act.layer.compute_dtype == layer.compute_dtype):
                # a residual block's close: the sum and its activation in one pass
                out.append(Step(_ActivatedAdd(layer, act.layer), st.ins, act.outs, True,
                                False))
                skip.add(self.steps.index(act))
                continue
            out.append(st)
        keep = set(self.output_slots) | set(self.input_slots)
        last_read = {}
        for j, st in enumerate(out):
            for s in st.ins:
                last_read[s] = j
        frees = [[] for _ in out]
        for s, j in last_read.items():
            if s not in keep:
                frees[j].append(s)
        steps = []
        training_steps = {id(st) for st in self.steps}
        for st, f in zip(out, frees):
            if id(st) in training_steps:  # the training plan keeps its own Step objects
                copy = Step(st.layer, st.ins, st.outs, st.several, st.multi_out)
                st = copy
            st.free_after = tuple(f)
            st.activity = None
            steps.append(st)
        # -- compression (issue 18): a Dense whose kernel is mostly zeros (pruned) predicts
        # through the sparse kernel; pynn.compression.sparse decides, per weight version.
        from pynn.compression.sparse import sparse_inference_layer

        for st in steps:
            st.layer = sparse_inference_layer(st.layer)
            st.makes_mask = makes_mask(st.layer)
        self._inference_steps = steps
        return steps

    def predict(self, inputs):
        """Inference-mode outputs through the folded steps."""
        return self._run(self.inference_steps(), inputs, False)[0]

    # -- running ------------------------------------------------------------------------
    def forward(self, inputs, training):
        """Output values (a list) and, when training, the per-step state backward needs."""
        return self._run(self.steps, inputs, training)

    def _run(self, steps, inputs, training):
        vals = [None] * self.nslots
        for s, x in zip(self.input_slots, inputs):
            vals[s] = x
        saved = [None] * len(steps) if training else None
        masks = [None] * self.nslots  # Keras's masks, one per slot (issue 14)
        # slot -> the fused BatchNormalization step whose output it holds (training, when
        # consumers keep a rebuild of it instead of the array: see _Rebuild)
        rebuildable = {} if training and RECOMPUTE_FUSED else None
        step = None
        try:
            for j, step in enumerate(steps):
                layer = step.layer
                x = [vals[s] for s in step.ins] if step.several else vals[step.ins[0]]
                mask = ([masks[s] for s in step.ins] if step.several
                        else masks[step.ins[0]])
                masked = any(m is not None for m in mask) if step.several else mask is not None
                if step.passthrough or step.pooled:
                    y = x
                elif step.pools is not None:
                    y = layer.call_pooled(x, training, step.pools)
                elif step.fused is not None:
                    if masked and takes_mask(layer):
                        y = layer.call_activated(x, training, *step.fused, mask=mask)
                    else:
                        y = layer.call_activated(x, training, *step.fused)
                elif masked and takes_mask(layer):
                    y = layer.call(x, training=training, mask=mask)
                else:
                    y = layer.call(x, training=training)
                if masked or step.makes_mask:
                    compute = getattr(layer, "compute_mask", None)
                    out_mask = compute(x, mask) if compute is not None else None
                    if not isinstance(out_mask, list):
                        out_mask = [out_mask] * len(step.outs)
                    for s, m in zip(step.outs, out_mask):
                        masks[s] = m
                if step.multi_out:
                    for s, v in zip(step.outs, y):
                        vals[s] = v
                else:
                    vals[step.outs[0]] = y
                if training:
                    cache = layer._cache
                    if step.pool_grad:   # PoolGrad's relu mask: the pool's own output
                        cache = (cache, y)
                    if rebuildable:
                        cache = _rebuild_tokens(cache, step, vals, rebuildable)
                    saved[j] = (cache, y if step.activity is not None else None)
                    layer._cache = None
                    if rebuildable is not None and not step.multi_out:
                        if step.fused is not None and step.activity is None and \
                                type(layer).__name__ == "BatchNormalization":
                            rebuildable[step.outs[0]] = j
                        elif step.passthrough and step.ins[0] in rebuildable:
                            rebuildable[step.outs[0]] = rebuildable[step.ins[0]]
                for s in step.free_after:
                    vals[s] = None
                    masks[s] = None
        except MemoryError as exc:
            shape = _value_shapes(vals, step.ins) if step is not None else "?"
            raise MemoryError(f"Layer '{step.layer.name}' ({type(step.layer).__name__}): out "
                              f"of memory for input shape {shape} ({exc})") from None
        # The outputs' masks (issue 14): the model's losses skip masked entries, as Keras's.
        self.output_masks = [masks[s] for s in self.output_slots]
        return [vals[s] for s in self.output_slots], saved

    def backward(self, output_grads, saved, on_grads_final=None):
        """Back-propagate ``output_grads`` (one per output; None where no loss reaches it);
        fills every trainable variable's grad (summed over a shared layer's calls) and
        returns the input gradients (None where not needed). Also returns the activity
        regularization penalty met on the way. ``on_grads_final(layer)`` is called as soon as
        a layer's grads are complete, while earlier layers still back-propagate (data-parallel
        training starts reducing them there)."""
        b = backend.current()
        grads = [None] * self.nslots
        owned = set()
        penalty = 0.0
        for s, g in zip(self.output_slots, output_grads):
            if g is not None:
                _accumulate(b, grads, owned, self.fan_in, s, g)
        shared_sums = {}
        step = None
        try:
            for j in range(len(self.steps) - 1, -1, -1):
                step = self.steps[j]
                if not step.backprop:
                    continue
                layer = step.layer
                if step.multi_out:
                    dys = [grads[s] for s in step.outs]
                    if all(d is None for d in dys):
                        continue
                    dy = [d if d is not None else None for d in dys]
                else:
                    dy = grads[step.outs[0]]
                    if dy is None:
                        continue
                cache, activity_y = saved[j]
                saved[j] = None
                if type(cache) is tuple and _Rebuild in map(type, cache):
                    cache = tuple(e.value(self.steps, saved) if type(e) is _Rebuild else e
                                  for e in cache)
                if step.activity is not None:
                    if type(dy) is PoolGrad:
                        dy = dy.dense(b)
                    dy, extra = _add_activity_grad(b, dy, activity_y, step.activity)
                    penalty += extra
                if step.passthrough:
                    dx = dy  # the fused producer takes dy through the activation
                elif step.pool_grad:
                    (argmax, shape), pooled = cache
                    dx = PoolGrad(layer, dy, argmax, pooled, shape)
                else:
                    layer._cache = cache
                    layer.needs_input_grad = step.needs_input_grad
                    if step.act_below is not None:
                        layer._act_below = step.act_below
                        try:
                            dx = layer.backward(dy)
                        finally:
                            layer._act_below = None
                    else:
                        dx = layer.backward(dy)
                    layer._cache = None
                for s in step.outs:
                    grads[s] = None
                if step.shared:
                    _sum_shared(b, layer, shared_sums)
                if on_grads_final is not None and step.grads_final:
                    on_grads_final(layer)
                if not step.needs_input_grad:
                    continue
                if step.several:
                    for s, g in zip(step.input_grad_slots, dx):
                        if s is not None and g is not None:
                            _accumulate(b, grads, owned, self.fan_in, s, g)
                else:
                    s = step.input_grad_slots[0]
                    if s is not None and dx is not None:
                        _accumulate(b, grads, owned, self.fan_in, s, dx)
        except MemoryError as exc:
            raise MemoryError(f"Layer '{step.layer.name}' ({type(step.layer).__name__}): out "
                              f"of memory in backward ({exc})") from None
        return [grads[s] for s in self.input_slots], penalty


# A Dense over another's relu output hands it an ActGrad (_fuse_dense_activation); False
# builds plans without (benchmarks' A/B, tests of the equality).
FUSE_DENSE_ACTIVATION = True
# A MaxPooling2D over a Conv2D's output hands the conv a PoolGrad (_fuse_conv_pool); False
# builds plans without (benchmarks' A/B, tests of the equality).
FUSE_CONV_POOL = True
# ... and the conv's step makes the pool's output where no y is needed (conv2d_pool_forward);
# False keeps the two forward ops (benchmarks' A/B).
FUSE_CONV_POOL_FORWARD = True

# A training step keeps what its backward reads. A fused BatchNormalization -> relu keeps
# its input x and statistics; its output, which the next Conv2D keeps as its own input for the
# kernel gradient, is rebuilt from those in backward (batch_norm_apply: the same pass, so the
# same bits) instead of being held from forward to backward: one activation map per residual
# block less at the peak (resnet suite, batch 64: 32 of 117 MiB of saved tensors).
RECOMPUTE_FUSED = True


class _Rebuild:
    """Stands in a saved state for a fused BatchNormalization's output (step ``j``)."""

    __slots__ = ("j",)

    def __init__(self, j):
        self.j = j

    def value(self, steps, saved):
        from pynn import backend

        layer = steps[self.j].layer
        x, mean, inv_std, _, _, activation, alpha, _ = saved[self.j][0]
        if type(x) is _Rebuild:  # that normalization's own input was a rebuilt output
            x = x.value(steps, saved)
        return backend.current().batch_norm_apply(
            x, layer._value(layer.gamma), layer._value(layer.beta), mean, inv_std, layer._axis,
            activation, alpha)


def _rebuild_tokens(cache, step, vals, rebuildable):
    """``cache`` with each element that is a rebuildable input of ``step`` (the very array)
    replaced by its _Rebuild."""
    if type(cache) is not tuple:
        return cache
    for slot in step.ins:
        j = rebuildable.get(slot)
        value = vals[slot]
        if j is not None and value is not None and any(e is value for e in cache):
            cache = tuple(_Rebuild(j) if e is value else e for e in cache)
    return cache


def _fuse_activations(steps, readers, calls, outputs):
    """A BatchNormalization or Add whose output only an Activation('relu') reads runs the
    relu in its own pass, and the Activation's step passes values and gradients through,
    with the same bits (tests/test_normalization.py). BatchNormalization
    also takes dy back through the relu inside its backward passes (batch_norm_backward's
    activation): the relu's forward pass, its backward pass and its saved output are gone.
    Add (a residual block's closing relu) saves the relu's output and runs its backward
    itself: the forward pass and the saved sum are gone. Only exact types, each called once,
    with no activity regularizer, synchronization or dtype change between them."""
    from pynn.layers.core import Activation
    from pynn.layers.merge import Add
    from pynn.layers.normalization import BatchNormalization

    reader_of = {}
    for st in steps:
        for slot in st.ins:
            reader_of[slot] = st
    for st in steps:
        layer = st.layer
        if type(layer) is BatchNormalization:
            if st.several or layer.synchronized:
                continue
        elif type(layer) is not Add:
            continue
        if st.multi_out or calls[id(layer)] != 1 or layer.activity_regularizer is not None:
            continue
        out = st.outs[0]
        act = reader_of.get(out)
        if out in outputs or readers.get(out) != 1 or act is None:
            continue
        a = act.layer
        if (type(a) is not Activation or a.activation != "relu" or calls[id(a)] != 1
                or act.several or a.activity_regularizer is not None
                or a.compute_dtype != layer.compute_dtype):
            continue
        st.fused = (a.activation, a.alpha)
        act.passthrough = True


def _slot_makers(steps):
    """The step making each slot."""
    return {slot: st for st in steps for slot in st.outs}


def _fuse_dense_activation(steps, readers, calls, outputs):
    """A Dense whose input only it reads, the relu output of a Dense with a bias below it
    (each called once, in one dtype, no activity regularizer below, a named activation),
    hands that layer an ActGrad in backward: dense_backward_input_activation takes its
    input gradient on through the relu and the bias (on the CPU in the product's own column
    bands, while in cache), and the layer below skips its activation_bias_backward. The same
    bits (tests/test_dense.py, tests/test_functional.py). Under mixed_bfloat16 the layers
    take their usual roads (Dense.backward checks)."""
    from pynn.layers.core import Dense

    maker = _slot_makers(steps)
    for st in steps:
        layer = st.layer
        if (type(layer) is not Dense or st.several or st.multi_out or calls[id(layer)] != 1
                or "_activation_fn" in layer.__dict__):
            continue
        slot = st.ins[0]
        below = maker.get(slot)
        if below is None:
            continue
        lb = below.layer
        if (type(lb) is not Dense or below.several or below.multi_out
                or calls[id(lb)] != 1 or "_activation_fn" in lb.__dict__
                or lb.activation != "relu" or not lb.use_bias
                or lb.activity_regularizer is not None or slot in outputs
                or readers.get(slot) != 1 or lb.compute_dtype != layer.compute_dtype):
            continue
        st.act_below = lb


def _fuse_conv_pool(steps, readers, calls, outputs):
    """A MaxPooling2D whose input only a Conv2D's output is (each called once, no activity
    regularizer on the conv) passes the conv a PoolGrad in backward rather than its input
    gradient: the conv's backward (backend conv2d_pool_backward) then makes dz from the
    pool's output gradient, argmax and output, and on the CPU a first layer never writes
    the pool's input gradient nor reads its own output. Where the conv is relu or linear and
    the pool's windows tile its output ('valid', strides >= pool_size), the conv's step makes
    the pool's output in forward too (conv2d_pool_forward), keeping no y. The same bits
    (tests/test_conv.py, tests/test_functional.py)."""
    from pynn.layers.conv import Conv2D

    maker = _slot_makers(steps)
    for st in steps:
        if (type(st.layer) is not MaxPooling2D or st.several or st.multi_out
                or calls[id(st.layer)] != 1):
            continue
        slot = st.ins[0]
        conv = maker.get(slot)
        if (conv is None or type(conv.layer) is not Conv2D or conv.multi_out or conv.several
                or calls[id(conv.layer)] != 1 or slot in outputs or readers.get(slot) != 1
                or conv.layer.activity_regularizer is not None):
            continue
        st.pool_grad = True
        pool = st.layer
        if (FUSE_CONV_POOL_FORWARD and conv.layer.activation in ("relu", "linear")
                and conv.layer.groups == 1
                and pool.padding == "valid" and pool.strides[0] >= pool.pool_size[0]
                and pool.strides[1] >= pool.pool_size[1]):
            # windows that tile the conv's output: its backward never needs y
            conv.pools, st.pooled = pool, True


# -- masks (issue 14, Keras 3's rule): the plan hands a slot's mask to a layer whose call
# takes ``mask=`` and asks every layer that met a mask, or makes its own (compute_mask
# overridden, as Embedding's mask_zero), for its output's mask. The rules live beside Layer
# (pynn.layers.base), where the wrappers that defer to an inner layer's can reach them.


def _epilogue_activation(layer):
    """(name, alpha) of the elementwise activation an Activation or a ReLU layer applies,
    which an op's epilogue can run, or None. ReLU's forms are relu, relu6 (max_value 6:
    MobileNets) and leaky_relu; a threshold or another cap has no code."""
    kind = type(layer).__name__
    if kind == "Activation":
        if (layer.activation in ("softmax", "linear")
                or layer.activation in api.ACTIVATIONS_ON_ROWS
                or getattr(layer, "_activation_fn", None) is not None):
            return None
        return layer.activation, layer.alpha
    if kind == "ReLU" and layer.threshold == 0:
        if layer.max_value is None:
            return ("relu", 0.0) if layer.negative_slope == 0 else \
                ("leaky_relu", float(layer.negative_slope))
        if layer.max_value == 6 and layer.negative_slope == 0:
            return "relu6", 0.0
    return None


class _FoldedLayer:
    """A Dense, Conv2D or DepthwiseConv2D, the inference-mode BatchNormalization after it and
    optionally the Activation or ReLU after that, as one op: kernel and bias folded
    (kernel * gamma / sqrt(var + eps) along the output channels, (bias - mean) * that + beta),
    the activation in the op's epilogue. The folded arrays are recomputed when weights change
    (pynn.variables.version)."""

    def __init__(self, layer, bn, activation, fused=None):
        self.layer, self.bn, self.activation_layer = layer, bn, activation
        self.name = f"{layer.name}+{bn.name}" + (f"+{activation.name}" if activation else "")
        if activation is not None:
            self.activation, self.alpha = fused or (activation.activation, activation.alpha)
        else:
            self.activation, self.alpha = "linear", 0.0
        self._key = None
        self._folded = None

    def _weights(self):
        layer, bn = self.layer, self.bn
        values = [layer.kernel.value, layer.bias.value if layer.use_bias else None,
                  None if bn.gamma is None else bn.gamma.value,
                  None if bn.beta is None else bn.beta.value,
                  bn.moving_mean.value, bn.moving_variance.value]
        key = (variables.version(), backend.current().NAME) + tuple(id(v) for v in values)
        if key != self._key:
            b = backend.current()
            host = [None if v is None else np.asarray(b.to_numpy(v), np.float64)
                    for v in values]
            gamma = host[2] if host[2] is not None else np.ones(host[4].shape)
            beta = host[3] if host[3] is not None else np.zeros(host[4].shape)
            scale = gamma / np.sqrt(host[5] + bn.epsilon)
            bias = host[1] if host[1] is not None else np.zeros(host[4].shape)
            # the output channels: a depthwise kernel's (C, depth_multiplier) axes
            depthwise = type(layer).__name__ == "DepthwiseConv2D"
            kernel = host[0] * (scale.reshape(host[0].shape[-2:]) if depthwise else scale)
            folded_bias = (bias - host[4]) * scale + beta
            dtype = layer.dtype
            self._folded = (b.asarray(kernel.astype(dtype), dtype),
                            b.asarray(folded_bias.astype(dtype), dtype))
            self._key = key
        return self._folded

    def compute_mask(self, inputs, mask=None):
        return mask  # Dense, Conv2D, BatchNormalization and Activation all pass it on (Keras)

    def call(self, x, training=False):
        b = backend.current()
        kernel, bias = self._weights()
        layer = self.layer
        if type(layer).__name__ == "Conv2D":
            y, _ = b.conv2d_forward(x, kernel, bias, layer.strides, layer.padding,
                                    layer.dilation_rate, self.activation, self.alpha)
            return y
        if type(layer).__name__ == "DepthwiseConv2D":
            y, _ = b.depthwise_conv2d_forward(x, kernel, bias, layer.strides, layer.padding,
                                              layer.dilation_rate, self.activation, self.alpha)
            return y
        lead = tuple(x.shape[:-1])
        x2 = x if x.ndim == 2 else b.reshape(x, (-1, x.shape[-1]))
        y, _ = b.dense_forward(x2, kernel, bias, self.activation, self.alpha)
        return y if x.ndim == 2 else b.reshape(y, lead + (y.shape[-1],))


class _ActivatedAdd:
    """An Add and the Activation that alone reads it, as one inference step: the sum and
    the activation in one pass (Add.call_activated, the training plan's fusion)."""

    def __init__(self, add, activation):
        self.layer, self.activation_layer = add, activation
        self.name = f"{add.name}+{activation.name}"
        self.activation, self.alpha = activation.activation, activation.alpha

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def call(self, x, training=False):
        return self.layer.call_activated(x, False, self.activation, self.alpha)


def _add_activity_grad(b, dy, y, reg):
    """dy plus the gradient of Keras's activity penalty, reg(y) / batch size; and that penalty.
    Off the hot path (only layers given an activity_regularizer), so plain passes."""
    n = max(int(y.shape[0]), 1)
    scratch = b.zeros(tuple(y.shape), y.dtype)
    penalty = reg.apply_inplace(y, scratch) / n
    b.scale_inplace(scratch, 1.0 / n)
    out = b.copy(dy)
    b.add_inplace(out, scratch)
    return out, penalty


def _accumulate(b, grads, owned, fan_in, s, g):
    current = grads[s]
    if current is None:
        grads[s] = g
        return
    if s not in owned:
        # A fresh sum in one pass (read both, write one) rather than a copy then an add:
        # the gradient of a residual shortcut meets here every step. (resnet branch)
        owned.add(s)
        grads[s] = b.merge_forward([current, g], "add")
        return
    b.add_inplace(current, g)


def _sum_shared(b, layer, sums):
    """A shared layer's backward assigned its grads for this call only: add them to those of
    its calls already back-propagated."""
    for v in layer.trainable_weights:
        if v.grad is None:
            continue
        total = sums.get(id(v))
        if total is None:
            sums[id(v)] = b.copy(v.grad)
            v.grad = sums[id(v)]
        else:
            b.add_inplace(total, v.grad)
            v.grad = total


def _value_shapes(vals, slots):
    shapes = [tuple(vals[s].shape) for s in slots if vals[s] is not None]
    if len(shapes) == 1:
        return shape_str((None,) + shapes[0][1:])
    return "[" + ", ".join(shape_str((None,) + s[1:]) for s in shapes) + "]"


def count_params(layers):
    return sum(math.prod(v.shape) for layer in layers for v in layer.weights)
