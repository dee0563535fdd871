"""Mixed precision with Keras 3's names and rules (``keras.mixed_precision``).

``set_global_policy("mixed_bfloat16")`` makes every layer created afterwards keep its
variables in float32 and compute in bfloat16; ``dtype=`` of a layer (a policy or its name)
overrides the global policy for that layer, as in Keras.

What bfloat16 compute means in pynn: the GEMM-heavy ops (Dense forward, input and kernel
gradients; Conv2D's three, groups=1) round their operands to bfloat16 (round to nearest, ties
to even) and accumulate in float32 (``backend.bf16_*`` ops). Every other op, and the
activations passed between layers, stay float32 -- at least as accurate as Keras, whose
layers hand bfloat16 tensors to each other. Variables, gradients and optimizer slots are
float32. Layers without a bf16 route yet compute in float32 under the policy: Conv1D,
grouped, depthwise and transposed convs, the recurrent layers, and the BatchNormalization-
folded convs of ``predict``.

No loss scaling: bfloat16 has float32's exponent range, so gradients do not underflow the
way float16's do (Keras applies LossScaleOptimizer for mixed_float16 only). pynn has no
float16 kernels: ``mixed_float16`` and ``LossScaleOptimizer`` raise NotImplementedError.

Hardware: on the CPU the bf16 products run on AMX tiles (TDPBF16PS) where the CPU has AMX-BF16
and the OS grants it, else on vdpbf16ps where the CPU has AVX512_BF16, else on a portable
kernel of vdpbf16ps's numerics (same bits), which is correct but slower than float32 --
``bf16_kernel()`` says which, ``PYNN_BF16_KERNEL`` forces one. AMX's float32 sums add each
pair of products in the tile's own order: within the same error bound, other bits. On OpenCL
the operands are rounded on the device and the float32 GEMM/conv kernels accumulate, the same
numerics.
"""

import numpy as np

from pynn import _config

# Input channels below which native/bf16.pyx's convs round their operands and run the float32
# kernels (its NARROW_CHANNELS, the same value): Conv2D's backward then takes the fused float32
# conv2d_backward on rounded x and kernel instead of a separate activation pass and two ops.
NARROW_CHANNELS = 8

_MIXED = {"mixed_bfloat16": ("bfloat16", "float32")}
_FLOATS = ("float32", "float64")
_global = None


class DTypePolicy:
    """A layer's compute and variable dtypes: ``DTypePolicy("mixed_bfloat16")`` (compute
    bfloat16, variables float32) or a float dtype name (both that dtype). None means the
    global policy, as in Keras."""

    def __init__(self, name=None):
        if name is None:
            name = global_policy().name
        self._name = name
        self._compute_dtype, self._variable_dtype = _parse(name)

    @property
    def name(self):
        return self._name

    @property
    def compute_dtype(self):
        return self._compute_dtype

    @property
    def variable_dtype(self):
        return self._variable_dtype

    @property
    def is_mixed(self):
        return self._compute_dtype != self._variable_dtype

    def get_config(self):
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, DTypePolicy) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'


# Keras 3 keeps ``Policy`` as the legacy name of DTypePolicy.
Policy = DTypePolicy


def _parse(name):
    if not isinstance(name, str):
        raise TypeError(f"DTypePolicy: name must be a string such as 'mixed_bfloat16', got "
                        f"{name!r} (of type {type(name).__name__})")
    if name == "mixed_float16":
        raise NotImplementedError(
            "DTypePolicy 'mixed_float16': pynn has no float16 kernels (and float16 would also "
            "need loss scaling); use 'mixed_bfloat16', which needs none")
    if name in _MIXED:
        return _MIXED[name]
    try:
        dtype = str(np.dtype(name))
    except TypeError:
        dtype = None
    if dtype not in _FLOATS:
        raise ValueError(f"Cannot convert {name!r} to a mixed precision DTypePolicy. Valid "
                         f"policies in pynn: 'mixed_bfloat16', 'float32' and 'float64'.")
    return dtype, dtype


def set_global_policy(policy):
    """The policy of layers created from now on without ``dtype=``: a DTypePolicy or its name
    ('mixed_bfloat16', 'float32', 'float64'). Keras 3 also calls it ``set_dtype_policy``.

    A plain float policy is pynn's floatx (``pynn.set_floatx``): setting
    one sets floatx, and until a mixed policy is set the global policy follows floatx, so the
    two never disagree."""
    global _global
    if not isinstance(policy, DTypePolicy):
        if not isinstance(policy, str):  # Keras raises ValueError here
            raise ValueError(  # noqa: TRY004
                f"set_global_policy: expected the name of a policy (such as 'mixed_bfloat16') "
                f"or a DTypePolicy, got {policy!r} (of type {type(policy).__name__})")
        policy = DTypePolicy(policy)
    if policy.is_mixed:
        _global = policy
    else:
        _global = None
        _config.set_floatx(policy.variable_dtype)


def global_policy():
    """The global policy; until one is set, the policy of ``pynn`` floatx (float32)."""
    return _global if _global is not None else DTypePolicy(_config.floatx())


set_dtype_policy = set_global_policy
dtype_policy = global_policy


def get(identifier, where="DTypePolicy"):
    """A layer's ``dtype=`` as a policy: None (the global one), a DTypePolicy, its name, a
    NumPy float dtype, or Keras's serialized form ``{"class_name": "DTypePolicy", "config":
    {"name": ...}}``. ``where`` names the layer in errors."""
    if identifier is None:
        return global_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        if identifier.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
            raise ValueError(f"{where}: dtype {identifier!r} is not a serialized DTypePolicy")
        identifier = (identifier.get("config") or {}).get("name")
    if not isinstance(identifier, str):
        try:
            identifier = str(np.dtype(identifier))
        except TypeError:
            raise ValueError(f"{where}: dtype must be a policy name, a DTypePolicy or a float "
                             f"dtype, got {identifier!r}") from None
    try:
        return DTypePolicy(identifier)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def serialize(policy):
    """Keras 3's form of a policy in a layer config."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": policy.get_config(),
            "registered_name": None}


class LossScaleOptimizer:
    """Keras's loss scaling for mixed_float16. Not in pynn: it has no float16 compute, and
    bfloat16 (float32's exponent range) needs no loss scaling."""

    def __init__(self, inner_optimizer=None, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 **kwargs):
        raise NotImplementedError(
            "LossScaleOptimizer: pynn computes in bfloat16 only ('mixed_bfloat16'), whose "
            "float32 exponent range needs no loss scaling; use the optimizer itself")


def bf16_kernel():
    """The CPU microkernel of the bf16 ops: 'amx_bf16' (AMX tiles), 'avx512_bf16'
    (vdpbf16ps) or 'portable' (a C kernel of vdpbf16ps's numerics, slower than float32, where
    the CPU lacks AVX512_BF16). ``PYNN_BF16_KERNEL`` (one of these names) picks another that
    the CPU runs."""
    from pynn._native import bf16

    return bf16.KERNEL
