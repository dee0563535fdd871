"""Random whole models, seeded: the inference plan against the layers it replaces, model
gradients against central differences, and OpenCL against the CPU.

The per-layer tests check each layer and op alone; what they cannot see is a composition:
the plan's fused runners (Dense chains, conv-pool pairs, Winograd, lanes, folded
BatchNormalization), the training step's fused backward roads (a Dense through the
activation below it, pooled conv gradients, merges), and wrappers over other layers. Here
a generator draws image, dense, sequence and text models from most of pynn's layers with
random arguments (a draw a layer refuses is skipped), random weights and inputs, and checks:

- the plan (``predict_on_batch``, twice: building, then serving; batch 1 takes the lanes)
  against the model's unfolded eager forward, at one and two threads, for inputs in other
  layouts and dtypes, and after the weights change through ``set_weights`` and in place;
- in float64, the gradients of one training step against central differences of the loss,
  and the float32 step's gradients against the float64 ones;
- on OpenCL, predictions, loss and gradients no further from float64 than the CPU's float32
  answers are, plus a little;
- int8 copies (static, dynamic) near the float model, and a pruned copy, trained, answering
  as its stripped twin does.

Found this way: Bidirectional with merge_mode 'sum' or 'ave' could not train (its backward
asked for inputs it never kept); a plan whose first input overflowed lost its Dense chain
and printed NumPy's warning; most layers that pass a mask on in Keras 3 dropped it, and so
did PruneLowMagnitude, the int8 Dense, FakeQuant and the int8 calibration; an int8 bias
saturated its int32 accumulators. MultiHeadAttention and EinsumDense joined the sequence
layers with their Keras 3 file forms; the adaptive pools, DepthwiseConv1D and Keras 3's new
activations joined later, and volumetric and audio models draw from seeds of their own. Each
test runs a block of seeds; a failure names the seed, which ``check_*`` reproduces alone.
"""

import warnings

import numpy as np
import pytest

import pynn
from pynn import layers as L

SMOOTH = ["tanh", "sigmoid", "gelu", "softplus", "swish", "linear", None, "elu", "selu",
          "mish", "softsign"]
KINKED = ["relu", "leaky_relu", "relu6", "hard_sigmoid", "hard_silu"]
# -- Keras 3's remaining activations (act): the continuous ones (hard_shrink jumps at its
# threshold), and the row ones an Activation layer draws
KERAS3 = ["celu", "log_sigmoid", "squareplus", "tanh_shrink", "hard_tanh", "soft_shrink",
          "sparse_plus", "sparse_sigmoid"]
KERAS3_ROWS = ["glu", "log_softmax", "sparsemax"]
ACTIVATIONS = SMOOTH + KINKED + KERAS3
BLOCKS, SEEDS_PER_BLOCK = 8, 25


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


def size(rng, lo, hi):
    return int(rng.integers(lo, hi + 1))


