"""The op table: every backend (``cpu``, ``opencl``) exports exactly these names with exactly
these signatures. Layers, losses and optimizers call only these. A test asserts both backends
match this table.

Where an op lives: one name, five places
----------------------------------------
An op of family F (dense, conv, pool, activation, loss, metric, dropout, optim, rnn,
merge, spatial, shape, normalization, depthwise,
preprocessing, sparse, quant, elementwise, rnn_mask, bf16, attention,
augment_mix, linalg) named ``<op>`` is,
under that same name:
- ``native/F.pyx``: the CPU kernel, exported as ``pynn._native.F.<op>``;
- ``opencl/F.cl``: its OpenCL kernels, driven by ``pynn/backend/opencl/F.py``;
- ``pynn/backend/operands/F.py``: the checks of its arguments, which both backends call
  before any kernel runs (``<op>(arrays, ...)``; the family is the op's file, not a guess);
- ``tests/reference/F_ref.py``: its float64 NumPy reference ``<op>_ref``;
- ``tests/test_F.py``: its tests, over both backends.
``grep -rn <op>`` finds all of them; ``tests/test_backend_table.py`` checks the rule.

Conventions
-----------
- Legend: N batch, H/W spatial, C channels, F filters, U units, K classes.
- Layout is NHWC (channels_last), C-contiguous. Conv kernels are ``(KH, KW, C, F)``, Dense
  kernels ``(C_in, U)``: Keras 3's layouts.
- "array" means the backend's array type: ``numpy.ndarray`` on the CPU, a device array on
  OpenCL. float32 everywhere; the CPU backend also takes float64 (gradient checks).
- Host data and devices: on the CPU anything NumPy reads is converted. On OpenCL every
  operand is a device array of the current context (``pyopencl.array.Array``): host data is
  a TypeError naming ``asarray``, the one upload point, so an op never moves data between
  host and device behind the caller's back. A contiguous view at an offset is read as it
  is; a non-contiguous one is an error (copy it first); an in-place operand must be a whole
  buffer. ``asarray`` refuses what it would silently corrupt: complex data, integers that do
  not fit the target dtype.
- Functions return new arrays unless the name ends in ``_update`` or ``_inplace`` (those mutate
  their first array arguments and return None, or a Python float where stated).
- ``strides``, ``dilation_rate``, ``pool_size`` are tuples of two ints; ``padding`` is
  ``"valid"`` or ``"same"`` (Keras: output ``ceil(n/s)``, the odd padding pixel goes after).
- ``activation`` is a lower-case name from ``ACTIVATIONS``; ``alpha`` its parameter
  (leaky_relu negative slope, elu and celu alpha, hard_shrink and soft_shrink threshold,
  squareplus b; ignored by the others).
- Scalars (losses, norms, counts) come back as Python floats/ints: the only device-to-host
  traffic of a training step.
"""

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu", "elu", "selu",
               "gelu", "softplus",
               # -- activations (issue 12): appended, so the codes above keep their numbers
               "relu6", "hard_sigmoid", "silu", "hard_silu", "mish", "exponential", "softsign",
               # -- activations (Keras 3's remaining keras.activations): appended the same way
               "celu", "glu", "hard_shrink", "hard_tanh", "log_sigmoid", "log_softmax",
               "soft_shrink", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus",
               "tanh_shrink")

# Keras 3's second names for one function (keras.activations: swish is silu, hard_swish is
# hard_silu). The ops take either and work under the canonical name.
ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}

# Activations whose derivative cannot be computed from the output alone: the forward op then
# also returns the pre-activation ``z`` (otherwise ``z`` is None).
ACTIVATIONS_NEEDING_INPUT = ("gelu", "silu", "hard_silu", "mish",
                             # -- Keras 3's remaining activations
                             "glu", "sparsemax", "tanh_shrink")

# Activations of whole last-axis rows that only activation_forward / activation_backward (the
# Activation layer, pynn.ops) compute; the ops that fuse an activation refuse them (softmax,
# the first row activation, is fused everywhere), and a layer's activation= runs log_softmax
# or sparsemax after its linear part (layers.base). glu halves the last axis: its output is
# the first half times the sigmoid of the second (Keras's glu, axis -1).
ACTIVATIONS_ON_ROWS = ("glu", "log_softmax", "sparsemax")

# The recurrent kernels take their derivatives from the activation's output, so softmax and
# ACTIVATIONS_NEEDING_INPUT are not offered there; leaky_relu and elu use Keras's default
# parameters.
RNN_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu",
                   "softplus",
                   # -- activations (issue 12): hard_sigmoid is Keras 2's LSTM default
                   "relu6", "hard_sigmoid", "softsign",
                   # -- Keras 3's remaining activations whose derivative is the output's
                   "celu", "hard_shrink", "hard_tanh", "log_sigmoid", "soft_shrink",
                   "sparse_plus", "sparse_sigmoid", "squareplus")
# The activations' parameters as keras.activations defines them (leaky_relu's negative_slope,
# elu's alpha), used where an activation is named without one.
DEFAULT_ALPHA = {"leaky_relu": 0.2, "elu": 1.0,
                 # -- Keras 3's remaining activations: celu's alpha, the shrinks' threshold,
                 # squareplus's b
                 "celu": 1.0, "hard_shrink": 0.5, "soft_shrink": 0.5, "squareplus": 4.0}

METRIC_MODES = ("binary", "categorical", "sparse")

# -- elementwise (issue 13): pynn.ops' functions on the device; each op's code is its index --
ELEMENTWISE_UNARY = ("negative", "abs", "sign", "exp", "expm1", "log", "log1p", "sqrt",
                     "square", "reciprocal", "sin", "cos", "tan", "arcsin", "arccos", "arctan",
                     "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh", "floor", "ceil",
                     "round",
                     # -- opsk: keras.ops' special functions (appended: codes keep numbers) --
                     "erf", "erfc", "erfinv",
                     # -- opsm: keras.ops' i0 and its derivative i1 (codes appended) --------
                     "i0", "i1")
# Comparisons give 1.0 / 0.0 in the operands' float dtype (masks for gradients).
ELEMENTWISE_BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power",
                      "arctan2", "equal", "greater", "greater_equal", "less", "less_equal",
                      # -- opsm: keras.ops.nextafter (appended: codes keep numbers) --
                      "nextafter")
REDUCTIONS = ("sum", "max", "min", "prod")
# -- opsm: integer ops on int32 (and int64 on the CPU), NumPy's results (codes are the index)
INTEGER_BINARY = ("bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift",
                  "gcd", "lcm")
INTEGER_UNARY = ("invert",)

# -- merge: the elementwise modes of merge_forward / merge_backward (Keras's Add, Subtract,
# Multiply, Average, Maximum, Minimum layers).
MERGE_MODES = ("add", "subtract", "multiply", "average", "maximum", "minimum")

LOSSES = ("mean_squared_error", "mean_absolute_error", "huber", "binary_crossentropy",
          "categorical_crossentropy", "sparse_categorical_crossentropy",
          # -- losses of issue 15 (keras.losses' other functions); codes are the index ------
          "kl_divergence", "hinge", "squared_hinge", "categorical_hinge", "log_cosh",
          "poisson", "mean_squared_logarithmic_error", "mean_absolute_percentage_error",
          "cosine_similarity", "binary_focal_crossentropy",
          # -- Keras 3's CategoricalFocalCrossentropy, Dice and Tversky (appended) ------
          "categorical_focal_crossentropy", "dice", "tversky",
          # -- Keras 3's CategoricalGeneralizedCrossEntropy (appended; sparse labels) ------
          "categorical_generalized_cross_entropy")

