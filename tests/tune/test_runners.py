"""jaxnn/tune/runners.py: the real-data runner groups same-shape trials, tests on demand."""

import csv

import pytest

from jaxnn.analysis.synthetic import xor_corpus
from jaxnn.train.config import base_config
from jaxnn.tune.runners import VmappedTrialRunner, make_runner
from jaxnn.tune.space import apply_assignment


@pytest.fixture
def corpus_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNN_DATA_DIR", str(tmp_path / "cache"))  # keep the cache private
    corpus = xor_corpus(num_train=300, num_validation=100, neutral=10, length=6, groups=3, seed=2)
    path = tmp_path / "xor.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for split in (corpus.train, corpus.validation):
            for text, label in zip(split.texts, split.labels):
                writer.writerow([text, int(label)])
    return path


@pytest.mark.slow  # three compilations on real files; run with -m slow
def test_runner_groups_same_shape_trials_and_reports_validation_only(corpus_csv):
    cfg = base_config()
    cfg.data.corpus = str(corpus_csv)
    cfg.data.max_len = 16
    cfg.data.min_freq = 1
    cfg.data.sort_pool = 0
    cfg.model.embed_dim = 8
    cfg.model.hidden_size = 8
    cfg.train.batch_size = 32
    cfg.train.num_epochs = 2
    cfg.train.progress_bar = False
    configs = [
        apply_assignment(cfg, {"learning_rate": 1e-2}),
        apply_assignment(cfg, {"learning_rate": 3e-2, "weight_decay": 1e-4}),
        apply_assignment(cfg, {"hidden_size": 16}),  # another shape: its own program
    ]
    runner = VmappedTrialRunner()
    results = runner.run(configs)
    assert len(runner._trainers) == 2
    for result in results:
        assert result.status == "complete" and result.failure_reason is None
        assert [r["epoch"] for r in result.history] == [1, 2]
        for row in result.history:
            assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["val_macro_f1"] <= 1.0
            assert not any(key.startswith("test") for key in row)
    assert results[0].history != results[1].history  # each trial got its own hyperparameters
    test = runner.evaluate_test(configs[0])
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
    assert test["best_epoch"] in (1.0, 2.0)
    with pytest.raises(ValueError, match=r"tune\.engine='jit'"):
        make_runner("jit")


def test_fit_runner_trains_each_trial_through_jaxnn_train_and_tests_on_demand(corpus_csv):
    """The "fit" engine: every trial is an ordinary `jaxnn.train.fit` run of its own config."""
    cfg = base_config()
    cfg.data.corpus = str(corpus_csv)
    cfg.data.max_len = 16
    cfg.data.min_freq = 1
    cfg.model.embed_dim = 8
    cfg.train.batch_size = 32
    cfg.train.num_epochs = 1
    cfg.train.max_steps_per_epoch = 3
    configs = [apply_assignment(cfg, {"learning_rate": lr}) for lr in (1e-2, 3e-2)]
    runner = make_runner("fit")
    results = runner.run(configs)
    assert [r.status for r in results] == ["complete", "complete"]
    assert [[row["epoch"] for row in r.history] for r in results] == [[1], [1]]
    assert results[0].history[0]["train_loss"] != results[1].history[0]["train_loss"]
    assert not any(key.startswith("test") for r in results for key in r.history[0])
    test = runner.evaluate_test(configs[0])
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