def image_layer(rng, x):
    c = x.shape[-1]
    kind = pick(rng, ["conv", "conv", "pool", "pool", "bn", "residual", "depthwise",
                      "separable", "transpose", "pad", "crop", "upsample", "layernorm",
                      "groupnorm", "prelu", "concat", "relu", "permute", "reshape",
                      # -- adaptive pooling --
                      "adaptive"])
    kernel = pick(rng, [1, 2, 3, (1, 3), (3, 2)])
    stride = pick(rng, [1, 1, 2])
    padding = pick(rng, ["valid", "same"])
    act = pick(rng, ACTIVATIONS)
    if kind == "conv":
        return L.Conv2D(size(rng, 1, 6), kernel, strides=stride, padding=padding,
                        dilation_rate=pick(rng, [1, 2]) if stride == 1 else 1,
                        activation=act, use_bias=bool(rng.integers(2)))(x)
    if kind == "pool":
        return pick(rng, [L.MaxPooling2D, L.AveragePooling2D])(
            pick(rng, [2, 3, (2, 1)]), strides=pick(rng, [None, 1, 2]), padding=padding)(x)
    if kind == "bn":
        return L.BatchNormalization(center=bool(rng.integers(2)),
                                    scale=bool(rng.integers(2)))(x)
    if kind == "residual":
        y = L.Conv2D(c, pick(rng, [1, 3]), padding="same", activation=act)(x)
        merge = pick(rng, [L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum])
        out = merge()([x, y])
        return L.Activation(pick(rng, ["relu", "tanh"]))(out) if rng.integers(2) else out
    if kind == "depthwise":
        return L.DepthwiseConv2D(kernel, strides=stride, padding=padding,
                                 depth_multiplier=size(rng, 1, 2), activation=act)(x)
    if kind == "separable":
        return L.SeparableConv2D(size(rng, 1, 5), kernel, strides=stride, padding=padding,
                                 activation=act)(x)
    if kind == "transpose":
        return L.Conv2DTranspose(size(rng, 1, 5), kernel, strides=stride, padding=padding,
                                 activation=act)(x)
    if kind == "pad":
        return L.ZeroPadding2D(pick(rng, [1, (1, 2)]))(x)
    if kind == "crop":
        return L.Cropping2D(pick(rng, [1, (1, 0)]))(x)
    if kind == "upsample":
        return L.UpSampling2D(pick(rng, [2, (1, 2)]))(x)
    if kind == "layernorm":
        return L.LayerNormalization()(x)
    if kind == "groupnorm":
        return L.GroupNormalization(groups=pick(rng, [g for g in (1, 2, 3, c) if c % g == 0]))(x)
    if kind == "prelu":
        return L.PReLU()(x)
    if kind == "concat":
        return L.Concatenate()([x, L.Conv2D(size(rng, 1, 3), 3, padding="same")(x)])
    if kind == "relu":
        return L.ReLU(max_value=pick(rng, [None, 2.0]), negative_slope=pick(rng, [0.0, 0.1]),
                      threshold=pick(rng, [0.0, 0.2]))(x)
    if kind == "permute":
        return L.Permute((2, 1, 3))(x)
    if kind == "adaptive":  # overlapping bins, repeated pixels, either layout
        return pick(rng, [L.AdaptiveAveragePooling2D, L.AdaptiveMaxPooling2D])(
            (size(rng, 1, 5), size(rng, 1, 5)),
            data_format=pick(rng, ["channels_last", "channels_first"]))(x)
    return L.Reshape((x.shape[1] * x.shape[2], x.shape[3], 1))(x)


