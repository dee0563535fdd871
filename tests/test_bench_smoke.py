"""Smoke test of the benchmark suite (``python -m pynn.bench``, bench/suite.py): toy sizes
(``--size tiny``) through every kernel, the layer steps and one model with both references,
asserting the result checks and the JSON structure that ``--quick`` writes (never timings:
this machine is shared and toy sizes say nothing about speed)."""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from bench import bench_cpu, kernels, readme, suite

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import pynn

    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    threads = pynn.get_num_threads()
    try:
        code = suite.main(["--size", "tiny", "--repeats", "2", "--threads", "1", "--profile",
                           "--only", "kernel|layer|model mlp", "--json", str(path)])
    finally:
        # the suite sets pynn's thread count for its timings; later tests in this worker
        # read it (a plan test once failed after it)
        pynn.set_num_threads(threads)
    return code, json.loads(path.read_text()), path


def test_exit_code_and_every_check_passed(tiny_run):
    code, res, _ = tiny_run
    assert code == 0 and res["all_checks_passed"] is True
    for r in res["kernels"]:
        assert r["check"]["passed"] is True, r
        assert 0.0 <= r["check"]["max_rel_error"] <= r["check"]["rtol"]
    for kind in ("dense", "conv2d"):
        for r in res["layer_steps"][kind]:
            assert r["check"]["passed"] is True


def test_machine_block(tiny_run):
    _, res, _ = tiny_run
    m = res["machine"]
    for key in ("cpu_model", "physical_cores", "logical_cpus", "threads", "python", "numpy",
                "pynn", "versions", "build_flags", "opencl_devices"):
        assert key in m, key
    assert m["threads"] == 1
    assert m["sgemm_peak_gflops"] > 0 and m["copy_bandwidth_gbs"] > 0
    assert len(m["sgemm_peak"]["runs_s"]) >= 5
    assert m["build_flags"]["COMPILE_ARGS"]
    assert res["size"] == "tiny" and res["schema"] == suite.SCHEMA


def test_kernels_cover_the_issue_list(tiny_run):
    _, res, _ = tiny_run
    names = [r["name"] for r in res["kernels"]]
    assert {r["family"] for r in res["kernels"]} == set(kernels.FAMILIES)
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
               "depthwise_conv2d_forward", "depthwise_conv2d_backward_input",
               "depthwise_conv2d_backward_weight", "maxpool2d_forward", "softmax_cross_entropy",
               "batch_norm_forward", "lstm sequence", "gru sequence", "dropout_forward"):
        assert any(n.startswith(op) for n in names), op
    for opt in kernels.OPTIMIZERS:
        assert f"{opt}_update" in names
    for r in res["kernels"]:
        assert r["unit"] == ("GFLOP/s" if r["bound"] == "compute" else "GB/s")
        peak = (res["machine"]["sgemm_peak_gflops"] if r["bound"] == "compute"
                else res["machine"]["copy_bandwidth_gbs"])
        assert math.isclose(r["pct_of_peak"], 100 * r["rate"] / peak)
        assert math.isclose(r["median_s"], statistics.median(r["runs_s"]))


def test_models_rows(tiny_run):
    _, res, _ = tiny_run
    (row,) = res["models"]
    assert row["model"] == "mlp" and row["device"] == "cpu" and row["check"]["passed"]
    for fw in ("pynn", "torch"):
        assert row[fw]["images_per_s"] > 0
        assert len(row[fw]["rounds_images_per_s"]) == 2
    for fw in ("pynn", "torch", "onnxruntime"):
        assert row[fw]["predict_batch1_ms"] > 0 and row[fw]["predict_batch64_ms"] > 0
        assert row["memory"][fw]["peak_rss_mib"] >= row["memory"][fw]["baseline_rss_mib"] > 0
    assert math.isclose(row["ratio"]["torch"]["training"],
                        row["pynn"]["images_per_s"] / row["torch"]["images_per_s"])
    assert math.isclose(row["ratio"]["onnxruntime"]["predict_batch64"],
                        row["onnxruntime"]["predict_batch64_ms"]
                        / row["pynn"]["predict_batch64_ms"])
    assert "training" not in row["ratio"]["onnxruntime"]  # an inference reference
    # The MLP's weights (784*512 + 512*256 floats) with Adam's two slots are ~6 MiB.
    assert row["memory"]["pynn"]["training_peak_mib"] > 4
    prof = res["profile"]["mlp"]["pynn"]
    assert any(k.startswith("dense_forward") for k in prof["ops_ms"])


def test_charts_and_markdown(tiny_run):
    _, res, path = tiny_run
    pytest.importorskip("matplotlib")
    assert res["charts"] == [f"{path.stem}-kernels.png", f"{path.stem}-models.png"]
    for name in res["charts"]:
        assert (path.parent / name).read_bytes()[:4] == b"\x89PNG"
    text = suite.markdown(res)
    assert "| gemm 33^3 | cpu | ok |" in text and "| mlp | cpu | 16 | ok |" in text


def test_no_hostname_in_json(tiny_run):
    import socket

    _, res, _ = tiny_run
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(res)


def test_compare_flags_only_changes_beyond_the_spread(tiny_run):
    _, res, _ = tiny_run
    # The measured runs' own spread can pass 100% on a busy machine (the suite runs beside
    # other tests): give the rows that must change a tight spread in both files.
    res = json.loads(json.dumps(res))
    for row in res["kernels"][:2]:
        row["runs_s"] = [1.0, 1.01]
    new = json.loads(json.dumps(res))
    fast, slow, same = new["kernels"][:3]
    fast["rate"] *= 2.0
    slow["rate"] /= 2.0
    # Within the spread: a change smaller than the rows' own run-to-run spread.
    same["runs_s"] = [1.0, 1.5]
    same["rate"] *= 1.2
    rows = {r["what"]: r for r in suite.compare(res, new)["rows"]}
    key = "kernel cpu {}".format
    assert rows[key(fast["name"])]["verdict"] == "faster"
    assert rows[key(slow["name"])]["verdict"] == "slower"
    assert rows[key(same["name"])]["verdict"] == "same"
    assert suite.compare(res, res)["slower"] == 0


