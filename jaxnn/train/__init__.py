"""Training: config schema, optimizers, train state, jitted steps, the loop, checkpoints, logs.

Entry points:
  train_and_evaluate(config, workdir) -> results dict   the whole run (train.py calls this)
  fit(config, data=None, workdir=None) -> FitResult     training + validation only (for tuning)
  Trainer(config, data)                                 model, jitted steps, per-epoch control
  validate_config(config), base_config()                the schema and its checks

Modules: trainer (state, steps, Trainer), loop (fit, train_and_evaluate), workdir (lock,
config and data checks, run files), checkpoint, logs, errors (the exit code of each failure).
"""

from jaxnn.train.config import ConfigError, base_config, validate_config
from jaxnn.train.errors import (
    ConfigMismatchError,
    DataError,
    DataMismatchError,
    EmptySplitError,
    EnvironmentFailure,
    InputError,
    NonFiniteLossError,
    RunError,
    WorkdirBusyError,
)
from jaxnn.train.loop import (
    FitResult,
    best_variables,
    fit,
    load_data,
    load_test,
    train_and_evaluate,
)
from jaxnn.train.trainer import Steps, Trainer, build_steps, init_train_state, mesh_from_config

__all__ = [
    "ConfigError",
    "ConfigMismatchError",
    "DataError",
    "DataMismatchError",
    "EmptySplitError",
    "EnvironmentFailure",
    "FitResult",
    "InputError",
    "NonFiniteLossError",
    "RunError",
    "Steps",
    "Trainer",
    "WorkdirBusyError",
    "base_config",
    "best_variables",
    "build_steps",
    "fit",
    "init_train_state",
    "load_data",
    "load_test",
    "mesh_from_config",
    "train_and_evaluate",
    "validate_config",
]