def sequence_layer(rng, x):
    units = size(rng, 1, 6)
    kind = pick(rng, ["lstm", "gru", "rnn", "bidirectional", "conv", "separable", "transpose",
                      "pool", "dense", "timedistributed", "upsample", "crop", "pad",
                      "layernorm", "batchnorm", "attention", "einsum",
                      # -- DepthwiseConv1D, adaptive pooling --
                      "depthwise", "adaptive"])
    if kind in ("lstm", "gru", "rnn"):
        kw = {"return_sequences": True, "go_backwards": bool(rng.integers(2))}
        if kind == "gru" and rng.integers(2):
            kw["reset_after"] = False
        if kind != "rnn" and rng.integers(3) == 0:
            kw["activation"] = pick(rng, ["relu", "sigmoid", "softsign"])
        return {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[kind](units, **kw)(x)
    if kind == "bidirectional":
        inner = pick(rng, [L.LSTM, L.GRU, L.SimpleRNN])(units, return_sequences=True)
        return L.Bidirectional(inner, merge_mode=pick(rng, ["concat", "sum", "ave", "mul"]))(x)
    if kind == "conv":
        return L.Conv1D(units, pick(rng, [1, 2, 3]),
                        padding=pick(rng, ["valid", "same", "causal"]),
                        dilation_rate=pick(rng, [1, 2]), activation=pick(rng, ACTIVATIONS))(x)
    if kind == "separable":
        return L.SeparableConv1D(units, pick(rng, [1, 2, 3]), padding="same")(x)
    if kind == "transpose":
        return L.Conv1DTranspose(units, pick(rng, [1, 2, 3]), strides=pick(rng, [1, 2]),
                                 padding=pick(rng, ["valid", "same"]))(x)
    if kind == "pool":
        return pick(rng, [L.MaxPooling1D, L.AveragePooling1D])(pick(rng, [1, 2]),
                                                               padding="same")(x)
    if kind == "dense":
        return L.Dense(units, activation=pick(rng, ACTIVATIONS))(x)
    if kind == "timedistributed":
        return L.TimeDistributed(L.Dense(units, activation=pick(rng, ACTIVATIONS)))(x)
    if kind == "upsample":
        return L.UpSampling1D(2)(x)
    if kind == "crop":
        return L.Cropping1D((1, 0))(x)
    if kind == "pad":
        return L.ZeroPadding1D(1)(x)
    if kind == "attention":  # self-attention, the steps' mask as query and value masks
        return L.MultiHeadAttention(
            size(rng, 1, 3), size(rng, 1, 4), value_dim=pick(rng, [None, 2]),
            use_bias=bool(rng.integers(2)), use_gate=bool(rng.integers(3) == 0),
            output_shape=pick(rng, [None, units]),
            sliding_window=pick(rng, [None, None, 2]))(
                x, x, key=x if rng.integers(4) == 0 else None,
                use_causal_mask=bool(rng.integers(2)))
    if kind == "einsum":  # a per-step projection, or the steps mixed (drops the mask)
        if rng.integers(2):
            return L.EinsumDense("abc,cd->abd", (x.shape[1], units),
                                 bias_axes=pick(rng, [None, "d", "bd"]),
                                 activation=pick(rng, ACTIVATIONS))(x)
        return L.EinsumDense("abc,bd->adc", (units, x.shape[2]), bias_axes="d")(x)
    if kind == "depthwise":
        return L.DepthwiseConv1D(pick(rng, [1, 2, 3]), strides=pick(rng, [1, 2]),
                                 padding=pick(rng, ["valid", "same"]),
                                 depth_multiplier=size(rng, 1, 2),
                                 dilation_rate=pick(rng, [1, 2]),
                                 activation=pick(rng, ACTIVATIONS))(x)
    if kind == "adaptive":  # a new step count (drops the mask)
        return pick(rng, [L.AdaptiveAveragePooling1D, L.AdaptiveMaxPooling1D])(
            size(rng, 1, 9))(x)
    if kind == "batchnorm":  # a mask's moments in training (Keras's)
        return L.BatchNormalization(momentum=0.5)(x)
    return L.LayerNormalization()(x)


def dense_layer(rng, x):
    kind = pick(rng, ["dense", "dense", "bn", "residual", "layernorm", "concat", "gate",
                      "activation", "repeat", "dot"])
    act = pick(rng, ACTIVATIONS)
    if kind == "dense":
        return L.Dense(size(rng, 1, 12), activation=act, use_bias=bool(rng.integers(2)))(x)
    if kind == "bn":
        return L.BatchNormalization()(x)
    if kind == "residual":
        y = L.Dense(x.shape[-1], activation=act)(x)
        out = pick(rng, [L.Add, L.Subtract, L.Average, L.Maximum])()([x, y])
        return L.Activation("relu")(out) if rng.integers(2) else out
    if kind == "layernorm":
        return L.LayerNormalization()(x)
    if kind == "concat":
        return L.Concatenate()([x, L.Dense(size(rng, 1, 4), activation=act)(x)])
    if kind == "gate":
        return L.Multiply()([x, L.Dense(x.shape[-1], activation="sigmoid")(x)])
    if kind == "activation":
        return L.Activation(pick(rng, SMOOTH[:-1] + KINKED + ["softmax"] + KERAS3
                                 + KERAS3_ROWS))(x)
    if kind == "repeat":
        return L.Flatten()(L.RepeatVector(2)(x))
    y = L.Dense(x.shape[-1], activation=act)(x)
    return L.Dot(axes=1, normalize=bool(rng.integers(2)))([x, y])


def stack(rng, x, layer, count):
    for _ in range(count):
        try:
            x = layer(rng, x)
        except ValueError:  # a draw the layer refuses (a window larger than its input...)
            pass
    return x


def random_model(seed):
    """(head activation, model): the same draw for a seed under any floatx and device."""
    if seed in VOLUME_SEEDS:  # volumetric models: seeds of their own
        return random_volume_model(seed)
    if seed in AUDIO_SEEDS:  # audio models (branch audio): seeds of their own
        return random_audio_model(seed)
    if seed in APPLICATION_SEEDS:  # keras.applications' blocks (branch appsB)
        return random_application_model(seed)
    rng = np.random.default_rng(seed)
    family = pick(rng, ["image", "image", "dense", "sequence", "text"])
    if family == "image":
        inputs = L.Input((size(rng, 2, 8), size(rng, 2, 8), size(rng, 1, 3)))
        x = stack(rng, inputs, image_layer, size(rng, 1, 4))
        x = pick(rng, [L.Flatten, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D])()(x)
    elif family == "dense":
        inputs = x = L.Input((size(rng, 1, 12),))
    elif family == "sequence":
        inputs = x = L.Input((size(rng, 1, 5), size(rng, 1, 4)))
        if rng.integers(3) == 0:
            x = L.Masking(0.0)(x)
        x = stack(rng, x, sequence_layer, size(rng, 1, 2))
        x = pick(rng, [L.GlobalAveragePooling1D, L.GlobalMaxPooling1D, L.Flatten,
                       lambda: L.LSTM(3), lambda: L.GRU(2)])()(x)
    else:
        inputs = L.Input((size(rng, 1, 6),), dtype="int32")
        x = L.Embedding(size(rng, 2, 11), size(rng, 1, 5), mask_zero=bool(rng.integers(2)))(inputs)
        x = stack(rng, x, sequence_layer, size(rng, 0, 1))  # layers the mask passes or meets
        x = pick(rng, [L.GlobalAveragePooling1D, lambda: L.LSTM(3), lambda: L.GRU(3)])()(x)
    x = stack(rng, x, dense_layer, size(rng, 0, 2))
    head = pick(rng, ["softmax", "linear", "sigmoid"])
    return head, pynn.Model(inputs, L.Dense(size(rng, 2, 5), activation=head)(x))


def random_case(seed, model, head, batch=None):
    """(weights in float64, inputs, targets, loss) for ``model`` (whose output activation is
    ``head``) from ``seed``."""
    rng = np.random.default_rng([seed, 1])
    weights = [rng.uniform(0.5, 1.5, v.shape) if "variance" in v.name
               else rng.uniform(-0.6, 0.6, v.shape) for v in model.weights]
    batch = size(rng, 2, 5) if batch is None else batch
    shape = (batch,) + tuple(model.input_shape[1:])
    if np.dtype(model.inputs[0].dtype).kind in "iu":
        vocab = next(layer.input_dim for layer in model.layers
                     if type(layer).__name__ == "Embedding")
        x = rng.integers(0, vocab, shape).astype(np.int32)
        # a sample of padding alone averages over no step (0 / 0, as in Keras)
        x[:, 0] = rng.integers(1, vocab, batch)
    else:
        x = rng.standard_normal(shape)
        x.flat[0] = 0.5 + abs(x.flat[0])
        if x.ndim == 3 and shape[1] > 1 and rng.integers(2):
            x[0, -1] = 0.0  # a step a Masking layer masks
    units = model.output_shape[-1]
    if head == "softmax":
        return weights, x, rng.integers(0, units, batch).astype(np.int32), \
            "sparse_categorical_crossentropy"
    if head == "sigmoid":
        return weights, x, (rng.random((batch, units)) > 0.5).astype(np.float64), \
            "binary_crossentropy"
    return weights, x, rng.standard_normal((batch, units)), "mse"


def assert_agrees(got, want, rtol, what):
    """got equals want up to rtol of the largest finite |want| (at least 1): NaN and
    infinities where want has them."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN elsewhere"
    assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)]), \
        f"{what}: infinities differ"
    if finite.any():
        scale = max(1.0, float(np.abs(want[finite]).max()))
        err = float(np.abs(got[finite] - want[finite]).max())
        assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g}"


def layouts(x):
    """x, and x in the layouts and dtypes a model takes alike (strided, Fortran order, the
    other float width; int64 ids)."""
    if x.dtype.kind in "iu":
        return [x, x.astype(np.int64)]
    wide = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    wide[..., ::2] = x
    other = np.float64 if x.dtype == np.float32 else np.float32
    return [x, wide[..., ::2], np.asfortranarray(x), x.astype(other)]


def check_plan(seed):
    """The plan's answers against the unfolded eager forward (see the module docstring)."""
    use64 = np.random.default_rng([seed, 2]).integers(5) == 0
    floatx = "float64" if use64 else "float32"
    rtol = 1e-10 if use64 else 2e-4
    previous = pynn.floatx()
    pynn.set_floatx(floatx)
    try:
        head, model = random_model(seed)
        for round_ in range(2):
            weights, _, _, _ = random_case(seed + 1000 * round_, model, head)
            if round_ == 0:
                model.set_weights([w.astype(floatx) for w in weights])
            else:  # one layer's own set_weights: the plan must follow that too
                layer = next(la for la in reversed(model.layers) if la.weights)
                layer.set_weights([w.astype(floatx) for w in weights[-len(layer.weights):]])
            for threads in (1, 2):
                for batch in (1, 3, 33):
                    _, x, _, _ = random_case(seed, model, head, batch)
                    x = x if x.dtype.kind in "iu" else x.astype(floatx)
                    with pynn.threads(threads):
                        for k, xk in enumerate(layouts(x)):
                            # the model computes in its own dtype whatever comes
                            want = model._plan.forward([np.ascontiguousarray(
                                xk, x.dtype if x.dtype.kind in "iu" else floatx)], False)
                            want = np.asarray(want[0][0])
                            for call in range(2 if k == 0 else 1):
                                assert_agrees(model.predict_on_batch(xk), want, rtol,
                                              f"seed {seed} round {round_} threads {threads} "
                                              f"batch {batch} layout {k} call {call}")
                        assert_agrees(model(x), model._plan.forward([x], False)[0][0], rtol,
                                      f"seed {seed}: model(x)")
    finally:
        pynn.set_floatx(previous)


def training_step(model, x, y, loss):
    """(loss, gradients) of one training step; SGD at rate 0 leaves the weights as they
    were."""
    model.compile(optimizer=pynn.optimizers.SGD(learning_rate=0.0), loss=loss)
    value = float(model.train_on_batch(x, y))
    to_numpy = pynn.backend.current().to_numpy
    return value, [np.asarray(to_numpy(v.grad), np.float64) for v in model.trainable_weights]


def run_step(seed, floatx, device="cpu"):
    """seed's model and case in floatx on device: (model, x, y, loss name, predictions,
    training loss, gradients)."""
    previous = pynn.floatx(), pynn.get_device()
    pynn.set_floatx(floatx)
    pynn.set_device(device)
    try:
        head, model = random_model(seed)
        weights, x, y, loss = random_case(seed, model, head)
        model.set_weights([w.astype(floatx) for w in weights])
        x = x if x.dtype.kind in "iu" else x.astype(floatx)
        y = y if y.dtype.kind in "iu" else y.astype(floatx)
        predictions = np.asarray(model.predict(x, verbose=0), np.float64)
        value, grads = training_step(model, x, y, loss)
        return model, x, y, loss, predictions, value, grads
    finally:
        pynn.set_floatx(previous[0])
        pynn.set_device(previous[1])


def check_gradients(seed, coordinates=6):
    """float64 gradients against central differences of the training-mode loss (a few
    coordinates of every trainable tensor), float32 gradients against float64."""
    model, x, y, loss, _, _, grads = run_step(seed, "float64")
    loss_fn = pynn.losses.get(loss)
    previous = pynn.floatx()
    pynn.set_floatx("float64")
    try:
        def loss_at():
            return float(np.mean(loss_fn(y, np.asarray(model(x, training=True)))))

        rng = np.random.default_rng([seed, 3])
        for v, g in zip(model.trainable_weights, grads):
            flat = v.value.reshape(-1)
            for i in rng.choice(flat.size, min(coordinates, flat.size), replace=False):
                old, estimates = flat[i], []
                # three steps, the closest kept: a saturated head's loss is itself rounded to
                # ~1e-12, which a step of 1e-6 turns into 1e-6 of error; a kink (Maximum,
                # relu) within 1e-4 of the weight bends the longer steps
                for h in (1e-4, 1e-5, 1e-6):
                    flat[i] = old + h
                    plus = loss_at()
                    flat[i] = old - h
                    minus = loss_at()
                    flat[i] = old
                    estimates.append((plus - minus) / (2 * h))
                want = g.reshape(-1)[i]
                assert min(abs(e - want) for e in estimates) <= 2e-5 * max(1.0, abs(want)), \
                    f"seed {seed}: {v.path}[{i}] gradient {want}, central differences {estimates}"
    finally:
        pynn.set_floatx(previous)
    model32, *_, grads32 = run_step(seed, "float32")
    for v, g32, g64 in zip(model32.trainable_weights, grads32, grads):
        assert_agrees(g32, g64, 2e-3, f"seed {seed}: float32 gradient of {v.path}")


def check_opencl(seed):
    """On OpenCL, predictions, loss and gradients no further from float64 than the CPU's
    float32 ones (4x, plus 1e-5 of the largest value: a reduction in float32 where the
    CPU's runs in double, a gradient that cancels to zero)."""
    model, *_, p64, l64, g64 = run_step(seed, "float64")
    *_, p32, l32, g32 = run_step(seed, "float32")
    *_, pcl, lcl, gcl = run_step(seed, "float32", "opencl")
    names = ["predictions", "loss"] + [v.path for v in model.trainable_weights]
    for name, cl, cpu, ref in zip(names, [pcl, lcl] + gcl, [p32, l32] + g32, [p64, l64] + g64):
        cl, cpu, ref = (np.asarray(a, np.float64) for a in (cl, cpu, ref))
        if not ref.size:
            continue
        scale = max(1.0, float(np.abs(ref).max()))
        err_cpu, err_cl = float(np.abs(cpu - ref).max()), float(np.abs(cl - ref).max())
        assert err_cl <= 4 * err_cpu + 1e-5 * scale, \
            f"seed {seed}: {name} on OpenCL {err_cl:.3g} from float64, the CPU {err_cpu:.3g}"


def check_compression(seed):
    """int8 copies (calibrated, chained or not; dynamic) answer near the float model and
    alike call after call; a pruned copy trains, and strip_pruning's plain model answers as
    the pruned one does."""
    from pynn import compression

    head, model = random_model(seed)
    weights, x, y, loss = random_case(seed, model, head, batch=16)
    model.set_weights([w.astype(np.float32) for w in weights])
    x = x if x.dtype.kind in "iu" else x.astype(np.float32)
    y = y if y.dtype.kind in "iu" else y.astype(np.float32)
    want = model.predict(x, verbose=0)
    for name, quantized in (("static", lambda: compression.quantize(model, x)),
                            ("unchained", lambda: compression.quantize(model, x, chain=False)),
                            ("dynamic", lambda: compression.quantize_dynamic(model))):
        q = quantized()
        got = q.predict(x, verbose=0)
        if np.isfinite(want).all():
            assert_agrees(got, want, 0.15, f"seed {seed}: {name} int8")
        np.testing.assert_array_equal(q.predict(x, verbose=0), got,
                                      err_msg=f"seed {seed}: {name} int8, second call")
    pruned = compression.prune_low_magnitude(model)
    pruned.compile(optimizer="adam", loss=loss)
    pruned.fit(x, y, epochs=1, batch_size=8, verbose=0,
               callbacks=[compression.UpdatePruningStep()])
    assert_agrees(compression.strip_pruning(pruned).predict(x, verbose=0),
                  pruned.predict(x, verbose=0), 1e-5, f"seed {seed}: stripped against pruned")


def seeds(block):
    return range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK)


