"""Data-parallel training on this machine, beside PyTorch DDP, and a cost model for larger runs.

    python -m bench.bench_distributed [--rounds 3] [--steps 30] [--json PATH] [--plot PATH]

Runs, alternated over rounds (medians reported), the small CNN (conv32-pool-conv64-pool-
dense128-dense10 on 32x32x3, global batch 64, Adam):
  - pynn, 1 process x 2 threads, and 2 ranks x 1 thread under ``mpiexec`` (DataParallel);
  - PyTorch, 1 process x 2 threads, and DDP (gloo) with 2 ranks x 1 thread, same launcher.
It also times MPI allreduce over message sizes on 2, 3 and 4 ranks, fits the ring model
``t = 2 (p-1) alpha + 2 (p-1)/p * bytes * beta`` to them, and projects the scaling efficiency of
the small CNN, a ResNet-50-sized model and an LSTM model to 8-256 ranks on 25 and 100 Gb/s
links. Results: one JSON (``bench/results/distributed-<cpu>.json`` by default) and a PNG of the
projection (matplotlib, a bench extra).

On a 2-core machine 2 ranks x 1 thread compete with 1 process x 2 threads for the same cores:
the ratio says what data parallelism costs (allreduce, framework overhead), not what it gains.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 64
# Ring-allreduce projection inputs that are not measured here.
LINKS_GBIT = (25, 100)
NETWORK_LATENCY_S = 5e-6  # per message hop on a datacenter link, added to the measured alpha
PROJECT_RANKS = (2, 4, 8, 16, 32, 64, 128, 256)


def _mpiexec():
    beside = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


# -- workers (run under mpiexec or alone) ----------------------------------------------------
def worker_pynn(steps):
    import pynn
    import pynn.distributed as dist
    from bench.bench_cpu import pynn_model

    x, y = _data(GLOBAL_BATCH * steps)
    strategy = dist.DataParallel()
    with strategy.scope():
        pynn.utils.set_random_seed(0)
        model = pynn_model("cnn")
    model.fit(x[:GLOBAL_BATCH * 3], y[:GLOBAL_BATCH * 3], batch_size=GLOBAL_BATCH, epochs=1,
              verbose=0)  # warm-up: buffers, the first packing
    reducer = strategy._reducer
    reducer.seconds = reducer.exposed_seconds = reducer.wait_seconds = 0.0
    start = time.perf_counter()
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    return {"images_per_s": len(x) / seconds, "step_ms": 1e3 * seconds / steps,
            "allreduce_ms_per_step": 1e3 * strategy.allreduce_seconds / steps,
            "exposed_allreduce_ms_per_step": 1e3 * strategy.exposed_allreduce_seconds / steps,
            "allreduce_wait_ms_per_step": 1e3 * strategy.allreduce_wait_seconds / steps,
            "rank": dist.rank(), "ranks": dist.size(),
            "threads_per_rank": pynn.get_num_threads()}


def worker_torch(steps):
    import torch
    from torch import nn

    from bench.bench_cpu import torch_model

    ranks = int(os.environ.get("PMI_SIZE", "1"))
    rank = int(os.environ.get("PMI_RANK", "0"))
    torch.set_num_threads(int(os.environ["PYNN_NUM_THREADS"]))
    torch.manual_seed(0)
    net, opt, loss_fn = torch_model("cnn")
    if ranks > 1:
        import torch.distributed as tdist
        tdist.init_process_group("gloo",
                                 init_method=f"tcp://127.0.0.1:{os.environ['BENCH_PORT']}",
                                 rank=rank, world_size=ranks)
        net = nn.parallel.DistributedDataParallel(net)
    x, y = _data(GLOBAL_BATCH * steps)
    lo, hi = GLOBAL_BATCH * rank // ranks, GLOBAL_BATCH * (rank + 1) // ranks
    xs = [torch.from_numpy(np.ascontiguousarray(x[i:i + GLOBAL_BATCH][lo:hi]
                                                .transpose(0, 3, 1, 2)))
          for i in range(0, len(x), GLOBAL_BATCH)]
    ys = [torch.from_numpy(y[i:i + GLOBAL_BATCH][lo:hi].astype(np.int64))
          for i in range(0, len(y), GLOBAL_BATCH)]

    def run(batches):
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()
    run(list(zip(xs[:3], ys[:3])))
    start = time.perf_counter()
    run(list(zip(xs, ys)))
    seconds = time.perf_counter() - start
    if ranks > 1:
        torch.distributed.destroy_process_group()
    return {"images_per_s": len(x) / seconds, "step_ms": 1e3 * seconds / steps,
            "rank": rank, "ranks": ranks}


def worker_allreduce(sizes, repeats=20):
    """Median seconds of one Allreduce of each size (float32 counts)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = {}
    for n in sizes:
        send = np.ones(n, np.float32)
        recv = np.empty_like(send)
        times = []
        for _ in range(repeats):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(send, recv, op=MPI.SUM)
            times.append(time.perf_counter() - start)
        out[str(n * 4)] = float(np.median(times))
    return {"rank": comm.Get_rank(), "ranks": comm.Get_size(), "seconds_by_bytes": out}


