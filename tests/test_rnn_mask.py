"""The general recurrence ops (native/rnn_mask.pyx, opencl/rnn_mask.cl) against their float64
oracles (tests/reference/rnn_mask_ref.py): every cell, masks with rows fully, partly and not
masked, initial states, recurrent dropout, go_backwards, return_sequences and
zero_output_for_mask; lengths 1, 2, 7, 33, odd batches; OpenCL against the CPU; bad operands."""

import numpy as np
import pytest

from tests.backend_util import check_op, rand
from tests.reference.rnn_mask_ref import (
    GATES,
    recurrence_backward_ref,
    recurrence_forward_ref,
    sequence_reverse_ref,
    sequence_scale_ref,
)

CELLS = ["simple_rnn", "lstm", "gru", "gru_reset_before"]


def _operands(rng, cell, n, t, u, dtype=np.float64):
    g = GATES[cell] * u
    xw = rand(rng, (n, t, g), dtype)
    rk = (0.5 * rand(rng, (u, g), dtype)).astype(dtype)
    rb = rand(rng, (g,), dtype) if cell == "gru" else None
    h0 = rand(rng, (n, u), dtype)
    c0 = rand(rng, (n, u), dtype) if cell == "lstm" else None
    mask = (rng.random((n, t)) > 0.4).astype(dtype)
    mask[0] = 0  # fully masked
    if n > 1:
        mask[1] = 1  # unmasked
    rdrop = ((rng.random((n, g)) > 0.3) * 1.4).astype(dtype)
    return [xw, rk, rb, h0, c0, mask, rdrop]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("t", [1, 2, 7])
@pytest.mark.parametrize("return_sequences,go_backwards,zero_out",
                         [(True, False, False), (False, True, False), (True, True, True)])
def test_recurrence_gradients_match_finite_differences(cell, t, return_sequences,
                                                       go_backwards, zero_out):
    from pynn.backend import cpu

    rng = np.random.default_rng(t)
    args = _operands(rng, cell, 3, t, 3)
    opts = {"cell": cell, "return_sequences": return_sequences, "go_backwards": go_backwards,
            "zero_output_for_mask": zero_out}
    y, h, _, cache = cpu.recurrence_forward(*args, **opts)
    want_y, want_h, _ = recurrence_forward_ref(*args, **opts)
    np.testing.assert_allclose(y, want_y, atol=1e-12)
    np.testing.assert_allclose(h, want_h, atol=1e-12)
    dy, dh = rand(rng, y.shape), rand(rng, h.shape, np.float64)
    dc = rand(rng, h.shape, np.float64) if cell == "lstm" else None
    got = cpu.recurrence_backward(dy, dh, dc, args[1], cache, **opts)
    want = recurrence_backward_ref(dy, dh, dc, *args, **opts)
    for name, a, b in zip(("dxw", "drecurrent_kernel", "drecurrent_bias", "dh0", "dc0"),
                          got, want):
        if b is not None:
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"{cell} {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_recurrence_forward_and_backward_on_each_backend(backend, cell):
    rng = np.random.default_rng(11)
    n, t, u = 13, 33, 7  # 13: more rows than a block (8), the last block partial
    args = _operands(rng, cell, n, t, u, np.float32)
    opts = (cell, "tanh", "sigmoid", True, False, False)
    y, h, c, cache = backend.op("recurrence_forward")(*[backend.up(a) for a in args], *opts)
    want_y, want_h, want_c = recurrence_forward_ref(*args, cell=cell, return_sequences=True)
    np.testing.assert_allclose(backend.down(y), want_y, atol=2e-5)
    np.testing.assert_allclose(backend.down(h), want_h, atol=2e-5)
    if cell == "lstm":
        np.testing.assert_allclose(backend.down(c), want_c, atol=2e-5)
    dy = rand(rng, (n, t, u))
    got = backend.op("recurrence_backward")(backend.up(dy), None, None, backend.up(args[1]),
                                            cache, *opts)
    from pynn.backend import cpu

    _, _, _, cpu_cache = cpu.recurrence_forward(*args, *opts)
    want = cpu.recurrence_backward(dy, None, None, args[1], cpu_cache, *opts)
    for a, b in zip(got, want):
        if b is not None:
            np.testing.assert_allclose(backend.down(a), b, atol=1e-4)


def test_recurrence_float32_matches_float64_reference_with_length_33():
    from pynn.backend import cpu

    rng = np.random.default_rng(2)
    args = _operands(rng, "lstm", 3, 33, 6, np.float32)
    y, _, _, _ = cpu.recurrence_forward(*args, "lstm", return_sequences=True)
    want = recurrence_forward_ref(*args, cell="lstm", return_sequences=True)
    np.testing.assert_allclose(y, want[0], atol=2e-5)


