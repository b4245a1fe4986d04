"""Progressive hyperparameter tuning, one or two hyperparameters at a time, logged in Optuna.

- `jaxnn.tune.space`: the hyperparameters, their valid ranges and config paths; stages.
- `jaxnn.tune.study`: trials in an Optuna study (resume, several processes, heartbeats).
- `jaxnn.tune.tuner`: `ProgressiveTuner` and `run_search` (random search, TPE).
- `jaxnn.tune.trials`: `TrialGroup`, same-shape trials of any model trained together: ``jax.vmap``
  of the ordinary train step (hyperparameters are arrays).
- `jaxnn.tune.runners`: `VmappedTrialRunner` (groups of `TrialGroup`) and `FitTrialRunner`.
- `jaxnn.tune.report`: tune_results.json, the Markdown table and the stage plots.

Run: ``python -m jaxnn.tune --config=configs/tune_bbc.py --workdir=runs/tune_bbc``.
"""

from jaxnn.tune.space import HYPERPARAMETERS, TUNING_ORDER, Stage, build_stages
from jaxnn.tune.tuner import ProgressiveTuner, TrialResult, TrialRunner, run_search

__all__ = [
    "HYPERPARAMETERS",
    "TUNING_ORDER",
    "ProgressiveTuner",
    "Stage",
    "TrialResult",
    "TrialRunner",
    "build_stages",
    "run_search",
]
