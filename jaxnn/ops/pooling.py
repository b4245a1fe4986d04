"""Pooling a variable-length sequence into one vector.

    mean_pool:        pooled = (1/n) Σ_{t: mask_t} x_t       n = number of unmasked tokens
    max_pool:         pooled_d = max_{t: mask_t} x_{t,d}
    first_token_pool: pooled = x_0                            (a [CLS]-style summary)

Shapes: x [B, T, D], mask [B, T] (True = real token, False = padding) -> [B, D].
Padded positions never influence the result, whatever values they hold (even inf or NaN),
and receive a zero gradient. A row with no real token pools to the zero vector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["first_token_pool", "max_pool", "mean_pool"]


def _check(x, mask) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3 ([B, T, D]); got shape {x.shape}")
    if mask is None:
        return x, jnp.ones(x.shape[:2], bool)
    mask = jnp.asarray(mask)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must have shape [B, T] = {x.shape[:2]} to match x {x.shape}; got {mask.shape}"
        )
    return x, mask.astype(bool)


def _sum_dtype(dtype) -> jnp.dtype:
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def mean_pool(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of the unmasked vectors: Σ_t mask_t x_t / Σ_t mask_t.

    Args:
      x: [B, T, D] embeddings.
      mask: [B, T], True (or nonzero) for real tokens; None means every token is real.

    Returns:
      [B, D] with x's dtype (the sum is accumulated in float32 for half precision); zeros for
      a row without real tokens (not 0/0 = NaN).
    """
    x, mask = _check(x, mask)
    acc = _sum_dtype(x.dtype)
    total = jnp.sum(jnp.where(mask[..., None], x.astype(acc), 0.0), axis=1)
    count = jnp.sum(mask, axis=1, dtype=acc)[:, None]
    return (total / jnp.maximum(count, 1.0)).astype(x.dtype)


def max_pool(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Element-wise maximum over the unmasked vectors: pooled_d = max_{t: mask_t} x_{t,d}.

    Args:
      x: [B, T, D], floating dtype.
      mask: [B, T], True (or nonzero) for real tokens; None means every token is real.

    Returns:
      [B, D] with x's dtype; zeros for a row without real tokens (not -inf). Ties share the
      gradient equally (as ``jnp.max``).
    """
    x, mask = _check(x, mask)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must have a floating dtype for max_pool; got {x.dtype}")
    masked = jnp.where(mask[..., None], x, -jnp.inf)
    pooled = jnp.max(masked, axis=1)
    any_token = jnp.any(mask, axis=1)[:, None]
    return jnp.where(any_token, pooled, jnp.zeros_like(pooled))


def first_token_pool(x: jax.Array) -> jax.Array:
    """The first position's vector, x[:, 0]: [B, T, D] -> [B, D] (T >= 1)."""
    x = jnp.asarray(x)
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"x must have shape [B, T, D] with T >= 1; got shape {x.shape}")
    return x[:, 0]
