"""Trials in an Optuna study: storage, claiming, heartbeats, records. No training happens here.

Every trial of the tuner is an Optuna trial whose user attributes carry the whole record:

    key     sha256 of the full training config (seed included) and the runner: the identity
    spec    {"kind": "trial" (a validation run) or "final_test" (the one test evaluation),
             "stage", "seed", "config": the full training config}
    owner   {"host", "pid", "token", "started"} of the process running it;  heartbeat (unix time)
    record  the result, written once at the end: {"status": "complete" | "failed",
             "failure_reason" (e.g. a non-finite training loss), "history": per-epoch metrics
             [{"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", ...}],
             "wall_time_s", "validation": {"metric", "value", "best_epoch"}}

(Few attributes, each a JSON value: every attribute is one database transaction.)

A finished trial (one with a ``record``) is never run again: a killed tuner resumes where it
stopped. Several processes (or machines, with a database URL) share one study: a process claims
a key by creating a RUNNING trial for it; when two claim the same key at once the lower trial
number wins and the other marks its copy ``superseded``. A RUNNING trial whose owner died (same
host, pid gone) or whose heartbeat is older than ``stale_after_s`` is marked failed (``stale``)
and claimed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "Claims",
    "config_key",
    "default_storage_url",
    "done_record",
    "open_study",
]

log = logging.getLogger("jaxnn.tune")


def default_storage_url(workdir: str | os.PathLike) -> str:
    """The embedded default: ``sqlite:///<workdir>/tune.db`` (absolute path)."""
    return f"sqlite:///{Path(workdir).resolve() / 'tune.db'}"


