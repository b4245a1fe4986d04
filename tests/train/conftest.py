"""Shared fixtures: a small synthetic corpus (CSV) and the tiny config pointed at it."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

CLASS_WORDS = {
    "sport": ["goal", "match", "team", "coach", "league"],
    "money": ["bank", "shares", "profit", "market", "tax"],
    "film": ["actor", "movie", "scene", "director", "plot"],
}
FILLER = [f"w{i}" for i in range(60)]


def write_synthetic_corpus(path: Path, num_texts: int = 480, seed: int = 0) -> Path:
    """A 3-class CSV (text,label): filler words plus 1-3 words typical of the class."""
    rng = np.random.default_rng(seed)
    names = sorted(CLASS_WORDS)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(num_texts):
            label = names[i % len(names)]
            length = int(rng.integers(4, 30))
            words = list(rng.choice(FILLER, size=length))
            for _ in range(int(rng.integers(2, 6))):
                words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(CLASS_WORDS[label]))
            writer.writerow([f"{' '.join(words)} n{i}", label])
    return path


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus") / "synthetic.csv")


def load_config_file(name: str):
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", ROOT / "configs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def tiny_config(synthetic_corpus, tmp_path):
    """configs/tiny.py on the synthetic corpus, cached data under tmp_path."""
    config = load_config_file("tiny")
    config.data.corpus = str(synthetic_corpus)
    config.data.max_len = 48
    config.data.min_freq = 1
    config.data.smallest_bucket = 48  # one bucket: one compilation per step function
    config.optim.learning_rate = 0.05
    config.train.eval_batch_size = 64
    config.train.batch_size = 16
    return config


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> Path:
    """A persistent XLA compilation cache shared by this session's runs and subprocesses: the
    same step compiled again (another Trainer, a resumed run) is read back, not recompiled."""
    import jax

    path = tmp_path_factory.getbasetemp() / "xla-cache"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch, compilation_cache):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(compilation_cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # encoded caches of the synthetic corpus go to a temporary directory, never ~/.cache
    monkeypatch.setenv("JAXNN_DATA_DIR", str(tmp_path_factory.getbasetemp() / "jaxnn-data"))
