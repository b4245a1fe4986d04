"""Dropout (study guide §3): "dropout = 0.3" zeroes 30% of the units at each training pass.

    keep_i ~ Bernoulli(1 - rate) independently,   y_i = keep_i · x_i / (1 - rate)

Scaling the survivors by 1/(1 - rate) ("inverted dropout", Srivastava et al. 2014) keeps the
expectation E[y_i] = x_i, so nothing changes at evaluation time, where dropout is the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dropout"]


def _static_rate(rate) -> float | None:
    """rate as a Python float when it is concrete, None when it is traced."""
    if jnp.ndim(rate) != 0:
        raise ValueError(f"rate must be a scalar; got shape {jnp.shape(rate)}")
    try:
        value = float(rate)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise ValueError(f"rate={rate!r}; allowed: a probability in [0, 1]")
    return value


def dropout(
    x: jax.Array,
    rate: float | jax.Array,
    rng: jax.Array | None,
    deterministic: bool = False,
) -> jax.Array:
    """Zero each element of x independently with probability ``rate``; scale the rest by 1/(1-rate).

    Args:
      x: any shape [...], floating dtype (kept).
      rate: probability of dropping an element. A Python (or NumPy, or concrete JAX) scalar
        is validated: outside [0, 1] raises ValueError, 0 returns x unchanged and 1 returns
        zeros (no 0/0). A *traced* scalar (e.g. one rate per trial under ``jax.vmap``) cannot
        be checked at trace time: it must lie in [0, 1] by the caller's guarantee (a value
        below 0 keeps everything and scales by 1/(1-rate) < 1; above 1 drops everything);
        rate = 1 still gives zeros, not NaN, and a zero gradient.
      rng: a ``jax.random`` key; unused (may be None) when deterministic or rate is 0 or 1.
      deterministic: True returns x unchanged (evaluation mode).

    Returns:
      Same shape and dtype as x, with E[output] = x.
    """
    x = jnp.asarray(x)
    static = _static_rate(rate)
    if deterministic or static == 0.0:
        return x
    if static == 1.0:
        return jnp.zeros_like(x)
    if rng is None:
        raise ValueError(f"rng is None but dropout with rate={rate!r} needs a jax.random key")
    keep_prob = 1.0 - (static if static is not None else jnp.asarray(rate, jnp.float32))
    keep = jax.random.bernoulli(rng, keep_prob, x.shape)
    if static is not None:
        scale = 1.0 / keep_prob
    else:
        # keep_prob = 0 keeps nothing; guard the unused 1/0 so that no inf reaches the graph.
        scale = jnp.where(keep_prob > 0, 1.0 / jnp.where(keep_prob > 0, keep_prob, 1.0), 0.0)
    return jnp.where(keep, x * scale, 0).astype(x.dtype)
