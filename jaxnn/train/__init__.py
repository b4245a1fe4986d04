"""Training: config schema, optimizers, train state, jitted steps, the loop, checkpoints, logs.

Entry points:
  train_and_evaluate(config, workdir) -> results dict   the whole run (train.py calls this)
  fit(config, data=None, workdir=None) -> FitResult     training + validation only (for tuning)
  Trainer(config, data)                                 model, jitted steps, per-epoch control
  validate_config(config), base_config()                the schema and its checks
"""

from jaxnn.train.config import ConfigError, base_config, validate_config
from jaxnn.train.loop import (
    ConfigMismatchError,
    FitResult,
    NonFiniteLossError,
    Trainer,
    fit,
    load_data,
    load_test,
    train_and_evaluate,
)

__all__ = [
    "ConfigError",
    "ConfigMismatchError",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "base_config",
    "fit",
    "load_data",
    "load_test",
    "train_and_evaluate",
    "validate_config",
]
