"""The suite's kernel table: every op family of a training step, one backend-neutral case each.

A case names its op, builds random float32 operands on the host, calls the op through a
backend module (``pynn.backend.cpu`` or ``pynn.backend.opencl``: the same op table, so one
case serves both), and compares the result with the float64 oracle of ``tests/reference``
before anything is timed. A case whose check fails is reported and never timed.

Work is counted as the least the op must do: FLOPs (2 per multiply-add) for the GEMM-shaped
ops, which are measured against the compute peak; bytes read + written once for the
elementwise and reduction ops, measured against the copy bandwidth. The optimizer updates read
w, g and their slots and write w and the slots back.

Legend: N batch, H/W spatial, C channels, F filters, U units, T time steps, K classes.
"""

import math
import statistics
import time

import numpy as np

F32 = 4  # bytes per float32

# The conv table: (label, N, H, W, C, KH, KW, F, strides, padding).
CONV_SHAPES = {
    "full": [
        ("first 3->32 3x3 @32", 32, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
        ("3x3 32->64 @32", 32, 32, 32, 32, 3, 3, 64, (1, 1), "same"),
        ("3x3 64->64 @56", 16, 56, 56, 64, 3, 3, 64, (1, 1), "same"),
        ("1x1 64->128 @56", 16, 56, 56, 64, 1, 1, 128, (1, 1), "same"),
        ("3x3/2 64->128 @56", 16, 56, 56, 64, 3, 3, 128, (2, 2), "same"),
    ],
    "quick": [
        ("first 3->32 3x3 @32", 8, 32, 32, 3, 3, 3, 32, (1, 1), "same"),
        ("3x3 32->64 @32", 8, 32, 32, 32, 3, 3, 64, (1, 1), "same"),
        ("3x3 64->64 @56", 2, 56, 56, 64, 3, 3, 64, (1, 1), "same"),
        ("1x1 64->128 @56", 2, 56, 56, 64, 1, 1, 128, (1, 1), "same"),
        ("3x3/2 64->128 @56", 2, 56, 56, 64, 3, 3, 128, (2, 2), "same"),
    ],
    "tiny": [
        ("first 3->8 3x3 @9", 2, 9, 7, 3, 3, 3, 8, (1, 1), "same"),
        ("3x3/2 5->6 @9", 2, 9, 7, 5, 3, 3, 6, (2, 2), "same"),
    ],
}
# (N, H, W, C) of the depthwise 3x3, pooling, normalization and elementwise cases.
MAPS = {"full": (32, 56, 56, 64), "quick": (8, 56, 56, 64), "tiny": (2, 9, 7, 5)}
GEMMS = {"full": (256, 512, 1024, 2048), "quick": (256, 512), "tiny": (33,)}
# (N, T, C, U) of the recurrent cases (bench_rnn.py's default shape at full size).
RNN = {"full": (64, 50, 32, 128), "quick": (32, 20, 32, 128), "tiny": (3, 4, 5, 7)}
# Parameters per optimizer update and (N, K) of softmax-cross-entropy.
PARAMS = {"full": 1 << 22, "quick": 1 << 20, "tiny": 1000}
LOGITS = {"full": (1024, 1000), "quick": (256, 1000), "tiny": (7, 5)}


class Case:
    """One op on one shape: ``inputs`` (host arrays and scalars), ``call(be, args)`` -> the
    outputs to check (arrays, mutated ones included), ``reference()`` -> float64 expectations
    in the same order; ``work`` FLOPs or bytes, ``bound`` 'compute' or 'memory'."""

    def __init__(self, name, family, bound, work, inputs, call, reference, rtol=1e-4,
                 shape=None, head=None, cuda_ref=None):
        self.name, self.family, self.bound, self.work = name, family, bound, work
        self.inputs, self.call, self.reference, self.rtol = inputs, call, reference, rtol
        # head: compare only the first elements of each flattened output (slow oracles).
        self.shape, self.head = shape, head
        # (kind, shape, op) of the PyTorch CUDA twin (bench_opencl.TorchCuda) or None.
        self.cuda_ref = cuda_ref


def _nbytes(*arrays):
    return float(sum(a.size * a.itemsize for a in arrays))


def _ref(module):
    import importlib

    return importlib.import_module(f"tests.reference.{module}_ref")


def gemm_cases(size, rng):
    ref = _ref("dense")
    out = []
    for n in GEMMS[size]:
        x = rng.standard_normal((n, n), dtype=np.float32)
        k = rng.standard_normal((n, n), dtype=np.float32) / np.float32(math.sqrt(n))
        out.append(Case(
            f"gemm {n}^3", "gemm", "compute", 2.0 * n ** 3, {"x": x, "k": k},
            lambda be, a: (be.dense_forward(a["x"], a["k"], None, "linear", 0.0)[0],),
            lambda x=x, k=k: (ref.dense_forward_ref(x, k, None)[0],), shape=[n, n, n],
            cuda_ref=("gemm", (n, n, n), "dense_forward")))
    return out


def conv_cases(size, rng):
    ref = _ref("conv")
    out = []
    for label, n, h, w, c, kh, kw, f, s, pad in CONV_SHAPES[size]:
        x = rng.standard_normal((n, h, w, c), dtype=np.float32)
        k = (rng.standard_normal((kh, kw, c, f)) / math.sqrt(kh * kw * c)).astype(np.float32)
        b = (0.1 * rng.standard_normal(f)).astype(np.float32)
        ho, wo = -(-h // s[0]), -(-w // s[1])
        dz = rng.standard_normal((n, ho, wo, f), dtype=np.float32)
        flop = 2.0 * n * ho * wo * f * kh * kw * c
        geo = (s, pad, (1, 1))
        inputs = {"x": x, "k": k, "b": b, "dz": dz}
        shape = [n, h, w, c, kh, kw, f, s[0], pad]
        twin = (n, h, w, c, kh, kw, f, s, pad)
        out += [
            Case(f"conv2d_forward {label}", "conv2d", "compute", flop, inputs,
                 lambda be, a, geo=geo: (be.conv2d_forward(a["x"], a["k"], a["b"], *geo,
                                                           "relu", 0.0)[0],),
                 lambda x=x, k=k, b=b, geo=geo: (ref.conv2d_forward_ref(x, k, b, *geo,
                                                                         "relu")[0],),
                 rtol=1e-4, shape=shape, cuda_ref=("conv", twin, "conv2d_forward")),
            Case(f"conv2d_backward_input {label}", "conv2d", "compute", flop, inputs,
                 lambda be, a, geo=geo, xs=x.shape: (
                     be.conv2d_backward_input(a["dz"], a["k"], xs, *geo),),
                 lambda dz=dz, k=k, geo=geo, xs=x.shape: (
                     ref.conv2d_backward_input_ref(dz, k, xs, *geo),), shape=shape,
                 cuda_ref=("conv", twin, "conv2d_backward_input")),
            Case(f"conv2d_backward_weight {label}", "conv2d", "compute", flop, inputs,
                 lambda be, a, geo=geo, ks=k.shape: (
                     be.conv2d_backward_weight(a["x"], a["dz"], ks, *geo),),
                 lambda x=x, dz=dz, geo=geo, ks=k.shape: (
                     ref.conv2d_backward_weight_ref(x, dz, ks, *geo),), shape=shape,
                 cuda_ref=("conv", twin, "conv2d_backward_weight")),
        ]
    # MobileNet's depthwise 3x3: memory-bound (9 multiply-adds per element read).
    ref_dw = _ref("depthwise")
    n, h, w, c = MAPS[size]
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    k = (rng.standard_normal((3, 3, c, 1)) / 3.0).astype(np.float32)
    b = np.zeros(c, np.float32)
    geo = ((1, 1), "same", (1, 1))
    dz = rng.standard_normal(x.shape, dtype=np.float32)
    inputs = {"x": x, "k": k, "b": b, "dz": dz}
    out += [
        Case(f"depthwise_conv2d_forward 3x3 C={c}", "conv2d", "memory", 2 * _nbytes(x),
             inputs,
             lambda be, a: (be.depthwise_conv2d_forward(a["x"], a["k"], a["b"], *geo,
                                                        "linear", 0.0)[0],),
             lambda: (ref_dw.depthwise_conv2d_forward_ref(x, k, b, *geo)[0],),
             shape=[n, h, w, c]),
        Case(f"depthwise_conv2d_backward_input 3x3 C={c}", "conv2d", "memory",
             2 * _nbytes(x), inputs,
             lambda be, a: (be.depthwise_conv2d_backward_input(a["dz"], a["k"], x.shape,
                                                               *geo),),
             lambda: (ref_dw.depthwise_conv2d_backward_input_ref(dz, k, x.shape, *geo),),
             shape=[n, h, w, c]),
        # Reads x and dz, writes a 3x3xC kernel gradient.
        Case(f"depthwise_conv2d_backward_weight 3x3 C={c}", "conv2d", "memory",
             2 * _nbytes(x), inputs,
             lambda be, a: (be.depthwise_conv2d_backward_weight(a["x"], a["dz"], k.shape,
                                                                *geo),),
             lambda: (ref_dw.depthwise_conv2d_backward_weight_ref(x, dz, k.shape, *geo),),
             rtol=1e-3, shape=[n, h, w, c]),
    ]
    return out


def pool_cases(size, rng):
    ref = _ref("pool")
    n, h, w, c = MAPS[size]
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    y_ref, argmax_ref = ref.maxpool2d_forward_ref(x, (2, 2), (2, 2), "valid")
    dy = rng.standard_normal(y_ref.shape, dtype=np.float32)
    argmax = np.asarray(argmax_ref, dtype=np.int32)
    geo = ((2, 2), (2, 2), "valid")
    inputs = {"x": x, "dy": dy, "argmax": argmax}
    return [
        Case("maxpool2d_forward 2x2", "pooling", "memory", _nbytes(x, dy, dy), inputs,
             lambda be, a: be.maxpool2d_forward(a["x"], *geo),
             lambda: (y_ref, argmax_ref), shape=list(x.shape)),
        Case("maxpool2d_backward 2x2", "pooling", "memory", _nbytes(dy, dy, x), inputs,
             lambda be, a: (be.maxpool2d_backward(a["dy"], a["argmax"], x.shape),),
             lambda: (ref.maxpool2d_backward_ref(dy, argmax_ref, x.shape),),
             shape=list(x.shape)),
        Case("avgpool2d_forward 2x2", "pooling", "memory", _nbytes(x, dy), inputs,
             lambda be, a: (be.avgpool2d_forward(a["x"], *geo),),
             lambda: (ref.avgpool2d_forward_ref(x, *geo),), shape=list(x.shape)),
        Case("global_avgpool2d_forward", "pooling", "memory", _nbytes(x), inputs,
             lambda be, a: (be.global_avgpool2d_forward(a["x"]),),
             lambda: (ref.global_avgpool2d_forward_ref(x),), shape=list(x.shape)),
    ]


def activation_cases(size, rng):
    ref = _ref("activation")
    x = rng.standard_normal(MAPS[size], dtype=np.float32)
    dy = rng.standard_normal(MAPS[size], dtype=np.float32)
    out = []
    for act in ("relu", "sigmoid", "gelu"):
        y_ref = ref.activation_forward_ref(x, act)
        y32 = y_ref.astype(np.float32)
        inputs = {"x": x, "dy": dy, "y": y32}
        out.append(Case(
            f"activation_forward {act}", "activation", "memory", 2 * _nbytes(x), inputs,
            lambda be, a, act=act: (be.activation_forward(a["x"], act, 0.0),),
            lambda y_ref=y_ref: (y_ref,), shape=list(x.shape)))
        out.append(Case(
            f"activation_backward {act}", "activation", "memory", 4 * _nbytes(x), inputs,
            lambda be, a, act=act: (be.activation_backward(a["dy"], a["x"], a["y"], act,
                                                           0.0),),
            lambda act=act: (ref.activation_backward_ref(dy, x, act),), shape=list(x.shape)))
    return out


def loss_cases(size, rng):
    ref = _ref("loss")
    n, k = LOGITS[size]
    logits = (2 * rng.standard_normal((n, k))).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int32)
    name = "sparse_categorical_crossentropy"
    return [Case(
        f"softmax_cross_entropy N={n} K={k}", "loss", "memory", 2 * _nbytes(logits),
        {"y_true": labels, "y_pred": logits},
        lambda be, a: be.loss_forward_backward(name, a["y_true"], a["y_pred"], True, None,
                                               True, None),
        lambda: ref.loss_forward_backward_ref(name, labels, logits, True, None, True, None,
                                              np.float32),
        shape=[n, k])]


def normalization_cases(size, rng):
    ref = _ref("normalization")
    x = rng.standard_normal(MAPS[size], dtype=np.float32)
    dy = rng.standard_normal(MAPS[size], dtype=np.float32)
    c = x.shape[-1]
    gamma = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(c)).astype(np.float32)
    mm, mv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y_ref, mean_ref, inv_ref, _, _ = ref.batch_norm_forward_ref(x, gamma, beta, mm, mv, -1,
                                                                0.99, 1e-3, True)
    mean32, inv32 = mean_ref.astype(np.float32), inv_ref.astype(np.float32)
    inputs = {"x": x, "dy": dy, "gamma": gamma, "beta": beta, "mm": mm, "mv": mv,
              "mean": mean32, "inv_std": inv32}
    rows = x.reshape(-1, c)
    ln_ref = ref.group_norm_forward_ref(rows, gamma, beta, 1, 1e-3)
    return [
        # Training reads x twice (statistics, then normalize) and writes y once.
        Case("batch_norm_forward training", "normalization", "memory", 3 * _nbytes(x), inputs,
             lambda be, a: (be.batch_norm_forward(a["x"], a["gamma"], a["beta"],
                                                  be.copy(a["mm"]), be.copy(a["mv"]), -1, 0.99,
                                                  1e-3, True)[0],),
             lambda: (y_ref,), rtol=1e-4, shape=list(x.shape)),
        Case("batch_norm_backward", "normalization", "memory", 5 * _nbytes(x), inputs,
             lambda be, a: be.batch_norm_backward(a["dy"], a["x"], a["gamma"], a["mean"],
                                                  a["inv_std"], -1, True, True),
             lambda: ref.batch_norm_backward_ref(dy, x, gamma, mean32, inv32, -1, True, True),
             rtol=1e-3, shape=list(x.shape)),
        Case("layer_norm_forward (group_norm, groups=1)", "normalization", "memory",
             3 * _nbytes(x), {"rows": rows, "gamma": gamma, "beta": beta},
             lambda be, a: (be.group_norm_forward(a["rows"], a["gamma"], a["beta"], 1, 1e-3,
                                                  False)[0],),
             lambda: (ln_ref[0],), shape=list(rows.shape)),
    ]