# name -> parameter names, in order. The signature test checks each backend against this.
OPS = {
    # -- elementwise (issue 13; native/elementwise.pyx, opencl/elementwise.cl) -------------
    # y = op(x) elementwise, x's shape and dtype.
    "elementwise_unary": ("x", "op"),
    # y = op(a, b) with NumPy's broadcasting (at most 6 axes), the operands' dtype.
    "elementwise_binary": ("a", "b", "op"),
    # op over ``axes`` (None: all), in the operand's dtype, accumulated in order per output.
    "reduce_axes": ("x", "axes", "op", "keepdims"),
    # -- opsm: y = op(a, b) on integers of one dtype, broadcasting; y = op(x) (invert) --
    "integer_binary": ("a", "b", "op"),
    "integer_unary": ("x", "op"),
    # -- arrays ---------------------------------------------------------------------------
    "asarray": ("x", "dtype"),                 # host data -> backend array (copy/upload)
    "to_numpy": ("a",),                        # backend array -> numpy.ndarray (download)
    "empty": ("shape", "dtype"),
    "zeros": ("shape", "dtype"),
    "full": ("shape", "value", "dtype"),
    "copy": ("a",),
    "reshape": ("a", "shape"),                 # a view where possible
    "add_inplace": ("a", "b"),                 # a += b
    "scale_inplace": ("a", "factor"),          # a *= factor
    # -- dense (native/dense.pyx, opencl/dense.cl) ---------------------------------------
    # y = act(x @ kernel + bias); bias may be None. Returns (y, z), z as described above.
    "dense_forward": ("x", "kernel", "bias", "activation", "alpha"),
    "dense_backward_input": ("dz", "kernel"),   # dz @ kernel.T -> (N, C_in)
    "dense_backward_weight": ("x", "dz"),        # x.T @ dz -> (C_in, U)
    # The input gradient of a Dense taken on through the layer below's activation and bias:
    # (dz_below, dbias_below or None when not use_bias) = bias_activation_backward of
    # dense_backward_input(dz, kernel) with z, y that layer's pre-activation and output
    # (dense_backward_input_activation_composed below), the same bits. The CPU backend
    # makes dz_below and the bias sums of a relu layer in each column band of the product
    # while it is in cache.
    "dense_backward_input_activation": ("dz", "kernel", "z", "y", "activation", "alpha",
                                        "use_bias"),
    "bias_backward": ("dz",),                     # sum over every axis but the last
    # -- activations (native/activation.pyx, opencl/activation.cl) -----------------------
    "activation_forward": ("x", "activation", "alpha"),       # any shape; softmax on last axis
    # (the ACTIVATIONS_ON_ROWS too; glu's output has half of x's last axis)
    # dL/dx from dL/dy; x (pre-activation) may be None unless activation needs it, y is the
    # forward output.
    "activation_backward": ("dy", "x", "y", "activation", "alpha"),
    # (dz, db): dz = activation_backward(...) and db = bias_backward(dz), from one pass over
    # the data: the backward of a layer with a bias and an activation.
    "activation_bias_backward": ("dy", "x", "y", "activation", "alpha"),
    # (dz, db) of activation_bias_backward for a layer whose output y only a MaxPooling2D
    # reads, from that pool's output gradient dpool, argmax and output pooled (relu's mask;
    # may be None otherwise): activation_bias_backward(maxpool2d_backward(dpool, argmax,
    # y.shape), None, y, ...), the same bits; activations of y alone. The CPU backend makes
    # dz from the pool's arrays where its windows tile the map: no pool input gradient.
    "pooled_activation_bias_backward": ("dpool", "argmax", "pooled", "y", "pool_size",
                                        "strides", "padding", "activation", "alpha"),
    # -- conv (native/conv.pyx, opencl/conv.cl) ------------------------------------------
    # (N,H,W,C) * (KH,KW,C,F) -> (y, z) with y (N,HO,WO,F), bias+activation fused.
    "conv2d_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate",
                       "activation", "alpha"),
    "conv2d_backward_input": ("dz", "kernel", "input_shape", "strides", "padding",
                              "dilation_rate"),
    "conv2d_backward_weight": ("x", "dz", "kernel_shape", "strides", "padding",
                               "dilation_rate"),
    # A Conv2D layer's whole backward from dL/dy of y = activation(conv(x, kernel) + bias)
    # -> (dx or None when not need_input_grad, dkernel, dbias or None when not use_bias);
    # z, y as in activation_backward. Equal to conv2d_backward_composed below; a backend may
    # fuse the passes (the CPU one makes dz, dbias and dkernel in one pass over dy).
    "conv2d_backward": ("dy", "x", "z", "y", "kernel", "strides", "padding", "dilation_rate",
                        "activation", "alpha", "use_bias", "need_input_grad"),
    # A Conv2D whose output only a MaxPooling2D reads -> (pooled, argmax): maxpool2d_forward
    # of conv2d_forward's y (conv2d_pool_forward_composed below), the same bits. The CPU
    # backend runs a direct conv band by band (a row of windows' rows), pooling each band
    # in cache, where the windows tile the conv's output: y is never whole.
    "conv2d_pool_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate",
                            "activation", "alpha", "pool_size", "pool_strides", "pool_padding"),
    # conv2d_backward of a Conv2D whose output y only a MaxPooling2D reads, from that pool's
    # output gradient dpool, argmax (maxpool2d_forward's) and output pooled (its relu mask;
    # None is allowed for a linear activation): equal to conv2d_pool_backward_composed below,
    # conv2d_backward(maxpool2d_backward(dpool, argmax, y.shape), ...). The CPU backend makes
    # dz from the pool's arrays where the windows tile y (no pool dx written, y not read).
    # y may be None (conv2d_pool_forward kept none) for relu under such a pool and for
    # linear: the backends then take roads that do not read it.
    "conv2d_pool_backward": ("dpool", "argmax", "pooled", "x", "z", "y", "kernel", "strides",
                             "padding", "dilation_rate", "activation", "alpha", "use_bias",
                             "need_input_grad", "pool_size", "pool_strides", "pool_padding"),
    # -- convolution variants (issue 12; conv: native/conv.pyx, opencl/conv.cl; depthwise:
    # native/depthwise.pyx, opencl/depthwise.cl) ------------------------------------------
    # Keras's Conv2DTranspose: x (N,H,W,C) * kernel (KH,KW,F,C) -> (y, z), y (N,HO,WO,F) by
    # Keras 3's output length (operands.conv.conv_transpose_output_size); output_padding None
    # or two ints below the strides. The input gradient of a 'valid' conv2d onto the full
    # output, then cropped, bias+activation fused as in conv2d_forward.
    "conv2d_transpose_forward": ("x", "kernel", "bias", "strides", "padding", "output_padding",
                                 "dilation_rate", "activation", "alpha"),
    # -> (dx or None when not need_input_grad, dkernel, dbias or None when not use_bias).
    "conv2d_transpose_backward": ("dy", "x", "z", "y", "kernel", "strides", "padding",
                                  "output_padding", "dilation_rate", "activation", "alpha",
                                  "use_bias", "need_input_grad"),
    # Keras's DepthwiseConv2D: x (N,H,W,C) * kernel (KH,KW,C,M) -> (y, z), y (N,HO,WO,C*M),
    # output channel c*M + m reads input channel c (Keras's order); geometry as conv2d.
    "depthwise_conv2d_forward": ("x", "kernel", "bias", "strides", "padding",
                                 "dilation_rate", "activation", "alpha"),
    "depthwise_conv2d_backward_input": ("dz", "kernel", "input_shape", "strides", "padding",
                                        "dilation_rate"),
    "depthwise_conv2d_backward_weight": ("x", "dz", "kernel_shape", "strides", "padding",
                                         "dilation_rate"),
    # Keras's Conv2D(groups=G): kernel (KH,KW,C/G,F), G dividing C and F; output channel o
    # reads the C/G input channels of group o // (F/G). The depthwise kernels, generalized
    # (depthwise is G = C); Conv2D with groups=1 stays on the conv2d_* ops.
    "grouped_conv2d_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate",
                               "groups", "activation", "alpha"),
    "grouped_conv2d_backward_input": ("dz", "kernel", "input_shape", "strides", "padding",
                                      "dilation_rate", "groups"),
    "grouped_conv2d_backward_weight": ("x", "dz", "kernel_shape", "strides", "padding",
                                       "dilation_rate", "groups"),
    # -- pooling (native/pool.pyx, opencl/pool.cl) ---------------------------------------
    # argmax: int32 array shaped like y holding the flat index h*W + w of the chosen input
    # pixel within its (n, c) plane. Ties go to the first index in row-major window order.
    "maxpool2d_forward": ("x", "pool_size", "strides", "padding"),        # -> (y, argmax)
    "maxpool2d_backward": ("dy", "argmax", "input_shape"),
    # 'same' padding averages only the in-bounds pixels (Keras / TF semantics).
    "avgpool2d_forward": ("x", "pool_size", "strides", "padding"),        # -> y
    "avgpool2d_backward": ("dy", "input_shape", "pool_size", "strides", "padding"),
    "global_avgpool2d_forward": ("x",),                                   # (N,H,W,C) -> (N,C)
    "global_avgpool2d_backward": ("dy", "input_shape"),
    "global_maxpool2d_forward": ("x",),                                   # -> (y, argmax)
    "global_maxpool2d_backward": ("dy", "argmax", "input_shape"),
    # -- 3-D pooling (branch vol): x (N,D,H,W,C), pool_size and strides 3 ints, the 2-D
    # rules per axis; argmax holds (d*H + h)*W + w within the (n, c) volume.
    "maxpool3d_forward": ("x", "pool_size", "strides", "padding"),        # -> (y, argmax)
    "maxpool3d_backward": ("dy", "argmax", "input_shape"),
    "avgpool3d_forward": ("x", "pool_size", "strides", "padding"),        # -> y
    "avgpool3d_backward": ("dy", "input_shape", "pool_size", "strides", "padding"),
    # -- adaptive pooling (Keras 3's AdaptiveAveragePooling/AdaptiveMaxPooling 1D-3D) ------
    # x (N, *spatial, C), 1 to 3 spatial axes; output_size one int per spatial axis (an int
    # is repeated). Output o of an axis of length L pooled to O reads the bin
    # [floor(o*L/O), ceil((o+1)*L/O)) (torch's adaptive pools: bins may overlap, and repeat
    # pixels when O > L). argmax: int32 like y, the flat index d*H*W + h*W + w of the chosen
    # pixel within its (n, c) plane, the first maximum in row-major bin order.
    "adaptive_avgpool_forward": ("x", "output_size"),                     # -> y
    "adaptive_avgpool_backward": ("dy", "input_shape"),
    "adaptive_maxpool_forward": ("x", "output_size"),                     # -> (y, argmax)
    "adaptive_maxpool_backward": ("dy", "argmax", "input_shape"),
    # -- dropout (native/dropout.pyx, opencl/dropout.cl) ---------------------------------
    # Philox4x32-10 keyed by seed, counter = element index + offset: the CPU and OpenCL masks
    # are bit-identical. mask is uint8 (1 keep, 0 drop); survivors are scaled by 1/(1-rate).
    "dropout_forward": ("x", "rate", "seed", "offset"),                  # -> (y, mask)
    "dropout_backward": ("dy", "mask", "rate"),
    # -- losses (native/loss.pyx, opencl/loss.cl) ----------------------------------------
    # Mean over the batch (Keras 'sum_over_batch_size'). Returns (loss: float, grad or None):
    # grad = d(loss)/d(y_pred), already divided by the batch size. ``param`` is huber's delta,
    # the label_smoothing of binary/categorical cross-entropy (None: 0), for
    # binary_focal_crossentropy None or a dict of Keras's apply_class_balancing, alpha, gamma,
    # label_smoothing (Keras's defaults for those missing); for categorical_focal_crossentropy
    # None or a dict of alpha, gamma, label_smoothing; for tversky None or a dict of alpha,
    # beta; for categorical_generalized_cross_entropy (int32 labels) None or a dict of q;
    # ignored by the others. Sparse labels are int32 class ids, validated by the caller.
    # dice and tversky (Keras's axis=None) reduce the whole batch to one loss: sample_weight
    # scales it by the weights' mean, as Keras's scalar loss times the weights averages.
    # sample_weight (None or floats shaped like the per-sample losses, y_pred.shape[:-1], or
    # a leading part of it) multiplies each per-sample loss; the mean still divides by the
    # number of losses, not the weights' sum (Keras 3's sum_over_batch_size).
    "loss_forward_backward": ("name", "y_true", "y_pred", "from_logits", "param",
                              "need_grad", "sample_weight"),
    # -- Keras 3's CTC and Circle losses (loss family: native/loss.pyx, opencl/loss.cl) --
    # (mean loss: float, grad or None) as loss_forward_backward, for the losses whose targets
    # are not shaped like y_pred. ctc: y_true (B, S) int32 labels padded at the end with 0
    # (Keras's blank and mask index), y_pred (B, T, C) logits (log-softmaxed, as Keras does
    # even to probabilities), every sample T steps long. circle: y_true (N,) int32 labels,
    # y_pred (N, D) embeddings; the mean runs over the samples with a loss > 0 (Keras's mask).
    # sample_weight: None or (B,) / (N,) floats multiplying each sample's loss.
    "ctc_loss_forward_backward": ("y_true", "y_pred", "need_grad", "sample_weight"),
    "circle_loss_forward_backward": ("y_true", "y_pred", "gamma", "margin", "remove_diagonal",
                                     "need_grad", "sample_weight"),
    # -- opss: keras.ops.ctc_loss: (losses (B,), grad or None) of the same recursion, each
    # sample's weighted loss and d(their sum)/d(y_pred), not averaged
    "ctc_loss_samples": ("y_true", "y_pred", "need_grad", "sample_weight"),
    # -- opss: keras.ops.categorical/sparse_categorical_crossentropy: (losses y_pred.shape[:-1],
    # grad or None), each row's loss of loss_forward_backward and d(their sum)/d(y_pred)
    "crossentropy_rows": ("name", "y_true", "y_pred", "from_logits", "need_grad"),
    # -- metrics (native/metric.pyx, opencl/metric.cl) ----------------------------------
    # Counts over a batch, summed by the caller. mode: "binary" (threshold), "categorical"
    # (one-hot y_true), "sparse" (int labels). Returns an int.
    "accuracy_count": ("y_true", "y_pred", "mode", "threshold"),
    "top_k_count": ("y_true", "y_pred", "k", "sparse"),
    # Binary confusion counts after thresholding (multi-column y flattens): (tp, fp, fn).
    "confusion_counts": ("y_true", "y_pred", "threshold"),
    # -- issue 15: F-beta and AUC counts, small host arrays summed by the caller --------
    # fbeta_counts -> float64 (4, K): per class (tp, fp, fn, support) of 2-D inputs; a
    # prediction is y_pred > threshold, or (threshold None) y_pred >= its row's max and
    # |y_pred| > 1e-9 (Keras's FBetaScore). threshold_counts -> int64 (4, T): per threshold
    # (tp, fp, tn, fn) over every element, label y_true != 0, prediction y_pred > threshold.
    "fbeta_counts": ("y_true", "y_pred", "threshold"),
    "threshold_counts": ("y_true", "y_pred", "thresholds"),
    # confusion_matrix -> int64 (K, K): counts[true, pred] of int class ids (MeanIoU).
    "confusion_matrix": ("y_true", "y_pred", "num_classes"),
    # -- regularizers and clipping (native/optim.pyx, opencl/optim.cl) -------------------
    # grad += l1*sign(w) + 2*l2*w; returns the penalty l1*sum|w| + l2*sum(w^2) as a float.
    "regularizer_inplace": ("w", "grad", "l1", "l2"),
    "sum_squares": ("a",),                                                # float
    # -- optimizer updates, one fused pass per parameter (native/optim.pyx) -------------
    # Each first clips the gradient: g = clip(g * grad_scale, -clipvalue, clipvalue)
    # (clipvalue <= 0: no clip; grad_scale carries clipnorm/global_clipnorm), then applies
    # decoupled weight decay w -= w * weight_decay * lr, then the rule below (Keras 3's exact
    # formulas, see shared KERAS_FACTS). Slots that an option does not use are None.
    "sgd_update": ("w", "g", "momentum_buf", "lr", "momentum", "nesterov", "grad_scale",
                   "clipvalue", "weight_decay"),
    # t is the 1-based step used for bias correction; vhat is the amsgrad slot or None.
    "adam_update": ("w", "g", "m", "v", "vhat", "lr", "beta_1", "beta_2", "epsilon", "t",
                    "grad_scale", "clipvalue", "weight_decay"),
    # sgd_update (no mask) on every (ws[j], gs[j], momentum_bufs[j]) with grad_scales[j] as
    # one op (momentum_bufs None: plain SGD), each parameter getting sgd_update's bits.
    "sgd_update_many": ("ws", "gs", "momentum_bufs", "lr", "momentum", "nesterov",
                        "grad_scales", "clipvalue", "weight_decay"),
    # adam_update (no vhat, no mask) on every (ws[j], gs[j], ms[j], vs[j]) with grad_scales[j],
    # as one op: one pass over the whole step (one OpenMP region on the CPU), each parameter
    # getting the bits adam_update gives it.
    "adam_update_many": ("ws", "gs", "ms", "vs", "lr", "beta_1", "beta_2", "epsilon", "t",
                         "grad_scales", "clipvalue", "weight_decay"),
    "rmsprop_update": ("w", "g", "velocity", "momentum_buf", "average_grad", "lr", "rho",
                       "momentum", "epsilon", "grad_scale", "clipvalue", "weight_decay"),
    "adagrad_update": ("w", "g", "accumulator", "lr", "epsilon", "grad_scale", "clipvalue",
                       "weight_decay"),
    # -- issue 15's optimizers (Keras 3's update_step formulas; t the 1-based step) ------
    # u_product: Nadam's running product of beta_1 (1 - 0.5 * 0.96^s), s = 1..t.
    "nadam_update": ("w", "g", "m", "v", "lr", "beta_1", "beta_2", "epsilon", "t",
                     "u_product", "grad_scale", "clipvalue", "weight_decay"),
    "adamax_update": ("w", "g", "m", "u", "lr", "beta_1", "beta_2", "epsilon", "t",
                      "grad_scale", "clipvalue", "weight_decay"),
    "adadelta_update": ("w", "g", "accumulated_grad", "accumulated_delta_var", "lr", "rho",
                        "epsilon", "grad_scale", "clipvalue", "weight_decay"),
    "ftrl_update": ("w", "g", "accumulator", "linear", "lr", "learning_rate_power", "l1",
                    "l2", "l2_shrinkage", "beta", "grad_scale", "clipvalue", "weight_decay"),
    "lion_update": ("w", "g", "m", "lr", "beta_1", "beta_2", "grad_scale", "clipvalue",
                    "weight_decay"),
    # -- recurrent (native/rnn.pyx, opencl/rnn.cl) --------------------------------------
    # Keras 3's SimpleRNN / LSTM (gates i, f, c, o) / GRU (gates z, r, h) over a whole
    # sequence, zero initial state. x (N, T, C), kernel (C, k*U), recurrent_kernel (U, k*U),
    # bias (k*U,) or None; GRU with reset_after: bias (2, 3U) = (input row, recurrent row).
    # activation / recurrent_activation: names from RNN_ACTIVATIONS.
    # Forward -> (y, cache): y is h_seq (N, T, U) when return_sequences, else the last output
    # (N, U); go_backwards reads x from its last step and returns outputs in that processing
    # order (Keras). cache is a tuple of backend arrays that only the matching backward reads.
    # Backward takes dy shaped like y and returns (dx or None when not need_input_grad,
    # dkernel, drecurrent_kernel, dbias shaped like the bias).
    "simple_rnn_forward": ("x", "kernel", "recurrent_kernel", "bias", "activation",
                           "return_sequences", "go_backwards"),
    "simple_rnn_backward": ("dy", "x", "kernel", "recurrent_kernel", "cache", "activation",
                            "return_sequences", "go_backwards", "need_input_grad"),
    "lstm_forward": ("x", "kernel", "recurrent_kernel", "bias", "activation",
                     "recurrent_activation", "return_sequences", "go_backwards"),
    "lstm_backward": ("dy", "x", "kernel", "recurrent_kernel", "cache", "activation",
                      "recurrent_activation", "return_sequences", "go_backwards",
                      "need_input_grad"),
    "gru_forward": ("x", "kernel", "recurrent_kernel", "bias", "activation",
                    "recurrent_activation", "reset_after", "return_sequences", "go_backwards"),
    "gru_backward": ("dy", "x", "kernel", "recurrent_kernel", "cache", "activation",
                     "recurrent_activation", "reset_after", "return_sequences", "go_backwards",
                     "need_input_grad"),
    # -- rnn_mask: general recurrence (issue 14, recurrent half; native/rnn_mask.pyx,
    # opencl/rnn_mask.cl) -----------------------------------------------------------------
    # What the whole-sequence ops above do not: Keras's mask, an initial state, recurrent
    # dropout and the final state. xw (N, T, G) = x @ kernel + input bias (the layer's dense
    # op); cell in ("simple_rnn", "lstm", "gru" (reset_after), "gru_reset_before");
    # recurrent_bias (G,) for "gru" or None; h0 (N, U), c0 (N, U) for "lstm" only; mask
    # (N, T) of 1/0 or None (all steps); recurrent_dropout (N, G) multipliers of h_{t-1} per
    # gate block, fixed over time, or None. A masked step keeps the states and repeats the
    # previous output (zeros before the first unmasked step), or outputs zeros with
    # zero_output_for_mask. Forward -> (y, h_last, c_last or None, cache), y in processing
    # order; backward -> (dxw at the input's time index, drecurrent_kernel, drecurrent_bias,
    # dh0, dc0 or None), dh_last / dc_last the final states' gradients or None.
    "recurrence_forward": ("xw", "recurrent_kernel", "recurrent_bias", "h0", "c0", "mask",
                           "recurrent_dropout", "cell", "activation", "recurrent_activation",
                           "return_sequences", "go_backwards", "zero_output_for_mask"),
    "recurrence_backward": ("dy", "dh_last", "dc_last", "recurrent_kernel", "cache", "cell",
                            "activation", "recurrent_activation", "return_sequences",
                            "go_backwards", "zero_output_for_mask"),
    # x (N, T, C) * scale (N, C) at every step: input dropout fixed over time; its own
    # backward.
    "sequence_scale": ("x", "scale"),
    # x (N, T, F) reversed along time (Bidirectional's backward direction); its own backward.
    "sequence_reverse": ("x",),
    # -- merge (native/merge.pyx, opencl/merge.cl) ------------------------------------
    # Keras 3's merge layers. ``inputs`` is a list of arrays of one dtype. merge_forward
    # folds them left to right by ``mode`` (MERGE_MODES; one shape for all, subtract takes
    # exactly 2, average divides the sum by their count); merge_backward returns a tuple of
    # input gradients, maximum/minimum with torch's rule at each fold step (a tie splits the
    # gradient in half, a NaN passes it to both). merge_forward may end in an elementwise
    # ``activation`` (alpha its parameter) in the same pass.
    "merge_forward": ("inputs", "mode", "activation", "alpha"),
    "merge_backward": ("dy", "inputs", "mode"),
    # Along ``axis`` (negative counts from the end); the backward gives back a tuple of
    # slices of dy, ``sizes`` long along the axis.
    "concatenate_forward": ("inputs", "axis"),
    "concatenate_backward": ("dy", "sizes", "axis"),
    # Keras's Dot: batch_dot over the axes pair (an int: the same axis of both), each input
    # first L2-normalized along its axis when ``normalize`` (x * min(rsqrt(sum x^2), 1e7)).
    # Backward -> (dx1, dx2).
    "dot_forward": ("x1", "x2", "axes", "normalize"),
    "dot_backward": ("dy", "x1", "x2", "axes", "normalize"),
    # -- spatial and shape (native/spatial.pyx, native/shape.pyx; opencl/ the same) -------
    # padding ((top, bottom), (left, right)) ints >= 0. pad2d_forward zero-pads (N,H,W,C);
    # pad2d_backward is the crop that undoes it, so it is also Cropping2D's forward (and
    # pad2d_forward Cropping2D's backward).
    "pad2d_forward": ("x", "padding"),
    "pad2d_backward": ("dy", "padding"),
    # size: integer factors (SH, SW); interpolation "nearest" (Keras's ops.repeat) or
    # "bilinear" (torch's interpolate, align_corners=False, antialias=False: Keras 3's
    # ops.image.resize on the torch backend). (N,H,W,C) -> (N,H*SH,W*SW,C).
    "upsample2d_forward": ("x", "size", "interpolation"),
    "upsample2d_backward": ("dy", "input_shape", "size", "interpolation"),
    # -- 3-D spatial ops (branch vol): (N,D,H,W,C); padding ((front, back), (top, bottom),
    # (left, right)), pad3d_backward the crop (Cropping3D's forward); size 3 integer factors,
    # each voxel repeated (Keras's UpSampling3D). (N,D,H,W,C) -> (N,D*SD,H*SH,W*SW,C).
    "pad3d_forward": ("x", "padding"),
    "pad3d_backward": ("dy", "padding"),
    "upsample3d_forward": ("x", "size"),
    "upsample3d_backward": ("dy", "input_shape", "size"),
    # perm permutes every axis (batch included, at most 6 axes): y.shape[k] = x.shape[perm[k]];
    # the backward applies the inverse permutation to dy.
    "transpose_forward": ("x", "perm"),
    "transpose_backward": ("dy", "perm"),
    "repeat_vector_forward": ("x", "n"),                 # (N, F) -> (N, n, F)
    "repeat_vector_backward": ("dy",),                   # (N, n, F) -> (N, F): sum over n
    # -- normalization (native/normalization.pyx, opencl/normalization.cl) ---------------
    # Batch norm over every axis of x but ``axis``: gamma, beta (C,) or None (scale / center
    # off), moving statistics (C,). Forward -> (y, mean, inv_std): the statistics y was
    # normalized with, the batch's (biased variance) when training, else the moving ones.
    # Training also updates moving_mean and moving_variance in place (the one forward op
    # that mutates): moving = moving*momentum + batch*(1 - momentum), Keras 3.
    # An elementwise ``activation`` (alpha its parameter) may follow in the same pass.
    "batch_norm_forward": ("x", "gamma", "beta", "moving_mean", "moving_variance", "axis",
                           "momentum", "epsilon", "training", "activation", "alpha"),
    # -> (dx or None, dgamma, dbeta); batch_stats: mean/inv_std came from this batch, so dx
    # carries their dependence on x (training), else they were constants. With the forward's
    # activation, dy is the activated output's gradient and beta rebuilds the pre-activation.
    "batch_norm_backward": ("dy", "x", "gamma", "mean", "inv_std", "axis", "batch_stats",
                            "need_input_grad", "beta", "activation", "alpha"),
    # The forward's normalizing pass alone, with given statistics (C,): y = act((x - mean) *
    # inv_std * gamma + beta), the bits batch_norm_forward gave with them.
    "batch_norm_apply": ("x", "gamma", "beta", "mean", "inv_std", "axis", "activation",
                         "alpha"),
    # Group norm of x (N, ..., C): per sample and group of C/groups consecutive channels, over
    # those channels and every axis between the first and the last; gamma, beta (C,) or None.
    # Layer norm is groups=1 on x reshaped to (rows, features). rms_scaling is Keras's
    # LayerNormalization option: y = x * inv_std * gamma (no centering, no beta).
    # Forward -> (y, mean, inv_std), both (N, groups); backward -> (dx or None, dgamma, dbeta).
    "group_norm_forward": ("x", "gamma", "beta", "groups", "epsilon", "rms_scaling"),
    "group_norm_backward": ("dy", "x", "gamma", "mean", "inv_std", "groups", "rms_scaling",
                            "need_input_grad"),
    # Keras 3's ops.rms_normalization over the last axis of x (..., C) (RMSNormalization is
    # this on x reshaped to (rows, normalized features)): y = x * inv_rms * scale, inv_rms =
    # 1/sqrt(mean(x^2) + epsilon) per row, no centering; scale (C,) or None (ones).
    # Forward -> (y, inv_rms of shape x.shape[:-1]); backward -> (dx or None, dscale (C,)).
    "rms_norm_forward": ("x", "scale", "epsilon"),
    "rms_norm_backward": ("dy", "x", "scale", "inv_rms", "need_input_grad"),
    # Keras 3's ops.normalize(x, order=2) over the last axis (UnitNormalization, epsilon
    # 1e-12): y = x * inv_norm, inv_norm = min(1/sqrt(sum(x^2)), 1/epsilon) per row.
    # Forward -> (y, inv_norm); backward -> dx, inv_norm a constant in the rows where the cap
    # 1/epsilon (in x's dtype) holds (torch's minimum, so Keras's gradient).
    "unit_norm_forward": ("x", "epsilon"),
    "unit_norm_backward": ("dy", "x", "inv_norm", "epsilon"),
    # -- issue 12: activation layers, noise layers, constraints ----------------------------
    # activation (native/activation.pyx): Keras 3's relu(x, negative_slope, max_value,
    # threshold): min(x, max_value) where x > threshold, else negative_slope * (x -
    # threshold); max_value None is no cap. Backward reads the input x.
    "relu_forward": ("x", "max_value", "negative_slope", "threshold"),
    "relu_backward": ("dy", "x", "max_value", "negative_slope", "threshold"),
    # PReLU: y = x where x > 0 else alpha * x; alpha has x's feature shape with 1 on the
    # shared axes (Keras's weight). Backward -> (dx or None, dalpha summed over the batch and
    # the shared axes, deterministic).
    "prelu_forward": ("x", "alpha"),
    "prelu_backward": ("dy", "x", "alpha", "need_input_grad"),
    # Softmax along any one axis (activation_forward's softmax is the last axis).
    "softmax_forward": ("x", "axis"),
    "softmax_backward": ("dy", "y", "axis"),
    # dropout (native/dropout.pyx): the Philox stream of dropout_forward. Spatial dropout
    # keeps or drops whole channels: x (N, ..., C), mask (N, C) uint8 drawn exactly as
    # dropout_forward's mask of an (N, C) array. Gaussian noise: one normal per element from
    # Box-Muller on the words of the element's Philox call; GaussianNoise y = x + stddev*z,
    # GaussianDropout y = x * noise with noise = 1 + sqrt(rate / (1 - rate)) * z.
    "spatial_dropout_forward": ("x", "rate", "seed", "offset"),           # -> (y, mask)
    "spatial_dropout_backward": ("dy", "mask", "rate"),
    "gaussian_noise_forward": ("x", "stddev", "seed", "offset"),          # -> y
    "gaussian_dropout_forward": ("x", "rate", "seed", "offset"),          # -> (y, noise)
    "gaussian_dropout_backward": ("dy", "noise"),
    # -- Keras 3's AlphaDropout (native/dropout.pyx, opencl/dropout.cl): mask uint8 of
    # noise_shape (None: x's shape; a None entry takes x's size; others 1 or x's size), drawn
    # as dropout_forward's mask of such an array and read broadcast over x. y = a*x + b where
    # kept, a*alpha_p + b where dropped, alpha_p = -SELU alpha * scale, a = ((1 - rate)
    # (1 + rate alpha_p^2))^-1/2, b = -a alpha_p rate (Keras's formula; x <= 8 axes).
    "alpha_dropout_forward": ("x", "rate", "seed", "offset", "noise_shape"),  # -> (y, mask)
    "alpha_dropout_backward": ("dy", "mask", "rate"),                       # dy * a * keep
    # optim (native/optim.pyx): Keras 3's weight constraints, projecting w in place. kind is
    # one of CONSTRAINTS; norms are over ``axis`` (an int or a tuple of adjacent axes) with
    # Keras's epsilon 1e-7: w *= desired / (eps + norm).
    "constraint_inplace": ("w", "kind", "min_value", "max_value", "rate", "axis"),
    # -- embedding (native/embedding.pyx, opencl/embedding.cl): issue 14, sequence layers --
    # Keras 3's Embedding. indices: any shape, integers or floats holding whole numbers
    # (int32, int64 or float32 on OpenCL), each in [0, V); a bad one is a ValueError naming
    # it, raised before the op returns. table (V, D). Forward -> indices.shape + (D,).
    # Backward -> dtable (input_dim, D): dy's rows summed by index in index order
    # (deterministic, no float atomics).
    "embedding_forward": ("indices", "table"),
    "embedding_backward": ("dy", "indices", "input_dim"),
    # -- preprocessing (native/preprocessing.pyx, opencl/preprocessing.cl): issue 15, Keras
    # 3's preprocessing layers. matrices (N, 6): Keras's affine transform per image
    # [a0, a1, a2, b0, b1, b2], output pixel (r, c) reads column a0*c + a1*r + a2, row
    # b0*c + b1*r + b2, by keras.ops.image.map_coordinates' rules (fill_mode constant,
    # nearest, wrap, mirror, reflect; interpolation nearest (half to even) or bilinear).
    # (N,H,W,C) -> (N, *output_size, C); the backward scatters dy through the same taps.
    "image_affine_forward": ("x", "matrices", "output_size", "interpolation", "fill_mode",
                             "fill_value"),
    "image_affine_backward": ("dy", "matrices", "input_shape", "interpolation", "fill_mode"),
    # y = x * scale + offset, scale/offset (K,) over x's trailing K values (Rescaling,
    # Normalization); offset None gives y = x * scale, also their input gradient.
    "channel_affine_forward": ("x", "scale", "offset"),
    # Per image n of (N,H,W,C): clip((x - mean) * contrast[n] + mean + delta[n], *value_range),
    # mean per channel over H, W; contrast None skips the mean, delta None adds 0.
    "image_adjust_forward": ("x", "contrast", "delta", "value_range"),
    # -- auggeo (Keras 3's geometric, erasing and mixing augmentations) --
    # transforms (N, 8): Keras's projective 8-vector [a0 a1 a2 b0 b1 b2 c0 c1], output pixel
    # (r, c) reads column (a0*c + a1*r + a2) / d, row (b0*c + b1*r + b2) / d with
    # d = c0*c + c1*r + 1 (perspective_transform), otherwise as image_affine_*.
    "image_projective_forward": ("x", "transforms", "output_size", "interpolation",
                                 "fill_mode", "fill_value"),
    "image_projective_backward": ("dy", "transforms", "input_shape", "interpolation",
                                  "fill_mode"),
    # offsets (N, HO, WO, 2): output pixel (r, c) of image n reads row r + [..., 0], column
    # c + [..., 1] by map_coordinates' rules, clipped to value_range (RandomElasticTransform).
    "image_remap_forward": ("x", "offsets", "interpolation", "fill_mode", "fill_value",
                            "value_range"),
    # (native/augment_mix.pyx, opencl/augment_mix.cl) boxes (N, 4): Keras's [x0, x1, y0, y1],
    # pixel (r, c) inside when x0 <= c < x1 and y0 <= r < y1. permutation: host ints, a
    # permutation of range(N). Mix (MixUp, CutMix): y[n] = w[n] x[n] + (1 - w[n]) x[perm[n]]
    # inside box n, x[n] outside; its backward gathers through the inverse permutation.
    # Erase (RandomErasing): clip(fill, *value_range) inside, x outside; fill (C,) or x's shape.
    "image_mix_forward": ("x", "permutation", "weights", "boxes"),
    "image_mix_backward": ("dy", "permutation", "weights", "boxes"),
    "image_erase_forward": ("x", "boxes", "fill", "value_range"),
    # RandomGaussianBlur: clip(the images where blur[n] != 0 convolved with vertical (K,) down
    # the rows and horizontal (K,) across, zero padding K // 2, K odd; the others as they are,
    # *value_range) (keras.ops.image.gaussian_blur).
    "image_blur_forward": ("x", "vertical", "horizontal", "blur", "value_range"),
}

