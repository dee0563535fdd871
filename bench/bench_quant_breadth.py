"""int8 breadth (issue 18): what the new int8 paths cost and how close they stay.

    python -m bench.bench_quant_breadth [--rounds 30] [--json PATH]

- depthwise: the int8_depthwise_conv2d_forward op, and the whole QuantizedDepthwiseConv2D
  layer (static: quantize, op, dequantize), against the float DepthwiseConv2D layer
  (8 x 28 x 28 x C, 3x3 'same', relu);
- recurrent: quantize_dynamic's LSTM / GRU (int8 input projection, float recurrence) against
  the float layer: predict time at batch 64, T = 50, 64 features, 128 units, and the largest
  output difference;
- float16 storage: the .pynn file of a CNN saved with weights_dtype="float16" over the float
  file, and the int8 file over the float file.

pynn and its float reference alternate in each round (a shared machine's load hits both);
the table gives medians over rounds (ms).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _medians(fns, rounds):
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def depthwise(rounds):
    from pynn import backend, layers
    from pynn.layers.quantized import activation_params
    from pynn.layers.quantized_extra import QuantizedDepthwiseConv2D

    b = backend.current()
    rng = np.random.default_rng(0)
    rows = {}
    for c in (32, 128):
        x = rng.standard_normal((8, 28, 28, c)).astype(np.float32)
        dw = layers.DepthwiseConv2D(3, padding="same", activation="relu")
        y = np.asarray(dw(x))
        q = QuantizedDepthwiseConv2D.from_depthwise(dw, activation_params(x),
                                                    activation_params(y))
        xq = b.quantize_forward(x, q.input_scale, q.input_zero_point)
        _, _, (bias_q, mult) = q._depthwise_operands()

        def op(xq=xq, q=q, bias_q=bias_q, mult=mult):
            return b.int8_depthwise_conv2d_forward(
                xq, q.kernel.value, bias_q, q.input_zero_point, mult, q.output_zero_point,
                True, (1, 1), "same", (1, 1))

        t = _medians({"float layer": lambda dw=dw, x=x: dw(x), "int8 op": op,
                      "int8 layer (static)": lambda q=q, x=x: q(x)}, rounds)
        t["max |int8 - float| / max |float|"] = float(np.abs(np.asarray(q(x)) - y).max()
                                                   / np.abs(y).max())
        rows[f"depthwise C={c}"] = t
    return rows


def recurrent(rounds):
    import pynn
    from pynn import layers
    from pynn.compression.quantization import quantize_dynamic

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 50, 64)).astype(np.float32)
    rows = {}
    for cls in (layers.LSTM, layers.GRU):
        inp = layers.Input((50, 64))
        model = pynn.Model(inp, cls(128)(inp))
        q = quantize_dynamic(model)
        want = model.predict(x, verbose=0)
        t = _medians({"float": lambda m=model: m.predict(x, verbose=0),
                      "int8 dynamic": lambda m=q: m.predict(x, verbose=0)}, rounds)
        t["max |int8 - float|"] = float(np.abs(q.predict(x, verbose=0) - want).max())
        rows[f"{cls.__name__}(128) T=50 batch 64"] = t
    return rows


def storage():
    import pynn
    from pynn import layers
    from pynn.compression.quantization import float16_size, quantize

    rng = np.random.default_rng(0)
    model = pynn.Sequential([layers.Input((28, 28, 1)),
                             layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
                             layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
                             layers.Flatten(), layers.Dense(128, activation="relu"),
                             layers.Dense(10)])
    x = rng.standard_normal((64, 28, 28, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save(tmp / "f32.pynn")
        f32 = (tmp / "f32.pynn").stat().st_size
        f16 = float16_size(model, tmp / "f16.pynn")
        loaded = pynn.load_model(tmp / "f16.pynn")
        err = float(np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0)).max())
        quantize(model, x).save(tmp / "int8.pynn")
        i8 = (tmp / "int8.pynn").stat().st_size
    return {"demo CNN file": {"float32 bytes": f32, "float16 bytes": f16,
                              "float16 / float32": f16 / f32, "int8 / float32": i8 / f32,
                              "max |float16 model - float32 model|": err}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {**depthwise(args.rounds), **recurrent(max(args.rounds // 3, 3)), **storage()}
    for name, row in results.items():
        print(name)
        for k, v in row.items():
            print(f"  {k:40s} {v:.4g}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