# -- driver ----------------------------------------------------------------------------------
def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(kind, ranks, threads, steps, store=None):
    env = dict(os.environ, PYNN_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if store:  # PyTorch DDP's rendezvous: a fresh TCP port per launch
        env["BENCH_PORT"] = str(_free_port())
    cmd = [sys.executable, "-m", "bench.bench_distributed", "--worker", kind,
           "--steps", str(steps)]
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    for attempt in (1, 2):
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=180)
            break
        except subprocess.TimeoutExpired:
            # gloo's rendezvous has hung once in a few dozen launches here: retry once
            print(f"{' '.join(cmd[-5:])}: timed out (attempt {attempt})", file=sys.stderr)
            if store:
                env["BENCH_PORT"] = str(_free_port())
            if attempt == 2:
                raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    records = [json.loads(line) for line in proc.stdout.splitlines()
               if line.startswith("{")]
    return next(r for r in records if r["rank"] == 0)


def fit_ring_model(samples):
    """Least squares alpha, beta of t = 2(p-1) alpha + 2(p-1)/p * bytes * beta over
    (ranks, bytes, seconds) samples."""
    a = np.array([[2.0 * (p - 1), 2.0 * (p - 1) / p * b] for p, b, _ in samples])
    t = np.array([s for _, _, s in samples])
    (alpha, beta), *_ = np.linalg.lstsq(a, t, rcond=None)
    if alpha < 0:  # latency below the noise: fit the bandwidth term alone
        alpha = 0.0
        beta = float(np.dot(a[:, 1], t) / np.dot(a[:, 1], a[:, 1]))
    return float(alpha), max(float(beta), 1e-15)


def project(models, alpha, overlap):
    """Weak scaling (per-rank batch fixed): efficiency = compute / (compute + exposed
    allreduce), the allreduce hidden behind the backward pass (2/3 of compute) at the
    measured overlap fraction."""
    rows = []
    for link in LINKS_GBIT:
        beta = 8.0 / (link * 1e9)
        for name, spec in models.items():
            nbytes = 4.0 * spec["params"]
            compute = spec["compute_s"]
            for p in PROJECT_RANKS:
                comm = 2 * (p - 1) * (alpha + NETWORK_LATENCY_S) + 2 * (p - 1) / p * nbytes * beta
                exposed = max(comm - overlap * (2.0 / 3.0) * compute, 0.0)
                rows.append({"model": name, "link_gbit": link, "ranks": p,
                             "allreduce_ms": 1e3 * comm, "exposed_ms": 1e3 * exposed,
                             "efficiency": compute / (compute + exposed),
                             "efficiency_without_overlap": compute / (compute + comm)})
    return rows


