"""End to end: the digits demo trains, reaches >= 97% held-out accuracy within the time budget,
saves and reloads; the command-line entry points run."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest

import pynn
from pynn import demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "digits.pynn"
    start = time.perf_counter()
    assert demo.main(["--out", str(out)]) == 0
    seconds = time.perf_counter() - start
    text = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", text).group(1))
    assert accuracy >= 0.97, text[-2000:]
    assert "reloaded model predicts identically: True" in text
    assert seconds < 60, f"the demo took {seconds:.1f}s"
    (_, _), (x_test, y_test) = demo.load_digits_split(seed=0)
    model = pynn.load_model(out)
    predicted = model.predict(x_test).argmax(axis=1)
    assert np.mean(predicted == y_test) == pytest.approx(accuracy, abs=1e-4)


def test_digits_split_is_disjoint_and_stable():
    (x_train, y_train), (x_test, y_test) = demo.load_digits_split(seed=0)
    assert x_train.shape[1:] == (8, 8, 1) and len(x_train) + len(x_test) == 1797
    assert len(x_test) == 359 and x_train.dtype == np.float32 and 0 <= x_train.min()
    assert x_train.max() <= 1 and set(np.unique(y_test)) == set(range(10))
    again = demo.load_digits_split(seed=0)
    np.testing.assert_array_equal(again[1][0], x_test)


def test_info_command():
    result = subprocess.run([sys.executable, "-m", "pynn", "info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pynn {pynn.__version__}")
    for key in ("openmp:", "threads:", "device: cpu", "blas:", "kernels:", "dense:",
                "host memory pool:"):
        assert key in result.stdout, result.stdout
