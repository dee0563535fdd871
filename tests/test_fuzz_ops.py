"""Random pynn.ops expressions, seeded: GradientTape's gradients against central differences
(float64, CPU), and the same expression on OpenCL's device ops against the CPU's float32.

Each expression draws a few steps from elementwise, broadcasting, reducing, reshaping,
indexing and product ops (einsum, tensordot, matmul, take, stack, split, flip, moments,
normalize, where...) over one to three variables, then sums the square of the last value.
Found this way: ops.matmul of two vectors could not differentiate (a 0-d gradient expanded at
axis -2 first). A failure names the seed, which ``check_cpu`` / ``check_opencl`` reproduce.
"""

import numpy as np
import pytest

import pynn
from pynn import ops
from pynn.variables import Variable

BLOCKS, SEEDS_PER_BLOCK = 4, 50


def unary(rng, t):
    k = int(rng.integers(22))
    two_d = len(t.shape) == 2
    steps = [
        ops.tanh, ops.sigmoid, lambda v: ops.exp(ops.tanh(v)),
        lambda v: ops.log(ops.add(ops.square(v), 0.5)),
        lambda v: ops.sqrt(ops.add(ops.square(v), 0.5)), ops.softplus, ops.gelu, ops.silu,
        lambda v: ops.softmax(v, axis=-1), lambda v: ops.log_softmax(v, axis=-1),
        lambda v: ops.clip(v, -0.4, 0.6), lambda v: ops.flip(v, axis=0),
        lambda v: ops.abs(ops.add(v, 0.123)), ops.sin, lambda v: ops.multiply(v, 3.0),
        lambda v: ops.power(v, 3), ops.square,
        lambda v: ops.normalize(v, axis=-1) if two_d and v.shape[-1] > 1 else ops.negative(v),
        lambda v: ops.transpose(v) if two_d else ops.negative(v),
        lambda v: ops.expand_dims(ops.logsumexp(v, axis=1), 1) if two_d else ops.negative(v),
        lambda v: v[1:, :] if two_d and v.shape[0] > 1 else ops.negative(v),
        lambda v: (ops.take(v, np.array([0, 0, v.shape[1] - 1]), axis=1) if two_d
                   else ops.negative(v)),
    ]
    return steps[k](t)


def binary(rng, a, b):
    k = int(rng.integers(10))
    if tuple(a.shape) != tuple(b.shape):
        if len(a.shape) == 2 and len(b.shape) == 2 and a.shape[1] == b.shape[1]:
            return ops.matmul(a, ops.transpose(b))
        return ops.add(a, ops.mean(b))
    two_d = len(a.shape) == 2
    if k == 1:
        return ops.subtract(a, b)
    if k == 2:
        return ops.multiply(a, b)
    if k == 3:
        return ops.maximum(a, b)
    if k == 4:
        return ops.divide(a, ops.add(ops.square(b), 0.5))
    if k == 5:
        return ops.where(ops.greater(a, b), a, ops.multiply(b, 0.3))
    if k == 6 and two_d:
        return ops.einsum("ij,kj->ik", a, b)
    if k == 7 and two_d:
        return ops.tensordot(a, b, axes=([1], [1]))
    if k == 8 and two_d:
        return ops.concatenate([a, b], axis=0)
    if k == 9 and len(a.shape) == 1:
        return ops.multiply(ops.matmul(a, b), a)  # two vectors: a 0-d product
    return ops.add(a, b)


def reduce(rng, t):
    k = int(rng.integers(8))
    axis = int(rng.integers(len(t.shape))) if len(t.shape) else None
    two_d = len(t.shape) == 2
    if k == 0:
        return ops.sum(t, axis=axis, keepdims=True)
    if k == 1:
        return ops.mean(t, axis=axis, keepdims=True)
    if k == 2:
        return ops.max(t, axis=axis, keepdims=True)
    if k == 3:
        return ops.var(t, axis=axis, keepdims=True)
    if k == 4:
        # std's gradient where the deviation is 0 (one element, a clipped or normalized
        # constant) is 0/0, NaN as TF's and torch's: its square root is checked by sqrt
        return ops.add(ops.var(t, axis=axis, keepdims=True), ops.mean(t))
    if k == 5 and axis is not None:
        mean, var = ops.moments(t, axes=[axis], keepdims=True)
        return ops.add(mean, var)
    if k == 6 and two_d:
        return ops.stack([t, ops.square(t)], axis=0)[1]
    if k == 7 and two_d and t.shape[1] % 2 == 0:
        return ops.split(t, 2, axis=1)[0]
    if k == 7 and two_d:
        return ops.reshape(t, (-1,))
    return ops.prod(ops.add(ops.multiply(t, 0.1), 1.0), axis=axis, keepdims=True)


