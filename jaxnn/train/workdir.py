"""The workdir of a run: its lock, the config and data it holds, and the files written first.

    WorkdirLock(workdir)              one live run per workdir (``run.lock``: pid, host, start)
    check_config(config, workdir)     refuse a workdir holding another config (reads only)
    data_fingerprint(config, data)    what identifies the data: corpus, vocabulary, encoded splits
    check_data(fingerprint, workdir)  refuse a workdir holding a run on other data (reads only)
    write_run_files(...)              config.json, data.json, vocab.json: after every check

Order of a start (`jaxnn.train.loop.train_and_evaluate`): lock -> check the config -> read and
check the data -> write the run files -> train. A start that fails before the last write leaves
the workdir as it found it (a folder it created is removed again), so it never blocks the next.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxnn.data.corpora import corpus_fingerprint
from jaxnn.data.prepare import Prepared
from jaxnn.data.vocab import Vocabulary
from jaxnn.train.config import config_to_dict, corpus_options
from jaxnn.train.errors import (
    ConfigMismatchError,
    DataMismatchError,
    EmptySplitError,
    WorkdirBusyError,
    environment_failure,
)
from jaxnn.train.logs import write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "SPEED_ONLY_KEYS",
    "WorkdirLock",
    "check_config",
    "check_data",
    "check_splits",
    "clear_workdir",
    "data_fingerprint",
    "results_config",
    "write_run_files",
]

log = logging.getLogger("jaxnn.train")

LOCK_NAME = "run.lock"
DATA_NAME = "data.json"

# Process settings an older jaxnn kept in the run config (now flags of the entry points,
# jaxnn.launch): a workdir whose config.json holds them still resumes.
SPEED_ONLY_KEYS = (
    ("train", "host_allocator"),
    ("train", "cpu_vector_width"),
    ("train", "cpu_devices"),
)


# ----------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class WorkdirLock:
    """An exclusive lock on ``<workdir>/run.lock``, held with ``fcntl.flock`` while a run lives.

    The file records the holder's pid, host and start time. The kernel drops the flock when
    the holder dies (even by ``kill -9``), so a lock file whose flock is free is stale: it is
    taken over with a warning naming the dead holder. A live holder makes `acquire` raise
    `WorkdirBusyError` at once, naming its pid and host. Use as a context manager.

    A workdir folder that `acquire` created is removed by `release` when nothing else was
    written into it (a failed start leaves no trace).
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> WorkdirLock:
        try:
            self._created = not self.workdir.exists()
            self.workdir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if fcntl is None:
                    break
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    holder = self._read()
                    self._remove_if_created()
                    raise WorkdirBusyError(
                        f"workdir {self.workdir} is in use by process {holder.get('pid', '?')} on "
                        f"host {holder.get('host', '?')} (started {holder.get('started', '?')}); "
                        "wait for it to finish, stop it, or use another --workdir",
                        self.path,
                        holder,
                    ) from None
                try:  # the holder may have unlinked the file between our open and our flock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            self._fd = fd
            self._take_over(self._read())
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as err:
            if isinstance(err, WorkdirBusyError):
                raise
            failure = environment_failure(err, self.workdir, "locking the workdir")
            if failure is None:
                raise
            raise failure from err
        return self

    def _take_over(self, previous: dict) -> None:
        if not previous:
            return
        pid, host = previous.get("pid"), previous.get("host")
        here = host == socket.gethostname()
        state = (
            "no longer running"
            if here and isinstance(pid, int) and not _pid_alive(pid)
            else "no longer holding it"
        )
        log.warning(
            "taking over the stale lock %s of process %s on host %s (started %s; %s)",
            self.path,
            pid,
            host,
            previous.get("started", "?"),
            state,
        )

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remove_if_created(self) -> None:
        if self._created:
            try:
                self.workdir.rmdir()  # only when empty
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None
        if self._created:
            self._remove_if_created()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def clear_workdir(workdir: Path) -> None:
    """Delete everything in ``workdir`` but its lock file (``--overwrite``)."""
    log.info("overwrite: removing the previous run in %s", workdir)
    for entry in workdir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ----------------------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------------------


def results_config(config: Mapping) -> dict:
    """``config`` without `SPEED_ONLY_KEYS`, for comparing a saved run with a requested one."""
    out = {
        section: dict(values) if isinstance(values, Mapping) else values
        for section, values in config.items()
    }
    for section, key in SPEED_ONLY_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _diff(saved: Mapping, wanted: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, requested {b!r}")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigMismatchError(
            f"{path} is not valid JSON ({err}); use another --workdir, or --overwrite to start "
            "over",
            path,
        ) from None


def _run_files_present(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir() if p.name != LOCK_NAME)


