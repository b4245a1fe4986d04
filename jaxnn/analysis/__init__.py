"""Analyses built on jaxnn.train: the bias-variance picture of under- and overfitting.

- `jaxnn.analysis.bias_variance`: K bootstrap models trained in one vmapped program; squared
  bias, variance (E[(ŷ(x) − E[ŷ(x)])²]) and expected loss on held-out data, swept over capacity
  and epochs, with the point early stopping would choose.
"""

from jaxnn.analysis.bias_variance import bootstrap_weights, decompose, sweep

__all__ = ["bootstrap_weights", "decompose", "sweep"]