@pytest.fixture(autouse=True)
def _quiet():
    # random weights overflow some exponentials and saturate some heads: NumPy may say so
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.mark.parametrize("block", range(BLOCKS))
def test_plans_answer_as_the_layers_they_replace(block):
    for seed in seeds(block):
        check_plan(seed)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_model_gradients_match_central_differences(block):
    for seed in seeds(block):
        check_gradients(seed)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_compressed_models_answer_as_their_float_models(block):
    for seed in seeds(block):
        check_compression(seed)


@pytest.mark.opencl
@pytest.mark.parametrize("block", range(BLOCKS))
def test_models_on_opencl_answer_as_on_the_cpu(block):
    for seed in seeds(block):
        check_opencl(seed)


# -- volumetric models (Conv3D/Conv3DTranspose, the 3-D pooling and spatial layers) on seeds of
# their own, so the draws of the families above stay as they were --
VOLUME_BLOCKS = 2
VOLUME_SEEDS = range(10**6, 10**6 + VOLUME_BLOCKS * SEEDS_PER_BLOCK)


def volume_conv_layer(rng, x):
    """Conv3D (plain, dilated, grouped) or Conv3DTranspose."""
    kind = pick(rng, ["conv", "conv", "grouped", "transpose"])
    kernel = pick(rng, [1, 2, 3, (1, 3, 2)])
    stride = pick(rng, [1, 1, 2])
    padding = pick(rng, ["valid", "same"])
    act = pick(rng, ACTIVATIONS)
    if kind == "conv":
        return L.Conv3D(size(rng, 1, 4), kernel, strides=stride, padding=padding,
                        dilation_rate=pick(rng, [1, 2]) if stride == 1 else 1,
                        activation=act, use_bias=bool(rng.integers(2)))(x)
    if kind == "grouped":
        groups = pick(rng, [g for g in (1, 2, 3) if x.shape[-1] % g == 0])
        return L.Conv3D(groups * size(rng, 1, 2), kernel, strides=stride, padding=padding,
                        groups=groups, activation=act)(x)
    return L.Conv3DTranspose(size(rng, 1, 3), kernel, strides=stride, padding=padding,
                             activation=act)(x)