def expression(seed, leaves):
    """sum(last ** 2) of a random chain of steps over ``leaves`` (the same for a seed)."""
    rng = np.random.default_rng([seed, 1])
    pool = list(leaves)
    for _ in range(int(rng.integers(2, 9))):
        kind = int(rng.integers(3))
        a = pool[int(rng.integers(len(pool)))]
        if kind == 0:
            pool.append(unary(rng, a))
        elif kind == 1:
            pool.append(binary(rng, a, pool[int(rng.integers(len(pool)))]))
        else:
            pool.append(reduce(rng, a))
    return ops.sum(ops.square(pool[-1]))


def leaves_of(seed, dtype):
    """One to three variables of one shape: a matrix, or a vector (vectors meet matmul's
    0-d products)."""
    rng = np.random.default_rng([seed, 0])
    rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    shape = (rows, cols) if rng.integers(3) else (cols,)
    b = pynn.backend.current()
    return [Variable(b.asarray(rng.uniform(-1, 1, shape).astype(dtype), dtype), f"v{i}")
            for i in range(int(rng.integers(1, 4)))]


def value_and_gradients(seed, dtype):
    leaves = leaves_of(seed, dtype)
    with pynn.GradientTape() as tape:
        y = expression(seed, leaves)
    grads = tape.gradient(y, leaves)
    grads = [np.zeros(v.shape) if g is None else np.asarray(g.numpy(), np.float64)
             for v, g in zip(leaves, grads)]
    return float(np.asarray(y.numpy())), grads, leaves


def check_cpu(seed):
    """float64 gradients against central differences (two steps: a kink within 1e-4 of a
    value bends the longer one; the closer estimate is kept)."""
    _, grads, leaves = value_and_gradients(seed, np.float64)
    for v, g in zip(leaves, grads):
        flat = v.value.reshape(-1)
        for i in range(flat.size):
            old, estimates = flat[i], []
            for h in (1e-4, 1e-6):
                flat[i] = old + h
                plus = float(expression(seed, leaves).numpy())
                flat[i] = old - h
                minus = float(expression(seed, leaves).numpy())
                flat[i] = old
                estimates.append((plus - minus) / (2 * h))
            want = g.reshape(-1)[i]
            assert min(abs(e - want) for e in estimates) <= 1e-5 * max(1.0, abs(want)), \
                f"seed {seed}: {v.path}[{i}] gradient {want}, central differences {estimates}"


def check_opencl(seed):
    """The expression and its gradients on OpenCL's device ops no further from float64 than
    the CPU's float32 ones (4x, plus 1e-5 of the largest value)."""
    y64, g64, _ = value_and_gradients(seed, np.float64)
    y32, g32, _ = value_and_gradients(seed, np.float32)
    previous = pynn.get_device()
    pynn.set_device("opencl")
    try:
        ycl, gcl, _ = value_and_gradients(seed, np.float32)
    finally:
        pynn.set_device(previous)
    for name, cl, cpu, ref in zip(["value"] + [f"gradient {i}" for i in range(len(g64))],
                                  [ycl] + gcl, [y32] + g32, [y64] + g64):
        cl, cpu, ref = (np.asarray(a, np.float64) for a in (cl, cpu, ref))
        scale = max(1.0, float(np.abs(ref).max()))
        err_cpu, err_cl = float(np.abs(cpu - ref).max()), float(np.abs(cl - ref).max())
        assert err_cl <= 4 * err_cpu + 1e-5 * scale, \
            f"seed {seed}: {name} on OpenCL {err_cl:.3g} from float64, the CPU {err_cpu:.3g}"


def seeds(block):
    return range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_tape_gradients_match_central_differences(block):
    for seed in seeds(block):
        check_cpu(seed)


@pytest.mark.opencl
@pytest.mark.parametrize("block", range(BLOCKS))
def test_device_ops_answer_as_the_cpus(block):
    for seed in seeds(block):
        check_opencl(seed)