# -- compression (issue 18; native/optim.pyx, opencl/optim.cl, native/sparse.pyx,
# opencl/sparse.cl) ----------------------------------------------------------------------------
# Every optimizer update takes a last, optional ``mask`` (uint8 shaped like w, or None): where
# it is 0 the update stores exact zeros into w and every slot in the same pass (pruning).
UPDATE_OPS = ("sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "nadam_update",
              "adamax_update", "adadelta_update", "ftrl_update", "lion_update")
for _op in UPDATE_OPS:
    OPS[_op] = OPS[_op] + ("mask",)
del _op
OPS.update({
    # A Dense kernel's nonzeros by output unit (CSC of the (C_in, U) kernel, api's "sparse
    # kernel"): indptr int32 (U+1,), indices int32 (nnz,) input rows, values (nnz,) floats.
    # y = act(x @ kernel + bias) as dense_forward, reading only the nonzeros -> y (N, U).
    "sparse_dense_forward": ("x", "indptr", "indices", "values", "bias", "activation",
                             "alpha"),
    # A Conv2D kernel (KH, KW, C, F) the same way, reshaped to (KH*KW*C, F): indices are taps
    # (kh*KW + kw)*C + c. y = act(conv2d(x, kernel) + bias) as conv2d_forward's geometry
    # (strides, 'same'/'valid', dilation), reading only the nonzeros -> y (N, HO, WO, F).
    "sparse_conv2d_forward": ("x", "indptr", "indices", "values", "bias", "kernel_size",
                              "strides", "padding", "dilation_rate", "activation", "alpha"),
    # Post-training int8 (native/quant.pyx, opencl/quant.cl), bit-identical on both backends:
    # quantize_forward float32 -> uint8 clamp(rint(x / scale) + zero_point, 0, 255);
    # dequantize_forward uint8 -> float32 (q - zero_point) * scale (per-tensor, any shape).
    "quantize_forward": ("x", "scale", "zero_point"),
    "dequantize_forward": ("q", "scale", "zero_point"),
    # int8 weights by unit (U, K) -> the int8 GEMM's pack (ceil(U/16), max(ceil(K/4), 1), 64),
    # packed[b, g, 4l + i] = wq[16b + l, 4g + i] (VNNI groups of 4 along K, zeros past U, K);
    # int8_dense_forward takes either form, layers pack once.
    "int8_pack_weights": ("wq",),
    # xq uint8 (N, K), wq int8 (U, K) by unit (symmetric per channel), bias int32 (U,) or
    # None -> uint8 (N, U): acc = sat_int32(sum (xq - x_zero_point) wq + bias), then
    # clamp(rint(float32(acc) * multiplier[u]) + y_zero_point, relu ? y_zero_point : 0, 255).
    "int8_dense_forward": ("xq", "wq", "bias", "x_zero_point", "multiplier", "y_zero_point",
                           "relu"),
    # uint8 (N, H, W, C) -> patches (N*HO*WO, KH*KW*C) in the (KH, KW, C) order of Conv2D
    # kernels, padding read as pad_value (the input zero point): the int8 Conv2D is this then
    # int8_dense_forward (the same GEMM, so the same exactness and speed).
    "int8_im2col": ("xq", "kernel_size", "strides", "padding", "dilation_rate", "pad_value"),
})
# -- int8 depthwise convolution (issue 18, branch qbreadth; native/quant.pyx, opencl/quant.cl)
OPS.update({
    # xq uint8 (N, H, W, C), wq int8 (KH, KW, C, M) (Keras's depthwise layout, symmetric per
    # output channel c*M + m), bias int32 (C*M,) or None -> uint8 (N, HO, WO, C*M):
    # acc = sat_int32(sum over the window's taps inside the input (xq - x_zero_point) wq +
    # bias), then int8_dense_forward's epilogue (y_zero_point None: float32 acc * multiplier).
    "int8_depthwise_conv2d_forward": ("xq", "wq", "bias", "x_zero_point", "multiplier",
                                      "y_zero_point", "relu", "strides", "padding",
                                      "dilation_rate"),
})
# -- int8 chained inference (issue 18, branch q8; native/quant.pyx, opencl/quant.cl)
OPS.update({
    # uint8 (N, H, W, C) -> uint8 (N, HO, WO, C): max over each window's taps inside the input
    # (MaxPooling2D's geometry: Keras's 'valid' / 'same', strides default pool_size). Max
    # commutes with the monotone requantization, so pooling the uint8 codes is exactly pooling
    # the values; static int8 models pool between int8 layers without leaving uint8.
    "int8_max_pool2d": ("xq", "pool_size", "strides", "padding"),
    # The int8 Conv2D: int8_dense_forward over int8_im2col(xq, ..., pad_value=x_zero_point)'s
    # patches with wq (F, KH*KW*C) by filter or packed -> uint8 (N, HO, WO, F) (float32 with
    # y_zero_point None), the same bits, without the patch matrix (gathered a row tile at a
    # time into cache on the CPU).
    "int8_conv2d_forward": ("xq", "wq", "bias", "x_zero_point", "multiplier", "y_zero_point",
                            "relu", "kernel_size", "strides", "padding", "dilation_rate"),
})

