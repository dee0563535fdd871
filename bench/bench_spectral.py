"""Time pynn's stft op and MelSpectrogram's front end on the CPU beside torch.stft (the call
Keras 3's MelSpectrogram makes on its torch backend) and the GEMM road (a conv of the frames
against the DFT's (N, F) kernels, what STFTSpectrogram does and MelSpectrogram did before
the stft op).

Each pynn result is first checked against its float64 oracle (tests/reference/spectral_ref.py)
on the first signal, then timed: the median of --repeat calls after one warm-up.

    .venv/bin/python bench/bench_spectral.py [--threads 1] [--repeat 9]
        [--signals 32] [--length 16000] [--fft 2048] [--stride 512] [--json PATH]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynn._native import conv, info, spectral  # noqa: E402
from tests.reference import spectral_ref  # noqa: E402


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check(name, got, want, rtol):
    for g, w in zip(got, want):
        err = float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max()))
        if err > rtol:
            raise SystemExit(f"{name}: relative error {err:.2e} > {rtol}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--signals", type=int, default=32)
    parser.add_argument("--length", type=int, default=16000)
    parser.add_argument("--fft", type=int, default=2048)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--json")
    args = parser.parse_args()
    info.set_num_threads(args.threads)
    n, stride = args.fft, args.stride
    x = np.random.default_rng(0).standard_normal((args.signals, args.length)).astype(np.float32)
    padded = spectral.reflect_pad1d_forward(x, n // 2)
    window = np.hanning(n).astype(np.float32)
    real, imag = spectral.stft_forward(padded, window, stride)
    check("stft_forward", (real[:1], imag[:1]),
          spectral_ref.stft_forward_ref(padded[:1], window, stride), 1e-5)
    dre, dim = np.ones_like(real), np.ones_like(imag)
    length = padded.shape[1]
    check("stft_backward", (spectral.stft_backward(dre[:1], dim[:1], window, stride, length),),
          (spectral_ref.stft_backward_ref(dre[:1], dim[:1], window, stride, length),), 1e-5)
    angle = 2 * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n
    kernel = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)],
                            axis=1).astype(np.float32)[None, :, None, :]
    image = padded[:, None, :, None]
    rows = [("stft_forward (FFT)", lambda: spectral.stft_forward(padded, window, stride)),
            ("stft_backward (inverse FFT)",
             lambda: spectral.stft_backward(dre, dim, window, stride, length)),
            ("conv2d_forward (the DFT as a GEMM)",
             lambda: conv.conv2d_forward(image, kernel, None, (1, stride), "valid", (1, 1),
                                         "linear", 0.0))]
    try:
        import torch

        torch.set_num_threads(args.threads)
        xt, wt = torch.tensor(x), torch.tensor(window)
        rows.append(("torch.stft (center=True)",
                     lambda: torch.stft(xt, n, stride, window=wt, center=True,
                                        return_complex=True)))
    except ImportError:
        pass
    results = []
    for name, fn in rows:
        ms = median_ms(fn, args.repeat)
        results.append({"op": name, "ms": round(ms, 3)})
        print(f"{name:40s} {ms:9.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
