"""Spectral ops (native/spectral.pyx, opencl/spectral.cl) against their float64 references,
and Keras 3's audio front ends built on them: STFTSpectrogram (its STFT initializer's kernels,
every mode and layout), MelSpectrogram; central differences, Keras parity, OpenCL against the
CPU, bad inputs, and an audio classifier trained through fit."""

import numpy as np
import pytest

import pynn
from pynn import initializers, layers
from tests.backend_util import assert_close, check_op, keras_on_torch, rand
from tests.reference import spectral_ref as ref
from tests.reference.gradcheck import check_layer

MODES = ("magnitude", "psd", "angle", "log", "power", "stft")
PAIR_SHAPES = [(1, 2), (7, 33), (3, 5, 65), (31, 17)]


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


@pytest.fixture
def restore_device():
    previous = pynn.get_device()
    yield
    pynn.set_device(previous)


def tol(target):
    return 1e-4 if target.is_opencl else (1e-5 if target.dtype == np.float32 else 1e-12)


def pair(rng, shape, dtype):
    return rand(rng, shape, dtype), rand(rng, shape, dtype)


# -- ops against the float64 references ----------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", PAIR_SHAPES)
def test_spectrum_forward(target, rng, mode, shape):
    re, im = pair(rng, shape, target.dtype)
    check_op(target, "spectrum_forward", re, im, mode, 1.5,
             ref=lambda *a: ref.spectrum_forward_ref(*a), rtol=tol(target))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", PAIR_SHAPES)
def test_spectrum_backward(target, rng, mode, shape):
    re, im = pair(rng, shape, target.dtype)
    out_shape = ref.spectrum_forward_ref(re, im, mode).shape
    dy = rand(rng, out_shape, target.dtype)
    check_op(target, "spectrum_backward", dy, re, im, mode, 1.5,
             ref=lambda *a: ref.spectrum_backward_ref(*a), rtol=tol(target))


@pytest.mark.parametrize("exponent", [1.0, 2.0, 0.5, 3.0])
def test_spectrum_power_exponents(target, rng, exponent):
    """mag_exp's 1 and 2 take their own roads (no pow); the others pow."""
    re, im = pair(rng, (5, 33), target.dtype)
    check_op(target, "spectrum_forward", re, im, "power", exponent,
             ref=lambda *a: ref.spectrum_forward_ref(*a), rtol=tol(target))
    dy = rand(rng, (5, 33), target.dtype)
    check_op(target, "spectrum_backward", dy, re, im, "power", exponent,
             ref=lambda *a: ref.spectrum_backward_ref(*a), rtol=tol(target))


def test_spectrum_floors_and_zero_pairs(backend):
    """Keras's 1e-7 floor under the power: a zero pair gives sqrt(1e-7) and ln of it, and a
    zero gradient (the floor holds), never NaN."""
    re = np.array([[0.0, 1e-5, 3.0]], np.float32)
    im = np.array([[0.0, 0.0, -4.0]], np.float32)
    for mode in ("magnitude", "log", "angle", "power"):
        y = backend.down(backend.ops.spectrum_forward(backend.up(re), backend.up(im), mode, 2.0))
        assert_close(y, ref.spectrum_forward_ref(re, im, mode), 1e-5, mode)
        d = backend.ops.spectrum_backward(backend.up(np.ones_like(re)), backend.up(re),
                                          backend.up(im), mode, 2.0)
        for g, w in zip(d, ref.spectrum_backward_ref(np.ones_like(re), re, im, mode)):
            assert np.all(np.isfinite(backend.down(g)))
            assert_close(backend.down(g), w, 1e-5, f"{mode} gradient")


