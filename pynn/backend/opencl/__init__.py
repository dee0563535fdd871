"""The OpenCL backend: ``pyopencl.array.Array`` (float32; int32 / uint8 where stated) in and
out, kernels from ``opencl/*.cl`` underneath.

Every op of ``pynn.backend.api.OPS`` is here with the CPU backend's signature; each comes from
the module of its family (``opencl/<family>.cl`` holds its kernels, ``native/<family>.pyx``
its CPU twin, ``pynn.backend.operands.<family>`` the checks both share). Operands are device
arrays: host data goes up through ``asarray`` only. Nothing ever falls back to the CPU.
"""

from pynn.backend.opencl.activation import (  # noqa: F401
    activation_backward, activation_bias_backward, activation_forward,
    pooled_activation_bias_backward,
)
from pynn.backend.opencl.arrays import (  # noqa: F401
    add_inplace, asarray, copy, empty, full, reshape, scale_inplace, to_numpy, zeros,
)
from pynn.backend.opencl.conv import (  # noqa: F401
    conv2d_backward, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
    conv2d_pool_backward, conv2d_pool_forward,
)
from pynn.backend.opencl.dense import (  # noqa: F401
    bias_backward, dense_backward_input, dense_backward_input_activation,
    dense_backward_weight, dense_forward,
)
from pynn.backend.opencl.dropout import dropout_backward, dropout_forward  # noqa: F401
from pynn.backend.opencl.gemm import gemm_tiles, tune_gemm  # noqa: F401
from pynn.backend.opencl.loss import loss_forward_backward  # noqa: F401
# -- merge (Keras's merge layers) --
from pynn.backend.opencl.merge import (  # noqa: F401
    concatenate_backward, concatenate_forward, dot_backward, dot_forward, merge_backward,
    merge_forward,
)
from pynn.backend.opencl.metric import (  # noqa: F401
    accuracy_count, confusion_counts, confusion_matrix, fbeta_counts, threshold_counts,
    top_k_count,
)

# -- normalization --
from pynn.backend.opencl.normalization import (  # noqa: F401
    batch_norm_apply, batch_norm_backward, batch_norm_forward, group_norm_backward,
    group_norm_forward, rms_norm_backward, rms_norm_forward, unit_norm_backward,
    unit_norm_forward,
)
from pynn.backend.opencl.optim import (  # noqa: F401
    adadelta_update, adagrad_update, adam_update, adam_update_many, adamax_update, ftrl_update,
    lion_update, nadam_update, regularizer_inplace, rmsprop_update, sgd_update,
    sgd_update_many, sum_squares,
)
from pynn.backend.opencl.pool import (  # noqa: F401
    avgpool2d_backward, avgpool2d_forward, global_avgpool2d_backward,
    global_avgpool2d_forward, global_maxpool2d_backward, global_maxpool2d_forward,
    maxpool2d_backward, maxpool2d_forward,
)
# -- 3-D pooling (branch vol) --
from pynn.backend.opencl.pool import (  # noqa: F401
    avgpool3d_backward, avgpool3d_forward, maxpool3d_backward, maxpool3d_forward,
)
from pynn.backend.opencl.pool import (  # noqa: F401  -- adaptive pooling
    adaptive_avgpool_backward, adaptive_avgpool_forward, adaptive_maxpool_backward,
    adaptive_maxpool_forward,
)
from pynn.backend.opencl.rnn import (  # noqa: F401
    gru_backward, gru_forward, lstm_backward, lstm_forward, simple_rnn_backward,
    simple_rnn_forward,
)
# -- elementwise (issue 13: pynn.ops on the device) --
from pynn.backend.opencl.elementwise import (  # noqa: F401
    elementwise_binary, elementwise_unary, reduce_axes,
)
# -- opsm: integer ops (bitwise, shifts, gcd/lcm) --
from pynn.backend.opencl.elementwise import integer_binary, integer_unary  # noqa: F401
# -- spatial and shape families --
from pynn.backend.opencl.shape import (  # noqa: F401
    repeat_vector_backward, repeat_vector_forward, transpose_backward, transpose_forward,
)
from pynn.backend.opencl.spatial import (  # noqa: F401
    pad2d_backward, pad2d_forward, upsample2d_backward, upsample2d_forward,
)
# -- 3-D spatial ops (branch vol) --
from pynn.backend.opencl.spatial import (  # noqa: F401
    pad3d_backward, pad3d_forward, upsample3d_backward, upsample3d_forward,
)
# -- convolution variants (issue 12) --
from pynn.backend.opencl.conv import (  # noqa: F401
    conv2d_transpose_backward, conv2d_transpose_forward,
)
from pynn.backend.opencl.depthwise import (  # noqa: F401
    depthwise_conv2d_backward_input, depthwise_conv2d_backward_weight,
    depthwise_conv2d_forward, grouped_conv2d_backward_input, grouped_conv2d_backward_weight,
    grouped_conv2d_forward,
)
# -- issue 12: activation layers, noise layers, constraints ------------------------------
from pynn.backend.opencl.activation import (  # noqa: F401
    prelu_backward, prelu_forward, relu_backward, relu_forward, softmax_backward,
    softmax_forward,
)
from pynn.backend.opencl.dropout import (  # noqa: F401
    gaussian_dropout_backward, gaussian_dropout_forward, gaussian_noise_forward,
    spatial_dropout_backward, spatial_dropout_forward,
)
from pynn.backend.opencl.dropout import (  # noqa: F401  -- Keras 3's AlphaDropout
    alpha_dropout_backward, alpha_dropout_forward,
)
from pynn.backend.opencl.optim import constraint_inplace  # noqa: F401
# -- end issue 12
# -- embedding (issue 14, sequence layers) --
from pynn.backend.opencl.embedding import embedding_backward, embedding_forward  # noqa: F401
# -- preprocessing (issue 15, Keras 3's preprocessing layers) --
from pynn.backend.opencl.preprocessing import (  # noqa: F401
    channel_affine_forward, image_adjust_forward, image_affine_backward, image_affine_forward,
)
# -- auggeo: RandomPerspective's resampling --
from pynn.backend.opencl.preprocessing import (  # noqa: F401
    image_projective_backward, image_projective_forward, image_remap_forward,
)
from pynn.backend.opencl.augment_mix import (  # noqa: F401
    image_blur_forward, image_erase_forward, image_mix_backward, image_mix_forward,
)
# -- attention (MultiHeadAttention's core) --
from pynn.backend.opencl.attention import attention_backward, attention_forward  # noqa: F401
from pynn.backend.opencl.runtime import (  # noqa: F401
    device_info, devices, empty_cache, select_device,
)