def rnn_cases(size, rng):
    ref = _ref("rnn")
    n, t, c, u = RNN[size]
    out = []
    for cell, gates in (("lstm", 4), ("gru", 3)):
        x = rng.standard_normal((n, t, c), dtype=np.float32)
        w = (rng.standard_normal((c, gates * u)) / math.sqrt(c)).astype(np.float32)
        r = (rng.standard_normal((u, gates * u)) / math.sqrt(u)).astype(np.float32)
        b_shape = (2, 3 * u) if cell == "gru" else (4 * u,)
        b = (0.1 * rng.standard_normal(b_shape)).astype(np.float32)
        dy = rng.standard_normal((n, t, u), dtype=np.float32)
        opts = ("tanh", "sigmoid", True) if cell == "gru" else ("tanh", "sigmoid")
        fwd_ref = ref.gru_forward_ref if cell == "gru" else ref.lstm_forward_ref
        # Per step: the input and the recurrent products, (C + U) x gates*U per sample.
        flop = 2.0 * n * t * (c + u) * gates * u
        inputs = {"x": x, "w": w, "r": r, "b": b, "dy": dy}

        def forward(be, a, cell=cell, opts=opts):
            return getattr(be, cell + "_forward")(a["x"], a["w"], a["r"], a["b"], *opts,
                                                  True, False)

        def step(be, a, cell=cell, opts=opts, forward=forward):
            y, cache = forward(be, a)
            dx, _, _, _ = getattr(be, cell + "_backward")(a["dy"], a["x"], a["w"], a["r"],
                                                              cache, *opts, True, False, True)
            return y, dx

        out.append(Case(
            f"{cell} sequence forward T={t} U={u}", "rnn", "compute", flop, inputs,
            lambda be, a, forward=forward: (forward(be, a)[0],),
            lambda x=x, w=w, r=r, b=b, f=fwd_ref, o=opts: (f(x, w, r, b, *o, True, False),),
            rtol=1e-4, shape=[n, t, c, u]))
        # forward + backward (input gradient included): the backward is two products per
        # step more than the forward's, so 3x the forward's FLOPs. Checked on the forward's
        # output and dx's shape; tests/test_rnn.py checks the gradients themselves.
        out.append(Case(
            f"{cell} sequence forward+backward T={t} U={u}", "rnn", "compute", 3 * flop,
            inputs, step,
            lambda x=x, w=w, r=r, b=b, f=fwd_ref, o=opts: (
                f(x, w, r, b, *o, True, False), None),
            rtol=1e-4, shape=[n, t, c, u]))
    return out