# -- bf16: mixed precision (issue 17; native/bf16.pyx, opencl/bf16.cl) ---------------------
# Each bf16_<op> is <op>'s contract (float32 in and out) with the GEMM operands rounded to
# bfloat16 (nearest, ties to even) and the products summed in float32: what Dense and Conv2D
# run under the "mixed_bfloat16" policy (pynn.mixed_precision).
OPS.update({
    "bf16_round": ("x",),      # float32 -> float32 values of the nearest bfloat16
    "bf16_dense_forward": ("x", "kernel", "bias", "activation", "alpha"),
    "bf16_dense_backward_input": ("dz", "kernel"),
    "bf16_dense_backward_weight": ("x", "dz"),
    "bf16_conv2d_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate",
                            "activation", "alpha"),
    "bf16_conv2d_backward_input": ("dz", "kernel", "input_shape", "strides", "padding",
                                   "dilation_rate"),
    "bf16_conv2d_backward_weight": ("x", "dz", "kernel_shape", "strides", "padding",
                                    "dilation_rate"),
    # conv2d_pool_forward on bf16-rounded x and kernel; conv2d_pool_backward with dpool (so
    # dz), x and kernel rounded: a narrow first layer and its pool under mixed_bfloat16.
    "bf16_conv2d_pool_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate",
                                 "activation", "alpha", "pool_size", "pool_strides",
                                 "pool_padding"),
    "bf16_conv2d_pool_backward": ("dpool", "argmax", "pooled", "x", "z", "y", "kernel",
                                  "strides", "padding", "dilation_rate", "activation", "alpha",
                                  "use_bias", "need_input_grad", "pool_size", "pool_strides",
                                  "pool_padding"),
})

