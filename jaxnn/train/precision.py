"""Mixed precision: the compute dtype of ``model.dtype`` and dynamic loss scaling for float16.

The policy (``model.dtype``):

    float32    everything in float32 (the default).
    bfloat16   matmuls, activations and attention in bfloat16; parameters, optimizer state and
               gradients stay float32 (the model casts its float32 parameters at use), and the
               softmax, normalization statistics, pooling sums, logits and the loss are float32.
               bfloat16 has float32's exponent range, so no loss scaling is needed.
    auto       bfloat16 on a GPU or TPU, float32 on the CPU (where bfloat16 matmuls are emulated
               and slower); resolved once, where the model is built (`compute_dtype`, called
               by jaxnn.models.get_model), so a config means the same experiment everywhere.
    float16    as bfloat16, plus dynamic loss scaling: float16's largest value is 65504 and its
               smallest normal 6e-5, so small gradients underflow to 0 unless the loss is scaled
               up before the backward pass (Micikevicius et al. 2018, "Mixed Precision
               Training").

Dynamic loss scaling, one train step with scale s (`DynamicLossScale`):

    g      = d(s * L)/dparams / s                   gradients of the scaled loss, unscaled
    finite = all(isfinite(g))
    finite:      params, opt_state <- the optimizer's update;  good <- good + 1
                 if good == period: s <- s * factor, good <- 0          (try a larger scale)
    not finite:  params, opt_state unchanged (the step is skipped);  s <- max(s / factor, 1),
                 good <- 0

Defaults: s_0 = 2^15, factor 2, period 2000 (as in PyTorch's GradScaler).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

# One home, the lowest layer that needs it (jaxnn.models builds the model in that dtype).
from jaxnn.models.registry import compute_dtype

__all__ = ["DynamicLossScale", "all_finite", "compute_dtype", "uses_loss_scale"]


def uses_loss_scale(model_dtype: str) -> bool:
    """Whether a run of ``model.dtype`` carries a `DynamicLossScale` (float16 only)."""
    return model_dtype == "float16"


def all_finite(tree: Any) -> jax.Array:
    """bool []: every element of every leaf of ``tree`` is finite (True for an empty tree)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@struct.dataclass
class DynamicLossScale:
    """Dynamic loss scale state (a pytree: lives in the train state and its checkpoints).

    Attributes:
      scale: float32 [] the current loss scale s.
      good_steps: int32 [] finite steps since the last change of s.
      period: steps of finite gradients after which s grows (static).
      factor: growth / back-off factor (static).
      min_scale: s never goes below this (static).
    """

    scale: jax.Array
    good_steps: jax.Array
    period: int = struct.field(pytree_node=False, default=2000)
    factor: float = struct.field(pytree_node=False, default=2.0)
    min_scale: float = struct.field(pytree_node=False, default=1.0)

    @classmethod
    def create(
        cls, initial_scale: float = 2.0**15, period: int = 2000, factor: float = 2.0
    ) -> DynamicLossScale:
        if not initial_scale >= 1.0:
            raise ValueError(f"initial_scale={initial_scale} is not allowed; allowed: >= 1")
        if period < 1:
            raise ValueError(f"period={period} is not allowed; allowed: an int >= 1")
        if not factor > 1.0:
            raise ValueError(f"factor={factor} is not allowed; allowed: > 1")
        return cls(
            scale=jnp.asarray(initial_scale, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            period=int(period),
            factor=float(factor),
        )

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        """s * loss (in the loss's dtype)."""
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, grads: Any) -> Any:
        """grads / s, leafwise (float32 leaves stay float32)."""
        return jax.tree.map(lambda g: g / self.scale.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> DynamicLossScale:
        """The next state after a step whose unscaled gradients were ``finite`` (bool [])."""
        good = self.good_steps + 1
        grow = finite & (good >= self.period)
        scale = jnp.where(
            finite,
            jnp.where(grow, self.scale * self.factor, self.scale),
            jnp.maximum(self.scale / self.factor, self.min_scale),
        )
        good = jnp.where(finite & ~grow, good, 0).astype(jnp.int32)
        return self.replace(scale=scale.astype(jnp.float32), good_steps=good)