def volume_layer(rng, x):
    kind = pick(rng, ["conv", "conv", "pool", "pool", "dense", "pad", "crop", "upsample",
                      "global"])
    if kind == "conv":
        return volume_conv_layer(rng, x)
    if kind == "pool":
        return pick(rng, [L.MaxPooling3D, L.AveragePooling3D])(
            pick(rng, [2, 3, (2, 1, 3)]), strides=pick(rng, [None, 1, 2, (1, 2, 1)]),
            padding=pick(rng, ["valid", "same"]))(x)
    if kind == "dense":  # on the channels: the trainable layer between the volume layers
        return L.Dense(size(rng, 1, 4), activation=pick(rng, ACTIVATIONS))(x)
    if kind == "pad":
        return L.ZeroPadding3D(pick(rng, [1, (1, 0, 2), ((0, 1), (2, 0), 1)]))(x)
    if kind == "crop":
        return L.Cropping3D(pick(rng, [1, (1, 0, 1), ((0, 1), (1, 0), 0)]))(x)
    if kind == "upsample":
        return L.UpSampling3D(pick(rng, [2, (1, 2, 1), (2, 1, 1)]))(x)
    return pick(rng, [L.GlobalMaxPooling3D, L.GlobalAveragePooling3D])(keepdims=True)(x)


