"""Analyses built on jaxnn.train: the bias-variance picture of under- and overfitting.

- `jaxnn.analysis.bias_variance`: K bootstrap models trained in one vmapped program; squared
  bias, variance (E[(ŷ(x) − E[ŷ(x)])²]) and expected loss on held-out data, swept over capacity
  and epochs, with the point early stopping would choose.

The names below are imported on first use, so ``python -m jaxnn.analysis.bias_variance`` runs
its module once (an eager import here made runpy warn that it was already imported).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["bootstrap_weights", "decompose", "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("jaxnn.analysis.bias_variance"), name)
    raise AttributeError(f"module 'jaxnn.analysis' has no attribute {name!r}")
