"""python -m pynn.examples.augment in its fast mode: the PNG folder, both trainings, the grid,
and augmentation raising the accuracy on shifted / rotated test digits."""

from pynn.examples import augment


def test_augment_example_improves_accuracy_on_moved_digits(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = augment.main(["--fast", "--out", str(out), "--data", str(tmp_path / "digits")])
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "digits" / "3").glob("*.png"))) > 100
    scores = {}
    for line in text.splitlines():
        if "augmentation: test accuracy" in line:
            words = line.replace(",", " ").split()
            scores[line.startswith("with ")] = (float(words[4]), float(words[8]))
    assert set(scores) == {False, True}
    assert scores[True][0] > 0.8 and scores[False][0] > 0.8  # plain digits: both learn
    assert scores[True][1] > scores[False][1] + 0.1, scores  # moved digits: augmentation wins
    assert code == 0