def random_volume_model(seed):
    """(head activation, model) of (N, D, H, W, C) inputs through the 3-D layers."""
    rng = np.random.default_rng(seed)
    inputs = L.Input((size(rng, 2, 6), size(rng, 2, 6), size(rng, 2, 6), size(rng, 1, 3)))
    x = stack(rng, inputs, volume_layer, size(rng, 1, 4))
    heads = [L.Flatten, L.GlobalAveragePooling3D, L.GlobalMaxPooling3D]
    # a wide Flatten feeds the dense layers hundreds of relu kinks, which central
    # differences at the steps above cross (the gradients agree at 1e-7)
    x = pick(rng, heads if np.prod(x.shape[1:]) <= 96 else heads[1:])()(x)
    x = stack(rng, x, dense_layer, size(rng, 0, 1))
    head = pick(rng, ["softmax", "linear", "sigmoid"])
    return head, pynn.Model(inputs, L.Dense(size(rng, 2, 5), activation=head)(x))


# -- audio models: STFTSpectrogram (trainable kernels, every mode but 'angle',
# whose atan2 branch cut central differences straddle) or MelSpectrogram on signals, on seeds
# of their own --
AUDIO_BLOCKS = 1
AUDIO_SEEDS = range(2 * 10**6, 2 * 10**6 + AUDIO_BLOCKS * SEEDS_PER_BLOCK)


