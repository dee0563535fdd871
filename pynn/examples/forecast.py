"""Next-value forecasting with an LSTM: monthly airline passengers 1949-1960 (Box & Jenkins'
Series G, bundled below: 144 numbers), or statsmodels' yearly sunspots / weekly Mauna Loa
CO2 when statsmodels is installed (``--series sunspots|co2``).

Windows of the last ``--window`` values (``pynn.utils.timeseries_dataset_from_array``) predict
the next one. The series is modelled in log space relative to the window's last value, so the
network learns the seasonal shape and the growth, not the level: the trend needs no
extrapolation. The last ``--test`` values are forecast one step ahead from the true history
and compared with two baselines, "same as last step" and "same as one season ago". A PNG
shows the truth and the forecasts (drawn with NumPy and pynn.utils.write_png).

    python -m pynn.examples.forecast [--epochs 150] [--out forecast.png] [--series airpassengers]
"""

import argparse
import sys
import time

import numpy as np

import pynn
from pynn import layers

# Box, G. E. P., Jenkins, G. M. and Reinsel, G. C., Time Series Analysis, Forecasting and
# Control, Series G: international airline passengers, monthly totals (thousands), Jan 1949 -
# Dec 1960 (R's datasets::AirPassengers; mean 280.30, sd 119.97).
AIR_PASSENGERS = [
    112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118,
    115, 126, 141, 135, 125, 149, 170, 170, 158, 133, 114, 140,
    145, 150, 178, 163, 172, 178, 199, 199, 184, 162, 146, 166,
    171, 180, 193, 181, 183, 218, 230, 242, 209, 191, 172, 194,
    196, 196, 236, 235, 229, 243, 264, 272, 237, 211, 180, 201,
    204, 188, 235, 227, 234, 264, 302, 293, 259, 229, 203, 229,
    242, 233, 267, 269, 270, 315, 364, 347, 312, 274, 237, 278,
    284, 277, 317, 313, 318, 374, 413, 405, 355, 306, 271, 306,
    315, 301, 356, 348, 355, 422, 465, 467, 404, 347, 305, 336,
    340, 318, 362, 348, 363, 435, 491, 505, 404, 359, 310, 337,
    360, 342, 406, 396, 420, 472, 548, 559, 463, 407, 362, 405,
    417, 391, 419, 461, 472, 535, 622, 606, 508, 461, 390, 432,
]


def load_series(name):
    """-> (values (T,) float64 > 0, season length, label)."""
    if name == "airpassengers":
        return np.asarray(AIR_PASSENGERS, np.float64), 12, "airline passengers (thousands)"
    try:
        import statsmodels.api as sm
    except ImportError:
        raise SystemExit(f"--series {name} needs statsmodels (pip install statsmodels); the "
                         f"bundled series is --series airpassengers") from None
    if name == "sunspots":
        values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
        return values + 1.0, 11, "yearly sunspot activity (+1)"    # + 1: zeros, log below
    co2 = sm.datasets.co2.load_pandas().data["co2"].interpolate().to_numpy(np.float64)
    return co2, 52, "Mauna Loa CO2 (ppm, weekly)"


def windows(log_values, window):
    """Inputs (M, window, 1): each window relative to its last value; targets (M, 1): the
    next value relative to the same."""
    ds = pynn.utils.timeseries_dataset_from_array(
        log_values[:-1], log_values[window:], sequence_length=window, batch_size=None)
    x = np.stack([w for w, _ in ds])
    y = np.array([t for _, t in ds])
    last = x[:, -1:]
    return (x - last)[..., None].astype(np.float32), (y[:, None] - last).astype(np.float32)


def build_model(window, units=32):
    return pynn.Sequential([
        layers.Input((window, 1)),
        layers.LSTM(units),
        layers.Dense(1),
    ], name="lstm_forecaster")


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def plot(path, values, start, forecast, height=260, width=720, margin=12):
    """Truth (black) over the whole series and the forecasts (red) from ``start`` on, with a
    grey line where the forecasts begin; an RGB PNG."""
    image = np.full((height, width, 3), 255, np.uint8)
    lo, hi = min(values.min(), forecast.min()), max(values.max(), forecast.max())

    def xy(t, v):
        x = margin + t * (width - 2 * margin) / (len(values) - 1)
        y = height - margin - (v - lo) * (height - 2 * margin) / (hi - lo)
        return x, y

    def line(ts, vs, color):
        px, py = xy(np.asarray(ts, np.float64), np.asarray(vs, np.float64))
        # Dense points along each segment, two pixels thick.
        steps = np.linspace(0, 1, 64)[:, None]
        xs = (px[:-1] + steps * (px[1:] - px[:-1])).ravel()
        ys = (py[:-1] + steps * (py[1:] - py[:-1])).ravel()
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            cols = np.clip(np.rint(xs).astype(int) + dx, 0, width - 1)
            rows = np.clip(np.rint(ys).astype(int) + dy, 0, height - 1)
            image[rows, cols] = color

    split = round(float(xy(start, lo)[0]))
    image[margin:height - margin, split] = (170, 170, 170)
    line(np.arange(len(values)), values, (0, 0, 0))
    line(np.arange(start, start + len(forecast)), forecast, (220, 30, 30))
    pynn.utils.write_png(path, image)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.forecast")
    parser.add_argument("--series", default="airpassengers",
                        choices=("airpassengers", "sunspots", "co2"))
    parser.add_argument("--window", type=int, default=None, help="default: one season + 1")
    parser.add_argument("--test", type=int, default=24, help="values forecast at the end")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--out", default="forecast.png")
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    values, season, label = load_series(args.series)
    window = args.window or season + 1
    x, y = windows(np.log(values), window)
    n_train = len(x) - args.test
    scale = float(np.abs(y[:n_train]).max())   # targets (and inputs) to about [-1, 1]
    model = build_model(window, args.units)
    model.compile(optimizer=pynn.optimizers.Adam(0.005), loss="mse")
    start = time.perf_counter()
    model.fit(x[:n_train] / scale, y[:n_train] / scale, epochs=args.epochs,
              batch_size=args.batch_size, verbose=0)
    seconds = time.perf_counter() - start
    # Back to values: the last value of each test window times exp(predicted change).
    last = values[window - 1:-1][n_train:]
    forecast = last * np.exp(model.predict(x[n_train:] / scale, verbose=0)[:, 0] * scale)
    truth = values[window:][n_train:]
    seasonal = values[window - season:len(values) - season][n_train:]
    scores = {"lstm": rmse(forecast, truth), "same as last step": rmse(last, truth),
              "same as one season ago": rmse(seasonal, truth)}
    print(f"{label}: {len(values)} values, window {window}, {n_train} training windows, "
          f"{args.epochs} epochs in {seconds:.1f} s")
    print(f"test RMSE over the last {len(truth)} values: "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    plot(args.out, values, len(values) - len(truth), forecast)
    print(f"wrote {args.out}")
    best_baseline = min(scores["same as last step"], scores["same as one season ago"])
    return 0 if scores["lstm"] < best_baseline else 1


if __name__ == "__main__":
    sys.exit(main())
