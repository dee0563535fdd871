"""pynn.distributed: 2 MPI ranks launched with mpiexec (the mpich wheel's) against one process.
Skipped, saying why, without mpi4py or mpiexec (``pip install 'pynn[distributed]'``)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_distributed_worker.py")


def _mpiexec():
    beside = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason="mpi4py and mpiexec are missing: pip install 'pynn[distributed]'")


def _run(mode, tmp_path, ranks=2, workdir=None, tag=""):
    out = str(tmp_path / (mode + tag))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYNN_NUM_THREADS="1")
    cmd = [sys.executable, WORKER, mode, out] + ([str(workdir)] if workdir else [])
    if ranks:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, check=False, env=env, cwd=str(tmp_path),
                          capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.load(open(f"{out}.{r}")) for r in range(max(ranks, 1))]


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.array(u) - np.array(v))))
               for u, v in zip(a["weights"], b["weights"]))


def test_import_pynn_does_not_import_mpi4py():
    code = ("import sys, pynn, pynn.models, pynn.callbacks; "
            "assert 'mpi4py' not in sys.modules and 'pynn.distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_single_process_answers_as_rank_zero_of_one():
    import pynn.distributed as dist
    assert (dist.local_rank(), dist.current()) == (0, None)
    if importlib.util.find_spec("mpi4py") is None:
        assert (dist.rank(), dist.size(), dist.is_primary()) == (0, 1, True)


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_equal_one_process_and_only_rank0_writes(tmp_path, n):
    # 23 samples, global batch 5: with 2 ranks every batch splits 2/3, with 3 ranks 1/2/2,
    # and the last batch holds 3 samples (1/1/1 or 1/2); each rank starts from different
    # weights, so equality also proves the broadcast.
    ranks = _run("plain", tmp_path, ranks=n, workdir=tmp_path)
    single = _run("single", tmp_path, ranks=0)[0]
    assert ranks[0]["size"] == n
    for other in ranks[1:]:
        assert _max_diff(ranks[0], other) == 0.0
    assert _max_diff(ranks[0], single) < 1e-5
    assert all(r["history"] == ranks[0]["history"] for r in ranks)
    np.testing.assert_allclose(ranks[0]["history"]["loss"], single["history"]["loss"],
                               rtol=1e-5)
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt"))
    assert written == [f"ckpt0-{e}.weights.h5" for e in (1, 2, 3)]


@needs_mpi
def test_deterministic_mode_is_bit_identical_across_runs(tmp_path):
    first = _run("deterministic", tmp_path)
    second = _run("deterministic", tmp_path)
    assert first[0]["weights"] == second[0]["weights"] == first[1]["weights"]


@needs_mpi
def test_horovod_style_api(tmp_path):
    ranks = _run("horovod", tmp_path)
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert ranks[0]["history"] == ranks[1]["history"]


@needs_mpi
def test_fp16_compression_stays_close(tmp_path):
    ranks = _run("fp16", tmp_path)
    single = _run("single", tmp_path, ranks=0)[0]
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert _max_diff(ranks[0], single) < 1e-2


@needs_mpi
def test_a_rank_that_raises_stops_the_job(tmp_path):
    # Rank 0 would wait forever in the first collective; MPI_Abort ends it instead.
    env = dict(os.environ, PYTHONPATH=ROOT, PYNN_NUM_THREADS="1")
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, WORKER, "raise",
                           str(tmp_path / "raise")], check=False, env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr + proc.stdout


@needs_mpi
def test_every_optimizer_equals_one_process(tmp_path):
    ranks = _run("optimizers", tmp_path)
    single = _run("optimizers_single", tmp_path, ranks=0)[0]
    assert sorted(ranks[0]["weights"]) == sorted(single["weights"])
    for name, weights in single["weights"].items():
        assert ranks[0]["weights"][name] == ranks[1]["weights"][name], name
        diff = max(float(np.max(np.abs(np.array(a) - np.array(b))))
                   for a, b in zip(ranks[0]["weights"][name], weights))
        assert diff < 1e-5, (name, diff)


@needs_mpi
def test_a_killed_rank_ends_the_job_in_bounded_time(tmp_path):
    # Rank 1 dies by SIGKILL mid-epoch (no Python hook runs); rank 0 is then blocked in an
    # allreduce. The launcher must end the job with an error, not leave it hanging.
    import time
    env = dict(os.environ, PYTHONPATH=ROOT, PYNN_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, WORKER, "kill",
                           str(tmp_path / "kill")], check=False, env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert not (tmp_path / "kill.0").exists()


@needs_mpi
@pytest.mark.parametrize("resume_ranks", [1, 3])
def test_backup_from_two_ranks_resumes_on_another_count(tmp_path, resume_ranks):
    whole = _run("resume_whole", tmp_path, ranks=0, workdir=tmp_path)[0]
    _run("resume_first", tmp_path, ranks=2, workdir=tmp_path)
    assert (tmp_path / "backup").is_dir()
    resumed = _run("resume_resume", tmp_path, ranks=resume_ranks, workdir=tmp_path)
    assert resumed[0]["history"]["loss"] and len(resumed[0]["history"]["loss"]) == 2
    for other in resumed[1:]:
        assert _max_diff(resumed[0], other) == 0.0
    assert _max_diff(resumed[0], whole) < 1e-5
    np.testing.assert_allclose(resumed[0]["history"]["loss"], whole["history"]["loss"][2:],
                               rtol=1e-5)


@needs_mpi
@pytest.mark.parametrize("mode", ["buckets", "nooverlap"])
def test_small_buckets_and_no_overlap_give_the_same_training(tmp_path, mode):
    ranks = _run(mode, tmp_path)
    single = _run("single", tmp_path, ranks=0)[0]
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert _max_diff(ranks[0], single) < 1e-5


def test_executor_reports_each_layer_once_when_its_grads_are_complete():
    """The hook data-parallel training overlaps with: called per trainable layer, last
    layers first, a shared layer once, after its calls' grads are summed."""
    import pynn
    from pynn import layers as L

    inp = L.Input((4,))
    shared = L.Dense(4, name="shared")
    h = shared(L.Dense(4, name="first")(inp))
    h = shared(h)  # called twice: complete only after both calls back-propagate
    out = L.Dense(2, name="last")(L.Activation("relu", name="act")(h))
    model = pynn.Model(inp, out)
    model.compile("sgd", "mse")
    model._prepare_train()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    outs, saved = model._plan.forward([x], True)
    seen = []

    def hook(layer):
        seen.append((layer.name, all(v.grad is not None for v in layer.trainable_weights)))
    model._plan.backward([np.ones_like(outs[0])], saved, hook)
    assert seen == [("last", True), ("shared", True), ("first", True)]


