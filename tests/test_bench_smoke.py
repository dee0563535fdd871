"""Smoke test of ``python -m bench`` (bench/bench_cpu.py): toy sizes through every code path,
asserting the result checks and the JSON structure (never timings: this machine is shared and
tiny sizes say nothing about speed)."""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from bench import bench_cpu as bench

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    code = bench.main(["--quick", "--repeats", "2", "--threads", "1", "--profile",
                       "--json", str(path)])
    return code, json.loads(path.read_text())


def test_exit_code_and_checks(quick_results):
    code, res = quick_results
    assert code == 0
    assert res["all_checks_passed"] is True
    for r in res["dense"] + res["conv2d"] + list(res["training"].values()):
        assert r["check"]["passed"] is True
        assert 0.0 <= r["check"]["max_rel_error"] <= r["check"]["rtol"]


def test_json_structure(quick_results):
    _, res = quick_results
    assert res["quick"] is True and res["schema"] == 1
    m = res["machine"]
    for key in ("cpu_model", "logical_cpus", "threads", "python", "numpy", "torch", "pynn"):
        assert key in m
    assert m["threads"] == 1
    peak = res["sgemm_peak"]
    assert peak["gflops"] > 0 and len(peak["runs_s"]) >= 5
    for r in res["dense"] + res["conv2d"]:
        assert set(r["op_gflops"]) == {"forward", "backward_weight", "backward_input"}
        assert r["gflops"] > 0
        # % of peak is the median over (peak, step) pairs: between the extreme pair ratios.
        n, n_peak = len(r["step_runs_s"]), 2.0 * res["sgemm_peak"]["n"] ** 3
        assert n >= 1 and r["paired_peak_gflops"] > 0
        ratios = [100 * r["gflops"] * statistics.median(r["step_runs_s"]) / ts
                  / (n_peak / tp / 1e9) for ts, tp in zip(r["step_runs_s"], r["peak_runs_s"])]
        assert min(ratios) * (1 - 1e-9) <= r["pct_of_peak"] <= max(ratios) * (1 + 1e-9)
    assert set(res["training"]) == {"cnn", "mlp", "resnet", "func30"}
    for r in res["training"].values():
        for fw in ("pynn", "torch"):
            assert r[fw]["images_per_s"] > 0
            assert len(r[fw]["rounds_images_per_s"]) == 2
        assert math.isclose(r["speedup_vs_torch"],
                            r["pynn"]["images_per_s"] / r["torch"]["images_per_s"])
    names = [t["name"] for t in res["targets"]]
    # dense, conv2d, speed and memory per model, and func30's framework overhead (--profile)
    assert len(names) == 2 + 2 * len(res["training"]) + 1
    assert "func30 (30-layer functional) framework overhead, share of a step" in names
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    assert res["all_targets_met"] == all(t["met"] for t in res["targets"])


def test_no_hostname_in_json(quick_results):
    import socket

    _, res = quick_results
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(res)


def test_profile_covers_the_step(quick_results):
    _, res = quick_results
    for name in ("cnn", "mlp"):
        p = res["profile"][name]["pynn"]
        assert any(k.startswith("dense_forward") for k in p["ops_ms"])
        assert any(k.startswith("adam_update") for k in p["ops_ms"])
        assert p["ms_per_step"] > 0
        assert res["profile"][name]["torch"]["ops_self_ms"]
    # The conv layers' whole backward is one op (conv2d_backward).
    assert any(k.startswith("conv2d_backward ") for k in res["profile"]["cnn"]["pynn"]
               ["ops_ms"])


def test_default_path_has_no_hostname():
    path = bench.default_json_path({"cpu_model": "Intel(R) Xeon(R) Processor @ 2.1GHz",
                                    "threads": 2}, quick=False)
    assert path.name == "cpu-intel-xeon-2t.json"
    assert path.parent == ROOT / "bench" / "results"


def test_memory_targets(quick_results):
    _, res = quick_results
    res = dict(res, memory={"cnn": {"pynn": {"training_peak_mib": 10.0},
                                    "torch": {"training_peak_mib": 20.0}},
                            "mlp": {"pynn": {"training_peak_mib": 30.0},
                                    "torch": {"error": ["boom"]}}})
    mem = {t["name"]: t for t in bench.targets(res) if "memory" in t["name"]}
    assert mem["cnn training peak memory vs torch"]["met"] is True
    assert mem["cnn training peak memory vs torch"]["value"] == 0.5
    assert mem["mlp training peak memory vs torch"]["met"] is False


def test_check_rejects_wrong_results():
    ref = np.arange(1.0, 7.0).reshape(2, 3)
    good = bench.make_check({"a": bench.rel_error(ref * (1 + 1e-6), ref)}, 1e-4)
    bad = bench.make_check({"a": bench.rel_error(ref + 0.5, ref)}, 1e-4)
    assert good["passed"] and not bad["passed"]
    assert bench.rel_error(ref[:1], ref) == math.inf


def test_weights_map_to_torch_layout():
    """The training check hinges on this mapping: identical weights give identical outputs."""
    import torch

    model = bench.pynn_model("cnn")
    net, _, _ = bench.torch_model("cnn")
    bench.copy_weights_to_torch(model, net)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    probs = model.predict_on_batch(x)
    with torch.no_grad():
        logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), rtol=1e-4, atol=1e-6)


def test_workers_report_memory(quick_results):
    _, res = quick_results
    for name in ("cnn", "mlp"):
        for fw in ("pynn", "torch"):
            mem = res["memory"][name][fw]
            assert mem["peak_rss_mib"] >= mem["baseline_rss_mib"] > 0
            assert mem["training_peak_mib"] >= 0
    # The MLP's weights (784*512 + 512*256 floats) with Adam's two slots are ~6 MiB.
    assert res["memory"]["mlp"]["pynn"]["training_peak_mib"] > 4
    # Each framework runs in its own process with its own OpenMP default.
    assert res["training"]["mlp"]["torch"]["omp_wait_policy"] is None
