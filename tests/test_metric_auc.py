"""AUC's multi_label, num_labels and from_logits against Keras 3 over both backends (the
cases of tests/test_metric.py's NEW_METRIC_CASES, run through its helpers)."""

import json

import numpy as np
import pytest

from pynn import metrics
from tests.test_metric import _batches, _keras_metrics

AUC_CASES = [
    {"multi_label": True},
    {"multi_label": True, "num_labels": 2, "curve": "PR"},
    {"multi_label": True, "from_logits": True, "summation_method": "minoring"},
    {"from_logits": True, "curve": "PR", "num_thresholds": 31},
]


@pytest.mark.parametrize("kwargs", AUC_CASES, ids=[str(k) for k in AUC_CASES])
def test_auc_options_match_keras(backend, monkeypatch, kwargs):
    import pynn.backend

    keras = _keras_metrics()
    monkeypatch.setattr(pynn.backend, "current", lambda: backend.ops)
    rng = np.random.default_rng(len(kwargs))
    mine, theirs = metrics.AUC(**kwargs), keras.metrics.AUC(**kwargs)
    for y_true, y_pred in _batches(rng, "auc"):
        if kwargs.get("from_logits"):
            y_pred = (y_pred - 0.5) * 6
        mine.update_state(backend.up(y_true), backend.up(y_pred))
        theirs.update_state(y_true, y_pred)
        np.testing.assert_allclose(mine.result(), keras.ops.convert_to_numpy(theirs.result()),
                                   rtol=2e-6, atol=1e-7, err_msg=str(kwargs))
    again = metrics.get(json.loads(json.dumps(metrics.serialize(mine))))
    assert again.get_config() == mine.get_config()
    mine.reset_state()
    assert mine.result() == 0.0


def test_auc_multi_label_bad_inputs():
    auc = metrics.AUC(multi_label=True, num_labels=3)
    with pytest.raises(ValueError, match=r"auc: y_pred has 2 labels, expected 3"):
        auc.update_state(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"multi_label wants y_true and y_pred of one shape"):
        auc.update_state(np.zeros((4, 3)), np.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match=r"AUC: `num_labels` must be an int >= 1"):
        metrics.AUC(multi_label=True, num_labels=0)