@needs_mpi
@pytest.mark.opencl
@pytest.mark.parametrize("mode", ["opencl", "opencl_syncbn"])
def test_opencl_ranks_each_take_a_device_and_match_one_cpu_process(tmp_path, mode):
    pytest.importorskip("pyopencl")
    import pynn
    if not pynn.devices():
        pytest.skip("no OpenCL device")
    ranks = _run(mode, tmp_path)
    single = _run("single_bn" if "syncbn" in mode else "single", tmp_path, ranks=0)[0]
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert _max_diff(ranks[0], single) < 1e-4


@pytest.mark.opencl
def test_each_local_rank_takes_the_next_device_of_the_platform(monkeypatch):
    pytest.importorskip("pyopencl")
    import pynn.distributed as dist
    from pynn import backend
    from pynn.backend.opencl import runtime

    listed = [{"index": i} for i in ("opencl:0:0", "opencl:1:0", "opencl:1:1", "opencl:1:2")]
    monkeypatch.setattr(runtime, "devices", lambda: listed)
    monkeypatch.setattr(runtime, "device_info", lambda: {"index": "opencl:1:0"})
    monkeypatch.setattr(backend, "device", lambda: "opencl:1:0")
    chosen = []
    monkeypatch.setattr(backend, "set_device", chosen.append)
    for local in range(4):
        monkeypatch.setenv("MPI_LOCALRANKID", str(local))
        dist._select_rank_device("auto")
    assert chosen == ["opencl:1:0", "opencl:1:1", "opencl:1:2", "opencl:1:0"]
    dist._select_rank_device("opencl:0:0")
    dist._select_rank_device(None)
    assert chosen[-1] == "opencl:0:0" and len(chosen) == 5
    monkeypatch.setattr(backend, "device", lambda: "cpu")
    dist._select_rank_device("auto")  # the CPU backend: nothing to choose
    assert len(chosen) == 5


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_synchronized_batch_normalization_equals_one_process(tmp_path, n):
    # 23 samples in global batches of 5 split over n ranks (one rank may hold one sample):
    # synchronized statistics and their gradients make the ranks train as one process with
    # plain BatchNormalization does; the moving statistics are compared too.
    ranks = _run("syncbn", tmp_path, ranks=n)
    single = _run("single_bn", tmp_path, ranks=0)[0]
    for other in ranks[1:]:
        assert _max_diff(ranks[0], other) == 0.0
    assert len(single["weights"]) == 8
    assert _max_diff(ranks[0], single) < 2e-5
    np.testing.assert_allclose(ranks[0]["history"]["loss"], single["history"]["loss"],
                               rtol=1e-5)
    if n == 2:  # the control: per-rank statistics train differently
        local = _run("localbn", tmp_path, ranks=n)
        assert _max_diff(local[0], single) > 1e-3


