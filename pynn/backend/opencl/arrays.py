"""Array ops of the OpenCL backend and its operand policy (``DEVICE``).

Operands of every other op are device arrays (``pyopencl.array.Array``) of the current
context: a host array is a TypeError naming ``asarray``, the one upload point, so an op never
moves a batch behind the caller's back (see ``pynn.backend.api``). The kernels take float32
(int32 labels and argmax, uint8 masks), C-contiguous at offset 0, and index with int32.
"""

import numpy as np

from pynn.backend.opencl import runtime as rt
from pynn.backend.operands.common import INT32_MAX, check_count, host_array


def is_device_array(a):
    return rt.cl_array is not None and isinstance(a, rt.cl_array.Array)


class DeviceArrays:
    """The OpenCL backend's operands: device arrays of the kernels' dtype, never uploaded."""

    name = "OpenCL"
    max_elements = INT32_MAX

    def _device(self, op, name, a, dtype, ndim=None):
        if a is None:
            raise ValueError(f"{op}: '{name}' is required, got None")
        if not is_device_array(a):
            raise TypeError(f"{op}: '{name}' must be a pyopencl.array.Array on the OpenCL "
                            f"device (upload with backend.asarray), got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{op}: '{name}' must have dtype {np.dtype(dtype)}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: '{name}' must be C-contiguous (copy it first), got "
                             f"strides {a.strides}")
        if a.context != rt.context():
            raise ValueError(f"{op}: '{name}' lives on another OpenCL context than the "
                             f"current device {rt.device_info()['index']}")
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {a.shape}")
        check_count(self, op, name, a.size)
        # A view at an offset (a slice) reaches the kernels as a fresh buffer: they index
        # from the buffer's start.
        return copy(a) if a.offset else a

    def float_input(self, op, name, a, ndim=None, like=None):
        return self._device(op, name, a, np.float32, ndim)

    def int_input(self, op, name, a, ndim=None):
        return self._device(op, name, a, np.int32, ndim)

    def mask_input(self, op, name, a):
        if is_device_array(a) and a.dtype == np.bool_:
            a = a.view(np.uint8)
        return self._device(op, name, a, np.uint8)

    def inplace(self, op, name, a, like=None):
        if is_device_array(a) and a.offset:
            raise ValueError(f"{op}: '{name}' is updated in place, so it cannot be a view at "
                             f"an offset")
        return self._device(op, name, a, np.float32)

    def shares_memory(self, a, b):
        return bool(a.size and b.size and a.base_data is b.base_data)

    def label_input(self, op, name, a):
        return self._device(op, name, a, np.int32)

    def check_labels(self, op, labels, k):
        # Checked by the kernels, which flag a bad label instead of reading past a row: the
        # flag comes back with the loss or count, so a step pays no extra round trip.
        return labels


DEVICE = DeviceArrays()


# -- the array ops of the op table ------------------------------------------------------

# Why no float64: the kernels are written once, in float32 (opencl/common.h). fp64 is an
# optional OpenCL extension, absent on most Intel and many AMD consumer parts and 1/32 to 1/64
# of the float32 rate on consumer NVIDIA ones; float64 is for gradient checks, which the CPU
# backend runs.
def _device_dtype(op, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        raise TypeError(f"{op}: the OpenCL backend computes in float32 only (its kernels are "
                        f"float32, fp64 is optional in OpenCL); build the model in float32 "
                        f"(pynn.set_floatx('float32')) or use the CPU backend for float64")
    return dtype



def asarray(x, dtype=np.float32):
    """Host data -> device array (upload); a device array of the right dtype passes through."""
    dtype = _device_dtype("asarray", dtype)
    if is_device_array(x):
        if x.dtype == dtype and x.flags.c_contiguous and not x.offset:
            return x
        if x.dtype == dtype:
            return copy(x)
        return x.astype(dtype)
    return rt.to_device(host_array("asarray", x, dtype))


def to_numpy(a):
    if is_device_array(a):
        return a.get()
    return np.asarray(a)


def empty(shape, dtype=np.float32):
    return rt.empty(shape, _device_dtype("empty", dtype))


def zeros(shape, dtype=np.float32):
    return rt.zeros(shape, _device_dtype("zeros", dtype))


def full(shape, value, dtype=np.float32):
    a = rt.empty(shape, _device_dtype("full", dtype))
    if a.size:
        a.fill(np.dtype(dtype).type(value))
    return a


def copy(a):
    if not is_device_array(a):
        raise TypeError(f"copy: expected a pyopencl.array.Array, got {type(a).__name__}")
    out = rt.empty(a.shape, a.dtype, "copy")
    if a.size:
        if a.flags.c_contiguous:
            rt.cl.enqueue_copy(rt.queue(), out.data, a.base_data, byte_count=a.nbytes,
                               src_offset=a.offset)
        else:
            out[...] = a
    return out


def reshape(a, shape):
    return a.reshape(shape)


def add_inplace(a, b):
    """a += b (same shape, same dtype), on the device."""
    op = "add_inplace"
    a = DEVICE.inplace(op, "a", a)
    b = DEVICE.float_input(op, "b", b)
    if a.shape != b.shape:
        raise ValueError(f"{op}: shapes differ, a {a.shape} and b {b.shape}")
    if a.size:
        a += b


def scale_inplace(a, factor):
    """a *= factor, on the device."""
    a = DEVICE.inplace("scale_inplace", "a", a)
    if a.size:
        a *= a.dtype.type(factor)
