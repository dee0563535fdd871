"""The OpenCL runtime: device discovery and choice, buffer pool and limits, program cache
(memory + disk), build errors, launch rounding. Runs on PoCL's CPU device in CI."""

import json
import types

import numpy as np
import pytest

pytestmark = pytest.mark.opencl

KEYS = {"index", "platform", "name", "type", "global_mem", "max_alloc", "compute_units",
        "fp16", "fp64", "driver_version"}


@pytest.fixture(scope="module")
def rt():
    from pynn.backend.opencl import runtime as _cl_runtime

    _cl_runtime.select_device("opencl")
    return _cl_runtime


# -- devices --------------------------------------------------------------------------------


def test_devices_describe_every_device(rt):
    found = rt.devices()
    assert found, "the OpenCL probe saw a device, devices() must list it"
    for d in found:
        assert KEYS <= set(d), f"missing keys {KEYS - set(d)}"
        kind, p, i = d["index"].split(":")
        assert kind == "opencl" and int(p) >= 0 and int(i) >= 0
        assert d["global_mem"] > 0 and 0 < d["max_alloc"] <= d["global_mem"]
        assert d["compute_units"] >= 1
        assert d["type"] in ("gpu", "cpu", "accelerator", "other")


def test_select_by_index_and_reselect_keeps_state(rt):
    first = rt.devices()[0]["index"]
    info = rt.select_device(first)
    assert info["index"] == first
    ctx = rt.context()
    assert rt.select_device(first)["index"] == first
    assert rt.context() is ctx, "re-selecting the current device must keep its context"
    rt.select_device("opencl")


@pytest.mark.parametrize("spec", ["opencl:x:0", "opencl:0", "cuda", "opencl:0:0:0"])
def test_select_rejects_malformed_spec(rt, spec):
    with pytest.raises(ValueError, match="opencl:P:D"):
        rt.select_device(spec)


def test_select_unknown_index_lists_available(rt):
    with pytest.raises(ValueError, match="available"):
        rt.select_device("opencl:99:0")


def test_no_device_says_how_to_install(rt, monkeypatch):
    monkeypatch.setattr(rt, "_platforms", lambda: [])
    with pytest.raises(RuntimeError, match="pocl-binary-distribution"):
        rt.select_device("opencl")
    assert rt.devices() == []


def _fake(kind, unified=False):
    return types.SimpleNamespace(type=kind, host_unified_memory=unified)


def test_preference_discrete_then_integrated_then_cpu(rt):
    t = rt.cl.device_type
    cpu = (0, 0, None, _fake(t.CPU))
    igpu = (1, 0, None, _fake(t.GPU, unified=True))
    dgpu = (2, 1, None, _fake(t.GPU, unified=False))
    acc = (0, 1, None, _fake(t.ACCELERATOR))
    assert rt.best_device([cpu, igpu, dgpu, acc]) is dgpu
    assert rt.best_device([cpu, igpu, acc]) is igpu
    assert rt.best_device([acc, cpu]) is cpu


# -- buffers --------------------------------------------------------------------------------


def test_round_trip_and_zeros(rt):
    a = np.arange(13, dtype=np.float32) - 6.5
    assert np.array_equal(rt.to_device(a).get(), a)
    assert np.array_equal(rt.zeros((3, 5)).get(), np.zeros((3, 5), np.float32))
    assert rt.empty((0, 4)).shape == (0, 4)
    assert rt.to_device(np.zeros((0, 3), np.float32)).shape == (0, 3)
    labels = rt.to_device(np.array([3, 1, 2]), dtype=np.int32)
    assert labels.dtype == np.int32 and labels.get().tolist() == [3, 1, 2]


def test_request_over_max_alloc_names_the_bytes(rt):
    too_big = rt.device_info()["max_alloc"] // 4 + 1
    with pytest.raises(MemoryError, match=f"{too_big * 4} bytes requested for weights"):
        rt.empty((too_big,), np.float32, "weights")


def test_request_over_global_memory(rt, monkeypatch):
    info = dict(rt._S.info, max_alloc=1 << 62, global_mem=1000)
    monkeypatch.setattr(rt._S, "info", info)
    with pytest.raises(MemoryError, match="1024 bytes requested.*global memory of 1000"):
        rt.empty((256,), np.float32)


def test_negative_shape_rejected(rt):
    with pytest.raises(ValueError, match="negative"):
        rt.empty((3, -1))


def test_pool_reuses_buffers_and_empty_cache_frees(rt):
    from pynn.backend import opencl

    rng = np.random.default_rng(0)
    x = opencl.asarray(rng.standard_normal((9, 7)))
    w = opencl.asarray(rng.standard_normal((7, 5)))

    def step():
        y, _ = opencl.dense_forward(x, w, None, "relu", 0.0)
        dx = opencl.dense_backward_input(y, w)
        dw = opencl.dense_backward_weight(x, y)
        return float(dx.get().sum() + dw.get().sum())

    first = step()
    managed = rt.pool_stats()["managed_bytes"]
    for _ in range(5):
        assert step() == first
    assert rt.pool_stats()["managed_bytes"] == managed, "a warm step allocated new buffers"
    rt.empty_cache()
    assert rt.pool_stats()["held_blocks"] == 0