@pytest.mark.parametrize("top_db", [80.0, 12.0, None])
@pytest.mark.parametrize("shape", [(1,), (7, 33), (3, 20000), (2, 5, 17)])
def test_power_to_db_forward(target, rng, top_db, shape):
    x = (rand(rng, shape, np.float64) ** 4 * 10.0).astype(target.dtype)
    x.flat[-1] = 0.0  # below min_power: the floor's value
    check_op(target, "power_to_db_forward", x, 1e-10, 2.5, top_db,
             ref=lambda *a: ref.power_to_db_forward_ref(*a),
             rtol=1e-4 if target.dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("top_db", [80.0, 12.0, None])
@pytest.mark.parametrize("shape", [(7, 33), (3, 20000), (2, 5, 17)])
def test_power_to_db_backward(target, rng, top_db, shape):
    x = (np.abs(rand(rng, shape, np.float64)) + 0.05).astype(target.dtype)
    x.flat[3] = 1e-12  # under min_power: no gradient
    x.flat[1] = 40.0  # one clear maximum takes the floored elements' gradient
    dy = rand(rng, shape, target.dtype)
    check_op(target, "power_to_db_backward", dy, x, 1e-10, 1.0, top_db,
             ref=lambda *a: ref.power_to_db_backward_ref(*a),
             rtol=1e-4 if target.dtype == np.float32 else 1e-10)


def test_power_to_db_floor_is_over_the_whole_batch(backend):
    """Keras takes max(log_spec) over the whole tensor: a loud sample floors a quiet one."""
    x = np.array([[1e4, 1.0], [1e-6, 1e-7]], np.float32)
    y = backend.down(backend.ops.power_to_db_forward(backend.up(x), 1e-10, 1.0, 80.0))
    assert_close(y, [[40.0, 0.0], [-40.0, -40.0]], 1e-5, "floor")


@pytest.mark.parametrize("shape,pad", [((3, 11), 4), ((2, 5, 9), 8), ((1, 2), 1), ((4, 7), 0)])
def test_reflect_pad1d(target, rng, shape, pad):
    x = rand(rng, shape, target.dtype)
    check_op(target, "reflect_pad1d_forward", x, pad, ref=ref.reflect_pad1d_forward_ref,
             rtol=tol(target))
    dy = rand(rng, shape[:-1] + (shape[-1] + 2 * pad,), target.dtype)
    check_op(target, "reflect_pad1d_backward", dy, pad, ref=ref.reflect_pad1d_backward_ref,
             rtol=tol(target))


def test_reflect_pad1d_is_torchs_reflect(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 13))
    want = torch.nn.functional.pad(torch.tensor(x)[None], (12, 12), mode="reflect")[0]
    assert_close(pynn.backend.cpu.reflect_pad1d_forward(x, 12), want.numpy(), 1e-15, "torch")


STFT_GEOMETRIES = [(16, 77, 5), (15, 50, 4), (2, 9, 1), (64, 300, 16), (63, 257, 10),
                   (8, 8, 3), (32, 33, 32)]


@pytest.mark.parametrize("n,t,stride", STFT_GEOMETRIES)
def test_stft_forward(target, rng, n, t, stride):
    """The FFT (N a power of two) and the direct sum (other N) against the explicit DFT."""
    x, window = rand(rng, (3, t), target.dtype), rand(rng, (n,), target.dtype)
    check_op(target, "stft_forward", x, window, stride, ref=ref.stft_forward_ref,
             rtol=1e-4 if target.is_opencl else tol(target) * 10)


