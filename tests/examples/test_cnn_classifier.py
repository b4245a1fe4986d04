"""examples/cnn_classifier.py: masked max pooling against NumPy, and a short run through
train_and_evaluate on a tiny synthetic CSV (the model found by its import path)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # as for train.py, whose folder (the repository root) is on it
    sys.path.insert(0, str(ROOT))

from examples import cnn_classifier  # noqa: E402
from jaxnn.models import get_model, resolve, supports_sparse_embeddings  # noqa: E402
from jaxnn.train import train_and_evaluate  # noqa: E402
from jaxnn.train.config import ConfigError, config_from_file, validate_config  # noqa: E402

CLASS_WORDS = {"sport": ["goal", "match", "team"], "money": ["bank", "shares", "profit"]}


def _np_masked_max(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros((h.shape[0], h.shape[2]), np.float32)
    for b in range(h.shape[0]):
        rows = h[b][mask[b]]
        if len(rows):
            out[b] = rows.max(axis=0)
    return out


def test_masked_max_pool_matches_numpy_with_padding_and_an_empty_row():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(4, 7, 5)).astype(np.float32) - 3.0  # all negative-ish: 0 would win
    h[0, 5:] = 100.0  # large values on padding positions must not win
    mask = np.ones((4, 7), bool)
    mask[0, 5:] = False
    mask[1, 1:] = False  # one real token
    mask[3] = False  # all padding
    got = cnn_classifier.masked_max_pool(jnp.asarray(h), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), _np_masked_max(h, mask), rtol=0, atol=0)
    assert np.all(np.asarray(got)[3] == 0.0)


def test_all_padding_row_has_finite_logits_and_zero_pool_gradient():
    model = cnn_classifier.CnnClassifier(vocab_size=20, num_classes=3, num_filters=8)
    tokens = jnp.array([[3, 4, 5, 0], [0, 0, 0, 0]], jnp.int32)
    mask = tokens > 0
    variables = model.init(jax.random.PRNGKey(0), tokens, mask, train=False)
    logits = model.apply(variables, tokens, mask, train=False)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    grad = jax.grad(lambda h: cnn_classifier.masked_max_pool(h, mask).sum())(
        jnp.ones((2, 4, 8))
    )
    assert bool(jnp.all(grad[1] == 0)) and bool(jnp.all(grad[0, 3] == 0))


def _write_csv(path, n=240, seed=0):
    rng = np.random.default_rng(seed)
    names = sorted(CLASS_WORDS)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "category"])  # not the default column names
        for i in range(n):
            label = names[i % 2]
            words = [f"w{j}" for j in rng.integers(0, 40, size=int(rng.integers(3, 12)))]
            words.insert(int(rng.integers(0, len(words))), str(rng.choice(CLASS_WORDS[label])))
            writer.writerow([" ".join(words) + f" n{i}", label])
    return path


def _config(corpus):
    config = config_from_file(cnn_classifier.__file__)
    config.data.corpus = str(corpus)
    config.data.text_column = "sentence"
    config.data.label_column = "category"
    config.data.max_len = 16
    config.data.min_freq = 1
    config.data.smallest_bucket = 16
    config.data.unk_warn_threshold = 1.0  # the n<i> tags are unknown outside train
    config.model.cnn.embed_dim = 16
    config.model.cnn.num_filters = 16
    config.model.dropout = 0.0
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 0
    config.train.batch_size = 16
    config.train.num_epochs = 3
    config.train.patience = 0
    config.train.log_every_steps = 5
    config.train.progress_bar = False
    return config


def test_the_config_names_the_class_by_import_path_and_validates_its_section():
    config = config_from_file(cnn_classifier.__file__)
    assert config.model.name == "examples.cnn_classifier:CnnClassifier"
    cfg = validate_config(config)
    assert cfg.model.hyperparameters() == cnn_classifier.CnnConfig()
    assert resolve(cfg.model.name).section == "cnn"
    model = get_model(cfg, vocab_size=30, num_classes=5)
    assert type(model).__qualname__ == "CnnClassifier"
    assert (model.kernel_size, model.num_filters, model.dropout_rate) == (3, 128, 0.2)
    assert not supports_sparse_embeddings(model)
    config.model.cnn.kernel_size = 0
    with pytest.raises(ConfigError, match=r"config\.model\.cnn\.kernel_size=0.*>= 1"):
        validate_config(config)


def test_trains_above_chance_through_train_and_evaluate(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JAXNN_DATA_DIR", str(tmp_path / "cache"))
    corpus = _write_csv(tmp_path / "mine.csv")
    config = _config(corpus)
    with caplog.at_level("INFO", logger="jaxnn.train"):
        results = train_and_evaluate(config, tmp_path / "run")
    dense_lines = [r for r in caplog.records if "sparse-embedding interface" in r.getMessage()]
    assert len(dense_lines) == 1  # optim.sparse_embeddings=True: dense updates, one line
    assert results["val"]["accuracy"] > 0.75  # 2 classes: chance is 0.5
    assert results["test"]["accuracy"] > 0.75
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["cnn"]["num_filters"] == 16


def test_the_file_loads_again_as_a_config_under_another_path_form(monkeypatch):
    """train.py loads a config file twice (its override check, then config_flags) and then
    imports the module by name: each run of its register() replaces the same class."""
    monkeypatch.chdir(ROOT)
    config_from_file("examples/cnn_classifier.py")
    config_from_file(ROOT / "examples" / "cnn_classifier.py")
    cfg = validate_config(config_from_file("examples/./cnn_classifier.py"))
    model = get_model(cfg, vocab_size=10, num_classes=2)
    assert type(model) is cnn_classifier.CnnClassifier  # the importable class is built
