"""Softmax and z-scoring, the normalization softmax is *not*.

    softmax(z)_i     = e^{z_i} / Σ_j e^{z_j}                      outputs in (0, 1), sum 1
    log_softmax(z)_i = z_i - log Σ_j e^{z_j}
    standardize(z)_i = (z_i - mean(z)) / sqrt(var(z) + eps)      mean 0, variance 1

Softmax turns logits into a probability distribution; it is invariant to adding a constant
to every logit but not to scaling them, while z-scoring is invariant to both and produces
negative values. Both act along one axis of an array of any shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["log_softmax", "softmax", "standardize"]


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for half precision inputs (and integers), float64 kept as is."""
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def _check_axis(name: str, x: jax.Array, axis: int) -> int:
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis={axis!r} is out of range for {name} of shape {x.shape} (rank {x.ndim}); "
            f"allowed: an int in [{-x.ndim}, {x.ndim - 1}]"
        )
    return axis % x.ndim


def _check_where(x: jax.Array, where) -> jax.Array | None:
    if where is None:
        return None
    where = jnp.asarray(where)
    try:
        jnp.broadcast_shapes(where.shape, x.shape)
        ok = jnp.broadcast_shapes(where.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"where has shape {where.shape}, which does not broadcast to x's shape {x.shape}"
        )
    return jnp.broadcast_to(where.astype(bool), x.shape)


def _shifted_logits(x: jax.Array, axis: int, where: jax.Array | None):
    """(x - max x) in the compute dtype, -inf at masked positions, and the row's mask count."""
    x = x.astype(_compute_dtype(x.dtype))
    if where is None:
        row_max = jnp.max(x, axis=axis, keepdims=True)
    else:
        row_max = jnp.max(x, axis=axis, keepdims=True, where=where, initial=-jnp.inf)
    # softmax is shift invariant, so the shift needs no gradient; an all-masked (or all -inf)
    # row has max -inf, replaced by 0 so that no inf - inf = NaN appears.
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    shifted = x - row_max
    if where is not None:
        # -inf (not a where after exp) so that exp and its derivative are exactly 0 there:
        # large masked logits would otherwise give inf * 0 = NaN in the backward pass.
        shifted = jnp.where(where, shifted, -jnp.inf)
    return shifted


def softmax(x: jax.Array, axis: int = -1, where: jax.Array | None = None) -> jax.Array:
    """softmax(x)_i = e^{x_i - m} / Σ_j e^{x_j - m} along ``axis``, m = max_j x_j.

    Subtracting the row maximum m changes nothing mathematically and keeps e^{·} <= 1, so
    large logits do not overflow. Computed in float32 for half precision inputs; the result
    has the dtype of x.

    Args:
      x: logits, any shape [..., C, ...].
      axis: the axis that sums to 1.
      where: optional bool mask broadcastable to x; False entries are left out of the sum
        and get probability 0.

    Returns:
      Same shape and dtype as x; every row sums to 1, except a row whose entries are all
      masked out (or all -inf), which is all zeros (not NaN) with a zero gradient.
    """
    x = jnp.asarray(x)
    axis = _check_axis("x", x, axis)
    where = _check_where(x, where)
    unnormalized = jnp.exp(_shifted_logits(x, axis, where))
    total = jnp.sum(unnormalized, axis=axis, keepdims=True)
    safe_total = jnp.where(total > 0, total, 1.0)
    return (unnormalized / safe_total).astype(x.dtype)


def log_softmax(x: jax.Array, axis: int = -1, where: jax.Array | None = None) -> jax.Array:
    """log_softmax(x)_i = (x_i - m) - log Σ_j e^{x_j - m} along ``axis``, m = max_j x_j.

    More accurate than log(softmax(x)) for very negative log-probabilities. Computed in
    float32 for half precision inputs; the result has the dtype of x.

    Args:
      x: logits, any shape.
      axis: the normalized axis.
      where: optional bool mask broadcastable to x; False entries are left out of the sum.

    Returns:
      Same shape and dtype as x. Masked-out entries hold 0 rather than log 0 = -inf, so that
      weighted sums such as Σ_i y_i log p_i stay finite when y_i = 0 there; a row whose
      entries are all masked out is all zeros (not NaN) with a zero gradient.
    """
    x = jnp.asarray(x)
    axis = _check_axis("x", x, axis)
    where = _check_where(x, where)
    shifted = _shifted_logits(x, axis, where)
    total = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
    log_total = jnp.log(jnp.where(total > 0, total, 1.0))
    result = shifted - log_total
    if where is not None:
        result = jnp.where(where, result, 0.0)
    return result.astype(x.dtype)


def standardize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    """Z-score along ``axis``: (x - mean(x)) / sqrt(var(x) + eps), var the biased variance.

    This is mean-variance normalization (layer_norm without scale and bias), which softmax
    is not: the output has mean 0 and variance ≈ 1, takes negative values, does not sum to
    1, and is unchanged by scaling x by a positive constant. With eps > 0 a constant row
    maps to zeros.
    Statistics are computed in float32 for half precision inputs; the result has x's dtype.
    """
    x = jnp.asarray(x)
    axis = _check_axis("x", x, axis)
    if eps < 0:
        raise ValueError(f"eps={eps!r}; allowed: eps >= 0")
    xf = x.astype(_compute_dtype(x.dtype))
    mean = jnp.mean(xf, axis=axis, keepdims=True)
    centred = xf - mean
    var = jnp.mean(centred * centred, axis=axis, keepdims=True)
    return (centred * jax.lax.rsqrt(var + eps)).astype(x.dtype)
