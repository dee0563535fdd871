"""int8 inference (issue 18): pynn's int8 models against float32 pynn and onnxruntime's
``quantize_static`` int8 model of the same network, batch 1 and 64.

    python bench/bench_quant.py [--threads 2] [--reps 30] [--json bench/results/quant-X.json]

Each network is checked first (int8 predictions within a few percent of the float model's,
top-1 agreement), then timed: the candidates are called in turn inside one loop (alternated,
so a noisy shared machine slows them alike) and each one's median is reported. Networks: an
MLP (784-512-512-10), a small CNN on 32x32x3 images, and the digits demo CNN (8x8x1).
pynn int8: static (calibrated min-max, uint8 between layers) and dynamic
(``model.quantize("int8")``, activations quantized per batch). onnxruntime: the float model
exported by pynn.onnx, quantized by ``quantize_static`` (QDQ, per-channel int8 weights,
uint8 activations, min-max calibration on the same samples).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pynn
from pynn import layers
from pynn.compression.quantization import quantize


def networks():
    yield "mlp_784_512_512_10", (784,), pynn.Sequential([
        layers.Input((784,)), layers.Dense(512, activation="relu"),
        layers.Dense(512, activation="relu"), layers.Dense(10)])
    yield "cnn_32x32x3", (32, 32, 3), pynn.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10)])
    from pynn.demo import build_model
    yield "digits_demo_cnn_8x8", (8, 8, 1), build_model(output_activation=None)


def onnx_int8(model, calib, workdir, name, threads):
    """onnxruntime session of quantize_static's int8 model, or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        return None
    import pynn.onnx

    f32 = os.path.join(workdir, f"{name}.onnx")
    q8 = os.path.join(workdir, f"{name}.int8.onnx")
    pynn.onnx.export(model, f32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Threads that spin after a run would steal the 2 cores from the next candidate's call
    # in the alternated loop; pynn's OpenMP threads sleep (OMP_WAIT_POLICY=passive).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    input_name = ort.InferenceSession(f32, opts).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calib[i:i + 16]}
                                 for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(f32, q8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sess = ort.InferenceSession(q8, opts)
    return lambda x: sess.run(None, {input_name: x})[0]


def alternated(candidates, x, reps):
    """Median seconds per call of each candidate, called in turn ``reps`` times."""
    times = {name: [] for name in candidates}
    for fn in candidates.values():  # warm up (packing, kernel caches)
        fn(x)
    for _ in range(reps):
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_quant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    pynn.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from pynn._native import quant as native_quant

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, shape, model in networks():
            calib = rng.standard_normal((256,) + shape).astype(np.float32)
            static = quantize(model, calib, "minmax")
            dynamic = pynn.Sequential.from_config(model.get_config())
            dynamic.set_weights(model.get_weights())
            dynamic.quantize("int8")
            ort_int8 = onnx_int8(model, calib, workdir, name, args.threads)
            want = model.predict(calib, verbose=0)
            check = {}
            for label, m in (("static", static), ("dynamic", dynamic)):
                got = m.predict(calib, verbose=0)
                check[label] = {
                    "max_abs_err_rel": float(np.abs(got - want).max() / np.abs(want).max()),
                    "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1)))}
                assert check[label]["top1_agreement"] > 0.8, (name, label, check)
            for batch in (1, 64):
                x = calib[:batch]
                cands = {
                    "pynn_float32": lambda x, m=model: m.predict_on_batch(x),
                    "pynn_int8_static": lambda x, m=static: m.predict_on_batch(x),
                    "pynn_int8_dynamic": lambda x, m=dynamic: m.predict_on_batch(x),
                }
                if ort_int8 is not None:
                    cands["onnxruntime_int8"] = ort_int8
                t = alternated(cands, x, args.reps)
                row = {"network": name, "batch": batch,
                       "ms": {k: round(v * 1e3, 4) for k, v in t.items()},
                       "speedup_int8_static_vs_float32":
                           round(t["pynn_float32"] / t["pynn_int8_static"], 3),
                       "speedup_int8_dynamic_vs_float32":
                           round(t["pynn_float32"] / t["pynn_int8_dynamic"], 3)}
                if ort_int8 is not None:
                    row["pynn_int8_static_vs_onnxruntime_int8"] = round(
                        t["onnxruntime_int8"] / t["pynn_int8_static"], 3)
                row["check"] = check
                rows.append(row)
                print(json.dumps(row))
    result = {"benchmark": "bench_quant", "threads": args.threads, "reps": args.reps,
              "int8_gemm_isa": native_quant.ISA, "cpu": platform.processor() or
              platform.machine(), "note": "medians of alternated calls; speedups are "
              "ratios of medians (> 1: pynn int8 faster)", "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