def random_audio_model(seed):
    """(head activation, model) of (N, T, C) or (N, T) signals through an audio front end."""
    rng = np.random.default_rng(seed)
    if rng.integers(3):
        inputs = L.Input((size(rng, 24, 60), size(rng, 1, 2)))
        x = L.STFTSpectrogram(mode=pick(rng, ["log", "magnitude", "psd", "real", "imag",
                                              "stft"]),
                              frame_length=size(rng, 6, 12), frame_step=size(rng, 2, 6),
                              window=pick(rng, ["hann", "hamming", None]),
                              scaling=pick(rng, ["density", "spectrum", None]),
                              padding=pick(rng, ["valid", "same"]))(inputs)
        x = pick(rng, [L.Flatten, L.GlobalAveragePooling1D])()(x)
    else:
        fft, stride, length = pick(rng, [16, 31, 32]), size(rng, 4, 9), size(rng, 40, 90)
        # Keras 3.15 declares (T + stride + 1) // stride frames where torch.stft makes
        # 1 + (T + 2 (fft // 2) - fft) // stride: lengths where they differ break Keras's
        # own functional models, so the draw keeps to lengths where they agree
        while (length + stride + 1) // stride != 1 + (length + 2 * (fft // 2) - fft) // stride:
            length += 1
        inputs = L.Input((length,))
        x = L.MelSpectrogram(fft_length=fft, sequence_stride=stride,
                             num_mel_bins=size(rng, 3, 6), sampling_rate=1000, min_freq=0.0,
                             mag_exp=pick(rng, [1.0, 2.0]),
                             power_to_db=bool(rng.integers(2)))(inputs)
        x = L.Flatten()(x)
    x = stack(rng, x, dense_layer, size(rng, 0, 1))
    head = pick(rng, ["softmax", "linear", "sigmoid"])
    return head, pynn.Model(inputs, L.Dense(size(rng, 2, 5), activation=head)(x))


