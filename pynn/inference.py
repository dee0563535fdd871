"""Prepared inference plans (issue 16): batch-1 predict without per-layer Python overhead.

A model answering requests calls ``model(x)`` or ``predict_on_batch`` with the same input
shape again and again, often from many threads. The general path (``Plan.predict`` in
pynn.layers.functional) re-validates every operand of every op and allocates every
intermediate on each call: for the 784-256-128-10 MLP at batch 1 that Python work cost more
than its three GEMMs. Here a model gets one ``InferencePlan`` per input signature (the shapes
of its inputs), made on the first call with that signature:

- the steps are the model's inference steps (BatchNormalization already folded into the
  Conv2D or Dense before it, a following Activation fused into that op's epilogue:
  ``Plan.inference_steps``), validated once by running the public ops on the first call;
- Dense, Conv2D, MaxPooling2D and Flatten then call the native kernels' buffer-taking entry
  points directly (no operand checks, no geometry, no allocation), each into an output
  buffer owned by the calling Python thread (``threading.local``), so threads sharing one
  model never share a buffer; any other layer runs its own ``call`` as before. Each direct
  call is checked once against the public op's bits on the first input: a kernel module
  whose private entry points changed costs speed, never a wrong answer;
- on one thread a run of float32 Dense layers is one native call (native/infer.pyx), with
  no Python and no GIL between the layers (one row: a streaming GEMV, native/_gemv.h);
  a batch-1 plan that is only such a chain (an MLP) is the model's *lane*: ``model(x)``
  and ``predict_on_batch`` hand x straight to the chain's ``predict_one``, which checks
  it, allocates the output and runs the chain without the GIL, in one call;
- on one thread, float32 max pooling and linear/relu Conv2D run native/infer.pyx's twins
  of the pool.pyx/conv.pyx kernels (no argmax; packed panels, pixel offsets and zero pad
  margins made once; a conv the op runs by Winograd with its kernel transformed once), each
  accepted only if it gives the kernel's bits on the first input;
- a small Conv2D step keeps the faster of its direct runner and the public op (which may
  pick another algorithm), timed once when the plan is made (``TUNE_MAX_MACS``);
- the arrays returned are the caller's: a model output is written into a fresh array (or
  copied out when a layer returned a view of a plan buffer), never into a buffer a later
  call overwrites (onnxruntime's rule);
- a plan whose arithmetic is too small for a second thread to pay runs on one OpenMP
  thread (``SERIAL_MAX_MACS``, ``SERIAL_MAX_MACS_BATCHED`` for several rows, measured in
  bench/bench_inference.py); a batch-1 lane (an MLP's DenseChain, a CNN's Program) instead
  splits its large layers over pynn's worker team itself, call by call, while requests come
  close together (the team's workers still awake from the last one; each thread keeps the
  same share of each layer, so its weights stay in that core's cache), and runs alone
  after a pause (waking a sleeping worker costs more than the split saves);
- a larger batch whose intermediates outgrow the cache runs its convolutional prefix a
  chunk of samples at a time through a plan made for the chunk, then its Dense suffix on
  the whole batch (``CHUNK_BYTES``): each chunk's activations stay in L2;
- static and dynamic int8 layers (pynn.layers.quantized) call native/quant.pyx's GEMM and
  conv entry points with their weight sums and buffers made once; at batch 1 a static int8
  Dense is one native call (quant.Int8Row), and a plan of such steps (and a float head) is
  the model's lane (_int8_lane);
- a one-row Dense reading a relu's output (or whose first request had zeros) skips the
  kernel rows of its input's zeros (native/_gemv.h pynn_gemv_skip_f; the same sums over
  the other rows);
- it is rebuilt when weights may have changed (``pynn.variables.version``: set_weights, an
  optimizer step, a load) or the shapes change (a new signature, at most ``MAX_SIGNATURES``
  kept per model, the least recently used evicted first; a model with a free length, or
  one holding that many already, makes a new signature's plan the second time it comes;
  a model with a free length keeps ``MAX_SIGNATURES_FREE``).

A model with masks (an Embedding(mask_zero=True), a Masking layer) carries them from step to
step as the general path does, each step that needs its input mask taking it; one sample
with a partial mask runs a recurrent layer over its kept steps alone (a padded request costs
its real length: pynn.layers.recurrent.unmasked_steps). Integer inputs (token ids) take the
plan when they come in the input's dtype or one that casts to it safely.

The CPU backend only: on OpenCL (and for subclassed models or other input types)
``outputs`` returns None and the model takes its general path. Every
kernel used releases the GIL for its arithmetic; only the glue between them holds it.
"""

import collections
import functools
import os
import threading
import time
import weakref

import numpy as np

from pynn import _config, backend, variables

# variables.version()'s cell, read directly on the batch-1 lane (a call costs ~60 ns there).
_weights_version = variables._version

# Signatures (input shapes) kept per model; predict's last, shorter batch is a second one.
MAX_SIGNATURES = 8
# A model whose inputs have a free length (Input((None,)): text, sequences) meets a new
# signature with each new request length: a plan is made for one only when it comes a second
# time (the first call takes the general path, which a plan's making costs twice over), and
# up to this many stay, the least recently used going first. Requests of random lengths
# 5-59 through an Embedding -> LSTM(128) model, one thread: 387 us a call when each new
# length made a plan (and the ninth cleared them all), 145 on the general path. A model of
# fixed shapes plans each new batch size at once until it holds MAX_SIGNATURES, then by the
# same second-time rule, evicting the least recently used.
MAX_SIGNATURES_FREE = 64
SEEN_SIGNATURES = 256  # lengths met once, remembered for the second-time rule
# Per-thread buffers are kept only for plans whose intermediates fit in this many bytes; a
# larger batch allocates per call, from the host memory pool (RECYCLE_MIN_BYTES): a residual
# CNN's batch-64 plan kept 57 MB per calling thread under a 64 MiB cap; allocating its live
# intermediates per call measured the same (26.8 / 26.4 ms; the small CNN 3.07-3.25 /
# 2.97-3.20 ms, Intel, two threads).
BUFFER_CAP_BYTES = 16 << 20
# Plans whose intermediates take at least this many bytes run on recycled host memory
# (backend.host_memory_loop): a residual CNN's batch-64 predict after training took 36 MB
# of fresh pages beside the training step's idle blocks.
RECYCLE_MIN_BYTES = 4 << 20
# Below this many multiply-adds per call a second OpenMP thread costs more (waking it, the
# barrier, the cache traffic) than it saves. bench/bench_inference.py --serial-threshold, AMD
# EPYC, 2 cores shared with other work, median us per call on one thread / two: MLP batch 1
# (0.23 M) 27 / 200, batch 8 (1.9 M) 50 / 251, batch 64 (15 M) 387 / 449; CNN batch 1
# (6.1 M) 295 / 727, batch 8 (49 M) 1491 / 1279, batch 64 (392 M) 10461 / 6027. On a busy
# machine the second thread's wake-up is what costs; a quiet one crosses over lower.
SERIAL_MAX_MACS = 25_000_000
# The same for several rows (pynn's worker team, not OpenMP, runs a plan's parallel steps
# since the nineteenth session: waking it costs ~1 us). Intel Xeon, 2 threads, calls back to
# back, median us one thread -> two: MLP 784-256-128-10 batch 64 (15 M) 201 -> 119, batch 8
# (1.9 M) 30 -> 31; small CNN batch 8 (49 M) 860 -> 626. Batch 1 keeps SERIAL_MAX_MACS: its
# lane splits its own large layers (native/infer.pyx) when requests come close together.
SERIAL_MAX_MACS_BATCHED = 4_000_000

_NO_PLAN = object()  # a model the plan cannot serve (cached, so the check runs once)


class _NotDirect(Exception):
    """A step the direct kernel call does not cover (mixed dtypes, an unusual layout)."""


def outputs(model, x):
    """The model's outputs for ``x`` (an array, or a list or dict of them by input) as a list,
    one array per output, through its prepared plan; or None when the plan does not apply
    and the caller must take the general path. Errors in ``x`` are left to that path, which
    words them."""
    state = model.__dict__.get("_inference")
    # The batch-1 lane (an MLP answering one request): one native call checks x and returns
    # the fresh output, or None for any other x. Valid while nothing it depends on changed.
    if type(state) is _State and state.lane_version == _weights_version[0] and \
            state.graph_plan is model._plan and backend._current is state.cpu:
        y = state.lane(x)
        if y is not None:
            return [y]
    return _outputs(model, state, x)


def _outputs(model, state, x):
    if backend.current().NAME != "cpu":
        return None
    if state is None or (state is not _NO_PLAN and state.graph_plan is not model._plan):
        state = model._inference = _State.of(model)
    if state is _NO_PLAN:
        return None
    # The common case first, in a few attribute reads: one C-contiguous array of the
    # model's dtype and feature shape.
    if (type(x) is np.ndarray and state.single and x.dtype == state.dtypes[0]
            and x.flags.c_contiguous and x.shape[1:] == state.features[0] and len(x)):
        xs, signature = [x], x.shape
    else:
        if type(x) is np.ndarray and state.single:
            # token ids of another dtype than the model's float input: a lane takes them as
            # they come (converted, the text model's 2,048 float ids cost 10 us more)
            plan = state.plans.get(x.shape)
            if plan is not None and plan.lane is not None and \
                    plan.version == variables.version():
                y = plan.lane(x)
                if y is not None:
                    if len(state.plans) > 1:
                        state.plans.move_to_end(x.shape)
                    return [y]
        xs = state.inputs(x)
        if xs is None:
            return None
        signature = tuple(a.shape for a in xs) if len(xs) > 1 else xs[0].shape
    plans = state.plans
    plan = plans.get(signature)
    cap = MAX_SIGNATURES_FREE if state.free else MAX_SIGNATURES
    if plan is not None:
        if len(plans) > 1:
            plans.move_to_end(signature)  # the least recently used goes first
    elif (state.free or len(plans) >= cap) and signature not in state.seen:
        # a first sighting where a plan would be one of many (a free length) or evict
        # another: the general path, which costs less than making a plan
        state.seen[signature] = None
        if len(state.seen) > SEEN_SIGNATURES:
            state.seen.popitem(last=False)
        return None
    if plan is None or plan.version != variables.version():
        if plan is None and len(plans) >= cap:
            plans.popitem(last=False)
        # The validating run's intermediates on recycled host memory: after training, the
        # pool's idle blocks (a residual CNN's step leaves ~130 MB) instead of fresh pages.
        with backend.host_memory_loop():
            plan = InferencePlan(model, xs)
        state.plans[signature] = plan
        if plan.lane is not None and (len(xs[0]) == 1 or state.lane_rows != 1):
            # one slot, the batch-1 lane's first (a batch's lane serves its plan's run too)
            state.lane, state.lane_version = plan.lane, plan.version
            state.lane_rows = len(xs[0])
        # The validating run through the public ops computed this call's outputs already.
        outs, plan.first_outputs = plan.first_outputs, None
        return outs
    if plan.nbytes >= RECYCLE_MIN_BYTES:
        # (a batch-1 plan skips the scope's ~1.3 us) its intermediates from the pool
        with backend.host_memory_loop():
            return plan.run(xs)
    return plan.run(xs)


