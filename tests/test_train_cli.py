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


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cpu_devices=two"], {}, "CPU devices from --cpu_devices is 'two'; allowed: 'cores'"),
        (["--host_allocator=jemalloc"], {}, "from --host_allocator is 'jemalloc'; allowed: "),
        (["--cpu_vector_width=1024"], {}, "from --cpu_vector_width is '1024'; allowed: 'auto'"),
        ([], {"JAXNN_HOST_ALLOCATOR": "jemalloc"}, "from $JAXNN_HOST_ALLOCATOR is 'jemalloc'"),
    ],
)
def test_bad_process_setting_is_one_error_line(tmp_path, args, env, message):
    workdir = tmp_path / "run"
    result = _run("--config=configs/tiny.py", f"--workdir={workdir}", *args, **env)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.splitlines()  # one line, nothing logged before it
    assert line.startswith("error: ") and message in line
    assert not workdir.exists()


def test_missing_config_file_is_one_error_line(tmp_path):
    result = _run("--config=configs/tny.py", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: config file configs/tny.py not found (relative to {ROOT}); "
        "did you mean configs/tiny.py?"
    ]
    result = _run(f"--config={tmp_path / 'nothing_like_it.py'}")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: config file {tmp_path / 'nothing_like_it.py'} not found; ")
    assert "shipped configs: configs/bbc_news.py, " in line and "configs/tiny.py" in line


def test_config_file_that_raises_is_one_error_line_and_verbose_shows_the_traceback(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return {}['model']\n")
    result = _run(f"--config={broken}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: config file {broken}, line 2 failed to load: KeyError: 'model'"
    ]
    result = _run(f"--config={broken}", "--verbose")
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1].startswith(f"error: config file {broken}, line 2")
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    result = _run(f"--config={tmp_path / 'syntax.py'}")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "failed to load: SyntaxError: " in result.stderr


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