# -- programs -------------------------------------------------------------------------------


def test_program_memory_and_disk_cache(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("PYNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PYNN_CL_NO_DISK_CACHE", raising=False)
    defines = {"REDUCE_TEST_TAG": 17}  # unused by the source: only makes a fresh cache key
    rt.clear_program_cache()
    before = rt.cache_stats()
    k1 = rt.kernel("reduce", "bias_backward_final", defines)
    after_build = rt.cache_stats()
    assert after_build["builds"] == before["builds"] + 1
    assert list((tmp_path / "programs").glob("*.bin")), "no binary written to the disk cache"
    assert rt.kernel("reduce", "bias_backward_final", defines) is k1  # memory hit
    rt.clear_program_cache()
    k2 = rt.kernel("reduce", "bias_backward_final", defines)
    after_disk = rt.cache_stats()
    assert after_disk["builds"] == after_build["builds"]
    assert after_disk["disk_hits"] == after_build["disk_hits"] + 1
    partial = rt.to_device(np.arange(12, dtype=np.float32).reshape(3, 4))
    out = rt.empty((4,))
    rt.launch(k2, (4,), (64,), 3, 4, partial, out)
    assert out.get().tolist() == [12.0, 15.0, 18.0, 21.0]


def test_corrupt_disk_binary_is_rebuilt(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("PYNN_CACHE_DIR", str(tmp_path))
    defines = {"REDUCE_TEST_TAG": 18}
    rt.clear_program_cache()
    rt.kernel("reduce", "bias_backward_final", defines)
    (binary,) = (tmp_path / "programs").glob("*.bin")
    binary.write_bytes(b"not a program")
    rt.clear_program_cache()
    builds = rt.cache_stats()["builds"]
    rt.kernel("reduce", "bias_backward_final", defines)
    assert rt.cache_stats()["builds"] == builds + 1


def test_cache_key_follows_included_files(rt, tmp_path, monkeypatch):
    (tmp_path / "inner.h").write_text("#define VALUE 1\n")
    (tmp_path / "outer.h").write_text('#include "inner.h"\n')
    source = '#include "outer.h"\n__kernel void k(__global float* a) { a[0] = VALUE; }\n'
    monkeypatch.setattr(rt, "kernel_dir", lambda: tmp_path)
    key1 = rt._cache_key(source, ["-DX=1"])
    assert rt._cache_key(source, ["-DX=1"]) == key1
    assert rt._cache_key(source, ["-DX=2"]) != key1
    (tmp_path / "inner.h").write_text("#define VALUE 2\n")
    assert rt._cache_key(source, ["-DX=1"]) != key1, "editing a nested header must rebuild"


def test_build_failure_shows_compiler_log(rt):
    # gemm.cl refuses tiles that do not divide evenly, with an #error the log must carry.
    with pytest.raises(RuntimeError, match="MWG must be a multiple of MDIMC"):
        rt.kernel("dense", "dense_forward", {"MWG": 30, "NWG": 32, "MDIMC": 8, "NDIMC": 8})


def test_missing_kernel_file(rt):
    with pytest.raises(FileNotFoundError, match="no_such_family.cl"):
        rt.kernel("no_such_family", "k")


# -- launch ---------------------------------------------------------------------------------


def test_launch_rounds_global_size_up_and_guards(rt):
    cols, chunks = 67, 3  # not a multiple of the local size 64
    host = np.random.default_rng(1).standard_normal((chunks, cols)).astype(np.float32)
    partial = rt.to_device(host)
    out = rt.to_device(np.full(cols + 61, -7.0, np.float32))  # guard cells past cols
    rt.launch(rt.kernel("reduce", "bias_backward_final"), (cols,), (64,), chunks, cols,
              partial, out)
    got = out.get()
    np.testing.assert_allclose(got[:cols], host.astype(np.float64).sum(0), rtol=1e-6)
    assert np.all(got[cols:] == -7.0), "a work-item past the size wrote memory"


def test_zero_sized_launch_is_skipped(rt):
    assert rt.launch(rt.kernel("reduce", "bias_backward_final"), (0,), (64,), 0, 0,
                     None, None) is None


def test_kernel_dir_ships_the_sources(rt):
    kdir = rt.kernel_dir()
    for name in ("common.h", "gemm.cl", "dense.cl", "conv.cl", "reduce.cl"):
        assert (kdir / name).is_file(), f"{name} missing from {kdir}"


def test_tuning_file_round_trip(tmp_path, monkeypatch, rt):
    from pynn.backend.opencl import gemm as opencl

    monkeypatch.setenv("PYNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(opencl, "_tiles_by_device", {})
    default = opencl.gemm_tiles()
    small = dict(opencl.FALLBACK_TILES)
    res = opencl.tune_gemm(m=33, n=17, k=29, candidates=[small], budget_s=60, repeats=1)
    assert res["tiles"] in (default, small)
    assert all(r.get("correct") for r in res["results"] if "error" not in r)
    saved = json.loads(opencl._tuning_path().read_text())
    assert saved["tiles"] == res["tiles"] and saved["gflops"] > 0
    monkeypatch.setattr(opencl, "_tiles_by_device", {})
    assert opencl.gemm_tiles() == res["tiles"], "a saved tuning is not picked up"