# -- attention (native/attention.pyx, opencl/attention.cl): Keras 3's MultiHeadAttention --
# The scaled dot-product core on projected heads, laid out as Keras's projections make them:
# q (N, T, H, K), k (N, S, H, K), v (N, S, H, V); mask (N, T, S) uint8/bool (nonzero:
# attend) or None; drop (N, H, T, S) the dropout multiplier (0 or 1/(1-rate)) or None.
# scores = (q*scale, rounded) k^T per head; probs = softmax over S of the attended scores
# (a row attending to nothing is zeros, as Keras's masked Softmax); out = (probs*drop) v.
OPS.update({
    "attention_forward": ("q", "k", "v", "mask", "scale", "drop"),      # -> (out, probs)
    # dprobs: a gradient reaching probs itself (return_attention_scores), or None.
    "attention_backward": ("dout", "q", "k", "v", "probs", "scale", "drop", "dprobs"),
    # -> (dq, dk, dv)
})

# -- conv3d (native/conv3d.pyx, opencl/conv3d.cl): Keras 3's Conv3D and Conv3DTranspose --
# NDHWC; strides, dilation_rate (and output_padding) are three ints; padding as conv2d's per
# axis. Conv3D's kernel (KD,KH,KW,C/groups,F): output channel o reads the C/groups input
# channels of group o // (F/groups).
OPS.update({
    # (N,D,H,W,C) * kernel -> (y, z), y (N,DO,HO,WO,F), bias+activation fused.
    "conv3d_forward": ("x", "kernel", "bias", "strides", "padding", "dilation_rate", "groups",
                       "activation", "alpha"),
    "conv3d_backward_input": ("dz", "kernel", "input_shape", "strides", "padding",
                              "dilation_rate", "groups"),
    "conv3d_backward_weight": ("x", "dz", "kernel_shape", "strides", "padding",
                               "dilation_rate", "groups"),
    # A Conv3D layer's whole backward -> (dx or None, dkernel, dbias or None):
    # conv3d_backward_composed below.
    "conv3d_backward": ("dy", "x", "z", "y", "kernel", "strides", "padding", "dilation_rate",
                        "groups", "activation", "alpha", "use_bias", "need_input_grad"),
    # Keras's Conv3DTranspose: x (N,D,H,W,C) * kernel (KD,KH,KW,F,C) -> (y, z), lengths as
    # conv2d_transpose_forward's per axis.
    "conv3d_transpose_forward": ("x", "kernel", "bias", "strides", "padding",
                                 "output_padding", "dilation_rate", "activation", "alpha"),
    "conv3d_transpose_backward": ("dy", "x", "z", "y", "kernel", "strides", "padding",
                                  "output_padding", "dilation_rate", "activation", "alpha",
                                  "use_bias", "need_input_grad"),
})

