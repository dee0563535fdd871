"""The CPU backend: NumPy arrays in, native Cython/OpenMP kernels underneath.

Each op of ``pynn.backend.api.OPS`` is a ``def`` function of a ``pynn._native`` module that
validates its arguments and then runs a ``nogil`` kernel; this module only gathers them.
"""

import numpy as np

from pynn._native.activation import (  # noqa: F401
    activation_backward,
    activation_bias_backward,
    activation_forward,
    pooled_activation_bias_backward,
)
from pynn._native.conv import (  # noqa: F401
    conv2d_backward,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
    conv2d_pool_backward,
    conv2d_pool_forward,
)
from pynn._native.dense import (  # noqa: F401
    bias_backward,
    dense_backward_input,
    dense_backward_input_activation,
    dense_backward_weight,
    dense_forward,
)
from pynn._native.dropout import dropout_backward, dropout_forward  # noqa: F401
from pynn._native.loss import loss_forward_backward  # noqa: F401
from pynn._native.metric import accuracy_count, confusion_counts, top_k_count  # noqa: F401

# -- normalization --
from pynn._native.normalization import (  # noqa: F401
    batch_norm_apply,
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
    unit_norm_backward,
    unit_norm_forward,
)
from pynn._native.metric import (  # noqa: F401
    confusion_matrix,  # confusion_matrix, fbeta_counts, threshold_counts: issue 15
    fbeta_counts,
    threshold_counts,
)
from pynn._native.optim import (  # noqa: F401
    adadelta_update,  # adadelta, adamax, ftrl, lion, nadam: issue 15
    adagrad_update,
    adam_update,
    adam_update_many,
    adamax_update,
    ftrl_update,
    lion_update,
    nadam_update,
    regularizer_inplace,
    rmsprop_update,
    sgd_update,
    sgd_update_many,
    sum_squares,
)
from pynn._native.rnn import (  # noqa: F401
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    simple_rnn_backward,
    simple_rnn_forward,
)
from pynn._native.pool import (  # noqa: F401
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    global_maxpool2d_backward,
    global_maxpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
# -- 3-D pooling (branch vol) --
from pynn._native.pool import (  # noqa: F401
    avgpool3d_backward, avgpool3d_forward, maxpool3d_backward, maxpool3d_forward,
)
from pynn._native.pool import (  # noqa: F401  -- adaptive pooling
    adaptive_avgpool_backward,
    adaptive_avgpool_forward,
    adaptive_maxpool_backward,
    adaptive_maxpool_forward,
)
# -- merge (Keras's merge layers) --
from pynn._native.merge import (  # noqa: F401
    concatenate_backward,
    concatenate_forward,
    dot_backward,
    dot_forward,
    merge_backward,
    merge_forward,
)
# -- spatial and shape families --
from pynn._native.shape import (  # noqa: F401
    repeat_vector_backward,
    repeat_vector_forward,
    transpose_backward,
    transpose_forward,
)
from pynn._native.spatial import (  # noqa: F401
    pad2d_backward,
    pad2d_forward,
    upsample2d_backward,
    upsample2d_forward,
)
# -- 3-D spatial ops (branch vol) --
from pynn._native.spatial import (  # noqa: F401
    pad3d_backward, pad3d_forward, upsample3d_backward, upsample3d_forward,
)
# -- convolution variants (issue 12) --
from pynn._native.conv import conv2d_transpose_backward, conv2d_transpose_forward  # noqa: F401
from pynn._native.depthwise import (  # noqa: F401
    depthwise_conv2d_backward_input,
    depthwise_conv2d_backward_weight,
    depthwise_conv2d_forward,
    grouped_conv2d_backward_input,
    grouped_conv2d_backward_weight,
    grouped_conv2d_forward,
)
# -- issue 12: activation layers, noise layers, constraints ------------------------------
from pynn._native.activation import (  # noqa: F401
    prelu_backward, prelu_forward, relu_backward, relu_forward, softmax_backward,
    softmax_forward,
)
from pynn._native.dropout import (  # noqa: F401
    gaussian_dropout_backward, gaussian_dropout_forward, gaussian_noise_forward,
    spatial_dropout_backward, spatial_dropout_forward,
)
from pynn._native.dropout import (  # noqa: F401  -- Keras 3's AlphaDropout
    alpha_dropout_backward, alpha_dropout_forward,
)
from pynn._native.optim import constraint_inplace  # noqa: F401
# -- end issue 12
# -- embedding (issue 14, sequence layers) --
from pynn._native.embedding import embedding_backward, embedding_forward  # noqa: F401
# -- preprocessing (issue 15, Keras 3's preprocessing layers) --
from pynn._native.preprocessing import (  # noqa: F401
    channel_affine_forward,
    image_adjust_forward,
    image_affine_backward,
    image_affine_forward,
)
# -- auggeo: RandomPerspective's resampling --
from pynn._native.preprocessing import (  # noqa: F401
    image_projective_backward, image_projective_forward, image_remap_forward,
)
from pynn._native.augment_mix import (  # noqa: F401
    image_blur_forward, image_erase_forward, image_mix_backward, image_mix_forward,
)
# -- compression (issue 18): sparse inference of pruned layers --
from pynn._native.sparse import sparse_conv2d_forward, sparse_dense_forward  # noqa: F401
from pynn._native.quant import (  # noqa: F401
    dequantize_forward,
    int8_dense_forward,
    int8_im2col,
    int8_pack_weights,
    quantize_forward,
)
# -- int8 depthwise convolution (issue 18, branch qbreadth) --
from pynn._native.quant import int8_depthwise_conv2d_forward  # noqa: F401
# -- int8 chained inference (issue 18, branch q8) --
from pynn._native.quant import int8_conv2d_forward, int8_max_pool2d  # noqa: F401
# -- elementwise (issue 13: pynn.ops on the device) --
from pynn._native.elementwise import (  # noqa: F401
    elementwise_binary, elementwise_unary, reduce_axes,
)
# -- opsm: integer ops (bitwise, shifts, gcd/lcm) --
from pynn._native.elementwise import integer_binary, integer_unary  # noqa: F401, E402
# -- attention (MultiHeadAttention's core) --
from pynn._native.attention import attention_backward, attention_forward  # noqa: F401
# -- conv3d (Keras 3's Conv3D and Conv3DTranspose) --
from pynn._native.conv3d import (  # noqa: F401
    conv3d_backward, conv3d_backward_input, conv3d_backward_weight, conv3d_forward,
    conv3d_transpose_backward, conv3d_transpose_forward,
)
# -- color (Keras 3's colour augmentation layers) --
from pynn._native.color import color_transform_forward  # noqa: F401
# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization (color family) --
from pynn._native.color import clahe_forward  # noqa: F401
# -- spectral (branch audio: Keras 3's STFTSpectrogram and MelSpectrogram) --
from pynn._native.spectral import (  # noqa: F401
    power_to_db_backward, power_to_db_forward, reflect_pad1d_backward, reflect_pad1d_forward,
    spectrum_backward, spectrum_forward, stft_backward, stft_forward,
)
# -- convlstm (Keras 3's ConvLSTM1D/2D/3D recurrence) --
from pynn._native.convlstm import convlstm_backward, convlstm_forward  # noqa: F401
# -- scan (branch opsk: keras.ops' cumsum/cumprod) --
from pynn._native.scan import cumprod_backward, scan_forward  # noqa: F401
# -- scatter (branch opsk: keras.ops' segment and scatter ops) --
from pynn._native.scatter import gather_rows, segment_reduce_forward, select_rows  # noqa: F401
# -- sort (branch opsk: keras.ops' sort/argsort/top_k) --
from pynn._native.sort import argsort_rows, put_along_rows, take_along_rows  # noqa: F401
# -- linalg (branch linalg: keras.ops.linalg) --
from pynn._native.linalg import (  # noqa: F401
    cholesky_forward, eigh_forward, lu_factor_forward, lu_slogdet_forward, lu_solve_forward,
    qr_forward, svd_forward, triangular_solve_forward,
)
from pynn.backend.operands.common import host_array

NAME = "cpu"


def asarray(x, dtype=np.float32):
    return host_array("asarray", x, dtype)


def to_numpy(a):
    return np.asarray(a)


def empty(shape, dtype=np.float32):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def full(shape, value, dtype=np.float32):
    return np.full(shape, value, dtype=dtype)


def copy(a):
    return np.array(a, copy=True)


def reshape(a, shape):
    return a.reshape(shape)


def add_inplace(a, b):
    np.add(a, b, out=a)


def scale_inplace(a, factor):
    np.multiply(a, a.dtype.type(factor), out=a)
# -- rnn_mask: general recurrence (issue 14, recurrent half) --
from pynn._native.rnn_mask import (  # noqa: F401
    recurrence_backward,
    recurrence_forward,
    sequence_reverse,
    sequence_scale,
)
# -- bf16: mixed precision (issue 17) --
from pynn._native.bf16 import (  # noqa: F401
    bf16_conv2d_backward_input,
    bf16_conv2d_backward_weight,
    bf16_conv2d_forward,
    bf16_conv2d_pool_backward,
    bf16_conv2d_pool_forward,
    bf16_dense_backward_input,
    bf16_dense_backward_weight,
    bf16_dense_forward,
    bf16_round,
)

# -- Keras 3's CTC and Circle losses (loss family) --
from pynn._native.loss import (  # noqa: F401, E402
    circle_loss_forward_backward,
    ctc_loss_forward_backward,
)
# -- opt: Keras 3's Lamb, Adafactor and Muon --
from pynn._native.optim import adafactor_update, lamb_update, muon_update  # noqa: F401
# -- misc: Keras 3's ScheduleFreeAdamW --
from pynn._native.optim import schedule_free_adamw_update  # noqa: F401,E402
# -- opss: keras.ops.ctc_loss's per-sample losses (loss family) --
from pynn._native.loss import crossentropy_rows, ctc_loss_samples  # noqa: F401,E402