# -- applications (branch appsB): the blocks of keras.applications' families, seeds of their
# own: squeeze-excite (a broadcast Multiply), layer scale, the scaled residual sum and the op
# node residuals (their training-mode noise, stochastic depth, is left to their own tests)
APPLICATION_BLOCKS = 1
APPLICATION_SEEDS = range(3 * 10**6, 3 * 10**6 + APPLICATION_BLOCKS * SEEDS_PER_BLOCK)


def application_layer(rng, x):
    c = x.shape[-1]
    kind = pick(rng, ["squeeze_excite", "layer_scale", "scaled_residual", "op_residual"])
    if kind == "squeeze_excite":
        se = L.Reshape((1, 1, c))(L.GlobalAveragePooling2D()(x))
        se = L.Conv2D(size(rng, 1, 3), 1, activation=pick(rng, ["swish", "relu"]))(se)
        return L.Multiply()([x, L.Conv2D(c, 1, activation="sigmoid")(se)])
    if kind == "layer_scale":
        return L.LayerScale(float(rng.uniform(0.1, 1.0)), c)(x)
    y = L.Conv2D(c, pick(rng, [1, 3]), padding="same", activation=pick(rng, ACTIVATIONS))(x)
    if kind == "scaled_residual":
        return L.CustomScaleLayer(float(rng.uniform(-1.0, 1.0)))([x, y])
    return pick(rng, [pynn.ops.add, pynn.ops.subtract, pynn.ops.multiply])(x, y)


def random_application_model(seed):
    rng = np.random.default_rng(seed)
    inputs = L.Input((size(rng, 2, 7), size(rng, 2, 7), size(rng, 1, 3)))
    x = L.Conv2D(size(rng, 2, 5), pick(rng, [1, 3]), padding="same")(inputs)
    x = stack(rng, x, application_layer, size(rng, 1, 4))
    x = pick(rng, [L.Flatten, L.GlobalAveragePooling2D])()(x)
    head = pick(rng, ["softmax", "linear", "sigmoid"])
    return head, pynn.Model(inputs, L.Dense(size(rng, 2, 5), activation=head)(x))


# The families drawn from seeds of their own, as blocks of SEEDS_PER_BLOCK seeds
OWN_SEED_BLOCKS = {f"{family}{block}": seeds[block * SEEDS_PER_BLOCK:(block + 1) * SEEDS_PER_BLOCK]
                   for family, seeds in (("volume", VOLUME_SEEDS), ("audio", AUDIO_SEEDS))
                   for block in range(len(seeds) // SEEDS_PER_BLOCK)}
# -- applications (branch appsB) --
OWN_SEED_BLOCKS.update({f"applications{block}": APPLICATION_SEEDS[
    block * SEEDS_PER_BLOCK:(block + 1) * SEEDS_PER_BLOCK] for block in range(APPLICATION_BLOCKS)})


@pytest.mark.parametrize("block", sorted(OWN_SEED_BLOCKS))
def test_own_seed_models_plans_and_gradients(block):
    for seed in OWN_SEED_BLOCKS[block]:
        check_plan(seed)
        check_gradients(seed)


@pytest.mark.parametrize("block", sorted(OWN_SEED_BLOCKS))
def test_own_seed_models_compressed(block):
    for seed in OWN_SEED_BLOCKS[block]:
        check_compression(seed)


@pytest.mark.opencl
@pytest.mark.parametrize("block", sorted(OWN_SEED_BLOCKS))
def test_own_seed_models_on_opencl_answer_as_on_the_cpu(block):
    for seed in OWN_SEED_BLOCKS[block]:
        check_opencl(seed)