# -- color (native/color.pyx, opencl/color.cl): Keras 3's colour augmentation layers --
# x (N,H,W,C) -> y shaped as x, one pass per image: transform one of operands.color's
# TRANSFORMS (Keras's transform_images), params (N, 2) each image's row of Keras's
# transformation (None for auto_contrast and equalize), value_range (low < high), bins the
# equalize histogram's (pooled over the batch per channel, as Keras's). No backward.
OPS.update({
    "color_transform_forward": ("x", "transform", "params", "value_range", "bins"),
})
# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization (color family) --
# x (N,H,W,C) -> y shaped as x: tile_grid_size (GH, GW) tiles of ceil(H/GH) x ceil(W/GW)
# pixels (the image edge-padded to whole tiles), each tile's histogram of Keras's 256 levels
# of x over value_range clipped at trunc(clip_limit * tile pixels / 256) (none when
# clip_limit <= 0), every pixel blended from its four nearest tiles' cdfs. No backward.
OPS.update({
    "clahe_forward": ("x", "value_range", "clip_limit", "tile_grid_size"),
})

# -- opt: Keras 3's Lamb, Adafactor and Muon (native/optim.pyx, opencl/optim.cl) ----------------
# Each clips and decays as the other *_update ops, then needs whole-tensor reductions inside
# its step (kept on the device); t is the 1-based step. mask: as UPDATE_OPS' (a pruned
# element's gradient reads as 0; its weight and elementwise slots are stored as exact zeros;
# Adafactor's r and c are row and column statistics over every element).
OPS.update({
    # Lamb: Adam's moments, u = m_hat / (sqrt(v_hat) + epsilon), w -= (||w|| / ||u||) lr u.
    "lamb_update": ("w", "g", "m", "v", "lr", "beta_1", "beta_2", "epsilon", "t", "grad_scale",
                    "clipvalue", "weight_decay", "mask"),
    # Adafactor: rank >= 2 factors the second moment over the last two axes, r shape[:-1],
    # c shape[:-2] + shape[-1:], v their product (rank < 2: v only; r, c may be None);
    # relative step min(lr, 1/sqrt(t)) scaled by max(epsilon_2, rms(w)); update clipped by
    # its rms over clip_threshold.
    "adafactor_update": ("w", "g", "r", "c", "v", "lr", "beta_2_decay", "epsilon_1",
                         "epsilon_2", "clip_threshold", "t", "grad_scale", "clipvalue",
                         "weight_decay", "mask"),
    # Muon's step of a matrix w (R, C): momentum (nesterov), Keras's Newton-Schulz
    # orthogonalisation (ns_steps, coefficients muon_a/b/c) on the GEMM, scaled by
    # sqrt(max(R, C)) * rms_rate (None: unscaled).
    "muon_update": ("w", "g", "m", "lr", "momentum", "nesterov", "ns_steps", "muon_a",
                    "muon_b", "muon_c", "rms_rate", "grad_scale", "clipvalue", "weight_decay",
                    "mask"),
})
# -- misc: ScheduleFreeAdamW (Keras 3.15): v += (g*g-v)(1-beta_2); z -= lr_t g / (sqrt(v /
# (1-beta_2^t)) + epsilon), lr_t warmed up over warmup_steps; x from w and the old z, averaged
# with z by 1/t; w = (1-beta_1) z + beta_1 x.
OPS.update({
    "schedule_free_adamw_update": ("w", "g", "z", "v", "lr", "beta_1", "beta_2", "epsilon", "t",
                                   "warmup_steps", "grad_scale", "clipvalue", "weight_decay",
                                   "mask"),
})