NAME = "opencl"
# -- compression (issue 18): sparse inference of pruned layers --
from pynn.backend.opencl.sparse import sparse_conv2d_forward, sparse_dense_forward  # noqa: F401
from pynn.backend.opencl.quant import (  # noqa: F401
    dequantize_forward, int8_dense_forward, int8_im2col, int8_pack_weights,
    quantize_forward,
)
# -- int8 depthwise convolution (issue 18, branch qbreadth) --
from pynn.backend.opencl.quant import int8_depthwise_conv2d_forward  # noqa: F401
# -- int8 chained inference (issue 18, branch q8) --
from pynn.backend.opencl.quant import int8_conv2d_forward, int8_max_pool2d  # noqa: F401
# -- rnn_mask: general recurrence (issue 14, recurrent half) --
from pynn.backend.opencl.rnn_mask import (  # noqa: F401
    recurrence_backward,
    recurrence_forward,
    sequence_reverse,
    sequence_scale,
)
# -- bf16: mixed precision (issue 17) --
from pynn.backend.opencl.bf16 import (  # noqa: F401
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
# -- conv3d (Keras 3's Conv3D and Conv3DTranspose) --
from pynn.backend.opencl.conv3d import (  # noqa: F401
    conv3d_backward, conv3d_backward_input, conv3d_backward_weight, conv3d_forward,
    conv3d_transpose_backward, conv3d_transpose_forward,
)
# -- Keras 3's CTC and Circle losses (loss family) --
from pynn.backend.opencl.loss import (  # noqa: F401
    circle_loss_forward_backward,
    ctc_loss_forward_backward,
)
# -- color (Keras 3's colour augmentation layers) --
from pynn.backend.opencl.color import color_transform_forward  # noqa: F401
# -- clahe: Keras 3's ContrastLimitedAdaptiveHistogramEqualization (color family) --
from pynn.backend.opencl.color import clahe_forward  # noqa: F401
# -- opt: Keras 3's Lamb, Adafactor and Muon --
from pynn.backend.opencl.optim import adafactor_update, lamb_update, muon_update  # noqa: F401
# -- spectral (branch audio: Keras 3's STFTSpectrogram and MelSpectrogram) --
from pynn.backend.opencl.spectral import (  # noqa: F401
    power_to_db_backward, power_to_db_forward, reflect_pad1d_backward, reflect_pad1d_forward,
    spectrum_backward, spectrum_forward, stft_backward, stft_forward,
)
# -- convlstm (Keras 3's ConvLSTM1D/2D/3D recurrence) --
from pynn.backend.opencl.convlstm import convlstm_backward, convlstm_forward  # noqa: F401
# -- misc: Keras 3's ScheduleFreeAdamW --
from pynn.backend.opencl.optim import schedule_free_adamw_update  # noqa: F401,E402
# -- scan (branch opsk: keras.ops' cumsum/cumprod) --
from pynn.backend.opencl.scan import cumprod_backward, scan_forward  # noqa: F401
# -- scatter (branch opsk: keras.ops' segment and scatter ops) --
from pynn.backend.opencl.scatter import (  # noqa: F401
    gather_rows, segment_reduce_forward, select_rows,
)
# -- sort (branch opsk: keras.ops' sort/argsort/top_k) --
from pynn.backend.opencl.sort import (  # noqa: F401
    argsort_rows, put_along_rows, take_along_rows,
)
# -- opss: keras.ops.ctc_loss's per-sample losses (loss family) --
from pynn.backend.opencl.loss import crossentropy_rows, ctc_loss_samples  # noqa: F401,E402
# -- linalg (branch linalg: keras.ops.linalg) --
from pynn.backend.opencl.linalg import (  # noqa: F401
    cholesky_forward, eigh_forward, lu_factor_forward, lu_slogdet_forward, lu_solve_forward,
    qr_forward, svd_forward, triangular_solve_forward,
)
