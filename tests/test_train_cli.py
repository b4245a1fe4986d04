"""train.py: flags, dotted overrides, and bad input refused before any data or compile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, unset=(), **extra_env):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra_env)
    for name in unset:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # (every key's checks run in-process in tests/train/test_config.py)
        ("--config.optim.learning_rate=0", "config.optim.learning_rate=0.0 is not allowed"),
        ("--config.optim.optimizer=rmsprop", "allowed: adam, adamw, sgd"),
    ],
)
def test_bad_value_is_refused_before_anything_runs(tmp_path, override, message):
    workdir = tmp_path / "run"
    result = _run("--config=configs/tiny.py", f"--workdir={workdir}", override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not workdir.exists()  # nothing written, no data loaded


def test_bad_host_allocator_is_refused_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    result = _run(
        "--config=configs/tiny.py", f"--workdir={workdir}", JAXNN_HOST_ALLOCATOR="jemalloc"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "$JAXNN_HOST_ALLOCATOR is 'jemalloc'; allowed: ('keep', 'system')" in result.stderr
    assert not workdir.exists()


def test_bad_config_host_allocator_is_refused_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    result = _run(
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--config.train.host_allocator=jemalloc",
        unset=("JAXNN_HOST_ALLOCATOR",),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "from config train.host_allocator is 'jemalloc'" in result.stderr
    assert not workdir.exists()


def test_unknown_override_key_is_refused(tmp_path):
    workdir = tmp_path / "run"
    result = _run("--config=configs/tiny.py", f"--workdir={workdir}", "--config.optim.lr=0.1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config.optim.lr='0.1' is not allowed; unknown key" in result.stderr
    assert "optim.learning_rate" in result.stderr  # the keys that do exist are listed
    assert not workdir.exists()


def test_default_config_is_imdb_and_default_workdir_is_under_runs(tmp_path):
    # no --config: configs/default.py; a bad override stops it before data or workdir
    result = _run("--config.train.batch_size=0", cwd=tmp_path)
    assert result.returncode == 2
    assert "config.train.batch_size=0 is not allowed" in result.stderr
