"""Keras 3's ScheduleFreeAdamW: schedule_free_adamw_update (native/optim.pyx, opencl/optim.cl)
against its float64 reference over several steps on both backends, pruning masks, bad
arguments, Keras parity of the optimizer over several steps, and Keras files (compile config
and optimizer variables) both ways.

Keras 3.15 reads ``momentum_old = momentum.value`` before ``assign_sub(momentum, ...)``; on
its torch backend that assignment is in place, so ``momentum_old`` is the *new* z and x is
recovered from the wrong z from the second step on (on JAX and TensorFlow it is the old z, as
in the schedule-free algorithm). pynn follows the algorithm; the parity test runs Keras's own
update_step on torch with the momentum assigned out of place, and checks the first step (where
the two readings agree, 1/t being 1) against unmodified Keras."""

import numpy as np
import pytest

import pynn
from pynn import optimizers
from tests.backend_util import keras_on_torch
from tests.reference import optim_ref as ref


@pytest.fixture
def rng():
    return np.random.default_rng(11)


CASES = [  # (shape, lr, beta_1, beta_2, epsilon, warmup_steps, grad_scale, clipvalue, decay)
    ((7,), 0.0025, 0.9, 0.999, 1e-8, 0, 1.0, 0.0, 0.0),
    ((31, 3), 0.01, 0.8, 0.95, 1e-7, 3, 0.5, 0.3, 0.1),
    ((65, 33), 0.003, 0.95, 0.99, 1e-6, 10, 1.3, 0.0, 0.004),
]


def _run(update, up, down, w0, grads, z0, v0, params, mask=None):
    shape, lr, b1, b2, eps, warmup, scale, clip, decay = params
    w, z, v = up(w0.copy()), up(z0.copy()), up(v0.copy())
    for t, g in enumerate(grads, 1):
        if mask is None:
            update(w, up(g), z, v, lr, b1, b2, eps, t, warmup, scale, clip, decay)
        else:
            update(w, up(g), z, v, lr, b1, b2, eps, t, warmup, scale, clip, decay, mask=mask)
    return down(w), down(z), down(v)


@pytest.mark.parametrize("params", CASES, ids=lambda p: "x".join(map(str, p[0])))
def test_update_matches_reference(backend, rng, params):
    shape = params[0]
    w0 = rng.uniform(-1, 1, shape).astype(np.float32)
    z0 = (w0 + rng.uniform(-0.2, 0.2, shape)).astype(np.float32)   # z apart from y
    v0 = rng.uniform(0, 0.1, shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(5)]
    got = _run(backend.ops.schedule_free_adamw_update, backend.up, backend.down, w0, grads,
               z0, v0, params)
    w, z, v = w0.astype(np.float64), z0.astype(np.float64), v0.astype(np.float64)
    for t, g in enumerate(grads, 1):
        w, z, v = ref.schedule_free_adamw_update_ref(w, g, z, v, *params[1:5], t, params[5],
                                                     *params[6:])
    for name, a, b in zip("wzv", got, (w, z, v)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name)


def test_update_float64_and_threads(rng, num_threads):
    from pynn._native import optim

    params = CASES[1]
    shape = (40000,)   # above the kernels' parallel threshold
    w0 = rng.uniform(-1, 1, shape)
    z0, v0 = w0 + rng.uniform(-0.2, 0.2, shape), rng.uniform(0, 0.1, shape)
    grads = [rng.standard_normal(shape) for _ in range(4)]
    got = _run(optim.schedule_free_adamw_update, np.asarray, np.asarray, w0, grads, z0, v0,
               params)
    w, z, v = w0, z0, v0
    for t, g in enumerate(grads, 1):
        w, z, v = ref.schedule_free_adamw_update_ref(w, g, z, v, *params[1:5], t, params[5],
                                                     *params[6:])
    for a, b in zip(got, (w, z, v)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.opencl
def test_opencl_matches_cpu(rng):
    from pynn.backend import cpu
    from tests.backend_util import make_backend

    ocl = make_backend("opencl")
    params = CASES[2]
    shape = params[0]
    w0 = rng.uniform(-1, 1, shape).astype(np.float32)
    z0, v0 = w0.copy(), np.zeros(shape, np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    mask = (rng.uniform(size=shape) > 0.3).astype(np.uint8)
    want = _run(cpu.schedule_free_adamw_update, np.asarray, np.asarray, w0, grads, z0, v0,
                params, mask=mask)
    got = _run(ocl.ops.schedule_free_adamw_update, ocl.up, ocl.down, w0, grads, z0, v0,
               params, mask=ocl.up(mask, np.uint8))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mask_pins_pruned_elements(rng):
    from pynn.backend import cpu

    shape = (9, 5)
    w0 = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = (rng.uniform(size=shape) > 0.4).astype(np.uint8)
    w0 *= mask
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    w, z, v = _run(cpu.schedule_free_adamw_update, np.asarray, np.asarray, w0, grads,
                   w0.copy(), np.zeros(shape, np.float32), CASES[0], mask=mask)
    for a in (w, z, v):
        assert np.all(a[mask == 0] == 0) and np.any(a[mask == 1] != 0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(beta_1=0.0), ValueError, "'beta_1' must be > 0"),
    (dict(beta_2=1.0), ValueError, "'beta_2' must be in"),
    (dict(t=0), ValueError, "'t' must be an int >= 1"),
    (dict(warmup_steps=-1), ValueError, "'warmup_steps' must be an int >= 0"),
    (dict(warmup_steps=2.5), ValueError, "'warmup_steps' must be an int >= 0"),
    (dict(z=None), ValueError, "slots 'z' and 'v' are required, got z=NoneType"),
    (dict(g=np.ones(4, np.float32)), ValueError, "'g' must have the shape of 'w'"),
    (dict(v=np.zeros((3, 2), np.float32)), ValueError, "'v'"),
])
def test_bad_operands(backend, kwargs, error, match):
    args = dict(w=np.ones((3, 3), np.float32), g=np.ones((3, 3), np.float32),
                z=np.ones((3, 3), np.float32), v=np.zeros((3, 3), np.float32), lr=0.01,
                beta_1=0.9, beta_2=0.999, epsilon=1e-8, t=1, warmup_steps=0, grad_scale=1.0,
                clipvalue=0.0, weight_decay=0.0)
    args.update(kwargs)
    args = {k: backend.up(a) for k, a in args.items()}
    with pytest.raises(error, match=f"schedule_free_adamw_update: .*{match}"):
        backend.ops.schedule_free_adamw_update(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta_1=0.0), "`beta_1` must be > 0"),
    (dict(warmup_steps=-2), "`warmup_steps` must be an int >= 0"),
    (dict(warmup_steps=True), "`warmup_steps` must be an int >= 0"),
])
def test_bad_optimizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"ScheduleFreeAdamW: {match}"):
        optimizers.ScheduleFreeAdamW(**kwargs)


