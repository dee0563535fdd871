"""The OpenCL backend: ``pyopencl.array.Array`` (float32; int32 / uint8 where stated) in and
out, kernels from ``opencl/*.cl`` underneath.

Every op of ``pynn.backend.api.OPS`` is here with the CPU backend's signature; each comes from
the module of its family (``opencl/<family>.cl`` holds its kernels, ``native/<family>.pyx``
its CPU twin, ``pynn.backend.operands.<family>`` the checks both share). Operands are device
arrays: host data goes up through ``asarray`` only. Nothing ever falls back to the CPU.
"""

from pynn.backend.opencl.activation import (  # noqa: F401
    activation_backward, activation_bias_backward, activation_forward,
)
from pynn.backend.opencl.arrays import (  # noqa: F401
    add_inplace, asarray, copy, empty, full, reshape, scale_inplace, to_numpy, zeros,
)
from pynn.backend.opencl.conv import (  # noqa: F401
    conv2d_backward, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
)
from pynn.backend.opencl.dense import (  # noqa: F401
    bias_backward, dense_backward_input, dense_backward_weight, dense_forward,
)
from pynn.backend.opencl.dropout import dropout_backward, dropout_forward  # noqa: F401
from pynn.backend.opencl.gemm import gemm_tiles, tune_gemm  # noqa: F401
from pynn.backend.opencl.loss import loss_forward_backward  # noqa: F401
from pynn.backend.opencl.metric import (  # noqa: F401
    accuracy_count, confusion_counts, confusion_matrix, fbeta_counts, threshold_counts,
    top_k_count,
)
from pynn.backend.opencl.optim import (  # noqa: F401
    adadelta_update, adagrad_update, adam_update, adamax_update, ftrl_update, lion_update,
    nadam_update, regularizer_inplace, rmsprop_update, sgd_update, sum_squares,
)
from pynn.backend.opencl.pool import (  # noqa: F401
    avgpool2d_backward, avgpool2d_forward, global_avgpool2d_backward,
    global_avgpool2d_forward, global_maxpool2d_backward, global_maxpool2d_forward,
    maxpool2d_backward, maxpool2d_forward,
)
from pynn.backend.opencl.rnn import (  # noqa: F401
    gru_backward, gru_forward, lstm_backward, lstm_forward, simple_rnn_backward,
    simple_rnn_forward,
)
from pynn.backend.opencl.runtime import (  # noqa: F401
    device_info, devices, empty_cache, select_device,
)

NAME = "opencl"