def test_sequence_scale_and_reverse(backend):
    rng = np.random.default_rng(1)
    x, s = rand(rng, (3, 5, 7)), rand(rng, (3, 7))
    check_op(backend, "sequence_scale", x, s, ref=sequence_scale_ref)
    check_op(backend, "sequence_reverse", x, ref=sequence_reverse_ref)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_thread_count_does_not_change_results(cell):
    """The row blocks and the sequence passes run on pynn's worker team: 1, 2 and 3 threads
    give the same bits (each block steps its own rows; each sample is scaled or reversed
    alone), and the float64 references agree."""
    from pynn._native import info
    from pynn.backend import cpu

    rng = np.random.default_rng(5)
    args = _operands(rng, cell, 67, 9, 16, np.float32)
    dy = rand(rng, (67, 9, 16), np.float32)
    x, s = rand(rng, (67, 41, 29), np.float32), rand(rng, (67, 29), np.float32)
    runs = []
    before = info.get_max_threads()
    try:
        for n in (1, 2, 3):
            info.set_num_threads(n)
            y, h, c, cache = cpu.recurrence_forward(*args, cell, return_sequences=True)
            grads = cpu.recurrence_backward(dy, None, None, args[1], cache, cell,
                                            return_sequences=True)
            runs.append([y, h, *[g for g in grads if g is not None],
                         cpu.sequence_scale(x, s), cpu.sequence_reverse(x)])
    finally:
        info.set_num_threads(before)
    for other in runs[1:]:
        for want, got in zip(runs[0], other):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(runs[0][0], recurrence_forward_ref(
        *args, cell=cell, return_sequences=True)[0], atol=2e-5)
    np.testing.assert_allclose(runs[0][-2], sequence_scale_ref(x, s), rtol=1e-6)
    np.testing.assert_array_equal(runs[0][-1], sequence_reverse_ref(x))


@pytest.mark.parametrize("change,match", [
    ({"cell": "rnn"}, "cell must be one of"),
    ({"h0": None}, "h0 .* is required"),
    ({"c0": None}, "c0 .* is required for the lstm cell"),
    ({"mask": np.ones((2, 5), np.float32)}, "mask"),
    ({"recurrent_bias": np.zeros(12, np.float32)}, "only the 'gru' cell"),
])
def test_recurrence_forward_rejects_bad_operands(change, match):
    from pynn.backend import cpu

    rng = np.random.default_rng(0)
    xw, rk, _, h0, c0, mask, rd = _operands(rng, "lstm", 3, 4, 3, np.float32)
    kw = {"xw": xw, "recurrent_kernel": rk, "recurrent_bias": None, "h0": h0, "c0": c0,
          "mask": mask, "recurrent_dropout": rd, "cell": "lstm"}
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        cpu.recurrence_forward(**kw)


LAYERS = {"simple_rnn": ("SimpleRNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {}),
          "gru_reset_before": ("GRU", {"reset_after": False})}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("return_sequences,go_backwards,zero_out", [
    (False, False, False), (False, True, False), (False, False, True), (False, True, True),
    (True, False, False), (True, True, False), (True, False, True), (True, True, True)])
def test_one_masked_sample_runs_its_kept_steps_alone(cell, return_sequences, go_backwards,
                                                     zero_out):
    """A layer's inference call on one sample with a partial mask runs only the kept steps
    (pynn.layers.recurrent.unmasked_steps) and gives the masked recurrence's outputs: the
    float64 oracle's, every masked step its previous output or zeros as the options say;
    the last output the bits of the same sequence unpadded. Nothing or everything kept, a
    batch, and training keep the general ops."""
    import pynn
    from pynn.layers import recurrent

    kind, kw = LAYERS[cell]
    layer = getattr(pynn.layers, kind)(13, return_sequences=return_sequences,
                                       go_backwards=go_backwards, zero_output_for_mask=zero_out,
                                       **kw)
    rng = np.random.default_rng(7)
    x = rand(rng, (1, 9, 5), np.float32)
    layer(x)
    layer.set_weights([0.4 * rand(rng, w.shape, np.float32) for w in layer.get_weights()])
    kernel, rk, bias = (w.astype(np.float64) for w in layer.get_weights())
    xw = x.astype(np.float64) @ kernel + (bias[0] if cell == "gru" else bias)
    zeros = np.zeros((1, 13))
    for kept in ([3, 4, 5, 6, 7, 8], [0, 1, 2, 3], [0, 2, 3, 6, 8], [4], [8], [0]):
        mask = np.zeros((1, 9), bool)
        mask[0, kept] = True
        got = layer.call(x, mask=mask)
        want = recurrence_forward_ref(
            xw, rk, bias[1] if cell == "gru" else None, zeros,
            zeros if cell == "lstm" else None, mask, None, cell,
            return_sequences=return_sequences, go_backwards=go_backwards,
            zero_output_for_mask=zero_out)[0]
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"kept {kept}")
        last = mask[0, 0] if go_backwards else mask[0, -1]
        if not return_sequences and not (zero_out and not last):
            np.testing.assert_array_equal(got, layer.call(np.ascontiguousarray(x[:, kept])))
    # the general ops wherever the kept steps alone would not do
    assert recurrent.unmasked_steps(x, np.zeros((1, 9), bool)) is None
    assert recurrent.unmasked_steps(x, np.ones((1, 9), bool)) is None
    assert recurrent.unmasked_steps(np.concatenate([x, x]), np.ones((2, 9), bool)) is None
    assert recurrent.unmasked_steps(x, np.ones((1, 8), bool)) is None
    mask = np.zeros((1, 9), bool)
    mask[0, 2:5] = True
    used = []
    general = layer._call_general
    layer._call_general = lambda *a: used.append(a) or general(*a)
    try:
        layer.call(x, mask=np.zeros((1, 9), bool))
        layer.call(x, training=True, mask=mask)
        layer.backward(np.ones_like(layer.call(x, training=True, mask=mask)))
        assert len(used) == 3
    finally:
        del layer._call_general
