"""``python -m bench.readme RESULTS.json``: the README's performance section, generated from a
committed results file of the suite, with the command that reproduces it.

Prints Markdown on stdout: the machine, the models table (pynn beside PyTorch and
onnxruntime, losses shown as losses), the kernels' % of peak per family, and the command. The
numbers come from the file alone, so the section changes only when a new results file is
committed."""

import json
import statistics
import sys
from pathlib import Path

from bench.suite import _fmt, ratio_text


def kernel_summary(res):
    """Per (device, family): the kernels' median % of peak and the range."""
    groups = {}
    for r in res.get("kernels", []):
        if r.get("pct_of_peak") is not None:
            groups.setdefault((r["device"], r["family"], r["bound"]), []).append(r)
    lines = ["| device | family | kernels | % of peak, median (min-max) | vs |",
             "|---|---|---:|---:|---|"]
    for (device, family, bound), rows in groups.items():
        pct = [r["pct_of_peak"] for r in rows]
        lines.append(f"| {device} | {family} | {len(rows)} | {statistics.median(pct):.0f} "
                     f"({min(pct):.0f}-{max(pct):.0f}) | "
                     f"{'GEMM peak' if bound == 'compute' else 'copy bandwidth'} |")
    if any(r.get("pct_of_peak", 0) > 100 for r in res.get("kernels", [])):
        lines.append("\nAbove 100%: the peak runs caught a busier moment than the kernel's "
                     "runs (each peak is the best of its runs at the start and the end); on a "
                     "shared machine the peaks themselves are noisy.")
    failed = [r["name"] for r in res.get("kernels", []) if not r["check"]["passed"]]
    if failed:
        lines.append(f"\nFailed their check (not timed): {', '.join(failed)}.")
    return lines


def models_table(res):
    header = ("| model | device | batch | pynn /s | training vs PyTorch | predict batch-1 vs "
              "PyTorch / onnxruntime | predict batch-64 vs PyTorch / onnxruntime | peak MiB "
              "pynn / PyTorch |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res.get("models", []):
        if not r["check"]["passed"]:
            lines.append(f"| {r['model']} | {r['device']} | - | check failed | | | | |")
            continue
        ratio = r.get("ratio", {})
        torch_ref = "torch_cuda" if "torch_cuda" in ratio else "torch"

        def get(fw, metric, ratio=ratio):
            return ratio_text(ratio.get(fw, {}).get(metric))

        mem = r.get("memory", {})
        lines.append(
            f"| {r['model']} | {r['device']} | {r['batch']} | "
            f"{_fmt(r['pynn'].get('images_per_s'), '.0f')} | {get(torch_ref, 'training')} | "
            f"{get(torch_ref, 'predict_batch1')} / {get('onnxruntime', 'predict_batch1')} | "
            f"{get(torch_ref, 'predict_batch64')} / {get('onnxruntime', 'predict_batch64')} | "
            f"{_fmt(mem.get('pynn', {}).get('training_peak_mib'), '.0f')} / "
            f"{_fmt(mem.get(torch_ref, {}).get('training_peak_mib'), '.0f')} |")
    return lines


def section(res, path):
    m = res["machine"]
    devices = ", ".join(d.get("name", d["index"]) for d in m.get("opencl_devices", []))
    intro = (f"Measured by pynn's benchmark suite on {m.get('cpu_model')} "
             f"({m.get('physical_cores')} cores, {m['threads']} threads"
             f"{'; OpenCL: ' + devices if devices else ''}), {res['date_utc'][:10]}, "
             f"{res['size']} sizes. Every number was checked "
             f"against a float64 reference before it was timed. Ratios are pynn's speed over the "
             f"reference's at the same thread count, rounds alternated in one run: above 1 pynn "
             f"is faster, below 1 it is a loss and says so.")
    out = ["## Performance", "", intro, ""]
    out += models_table(res)
    out += ["", (f"Kernels against the machine's peaks (NumPy sgemm "
                 f"{m['sgemm_peak_gflops']:.0f} GFLOP/s, copy {m['copy_bandwidth_gbs']:.1f} "
                 f"GB/s):"), ""]
    out += kernel_summary(res)
    if res.get("busy_warning"):
        out += ["", ("The machine was shared while this ran: single timings are noisy, the "
                     "alternated ratios are the numbers to trust.")]
    out += ["", "Reproduce (from a checkout, after `make build`):", "", "```",
            res["command"], "```", "",
            (f"Results: `{path}`; every kernel and model, the machine block and the charts "
             f"are there. `python -m bench.readme {path}` regenerates this section.")]
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.readme RESULTS.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    res = json.loads(path.read_text())
    print(section(res, argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