# -- spectral (branch audio; native/spectral.pyx, opencl/spectral.cl): Keras 3's audio front
# ends. real, imag: an STFT's two halves (..., F), F bins on the last axis. Modes (code = index):
# magnitude sqrt(max(p, 1e-7)), p = real^2 + imag^2; psd p with the bins between DC and Nyquist
# doubled; angle atan2(imag, real); log ln of the magnitude; power |z|^exponent (MelSpectrogram's
# mag_exp); stft real then imag stacked on the bins axis (..., 2F).
SPECTRUM_MODES = ("magnitude", "psd", "angle", "log", "power", "stft")
OPS.update({
    "spectrum_forward": ("real", "imag", "mode", "exponent"),
    "spectrum_backward": ("dy", "real", "imag", "mode", "exponent"),    # -> (dreal, dimag)
    # MelSpectrogram's power_to_db: 10 log10(max(x, min_power)) - 10 log10(max(|ref|,
    # min_power)), floored at (its maximum over the whole tensor) - top_db; top_db None: no
    # floor. The backward sends a floored element's gradient to the maximum (torch's rule).
    "power_to_db_forward": ("x", "min_power", "ref_power", "top_db"),
    "power_to_db_backward": ("dy", "x", "min_power", "ref_power", "top_db"),
    # torch.stft's center=True: the last axis (..., T) -> (..., T + 2 pad) reflected without
    # the edge sample (pad < T); the backward sums each mirror back onto its source.
    "reflect_pad1d_forward": ("x", "pad"),
    "reflect_pad1d_backward": ("dy", "pad"),
    # MelSpectrogram's STFT: frame j of each row of x (R, T) is x[:, j*stride : j*stride + N]
    # times the window (N,), (T - N) // stride + 1 frames; its first N // 2 + 1 DFT bins
    # sum_n v[n] exp(-2 pi i n k / N) -> (real, imag), each (R, frames, N // 2 + 1).
    "stft_forward": ("x", "window", "stride"),
    "stft_backward": ("dreal", "dimag", "window", "stride", "length"),     # -> dx (R, length)
})

# -- convlstm (native/convlstm.pyx, opencl/convlstm.cl): Keras 3's ConvLSTM1D/2D/3D recurrence --
# The step loop after the layer's one conv3d_forward over all N*T frames: xw (N,T,D,H,W,4F)
# (input conv + bias; 1-D/2-D as 3-D with unit extents), recurrent_kernel (KD,KH,KW,F,4F)
# read as Keras's 'same' stride-1 conv of h, gates i, f, c, o; h0/c0 (N,D,H,W,F) or None
# (zeros); activation/recurrent_activation from operands.convlstm.CONVLSTM_ACTIVATIONS; mask
# (N,T) of 1/0 or None: Keras's, a masked step keeps the states and repeats the previous
# output (zeros before the first unmasked one), or outputs zeros with zero_output_for_mask;
# recurrent_dropout (4,N,D,H,W,F) Keras's recurrent masks (gate block k reads h * mask k) or None.
OPS.update({
    # -> (y, h_last, c_last, cache): y (N,T,D,H,W,F) in processing order with
    # return_sequences, else the last output; cache holds what backward reads.
    "convlstm_forward": ("xw", "recurrent_kernel", "h0", "c0", "mask", "recurrent_dropout",
                         "activation", "recurrent_activation", "return_sequences",
                         "go_backwards", "zero_output_for_mask"),
    # -> (dxw at the input's time index, drecurrent_kernel, dh0, dc0); dh_last/dc_last the
    # final states' gradients or None.
    "convlstm_backward": ("dy", "dh_last", "dc_last", "recurrent_kernel", "cache",
                          "activation", "recurrent_activation", "return_sequences",
                          "go_backwards"),
})

# -- scan (branch opsk; native/scan.pyx, opencl/scan.cl): keras.ops' cumsum/cumprod --------
# Along one axis, each output the in-order fold of its line (deterministic).
OPS.update({
    # op 'sum' or 'prod'; reverse folds from the end (cumsum's backward).
    "scan_forward": ("x", "axis", "op", "reverse"),
    # dx of cumprod along axis, exact where x has zeros.
    "cumprod_backward": ("x", "dy", "axis"),
})

# -- scatter (branch opsk; native/scatter.pyx, opencl/scatter.cl): keras.ops' segment and
# scatter ops on row views (rows, D). Index arrays are host int arrays on every backend;
# each output row is owned by one work unit (deterministic, no atomics).
OPS.update({
    # -> (len(starts) - 1, D): segment s folds data[order[starts[s]:starts[s+1]]] in order,
    # op 'sum' (empty: 0) or 'max' (empty: -inf).
    # -- opsm: or 'prod' (empty: 1), keras.ops.segment_prod --
    "segment_reduce_forward": ("data", "starts", "order", "op"),
    # -> (len(rows), D): src[rows[m]], zeros where rows[m] is -1.
    "gather_rows": ("src", "rows"),
    # -> base's shape: src[owner[r]], or base[r] where owner[r] is -1.
    "select_rows": ("base", "src", "owner"),
})

