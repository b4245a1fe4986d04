"""The train state: one pytree holding everything a step reads and writes.

It is donated to the jitted step (updated in place) and saved whole in a checkpoint, so a resumed
run continues bitwise where it stopped: parameters, BatchNorm running statistics, optimizer
state, the base dropout key, the step counter, and the running training sums of the current
epoch (so the epoch's mean loss is the same whether or not it was interrupted).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["NO_NONFINITE", "TrainState", "zero_train_metrics"]

# "no non-finite loss seen yet" in TrainState.metrics["nonfinite_step"]
NO_NONFINITE = -1


def zero_train_metrics() -> dict[str, jax.Array]:
    """Running sums of one epoch: weighted loss, examples, correct ones, first bad step."""
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "weight": jnp.zeros((), jnp.float32),
        "correct": jnp.zeros((), jnp.float32),
        "nonfinite_step": jnp.full((), NO_NONFINITE, jnp.int32),
    }


@struct.dataclass
class TrainState:
    """Attributes:
    step: int32 [] number of steps taken (the next step's index).
    params: model parameters (float32).
    batch_stats: BatchNorm running statistics ({} when the model has none).
    opt_state: Optax state (plus the sparse tables' moments).
    rng: uint32 [2] base PRNG key; step t's dropout key is fold_in(rng, t).
    metrics: the epoch's running sums (`zero_train_metrics`).
    loss_scale: the float16 dynamic loss scale (`jaxnn.train.precision.DynamicLossScale`), or
      None (float32 / bfloat16: an empty subtree, so their checkpoints do not change).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    metrics: dict[str, jax.Array]
    loss_scale: Any = None

    def variables(self) -> dict[str, Any]:
        """The flax variables for ``model.apply``."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}