# name -> (slots, scalar arguments after the slots). Each update reads w, g and the slots,
# and writes w and the slots back.
OPTIMIZERS = {
    "sgd": (("momentum_buf",), (0.01, 0.9, False)),
    "adam": (("m", "v", None), (1e-3, 0.9, 0.999, 1e-7, 3)),
    "rmsprop": (("velocity", None, None), (1e-3, 0.9, 0.0, 1e-7)),
    "adagrad": (("accumulator",), (1e-3, 1e-7)),
    "nadam": (("m", "v"), (1e-3, 0.9, 0.999, 1e-7, 3, 0.5)),
    "adamax": (("m", "u"), (1e-3, 0.9, 0.999, 1e-7, 3)),
    "adadelta": (("accumulated_grad", "accumulated_delta_var"), (1e-3, 0.95, 1e-7)),
    "ftrl": (("accumulator", "linear"), (1e-3, -0.5, 0.01, 0.01, 0.0, 0.0)),
    "lion": (("m",), (1e-4, 0.9, 0.99)),
}
CLIP = (1.0, 0.0, 0.0)  # grad_scale, clipvalue (off), weight_decay (off)


def optimizer_cases(size, rng):
    ref = _ref("optim")
    n = PARAMS[size]
    out = []
    for name, (slots, scalars) in OPTIMIZERS.items():
        w = rng.standard_normal(n, dtype=np.float32)
        g = rng.standard_normal(n, dtype=np.float32)
        # Slots positive where a rule takes their root (accumulators), random elsewhere.
        state = {s: (0.1 + rng.random(n, dtype=np.float32)) for s in slots if s}
        if name == "nadam":
            scalars = scalars[:5] + (0.9 * (1 - 0.5 * 0.96 ** 1) * 0.9 * (1 - 0.5 * 0.96 ** 2),)
        inputs = {"w": w, "g": g, **state}
        names = [s for s in slots if s]

        def call(be, a, name=name, slots=slots, scalars=scalars, names=names):
            args = [a[s] if s else None for s in slots]
            getattr(be, name + "_update")(a["w"], a["g"], *args, *scalars, *CLIP)
            return (a["w"],) + tuple(a[s] for s in names)

        def expect(name=name, w=w, g=g, state=state, slots=slots, scalars=scalars,
                   names=names):
            args = [state[s] if s else None for s in slots]
            res = getattr(ref, name + "_update_ref")(w, g, *args, *scalars, *CLIP)
            return tuple(r for r in res if r is not None)[:1 + len(names)]

        traffic = (2 + 2 * len(names)) * n * F32 + n * F32  # w, slots read+written; g read
        out.append(Case(f"{name}_update", "optimizer", "memory", float(traffic), inputs, call,
                        expect, rtol=1e-5, shape=[n]))
    return out