def check_config(config: Mapping[str, Any], workdir: Path) -> bool:
    """True when ``workdir`` holds a run of ``config`` (a resume), False when it is new or empty;
    `ConfigMismatchError` when it holds another config or files without a config.json."""
    saved_path = workdir / "config.json"
    if saved_path.is_file():
        saved, wanted = (
            results_config(_read_json(saved_path)),
            results_config(config_to_dict(config)),
        )
        if saved != wanted:
            diffs = _diff(saved, wanted)
            raise ConfigMismatchError(
                f"workdir {workdir} holds a run with a different config ({'; '.join(diffs[:5])}"
                f"{' ...' if len(diffs) > 5 else ''}); use another --workdir, or --overwrite to "
                "start over",
                saved_path,
            )
        return True
    if workdir.is_dir() and _run_files_present(workdir):
        raise ConfigMismatchError(
            f"workdir {workdir} is not empty and has no config.json; use another --workdir, or "
            "--overwrite to start over",
            workdir,
        )
    return False


# ----------------------------------------------------------------------------------------------
# The data
# ----------------------------------------------------------------------------------------------


def _sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def vocabulary_sha256(vocab: Vocabulary) -> str:
    """SHA-256 of the vocabulary's JSON form (`Vocabulary.to_dict`, keys sorted)."""
    text = json.dumps(vocab.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_fingerprint(config: Mapping[str, Any], data: Prepared) -> dict[str, Any]:
    """What identifies the data a run trains on, recorded in ``<workdir>/data.json``.

    "source" is `jaxnn.data.corpora.corpus_fingerprint` (a built-in corpus's pinned checksum, or
    a user file's path, size and mtime): recorded, not compared, so a copied or touched file
    still resumes. Compared on resume: the vocabulary's SHA-256, the label names, the split
    sizes (test included) and, per training split, the SHA-256 of its encoded tokens (one
    process) or of its lengths (a multi-process `ShardedSplit` encodes rows on demand) and
    labels, which any edit of a training or validation text changes.
    """
    splits = {}
    for name in ("train", "validation"):
        split = getattr(data, name)
        tokens = getattr(split, "tokens", None)
        content = split.lengths if tokens is None else tokens
        splits[name] = {
            "examples": len(split),
            "sha256": _sha256_arrays(np.asarray(content), np.asarray(split.labels)),
        }
    return {
        "source": corpus_fingerprint(config["data"]["corpus"], corpus_options(config["data"])),
        "vocab_sha256": vocabulary_sha256(data.vocab),
        "label_names": list(data.label_names),
        "split_sizes": dict(data.info.get("split_sizes", {})),
        "splits": splits,
    }


_COMPARED = ("vocab_sha256", "label_names", "split_sizes", "splits")


def check_data(fingerprint: Mapping[str, Any], workdir: Path) -> None:
    """Refuse (`DataMismatchError`) a workdir whose recorded data (data.json, or for a workdir
    of an older jaxnn its vocab.json) differ from ``fingerprint``. Reads only."""
    saved_path = workdir / DATA_NAME
    vocab_path = workdir / "vocab.json"
    what = "data"
    if saved_path.is_file():
        saved = _read_json(saved_path)
        differs = [k for k in _COMPARED if saved.get(k) != fingerprint.get(k)]
    elif vocab_path.is_file():
        what = "vocabulary"
        try:
            saved_vocab = vocabulary_sha256(Vocabulary.load(vocab_path))
        except (OSError, ValueError) as err:
            raise DataMismatchError(
                f"{vocab_path} cannot be read ({err}); use another --workdir, or --overwrite to "
                "start over",
                vocab_path,
            ) from None
        differs = ["vocab_sha256"] if saved_vocab != fingerprint["vocab_sha256"] else []
        saved_path = vocab_path
    else:
        return
    if differs:
        raise DataMismatchError(
            f"workdir {workdir} holds a run on other {what} than "
            f"{fingerprint['source'].get('corpus')} now gives (differs: {', '.join(differs)}; "
            f"recorded in {saved_path}); the data "
            "changed since that run: restore it, use another --workdir, or --overwrite to start "
            "over",
            saved_path,
        )


def check_splits(data: Prepared) -> None:
    """`EmptySplitError` before training when the validation or the test split is empty."""
    sizes = dict(data.info.get("split_sizes") or {})
    sizes.setdefault("train", len(data.train))
    sizes.setdefault("validation", len(data.validation))
    empty = [name for name in ("train", "validation", "test") if sizes.get(name) == 0]
    if empty:
        got = ", ".join(
            f"{name} {sizes[name]}" for name in ("train", "validation", "test") if name in sizes
        )
        raise EmptySplitError(
            f"{data.name}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} "
            f"empty (examples per split: {got}); give the corpus more examples per class (each "
            "split takes a fraction of every class)",
            data.name,
        )


def write_run_files(
    config: Mapping[str, Any], workdir: Path, fingerprint: Mapping[str, Any], vocab: Vocabulary
) -> None:
    """config.json, data.json and vocab.json: written after every check has passed."""
    try:
        write_json(workdir / "config.json", config_to_dict(config))
        write_json(workdir / DATA_NAME, dict(fingerprint))
        vocab.save(workdir / "vocab.json")
    except OSError as err:
        failure = environment_failure(err, workdir, "writing the run files to")
        if failure is None:
            raise
        raise failure from err