def test_recorded_command_leaves_out_compare():
    assert suite.reproducing(["--quick", "--compare", "old.json", "--threads", "2",
                              "--compare=x.json"]) == ["--quick", "--threads", "2"]


def test_loss_is_shown_as_a_loss():
    assert suite.ratio_text(0.5) == "0.50x (loss)"
    assert suite.ratio_text(1.25) == "1.25x"


def test_readme_section_names_the_command(tiny_run):
    _, res, _ = tiny_run
    text = readme.section(res, "bench/results/x.json")
    assert res["command"] in text and "python -m bench.readme bench/results/x.json" in text
    assert "| mlp | cpu |" in text


def test_check_rejects_wrong_results():
    from pynn.backend import cpu

    (case,) = kernels.gemm_cases("tiny", np.random.default_rng(0))
    assert kernels.check_case(case, cpu)["passed"]
    case.reference = lambda: (np.zeros((33, 33)) + 1.0,)
    assert not kernels.check_case(case, cpu)["passed"]
    row = kernels.run_case(case, cpu, lambda: None, 2, 0.0, {"compute": 1.0})
    assert "rate" not in row  # a failed check is never timed


def test_weights_map_to_torch_layout():
    """The training check hinges on this mapping: identical weights give identical outputs."""
    import torch

    for name in ("cnn", "gru", "text"):
        model = bench_cpu.pynn_model(name)
        net, _, _ = bench_cpu.torch_model(name)
        bench_cpu.copy_weights_to_torch(model, net)
        x, _ = bench_cpu.make_data(name, 2, 1)
        probs = model.predict_on_batch(x[0])
        with torch.no_grad():
            logits = net(bench_cpu.to_torch_batches(x, np.zeros((1, 2), np.int32))[0][0])
        np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def test_default_path_names_device_cpu_and_size():
    path = suite.default_json_path({"cpu_model": "AMD EPYC 7B13 64-Core Processor",
                                    "threads": 2}, "quick", ["cpu"])
    assert path.name == "suite-cpu-amd-epyc-7b13-64-core-2t-quick.json"
    assert path.parent == ROOT / "bench" / "results"


class FakeTorchCuda:
    """bench_opencl.TorchCuda as on a machine with a GPU: 100 GFLOP/s for every GEMM."""

    def __init__(self, repeat):
        self.torch, self.info = True, {"available": True, "device": "fake"}

    def gemm(self, m, n, k):
        return dict.fromkeys(("dense_forward", "dense_backward_input",
                              "dense_backward_weight"), 100.0)


@pytest.mark.opencl
def test_opencl_device_rows(tmp_path, monkeypatch, num_threads):
    """--device opencl: the device block (name, driver, measured peaks) and kernel rows
    checked on the device and rated against that device's peaks, not the CPU's; GEMMs beside
    PyTorch CUDA where PyTorch sees a GPU (faked here)."""
    from bench import bench_opencl

    monkeypatch.setattr(bench_opencl, "TorchCuda", FakeTorchCuda)
    path = tmp_path / "ocl.json"
    code = suite.main(["--size", "tiny", "--repeats", "1", "--threads", "1", "--device",
                       "opencl", "--only", "kernel (gemm|pooling|optimizer)", "--no-charts",
                       "--json", str(path)])
    res = json.loads(path.read_text())
    assert code == 0 and res["all_checks_passed"]
    (dev,) = res["machine"]["opencl_devices"]
    assert dev["name"] and dev["driver_version"]
    assert dev["gemm_peak_gflops"] > 0 and dev["copy_bandwidth_gbs"] > 0
    assert res["devices"] == [dev["index"]] and "layer_steps" not in res
    for r in res["kernels"]:
        assert r["device"] == dev["index"] and r["check"]["passed"]
        peak = dev["gemm_peak_gflops"] if r["bound"] == "compute" else dev["copy_bandwidth_gbs"]
        assert math.isclose(r["pct_of_peak"], 100 * r["rate"] / peak)
        if r["family"] == "gemm":
            assert math.isclose(r["ratio_to_torch_cuda"], r["rate"] / 100.0)
    assert res["machine"]["torch_cuda"]["device"] == "fake"
    assert "vs PyTorch CUDA" in suite.markdown(res)


def test_results_files_name_the_zen_generation():
    """Zen 3 and Zen 4 guests both report "AMD EPYC": the core from cpuinfo's family and
    AVX-512 keeps their results files apart; other CPUs keep their model's slug."""
    assert bench_cpu._amd_core("AMD EPYC", "25", {"avx2", "avx512f"}) == "zen4"
    assert bench_cpu._amd_core("AMD EPYC", "25", {"avx2", "fma"}) == "zen3"
    assert bench_cpu._amd_core("AMD EPYC 9654 96-Core Processor", "26", set()) == "zen5"
    assert bench_cpu._amd_core("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "6",
                               {"avx512f"}) is None
    assert bench_cpu._cpu_slug("AMD EPYC", "zen4") == "amd-epyc-zen4"
    assert bench_cpu._cpu_slug("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz") == \
        "intel-xeon-platinum-8481c"
    assert bench_cpu._cpu_slug("AMD EPYC 7B13 Zen3", "zen3") == "amd-epyc-7b13-zen3"
