"""The GPU run's driver (bench/gpu/gpu_run.py, behind bench/gpu/run.sh) without a GPU: its
PoCL dry run with tiny sizes end to end, the NVIDIA library registration on a fake library,
and the summary on a made-up result. Never timings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import gpu_run

ROOT = Path(__file__).resolve().parents[1]


def test_icd_registers_the_library_found(tmp_path, monkeypatch):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / gpu_run.NVIDIA_OPENCL).write_bytes(b"")
    monkeypatch.setattr(gpu_run, "VENDOR_DIRS", ())
    monkeypatch.delenv("OCL_ICD_VENDORS", raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libdir))
    run = gpu_run.Run(tmp_path / "out", 60)
    status, note = gpu_run.step_icd(run, tmp_path / "work", 30)
    run.log.close()
    vendors = tmp_path / "work" / "vendors"
    assert status == "ok", note
    assert run.env["OCL_ICD_VENDORS"] == str(vendors)
    assert (vendors / "nvidia.icd").read_text().strip() == str(libdir / gpu_run.NVIDIA_OPENCL)


def test_summary_reads_the_headline_numbers():
    doc = {"devices": [{
        "gemm": [{"m": 256, "n": 256, "k": 256, "dense_forward_gflops": 1.0},
                 {"m": 4096, "n": 4096, "k": 4096, "dense_forward_gflops": 35000.0,
                  "dense_forward_torch_cuda_gflops": 50000.0,
                  "dense_forward_ratio_to_torch_cuda": 0.7}],
        "training": {"cnn": {"images_per_s": 10.0, "ratio_to_torch_cuda": 0.5}},
        "start": {"cold": {"builds": 11}, "warm": {"builds": 0}, "warm_compiled_nothing": True},
    }]}
    s = gpu_run.summarize(doc)
    assert s["sgemm_shape"] == "4096x4096x4096"
    assert s["sgemm_4096_pct_of_cublas"] == pytest.approx(70.0)
    assert s["cnn_ratio"] == 0.5 and s["lstm_ratio"] is None
    assert s["warm_start_compiled_nothing"] is True and s["warm_start_builds"] == 0
    assert gpu_run.summarize({})["sgemm_4096_gflops"] is None


@pytest.mark.opencl
def test_pocl_dry_run(tmp_path):
    """Every step but the build and the test run, on PoCL, GEMMs only, up to 256^3."""
    from pynn.backend.opencl import runtime as rt

    if not any(d["vendor"] == "pocl" for d in rt.devices()):
        pytest.skip("no PoCL device (the dry run is for machines without a GPU driver)")
    out = tmp_path / "out"
    cmd = [sys.executable, "bench/gpu/gpu_run.py", str(out), "--pocl", "--skip", "build,tests",
           "--wheels", str(tmp_path / "no-wheels"), "--work", str(tmp_path / "work"),
           "--budget", "400", "--bench-args", "--sections gemm --gemm-max 256 --repeat 1"]
    # The usual program cache: the dense program is then usually built already.
    env = dict(os.environ, PYNN_CACHE_DIR=str(rt.cache_dir()))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[1] == "run.log" and files[0].startswith("opencl-pocl")
    doc = json.loads((out / files[0]).read_text())
    steps = doc["gpu_run"]["steps"]
    assert [steps[s]["status"] for s in ("wheels", "devices", "bench")] == ["ok"] * 3
    assert steps["build"]["status"] == "skipped" and steps["icd"]["status"] == "skipped"
    gemm = doc["devices"][0]["gemm"]
    assert [(r["m"], r["n"], r["k"]) for r in gemm] == [(256, 256, 256), (128, 256, 784)]
    assert all(r[f"{op}_gflops"] > 0 for r in gemm
               for op in ("dense_forward", "dense_backward_input", "dense_backward_weight"))
    summary = doc["gpu_run"]["summary"]
    assert summary["sgemm_shape"] == "256x256x256" and summary["sgemm_4096_gflops"] > 0
    log = (out / "run.log").read_text()
    assert "SGEMM 256x256x256 % of cuBLAS" in log and "warm start compiled nothing" in log
    assert "every step ok" in proc.stdout


def test_run_sh_needs_an_out_dir():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_summary_without_an_opencl_device_keeps_cublas():
    doc = {"devices": [], "torch_cuda": {"gemm": [
        {"m": 4096, "n": 4096, "k": 4096, "dense_forward": 50000.0}]}}
    s = gpu_run.summarize(doc)
    assert s["cublas_4096_gflops"] == 50000.0 and s["sgemm_4096_pct_of_cublas"] is None