class _State:
    """What a model's calls check their inputs against, and its plans by input signature."""

    @classmethod
    def of(cls, model):
        from pynn.layers.functional import Plan

        if model._traced or not isinstance(model._plan, Plan):
            return _NO_PLAN
        inputs = model.inputs
        dtypes = [np.dtype(t.dtype) for t in inputs]
        if any(d.kind not in "fiu" for d in dtypes):
            return _NO_PLAN
        return cls(model, dtypes, [tuple(t.shape[1:]) for t in inputs])

    def __init__(self, model, dtypes, features):
        self.graph_plan = model._plan
        self.names = model.input_names
        self.dtypes, self.features = dtypes, features
        self.single = len(dtypes) == 1
        # a free length among the inputs' feature axes: the signatures' second-time rule
        self.free = any(d is None for f in features for d in f)
        self.plans = collections.OrderedDict()
        self.seen = collections.OrderedDict()
        self.cpu = backend.current()
        self.lane, self.lane_version, self.lane_rows = None, None, None

    def inputs(self, x):
        """x as a list of C-contiguous arrays of the model's input dtypes and shapes, or
        None for anything else (the general path converts or words the error)."""
        if type(x) is np.ndarray:
            if not self.single:
                return None
            xs = [x]
        elif isinstance(x, (list, tuple)) and len(x) == len(self.dtypes) and len(x) > 1:
            xs = list(x)
        elif isinstance(x, dict) and len(x) == len(self.dtypes):
            try:
                xs = [x[name] for name in self.names]
            except KeyError:
                return None
        else:
            return None
        out, n = [], None
        for dtype, features, a in zip(self.dtypes, self.features, xs):
            if (type(a) is not np.ndarray or a.dtype.kind not in "fiub"
                    or a.ndim != len(features) + 1 or a.shape[0] == 0
                    or (n is not None and a.shape[0] != n)):
                return None
            if any(e is not None and e != s for e, s in zip(features, a.shape[1:])):
                return None
            n = a.shape[0]
            if a.dtype != dtype and dtype.kind != "f" and not np.can_cast(a.dtype, dtype):
                return None  # ids of a wider or float type: the general path checks them
            if a.dtype != dtype or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=dtype)
            out.append(a)
        return out


# A multi-thread plan below this many multiply-adds keeps the OpenMP workers' cores awake
# for 0.1 s after each call (pynn._config.keep_warm, as a training loop does; PYNN_KEEP_WARM=0
# turns it off): its many short regions otherwise each wake a sleeping worker. The bench's
# residual CNN on two threads (Intel Xeon, medians of 7 alternated rounds): batch 1 (72 M)
# 1,561 -> 1,365 us, batch 8 (577 M) 6,777 -> 6,572; batch 64 (4.6 G) 36.4 -> 38.9 ms, so
# not there.
KEEP_WARM_MAX_MACS = 200_000_000


