"""jaxnn/train/workdir.py: the lock (busy, stale, released), the config and data checks, and
empty splits, without training."""

from __future__ import annotations

import json
import os
import socket
from types import SimpleNamespace

import pytest

from jaxnn.data.vocab import Vocabulary
from jaxnn.train.config import base_config
from jaxnn.train.errors import (
    ConfigMismatchError,
    DataMismatchError,
    EmptySplitError,
    WorkdirBusyError,
)
from jaxnn.train.workdir import (
    LOCK_NAME,
    WorkdirLock,
    check_config,
    check_data,
    check_splits,
    vocabulary_sha256,
)


def test_a_held_lock_refuses_a_second_holder_naming_pid_and_host(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir) as lock:
        record = json.loads((workdir / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusyError, match=rf"process {os.getpid()} on host") as raised:
            WorkdirLock(workdir).acquire()  # a second open file description: flock conflicts
        assert raised.value.holder["pid"] == os.getpid()
        assert lock.held
    assert not workdir.exists()  # created by the lock, nothing else written: removed again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "yesterday"}
    (workdir / LOCK_NAME).write_text(json.dumps(dead))  # left by a kill -9: no flock held
    with caplog.at_level("WARNING", logger="jaxnn"), WorkdirLock(workdir):
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"stale lock {workdir / LOCK_NAME} of process {dead['pid']}" in message
    assert "no longer running" in message
    assert not (workdir / LOCK_NAME).exists() and (workdir / "config.json").exists()


def test_check_config_refuses_another_config_and_files_without_one(tmp_path):
    config = base_config()
    assert check_config(config, tmp_path) is False  # empty: a new run
    (tmp_path / LOCK_NAME).write_text("")
    assert check_config(config, tmp_path) is False  # the lock file alone is not a run
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(ConfigMismatchError, match=r"not empty and has no config\.json"):
        check_config(config, tmp_path)
    (tmp_path / "stray.txt").unlink()
    saved = config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_config(config, tmp_path) is True
    config.optim.learning_rate = 0.5
    with pytest.raises(
        ConfigMismatchError, match=r"optim\.learning_rate: saved .*, requested 0\.5"
    ):
        check_config(config, tmp_path)


def _fingerprint(words, labels=(0, 1)):
    vocab = Vocabulary.build([" ".join(words)], min_freq=1)
    return {
        "source": {"corpus": "data.csv"},
        "vocab_sha256": vocabulary_sha256(vocab),
        "label_names": ["a", "b"],
        "split_sizes": {"train": 2, "validation": 1, "test": 1},
        "splits": {"train": {"examples": 2, "sha256": str(labels)}},
    }, vocab


def test_check_data_refuses_other_data_and_an_old_workdirs_other_vocabulary(tmp_path):
    fingerprint, vocab = _fingerprint(["x", "y"])
    check_data(fingerprint, tmp_path)  # nothing recorded: a new run
    (tmp_path / "data.json").write_text(json.dumps(fingerprint))
    check_data(dict(fingerprint, source={"corpus": "moved.csv", "mtime": 1}), tmp_path)
    other, _ = _fingerprint(["x", "y"], labels=(1, 0))
    with pytest.raises(DataMismatchError, match="differs: splits"):
        check_data(other, tmp_path)
    (tmp_path / "data.json").unlink()
    vocab.save(tmp_path / "vocab.json")  # a workdir of an older jaxnn: only its vocabulary
    check_data(fingerprint, tmp_path)
    new_words, _ = _fingerprint(["x", "y", "z"])
    with pytest.raises(DataMismatchError, match="other vocabulary"):
        check_data(new_words, tmp_path)


def test_empty_splits_are_refused_naming_each_split_size():
    def data(sizes):
        return SimpleNamespace(
            name="tiny.csv",
            info={"split_sizes": sizes},
            train=[0] * sizes["train"],
            validation=[0] * sizes["validation"],
        )

    check_splits(data({"train": 5, "validation": 1, "test": 1}))
    with pytest.raises(EmptySplitError, match=r"validation and test splits are empty") as raised:
        check_splits(data({"train": 1, "validation": 0, "test": 0}))
    assert "train 1, validation 0, test 0" in str(raised.value)