# -- sort (branch opsk; native/sort.pyx, opencl/sort.cl): keras.ops' sort/argsort/top_k
# along the last axis of a row view (R, n); positions are int32.
OPS.update({
    # -> int32 (R, k): each row's first k positions (None: all) in stable order
    # (descending: top_k's), NaN last.
    "argsort_rows": ("x", "descending", "k"),
    # -> (R, k): x[r, index[r, j]].
    "take_along_rows": ("x", "index"),
    # -> (R, n): zeros with src[r, j] at index[r, j] (distinct per row): the gradients.
    "put_along_rows": ("src", "index", "n"),
})

# -- linalg (branch linalg; native/linalg.pyx, opencl/linalg.cl): keras.ops.linalg on stacks
# of small dense matrices (..., m, n), one matrix per work unit; right-hand sides (..., n, k)
# carry a's batch. Pivots and info are int32; info is read by the caller (pynn.ops.linalg).
OPS.update({
    # -> (L lower, info (B,)): info the order of the first non-positive-definite minor (0: none).
    "cholesky_forward": ("a",),
    # -> (LU, pivots (..., n) 0-based row swaps, info (B,) first zero pivot 1-based, 0: none).
    "lu_factor_forward": ("a",),
    # x of A x = b (transpose: A^T x = b) from lu_factor_forward's LU and pivots.
    "lu_solve_forward": ("lu", "pivots", "b", "transpose"),
    # -> (sign, log|det|) shaped as the batch; a zero pivot gives (0, -inf).
    "lu_slogdet_forward": ("lu", "pivots"),
    # x of op(A) x = b, op(A) = A or A^T, only A's lower (else upper) triangle read.
    "triangular_solve_forward": ("a", "b", "lower", "transpose", "unit_diagonal"),
    # -> (Q, R) Householder with LAPACK's signs: reduced, or complete (Q (..., m, m)).
    "qr_forward": ("a", "complete"),
    # -> (w ascending, v eigenvectors as columns) of the symmetric matrix in a's lower triangle.
    "eigh_forward": ("a",),
    # -> (U, s descending, Vh); U and Vh None unless compute_uv.
    "svd_forward": ("a", "full_matrices", "compute_uv"),
})

# The constraint_inplace kinds (pynn/constraints.py), codes in this order.
CONSTRAINTS = ("max_norm", "non_neg", "unit_norm", "min_max_norm")


def conv2d_backward_composed(ops, dy, x, z, y, kernel, strides=(1, 1), padding="valid",
                             dilation_rate=(1, 1), activation="linear", alpha=0.0,
                             use_bias=True, need_input_grad=True):
    """conv2d_backward from a backend's separate ops (``ops``: the backend module): the
    activation's backward fused with the bias gradient, then the two conv gradients."""
    dz, db = bias_activation_backward(ops, dy, z, y, activation, alpha, use_bias)
    dk = ops.conv2d_backward_weight(x, dz, tuple(kernel.shape), strides, padding,
                                    dilation_rate)
    dx = None
    if need_input_grad:
        dx = ops.conv2d_backward_input(dz, kernel, tuple(x.shape), strides, padding,
                                       dilation_rate)
    return dx, dk, db


def conv2d_pool_forward_composed(ops, x, kernel, bias, strides=(1, 1), padding="valid",
                                 dilation_rate=(1, 1), activation="linear", alpha=0.0,
                                 pool_size=(2, 2), pool_strides=(2, 2), pool_padding="valid"):
    """conv2d_pool_forward from a backend's ops: the conv, then the pool over its output."""
    y, _ = ops.conv2d_forward(x, kernel, bias, strides, padding, dilation_rate, activation,
                              alpha)
    return ops.maxpool2d_forward(y, pool_size, pool_strides, pool_padding)


def conv2d_pool_backward_composed(ops, dpool, argmax, pooled, x, z, y, kernel, strides=(1, 1),
                                  padding="valid", dilation_rate=(1, 1), activation="linear",
                                  alpha=0.0, use_bias=True, need_input_grad=True,
                                  pool_size=(2, 2), pool_strides=(2, 2), pool_padding="valid",
                                  y_shape=None):
    """conv2d_pool_backward from a backend's ops: the pool's input gradient, then the conv's
    backward. Without y (relu or linear; y_shape: the conv output's shape): relu's mask from
    the pool's output first (its backward on dpool), then the conv's backward as linear, dy
    standing in for y."""
    if y is not None:
        dy = ops.maxpool2d_backward(dpool, argmax, tuple(y.shape))
        return ops.conv2d_backward(dy, x, z, y, kernel, strides, padding, dilation_rate,
                                   activation, alpha, use_bias, need_input_grad)
    name = str(activation).lower()
    if name not in ("relu", "linear") or (name == "relu" and pooled is None):
        raise ValueError(f"conv2d_pool_backward: y (the conv's output) is needed for "
                         f"'{activation}' without the pool's output; got None")
    if name == "relu":
        dpool = ops.activation_backward(dpool, None, pooled, "relu", 0.0)
    dy = ops.maxpool2d_backward(dpool, argmax, tuple(y_shape))
    return ops.conv2d_backward(dy, x, None, dy, kernel, strides, padding, dilation_rate,
                               "linear", 0.0, use_bias, need_input_grad)


def bias_activation_backward(ops, dy, z, y, activation, alpha=0.0, use_bias=True):
    """(dz, dbias or None) of y = activation(z), z = (a product) + bias, from a backend's ops:
    one pass over dy for both where there is an activation, none for dz where it is linear."""
    if str(activation).lower() == "linear":
        return dy, (ops.bias_backward(dy) if use_bias else None)
    if use_bias:
        return ops.activation_bias_backward(dy, z, y, activation, alpha)
    return ops.activation_backward(dy, z, y, activation, alpha), None


def dense_backward_input_activation_composed(ops, dz, kernel, z, y, activation, alpha=0.0,
                                             use_bias=True):
    """dense_backward_input_activation from a backend's ops: the input gradient, then the
    layer below's bias_activation_backward."""
    return bias_activation_backward(ops, ops.dense_backward_input(dz, kernel), z, y,
                                    activation, alpha, use_bias)


def conv2d_transpose_backward_composed(ops, place, dy, x, z, y, kernel, g, strides,
                                       dilation_rate, activation, alpha, use_bias,
                                       need_input_grad):
    """conv2d_transpose_backward from a backend's ops (``ops``) and its ``place(dz, g)``,
    which puts dz back at its crop offset in a zeroed full output (N, HF, WF, F). The
    transposed conv is the input gradient of a 'valid' conv2d from that full output to x,
    so the roles swap: its input gradient is that conv's forward and its kernel gradient
    that conv's kernel gradient with the full-output gradient as the conv's input."""
    dz, db = bias_activation_backward(ops, dy, z, y, activation, alpha, use_bias)
    dfull = place(dz, g)
    dk = ops.conv2d_backward_weight(dfull, x, tuple(kernel.shape), strides, "valid",
                                    dilation_rate)
    dx = None
    if need_input_grad:
        dx, _ = ops.conv2d_forward(dfull, kernel, None, strides, "valid", dilation_rate,
                                   "linear", 0.0)
    return dx, dk, db


# -- conv3d: the composed backwards both backends run ----------------------------------------


def conv3d_backward_composed(ops, dy, x, z, y, kernel, strides, padding, dilation_rate, groups,
                             activation, alpha=0.0, use_bias=True, need_input_grad=True):
    """conv3d_backward from a backend's ops: the activation's backward fused with the bias
    gradient, then the two conv gradients."""
    dz, db = bias_activation_backward(ops, dy, z, y, activation, alpha, use_bias)
    dk = ops.conv3d_backward_weight(x, dz, tuple(kernel.shape), strides, padding,
                                    dilation_rate, groups)
    dx = None
    if need_input_grad:
        dx = ops.conv3d_backward_input(dz, kernel, tuple(x.shape), strides, padding,
                                       dilation_rate, groups)
    return dx, dk, db


def conv3d_transpose_backward_composed(ops, place, dy, x, z, y, kernel, g, strides,
                                       dilation_rate, activation, alpha, use_bias,
                                       need_input_grad):
    """conv3d_transpose_backward from a backend's ops and its ``place(dz, g)`` (dz at its
    crop offset in a zeroed full output), as conv2d_transpose_backward_composed: the
    transposed conv is the input gradient of a 'valid' conv3d from the full output to x."""
    dz, db = bias_activation_backward(ops, dy, z, y, activation, alpha, use_bias)
    dfull = place(dz, g)
    dk = ops.conv3d_backward_weight(dfull, x, tuple(kernel.shape), strides, "valid",
                                    dilation_rate, 1)
    dx = None
    if need_input_grad:
        dx, _ = ops.conv3d_forward(dfull, kernel, None, strides, "valid", dilation_rate, 1,
                                   "linear", 0.0)
    return dx, dk, db
