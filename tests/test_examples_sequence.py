"""The sequence examples (pynn/examples/forecast.py, text.py) at fast settings: the forecaster
beats both naive baselines and writes its PNG; the text classifier beats the majority class
by a wide margin. Their default epochs do better (150: RMSE ~23 against baselines ~50; 12:
~86% against 33%)."""

import numpy as np

from pynn.examples import forecast, text


def test_forecast_beats_the_baselines_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "forecast.png"
    code = forecast.main(["--epochs", "40", "--out", str(out)])
    lines = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = dict(part.rsplit(" ", 1) for part in
                  lines.split("values: ")[1].splitlines()[0].split(", "))
    lstm = float(scores["lstm"])
    assert lstm < 0.8 * min(float(scores["same as last step"]),
                            float(scores["same as one season ago"]))
    assert code == 0


def test_forecast_windows_are_relative_to_the_last_value():
    logs = np.log(np.asarray(forecast.AIR_PASSENGERS, np.float64))
    x, y = forecast.windows(logs, 13)
    assert x.shape == (131, 13, 1) and y.shape == (131, 1)
    np.testing.assert_allclose(x[5, :, 0], logs[5:18] - logs[17], atol=1e-6)
    np.testing.assert_allclose(y[5, 0], logs[18] - logs[17], atol=1e-6)
    assert len(forecast.AIR_PASSENGERS) == 144 and sum(forecast.AIR_PASSENGERS) == 40363


def test_text_classifier_learns(capsys):
    code = text.main(["--epochs", "4"])
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    majority = float(out.split("majority class ")[1].split(")")[0])
    assert accuracy > majority + 0.25
    assert code == 0


def test_text_corpus_and_model():
    sentences, labels, names = text.load_corpus()
    assert len(sentences) > 500 and len(set(sentences)) == len(sentences)
    assert set(labels.tolist()) == set(range(len(names)))
    model = text.build_model(50, 9, len(names))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Embedding", "LSTM", "Dense"] and model.layers[0].mask_zero
    ids = np.array([[0, 0, 3, 4, 5, 6, 7, 8, 9]], np.int32)
    probs = model.predict(ids, verbose=0)
    assert probs.shape == (1, len(names))
    np.testing.assert_allclose(probs.sum(), 1, rtol=1e-5)
