"""The progressive tuner and the searches it is compared with.

    current = the training config's values
    for stage in stages (learning_rate, dropout, hidden_size, batch_size, weight_decay, embed_dim,
                         optimizer, activation; a stage may pair two):
        run every candidate of the stage with the other hyperparameters at ``current``
        current[stage] = the candidate with the best VALIDATION metric (macro F1 or accuracy)
    evaluate the final config on the TEST split, once

A trial's validation value is the best epoch's metric (what early stopping would keep). Trials of
one stage are handed to the `TrialRunner` in groups (up to ``group_size``) so that a runner can
train same-shape trials together in one vmapped program. A trial whose training loss becomes
non-finite, or whose runner raises, is recorded as failed with its reason and the tuner goes on;
a stage where every candidate failed keeps the previous value.

Identical full configs are one trial: a stage's candidate equal to an earlier stage's winner is
not trained again. Everything lives in an Optuna study (`jaxnn.tune.study`), so a killed run
resumes without redoing finished trials and several processes can share the work.

`run_search` is the field's alternative with the same budget: Optuna's random sampler or TPE over
the same candidate values, all hyperparameters at once.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import ml_collections
import optuna
from optuna.trial import TrialState

from jaxnn.train.config import validate_config
from jaxnn.tune import report
from jaxnn.tune.space import (
    HYPERPARAMETERS,
    Stage,
    apply_assignment,
    build_stages,
    check_config_paths,
    read_assignment,
)
from jaxnn.tune.study import Claims, config_key, default_storage_url, done_record, open_study

__all__ = [
    "METRICS",
    "ProgressiveTuner",
    "TrialResult",
    "TrialRunner",
    "TuneOptions",
    "run_search",
    "split_config",
    "validation_value",
]

log = logging.getLogger("jaxnn.tune")

METRICS = ("macro_f1", "accuracy")


@dataclass
class TrialResult:
    """What a runner reports for one trial.

    Attributes:
      status: "complete" or "failed".
      history: one dict per finished epoch with at least "epoch", "train_loss" and
        "val_accuracy", "val_macro_f1" (validation split only; never test).
      wall_time_s: seconds spent on this trial (a vmapped group's wall divided by its size).
      failure_reason: why it failed, e.g. "non-finite training loss at epoch 2, step 31".
    """

    status: str
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    failure_reason: str | None = None


class TrialRunner(Protocol):
    """Trains trials; the tuner never sees data. ``configs`` are full training configs."""

    def run(self, configs: Sequence[ml_collections.ConfigDict]) -> list[TrialResult]:
        """Train each config (together where shapes allow); one result per config, in order."""
        ...

    def evaluate_test(self, config: ml_collections.ConfigDict) -> dict[str, float]:
        """Train ``config`` and evaluate it on the test split; called once per tuning run."""
        ...


def validation_value(history: Sequence[Mapping], metric: str) -> tuple[float, int | None]:
    """(best val_<metric> over epochs, its epoch); (nan, None) when no epoch has a finite one."""
    best, best_epoch = math.nan, None
    for row in history:
        value = row.get(f"val_{metric}")
        if value is None or not math.isfinite(value):
            continue
        if best_epoch is None or value > best:
            best, best_epoch = float(value), int(row["epoch"])
    return best, best_epoch


@dataclass(frozen=True)
class TuneOptions:
    """The ``tune`` section of a tuning config, checked.

    Attributes:
      metric: "macro_f1" or "accuracy", measured on the validation split.
      stages: from ``candidates`` and ``pairs`` (`build_stages`).
      storage: database URL; "" means ``sqlite:///<workdir>/tune.db``.
      study_name: the progressive study's name (baselines append "-random" / "-tpe").
      group_size: trials handed to the runner at once (same-shape trials train vmapped).
      poll_interval_s, stale_after_s, heartbeat_s: sharing a study between processes.
      compare: searches to run against progressive ("random", "tpe").
      compare_trials: their trial budget; 0 = as many as the progressive search used.
      seed: sampler seed of the baselines.
      engine: the trial runner of the CLI: "vmapped" (same-shape trials together) or "fit"
        (jaxnn.train.fit, any model).
    """

    metric: str
    stages: tuple[Stage, ...]
    storage: str = ""
    study_name: str = "progressive"
    group_size: int = 8
    poll_interval_s: float = 1.0
    stale_after_s: float = 600.0
    heartbeat_s: float = 30.0
    compare: tuple[str, ...] = ()
    compare_trials: int = 0
    seed: int = 0
    engine: str = "vmapped"

    @classmethod
    def from_config(cls, tune: ml_collections.ConfigDict) -> TuneOptions:
        allowed = {
            "metric",
            "candidates",
            "pairs",
            "storage",
            "study_name",
            "group_size",
            "poll_interval_s",
            "stale_after_s",
            "heartbeat_s",
            "compare",
            "compare_trials",
            "seed",
            "engine",
        }
        unknown = sorted(set(tune.keys()) - allowed)
        if unknown:
            raise ValueError(f"unknown tune keys {unknown}; allowed: {sorted(allowed)}")
        metric = tune.get("metric", "macro_f1")
        if metric not in METRICS:
            raise ValueError(f"tune.metric={metric!r}; allowed: {list(METRICS)}")
        if "candidates" not in tune:
            raise ValueError("tune.candidates is missing: give {hyperparameter: [values]}")
        candidates = tune.candidates
        if hasattr(candidates, "to_dict"):
            candidates = candidates.to_dict()
        stages = tuple(build_stages(candidates, tuple(tune.get("pairs", ()) or ())))
        group_size = tune.get("group_size", 8)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"tune.group_size={group_size!r}; allowed: an int >= 1")
        compare = tuple(tune.get("compare", ()) or ())
        for name in compare:
            if name not in ("random", "tpe"):
                raise ValueError(f"tune.compare has {name!r}; allowed: 'random', 'tpe'")
        compare_trials = tune.get("compare_trials", 0)
        if not isinstance(compare_trials, int) or compare_trials < 0:
            raise ValueError(f"tune.compare_trials={compare_trials!r}; allowed: an int >= 0")
        engine = tune.get("engine", "vmapped")
        if engine not in ("vmapped", "fit"):
            raise ValueError(f"tune.engine={engine!r}; allowed: 'vmapped', 'fit'")
        return cls(
            engine=engine,
            metric=metric,
            stages=stages,
            storage=tune.get("storage", "") or "",
            study_name=tune.get("study_name", "progressive"),
            group_size=group_size,
            poll_interval_s=float(tune.get("poll_interval_s", 1.0)),
            stale_after_s=float(tune.get("stale_after_s", 600.0)),
            heartbeat_s=float(tune.get("heartbeat_s", 30.0)),
            compare=compare,
            compare_trials=compare_trials,
            seed=int(tune.get("seed", 0)),
        )

    @property
    def tuned(self) -> list[str]:
        return [name for stage in self.stages for name in stage.params]


def split_config(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, TuneOptions]:
    """(training config without ``tune``, checked TuneOptions); raises before any training."""
    if "tune" not in config:
        raise ValueError("the config has no 'tune' section (see configs/tune_bbc.py)")
    options = TuneOptions.from_config(config.tune)
    train = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "tune"})
    validate_config(train)  # unknown keys and bad values of the training part
    check_config_paths(train, options.tuned)
    for name, value in read_assignment(train, options.tuned).items():
        apply_assignment(train, {name: value})  # the starting values must be valid too
    return train, options


def _run_group(runner: TrialRunner, configs: list[ml_collections.ConfigDict]) -> list[TrialResult]:
    start = time.perf_counter()
    try:
        results = list(runner.run(configs))
        if len(results) != len(configs):
            raise RuntimeError(f"the runner returned {len(results)} results for {len(configs)}")
    except Exception as err:
        log.exception("a group of %d trials raised", len(configs))
        wall = (time.perf_counter() - start) / len(configs)
        reason = f"{type(err).__name__}: {err}"
        return [TrialResult("failed", [], wall, reason) for _ in configs]
    return results


def _record(config: ml_collections.ConfigDict, result: TrialResult, metric: str) -> dict:
    value, epoch = validation_value(result.history, metric)
    status, reason = result.status, result.failure_reason
    if status == "complete" and not math.isfinite(value):
        status, reason = "failed", reason or f"no finite validation {metric}"
    if status not in ("complete", "failed"):
        status, reason = "failed", f"runner status {result.status!r}"
    return {
        "history": result.history,
        "wall_time_s": float(result.wall_time_s),
        "status": status,
        "failure_reason": reason,
        "validation": {"metric": metric, "value": value, "best_epoch": epoch},
    }


def _trial_summary(trial) -> dict:
    attrs = trial.user_attrs
    record = attrs.get("record") or {}
    return {
        "trial": trial.number,
        "status": record.get("status"),
        "failure_reason": record.get("failure_reason"),
        "validation": record.get("validation"),
        "wall_time_s": record.get("wall_time_s"),
        "seed": (attrs.get("spec") or {}).get("seed"),
        "owner_pid": (attrs.get("owner") or {}).get("pid"),
    }


class ProgressiveTuner:
    """Runs the stages in order, one Optuna study per tuning config.

    Args:
      config: a tuning config (training fields + a ``tune`` section), e.g. configs/tune_bbc.py.
      workdir: where tune.db (by default), tune_results.json, tune_results.md and the stage plots
        go.
      runner: the `TrialRunner` (jaxnn.tune.runners.VmappedTrialRunner for real runs; any pure
        function in tests).
      storage: a database URL overriding ``tune.storage``.
      plots: write the stage plots (False skips matplotlib; JSON and Markdown are always written).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | os.PathLike,
        runner: TrialRunner,
        *,
        storage: str | None = None,
        plots: bool = True,
    ):
        self.plots = plots
        self.train_config, self.options = split_config(config)
        self.workdir = Path(workdir)
        self.runner = runner
        self.storage_url = storage or self.options.storage or default_storage_url(self.workdir)
        # Results of different runners (engines) never share a key.
        self.engine = getattr(runner, "name", "")

    def _trial_attrs(self, config: ml_collections.ConfigDict, kind: str, stage: str) -> dict:
        return {
            "kind": kind,
            "config": config.to_dict(),
            "seed": config.get("seed"),
            "stage": stage,
        }

    def _run_keys(
        self, claims: Claims, configs: dict[str, ml_collections.ConfigDict], stage: str
    ) -> dict[str, dict]:
        """Run (or find finished) trials for every key; returns key -> trial summary."""
        keys = list(configs)
        while True:
            status = claims.status(keys)
            free = [k for k in keys if status[k][0] == "free"]
            if free:
                group = free[: self.options.group_size]
                attrs = {k: self._trial_attrs(configs[k], "trial", stage) for k in group}
                won = claims.claim(group, attrs)
                if won:
                    log.info("stage %s: training %d trial(s) together", stage, len(won))
                    results = _run_group(self.runner, [configs[k] for k in won])
                    for key, result in zip(won, results):
                        record = _record(configs[key], result, self.options.metric)
                        state = (
                            TrialState.COMPLETE
                            if record["status"] == "complete"
                            else TrialState.FAIL
                        )
                        number = claims.finish(key, record, record["validation"]["value"], state)
                        log.info(
                            "trial %d %s: validation %s = %.4f%s",
                            number,
                            record["status"],
                            self.options.metric,
                            record["validation"]["value"],
                            f" ({record['failure_reason']})" if record["failure_reason"] else "",
                        )
                continue
            if all(status[k][0] == "done" for k in keys):
                return {k: _trial_summary(status[k][1]) for k in keys}
            time.sleep(self.options.poll_interval_s)

    def run(self) -> dict:
        """Tune, evaluate the final config on test once, write the outputs; returns the results."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        study = open_study(self.storage_url, self.options.study_name)
        claims = Claims(
            study, stale_after_s=self.options.stale_after_s, heartbeat_s=self.options.heartbeat_s
        )
        start = time.perf_counter()
        try:
            results = self._tune(claims)
        finally:
            claims.close("interrupted")
        results["wall_time_s"] = time.perf_counter() - start
        report.write_tune_outputs(results, self.workdir, plots=self.plots)
        return results

    def _tune(self, claims: Claims) -> dict:
        options = self.options
        current = read_assignment(self.train_config, options.tuned)
        stages_out = []
        all_keys: set[str] = set()
        for stage in options.stages:
            assignments = stage.assignments()
            configs, key_of = {}, []
            for assignment in assignments:
                config = apply_assignment(self.train_config, {**current, **assignment})
                key = config_key(config.to_dict(), kind=_kind("trial", self.engine))
                configs.setdefault(key, config)
                key_of.append(key)
            all_keys.update(configs)
            summaries = self._run_keys(claims, configs, stage.name)
            candidates = []
            for assignment, key in zip(assignments, key_of):
                candidates.append({"values": assignment, "key": key, **summaries[key]})
            finished = [c for c in candidates if c["status"] == "complete"]
            if finished:
                winner = max(finished, key=lambda c: c["validation"]["value"])  # first on ties
                current.update(winner["values"])
                note = None
            else:
                winner, note = None, "every candidate failed; the previous values are kept"
                log.warning("stage %s: %s", stage.name, note)
            stages_out.append(
                {
                    "name": stage.name,
                    "params": list(stage.params),
                    "shares_shapes": stage.shares_shapes,
                    "candidates": candidates,
                    "winner": None if winner is None else winner["values"],
                    "winner_validation": None if winner is None else winner["validation"],
                    "note": note,
                    "kept": {p: current[p] for p in stage.params},
                }
            )
            log.info("stage %s: kept %s", stage.name, {p: current[p] for p in stage.params})
        final_config = apply_assignment(self.train_config, current)
        final_key = config_key(final_config.to_dict(), kind=_kind("trial", self.engine))
        if all(s["winner"] is None for s in stages_out):
            raise RuntimeError("every trial failed; see the failure reasons in the study")
        final_validation = None
        for s in stages_out:
            for c in s["candidates"]:
                if c["key"] == final_key:
                    final_validation = c["validation"]
        test = self._final_test(claims, final_config)
        return {
            "metric": options.metric,
            "storage": self.storage_url,
            "study_name": options.study_name,
            "engine": self.engine,
            "num_trials": len(all_keys),
            "stages": stages_out,
            "final": {
                "hyperparameters": current,
                "config": final_config.to_dict(),
                "validation": final_validation,
                "test": test,
            },
        }

    def _final_test(self, claims: Claims, config: ml_collections.ConfigDict) -> dict:
        """The one test evaluation, stored in the study (PRUNED trial, never a validation value)."""
        key = config_key(config.to_dict(), kind=_kind("final_test", self.engine))
        while True:
            state, trial = claims.status([key])[key]
            if state == "done":
                return dict(trial.user_attrs["record"]["test_metrics"])
            if state == "free" and claims.claim(
                [key], {key: self._trial_attrs(config, "final_test", "final")}
            ):
                log.info("evaluating the final config on the test split (once)")
                begin = time.perf_counter()
                metrics = {k: float(v) for k, v in self.runner.evaluate_test(config).items()}
                record = {"test_metrics": metrics, "wall_time_s": time.perf_counter() - begin}
                claims.finish(key, record, None, state=TrialState.PRUNED)
                return metrics
            time.sleep(self.options.poll_interval_s)


def _kind(kind: str, engine: str) -> str:
    return f"{kind}/{engine}" if engine else kind


def _search_space(options: TuneOptions) -> dict[str, optuna.distributions.CategoricalDistribution]:
    space = {}
    for stage in options.stages:
        for i, name in enumerate(stage.params):
            values = list(dict.fromkeys(c[i] for c in stage.candidates))
            space[name] = optuna.distributions.CategoricalDistribution(values)
    return space


def run_search(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    runner: TrialRunner,
    *,
    sampler: str,
    n_trials: int,
    storage: str | None = None,
) -> dict:
    """Random search or TPE over the tuner's candidate values, ``n_trials`` trials, resumable.

    Every tuned hyperparameter is a categorical over its candidates; all vary at once. TPE models
    after min(10, max(3, n_trials // 3)) random start-up trials, seeded apart from random search's
    so the two do not share their first trials. The study
    is ``<study_name>-<sampler>`` in the same storage. Returns {"sampler", "n_trials",
    "best": {"validation", "hyperparameters", "trial"}, "trials": [...]} on validation only.
    """
    train_config, options = split_config(config)
    if sampler not in ("random", "tpe"):
        raise ValueError(f"sampler={sampler!r}; allowed: 'random', 'tpe'")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r}; allowed: an int >= 1")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    url = storage or options.storage or default_storage_url(workdir)
    optuna_sampler = (
        optuna.samplers.RandomSampler(seed=options.seed)
        if sampler == "random"
        # TPE's default 10 random start-up trials would make a small budget a random search (with
        # the same seed, the very same trials): start modelling after a third of the budget.
        else optuna.samplers.TPESampler(
            seed=options.seed + 1, n_startup_trials=min(10, max(3, n_trials // 3))
        )
    )
    study = open_study(url, f"{options.study_name}-{sampler}", sampler=optuna_sampler)
    claims = Claims(study, stale_after_s=options.stale_after_s, heartbeat_s=options.heartbeat_s)
    space = _search_space(options)
    start = time.perf_counter()
    try:
        claims.fail_stale()
        while sum(done_record(t) for t in claims.trials()) < n_trials:
            trial = study.ask(space)
            trial.set_user_attr("owner", {**claims.owner, "started": time.time()})
            claims.track(trial)
            values = {name: trial.params[name] for name in space}
            run_config = apply_assignment(train_config, values)
            key = config_key(run_config.to_dict(), kind=_kind("trial", getattr(runner, "name", "")))
            spec = {
                "kind": "trial",
                "stage": sampler,
                "seed": run_config.get("seed"),
                "config": run_config.to_dict(),
            }
            trial.set_user_attr("spec", spec)
            trial.set_user_attr("key", key)
            result = _run_group(runner, [run_config])[0]
            record = _record(run_config, result, options.metric)
            trial.set_user_attr("record", record)
            value = record["validation"]["value"]
            if record["status"] == "complete":
                study.tell(trial, values=value)
            else:
                study.tell(trial, state=TrialState.FAIL)
            claims.release(trial.number)
            log.info("%s trial %d: %s = %.4f", sampler, trial.number, options.metric, value)
    finally:
        claims.close("interrupted")
    finished = [t for t in claims.trials() if done_record(t)][:n_trials]
    rows = [{"trial": t.number, "hyperparameters": t.params, **_trial_summary(t)} for t in finished]
    complete = [r for r in rows if r["status"] == "complete"]
    best = max(complete, key=lambda r: r["validation"]["value"]) if complete else None
    return {
        "sampler": sampler,
        "n_trials": len(rows),
        "wall_time_s": time.perf_counter() - start,
        "best": best,
        "trials": rows,
    }


def describe_space() -> str:
    """One line per hyperparameter: name, config path, valid range (for --help)."""
    return "\n".join(f"{h.name:14s} {h.path:22s} {h.allowed()}" for h in HYPERPARAMETERS.values())
