"""Fixtures of the fault tests: a small corpus, the tiny config on it (in-process runs), the
undisturbed reference runs (in-process and through train.py in a subprocess)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jaxnn.testing.faults import TINY_CHECKPOINT_EVERY, TINY_EPOCHS, TINY_STEPS_PER_EPOCH
from tests.train.conftest import load_config_file, write_synthetic_corpus

from .harness import run_train, train_args


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus") / "synthetic.csv", 240)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> Path:
    import jax

    path = tmp_path_factory.getbasetemp() / "xla-cache"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _set_environment(mp: pytest.MonkeyPatch, base: Path, cache: Path) -> None:
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # encoded caches of the synthetic corpus go to a temporary directory, never ~/.cache
    mp.setenv("JAXNN_DATA_DIR", str(base / "jaxnn-data"))


@pytest.fixture(autouse=True)
def _environment(tmp_path_factory, monkeypatch, compilation_cache):
    _set_environment(monkeypatch, tmp_path_factory.getbasetemp(), compilation_cache)


def make_config(corpus: Path):
    """The in-process twin of `harness.train_args` (`jaxnn.testing.tiny_train_args`)."""
    config = load_config_file("tiny")
    config.data.corpus = str(corpus)
    config.data.max_len = 48
    config.data.min_freq = 1
    config.data.smallest_bucket = 48
    config.optim.learning_rate = 0.05
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_epochs = TINY_EPOCHS
    config.train.max_steps_per_epoch = TINY_STEPS_PER_EPOCH
    config.train.checkpoint_every_steps = TINY_CHECKPOINT_EVERY
    config.train.log_every_steps = 2
    return config


@pytest.fixture
def config(corpus):
    return make_config(corpus)


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory, compilation_cache) -> Path:
    """An undisturbed in-process run's workdir (session-wide: compare, never modify)."""
    from jaxnn.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("reference") / "run"
    mp = pytest.MonkeyPatch()
    _set_environment(mp, tmp_path_factory.getbasetemp(), compilation_cache)
    try:
        train_and_evaluate(make_config(corpus), workdir)
    finally:
        mp.undo()
    return workdir


@pytest.fixture(scope="session")
def cli_reference(corpus, tmp_path_factory, compilation_cache) -> Path:
    """An undisturbed run of train.py in a subprocess."""
    workdir = tmp_path_factory.mktemp("cli-reference") / "run"
    mp = pytest.MonkeyPatch()
    _set_environment(mp, tmp_path_factory.getbasetemp(), compilation_cache)
    try:
        done = run_train(train_args(corpus, workdir))
    finally:
        mp.undo()
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