def dropout_cases(size, rng):
    ref = _ref("dropout")
    x = rng.standard_normal(MAPS[size], dtype=np.float32).reshape(-1)
    head = min(x.size, 2048)  # the Philox oracle is a Python loop: check the first elements
    rate, seed = 0.3, 1234
    mask_ref = ref.dropout_mask_ref(head, rate, seed, 0)
    y_ref = x[:head].astype(np.float64) * mask_ref / (1 - rate)
    return [Case(
        "dropout_forward rate=0.3", "dropout", "memory", 2 * _nbytes(x) + x.size, {"x": x},
        lambda be, a: be.dropout_forward(a["x"], rate, seed, 0),
        lambda: (y_ref, mask_ref), shape=[x.size], head=head)]


FAMILIES = {
    "gemm": gemm_cases, "conv2d": conv_cases, "pooling": pool_cases,
    "activation": activation_cases, "loss": loss_cases, "normalization": normalization_cases,
    "rnn": rnn_cases, "optimizer": optimizer_cases, "dropout": dropout_cases,
}


def all_cases(size, wanted=lambda name: True, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for family, make in FAMILIES.items():
        made = make(size, rng)
        cases += [c for c in made if wanted(f"kernel {family} {c.name}")]
    return cases


# -- running a case on a backend ------------------------------------------------------------
def rel_error(got, ref):
    """max |got - ref| / max |ref| (one number per array); a shape mismatch is inf."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-30)


def _upload(be, inputs):
    """Fresh backend copies (the CPU's asarray passes arrays through, and the in-place ops
    would change the operands the oracle reads)."""
    return {k: be.asarray(v.copy(), v.dtype) if isinstance(v, np.ndarray) else v
            for k, v in inputs.items()}


def check_case(case, be):
    """Max relative error of the op's outputs against the float64 oracle (fresh operands,
    so in-place updates start from the state the oracle saw)."""
    got = case.call(be, _upload(be, case.inputs))
    want = case.reference()
    errors = []
    for g, w in zip(got, want):
        if w is None:
            continue
        g = be.to_numpy(g) if hasattr(g, "shape") else g
        if case.head is not None:
            g = np.asarray(g).reshape(-1)[:case.head]
        errors.append(rel_error(g, w))
    worst = max(errors) if errors else math.inf
    return {"passed": bool(worst <= case.rtol), "rtol": case.rtol, "max_rel_error": worst}


def time_case(case, be, sync, repeats, min_s):
    """Seconds per call: ``repeats`` timings, each a loop of calls lasting about ``min_s``
    (launch latency must not dominate small ops), the queue drained inside each timing."""
    args = _upload(be, case.inputs)
    case.call(be, args)
    sync()
    t = time.perf_counter()
    case.call(be, args)
    sync()
    once = time.perf_counter() - t
    calls = max(1, min(200, int(min_s / max(once, 1e-7))))
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            case.call(be, args)
        sync()
        runs.append((time.perf_counter() - t) / calls)
    return runs


def run_case(case, be, sync, repeats, min_s, peaks):
    """The JSON row of one case on one backend; ``peaks`` {'compute': GFLOP/s, 'memory':
    GB/s} of that device."""
    row = {"name": case.name, "family": case.family, "bound": case.bound,
           "shape": case.shape}
    try:
        row["check"] = check_case(case, be)
    except Exception as exc:  # an op missing on a device, a driver error  # noqa: BLE001
        row["check"] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        return row
    if not row["check"]["passed"]:
        return row
    runs = time_case(case, be, sync, repeats, min_s)
    med = statistics.median(runs)
    rate = case.work / med / 1e9
    row.update(runs_s=runs, median_s=med, spread=spread(runs),
               unit="GFLOP/s" if case.bound == "compute" else "GB/s", rate=rate)
    peak = peaks.get(case.bound)
    row["pct_of_peak"] = 100.0 * rate / peak if peak else None
    return row


def spread(runs):
    """Run-to-run spread of a timing: (max - min) / median of its runs."""
    med = statistics.median(runs)
    return (max(runs) - min(runs)) / med if med > 0 else 0.0
