"""The array ops of the op table (asarray, to_numpy, empty, zeros, full, copy, reshape,
add_inplace, scale_inplace) over both backends."""

import numpy as np
import pytest

from tests.backend_util import assert_close, rand


def test_array_ops_on_backend(backend):
    ops = backend.ops
    rng = np.random.default_rng(4)
    a_host, b_host = rand(rng, (3, 7)), rand(rng, (3, 7))
    a = ops.asarray(a_host)
    assert ops.asarray(a) is a
    c = ops.copy(a)
    ops.add_inplace(c, ops.asarray(b_host))
    assert_close(ops.to_numpy(c), a_host.astype(np.float64) + b_host, 1e-6, "add_inplace")
    ops.scale_inplace(c, -0.5)
    assert_close(ops.to_numpy(c), (a_host.astype(np.float64) + b_host) * -0.5, 1e-6,
                 "scale_inplace")
    assert np.array_equal(ops.to_numpy(a), a_host), "copy shares memory with its source"
    assert ops.to_numpy(ops.reshape(a, (7, 3))).shape == (7, 3)
    assert np.array_equal(ops.to_numpy(ops.full((2, 3), 1.5)), np.full((2, 3), 1.5))
    assert np.array_equal(ops.to_numpy(ops.zeros((4,), np.int32)), np.zeros(4, np.int32))
    assert ops.empty((2, 0)).shape == (2, 0)
    # Both refuse mismatched shapes; only OpenCL's message names the op's own check (the
    # CPU's is NumPy's broadcast error).
    with pytest.raises(ValueError, match="shapes differ" if backend.is_opencl else "shape"):
        ops.add_inplace(c, ops.zeros((7, 3)))


@pytest.mark.opencl
def test_host_data_is_refused_opencl(ocl):
    with pytest.raises(TypeError, match="asarray"):
        ocl.scale_inplace(np.ones((3, 7), np.float32), 2.0)
