"""The benchmarks live in bench/, outside the runtime package: ``python -m bench`` runs them
from a checkout, ``python -m pynn.bench`` is a thin entry point to the same suite, and the
installed package ships no benchmark code."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=120)


def test_both_entry_points_run_the_suite_from_a_checkout():
    for args in (["-m", "bench", "--help"], ["-m", "pynn.bench", "--help"]):
        out = _run(args, ROOT)
        assert out.returncode == 0, out.stderr
        assert "python -m pynn.bench" in out.stdout
        for flag in ("--quick", "--only", "--threads", "--device", "--json", "--compare",
                     "--profile"):
            assert flag in out.stdout, flag


def test_bad_flags_are_clear_errors():
    out = _run(["-m", "pynn.bench", "--only", "(", "--size", "tiny"], ROOT)
    assert out.returncode == 2 and "--only" in out.stderr
    out = _run(["-m", "pynn.bench", "--device", "gpu", "--size", "tiny"], ROOT)
    assert out.returncode != 0 and "--device" in out.stderr


def test_pynn_bench_outside_a_checkout_says_how_to_get_one(tmp_path):
    """An installed pynn has no bench/ beside it: a clear message and a non-zero status."""
    (tmp_path / "pynn").mkdir()
    entry = shutil.copy(ROOT / "pynn" / "bench.py", tmp_path / "pynn" / "bench.py")
    out = _run([str(entry), "--quick"], tmp_path)
    assert out.returncode == 2
    assert "checkout" in out.stderr and "python -m bench" in out.stderr


def test_runtime_package_has_no_benchmark_code():
    tomllib = pytest.importorskip("tomllib")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not [p for p in setuptools_cfg["packages"] if p.split(".")[0] == "bench"]
    for path in (ROOT / "pynn").rglob("*.py"):
        if path != ROOT / "pynn" / "bench.py":
            assert not re.search(r"^\s*(from|import) bench\b", path.read_text(), re.MULTILINE), path
    assert len((ROOT / "pynn" / "bench.py").read_text().splitlines()) < 40
