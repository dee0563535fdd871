"""``pynn.random``: Keras 3's ``keras.random``: seeded draws as backend tensors.

Streams. A draw is keyed by a 64-bit seed and a counter offset, the Philox4x32-10 stream of
the dropout and noise kernels (native/dropout.pyx, opencl/dropout.cl: the same bits on the CPU
and OpenCL). An int ``seed`` gives the same draw at every call, as Keras's; a ``SeedGenerator``
advances its counter past the elements each draw used, so successive draws are disjoint parts
of one stream; ``seed=None`` takes a fresh seed from pynn's global generator
(``pynn.utils.set_random_seed`` makes it reproducible).

Distributions. ``normal`` is the noise kernel's Box-Muller normal; ``uniform`` its image under
the normal CDF (erfc), ``truncated_normal`` the inverse CDF (erfinv) of a uniform restricted to
[Phi(-2), Phi(2)], ``randint`` a floored uniform, ``categorical`` Gumbel-max over the logits,
``shuffle`` an argsort of uniform keys and ``dropout`` the dropout kernel: every step a device
op. ``gamma``, ``beta`` and ``binomial`` need rejection loops no kernel has, so they are drawn
on the host from NumPy's Philox keyed by the same seed and counter (as initializers are) and
moved to the device once. Keras's torch draws are torch's generator: pynn matches their
distributions, not their bits.
"""

import math

import numpy as np

from pynn import _config, backend
from pynn import ops as _ops
from pynn.autodiff import Tensor

__all__ = ["SeedGenerator", "beta", "binomial", "categorical", "dropout", "gamma", "normal",
           "randint", "shuffle", "truncated_normal", "uniform"]

_UINT64 = 2**64
# Phi(-2) and Phi(2): keras.random.truncated_normal redraws values past two standard deviations
_PHI_MINUS_2 = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
_PHI_PLUS_2 = 0.5 * math.erfc(-2.0 / math.sqrt(2.0))


class SeedGenerator:
    """Keras's SeedGenerator: a seed and a counter, advanced by every draw that takes it."""

    def __init__(self, seed=None, name=None, **kwargs):
        if kwargs.keys() - {"backend"}:
            raise TypeError(f"SeedGenerator: unexpected arguments {sorted(kwargs)}")
        if seed is None:
            from pynn.utils import new_seed
            seed = new_seed()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"SeedGenerator: seed must be an int or None, got {seed!r}")
        self._initial_seed = int(seed)
        self.name = name or "seed_generator"
        self.state = np.array([int(seed) % _UINT64, 0], dtype=np.uint64)

    def next(self, ordered=True, count=1):
        """(seed, counter offset) for a draw of ``count`` elements; the counter moves on."""
        key, offset = int(self.state[0]), int(self.state[1])
        self.state[1] = np.uint64((offset + max(int(count), 1)) % _UINT64)
        return key, offset

    def get_config(self):
        return {"seed": self._initial_seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _draw(fn, seed, count):
    """(key, offset) for ``count`` Philox calls."""
    if isinstance(seed, SeedGenerator):
        return seed.next(count=count)
    if seed is None:
        from pynn.utils import new_seed
        return new_seed() % _UINT64, 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"pynn.random.{fn}: seed must be an int, a SeedGenerator or None, got "
                         f"{seed!r}")
    return int(seed) % _UINT64, 0


def _shape(fn, shape):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"pynn.random.{fn}: shape must be a tuple of non-negative ints, got "
                         f"{shape!r}") from None
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise ValueError(f"pynn.random.{fn}: shape must be a tuple of non-negative ints, got "
                         f"{shape!r}")
    return tuple(int(d) for d in shape)


def _float_dtype(fn, dtype):
    dtype = _config.floatx() if dtype is None else str(np.dtype(dtype))
    if dtype not in ("float32", "float64"):
        raise ValueError(f"pynn.random.{fn}: dtype must be a float type (float32 or float64), "
                         f"got {dtype!r}")
    return dtype


