"""LayerNorm, RMSNorm and BatchNorm modules over jaxnn.ops.normalization.

The modules declare parameters ("scale" = ones, "bias" = zeros, float32) and, for BatchNorm,
the running statistics in the "batch_stats" collection ("mean" = zeros, "var" = ones); the
math is in the ops. All three accept the same call ``norm(x, mask=mask, train=train)`` (see
`apply_norm`), so a block can switch between them by name (`make_norm`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn import ops

__all__ = ["NORMS", "BatchNorm", "LayerNorm", "RMSNorm", "apply_norm", "make_norm"]


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if dtype is None else x.astype(dtype)


class LayerNorm(nn.Module):
    """Per-sample normalization over the last axis: (x - μ)/√(σ² + ε) · scale + bias.

    Attributes:
      epsilon: ε added to the variance.
      dtype: computation/output dtype (None: x's dtype); statistics are float32, parameters
        are float32.

    Call: ``(x, *, mask=None, train=None)``, x [..., F] -> [..., F]. ``mask`` and ``train`` are
    accepted for a uniform norm call and change nothing: the statistics are per position.

    Example:
      >>> ln = LayerNorm()
      >>> y = ln.apply(ln.init(jax.random.key(0), x), x)
    """

    epsilon: float = 1e-6
    dtype: Any = None

    @nn.compact
    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, train: bool | None = None
    ) -> jax.Array:
        del mask, train  # per-position statistics: padding and mode do not matter
        x = _cast(x, self.dtype)
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return ops.layer_norm(x, scale, bias, eps=self.epsilon)


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the last axis: x / √(mean x² + ε) · scale.

    Attributes:
      epsilon: ε.
      dtype: computation/output dtype (None: x's dtype); statistics float32, scale float32.

    Call: ``(x, *, mask=None, train=None)`` as for `LayerNorm`; x [..., F] -> [..., F].
    """

    epsilon: float = 1e-6
    dtype: Any = None

    @nn.compact
    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, train: bool | None = None
    ) -> jax.Array:
        del mask, train
        x = _cast(x, self.dtype)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return ops.rms_norm(x, scale, eps=self.epsilon)


class BatchNorm(nn.Module):
    """Batch normalization with running statistics in the "batch_stats" collection.

    Training (``use_running_average=False``): normalizes with the statistics of the unmasked
    positions of the batch (over every axis but the last) and, except during ``init``,
    updates ``batch_stats/mean`` and ``batch_stats/var`` as
    new = momentum · old + (1 - momentum) · batch (biased batch variance, as flax), so
    ``apply`` must be called with ``mutable=["batch_stats"]``. Evaluation
    (``use_running_average=True``): normalizes with the running statistics.

    Attributes:
      momentum: weight of the old running value.
      epsilon: ε.
      axis_name: mapped axis over which the batch is split (pmap/shard_map/vmap); the
        statistics are then exact over the global batch (see ``jaxnn.ops.batch_norm``).
      dtype: computation/output dtype (None: x's dtype); statistics float32.

    Call: ``(x, *, use_running_average=None, mask=None, train=None)`` with exactly one of
    ``use_running_average`` or ``train`` (train = not use_running_average); x [..., F],
    mask bool [..., 1] or x.shape[:-1] (e.g. [B, T] for x [B, T, D]) excludes padding from
    the statistics.

    Example:
      >>> bn = BatchNorm()
      >>> variables = bn.init(jax.random.key(0), x, use_running_average=False)
      >>> y, updates = bn.apply(variables, x, use_running_average=False, mask=mask,
      ...                       mutable=["batch_stats"])
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        use_running_average: bool | None = None,
        mask: jax.Array | None = None,
        train: bool | None = None,
    ) -> jax.Array:
        if (use_running_average is None) == (train is None):
            raise ValueError(
                "BatchNorm needs exactly one of use_running_average or train; got "
                f"use_running_average={use_running_average!r}, train={train!r}"
            )
        training = (not use_running_average) if train is None else bool(train)
        x = _cast(x, self.dtype)
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        initializing = self.is_initializing()
        y, (new_mean, new_var) = ops.batch_norm(
            x,
            scale,
            bias,
            running_mean.value,
            running_var.value,
            train=training,
            momentum=self.momentum,
            eps=self.epsilon,
            mask=mask,
            # at init the named axis may not exist yet (as in flax)
            axis_name=None if initializing else self.axis_name,
        )
        if training and not initializing:
            running_mean.value = new_mean
            running_var.value = new_var
        return y


NORMS = {"layer": LayerNorm, "batch": BatchNorm, "rms": RMSNorm}


def make_norm(name: str, /, **kwargs: Any) -> nn.Module:
    """A new norm module by name: "layer" (LayerNorm), "batch" (BatchNorm), "rms" (RMSNorm).

    ``kwargs`` go to the module's constructor (e.g. epsilon, dtype, axis_name for batch, and
    the flax submodule ``name``).
    Raises ValueError for an unknown name, listing the valid ones.
    """
    if name not in NORMS:
        raise ValueError(f"norm={name!r} is not known; valid names: {', '.join(NORMS)}")
    return NORMS[name](**kwargs)


def apply_norm(
    module: nn.Module, x: jax.Array, *, mask: jax.Array | None, train: bool
) -> jax.Array:
    """Call any norm module the same way: BatchNorm uses batch statistics (over the positions
    where mask is True) when ``train`` and running statistics otherwise; LayerNorm and
    RMSNorm ignore mask and train. x [..., F] -> [..., F]; mask [B, T] for x [B, T, D]."""
    return module(x, mask=mask, train=train)
