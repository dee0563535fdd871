"""PNG charts of a suite run (matplotlib, the ``bench`` extra): % of peak per kernel, and
pynn's speed relative to each reference per model. Ratios are drawn on a log axis around 1
so a 2x loss is as long as a 2x win, and losses are red: a loss is shown as a loss."""

from pathlib import Path

WIN, LOSS, NEUTRAL = "#2a7d2e", "#c0392b", "#4a6fa5"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kernels_chart(res, path, plt):
    rows = [r for r in res.get("kernels", []) if r.get("pct_of_peak") is not None]
    if not rows:
        return None
    labels = [f"{r['name']} [{r['device']}]" for r in rows]
    values = [r["pct_of_peak"] for r in rows]
    colors = [NEUTRAL if r["bound"] == "compute" else "#8e6c8a" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.2))
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(100, color="black", linewidth=0.8)
    ax.set_xlabel("% of peak (blue: GFLOP/s vs the GEMM peak; purple: GB/s vs copy bandwidth)")
    m = res["machine"]
    ax.set_title(f"pynn kernels, {m.get('cpu_model')}, {m['threads']} threads "
                 f"({res['size']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def models_chart(res, path, plt):
    bars = []
    for r in res.get("models", []):
        for fw, ratios in r.get("ratio", {}).items():
            for metric, value in ratios.items():
                bars.append((f"{r['model']} {metric} vs {fw} [{r['device']}]", value))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(bars) + 1.2))
    values = [v for _, v in bars]
    ax.barh(range(len(bars)), [v - 1 for v in values], left=1,
            color=[WIN if v >= 1 else LOSS for v in values])
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_yticks(range(len(bars)), [b for b, _ in bars], fontsize=7)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x" if v >= 1 else f"{v:.2f}x (loss) ", va="center",
                ha="left" if v >= 1 else "right", fontsize=6)
    lo, hi = min(values + [0.5]), max(values + [2.0])
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_xlabel("pynn speed / reference speed (log; right of 1: pynn faster, red: pynn "
                  "slower)")
    ax.set_title("pynn vs PyTorch / onnxruntime, same threads, alternated rounds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(res, json_path):
    """Writes <stem>-kernels.png and <stem>-models.png beside the JSON; returns their names
    (relative to the JSON's folder), or [] without matplotlib."""
    plt = _pyplot()
    if plt is None:
        print("charts: matplotlib is not installed (pip install pynn[bench]); skipped")
        return []
    json_path = Path(json_path)
    out = []
    for kind, draw in (("kernels", kernels_chart), ("models", models_chart)):
        path = json_path.with_name(f"{json_path.stem}-{kind}.png")
        if draw(res, path, plt):
            out.append(path.name)
    return out