def _finite(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            not math.isfinite(v):
        raise ValueError(f"pynn.random.{fn}: {name} must be a finite number, got {v!r}")
    return float(v)


def _standard_normal(shape, dtype, seed, fn):
    be = backend.current()
    key, offset = _draw(fn, seed, math.prod(shape))
    return Tensor(be.gaussian_noise_forward(be.zeros(shape, dtype), 1.0, key, offset))


def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    shape, dtype = _shape("normal", shape), _float_dtype("normal", dtype)
    mean, stddev = _finite("normal", "mean", mean), _finite("normal", "stddev", stddev)
    z = _standard_normal(shape, dtype, seed, "normal")
    return _ops.add(_ops.multiply(z, stddev), mean)


def _unit_uniform(shape, dtype, seed, fn):
    """U[0, 1): Phi(z) of the kernel's normals, kept below 1 where rounding reaches it."""
    z = _standard_normal(shape, dtype, seed, fn)
    u = _ops.multiply(_ops.erfc(_ops.multiply(z, -1.0 / math.sqrt(2.0))), 0.5)
    below_one = float(np.nextafter(np.array(1.0, dtype), np.array(0.0, dtype)))
    return _ops.minimum(u, below_one)


def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    shape, dtype = _shape("uniform", shape), _float_dtype("uniform", dtype)
    lo, hi = _finite("uniform", "minval", minval), _finite("uniform", "maxval", maxval)
    if not hi > lo:
        raise ValueError(f"pynn.random.uniform: maxval must be > minval, got minval={minval!r}, "
                         f"maxval={maxval!r}")
    u = _unit_uniform(shape, dtype, seed, "uniform")
    return _ops.add(_ops.multiply(u, hi - lo), lo)


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """Normal values within two standard deviations of the mean (Keras redraws the others;
    the inverse CDF gives that distribution in one pass)."""
    fn = "truncated_normal"
    shape, dtype = _shape(fn, shape), _float_dtype(fn, dtype)
    mean, stddev = _finite(fn, "mean", mean), _finite(fn, "stddev", stddev)
    u = _unit_uniform(shape, dtype, seed, fn)
    p = _ops.add(_ops.multiply(u, _PHI_PLUS_2 - _PHI_MINUS_2), _PHI_MINUS_2)
    z = _ops.multiply(_ops.erfinv(_ops.subtract(_ops.multiply(p, 2.0), 1.0)), math.sqrt(2.0))
    z = _ops.clip(z, -2.0, 2.0)  # float32 rounding of p at the ends
    return _ops.add(_ops.multiply(z, stddev), mean)


def randint(shape, minval, maxval, dtype="int32", seed=None):
    """Integers in [minval, maxval)."""
    shape = _shape("randint", shape)
    if str(np.dtype(dtype)) not in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                    "uint32", "uint64"):
        raise ValueError(f"pynn.random.randint: dtype must be an integer type, got {dtype!r}")
    for name, v in (("minval", minval), ("maxval", maxval)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"pynn.random.randint: {name} must be an int, got {v!r}")
    if not maxval > minval:
        raise ValueError(f"pynn.random.randint: maxval must be > minval, got minval={minval}, "
                         f"maxval={maxval}")
    span = int(maxval) - int(minval)
    if span > 2**24:
        raise ValueError(f"pynn.random.randint: maxval - minval must be <= 2**24 (the float32 "
                         f"uniform it is drawn from resolves no more), got {span}")
    u = _unit_uniform(shape, "float32", seed, "randint")
    k = _ops.minimum(_ops.floor(_ops.multiply(u, float(span))), float(span - 1))
    return _ops.cast(_ops.add(k, float(minval)), dtype)


def dropout(inputs, rate, noise_shape=None, seed=None):
    """inputs * keep / (1 - rate), keep drawn by the dropout kernel (over ``noise_shape``,
    broadcast to the input, where given)."""
    x = _ops.convert_to_tensor(inputs)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"pynn.random.dropout: rate must be a number in [0, 1), got {rate!r}")
    shape = tuple(x.shape)
    if noise_shape is not None:
        noise_shape = tuple(shape[i] if d is None else d for i, d in enumerate(noise_shape)) \
            if len(tuple(noise_shape)) == len(shape) else tuple(noise_shape)
        if len(noise_shape) != len(shape) or any(d not in (1, s) for d, s in
                                                 zip(noise_shape, shape)):
            raise ValueError(f"pynn.random.dropout: noise_shape {noise_shape} must have the "
                             f"input's rank and, per axis, 1 or the input's size {shape}")
    be = backend.current()
    draw_shape = noise_shape if noise_shape is not None else shape
    key, offset = _draw("dropout", seed, math.prod(draw_shape))
    scale, _ = be.dropout_forward(be.full(draw_shape, 1.0, str(x.dtype)), float(rate), key,
                                  offset)
    return _ops.multiply(inputs, Tensor(scale))