def _plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (bench extra): no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, link) in sorted({(r["model"], r["link_gbit"]) for r in rows}):
        pts = [r for r in rows if r["model"] == model and r["link_gbit"] == link]
        line, = ax.plot([r["ranks"] for r in pts], [100 * r["efficiency"] for r in pts],
                        marker="o", linestyle="-" if link == 100 else "--",
                        label=f"{model}, {link} Gb/s")
        ax.plot([r["ranks"] for r in pts],
                [100 * r["efficiency_without_overlap"] for r in pts], marker=".",
                linestyle=":", color=line.get_color(), alpha=0.6)
    ax.set_title("projected weak scaling (dotted: without overlap)", fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks")
    ax.set_ylabel("scaling efficiency, % (projected)")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def _cnn_flop_per_image():
    # forward multiply-adds x 2, training = 3x forward
    conv1 = 32 * 32 * 32 * 3 * 9
    conv2 = 16 * 16 * 64 * 32 * 9
    dense = 4096 * 128 + 128 * 10
    return 3 * 2 * (conv1 + conv2 + dense)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=["pynn", "torch", "allreduce"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    if args.worker:
        work = {"pynn": lambda: worker_pynn(args.steps),
                "torch": lambda: worker_torch(args.steps),
                "allreduce": lambda: worker_allreduce([256, 4096, 65536, 1 << 20, 4 << 20])}
        record = work[args.worker]()
        if record["rank"] == 0:  # one writer: two ranks' lines could interleave
            print(json.dumps(record), flush=True)
        return
    if _mpiexec() is None:
        sys.exit("mpiexec is missing: pip install 'pynn[distributed]'")
    from bench.bench_cpu import _cpu_slug, machine_info

    runs = {"pynn 1x2": [], "pynn 2x1": [], "torch 1x2": [], "torch DDP 2x1": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            runs["pynn 1x2"].append(_launch("pynn", 1, 2, args.steps))
            runs["pynn 2x1"].append(_launch("pynn", 2, 1, args.steps))
            runs["torch 1x2"].append(_launch("torch", 1, 2, args.steps))
            store = os.path.join(tmp, f"store{r}")
            runs["torch DDP 2x1"].append(_launch("torch", 2, 1, args.steps, store))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['images_per_s']:.0f} img/s"
                                                  for k, v in runs.items()))
        samples = []
        for p in (2, 3, 4):  # 4 ranks oversubscribe 2 cores: allreduce timing only
            rec = _launch("allreduce", p, 1, args.steps)
            samples += [(p, int(b), s) for b, s in rec["seconds_by_bytes"].items()]
    med = {k: statistics.median(r["images_per_s"] for r in v) for k, v in runs.items()}
    pynn2 = runs["pynn 2x1"]
    allreduce_ms = statistics.median(r["allreduce_ms_per_step"] for r in pynn2)
    exposed_ms = statistics.median(r["exposed_allreduce_ms_per_step"] for r in pynn2)
    wait_ms = statistics.median(r["allreduce_wait_ms_per_step"] for r in pynn2)
    # Reduction time the backward pass hid: what ran on the communication thread while the
    # training thread was not waiting for it.
    overlap = max(0.0, 1.0 - wait_ms / allreduce_ms) if allreduce_ms > 0 else 0.0
    alpha, beta = fit_ring_model(samples)
    one_thread_step = statistics.median(r["step_ms"] for r in pynn2) / 1e3 - exposed_ms / 1e3
    cnn_rate = _cnn_flop_per_image() * GLOBAL_BATCH / 2 / one_thread_step  # FLOP/s per rank
    models = {
        # per rank: the small CNN at 32 images, as measured on this machine
        "small CNN": {"params": 545098, "compute_s": one_thread_step},
        # ResNet-50: 25.6 M parameters, 3 x 4.1 GFLOP per 224x224 image, 32 images per rank,
        # at the small CNN's measured FLOP rate per rank
        "ResNet-50-sized": {"params": 25_557_032, "compute_s": 32 * 3 * 4.1e9 / cnn_rate},
        # LSTM(256) over 100 steps of 32 features, Dense(10), batch 64 per rank:
        # 4 gates x (32 + 256 + 1) x 256 weights; FLOP = 3 x 2 x weights x steps x batch
        "LSTM(256)": {"params": 4 * 289 * 256 + 2570,
                      "compute_s": 3 * 2 * 4 * 289 * 256 * 100 * 64 / cnn_rate},
    }
    rows = project(models, alpha, overlap)
    result = {
        "machine": machine_info(2),
        "global_batch": GLOBAL_BATCH, "steps": args.steps, "rounds": args.rounds,
        "images_per_s_median": med,
        "ratios": {"pynn 2x1 / pynn 1x2": med["pynn 2x1"] / med["pynn 1x2"],
                   "pynn 2x1 / torch DDP 2x1": med["pynn 2x1"] / med["torch DDP 2x1"],
                   "pynn 1x2 / torch 1x2": med["pynn 1x2"] / med["torch 1x2"]},
        "pynn_allreduce_ms_per_step": allreduce_ms,
        "pynn_exposed_allreduce_ms_per_step": exposed_ms,
        "pynn_allreduce_wait_ms_per_step": wait_ms,
        "overlap_fraction": overlap,
        "runs": runs,
        "allreduce_samples": [{"ranks": p, "bytes": b, "seconds": s} for p, b, s in samples],
        "ring_model": {"alpha_s": alpha, "beta_s_per_byte": beta,
                       "network_latency_added_s": NETWORK_LATENCY_S,
                       "links_gbit": list(LINKS_GBIT)},
        "projected_models": models,
        "projection": rows,
    }
    slug = _cpu_slug(result["machine"].get("cpu_model", "cpu"), result["machine"].get("core"))
    path = args.json or os.path.join(ROOT, "bench", "results", f"distributed-{slug}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("\n| run | images/s (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.0f} |")
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}x")
    print(f"allreduce {allreduce_ms:.2f} ms/step, of which waited for {wait_ms:.2f} ms "
          f"(overlap {100 * overlap:.0f}%); the training thread's time in reduction "
          f"{exposed_ms:.2f} ms/step; ring model alpha {alpha * 1e6:.1f} us, "
          f"beta {beta * 1e9:.3f} ns/B")
    for name in models:
        for link in LINKS_GBIT:
            eff = {r["ranks"]: r["efficiency"] for r in rows
                   if r["model"] == name and r["link_gbit"] == link}
            raw = {r["ranks"]: r["efficiency_without_overlap"] for r in rows
                   if r["model"] == name and r["link_gbit"] == link}
            print(f"{name} @ {link} Gb/s: " + ", ".join(
                f"{p}: {100 * e:.0f}% ({100 * raw[p]:.0f}% without overlap)"
                for p, e in eff.items()))
    _plot(rows, args.plot or path.replace(".json", ".png"))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
