"""Both backends export exactly the op table of ``pynn.backend.api.OPS``: same names, same
parameter names in the same order, same defaults; and ``set_device`` switches between them."""

import inspect

import numpy as np
import pytest

from pynn.backend.api import OPS
from tests.opencl_util import skip_without_opencl


def _cpu():
    from pynn.backend import cpu

    return cpu


def _opencl():
    skip_without_opencl()
    from pynn.backend import opencl

    return opencl


BACKENDS = {"cpu": _cpu, "opencl": _opencl}
BACKEND_PARAMS = ["cpu", pytest.param("opencl", marks=pytest.mark.opencl)]


def _params(fn):
    return tuple(inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_exports_every_op_with_the_contract_signature(backend):
    mod = BACKENDS[backend]()
    missing = [name for name in OPS if not callable(getattr(mod, name, None))]
    assert not missing, f"{backend} backend lacks ops {missing}"
    wrong = {}
    for name, want in OPS.items():
        got = tuple(p.name for p in _params(getattr(mod, name)))
        if got != want:
            wrong[name] = (got, want)
    assert not wrong, f"{backend} signatures differ from api.OPS (got, want): {wrong}"


@pytest.mark.opencl
def test_backends_agree_on_defaults():
    cpu, ocl = _cpu(), _opencl()
    differ = {}
    for name in OPS:
        a = [(p.name, p.default) for p in _params(getattr(cpu, name))]
        b = [(p.name, p.default) for p in _params(getattr(ocl, name))]
        if a != b:
            differ[name] = (a, b)
    assert not differ, f"cpu and opencl defaults differ: {differ}"


@pytest.mark.opencl
def test_set_device_switches_backends_end_to_end():
    import pynn.backend as backend

    _opencl()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((7, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    previous = backend.device()
    try:
        assert backend.set_device("opencl") == "opencl"
        ops = backend.current()
        assert ops.NAME == "opencl"
        y, z = ops.dense_forward(ops.asarray(x), ops.asarray(w), ops.asarray(b), "relu", 0.0)
        got = ops.to_numpy(y)
        backend.set_device("cpu")
        assert backend.current().NAME == "cpu"
        want = np.maximum(x.astype(np.float64) @ w + b, 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert z is None
    finally:
        backend.set_device(previous)


def test_set_device_rejects_unknown_names():
    import pynn.backend as backend

    with pytest.raises(ValueError, match="opencl:P:D"):
        backend.set_device("tpu")


ARRAY_OPS = ("asarray", "to_numpy", "empty", "zeros", "full", "copy", "reshape",
             "add_inplace", "scale_inplace")


def _family(fn):
    return fn.__module__.rsplit(".", 1)[-1]


def test_every_op_lives_in_its_family_file_on_the_cpu():
    """The rule at the top of api.py, CPU side: an op's CPU kernel is native/<family>.pyx
    under the op's own name, its operand checks pynn/backend/operands/<family>.py."""
    import importlib
    from pathlib import Path

    import pynn

    cpu = _cpu()
    root = Path(pynn.__file__).resolve().parent.parent
    for name in OPS:
        if name in ARRAY_OPS:
            continue
        family = _family(getattr(cpu, name))
        assert getattr(cpu, name).__module__ == f"pynn._native.{family}", name
        assert (root / "native" / f"{family}.pyx").is_file(), name
        checks = importlib.import_module(f"pynn.backend.operands.{family}")
        assert callable(getattr(checks, name, None)), f"operands.{family} lacks {name}"


@pytest.mark.opencl
def test_every_op_lives_in_its_family_file_on_opencl():
    """The same rule, OpenCL side: host code pynn/backend/opencl/<family>.py (kernels
    opencl/<family>.cl), the family the CPU op has."""
    from pathlib import Path

    import pynn

    cpu, ocl = _cpu(), _opencl()
    root = Path(pynn.__file__).resolve().parent.parent
    for name in OPS:
        if name in ARRAY_OPS:
            assert _family(getattr(ocl, name)) == "arrays", name
            continue
        family = _family(getattr(cpu, name))
        assert getattr(ocl, name).__module__ == f"pynn.backend.opencl.{family}", (
            f"{name}: the CPU op is in native/{family}.pyx, the OpenCL one in "
            f"{getattr(ocl, name).__module__}")
        assert (root / "opencl" / f"{family}.cl").is_file(), name

# Ops whose float64 oracle is not a tests/reference/<family>_ref.py function, and where it is.
REFERENCE_ELSEWHERE = {
    "dropout_forward": "tests/test_dropout.py (dropout_mask_ref: the generator itself)",
    "dropout_backward": "tests/test_dropout.py (dropout_mask_ref)",
    "simple_rnn_backward": "central differences of simple_rnn_forward_ref",
    "lstm_backward": "central differences of lstm_forward_ref",
    "gru_backward": "central differences of gru_forward_ref",
    # -- convlstm --
    "convlstm_backward": "central differences of convlstm_forward_ref",
}

# Ops tested in another file than tests/test_<family>.py, and which.
TESTS_ELSEWHERE = {}
# -- 3-D pooling and spatial ops (branch vol): tested with their layers --
TESTS_ELSEWHERE.update({name: "test_volumetric.py" for name in (
    "maxpool3d_forward", "maxpool3d_backward", "avgpool3d_forward", "avgpool3d_backward",
    "pad3d_forward", "pad3d_backward", "upsample3d_forward", "upsample3d_backward")})
# -- auggeo: the projective, mix and erase ops, tested with Keras 3's augmentation layers --
TESTS_ELSEWHERE.update({name: "test_augment_keras3.py" for name in (
    "image_projective_forward", "image_projective_backward", "image_mix_forward",
    "image_mix_backward", "image_erase_forward", "image_blur_forward", "image_remap_forward")})
# -- misc: ScheduleFreeAdamW's update, tested with the optimizer --
TESTS_ELSEWHERE.update({"schedule_free_adamw_update": "test_schedule_free.py"})
# -- clahe: the color family's CLAHE op, tested with its layer --
TESTS_ELSEWHERE.update({"clahe_forward": "test_clahe.py"})


def test_every_op_has_its_reference_and_its_test_file():
    """The rest of api.py's rule: op ``<op>`` of family F has its float64 oracle
    ``<op>_ref`` in tests/reference/F_ref.py and its tests in tests/test_F.py."""
    import importlib
    from pathlib import Path

    cpu = _cpu()
    tests = Path(__file__).resolve().parent
    for name in OPS:
        if name in ARRAY_OPS:
            assert name in (tests / "test_arrays.py").read_text(), name
            continue
        family = _family(getattr(cpu, name))
        test_file = tests / TESTS_ELSEWHERE.get(name, f"test_{family}.py")
        assert test_file.is_file() and name in test_file.read_text(), (
            f"{name}: no tests/{test_file.name} naming it")
        if name in REFERENCE_ELSEWHERE:
            continue
        refs = importlib.import_module(f"tests.reference.{family}_ref")
        assert callable(getattr(refs, f"{name}_ref", None)), (
            f"tests/reference/{family}_ref.py lacks {name}_ref")