def shuffle(x, axis=0, seed=None):
    """``x`` permuted along ``axis`` (an argsort of uniform keys)."""
    t = _ops.convert_to_tensor(x)
    if t.ndim == 0:
        raise ValueError("pynn.random.shuffle: x must have at least one axis, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -t.ndim <= axis < t.ndim:
        raise ValueError(f"pynn.random.shuffle: axis must be an int in [-{t.ndim}, {t.ndim}), "
                         f"got {axis!r}")
    n = t.shape[axis]
    keys = _unit_uniform((n,), "float32", seed, "shuffle")
    order = _ops.argsort(keys)
    return _ops.take(t, order, axis=axis)


def categorical(logits, num_samples, dtype="int32", seed=None):
    """(batch, num_samples) class ids drawn from softmax(logits) of each row: the argmax of
    logits plus Gumbel noise -log(-log(u))."""
    lg = _ops.convert_to_tensor(logits)
    if lg.ndim != 2:
        raise ValueError(f"pynn.random.categorical: logits must be 2-D (batch, classes), got "
                         f"shape {tuple(lg.shape)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or \
            num_samples < 1:
        raise ValueError(f"pynn.random.categorical: num_samples must be a positive int, got "
                         f"{num_samples!r}")
    batch, classes = lg.shape
    dt = str(lg.dtype) if str(lg.dtype) in ("float32", "float64") else _config.floatx()
    u = _unit_uniform((batch, int(num_samples), classes), dt, seed, "categorical")
    tiny = float(np.finfo(dt).tiny)
    gumbel = _ops.negative(_ops.log(_ops.negative(_ops.log(_ops.maximum(u, tiny)))))
    scores = _ops.add(_ops.expand_dims(_ops.cast(lg, dt), 1), gumbel)
    return _ops.cast(_ops.argmax(scores, axis=-1), dtype)


def _host_generator(fn, seed, count):
    key, offset = _draw(fn, seed, count)
    bits = np.random.Philox(key=key)
    bits.advance(offset)
    return np.random.Generator(bits)


def _positive_values(fn, name, v, shape):
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"pynn.random.{fn}: {name} must be positive and finite, got {v!r}")
    try:
        return np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"pynn.random.{fn}: {name} of shape {a.shape} does not broadcast to "
                         f"shape {shape}") from None


def _to_device(a, dtype):
    return _ops.convert_to_tensor(np.ascontiguousarray(a, dtype=dtype))


def gamma(shape, alpha, dtype=None, seed=None):
    shape, dtype = _shape("gamma", shape), _float_dtype("gamma", dtype)
    a = _positive_values("gamma", "alpha", alpha, shape)
    return _to_device(_host_generator("gamma", seed, math.prod(shape)).gamma(a), dtype)


def beta(shape, alpha, beta, dtype=None, seed=None):
    shape, dtype = _shape("beta", shape), _float_dtype("beta", dtype)
    a = _positive_values("beta", "alpha", alpha, shape)
    b = _positive_values("beta", "beta", beta, shape)
    return _to_device(_host_generator("beta", seed, 2 * math.prod(shape)).beta(a, b), dtype)


def binomial(shape, counts, probabilities, dtype=None, seed=None):
    """Successes of ``counts`` trials with success probability ``probabilities`` (Keras
    returns them in a float dtype)."""
    shape, dtype = _shape("binomial", shape), _float_dtype("binomial", dtype)
    c = np.asarray(counts, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c != np.floor(c)):
        raise ValueError(f"pynn.random.binomial: counts must be non-negative whole numbers, "
                         f"got {counts!r}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"pynn.random.binomial: probabilities must be in [0, 1], got "
                         f"{probabilities!r}")
    try:
        c, p = np.broadcast_to(c, shape), np.broadcast_to(p, shape)
    except ValueError:
        raise ValueError(f"pynn.random.binomial: counts and probabilities must broadcast to "
                         f"shape {shape}") from None
    draws = _host_generator("binomial", seed, math.prod(shape)).binomial(c.astype(np.int64), p)
    return _to_device(draws, dtype)