@pytest.mark.parametrize("n,t,stride", STFT_GEOMETRIES)
def test_stft_backward(target, rng, n, t, stride):
    frames = (t - n) // stride + 1
    dre, dim = pair(rng, (3, frames, n // 2 + 1), target.dtype)
    window = rand(rng, (n,), target.dtype)
    check_op(target, "stft_backward", dre, dim, window, stride, t,
             ref=ref.stft_backward_ref, rtol=1e-4 if target.is_opencl else tol(target) * 10)


# -- opss: stft_backward is also the inverse real transform (pynn.ops.irfft/istft run on it):
# the half spectrum weighted 1/N at DC and Nyquist, 2/N between, gives NumPy's irfft of every
# frame, times the window, overlap-added --
@pytest.mark.parametrize("n,t,stride", STFT_GEOMETRIES)
def test_stft_backward_is_the_inverse_real_transform(target, rng, n, t, stride):
    frames = (t - n) // stride + 1
    dre, dim = pair(rng, (3, frames, n // 2 + 1), target.dtype)
    window = rand(rng, (n,), target.dtype)
    weights = np.full(n // 2 + 1, 2.0 / n)
    weights[0] = 1.0 / n
    if n % 2 == 0:
        weights[-1] = 1.0 / n
    spectrum = (dre + 1j * dim).astype(np.complex128)
    want = np.zeros((3, t))
    starts = np.arange(frames) * stride
    np.add.at(want, (slice(None), (starts[:, None] + np.arange(n)).reshape(-1)),
              (np.fft.irfft(spectrum, n, axis=-1) * window).reshape(3, -1))
    scaled = [(a * weights).astype(target.dtype) for a in (dre, dim)]
    check_op(target, "stft_backward", *scaled, window, stride, t, ref=want,
             rtol=1e-4 if target.is_opencl else tol(target) * 10)


def test_stft_is_torchs(rng):
    torch = pytest.importorskip("torch")
    x, window = rng.standard_normal((2, 200)), np.hanning(64)
    z = torch.stft(torch.tensor(x), 64, 16, window=torch.tensor(window), center=False,
                   return_complex=True).numpy()
    real, imag = pynn.backend.cpu.stft_forward(x, window, 16)
    assert_close(real, np.swapaxes(z.real, 1, 2), 1e-12, "real")
    assert_close(imag, np.swapaxes(z.imag, 1, 2), 1e-12, "imag")


def test_spectral_ops_are_thread_count_invariant(rng):
    from pynn._native import info

    x = np.abs(rand(rng, (5, 30001), np.float32)) ** 3
    re, im = pair(rng, (300, 129), np.float32)
    results = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            results.append([pynn.backend.cpu.power_to_db_forward(x, 1e-10, 1.0, 30.0),
                            pynn.backend.cpu.power_to_db_backward(x, x, 1e-10, 1.0, 30.0),
                            pynn.backend.cpu.spectrum_forward(re, im, "log", 2.0),
                            *pynn.backend.cpu.stft_forward(x, np.hanning(64), 16),
                            pynn.backend.cpu.stft_backward(re[None], im[None], np.ones(256),
                                                           99, 29857)])
    finally:
        info.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


BAD_OP_CALLS = [
    ("spectrum_forward", lambda o: o.spectrum_forward(np.ones((2, 3)), np.ones((2, 4)), "log",
                                                      2.0), "'imag' must have shape"),
    ("spectrum_forward", lambda o: o.spectrum_forward(np.ones((2, 3)), np.ones((2, 3)), "abs",
                                                      2.0), "'mode' must be one of"),
    ("spectrum_forward", lambda o: o.spectrum_forward(np.ones(3, complex), np.ones(3), "log",
                                                      2.0), "must be real"),
    ("spectrum_backward", lambda o: o.spectrum_backward(np.ones((2, 3)), np.ones((2, 3)),
                                                        np.ones((2, 3)), "stft", 2.0),
     "'dy' must have shape"),
    ("power_to_db_forward", lambda o: o.power_to_db_forward(np.ones(3), 0.0, 1.0, 80.0),
     "'min_power' must be in"),
    ("power_to_db_forward", lambda o: o.power_to_db_forward(np.ones(3), 1e-10, 1.0, -1.0),
     "'top_db' must be in"),
    ("power_to_db_backward", lambda o: o.power_to_db_backward(np.ones(4), np.ones(3), 1e-10,
                                                              1.0, 80.0), "'dy' must have"),
    ("reflect_pad1d_forward", lambda o: o.reflect_pad1d_forward(np.ones((2, 4)), 4),
     "'pad' must be in [0, 4)"),
    ("reflect_pad1d_forward", lambda o: o.reflect_pad1d_forward(np.ones((2, 4)), 1.5),
     "'pad' must be an int"),
    ("reflect_pad1d_backward", lambda o: o.reflect_pad1d_backward(np.ones((2, 4)), 3),
     "'pad' must be an int in"),
    ("stft_forward", lambda o: o.stft_forward(np.ones((2, 4)), np.ones(8), 2),
     "a signal of 4 samples is shorter than the window's 8"),
    ("stft_forward", lambda o: o.stft_forward(np.ones((2, 9)), np.ones(8), 0),
     "'stride' must be positive"),
    ("stft_forward", lambda o: o.stft_forward(np.ones(9), np.ones(8), 1), "must be (R, T)"),
    ("stft_backward", lambda o: o.stft_backward(np.ones((2, 3, 5)), np.ones((2, 3, 5)),
                                                np.ones(8), 2, 9), "'dreal' must have shape"),
]


@pytest.mark.parametrize("name,call,message", BAD_OP_CALLS, ids=[c[0] for c in BAD_OP_CALLS])
def test_bad_op_arguments_are_refused_by_name(name, call, message):
    with pytest.raises((ValueError, TypeError)) as info:
        call(pynn.backend.cpu)
    assert name in str(info.value) and message in str(info.value)


# -- the STFT initializer ----------------------------------------------------------------------

@pytest.mark.parametrize("side", ["real", "imag"])
@pytest.mark.parametrize("window,scaling,periodic", [("hann", "density", False),
                                                     ("hamming", "spectrum", True),
                                                     (None, None, False),
                                                     ("blackman", None, True)])
def test_stft_initializer_formula(side, window, scaling, periodic):
    from scipy.signal import get_window

    shape = (13, 1, 9)
    got = initializers.STFT(side, window, scaling, periodic)(shape, "float64")
    win = np.ones(13) if window is None else get_window(window, 13, fftbins=periodic)
    want = ref.stft_kernel_ref(side, win, 13, 9)[:, None, :]
    if scaling == "density":
        want = want / np.sqrt(np.sum(win ** 2))
    elif scaling == "spectrum":
        want = want / np.sum(np.abs(win))
    assert_close(got, want, 1e-12, "STFT kernel")
    config = initializers.STFT(side, window, scaling, periodic).get_config()
    assert initializers.get({"class_name": "STFT", "config": config}).get_config() == config
    assert isinstance(initializers.get("stft"), initializers.STFT)


@pytest.mark.parametrize("side", ["real", "imag"])
def test_stft_initializer_keras_parity(side):
    keras = keras_on_torch()
    init = keras.initializers.STFT(side, "hann", "density", False)
    want = np.asarray(init((32, 1, 17), dtype="float32"))
    got = initializers.STFT(side, "hann", "density", False)((32, 1, 17), "float32")
    assert_close(got, want, 2e-6, f"STFT {side}")
    assert initializers.STFT(side).get_config() == init.get_config()


def test_stft_initializer_bad_arguments():
    with pytest.raises(ValueError, match="side must be 'real' or 'imag'"):
        initializers.STFT("complex")
    with pytest.raises(ValueError, match="scaling must be None"):
        initializers.STFT("real", scaling="power")
    with pytest.raises(ValueError, match="unknown window 'no_such_window'"):
        initializers.STFT("real", window="no_such_window")
    with pytest.raises(ValueError, match=r"window must have the shape \(8,\)"):
        initializers.STFT("real", window=np.ones(5))((8, 1, 5))


# -- STFTSpectrogram -------------------------------------------------------------------------

STFT_CASES = [
    ("log", dict(mode="log", frame_length=16, frame_step=5, fft_length=32), (2, 77, 3)),
    ("magnitude-same", dict(mode="magnitude", frame_length=15, padding="same",
                            window="hamming", periodic=True), (2, 50, 1)),
    ("psd-expand", dict(mode="psd", frame_length=12, frame_step=4, scaling="spectrum",
                        expand_dims=True), (2, 41, 2)),
    ("angle-odd-fft", dict(mode="angle", frame_length=8, fft_length=9), (1, 30, 2)),
    ("stft-first", dict(mode="stft", frame_length=8, data_format="channels_first"), (2, 3, 30)),
    ("real", dict(mode="real", frame_length=8, scaling=None), (2, 30, 2)),
    ("imag-first-expand", dict(mode="imag", frame_length=8, window=None, expand_dims=True,
                               data_format="channels_first"), (2, 2, 30)),
]
STFT_IDS = [c[0] for c in STFT_CASES]


def _stft_ref(layer, x):
    """float64 frames by explicit products, then the mode and Keras's layout."""
    x = np.asarray(x, np.float64)
    if layer.data_format == "channels_last":
        x = np.transpose(x, (0, 2, 1))
    n, c, t = x.shape
    w = {v.name.split("/")[-1]: np.asarray(v.value, np.float64)[:, 0, :] for v in layer.weights}
    kr = w.get("real_kernel", np.zeros_like(next(iter(w.values()))))
    ki = w.get("imag_kernel", np.zeros_like(kr))
    re, im = ref.stft_ref(x.reshape(n * c, t), kr, ki, layer._frame_step, layer.padding)
    if layer.mode in ("real", "imag"):
        spec = re if layer.mode == "real" else im
    else:
        spec = ref.spectrum_forward_ref(re, im, layer.mode)
    spec = spec.reshape(n, c, spec.shape[1], spec.shape[2])   # (N, C, frames, F')
    if layer.data_format == "channels_last":
        if layer.expand_dims:
            return np.transpose(spec, (0, 2, 3, 1))
        return np.transpose(spec, (0, 2, 1, 3)).reshape(n, spec.shape[2], -1)
    if layer.expand_dims:
        return spec
    return np.transpose(spec, (0, 1, 3, 2)).reshape(n, -1, spec.shape[2])


@pytest.mark.parametrize("name,kwargs,shape", STFT_CASES, ids=STFT_IDS)
def test_stft_spectrogram_matches_reference(seeded, name, kwargs, shape):
    layer = layers.STFTSpectrogram(**kwargs)
    x = rand(seeded, shape)
    y = np.asarray(layer(x))
    assert y.shape[1:] == tuple(layer.compute_output_shape((None,) + shape[1:])[1:])
    assert_close(y, _stft_ref(layer, x), 2e-5, name)


@pytest.mark.parametrize("name,kwargs,shape", STFT_CASES, ids=STFT_IDS)
def test_stft_spectrogram_gradients(seeded, name, kwargs, shape):
    layer = layers.STFTSpectrogram(dtype="float64", **kwargs)
    x = rand(seeded, (1,) + shape[1:], np.float64)
    layer(x)
    # Kernels moved off the DFT's exact zeros (the DC bin's imaginary part is 0 for every
    # frame, where angle sits on atan2's branch cut), as training moves them.
    layer.set_weights([w + 0.1 * seeded.standard_normal(w.shape) for w in layer.get_weights()])
    check_layer(layer, x, seeded, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,kwargs,shape", STFT_CASES, ids=STFT_IDS)
def test_stft_spectrogram_keras_parity(seeded, name, kwargs, shape):
    """Outputs, input gradients and (trainable) kernel gradients against Keras 3 on torch
    with Keras's kernels copied; the drawn kernels and the config match too."""
    keras = keras_on_torch()
    import torch

    x = rand(seeded, shape)
    klayer = keras.layers.STFTSpectrogram(**kwargs)
    xt = torch.tensor(x, requires_grad=True)
    out = klayer(xt)
    layer = layers.STFTSpectrogram(**kwargs)
    layer(x)
    for got, want in zip(layer.get_weights(), klayer.get_weights()):
        assert_close(got, want, 2e-6, f"{name} initial kernels")
    layer.set_weights(klayer.get_weights())
    y = np.asarray(layer(x, training=True))
    assert_close(y, out.detach().numpy(), 2e-5, f"{name} output")
    r = rand(seeded, y.shape)
    (out * torch.tensor(r)).sum().backward()
    dx = np.asarray(layer.backward(r))
    assert_close(dx, xt.grad.numpy(), 2e-5, f"{name} input gradient")
    assert [v.path.split("/")[-1] for v in layer.trainable_weights] == [
        v.path.split("/")[-1] for v in klayer.trainable_weights]
    for v, kv in zip(layer.trainable_weights, klayer.trainable_weights):
        assert_close(np.asarray(v.grad), kv.value.grad.numpy(), 2e-5, f"{name} {v.path}")
    config = {k: v for k, v in layer.get_config().items() if k != "dtype"}
    kconfig = {k: v for k, v in klayer.get_config().items() if k in config}
    kconfig["name"] = config["name"]
    assert config == kconfig


def test_stft_spectrogram_trainable_false_has_no_trainable_weights(seeded):
    layer = layers.STFTSpectrogram(frame_length=8, trainable=False)
    layer(rand(seeded, (1, 20, 1)))
    assert len(layer.weights) == 2 and layer.trainable_weights == []
    assert layers.STFTSpectrogram.from_config(layer.get_config()).trainable is False


def test_stft_spectrogram_config_round_trip(seeded):
    layer = layers.STFTSpectrogram(mode="psd", frame_length=10, frame_step=3, fft_length=16,
                                   window=list(np.linspace(0.1, 1, 10)), periodic=True,
                                   scaling=None, padding="same", expand_dims=True)
    x = rand(seeded, (2, 31, 2))
    y = np.asarray(layer(x))
    clone = layers.STFTSpectrogram.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), y)


BAD_STFT = [
    (dict(frame_step=300), "frame_step should be a positive integer not greater"),
    (dict(frame_step=0), "frame_step must be a positive int"),
    (dict(fft_length=100), "fft_length should be not less than frame_length"),
    (dict(mode="power"), "mode must be one of"),
    (dict(scaling="power"), "scaling must be None"),
    (dict(padding="causal"), "padding must be 'valid' or 'same'"),
    (dict(window="no_such_window"), "unknown window"),
    (dict(window=np.ones(7)), "window must have the shape (256,)"),
    (dict(data_format="NCW"), "data_format must be"),
    (dict(frame_length=1), "frame_step (frame_length // 2 is 0)"),
    (dict(frame_length=True), "frame_length must be a positive int"),
]


@pytest.mark.parametrize("kwargs,message", BAD_STFT, ids=[m for _, m in BAD_STFT])
def test_stft_spectrogram_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        layers.STFTSpectrogram(name="spec", **kwargs)
    assert "STFTSpectrogram 'spec'" in str(info.value) and message in str(info.value)


def test_stft_spectrogram_bad_inputs(seeded):
    layer = layers.STFTSpectrogram(frame_length=16, name="spec")
    with pytest.raises(ValueError, match=r"'spec': expected a 3-D input \(None, T, C\)"):
        layer(rand(seeded, (2, 40)))
    with pytest.raises(ValueError, match="'spec': a signal of 9 samples is shorter than "
                                         "frame_length 16"):
        layers.STFTSpectrogram(frame_length=16, name="spec")(rand(seeded, (2, 9, 1)))
    layer(rand(seeded, (2, 40, 1)))
    with pytest.raises(ValueError, match="expected input shape"):
        layer(rand(seeded, (2, 40, 2)))
    with pytest.raises(TypeError, match="must be real"):
        layers.STFTSpectrogram(frame_length=16)(np.ones((1, 40, 1), complex))


# -- MelSpectrogram ---------------------------------------------------------------------------

MEL_CASES = [
    ("default-shape", dict(fft_length=64, sequence_stride=16, num_mel_bins=12,
                           sampling_rate=8000), (3, 300)),
    ("hamming-short-window", dict(fft_length=63, sequence_stride=10, sequence_length=40,
                                  window="hamming", num_mel_bins=9, sampling_rate=4000,
                                  min_freq=100.0, max_freq=1800.0, top_db=30.0, mag_exp=1.0,
                                  ref_power=2.0), (2, 257)),
    ("no-window-no-db", dict(fft_length=32, sequence_stride=7, window=None, num_mel_bins=6,
                             sampling_rate=1000, power_to_db=False), (2, 101)),
]
MEL_IDS = [c[0] for c in MEL_CASES]


def _mel_ref(layer, x):
    """torch.stft's frames by explicit DFT, Keras's mel matrix and dB scale, in float64."""
    x = np.asarray(x, np.float64)
    n_fft, hop, length = layer.fft_length, layer.sequence_stride, layer.sequence_length
    padded = ref.reflect_pad1d_forward_ref(x, n_fft // 2)
    from scipy.signal import get_window

    win = np.ones(length) if layer.window is None else get_window(layer.window, length, True)
    placed = np.zeros(n_fft)
    placed[(n_fft - length) // 2:(n_fft - length) // 2 + length] = win
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), k) / n_fft) * placed[:, None]
    frames = (padded.shape[1] - n_fft) // hop + 1
    z = np.stack([padded[:, i * hop:i * hop + n_fft] for i in range(frames)], 1) @ dft
    spec = np.abs(z) ** layer.mag_exp
    mel = spec @ ref.mel_matrix_ref(layer.num_mel_bins, k.size, layer.sampling_rate,
                                    layer.min_freq, layer.max_freq)
    if layer.power_to_db:
        mel = ref.power_to_db_forward_ref(mel, layer.min_power, layer.ref_power, layer.top_db)
    return np.swapaxes(mel, 1, 2)


@pytest.mark.parametrize("name,kwargs,shape", MEL_CASES, ids=MEL_IDS)
def test_mel_spectrogram_matches_reference(seeded, name, kwargs, shape):
    layer = layers.MelSpectrogram(**kwargs)
    x = rand(seeded, shape)
    y = np.asarray(layer(x))
    assert y.shape[1:] == layer.compute_output_shape((None,) + shape[1:])[1:]
    want = _mel_ref(layer, x)
    assert_close(y, want, 2e-5, name)


@pytest.mark.parametrize("name,kwargs,shape", MEL_CASES, ids=MEL_IDS)
def test_mel_spectrogram_gradients(seeded, name, kwargs, shape):
    layer = layers.MelSpectrogram(dtype="float64", **kwargs)
    x = rand(seeded, (2, shape[1] // 3), np.float64)
    check_layer(layer, x, seeded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,shape", MEL_CASES, ids=MEL_IDS)
def test_mel_spectrogram_keras_parity(seeded, name, kwargs, shape):
    """Outputs and input gradients against Keras 3 on torch (torch.stft's frames, Keras's
    float32 mel matrix: relative 1e-5), and the config."""
    keras = keras_on_torch()
    import torch

    x = rand(seeded, shape)
    klayer = keras.layers.MelSpectrogram(**kwargs)
    xt = torch.tensor(x, requires_grad=True)
    out = klayer(xt)
    layer = layers.MelSpectrogram(**kwargs)
    y = np.asarray(layer(x, training=True))
    assert_close(y, out.detach().numpy(), 2e-5, f"{name} output")
    r = rand(seeded, y.shape)
    (out * torch.tensor(r)).sum().backward()
    assert_close(np.asarray(layer.backward(r)), xt.grad.numpy(), 2e-5, f"{name} gradient")
    config = {k: v for k, v in layer.get_config().items() if k != "dtype"}
    kconfig = {k: v for k, v in klayer.get_config().items() if k in config}
    kconfig["name"] = config["name"]
    assert config == kconfig and layer.weights == []


BAD_MEL = [
    (dict(fft_length=64, sequence_length=128), "fft_length must be greater than or equal"),
    (dict(window="blackman"), "must be one of hann, hamming"),
    (dict(window=np.ones(5)), "window must have the shape (2048,)"),
    (dict(num_mel_bins=0), "num_mel_bins must be a positive int"),
    (dict(min_freq=9000.0), "expected 0 <= min_freq < max_freq"),
    (dict(top_db=-3.0), "top_db must be non-negative"),
    (dict(min_power=0.0), "min_power must be positive"),
    (dict(sampling_rate="fast"), "sampling_rate must be a finite number"),
]


@pytest.mark.parametrize("kwargs,message", BAD_MEL, ids=[m for _, m in BAD_MEL])
def test_mel_spectrogram_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        layers.MelSpectrogram(name="mel", **kwargs)
    assert "MelSpectrogram 'mel'" in str(info.value) and message in str(info.value)


def test_mel_spectrogram_bad_inputs(seeded):
    with pytest.raises(ValueError, match=r"'mel': expected a batch of signals \(None, T\)"):
        layers.MelSpectrogram(name="mel")(rand(seeded, (2, 3000, 1)))
    with pytest.raises(ValueError, match="'mel': a signal of 1000 samples is too short for "
                                         "fft_length 2048"):
        layers.MelSpectrogram(name="mel")(rand(seeded, (2, 1000)))


# -- OpenCL against the CPU ------------------------------------------------------------------

OCL_LAYERS = [
    ("stft-log", lambda: layers.STFTSpectrogram(mode="log", frame_length=16, frame_step=5),
     (2, 77, 3)),
    ("stft-psd-same", lambda: layers.STFTSpectrogram(mode="psd", frame_length=15,
                                                     padding="same"), (2, 61, 1)),
    ("stft-angle", lambda: layers.STFTSpectrogram(mode="angle", frame_length=16,
                                                  expand_dims=True), (2, 65, 2)),
    ("stft-stft-first", lambda: layers.STFTSpectrogram(mode="stft", frame_length=8,
                                                       data_format="channels_first"),
     (2, 3, 33)),
    ("mel", lambda: layers.MelSpectrogram(fft_length=64, sequence_stride=16, num_mel_bins=12,
                                          sampling_rate=8000), (3, 300)),
    ("mel-top-db", lambda: layers.MelSpectrogram(fft_length=64, sequence_stride=13,
                                                 num_mel_bins=7, sampling_rate=8000,
                                                 top_db=20.0, mag_exp=1.0), (2, 257)),
]


@pytest.mark.opencl
@pytest.mark.parametrize("name,make,shape", OCL_LAYERS, ids=[c[0] for c in OCL_LAYERS])
def test_layers_on_opencl_match_cpu(backend_opencl, restore_device, seeded, name, make, shape):
    x = rand(seeded, shape)
    results = {}
    for device in ("cpu", "opencl"):
        pynn.set_device(device)
        b = pynn.backend.current()
        layer = make()
        y = layer(b.asarray(x), training=True)
        r = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(b.asarray(r))
        results[device] = [b.to_numpy(y), b.to_numpy(dx)] + [
            b.to_numpy(v.grad) for v in layer.trainable_weights]
    for i, (g, w) in enumerate(zip(results["opencl"], results["cpu"])):
        assert_close(g, w, 1e-4, f"{name} result {i} on OpenCL vs CPU")


@pytest.mark.opencl
def test_opencl_ops_refuse_host_data(ocl):
    with pytest.raises(TypeError, match="spectrum_forward"):
        ocl.spectrum_forward(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), "log",
                             2.0)


# -- end to end: an audio classifier trained through fit -------------------------------------

def _tones(rng, n, length=800, rate=4000):
    """Two classes of noisy tones: 300 Hz and 1200 Hz."""
    labels = rng.integers(0, 2, n)
    freq = np.where(labels == 0, 300.0, 1200.0)[:, None]
    t = np.arange(length)[None, :] / rate
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    signal = np.sin(2 * np.pi * freq * t + phase) + 0.3 * rng.standard_normal((n, length))
    return signal.astype(np.float32), labels


def test_audio_classifier_trains_through_fit(seeded):
    x, y = _tones(seeded, 96)
    model = pynn.Sequential([
        pynn.Input((800,)),
        layers.MelSpectrogram(fft_length=128, sequence_stride=64, num_mel_bins=16,
                              sampling_rate=4000),
        layers.Reshape((16, 13, 1)),
        layers.Rescaling(1.0 / 40.0),
        layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    xt, yt = _tones(np.random.default_rng(7), 64)
    _, accuracy = model.evaluate(xt, yt, verbose=0)
    assert accuracy > 0.9


def test_stft_model_trains_its_kernels(seeded):
    """A trainable STFTSpectrogram's kernels move under fit; a frozen one's do not."""
    x, y = _tones(seeded, 32, length=256)
    for trainable in (True, False):
        spec = layers.STFTSpectrogram(mode="log", frame_length=32, frame_step=16,
                                      trainable=trainable)
        model = pynn.Sequential([pynn.Input((256, 1)), spec, layers.GlobalAveragePooling1D(),
                                 layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        before = spec.get_weights()
        model.fit(x[..., None], y, epochs=1, batch_size=8, verbose=0)
        moved = [not np.array_equal(a, b) for a, b in zip(before, spec.get_weights())]
        assert moved == [trainable, trainable]


def test_audio_model_saved_in_pynns_format_answers_as_before(seeded, tmp_path):
    signal = pynn.Input((120,))
    mel = layers.MelSpectrogram(fft_length=32, sequence_stride=8, num_mel_bins=5,
                                sampling_rate=2000, window="hamming", top_db=50.0)(signal)
    spec = layers.STFTSpectrogram(mode="psd", frame_length=12, frame_step=6, padding="same",
                                  expand_dims=True)(layers.Reshape((120, 1))(signal))
    merged = layers.Concatenate()([layers.Flatten()(mel), layers.Flatten()(spec)])
    model = pynn.Model(signal, layers.Dense(3)(merged))
    model.set_weights([w + 0.01 * seeded.standard_normal(w.shape) for w in model.get_weights()])
    x = rand(seeded, (4, 120))
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "audio.pynn")
    loaded = pynn.load_model(tmp_path / "audio.pynn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