class InferencePlan:
    """One model, one input signature, one weight version: the steps with their kernels'
    arguments resolved. ``run`` is safe from any number of threads at once."""

    def __init__(self, model, xs, chunkable=True):
        self.version = variables.version()
        graph_plan = model._plan
        self.input_slots = list(graph_plan.input_slots)
        self.output_slots = list(graph_plan.output_slots)
        self.nslots = graph_plan.nslots
        self._local = threading.local()
        self.chunked = None  # (_chunked_plan) set once the steps are made
        from pynn.layers.base import takes_mask as layer_takes_mask

        steps = graph_plan.inference_steps()
        # Validation: the public ops on real inputs, once. Their errors surface here with
        # their usual wording, and the shapes they produce size the buffers.
        vals = [None] * self.nslots
        for s, x in zip(self.input_slots, xs):
            vals[s] = x
        self.steps, self.macs, nbytes = [], 0, 0
        serial_max = (SERIAL_MAX_MACS if len(xs[0]) <= 1
                      else min(SERIAL_MAX_MACS, SERIAL_MAX_MACS_BATCHED))
        # (output slot, bytes per sample) of each step: where a chunked run may split
        sample_bytes = []
        frees = _frees([(st.ins, st.outs) for st in steps], self.input_slots,
                       self.output_slots)
        masks = [None] * self.nslots  # Keras's masks, carried as the general path does
        for st, free in zip(steps, frees):
            x = [vals[s] for s in st.ins] if st.several else vals[st.ins[0]]
            mask = [masks[s] for s in st.ins] if st.several else masks[st.ins[0]]
            masked = any(m is not None for m in mask) if st.several else mask is not None
            takes_mask = masked and layer_takes_mask(st.layer)
            try:
                if takes_mask:
                    y = st.layer.call(x, training=False, mask=mask)
                else:
                    y = st.layer.call(x, training=False)
            except MemoryError as exc:
                raise _out_of_memory(st.layer, x, exc) from None
            if not st.multi_out and type(y) is np.ndarray and y.ndim and len(y):
                sample_bytes.append((st.outs[0], y.nbytes // len(y)))
            else:
                sample_bytes.append((None, 0))
            if takes_mask:
                runner = _masked_runner(st, x, y, mask)
            else:
                runner = _checked(_runner(st, x, y), st, x, y)
            if masked or st.makes_mask:
                out_masks = _out_masks(st.layer, x, mask, len(st.outs))
                for s, m in zip(st.outs, out_masks):
                    masks[s] = m
                # (makes_mask says "may": a pruning stand-in's wrapped Dense makes none)
                if masked or any(m is not None for m in out_masks):
                    runner.carries_mask, runner.takes_mask = True, takes_mask
            if not runner.macs and hasattr(st.layer, "inference_macs"):
                # (q8) a layer running its own call that states its arithmetic (the int8
                # layers): a plan of them is not taken for one too small for two threads
                runner.macs = int(st.layer.inference_macs(x))
            self.macs += runner.macs
            nbytes += runner.nbytes
            self.steps.append(runner)
            if self.macs >= serial_max:
                # Only Dense steps, Adds, Embeddings and 1-D average poolings are fused
                # (_chained, _residual_chained and _embedding_means check against their
                # samples); a large plan need not hold the other steps' validation arrays.
                for r in self.steps:
                    if type(r) is not _Dense and not _fusable(r):
                        r.sample = None
            if st.multi_out:
                for s, v in zip(st.outs, y):
                    vals[s] = v
            else:
                vals[st.outs[0]] = y
            x = None
            for s in free:
                vals[s] = masks[s] = None
        self.first_outputs = [vals[s] for s in self.output_slots]
        outputs = set(self.output_slots)
        for r in self.steps:
            r.to_caller = [s in outputs for s in r.outs]
        # A chain (a Sequential's usual form): each step reads the one before it, the last
        # makes the one output; run without slot bookkeeping.
        slot = self.input_slots[0]
        self.chain = len(self.input_slots) == 1 and len(self.output_slots) == 1
        for r in self.steps:
            self.chain = self.chain and not (r.several or r.multi_out) and r.ins[0] == slot
            slot = r.outs[0]
        self.chain = self.chain and slot == self.output_slots[0]
        self.keep_buffers = nbytes <= BUFFER_CAP_BYTES
        self.nbytes = nbytes
        self.serial = self.macs < serial_max
        # A model with masks runs its steps one by one with their masks, up to the last step
        # that carries one; the fusions below take only the steps after it (a text model's
        # classifier head), which see no mask.
        carriers = [j for j, r in enumerate(self.steps) if r.carries_mask]
        self.masked = bool(carriers)
        head, self.steps = (self.steps[:carriers[-1] + 1], self.steps[carriers[-1] + 1:]) \
            if carriers else ([], self.steps)
        if self.masked:
            self.chain = False  # the masks go through the graph's run
        if self.chain:
            self.steps = _chained(_embedding_means(self.steps), parallel=not self.serial)
        else:
            self.steps = _residual_chained(self.steps, self.output_slots,
                                           parallel=not self.serial)
        if self.serial:
            self.steps = [_serial_twin(r) for r in self.steps]
        self.steps = head + [_tuned(r) for r in self.steps]
        if not self.serial and PAIR_CONV_POOL and not self.masked:
            self.steps = _paired_conv_pool(self.steps, self.output_slots)
        for r in self.steps:
            r.sample = r.own = None  # the validation arrays, no longer needed
        # A batch-1 plan that is one Dense chain runs no OpenMP and no BLAS (_gemv.h): its
        # chain's own entry point is the whole call, thread settings and buffers included.
        self.lane = None
        # (also a residual MLP's graph, which one DenseChain program runs whole)
        if len(self.steps) == 1 and type(self.steps[0]) is _DenseChainRunner \
                and self.steps[0].chain.rows == 1 \
                and list(self.steps[0].ins) == self.input_slots \
                and list(self.steps[0].outs) == self.output_slots:
            self.lane = self.steps[0].chain.predict_one
        # Each intermediate is dropped after its last reader, as the general path does: a
        # plan too large to keep its buffers then holds only the live values (the residual
        # CNN at batch 64 peaked 156 MiB higher holding every layer's output to the end).
        self.frees = _frees([(r.ins, r.outs) for r in self.steps], self.input_slots,
                            self.output_slots)
        if self.lane is None and self.chain and self.serial and self.keep_buffers:
            self.lane = _program(self, xs[0])
        if self.lane is None and self.chain:
            self.lane = _embedding_lane(self, xs[0])
        if self.lane is None and self.masked:
            self.lane = _masked_sequence_lane(self, xs)
        if self.lane is None and self.chain and self.chunked is None:
            self.lane = _int8_lane(self, xs[0])
        if chunkable and self.chain and not self.serial:
            self.chunked = _chunked_plan(model, self, xs[0], sample_bytes)
            if self.chunked is not None:
                # The caller gets the chunked run's bits from the first call on.
                self.first_outputs = self._run_chunked(xs[0])
        if self.chunked is None and any(type(r) is _DenseChainRunner for r in self.steps):
            # A DenseChain sums in its own order (a GEMV at batch 1, the rows product
            # above it), not BLAS's: the first call answers with the plan's bits too, so
            # one input gets one answer on every call (on Zen 3's OpenBLAS the MLP
            # 784-256-128-10's first answer differed from the later ones by 2e-6).
            self.first_outputs = self.run(xs)

    def _run_chunked(self, x):
        """The chain on x, its prefix a chunk of samples at a time (_chunked_plan)."""
        sub, prefix, suffix, chunk = self.chunked
        n = x.shape[0]
        sub_bufs = sub._buffers()
        mid = None
        for start in range(0, n, chunk):
            y = x[start:start + chunk]
            for j, r in enumerate(prefix):
                y, _ = r.run(y, sub_bufs[j] if sub_bufs is not None else r.allocate())
            if mid is None:
                mid = np.empty((n,) + y.shape[1:], y.dtype)
            mid[start:start + chunk] = y
        bufs = None
        if self.keep_buffers:  # the suffix's alone: the prefix runs in the chunk plan's
            bufs = getattr(self._local, "suffix_bufs", None)
            if bufs is None:
                bufs = self._local.suffix_bufs = [r.allocate() for r in suffix]
        y, owned = mid, False
        for j, r in enumerate(suffix):
            y, into_buffer = r.run(y, bufs[j] if bufs is not None else r.allocate())
            owned = owned or into_buffer
        return [np.array(y) if owned else y]

    def _buffers(self):
        """The calling thread's kept buffers, or None: each step then allocates its own
        when it runs, so only the live intermediates take memory."""
        if not self.keep_buffers:
            return None
        local = self._local
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = [r.allocate() for r in self.steps]
        return bufs

    def run(self, xs):
        """The outputs for xs (validated by the caller against this plan's signature)."""
        if self.lane is not None and len(xs) == 1:
            y = self.lane(xs[0])
            if y is not None:
                return [y]
        _config.apply_to_this_thread()
        threads = _config._omp_threads
        if not self.serial and threads > 1 and self.macs < KEEP_WARM_MAX_MACS:
            _config.keep_warm()
        if self.serial and threads > 1:
            from pynn._native import info

            info.set_num_threads(1)
            try:
                return self._run(xs)
            finally:
                info.set_num_threads(threads)
        return self._run(xs)

    def _run(self, xs):
        r, x = self.steps[0] if self.steps else None, xs[0]
        try:
            if self.chunked is not None:
                return self._run_chunked(x)
            bufs = self._buffers()
            if self.chain:
                y, owned = xs[0], False
                for j, r in enumerate(self.steps):
                    x = y
                    y, into_buffer = r.run(x, bufs[j] if bufs is not None else r.allocate())
                    owned = owned or into_buffer
                return [np.array(y) if owned else y]
            vals = [None] * self.nslots
            masks = [None] * self.nslots if self.masked else None
            # Whether a slot's value is (or views) memory a later call of this thread reuses.
            owned = [False] * self.nslots
            for s, v in zip(self.input_slots, xs):
                vals[s] = v
            for j, r in enumerate(self.steps):
                buf = bufs[j] if bufs is not None else r.allocate()
                if r.several:
                    x = [vals[s] for s in r.ins]
                    inherited = any(owned[s] for s in r.ins)
                else:
                    x = vals[r.ins[0]]
                    inherited = owned[r.ins[0]]
                if r.carries_mask:
                    mask = [masks[s] for s in r.ins] if r.several else masks[r.ins[0]]
                    y, into_buffer = (r.run_masked(x, mask, buf) if r.takes_mask
                                      else r.run(x, buf))
                    for s, m in zip(r.outs, _out_masks(r.layer, x, mask, len(r.outs))):
                        masks[s] = m
                else:
                    y, into_buffer = r.run(x, buf)
                if r.multi_out:
                    for s, v in zip(r.outs, y):
                        vals[s], owned[s] = v, inherited
                else:
                    s = r.outs[0]
                    vals[s], owned[s] = y, into_buffer or inherited
                x = buf = y = None
                for s in self.frees[j]:
                    vals[s] = None
                    if masks is not None:
                        masks[s] = None
            return [np.array(vals[s]) if owned[s] else vals[s] for s in self.output_slots]
        except MemoryError as exc:  # the per-call buffers of a plan too large to keep them
            raise _out_of_memory(r.layer, x, exc) from None


# A batch whose largest intermediate outgrows the cache runs its convolutional prefix a
# chunk of samples at a time, each chunk's intermediates staying in L2 (this many bytes of
# the largest per OpenMP thread), then the rest (the Dense layers, whose weights are read
# once per call) on the whole batch. Small CNN, batch 64, AMD EPYC: one thread, whole batch
# 9.61 ms, chunks of 8 7.63, 16 7.70, 32 8.46; two threads, whole 5.27, chunks of 16 6.86
# (too little work per chunk for two), 32 4.61.
CHUNK_BYTES = 2 << 20


def _chunked_plan(model, plan, x, sample_bytes):
    """(chunk plan, its prefix runners, this plan's suffix runners, chunk) for a chunked run
    of ``plan`` on inputs like x, or None where it would not pay or apply: the
    intermediates fit the cache, the batch is under two chunks or has no fitting divisor,
    or the split falls inside a merged step."""
    n = x.shape[0]
    largest = max([b for _, b in sample_bytes] + [x.nbytes // max(n, 1)])
    threads = max(_config._omp_threads or 1, 1)
    target = max(1, CHUNK_BYTES * threads // max(largest, 1))
    # Chunks of one size (a divisor of n, at least half the target): every sample of a
    # batch then takes the same kernels, whatever its place in the batch.
    chunk = next((c for c in range(min(target, n // 2), 0, -1) if n % c == 0), 1)
    if 2 * chunk < target or largest * n <= CHUNK_BYTES * threads:
        return None
    # The prefix ends after the last step that reads or writes a large intermediate (a
    # quarter of the largest or more): past it the batch is cheap to hold whole.
    split, before = None, x.nbytes // n
    for slot, nbytes in sample_bytes:
        if slot is None:
            return None
        if 4 * max(nbytes, before) >= largest:
            split = slot
        before = nbytes
    if split is None or split in plan.output_slots:
        return None
    suffix = [j for j, r in enumerate(plan.steps) if r.ins[0] == split]
    if len(suffix) != 1:
        return None
    sub = InferencePlan(model, [np.ascontiguousarray(x[:chunk])], chunkable=False)
    if sub.serial and threads > 1:
        return None  # a chunk too small for the threads: each would run on one
    prefix = [j for j, r in enumerate(sub.steps) if r.outs[0] == split]
    if len(prefix) != 1:
        return None
    return (sub, sub.steps[:prefix[0] + 1], plan.steps[suffix[0]:], chunk)


def _frees(steps, input_slots, output_slots):
    """For each (ins, outs) step, the slots whose last reader it is (neither a model input
    nor an output)."""
    last = {}
    for j, (ins, _) in enumerate(steps):
        for s in ins:
            last[s] = j
    keep = set(input_slots) | set(output_slots)
    frees = [[] for _ in steps]
    for s, j in last.items():
        if s not in keep:
            frees[j].append(s)
    return [tuple(f) for f in frees]


def _out_of_memory(layer, x, exc):
    """The general path's wording (pynn.layers.functional.Plan._run)."""
    shape = [tuple(a.shape) for a in x] if isinstance(x, list) else tuple(x.shape)
    return MemoryError(f"Layer '{layer.name}' ({type(layer).__name__}): out of memory for "
                       f"input shape {shape} ({exc})")


# -- runners: one per step, its kernel's arguments resolved ------------------------------------
class _Generic:
    """A layer's own ``call`` (the general path's op for this step): checked per call,
    output fresh (or a view of its input)."""

    macs = 0
    nbytes = 0
    # Whether the step's output mask is made each call (its input has one, or it makes one),
    # and whether its values need its input mask (run_masked)
    carries_mask = takes_mask = False

    def __init__(self, step):
        self.layer = step.layer
        self.ins, self.outs = step.ins, step.outs
        self.several, self.multi_out = step.several, step.multi_out

    def allocate(self):
        return None

    def run(self, x, buf):
        return self.layer.call(x, training=False), False

    def run_masked(self, x, mask, buf):
        return self.layer.call(x, training=False, mask=mask), False


class _Buffered(_Generic):
    """A step writing its one output into a buffer of the calling thread, or into a fresh
    array when the output goes to the caller."""

    def __init__(self, step, y):
        super().__init__(step)
        self.shape, self.dtype = tuple(y.shape), y.dtype
        self.nbytes = y.nbytes

    def output(self, buf):
        if self.to_caller[0]:
            return np.empty(self.shape, self.dtype), False
        return buf, True


class _Dense(_Buffered):
    """Dense (or a Dense with BatchNormalization folded in): one GEMM with its bias and
    activation epilogue (native/dense.pyx's one-region product, else GEMM then epilogue)."""

    def __init__(self, step, x, y, kernel, bias, activation, alpha):
        from pynn._native import dense
        from pynn.backend.api import ACTIVATIONS

        super().__init__(step, y)
        _same_dtype(x, kernel, bias)
        self.kernel, self.bias = kernel, bias
        self.act, self.alpha = ACTIVATIONS.index(activation), float(alpha)
        self.rows, self.k = int(np.prod(x.shape[:-1])), int(x.shape[-1])
        self.flat = x.ndim == 2
        self.macs = self.rows * self.k * kernel.shape[1]
        # dense_forward's product and epilogue, by the path its rules pick for the shape:
        # the runner gets its bits
        self._forward_into = dense._forward_into

    def allocate(self):
        return np.empty(self.shape, self.dtype)

    def run(self, x, buf):
        if self.to_caller[0]:
            y, into_buffer = np.empty(self.shape, self.dtype), False
        else:
            y, into_buffer = buf, True
        if self.flat:
            x2, y2 = x, y
        else:
            x2, y2 = x.reshape(self.rows, self.k), y.reshape(self.rows, self.shape[-1])
        self._forward_into(x2, self.kernel, self.bias, y2, y2, self.act, self.alpha)
        return y, into_buffer


# The packed copies of Dense kernels (DenseChain.packed), by kernel, for the weights'
# version they were made at: the plans of every batch size (MAX_SIGNATURES of them) share
# one copy of a model's weights rather than one each. Weak both ways: a copy lives as long
# as a plan uses it, and a kernel's id is trusted only while that kernel lives.
_PACKED = {"version": None, "kernel": weakref.WeakValueDictionary(),
           "packed": weakref.WeakValueDictionary()}


def _packed_kernels(kernels):
    if _PACKED["version"] != variables.version():
        return None
    return [_PACKED["packed"].get(id(k)) if _PACKED["kernel"].get(id(k)) is k else None
            for k in kernels]


def _keep_packed(kernels, packed):
    version = variables.version()
    if _PACKED["version"] != version:
        _PACKED["kernel"].clear()
        _PACKED["packed"].clear()
        _PACKED["version"] = version
    for k, p in zip(kernels, packed):
        _PACKED["kernel"][id(k)], _PACKED["packed"][id(k)] = k, p


class _DenseChainRunner(_Generic):
    """Consecutive float32 Dense steps of a chain plan as one native call (native/infer.pyx:
    no Python and no GIL between the layers). In a plan that runs on several threads the
    rows go in one block per thread, each block through every layer in one parallel region
    (the per-layer ops paid a region, and a wait for the slower thread, per layer): the MLP
    784-512-256-10 at batch 64 on two threads 605 -> 322-368 us (Intel Xeon); alone a 64 x
    4096 -> 128 layer 816 -> 280 us. A row's answer does not depend on the blocks."""

    def __init__(self, denses, parallel=False, program=None, last_step=None):
        """program: DenseChain's (src, dst, res, values) where the layers form a residual
        network (_residual_chained), and last_step the step whose output the chain makes
        (the last layer's Add), else the last layer."""
        from pynn._native.infer import DenseChain

        first, last = denses[0], denses[-1]
        self.ins, self.outs = first.ins, (last_step or last).outs
        self.several = self.multi_out = False
        self.to_caller = (last_step or last).to_caller
        self.shape, self.dtype = last.shape, last.dtype
        self.macs = sum(d.macs for d in denses)
        self.nbytes = sum(d.nbytes for d in denses)
        self.layer = first.layer
        kernels = [d.kernel for d in denses]
        self.chain = DenseChain(first.rows, kernels, [d.bias for d in denses],
                                [d.act for d in denses], [d.alpha for d in denses],
                                _packed_kernels(kernels) if first.rows > 1 else None,
                                program)
        if first.rows > 1:
            _keep_packed(kernels, self.chain.packed)
        sample = getattr(first, "sample", None)
        if first.rows == 1 and sample is not None and type(sample[0]) is np.ndarray and \
                16 * np.count_nonzero(sample[0]) <= 15 * sample[0].size:
            # the first request's input had zeros (an image's background, one-hot features):
            # the first layer skips their kernel rows (later layers after a relu always do)
            self.chain.skip_input_zeros()
        self.parallel = parallel

    def allocate(self):
        return [self.chain.scratch(), np.empty(self.shape, self.dtype), 1]

    def run(self, x, buf):
        if self.to_caller[0]:
            y, into_buffer = np.empty(self.shape, self.dtype), False
        else:
            y, into_buffer = buf[1], True
        blocks = 1
        if self.parallel:
            # at least CHAIN_BLOCK_ROWS rows per block: the microkernel's row blocks
            blocks = max(1, min(_config._omp_threads or 1, self.chain.rows // CHAIN_BLOCK_ROWS))
            if blocks > buf[2]:
                buf[0], buf[2] = self.chain.scratch(blocks), blocks
        self.chain.run(x, buf[0], y, blocks)
        return y, into_buffer


CHAIN_BLOCK_ROWS = 8


def _serial_twin(r):
    """r, or its one-thread twin (native/infer.pyx: no OpenMP, nothing per call that could
    be made once) where the twin reproduces r's bits on the validation input: a float32
    linear or relu Conv2D on the direct path. (Max pooling's twin without argmax serves
    every plan: _checked takes it.)"""
    if getattr(r, "sample", None) is None:
        return r
    if type(r) is _Conv2D and r.dtype == np.float32 and r.act in (0, 1):
        try:
            twin = _Conv2DSerial(r)
        except (ImportError, ValueError):
            return r
    else:
        return r
    x, want = r.sample
    want = r.__dict__.get("own", want)  # the runner's own bits where the public op's differ
    try:
        got, _ = twin.run(x, twin.allocate())
    except Exception:  # noqa: BLE001  (any failure: keep the checked kernel)
        return r
    return twin if _same_values(got, want) else r


def _program(plan, x):
    """A chain plan whose steps all have native twins as one native call
    (native/infer.pyx Program: the small CNN's batch-1 lane), or None. Taken only when it
    gives the steps' own bits on x."""
    kinds = {_Conv2DSerial: "conv", _Conv2DWinograd: "wino", _MaxPool2DValues: "pool",
             _Flatten: "flatten", _DenseChainRunner: "dense"}
    steps = []
    relu = False  # whether the value so far is a relu's output (then pooled or flattened)
    for r in plan.steps:
        kind = kinds.get(type(r))
        if kind is None or (kind == "dense" and r.chain.rows != 1):
            return None
        if kind == "dense" and relu:
            r.chain.skip_input_zeros()  # its zeros' kernel rows are then not read
        relu = ((kind == "conv" and r.act == 1) or (kind == "wino" and r.relu)
                or (kind in ("pool", "flatten") and relu))
        native = {"conv": "direct", "wino": "native", "pool": "values_only",
                  "dense": "chain"}.get(kind)
        steps.append((kind, getattr(r, native) if native else None,
                       int(np.prod(r.shape))))
    try:
        from pynn._native.infer import Program

        program = Program(steps, x.shape, plan.steps[-1].shape)
        got = program.predict_one(x)
    except (ImportError, ValueError):
        return None
    want = plan._run([x])[0]
    return program.predict_one if got is not None and np.array_equal(
        got, want, equal_nan=True) else None


def _embedding_lane(plan, x):
    """A chain plan that is an Embedding-and-mean then a Dense chain (the bench's text
    model) as one native call (native/infer.pyx EmbeddingMeanChain), or None: at batch 1,
    or at any batch of a one-thread plan (the chain's rows in one block). Taken only when it
    gives the steps' own bits on x. Text model at batch 1, one thread: the two steps through
    Python 18 us (the ids' checks in NumPy, two memoryview calls)."""
    steps = plan.steps
    if len(steps) != 2 or type(steps[0]) is not _EmbeddingMean or steps[0].pool.keepdims \
            or type(steps[1]) is not _DenseChainRunner or x.ndim != 2 \
            or steps[1].chain.rows != len(x) or not (len(x) == 1 or plan.serial):
        return None
    try:
        from pynn._native.infer import EmbeddingMeanChain

        table = steps[0].layer.embeddings.value
        if type(table) is not np.ndarray or table.dtype != np.float32:
            return None
        lane = EmbeddingMeanChain(table, x.shape[1], steps[1].chain)
        got = lane.predict_one(x)
    except (ImportError, ValueError):
        return None
    want = plan._run([x])[0]
    return lane.predict_one if got is not None and np.array_equal(
        got, want, equal_nan=True) else None


def _one_thread(lane):
    """lane run with this thread's settings and OpenMP at one thread, as a serial plan's
    run does (a batch-1 lane's steps run on the calling thread)."""
    def run(x):
        _config.apply_to_this_thread()
        threads = _config._omp_threads
        if threads > 1:
            from pynn._native import info

            info.set_num_threads(1)
            try:
                return lane(x)
            finally:
                info.set_num_threads(threads)
        return lane(x)

    return run


def _int8_lane(plan, x):
    """A batch-1 chain plan of static int8 Dense steps (each one native call:
    quant.Int8Row), then optionally float Dense steps (the float head a quantized model
    keeps), as one Python call of those calls: no plan bookkeeping between them. Taken
    only when it gives the plan's bits on x."""
    steps = plan.steps
    if not plan.chain or not steps or x.ndim != 2 or len(x) != 1:
        return None
    calls, floats = [], False
    for r in steps:
        if type(r) is _Int8Gemm and r.row is not None and not floats:
            calls.append(r.row.run)
        elif type(r) is _DenseChainRunner and r.chain.rows == 1:
            floats = True
            calls.append(r.chain.predict_one)
        elif type(r) is _Dense and r.rows == 1 and r.flat and floats is not None:
            floats = True
            calls.append(functools.partial(_fresh_output, r))
        else:
            return None
    if not any(type(r) is _Int8Gemm for r in steps):
        return None
    shape = x.shape

    def lane(x):
        if type(x) is not np.ndarray or x.shape != shape:
            return None
        for call in calls:
            x = call(x)
            if x is None:
                return None
        return x

    run = _one_thread(lane)
    got = run(x)
    return run if got is not None and np.array_equal(got, plan._run([x])[0],
                                                     equal_nan=True) else None


def _fresh_output(runner, x):
    """A one-row float Dense step of an int8 lane (x the step before's fresh float32 row):
    its output in a fresh array."""
    y = np.empty(runner.shape, runner.dtype)
    runner._forward_into(x, runner.kernel, runner.bias, y, y, runner.act, runner.alpha)
    return y


def _masked_sequence_lane(plan, xs):
    """A batch-1 plan that is an Embedding(mask_zero=True) read only by a recurrent layer (or
    Bidirectional) returning its last output, or by a GlobalAveragePooling1D, then steps
    without masks (a padded-text classifier), as one call: the rows of the nonzero ids
    gathered at once (the steps the mask keeps: native/infer.pyx embedding_kept_rows), the
    recurrence on them (its packed one-row path) or their mean, the rest of the chain. The
    mask itself, the padded (1, T, D) embedding and the steps' Python between them are
    never made. None where the plan is not of that form or the lane does not give its bits
    (checked on a request padded at its start)."""
    steps, x = plan.steps, xs[0]
    if len(xs) != 1 or x.shape[0] != 1 or x.ndim != 2 or x.shape[1] < 2 or len(steps) < 2:
        return None
    from pynn.layers.sequence import GlobalAveragePooling1D

    emb, rec, tail = steps[0], steps[1], steps[2:]
    pooling = type(rec) is _Generic and type(rec.layer) is GlobalAveragePooling1D and \
        not rec.layer.keepdims
    if type(emb) is not _Embedding or not emb.layer.mask_zero or not rec.takes_mask or \
            not (pooling or type(rec) in (_Recurrent, _Bidirectional)) or \
            getattr(rec.layer, "return_sequences", False) or \
            getattr(rec.layer, "zero_output_for_mask", False):
        return None
    slot = plan.input_slots[0]
    for r in steps:  # a chain: each step reads the one before it, the last is the output
        if r.several or r.multi_out or r.ins[0] != slot or (r not in (emb, rec)
                                                             and r.carries_mask):
            return None
        slot = r.outs[0]
    if slot != plan.output_slots[0]:
        return None
    try:
        from pynn._native.infer import embedding_kept_rows, kept_rows_mean
    except ImportError:
        return None
    table = emb.table
    if pooling:  # the mean of the kept steps, with the masked pooling's own arithmetic
        def recur(rows):
            return kept_rows_mean(rows, np.float32(1.0 / rows.shape[1]))
    elif type(rec) is _Recurrent:
        def recur(rows):
            return rec.run(rows, None)[0]
    elif rec.layer.merge_mode == "concat":  # (the copy itself: the op's checks cost ~9 us)
        forward, backward = rec.directions

        def recur(rows):
            return np.concatenate((forward(rows, None), backward(rows, None)), axis=-1)
    else:
        def recur(rows):
            return rec.layer.call(rows, training=False, directions=rec.directions)

    def lane(ids):
        if type(ids) is not np.ndarray or ids.shape != x.shape:
            return None  # (a list, another length: the plan's checked way)
        rows = embedding_kept_rows(ids, table)
        if rows is None:
            return None
        y, owned = recur(rows), False
        bufs = plan._buffers()
        for j, r in enumerate(tail, 2):
            y, into_buffer = r.run(y, bufs[j] if bufs is not None else r.allocate())
            owned = owned or into_buffer
        return np.array(y) if owned else y

    run = _one_thread(lane)
    padded = np.array(x)
    padded[0, 0] = 0
    got = run(padded)
    want = plan._run([padded])[0]
    return run if got is not None and np.array_equal(got, want, equal_nan=True) else None


def _fusable(r):
    """Whether r is a layer's own call that a fused runner may replace: an Add, an
    Embedding, a GlobalAveragePooling1D."""
    from pynn.layers.merge import Add
    from pynn.layers.sequence import GlobalAveragePooling1D

    return type(r) is _Embedding or (type(r) is _Generic
                                     and type(r.layer) in (Add, GlobalAveragePooling1D))


class _Embedding(_Buffered):
    """An Embedding on a float32 table: its ids checked and its rows gathered in one native
    call (native/infer.pyx embedding_rows_ids); ids it does not take (another dtype, one out
    of range) go to the layer's own call, which converts them or words the error."""

    def __init__(self, step, x, y):
        super().__init__(step, y)
        table = self.layer.embeddings.value
        if type(table) is not np.ndarray or table.dtype != np.float32 or \
                not table.flags.c_contiguous or y.dtype != np.float32 or y.ndim != 3:
            raise _NotDirect
        from pynn._native import infer

        self.table, self._rows = table, infer.embedding_rows_ids

    def allocate(self):
        return np.empty(self.shape, self.dtype)

    def run(self, x, buf):
        y, into_buffer = self.output(buf)
        if len(x) != self.shape[0]:
            return self.layer.call(x, training=False), False
        if self._rows(x, self.table, y):
            return y, into_buffer
        return self.layer.call(x, training=False), False


class _EmbeddingMean(_Generic):
    """An Embedding whose output only a GlobalAveragePooling1D reads, and that pooling, as
    one gather-and-mean (native/infer.pyx embedding_mean): no (N, T, D) intermediate, the
    pooling's bits. The ids are checked (and their errors named) as the Embedding does."""

    def __init__(self, embedding, pooling):
        self.layer, self.pool = embedding.layer, pooling.layer
        self.ins, self.outs = embedding.ins, pooling.outs
        self.several = self.multi_out = False
        self.to_caller = pooling.to_caller

    def run(self, x, buf):
        from pynn._native import infer
        from pynn.backend.operands.embedding import host_indices

        table = self.layer.embeddings.value
        y = np.empty((len(x), table.shape[1]), np.float32)
        if not infer.embedding_mean_ids(x, table, y):  # ids it does not take: NumPy's check
            ids = self.layer._named(host_indices, "embedding_forward", x, table.shape[0])
            infer.embedding_mean(ids, table, y)
        return (y.reshape(len(y), 1, -1) if self.pool.keepdims else y), False


def _embedding_means(runners):
    """A chain's Embedding (float32, no mask) followed by GlobalAveragePooling1D (no mask:
    a chain plan has none) made one _EmbeddingMean where it gives the pooling's bits on the
    validation input. The bench's text model (Embedding 8000 x 64 over 32 ids, then two
    Dense), two threads, in-process A/B, medians of 7: batch 64 86 -> 51 us, batch 1 22 ->
    18 us."""
    from pynn.layers.embedding import Embedding
    from pynn.layers.sequence import GlobalAveragePooling1D

    out, i = [], 0
    while i < len(runners):
        r = runners[i]
        if (i + 1 < len(runners) and type(r) in (_Generic, _Embedding)
                and type(r.layer) is Embedding and type(runners[i + 1]) is _Generic
                and type(runners[i + 1].layer) is GlobalAveragePooling1D
                and getattr(r, "sample", None) is not None
                and getattr(runners[i + 1], "sample", None) is not None):
            x, want = r.sample[0], runners[i + 1].sample[1]
            table = r.layer.embeddings.value
            if (type(x) is np.ndarray and x.ndim == 2 and type(table) is np.ndarray
                    and table.dtype == np.float32 and table.flags.c_contiguous
                    and type(want) is np.ndarray and want.dtype == np.float32):
                fused = _EmbeddingMean(r, runners[i + 1])
                try:
                    got, _ = fused.run(x, None)
                    ok = _same_values(got, want)
                except Exception:  # noqa: BLE001  (any failure: keep the checked steps)
                    ok = False
                if ok:
                    out.append(fused)
                    i += 2
                    continue
        out.append(r)
        i += 1
    return out


def _residual_chained(runners, output_slots, parallel=False):
    """In a plan that is not a chain (a functional model): each run of float32 2-D Dense
    steps that read one another or the run's input, with the two-input Adds of a layer's
    output and an earlier value of the run (a residual MLP's blocks), made one chain call
    with a program (native/infer.pyx DenseChain). Every row's values stay in its block
    through all the layers; the Adds run in the layers' epilogues. The bench's func30 (ten
    blocks of two 256-unit layers and an Add, then a head), Intel Xeon, medians of 7
    alternated rounds, step by step -> one call: batch 64 on two threads 2,096 -> 853 us,
    on one 2,149 -> 1,470; batch 1 310 -> 191."""
    try:
        from pynn._native import infer  # noqa: F401  (a build without it keeps the steps)
    except ImportError:
        return runners
    from pynn.layers.merge import Add

    readers = {}
    for r in runners:
        for s in r.ins:
            readers[s] = readers.get(s, 0) + 1
    for s in output_slots:
        readers[s] = readers.get(s, 0) + 1
    out, i = [], 0
    while i < len(runners):
        made = _residual_run(runners, i, readers, Add, parallel)
        if made is None:
            out.append(runners[i])
            i += 1
        else:
            out.append(made[0])
            i = made[1]
    return out


def _residual_run(runners, i, readers, add_type, parallel):
    """(the chain runner, the index after its last step) for the run starting at
    runners[i], or None (see _residual_chained)."""
    def dense(r):
        return (type(r) is _Dense and r.flat and r.dtype == np.float32
                and getattr(r, "sample", None) is not None)

    def add(r):
        return (type(r) is _Generic and type(r.layer) is add_type and r.several
                and len(r.ins) == 2 and not r.multi_out
                and getattr(r, "sample", None) is not None)

    if not dense(runners[i]):
        return None
    width = {runners[i].ins[0]: runners[i].sample[0].shape[1]}
    ops, j = [], i   # (dense, the value its Add adds or None, value made, step making it)
    while j < len(runners) and dense(runners[j]) and runners[j].ins[0] in width:
        r, k = runners[j], j + 1
        op = (r, None, r.outs[0], r)
        if (k < len(runners) and add(runners[k]) and r.outs[0] in runners[k].ins
                and readers.get(r.outs[0]) == 1 and not r.to_caller[0]):
            a = runners[k]
            other = a.ins[1] if a.ins[0] == r.outs[0] else a.ins[0]
            y = a.sample[1]
            if (other != r.outs[0] and width.get(other) == r.shape[1]
                    and type(y) is np.ndarray and y.dtype == np.float32
                    and y.shape == r.shape):
                op, k = (r, other, a.outs[0], a), k + 1
        ops.append(op)
        width[op[2]] = r.shape[1]
        j = k
    # Every value made before the last must be read only inside the run, and not returned.
    while ops:
        inside = {}
        for r, res, _, _ in ops:
            for s in [r.ins[0]] + ([res] if res is not None else []):
                inside[s] = inside.get(s, 0) + 1
        if all(readers.get(made, 0) == inside.get(made, 0) and not step.to_caller[0]
               for _, _, made, step in ops[:-1]):
            break
        j -= 2 if ops[-1][1] is not None else 1
        ops.pop()
    if len(ops) < 2 and not (ops and ops[0][1] is not None):
        return None
    # Buffers for the values: each reuses one whose value no later layer reads.
    last_use = {}
    for n, (r, res, _, _) in enumerate(ops):
        last_use[r.ins[0]] = n
        if res is not None:
            last_use[res] = n
    where, src, dst, adds, values = {ops[0][0].ins[0]: -1}, [], [], [], 0
    for n, (r, res, made, _) in enumerate(ops):
        src.append(where[r.ins[0]])
        adds.append(-3 if res is None else where[res])
        if n == len(ops) - 1:
            d = -2
        else:
            busy = {b for v, b in where.items() if last_use.get(v, -1) >= n}
            d = next((b for b in range(values) if b not in busy), values)
            values = max(values, d + 1)
        where[made] = d
        dst.append(d)
    denses = [op[0] for op in ops]
    try:
        chain = _DenseChainRunner(denses, parallel, (src, dst, adds, max(values, 1)),
                                  ops[-1][3])
        # Its answer on the validation input against the steps it replaces (float32
        # rounding apart, as _chained's).
        want = ops[-1][3].sample[1]
        got, _ = chain.run(denses[0].sample[0], chain.allocate())
        if not _close_values(got, want):
            return None
    except Exception:  # noqa: BLE001  (any failure: keep the checked steps)
        return None
    return chain, j


def _chained(runners, parallel=False):
    """runners with each run of two or more float32 2-D Dense steps made one chain call
    (parallel: over the plan's threads)."""
    try:
        from pynn._native import infer  # noqa: F401  (a build without it keeps the steps)
    except ImportError:
        return runners
    out, run = [], []

    def flush():
        chain = _DenseChainRunner(run, parallel) if len(run) > 1 else None
        if chain is not None:
            # The chain's own answer on the validation input, against the ops it replaces
            # (float32 rounding apart: it skips dense_forward's bands).
            x, want = run[0].sample[0], run[-1].sample[1]
            try:
                got, _ = chain.run(x, chain.allocate())
                ok = _close_values(got, want)
            except Exception:  # noqa: BLE001  (any failure: keep the checked steps)
                ok = False
            if ok:
                out.append(chain)
                run.clear()
                return
        out.extend(run)
        run.clear()

    for r in runners:
        if type(r) is _Dense and r.flat and r.dtype == np.float32 and not (
                run and run[-1].to_caller[0]):
            run.append(r)
        else:
            flush()
            out.append(r)
    flush()
    return out


class _Recurrent(_Generic):
    """A SimpleRNN, LSTM or GRU on float32: the layer's op, whose caches (h for every step,
    the gates, the cell state) it makes and drops each call are counted in the plan's bytes,
    so a large batch's run takes them from recycled host memory (RECYCLE_MIN_BYTES) rather
    than fresh pages: an LSTM(128) over 32 steps at batch 64 makes 6 MB of them a call. On
    one sample the recurrent kernel's panels are made once (native/rnn.pyx, pack_recurrent)
    and shared by the plans while the weights stay: each step's GEMV then streams them in
    order instead of reading 1 KB of every 2 KB row (the same sums; bench/README.md); and
    the op's operands are checked once (rnn.OneRow), the call's own ~10 us of checks and
    conversions."""

    CACHED_ROWS = {"simple_rnn": 1, "lstm": 6, "gru": 5}  # units-wide rows a step caches

    def __init__(self, step, x, layer):
        from pynn._native import rnn

        super().__init__(step)
        self.layer = layer  # (a Bidirectional's step: one of its two layers)
        rk = layer.recurrent_kernel.value
        if type(rk) is not np.ndarray or rk.dtype != np.float32 or \
                layer.kernel.value.dtype != np.float32 or layer._callable_activation():
            raise _NotDirect
        self.args = (layer.kernel.value, rk, layer.bias.value if layer.use_bias else None,
                     *layer._options(), layer.return_sequences, layer.go_backwards)
        self.macs = int(layer.inference_macs(x))
        n, t = x.shape[:2]
        op = "gru" if layer.CELL.startswith("gru") else layer.CELL  # either reset_after
        self.nbytes = n * t * layer.units * self.CACHED_ROWS[op] * x.itemsize
        self._forward = getattr(rnn, op + "_forward")
        self.one = None
        if n == 1:
            packed = (_packed_kernels([rk]) or [None])[0]
            if packed is None:
                packed = rnn.pack_recurrent(np.ascontiguousarray(rk))
                _keep_packed([rk], [packed])
            self._forward = functools.partial(rnn.packed_forward, op, packed)
            self.one = rnn.OneRow(op, packed, x, *self.args)

    def run(self, x, buf):
        if self.one is not None:
            y = self.one.run(x)
            if y is not None:
                return y, False
        return self._forward(x, *self.args)[0], False

    def run_masked(self, x, mask, buf):
        """With Keras's mask: one sample runs its kept steps alone (the layer's own rule,
        recurrent.unmasked_steps), through this runner's packed one-row path; a batch whose
        rows keep different steps takes the layer's masked recurrence."""
        from pynn.layers.recurrent import unmasked_steps

        if mask is None or (type(mask) is np.ndarray and mask.all()):
            return self.run(x, buf)
        kept = unmasked_steps(x, mask)
        if kept is None:
            return self.layer.call(x, training=False, mask=mask), False
        return self.layer.call_unmasked(x, mask, kept, self._run_kept), False

    def _run_kept(self, x):
        return self.run(x, None)[0]

    def output(self, x, mask):
        return self.run_masked(x, mask, None)[0]


class _Bidirectional(_Generic):
    """A Bidirectional over SimpleRNN, LSTM or GRU: each direction through its own
    _Recurrent (packed panels and OneRow at batch 1, a masked request's kept steps alone),
    merged by the layer's own call."""

    def __init__(self, step, x, layer):
        super().__init__(step)
        inner = [_Recurrent(step, x, d) for d in (layer.forward_layer, layer.backward_layer)]
        self.directions = tuple(r.output for r in inner)
        self.macs = sum(r.macs for r in inner)
        self.nbytes = sum(r.nbytes for r in inner)

    def run(self, x, buf):
        return self.layer.call(x, training=False, directions=self.directions), False

    def run_masked(self, x, mask, buf):
        return self.layer.call(x, training=False, mask=mask,
                               directions=self.directions), False


class _Conv2D(_Buffered):
    """Conv2D (or one with BatchNormalization folded in) on native/conv.pyx's direct path:
    the geometry, the microkernel's segment tables and every buffer (the zero-padded input,
    the packed kernel panels, the pixel offsets) are made once; conv2d_forward made them
    per call (about 18 us per layer at batch 1)."""

    def __init__(self, step, x, y, kernel, bias, strides, padding, dilation, activation,
                 alpha):
        import os

        from pynn._native import conv
        from pynn.backend.api import ACTIVATIONS
        from pynn.backend.operands import conv as operands
        from pynn.backend.operands.common import HOST

        super().__init__(step, y)
        _same_dtype(x, kernel, bias)
        _, _, _, _, _, g = operands.conv2d_forward(HOST, x, kernel, bias, strides, padding,
                                                   dilation, activation, alpha)
        self.g = g = conv._planned(g)
        if g["K"] == 0:
            raise _NotDirect  # nothing to read: conv2d_forward's stand-ins handle it
        self.kernel, self.bias = kernel, bias
        self.act, self.alpha = ACTIVATIONS.index(activation), float(alpha)
        self.pad_shape = conv._pad_shape(x.shape, g["HP"], g["WP"], g["PT"], g["PL"])
        self.macs = int(np.prod(self.shape)) * g["K"]
        # The tables _forward_direct_into derives per call (see there).
        aseg, bseg, self.tn = self._segments = conv._kernel_segments(g)
        nc = conv._panel_columns(kernel.dtype)
        rows = bseg // g["F"]
        self.aseg, self.bseg = aseg, rows * nc
        self.bseg_last = rows * (g["F"] - (g["F"] - 1) // nc * nc)
        self.chunk = conv._FORWARD_PIXELS
        self.offsets = max(os.cpu_count() or 1, _config._omp_threads or 1) * self.chunk
        self.nbytes += (int(np.prod(self.pad_shape)) + g["K"] * g["F"]) * x.dtype.itemsize
        self._padded, self._forward = conv._padded, conv._run_forward_direct
        self._forward_into = conv._forward_direct_into

    def allocate(self):
        return (np.empty(self.shape, self.dtype), np.zeros(self.pad_shape, self.dtype),
                np.empty(self.g["K"] * self.g["F"], self.dtype),
                np.empty(self.offsets, np.intp))

    def run(self, x, buf):
        if self.to_caller[0]:
            y, into_buffer = np.empty(self.shape, self.dtype), False
        else:
            y, into_buffer = buf[0], True
        g = self.g
        xp = self._padded(x, buf[1], g["PT"], g["PL"])
        # y is also the pre-activation buffer: inference keeps no z (the activations that
        # need z for backward read it only there).
        if _config._omp_threads * self.chunk > self.offsets:  # more threads than planned for
            self._forward_into(xp, self.kernel, self.bias, y, y, g, self.act, self.alpha)
        else:
            self._forward(xp, self.kernel, self.bias, y, y, buf[2], g, buf[3], self.chunk,
                          self.aseg, self.bseg, self.bseg_last, self.tn, self.act, self.alpha)
        return y, into_buffer


class _Conv2DPool(_Buffered):
    """A direct Conv2D whose output only a max pooling with windows that tile it reads, as
    one step (native/conv.pyx _run_conv_pool_forward without argmax): the conv runs band by
    band, each band pooled while in cache, so its output is never written whole nor read
    back. The two steps' bits (the same microkernel calls and winner rule). Small CNN,
    batch 64 (chunks of 16), one thread, Intel Xeon: the first conv and pool 1.23 + 0.38 ms
    -> 1.29 ms, the prediction 4.96 -> 4.28 ms."""

    def __init__(self, conv, pool):
        from pynn._native import conv as native

        self.conv, self.pool = conv, pool
        self.layer = conv.layer  # the one that reads this step's input (errors name it)
        self.ins, self.outs = conv.ins, pool.outs
        self.several = self.multi_out = False
        self.shape, self.dtype = pool.shape, pool.dtype
        self.macs = conv.macs
        self.nbytes = pool.nbytes + conv.nbytes - int(np.prod(conv.shape)) * conv.dtype.itemsize
        self.to_caller = pool.to_caller
        self._padded, self._run = native._padded, native._run_conv_pool_forward
        g = pool.g
        self.pool_size, self.pool_strides = (g["PH"], g["PW"]), (g["SH"], g["SW"])

    def allocate(self):
        c = self.conv
        return (np.empty(self.shape, self.dtype), np.zeros(c.pad_shape, self.dtype),
                np.empty(c.g["K"] * c.g["F"], self.dtype))

    def run(self, x, buf):
        c = self.conv
        y, into_buffer = self.output(buf[0])
        g = c.g
        xp = self._padded(x, buf[1], g["PT"], g["PL"])
        self._run(xp, c.kernel, c.bias, buf[2], g, c.aseg, c.bseg, c.bseg_last, c.tn, c.act,
                  c.alpha, y, None, self.pool_size, self.pool_strides)
        return y, into_buffer


# Whether a multi-thread plan runs a direct Conv2D and the max pooling that alone reads it
# as one step (_Conv2DPool); False keeps two (benchmarks' A/B).
PAIR_CONV_POOL = True


def _paired_conv_pool(steps, output_slots):
    """steps with each direct Conv2D runner whose output only a float32 max pooling with
    windows that tile it reads (valid padding, strides >= pool size) merged with it."""
    readers = {}
    for r in steps:
        for slot in r.ins:
            readers[slot] = readers.get(slot, 0) + 1
    out, skip = [], set()
    for i, r in enumerate(steps):
        if i in skip:
            continue
        pool = next((p for p in steps[i + 1:] if p.ins and p.ins[0] == r.outs[0]), None) \
            if type(r) is _Conv2D and not r.multi_out else None
        if (pool is not None and type(pool) is _MaxPool2DValues and not pool.several
                and readers.get(r.outs[0]) == 1 and r.outs[0] not in output_slots
                and r.dtype == pool.dtype and pool.layer.padding == "valid"
                and pool.g["PT"] == 0 and pool.g["PL"] == 0
                and pool.g["SH"] >= pool.g["PH"] and pool.g["SW"] >= pool.g["PW"]
                and r.g["N"] and r.g["K"] and all(pool.shape)):
            j = steps.index(pool)
            if all(r.outs[0] not in s.ins for s in steps[i + 1:j]):
                out.append(_Conv2DPool(r, pool))
                skip.add(j)
                continue
        out.append(r)
    return out


class _Conv2DSerial(_Conv2D):
    """A one-thread plan's float32 Conv2D (linear or relu) through native/infer.pyx's
    Conv2DDirect: conv.pyx's direct forward with its per-call packing, offsets and margins
    made once."""

    def __init__(self, r):
        from pynn._native.infer import Conv2DDirect

        self.__dict__.update(r.__dict__)
        aseg, bseg, tn = self._segments
        self.direct = Conv2DDirect(self.kernel, self.bias, self.g, aseg, bseg, tn,
                                   self.chunk, self.act, self.alpha)
        shape = self.direct.pad_shape()
        self.pad_size = int(np.prod(shape)) if shape is not None else 0

    def allocate(self):
        return (np.empty(self.shape, self.dtype), np.zeros(self.pad_size, self.dtype))

    def run(self, x, buf):
        if self.to_caller[0]:
            y, into_buffer = np.empty(self.shape, self.dtype), False
        else:
            y, into_buffer = buf[0], True
        self.direct.run(x, buf[1], y)
        return y, into_buffer


class _Conv2DWinograd(_Buffered):
    """A float32 Conv2D (linear or relu) that the op runs by Winograd, through
    native/infer.pyx's Conv2DWinograd: the op's transforms and GEMMs with the kernel
    transformed and packed once (the op does both per call: at batch 1, 16x16 32 -> 64, Zen 3,
    one thread, 150 us against 86), its tiles split over OpenMP's current thread count.
    _checked keeps it only where it gives the op's bits on the validation input."""

    def __init__(self, step, y, kernel, bias, g, activation):
        from pynn._native import conv
        from pynn._native.infer import Conv2DWinograd
        from pynn.backend.api import ACTIVATIONS

        super().__init__(step, y)
        self.relu = activation == "relu"
        m = conv._wino_tile(g)
        try:
            self.native = Conv2DWinograd(kernel, bias, g, m, conv._wino_block_tiles(g, m),
                                         ACTIVATIONS.index(activation))
        except ValueError:
            raise _NotDirect from None
        self.macs = int(y.size) * g["K"]  # the direct arithmetic's count (thread rules)
        self.nbytes += 4 * (self.native.work_size() + (m + 2) ** 2 * g["C"] * g["F"])

    def allocate(self):
        return (np.empty(self.shape, self.dtype),
                np.empty(self.native.work_size(), np.float32))

    def run(self, x, buf):
        y, into_buffer = self.output(buf[0])
        self.native.run(x, buf[1], y, 0)
        return y, into_buffer


class _MaxPool2D(_Buffered):
    def __init__(self, step, x, y):
        from pynn._native import pool
        from pynn.backend.operands import pool as operands
        from pynn.backend.operands.common import HOST

        super().__init__(step, y)
        layer = step.layer
        _, self.g = operands.maxpool2d_forward(HOST, x, layer.pool_size, layer.strides,
                                               layer.padding)
        self.nbytes += y.size * 4
        self._forward = pool._maxpool_forward
        self.values_only = None
        if y.dtype == np.float32:
            try:
                from pynn._native.infer import MaxPool2D

                self.values_only = MaxPool2D(self.g)
            except (ImportError, KeyError, ValueError):  # pool.pyx's kernel then
                pass

    def allocate(self):
        return (np.empty(self.shape, self.dtype), np.empty(self.shape, np.int32))

    def run(self, x, buf):
        y, into_buffer = self.output(buf[0])
        self._forward(x, y, buf[1], self.g)
        return y, into_buffer


class _MaxPool2DValues(_MaxPool2D):
    """A float32 max pooling without argmax: native/infer.pyx's kernel (the same values bit
    for bit, _checked on the first input), output rows split over the plan's threads."""

    def allocate(self):
        return (np.empty(self.shape, self.dtype),)

    def run(self, x, buf):
        y, into_buffer = self.output(buf[0])
        self.values_only.run(x, y)
        return y, into_buffer


class _Flatten(_Generic):
    def __init__(self, step, y):
        super().__init__(step)
        self.shape = tuple(y.shape)

    def run(self, x, buf):
        return x.reshape(self.shape), False


class _Int8Gemm(_Buffered):
    """An int8 Dense or Conv2D (pynn.layers.quantized): native/quant.pyx's GEMM or conv entry
    point with the layer's weight pack, its weight sums (which the public ops make per call:
    16 of the 24 us of a batch-1 784 x 512 layer) and every buffer made once. Static: the
    per-unit corrections made once too, the float input quantized into a buffer and the
    float output dequantized from one, as the layer's call does. Dynamic
    (``model.quantize("int8")``): the batch's range, scale and corrections per call, in
    Python floats and (U,) vectors, float32 straight out of the epilogue."""

    def __init__(self, step, x, y, layer, geometry):
        from pynn._native import quant

        super().__init__(step, y)
        packed, w_scale, bias, static = layer._gemm_operands()
        if type(packed) is not np.ndarray:
            raise _NotDirect
        self.packed = packed
        self.k4 = packed.shape[1]
        units = int(layer.kernel.shape[-1])
        self.correction = np.empty(units, np.int64)
        self.correction32 = np.empty(units, np.int32)
        self.relu = layer.activation == "relu"
        self.dynamic = static is None
        if self.dynamic:
            self.wsum = np.empty(units, np.int64)
            quant._weight_sums(packed, self.wsum)
            self.w_scale = np.ascontiguousarray(w_scale, np.float64)
            self.bias = None if bias is None else np.ascontiguousarray(bias, np.float64)
            self.y_zp = self.lo = 0.0
            self.quantize_in, self.dequantize_out = True, None
        else:
            bias_q, self.multiplier = static
            if not quant._corrections(packed, bias_q, layer.input_zero_point,
                                      self.correction, self.correction32):
                self.correction32 = None
            self.y_zp = float(layer.output_zero_point)
            self.lo = self.y_zp if self.relu else 0.0
            self.x_zp = layer.input_zero_point
            # (scale, zero point) of a float input to quantize / a float output to dequantize
            self.quantize_in = None if layer.input_uint8 else (
                np.float32(layer.input_scale), np.float32(layer.input_zero_point))
            self.dequantize_out = None if layer.output_uint8 else (
                np.float32(layer.output_scale), np.float32(layer.output_zero_point))
        self.x_shape = tuple(x.shape)
        self.codes_shape = (int(np.prod(self.shape[:-1])), units)
        self.g = geometry
        self.macs = self.codes_shape[0] * int(np.prod(layer.kernel.shape))
        self.nbytes += x.size + self.codes_shape[0] * units
        self._quantize, self._dequantize = quant._quantize, quant._dequantize
        self._dense, self._conv = quant._int8_dense, quant._int8_conv
        self._operands = quant._dynamic_operands
        self.tile_bytes = quant.TILE_BYTES(self.k4)
        # The conv's per-thread patch tiles: as many as this machine may run threads.
        self.threads = max(os.cpu_count() or 1, _config._omp_threads or 1)
        if geometry is None and x.shape[-1] != 4 * self.k4:
            self.rows_shape = (self.codes_shape[0], 4 * self.k4)  # rows padded with zeros
        else:
            self.rows_shape = None
        # one row of a static Dense: the whole step in one native call (quant.Int8Row)
        self.row = None
        if geometry is None and not self.dynamic and x.ndim == 2 and len(x) == 1:
            self.row = quant.Int8Row(packed, self.correction, self.correction32,
                                     self.multiplier, self.y_zp, self.lo, self.relu,
                                     x.shape[1], self.quantize_in, self.dequantize_out)

    def allocate(self):
        codes = np.empty(self.codes_shape, np.uint8) if self.dequantize_out else None
        xq = np.empty(self.x_shape, np.uint8) if self.quantize_in else None
        rows = np.zeros(self.rows_shape, np.uint8) if self.rows_shape else None
        tiles = np.zeros((self.threads, self.tile_bytes), np.uint8) if self.g else None
        return np.empty(self.shape, self.dtype), codes, xq, rows, tiles

    def _dynamic_operands(self, x, xq):
        """This batch's quantization of x into xq, and its (multiplier, corrections, zero
        point), as QuantizedDense._int8_matmul computes them (native/quant.pyx's
        _dynamic_operands, one call); None for a NaN or an infinity in x (the layer's call
        words the error)."""
        multiplier = np.empty(self.correction.shape[0], np.float32)
        correction, correction32 = np.empty_like(self.correction), np.empty_like(
            self.correction32)
        got = self._operands(x.reshape(-1), xq.reshape(-1), self.w_scale, self.bias,
                             self.wsum, self.k4, multiplier, correction, correction32)
        if got is None:
            return None
        x_zp, fits = got
        return multiplier, correction, correction32 if fits else None, x_zp

    def run(self, x, buf):
        if self.row is not None:
            y = self.row.run(x)
            if y is not None:
                return y, False
        y, into_buffer = self.output(buf[0])
        if self.dynamic:
            xq = buf[2]
            operands = self._dynamic_operands(x, xq)
            if operands is None:
                return self.layer.call(x, training=False), False
            multiplier, correction, correction32, x_zp = operands
            codes, out = None, y.reshape(self.codes_shape)
        else:
            multiplier, correction, correction32 = (self.multiplier, self.correction,
                                                    self.correction32)
            x_zp = self.x_zp
            if self.quantize_in is not None:
                xq = buf[2]
                self._quantize(x.reshape(-1), xq.reshape(-1), *self.quantize_in)
            else:
                xq = x
            codes = buf[1] if self.dequantize_out is not None else \
                y.reshape(self.codes_shape)
            out = None
        g = self.g
        if g is not None:
            if _config._omp_threads > self.threads:  # more threads than tiles made
                return self.layer.call(x, training=False), False
            self._conv(xq, self.packed, correction, correction32, multiplier, buf[4], codes,
                       out, x_zp, self.y_zp, self.lo, self.relu, g["KH"], g["KW"], g["SH"],
                       g["SW"], g["DH"], g["DW"], g["PT"], g["PL"], g["HO"], g["WO"])
        else:
            rows = xq.reshape(self.codes_shape[0], -1)
            if self.rows_shape is not None:
                rows, given = buf[3], rows
                rows[:, :given.shape[1]] = given
            self._dense(rows, self.packed, correction, correction32, multiplier, codes, out,
                        self.y_zp, self.lo, self.relu)
        if self.dequantize_out is not None:
            self._dequantize(codes.reshape(-1), y.reshape(-1), *self.dequantize_out)
        return y, into_buffer


class _Int8MaxPool2D(_Buffered):
    """QuantizedMaxPooling2D: native/quant.pyx's uint8 max pooling into a buffer."""

    def __init__(self, step, x, y, layer):
        from pynn._native import quant
        from pynn.backend.operands import quant as operands
        from pynn.backend.operands.common import HOST

        super().__init__(step, y)
        _, self.g = operands.int8_max_pool2d(HOST, x, layer.pool_size, layer.strides,
                                             layer.padding)
        self._pool = quant._int8_max_pool

    def allocate(self):
        return np.empty(self.shape, self.dtype)

    def run(self, x, buf):
        y, into_buffer = self.output(buf)
        g = self.g
        self._pool(x, y, g["KH"], g["KW"], g["SH"], g["SW"], g["PT"], g["PL"])
        return y, into_buffer


def _int8_runner(step, x, y):
    """The direct runner of a static int8 layer (pynn.layers.quantized), or None."""
    from pynn.layers.quantized import QuantizedConv2D, QuantizedDense, QuantizedMaxPooling2D

    layer = step.layer
    kind = type(layer)
    if kind not in (QuantizedDense, QuantizedConv2D, QuantizedMaxPooling2D):
        return None
    if step.several or step.multi_out or type(x) is not np.ndarray or \
            type(y) is not np.ndarray or not x.flags.c_contiguous or not y.size:
        return _Generic(step)
    want = np.uint8 if kind is QuantizedMaxPooling2D or layer.input_uint8 else np.float32
    if x.dtype != want:
        return _Generic(step)
    try:
        if kind is QuantizedMaxPooling2D:
            return _Int8MaxPool2D(step, x, y, layer)
        geometry = None
        if kind is QuantizedConv2D:
            from pynn.backend.operands import quant as operands
            from pynn.backend.operands.common import HOST

            packed = layer._gemm_operands()[0]
            geometry = operands.int8_conv2d_forward(
                HOST, np.empty(x.shape, np.uint8), packed, None, 0,
                np.ones(layer.filters, np.float32), 0, False, layer.kernel_size,
                layer.strides, layer.padding, layer.dilation_rate)[-1]
        return _Int8Gemm(step, x, y, layer, geometry)
    except (AttributeError, _NotDirect):
        return _Generic(step)


class _Add(_Buffered):
    """An Add of same-shape arrays and the Activation that alone reads it
    (functional._ActivatedAdd: a residual block's close), as native/merge.pyx's one pass
    into the calling thread's buffer: the layer's own call checked its operands and
    allocated the sum per call (22 us of a 32x32x32 Add at batch 1, 3 us of arithmetic)."""

    def __init__(self, step, x, y, activation, alpha):
        from pynn._native import merge
        from pynn.backend.api import ACTIVATIONS

        super().__init__(step, y)
        self.act, self.alpha = ACTIVATIONS.index(activation), float(alpha)
        self._merge, self._pointers = merge._merge_forward, merge._pointers
        self._mode = merge.MODE_CODES["add"]

    def allocate(self):
        return np.empty(self.shape, self.dtype)

    def run(self, x, buf):
        y, into_buffer = self.output(buf)
        for a in x:
            if type(a) is not np.ndarray or a.shape != self.shape or a.dtype != self.dtype \
                    or not a.flags.c_contiguous:
                return self.layer.call(x, training=False), False
        self._merge(self._pointers(x), y.reshape(-1), self._mode, self.act, self.alpha)
        return y, into_buffer


def _merge_runner(step, x, y):
    """An _Add for a fused Add + Activation of same-shape C-contiguous arrays of the
    output's dtype, else None."""
    from pynn.layers.functional import _ActivatedAdd
    from pynn.layers.merge import Add

    layer = step.layer
    # (a plain Add stays the layer's own call: _residual_chained fuses those into chains)
    if type(layer) is not _ActivatedAdd or type(layer.layer) is not Add:
        return None
    activation, alpha = layer.activation, layer.alpha
    if not step.several or step.multi_out or type(y) is not np.ndarray or not y.size or \
            type(x) not in (list, tuple) or len(x) < 2 or \
            any(type(a) is not np.ndarray or a.shape != y.shape or a.dtype != y.dtype
                or not a.flags.c_contiguous for a in x):
        return None
    return _Add(step, x, y, activation, alpha)


def _runner(step, x, y):
    """The fastest runner that gives this step's numbers: a direct kernel call when the
    step is one the kernels' buffer-taking entry points cover (the first call's output y
    tells its shape), else the layer's own call."""
    from pynn.compression.sparse import SparseStandIn
    from pynn.layers.conv import Conv2D
    from pynn.layers.core import Dense, Flatten
    from pynn.layers.embedding import Embedding
    from pynn.layers.functional import _FoldedLayer
    from pynn.layers.pooling import MaxPooling2D
    from pynn.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN

    int8 = _int8_runner(step, x, y)
    if int8 is not None:
        return int8
    layer = step.layer
    merge = _merge_runner(step, x, y)
    if merge is not None:
        return merge
    inner = getattr(layer, "layer", layer)  # a stand-in's or a folded step's own layer
    if getattr(layer, "_activation_fn", None) is not None or \
            getattr(inner, "_activation_fn", None) is not None:
        return _Generic(step)  # activation= a function: it runs in the layer's own call
    if type(layer) is Embedding and type(x) is np.ndarray and type(y) is np.ndarray:
        try:
            return _Embedding(step, x, y)  # (its ids: another dtype than its output's)
        except (ImportError, _NotDirect):
            return _Generic(step)
    if step.several or step.multi_out or type(x) is not np.ndarray or \
            type(y) is not np.ndarray or not x.flags.c_contiguous or x.dtype != y.dtype:
        return _Generic(step)
    try:
        if isinstance(layer, SparseStandIn):
            if layer.packed() is not None:  # pruned: the sparse op (issue 18)
                return _Generic(step)
            layer = layer.layer  # too dense: the layer's own runner
        if type(layer) is _FoldedLayer:
            kernel, bias = layer._weights()
            inner = layer.layer
            if type(inner).__name__ == "Dense":
                return _Dense(step, x, y, kernel, bias, layer.activation, layer.alpha)
            if type(inner) is Conv2D:
                return _conv(step, x, y, inner, kernel, bias, layer.activation, layer.alpha)
        if type(layer) is Dense:
            return _dense(step, x, y, layer, layer.activation, layer.alpha)
        if type(layer) is Conv2D and layer.groups == 1:
            return _conv(step, x, y, layer, layer.kernel.value,
                         layer.bias.value if layer.use_bias else None, layer.activation,
                         layer.alpha)
        if type(layer) is MaxPooling2D and y.size:
            return _MaxPool2D(step, x, y)
        if type(layer) is Flatten:
            return _Flatten(step, y)
        if type(layer) in (SimpleRNN, LSTM, GRU) and x.ndim == 3 and \
                x.dtype == np.float32 and not (layer.stateful or layer.return_state):
            return _Recurrent(step, x, layer)
        if type(layer) is Bidirectional and x.ndim == 3 and x.dtype == np.float32 and \
                not (layer.stateful or layer.return_state) and all(
                    type(d) in (SimpleRNN, LSTM, GRU)
                    for d in (layer.forward_layer, layer.backward_layer)):
            return _Bidirectional(step, x, layer)
    except (AttributeError, _NotDirect):
        # A kernel module without the entry point this plan calls (its internals moved), or
        # operands it does not take as they are: the layer's own call gives the numbers.
        pass
    return _Generic(step)


def _masked_runner(step, x, y, mask):
    """The runner of a step whose values depend on its input mask: a recurrent layer's
    (_Recurrent.run_masked) where it gives y on the validation input, else the layer's own
    masked call."""
    runner = _runner(step, x, y)
    if type(runner) in (_Recurrent, _Bidirectional):
        try:
            got, _ = runner.run_masked(x, mask, None)
        except Exception:  # noqa: BLE001  (any failure: the layer's own call)
            got = None
        if got is not None and _same_values(got, y):
            return runner
    return _Generic(step)


def _out_masks(layer, x, mask, n):
    """The masks of a step's n outputs, as the general path makes them (Plan._run)."""
    compute = getattr(layer, "compute_mask", None)
    out = compute(x, mask) if compute is not None else None
    return out if isinstance(out, list) else [out] * n


def _close_values(got, want):
    """Whether a candidate runner's answer on the validation input agrees with the steps it
    replaces, float32 rounding apart: the same shape, NaN and infinities where they are (a
    model whose first input overflows, an untrained exponential layer, keeps its fast
    runners), the finite values within 1e-5 of the largest finite one (at least 1). Silent:
    the differences of infinities are no NumPy warning in the caller's console."""
    if got.shape != want.shape:
        return False
    if not want.size:
        return True
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(want)
        if not finite.all():
            same = (np.isnan(got) & np.isnan(want)) | (got == want)
            if not same[~finite].all():
                return False
            got, want = got[finite], want[finite]
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        return float(np.abs(got - want).max(initial=0.0)) <= 1e-5 * scale


def _same_values(a, b):
    """np.array_equal(a, b, equal_nan=True) without its copies in the usual case: the NaN-aware
    form indexes both arrays by a mask (two full copies, 16 MiB for the small CNN's first
    layer at batch 64, which made the plan's first call peak 26 MiB above the general path's);
    the plain form makes one boolean temporary and settles every NaN-free pair."""
    return np.array_equal(a, b) or np.array_equal(a, b, equal_nan=True)


def _checked(runner, step, x, y):
    """runner, if its direct kernel call gives the public op's bits y on the validation input
    x (a Conv2D: its numbers to float32 rounding, as the public op may have taken another
    algorithm; _tuned then picks the faster); else the layer's own call. A kernel module
    whose internals changed (an entry point renamed or given other arguments) thus costs
    speed, never a wrong answer."""
    runner.sample = (x, y)
    if type(runner) in (_Generic, _Flatten):
        return runner
    runner.to_caller = [False]
    try:
        got, _ = runner.run(x, runner.allocate())
    except Exception:  # noqa: BLE001  (any failure: the layer's own call)
        got = None
    if got is not None and _same_values(got, y):
        if type(runner) is _MaxPool2D and runner.values_only is not None:
            return _values_pool(runner, x, y)
        return runner
    if type(runner) is _Conv2D and got is not None and _close_values(got, y):
        # The public op took another algorithm (Winograd, im2col) that rounds otherwise:
        # the direct runner stays a candidate, and _tuned times the two.
        runner.own = got
        return runner
    fallback = _Generic(step)
    fallback.sample = (x, y)
    return fallback


def _values_pool(runner, x, y):
    """A checked float32 max pooling's twin without argmax (native/infer.pyx; at batch 64
    of 32x32x32 on one thread 242 us against the argmax kernel's 540), if it gives the same
    values on the validation input."""
    twin = _MaxPool2DValues.__new__(_MaxPool2DValues)
    twin.__dict__.update(runner.__dict__)
    try:
        got, _ = twin.run(x, twin.allocate())
    except Exception:  # noqa: BLE001  (any failure: keep the checked kernel)
        return runner
    return twin if _same_values(got, y) else runner


# Convolutions up to this many multiply-adds are timed at plan time (each candidate a few
# times: below a millisecond per signature at this size); larger ones keep the direct path.
TUNE_MAX_MACS = 8_000_000
TUNE_ROUNDS = 5


def _tuned(runner):
    """For a Conv2D: the faster of the direct runner (or its one-thread twin) and the public
    op, timed on the validation input; the public op only when it gives the direct path's
    very numbers (so never where it picks Winograd, whose float32 rounding differs).
    Other steps as they are."""
    if type(runner) not in (_Conv2D, _Conv2DSerial) or runner.macs > TUNE_MAX_MACS or \
            getattr(runner, "sample", None) is None:
        return runner
    x, y = runner.sample
    generic = _Generic.__new__(_Generic)
    generic.__dict__.update({k: getattr(runner, k) for k in (
        "layer", "ins", "outs", "several", "multi_out", "to_caller")})
    generic.sample = runner.sample
    buf = runner.allocate()
    try:
        got = generic.run(x, None)[0]
    except Exception:  # noqa: BLE001  (the checked direct runner stays)
        return runner
    # Only a candidate with the direct path's very bits competes: the timing below is noisy,
    # and plans made in different threads (or after a rebuild) must not round differently
    # (a measured case: Winograd chosen in one thread, direct in another).
    if type(got) is not np.ndarray or got.shape != y.shape or not np.array_equal(got, y):
        return runner
    best = {}
    to_caller, runner.to_caller = runner.to_caller, [False]  # into buf, not a fresh array
    try:
        for _ in range(TUNE_ROUNDS):
            for label, cand in (("direct", runner), ("public", generic)):
                start = time.perf_counter()
                cand.run(x, buf)
                elapsed = time.perf_counter() - start
                best[label] = min(best.get(label, elapsed), elapsed)
    finally:
        runner.to_caller = to_caller
    return generic if best["public"] < best["direct"] else runner


def _same_dtype(x, kernel, bias):
    """The buffer-taking entry points take C-contiguous operands of one dtype, as the public
    ops hand them after their checks; a layer given other arrays keeps its own call."""
    for a in (kernel, bias):
        if a is not None and (type(a) is not np.ndarray or a.dtype != x.dtype
                              or not a.flags.c_contiguous):
            raise _NotDirect


def _dense(step, x, y, layer, activation, alpha):
    return _Dense(step, x, y, layer.kernel.value,
                  layer.bias.value if layer.use_bias else None, activation, alpha)


def _conv(step, x, y, layer, kernel, bias, activation, alpha):
    from pynn._native import conv

    _, _, _, _, _, g = _conv_geometry(x, kernel, bias, layer, activation, alpha)
    if not y.size or not conv._use_direct(conv._planned(g), "conv2d_forward"):
        return _Generic(step)  # the im2col path keeps its own workspace plan
    if conv._use_winograd(conv._planned(g), x.dtype, "forward"):
        # Where the op takes Winograd (a rule of the shape alone, so every plan and thread
        # agrees) the plan runs the op's arithmetic with the kernel transformed once
        # (_Conv2DWinograd); other activations take the op itself. (The direct runner
        # there cost the small CNN's batch 64 11.2 ms against the Winograd op's 9.3: one
        # thread, bench/bench_inference.py.)
        if activation in ("linear", "relu") and x.dtype == np.float32:
            return _Conv2DWinograd(step, y, kernel, bias, conv._planned(g), activation)
        generic = _Generic(step)
        generic.macs = int(y.size) * conv._planned(g)["K"]  # the thread rules read it
        return generic
    return _Conv2D(step, x, y, kernel, bias, layer.strides, layer.padding,
                   layer.dilation_rate, activation, alpha)


def _conv_geometry(x, kernel, bias, layer, activation, alpha):
    from pynn.backend.operands import conv as operands
    from pynn.backend.operands.common import HOST

    return operands.conv2d_forward(HOST, x, kernel, bias, layer.strides, layer.padding,
                                   layer.dilation_rate, activation, alpha)