def test_synchronized_batch_normalization_alone_is_batch_normalization():
    from pynn import layers as L

    x = np.random.default_rng(3).standard_normal((6, 3, 5)).astype(np.float32)
    outs = []
    for synchronized in (False, True):
        layer = L.BatchNormalization(synchronized=synchronized)
        layer.build(x.shape)
        y = layer(x, training=True)
        layer.needs_input_grad = True
        dx = layer.backward(np.cos(x))
        outs.append((y, dx, layer.moving_variance.value.copy()))
        assert layer.get_config()["synchronized"] is synchronized
        clone = L.BatchNormalization.from_config(layer.get_config())
        assert clone.synchronized is synchronized
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="synchronized must be a bool"):
        L.BatchNormalization(synchronized="yes")


def test_ring_cost_model_recovers_its_parameters_and_projects_monotonically():
    from bench.bench_distributed import fit_ring_model, project

    alpha, beta = 20e-6, 0.5e-9
    samples = [(p, b, 2 * (p - 1) * alpha + 2 * (p - 1) / p * b * beta)
               for p in (2, 3, 4) for b in (1024, 1 << 16, 1 << 22)]
    got_alpha, got_beta = fit_ring_model(samples)
    assert abs(got_alpha - alpha) < 1e-9 and abs(got_beta - beta) < 1e-14
    rows = project({"m": {"params": 1_000_000, "compute_s": 0.01}}, alpha, overlap=0.5)
    for link in (25, 100):
        eff = [r["efficiency"] for r in rows if r["link_gbit"] == link]
        assert all(0 < e <= 1 for e in eff)
        assert eff == sorted(eff, reverse=True)  # more ranks never scale better
    fast = {r["ranks"]: r["efficiency"] for r in rows if r["link_gbit"] == 100}
    slow = {r["ranks"]: r["efficiency"] for r in rows if r["link_gbit"] == 25}
    assert all(fast[p] >= slow[p] for p in fast) and slow[256] < 1


@needs_mpi
def test_ranks_with_different_data_stop_at_the_start_with_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, PYNN_NUM_THREADS="1")
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, WORKER, "mismatch",
                           str(tmp_path / "mismatch")], check=False, env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 trains on 17 samples, 4 steps per epoch, rank 0 on 23 samples, 5 steps" \
        in proc.stderr + proc.stdout


@needs_mpi
def test_each_rank_reads_only_its_own_batches_of_a_dataset(tmp_path):
    ranks = _run("dataset", tmp_path)
    single = _run("dataset_single", tmp_path, ranks=0)[0]
    assert ranks[0]["read"] == [0, 2, 4] and ranks[1]["read"] == [1, 3, 5]
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert _max_diff(ranks[0], single) < 1e-5
    np.testing.assert_allclose(ranks[0]["history"]["loss"], single["history"]["loss"],
                               rtol=1e-5)
