"""Trial runners on real data: `VmappedTrialRunner` (vmapped groups) and `FitTrialRunner` (fit).

Both follow `jaxnn.tune.tuner.TrialRunner`: ``run(configs)`` trains on the train split and reports
per-epoch validation metrics; ``evaluate_test(config)`` trains once more and evaluates the best
epoch's parameters on the test split (the tuner calls it once, at the end).

- ``engine="vmapped"`` (`VmappedTrialRunner`): any model; the trials whose configs differ only in
  learning_rate, dropout and weight_decay train together, ``jax.vmap`` of the ordinary train step
  (`jaxnn.tune.trials.TrialGroup`); a config that changes shapes starts another group.
- ``engine="fit"`` (`FitTrialRunner`): `jaxnn.train.fit` per trial, any model (no vmapping).

One engine per tuning run: the runner's ``name`` is part of each trial's key, so results of the two
engines never mix.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from jaxnn.train import NonFiniteLossError, fit, load_data, load_test, validate_config
from jaxnn.train.config import config_to_dict
from jaxnn.train.loop import best_variables
from jaxnn.tune.trials import TrialGroup, shared_signature
from jaxnn.tune.tuner import TrialResult

__all__ = ["FitTrialRunner", "VmappedTrialRunner", "make_runner"]

log = logging.getLogger("jaxnn.tune")



def _without_progress_bar(config: ml_collections.ConfigDict) -> Any:
    """The validated (frozen) config of a trial, with the per-epoch progress bar off."""
    plain = ml_collections.ConfigDict(config_to_dict(config))
    plain.train.progress_bar = False
    return validate_config(plain)

class _DataCache:
    def __init__(self):
        self._data: dict[str, Any] = {}

    def get(self, cfg: dict) -> Any:
        key = json.dumps(config_to_dict(cfg)["data"], sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(cfg)
        return self._data[key]


class VmappedTrialRunner:
    """Vmapped trials (see module docstring). ``max_group``: trials per vmapped program."""

    name = "vmapped"

    def __init__(self, *, max_group: int = 8):
        self.max_group = max_group
        self._data = _DataCache()
        self._trainers: dict[str, TrialGroup] = {}

    def _trainer(self, cfg: dict, signature: str) -> TrialGroup:
        if signature not in self._trainers:
            self._trainers[signature] = TrialGroup(cfg, self._data.get(cfg), vmap=True)
        return self._trainers[signature]

    def run(self, configs: Sequence[ml_collections.ConfigDict]) -> list[TrialResult]:
        cfgs = [validate_config(c) for c in configs]
        groups: dict[str, list[int]] = {}
        for i, cfg in enumerate(cfgs):
            groups.setdefault(shared_signature(cfg), []).append(i)
        results: list[TrialResult | None] = [None] * len(cfgs)
        for signature, members in groups.items():
            for start in range(0, len(members), self.max_group):
                chunk = members[start : start + self.max_group]
                trainer = self._trainer(cfgs[chunk[0]], signature)
                hyper = {
                    "learning_rate": [cfgs[i]["optim"]["learning_rate"] for i in chunk],
                    "dropout": [cfgs[i]["model"]["dropout"] for i in chunk],
                    "weight_decay": [cfgs[i]["optim"]["weight_decay"] for i in chunk],
                }
                out = trainer.fit(hyper, [cfgs[i]["seed"] for i in chunk])
                for j, i in enumerate(chunk):
                    failed = out.failure[j] is not None
                    results[i] = TrialResult(
                        "failed" if failed else "complete",
                        out.history[j],
                        out.wall_time_s / len(chunk),
                        out.failure[j],
                    )
        return results  # type: ignore[return-value]

    def evaluate_test(self, config: ml_collections.ConfigDict) -> dict[str, float]:
        cfg = validate_config(config)
        data = self._data.get(cfg)
        trainer = TrialGroup(cfg, data, vmap=True)
        out = trainer.fit(
            {
                n: [v]
                for n, v in (
                    ("learning_rate", cfg["optim"]["learning_rate"]),
                    ("dropout", cfg["model"]["dropout"]),
                    ("weight_decay", cfg["optim"]["weight_decay"]),
                )
            },
            [cfg["seed"]],
        )
        if out.failure[0] is not None:
            raise FloatingPointError(f"the final config failed: {out.failure[0]}")
        test = trainer.evaluate(out.best_variables, load_test(cfg, data))[0]
        return {**test, "best_epoch": float(out.best_epoch[0])}


class FitTrialRunner:
    """One `jaxnn.train.fit` per trial (any model); a NonFiniteLossError fails the trial."""

    name = "fit"

    def __init__(self):
        self._data = _DataCache()

    def run(self, configs: Sequence[ml_collections.ConfigDict]) -> list[TrialResult]:
        results = []
        for config in configs:
            cfg = _without_progress_bar(config)
            start = time.perf_counter()
            try:
                out = fit(cfg, self._data.get(cfg))
            except NonFiniteLossError as err:
                results.append(TrialResult("failed", [], time.perf_counter() - start, str(err)))
                continue
            results.append(TrialResult("complete", out.history, time.perf_counter() - start))
        return results

    def evaluate_test(self, config: ml_collections.ConfigDict) -> dict[str, float]:
        cfg = _without_progress_bar(config)
        data = self._data.get(cfg)
        out = fit(cfg, data)
        metrics = out.trainer.evaluate(best_variables(out, None), load_test(cfg, data))
        return {k: metrics[k] for k in ("loss", "accuracy", "macro_f1")}


def make_runner(engine: str, *, max_group: int = 8) -> VmappedTrialRunner | FitTrialRunner:
    """``engine``: "vmapped" (same-shape trials together, any model) or "fit" (jaxnn.train)."""
    if engine == "vmapped":
        return VmappedTrialRunner(max_group=max_group)
    if engine == "fit":
        return FitTrialRunner()
    raise ValueError(f"tune.engine={engine!r}; allowed: 'vmapped', 'fit'")
