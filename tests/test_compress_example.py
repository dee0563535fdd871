"""python -m pynn.examples.compress (issue 18) in its fast mode: every row of the table is
there and says what it claims (zeros, parameter counts, compressed files); the accuracy
targets need the default epochs (bench numbers in the README), not the fast mode's."""

import pytest

pytest.importorskip("sklearn")

from pynn.examples import compress


def test_compress_example_fast_table(capsys):
    rows = compress.main(["--fast"])
    text = capsys.readouterr().out
    names = [r[0] for r in rows]
    assert names == ["float32", "pruned 80% unstructured", "float16 storage",
                     "int8 post-training",
                     "int8 model.quantize", "int8 QAT",
                     "pruned 95% (sparse kernels)",
                     "structured 50% filters", "student alone", "distilled student (1/8)"]
    for name in names:
        assert name in text
    table = {r[0]: r for r in rows}
    _, params, zeros, acc, size, t1, t64 = table["float32"]
    assert zeros == 0 and 0.0 <= acc <= 1.0 and t1 > 0 and t64 > 0
    # Unstructured pruning: the same parameters, 80% zeros, a file under a third of the size.
    assert table["pruned 80% unstructured"][1] == params
    assert table["pruned 80% unstructured"][2] == pytest.approx(0.8, abs=0.01)
    assert table["pruned 80% unstructured"][4] < 0.35 * size
    assert table["pruned 95% (sparse kernels)"][2] == pytest.approx(0.95, abs=0.01)
    # float16 storage: the float model's numbers from a file of half the size.
    assert table["float16 storage"][1] == params
    assert table["float16 storage"][3] == pytest.approx(acc, abs=0.01)
    assert table["float16 storage"][4] < 0.55 * size
    # int8: the same parameter count, files of int8 weights plus per-channel scales.
    for name in ("int8 post-training", "int8 model.quantize", "int8 QAT"):
        assert table[name][4] < 0.35 * size, name
    # Structured: a genuinely smaller model; the student: at most 1/8 of the parameters.
    assert table["structured 50% filters"][1] < 0.5 * params
    assert table["distilled student (1/8)"][1] <= params / 8
    assert table["student alone"][1] == table["distilled student (1/8)"][1]