def _keras_out_of_place(keras):
    class OutOfPlace(keras.optimizers.ScheduleFreeAdamW):
        """Keras's update_step with z assigned out of place, so that its momentum_old is
        the old z on torch too (see the module docstring)."""

        def assign_sub(self, variable, value):
            if any(variable is m for m in self._momentums):
                variable._value = (variable._value - value).detach()
            else:
                super().assign_sub(variable, value)
    return OutOfPlace


@pytest.mark.parametrize("kw", [{}, dict(learning_rate=0.01, warmup_steps=3, weight_decay=0.05,
                                         beta_1=0.8, clipvalue=0.5)])
def test_matches_keras_over_several_steps(rng, kw):
    keras = keras_on_torch()
    import torch

    shapes = [(5, 3), (3,), (2, 7, 4)]
    w0 = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    variables = [pynn.variables.Variable(w.copy(), f"w{i}") for i, w in enumerate(w0)]
    opt = optimizers.ScheduleFreeAdamW(**kw)
    for grads in steps:
        opt.apply_gradients(zip(grads, variables))
    for cls, n_steps in ((_keras_out_of_place(keras), 6), (keras.optimizers.ScheduleFreeAdamW, 1)):
        k_vars = [keras.Variable(w.copy()) for w in w0]
        k_opt = cls(**kw)
        for grads in steps[:n_steps]:
            k_opt.apply_gradients([(torch.tensor(g), v) for g, v in zip(grads, k_vars)])
        if n_steps == 1:
            p_vars = [pynn.variables.Variable(w.copy(), f"w{i}") for i, w in enumerate(w0)]
            p_opt = optimizers.ScheduleFreeAdamW(**kw)
            p_opt.apply_gradients(zip(steps[0], p_vars))
        else:
            p_vars, p_opt = variables, opt
        for p, k in zip(p_vars, k_vars):
            np.testing.assert_allclose(p.numpy(), k.numpy(), rtol=1e-5, atol=1e-6)
        slots = p_opt.get_state()["slots"]
        for p, km, kv in zip(p_vars, k_opt._momentums, k_opt._velocities):
            np.testing.assert_allclose(slots[f"{p.path}/momentum"], km.numpy(), rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(slots[f"{p.path}/velocity"], kv.numpy(), rtol=1e-5,
                                       atol=1e-9)
    assert opt.get_config()["warmup_steps"] == kw.get("warmup_steps", 0)


@pytest.mark.parametrize("first", ["keras", "pynn"])
def test_keras_files_carry_compile_config_and_variables(tmp_path, first):
    keras = keras_on_torch()
    one, other = (keras, pynn) if first == "keras" else (pynn, keras)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 2))
    model = one.Sequential([one.Input((3,)), one.layers.Dense(4, activation="tanh"),
                            one.layers.Dense(2)])
    model.compile(optimizer=one.optimizers.ScheduleFreeAdamW(0.01, warmup_steps=4), loss="mse")
    for _ in range(3):
        model.train_on_batch(x, y.astype(np.float32))
    model.save(tmp_path / "m.keras")
    load = keras.saving.load_model if other is keras else pynn.load_model
    loaded = load(tmp_path / "m.keras")
    assert type(loaded.optimizer).__name__ == "ScheduleFreeAdamW"
    assert loaded.optimizer.get_config()["warmup_steps"] == 4
    assert int(np.asarray(loaded.optimizer.iterations)) == 3

    def slots(m):
        if m is model and one is pynn or m is loaded and other is pynn:
            state = m.optimizer.get_state()["slots"]
            return [np.asarray(state[f"{w.path}/{n}"]) for n in ("momentum", "velocity")
                    for w in m.trainable_weights]
        return [v.numpy() for v in m.optimizer._momentums + m.optimizer._velocities]
    for a, b in zip(slots(model), slots(loaded)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_untrained_model_file_starts_z_at_the_weights(tmp_path):
    """Saved before any step, the file's momentum is the weights (Keras's build), not 0."""
    keras = keras_on_torch()
    model = pynn.Sequential([pynn.Input((3,)), pynn.layers.Dense(2)])
    model.compile(optimizer=optimizers.ScheduleFreeAdamW(), loss="mse")
    model.save(tmp_path / "u.keras")
    loaded = keras.saving.load_model(tmp_path / "u.keras")
    for k_m, w in zip(loaded.optimizer._momentums, model.get_weights()):
        np.testing.assert_array_equal(k_m.numpy(), np.asarray(w))
    x, y = np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)
    loaded.train_on_batch(x, y)
    model.train_on_batch(x, y)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
