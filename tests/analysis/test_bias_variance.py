"""jaxnn/analysis/bias_variance.py: the decomposition against a NumPy transcription, bootstrap
resamples, bad configs, and the under/overfitting table on a problem with a known answer."""

import math

import ml_collections
import numpy as np
import pytest

from jaxnn.analysis.bias_variance import (
    bootstrap_weights,
    decompose,
    markdown,
    split_config,
    sweep,
    write_outputs,
)
from jaxnn.analysis.synthetic import xor_corpus
from jaxnn.data import prepare
from jaxnn.train.config import base_config


def transcription(probs, labels):
    """The formulas, one example and one model at a time (independent of decompose's vectors)."""
    k, n, c = probs.shape
    bias2 = variance = expected = 0.0
    for i in range(n):
        y = [1.0 if j == labels[i] else 0.0 for j in range(c)]
        mean = [sum(probs[m, i, j] for m in range(k)) / k for j in range(c)]
        variance += (
            sum(sum((probs[m, i, j] - mean[j]) ** 2 for j in range(c)) for m in range(k)) / k
        )
        bias2 += sum((mean[j] - y[j]) ** 2 for j in range(c))
        expected += sum(sum((probs[m, i, j] - y[j]) ** 2 for j in range(c)) for m in range(k)) / k
    return bias2 / n, variance / n, expected / n


def test_decompose_matches_the_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 3, 7)
    out = decompose(probs, labels)
    bias2, variance, expected = transcription(probs, labels)
    assert out["bias2"] == pytest.approx(bias2, rel=1e-12)
    assert out["variance"] == pytest.approx(variance, rel=1e-12)
    assert out["expected_loss"] == pytest.approx(expected, rel=1e-12)
    assert out["expected_loss"] == pytest.approx(out["bias2"] + out["variance"], rel=1e-12)
    errors = [np.mean(probs[m].argmax(-1) != labels) for m in range(5)]
    assert out["error"] == pytest.approx(np.mean(errors))


def test_decompose_by_hand_and_edge_cases():
    # Two models on one example of class 0: mean (0.6, 0.4); variance 0.08; bias² 0.32.
    probs = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    out = decompose(probs, np.array([0]))
    assert out["variance"] == pytest.approx(0.08)
    assert out["bias2"] == pytest.approx(0.32)
    assert out["expected_loss"] == pytest.approx(0.40)
    assert out["error"] == 0.5 and out["ensemble_error"] == 0.0
    single = decompose(probs[:1], np.array([0]))
    assert single["variance"] == 0.0  # one model: no spread
    with pytest.raises(ValueError, match=r"\[K, N, C\]"):
        decompose(probs[0], np.array([0]))
    with pytest.raises(ValueError, match="labels must be in"):
        decompose(probs, np.array([2]))


def test_bootstrap_resamples():
    w = bootstrap_weights(50, 400, seed=3)
    assert w.shape == (50, 400) and w.dtype == np.float32
    np.testing.assert_array_equal(w.sum(1), 400)  # each resample draws N examples
    assert np.all(w == np.round(w)) and w.min() >= 0
    # P(an example is never drawn) = (1 - 1/N)^N ≈ e^-1
    assert np.mean(w == 0) == pytest.approx(math.exp(-1), abs=0.02)
    np.testing.assert_array_equal(w, bootstrap_weights(50, 400, seed=3))
    assert not np.array_equal(w, bootstrap_weights(50, 400, seed=4))


def analysis_config(**analysis):
    cfg = base_config()
    cfg.data.max_len = 16
    cfg.data.sort_pool = 0
    cfg.analysis = ml_collections.ConfigDict(
        {"capacity_param": "hidden_size", "capacities": [0, 8], "num_models": 4, **analysis}
    )
    return cfg


@pytest.mark.parametrize(
    "analysis, match",
    [
        ({"capacity_param": "depth"}, "capacity_param='depth'"),
        ({"capacities": []}, "non-empty list"),
        ({"capacities": [0.5]}, "non-empty list"),
        ({"capacity_param": "embed_dim", "capacities": [0, 4]}, "ints >= 1"),
        ({"num_models": 1}, "num_models=1"),
        ({"colour": 1}, "unknown analysis keys"),
    ],
)
def test_bad_analysis_config_is_refused(analysis, match):
    with pytest.raises(ValueError, match=match):
        split_config(analysis_config(**analysis))


XOR = {
    "num_train": 300,
    "num_validation": 400,
    "neutral": 10,
    "length": 6,
    "groups": 3,
    "noise": 0.1,
    "seed": 0,
}


@pytest.fixture(scope="module")
def table():
    """Under- vs overfitting measured: a linear head (cannot express XOR) vs a wide unregularized
    MLP."""
    data = prepare(xor_corpus(**XOR), max_len=16, cache=False)
    cfg = analysis_config(capacities=[0, 256], num_models=8, seed=0)
    cfg.model.embed_dim = 16
    cfg.model.dropout = 0.0
    cfg.optim.weight_decay = 0.0
    cfg.optim.learning_rate = 1e-2
    cfg.optim.schedule = "constant"
    cfg.train.batch_size = 16
    cfg.train.num_epochs = 24
    cfg.train.eval_batch_size = 512
    return sweep(cfg, data)


def test_small_model_high_bias_low_variance_large_model_the_reverse(table):
    last = {r["capacity"]: r for r in table["rows"] if r["epoch"] == table["num_epochs"]}
    small, large = last[0], last[256]
    assert small["bias2"] > 1.5 * large["bias2"]  # underfitting: high bias
    assert small["variance"] < 0.5 * large["variance"]  # ... and low variance
    assert large["train_error"] < 0.5 * small["train_error"]  # the large one fits train
    assert large["error"] < small["error"] - 0.15  # ... and XOR, which a linear head cannot
    for row in table["rows"]:
        assert row["expected_loss"] == pytest.approx(row["bias2"] + row["variance"], rel=1e-9)


def test_early_stopping_point_and_outputs(table, tmp_path):
    for capacity, epoch in table["early_stopping"].items():
        curve = [r for r in table["rows"] if r["capacity"] == int(capacity)]
        assert epoch == min(curve, key=lambda r: (r["error"], r["epoch"]))["epoch"]
    best = table["best"]
    stopped = [
        r for r in table["rows"] if r["epoch"] == table["early_stopping"][str(r["capacity"])]
    ]
    assert best["error"] == min(r["error"] for r in stopped)
    write_outputs(table, tmp_path)
    assert (tmp_path / "bias_variance.png").stat().st_size > 1000
    text = (tmp_path / "bias_variance.md").read_text()
    assert text == markdown(table) and "| 256 |" in text