def config_key(config: Mapping, kind: str = "trial") -> str:
    """sha256 (first 20 hex digits) of ``kind`` and the canonical JSON of the full config."""
    text = json.dumps({"kind": kind, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def open_study(storage_url: str, study_name: str, *, sampler=None) -> optuna.Study:
    """Create or load the study (direction maximize) in the database at ``storage_url``.

    SQLite gets a 60 s busy timeout so that several processes can write to one file.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {}
    last_error: Exception | None = None
    for attempt in range(20):  # concurrent table creation on a fresh SQLite file can race
        try:
            storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs)
            return optuna.create_study(
                storage=storage,
                study_name=study_name,
                direction="maximize",
                sampler=sampler,
                load_if_exists=True,
            )
        except Exception as err:
            last_error = err
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"could not open study {study_name!r} at {storage_url}") from last_error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def done_record(trial: FrozenTrial) -> bool:
    """True for a trial whose record is final (complete, failed with a reason, or final test)."""
    return trial.state != TrialState.RUNNING and "record" in trial.user_attrs


class Claims:
    """This process's claims on the keys of one study, with a heartbeat thread.

    Args:
      study: the Optuna study.
      stale_after_s: a RUNNING trial whose heartbeat is older than this is taken as abandoned.
      heartbeat_s: how often this process refreshes the heartbeat of its running trials.
    """

    def __init__(self, study: optuna.Study, *, stale_after_s: float, heartbeat_s: float):
        if not stale_after_s > 0 or not heartbeat_s > 0:
            raise ValueError(
                f"stale_after_s and heartbeat_s must be > 0, got {stale_after_s}, {heartbeat_s}"
            )
        self.study = study
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = float(heartbeat_s)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._running: dict[int, int] = {}  # trial number -> trial id
        self._numbers_by_key: dict[str, int] = {}  # claimed key -> trial number
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    # -- heartbeat -------------------------------------------------------------------------
    def _beat(self) -> None:
        storage = self.study._storage
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                ids = list(self._running.values())
            for trial_id in ids:
                try:
                    storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                except Exception:
                    pass

    def close(self, reason: str = "interrupted") -> None:
        """Stop the heartbeat and mark this process's unfinished trials failed (no record)."""
        self._stop.set()
        with self._lock:
            numbers = list(self._running)
            self._running.clear()
        for number in numbers:
            self._fail_unfinished(number, reason)

    def _fail_unfinished(self, number: int, reason: str) -> None:
        try:
            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number
            )
            self.study._storage.set_trial_user_attr(trial_id, "abandoned", reason)
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception as err:
            log.warning("could not mark trial %d as %s: %s", number, reason, err)

    # -- reading ---------------------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _stale(self, trial: FrozenTrial) -> bool:
        attrs = trial.user_attrs
        owner = attrs.get("owner") or {}
        if owner.get("token") == self.owner["token"]:
            return False
        if owner.get("host") == self.owner["host"] and owner.get("pid") is not None:
            if not _pid_alive(int(owner["pid"])):
                return True
        heartbeat = attrs.get("heartbeat", owner.get("started"))
        return heartbeat is not None and time.time() - float(heartbeat) > self.stale_after_s

    def status(self, keys: Sequence[str]) -> dict[str, tuple[str, FrozenTrial | None]]:
        """For each key: ("done", trial) | ("running", trial) | ("free", None).

        Stale RUNNING trials are marked failed here (attribute ``abandoned``) and count as free.
        """
        wanted = set(keys)
        found: dict[str, tuple[str, FrozenTrial | None]] = {}
        for trial in sorted(self.trials(), key=lambda t: t.number):
            key = trial.user_attrs.get("key")
            if key not in wanted or trial.user_attrs.get("superseded"):
                continue
            if done_record(trial):
                if found.get(key, ("free",))[0] != "done":
                    found[key] = ("done", trial)
            elif trial.state == TrialState.RUNNING:
                if self._stale(trial):
                    log.warning("trial %d (key %s) is stale; running it again", trial.number, key)
                    self._fail_unfinished(trial.number, "stale")
                elif key not in found:
                    found[key] = ("running", trial)
        return {key: found.get(key, ("free", None)) for key in keys}

    def fail_stale(self) -> int:
        """Mark every stale RUNNING trial of the study failed (``abandoned``); returns how many."""
        count = 0
        for trial in self.trials():
            if (
                trial.state == TrialState.RUNNING
                and "key" in trial.user_attrs
                and self._stale(trial)
            ):
                self._fail_unfinished(trial.number, "stale")
                count += 1
        return count

    # -- claiming --------------------------------------------------------------------------
    def claim(self, keys: Sequence[str], attrs: Mapping[str, Mapping]) -> list[str]:
        """Try to claim ``keys``; return those this process now owns (the others are taken).

        ``attrs[key]`` is the trial's spec (kind, stage, seed, config).
        """
        mine: dict[str, optuna.Trial] = {}
        for key in keys:
            trial = self.study.ask()
            trial.set_user_attr("owner", {**self.owner, "started": time.time()})
            trial.set_user_attr("spec", dict(attrs[key]))
            trial.set_user_attr("key", key)  # last: a keyed trial has its spec
            mine[key] = trial
            with self._lock:
                self._running[trial.number] = trial._trial_id
        # The lowest-numbered live trial of a key wins; wait for trials created just before ours
        # to get their key (ask and set_user_attr are separate writes).
        highest = max(t.number for t in mine.values()) if mine else -1
        deadline = time.time() + 30.0
        while True:
            trials = self.trials()
            unkeyed = [
                t
                for t in trials
                if t.number < highest
                and t.state == TrialState.RUNNING
                and "key" not in t.user_attrs
                and (t.user_attrs.get("owner") or {}).get("token") != self.owner["token"]
            ]
            if not unkeyed or time.time() > deadline:
                break
            time.sleep(0.02)
        won = []
        for key, trial in mine.items():
            rivals = [
                t
                for t in trials
                if t.user_attrs.get("key") == key
                and t.number < trial.number
                and not t.user_attrs.get("superseded")
                and (done_record(t) or (t.state == TrialState.RUNNING and not self._stale(t)))
            ]
            if rivals:
                trial.set_user_attr("superseded", rivals[0].number)
                self._release(trial.number)
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                won.append(key)
                self._numbers_by_key[key] = trial.number
        return won

    def track(self, trial: optuna.Trial) -> None:
        """Heartbeat ``trial`` (made by the caller); fail it if this process is interrupted."""
        with self._lock:
            self._running[trial.number] = trial._trial_id

    def release(self, number: int) -> None:
        """Stop tracking a trial the caller has finished."""
        self._release(number)

    def _release(self, number: int) -> None:
        with self._lock:
            self._running.pop(number, None)

    # -- finishing -------------------------------------------------------------------------
    def finish(
        self,
        key: str,
        record: Mapping,
        value: float | None,
        state: TrialState = TrialState.COMPLETE,
    ) -> int:
        """Write the final record of a claimed key and tell Optuna; returns the trial number."""
        number = self._numbers_by_key.pop(key)
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number
        )
        self.study._storage.set_trial_user_attr(trial_id, "record", dict(record))
        self._release(number)
        if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = TrialState.FAIL
        if state == TrialState.COMPLETE:
            self.study.tell(number, values=float(value))
        else:
            self.study.tell(number, state=state)
        return number
