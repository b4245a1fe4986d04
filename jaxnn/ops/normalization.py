"""Normalization: per-sample (LayerNorm, RMSNorm) and per-batch (BatchNorm).

Feature axis is the last axis, size F; every other axis indexes positions ("samples").

    layer_norm: μ, σ² over the features of each position     y = (x - μ)/√(σ² + ε) · γ + β
    rms_norm:   r² = mean of x² over the features             y = x/√(r² + ε) · γ
    batch_norm: μ_f, σ²_f over all positions, per feature f   y = (x - μ)/√(σ² + ε) · γ + β

LayerNorm uses per-sample statistics and behaves the same in training and evaluation;
BatchNorm uses batch statistics in training and running averages of them in evaluation.
Statistics are computed in float32 even for bfloat16/float16 inputs (float64 stays
float64), and a variance that rounds below zero is clipped to 0. Outputs have x's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["batch_norm", "layer_norm", "rms_norm"]


def _stats_dtype(dtype) -> jnp.dtype:
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def _check_min_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
    if x.ndim < rank:
        raise ValueError(f"{name} must have rank >= {rank} ({layout}); got shape {x.shape}")


def _check_feature_vector(name: str, value, features: int, optional: bool = True) -> None:
    if value is None and optional:
        return
    shape = jnp.shape(value)
    if shape != (features,):
        raise ValueError(
            f"{name} must have shape [F] = ({features},) to match x's last axis; got {shape}"
        )


def _affine(y: jax.Array, scale, bias) -> jax.Array:
    if scale is not None:
        y = y * jnp.asarray(scale, y.dtype)
    if bias is not None:
        y = y + jnp.asarray(bias, y.dtype)
    return y


def layer_norm(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, eps: float = 1e-6
) -> jax.Array:
    """Layer normalization (Ba et al. 2016) over the last axis of each position.

        μ = mean_f x_f,  σ² = mean_f (x_f - μ)²,  y = (x - μ) / √(σ² + ε) · scale + bias

    Args:
      x: [..., F], e.g. [B, T, D].
      scale: γ [F] or None (no scaling).
      bias: β [F] or None (no shift).
      eps: ε >= 0 added to the variance.

    Returns:
      [..., F] with x's dtype. Without scale/bias every position has mean 0 and variance
      σ²/(σ² + ε) ≈ 1; a constant position maps to ``bias``. The variance is the two-pass
      mean of squared deviations (no E[x²] - E[x]² cancellation).
    """
    x = jnp.asarray(x)
    _check_min_rank("x", x, 1, "[..., F]")
    _check_feature_vector("scale", scale, x.shape[-1])
    _check_feature_vector("bias", bias, x.shape[-1])
    if eps < 0:
        raise ValueError(f"eps={eps!r}; allowed: eps >= 0")
    xf = x.astype(_stats_dtype(x.dtype))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    centred = xf - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + eps)
    return _affine(y, scale, bias).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float = 1e-6) -> jax.Array:
    """Root-mean-square normalization (Zhang & Sennrich 2019) over the last axis.

        r² = mean_f x_f²,  y = x / √(r² + ε) · scale

    No centring and no bias: cheaper than layer_norm, used in many recent Transformers.

    Args:
      x: [..., F].
      scale: γ [F] or None.
      eps: ε >= 0.

    Returns:
      [..., F] with x's dtype; an all-zero position stays zero.
    """
    x = jnp.asarray(x)
    _check_min_rank("x", x, 1, "[..., F]")
    _check_feature_vector("scale", scale, x.shape[-1])
    if eps < 0:
        raise ValueError(f"eps={eps!r}; allowed: eps >= 0")
    xf = x.astype(_stats_dtype(x.dtype))
    mean_square = jnp.mean(xf * xf, axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(mean_square + eps)
    return _affine(y, scale, None).astype(x.dtype)


def _prepare_mask(mask, x: jax.Array) -> jax.Array:
    """mask as a bool array of x's shape; a mask of rank x.ndim - 1 covers the positions."""
    mask = jnp.asarray(mask)
    if mask.ndim == x.ndim - 1 and mask.shape == x.shape[:-1]:
        mask = mask[..., None]
    try:
        ok = jnp.broadcast_shapes(mask.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask has shape {mask.shape}; allowed: broadcastable to x's shape {x.shape} "
            f"(e.g. {(*x.shape[:-1], 1)}) or exactly x.shape[:-1] = {x.shape[:-1]}"
        )
    return jnp.broadcast_to(mask.astype(bool), x.shape)


def batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    momentum: float = 0.9,
    eps: float = 1e-5,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Batch normalization (Ioffe & Szegedy 2015): per-feature statistics over the batch.

    Training (train=True), with n_f the number of unmasked positions of feature f:

        μ_f  = Σ x_f / n_f,   σ²_f = max(Σ x_f² / n_f - μ_f², 0)        (sums over unmasked)

    (computed on x - running_mean, which leaves μ and σ² unchanged and is more accurate).
        y    = (x - μ) / √(σ² + ε) · scale + bias
        new_running_mean = momentum · running_mean + (1 - momentum) · μ
        new_running_var  = momentum · running_var  + (1 - momentum) · σ²

    Evaluation (train=False): y uses μ = running_mean, σ² = running_var, which are returned
    unchanged. As in ``flax.linen.BatchNorm``, σ² is the *biased* batch variance (divided by
    n, not n - 1) both for normalizing and for the running average.

    Args:
      x: [..., F], rank >= 2, e.g. [B, D] or [B, T, D]; statistics over every axis but the
        last.
      scale: γ [F] or None.  bias: β [F] or None.
      running_mean, running_var: [F] running statistics (float32 usually).
      train: batch statistics and updated running averages (True) or running statistics.
      momentum: in [0, 1]; the weight of the old running value.
      eps: ε >= 0 added to the variance.
      mask: optional bool, broadcastable to x (e.g. [B, T, 1]) or of shape x.shape[:-1]
        (e.g. [B, T]); only True positions count towards the statistics, so padding never
        moves them. Outputs are still computed at every position.
      axis_name: name of a mapped axis (``jax.vmap``/``shard_map``/``pmap``) over which the
        batch is split: the masked sums Σx, Σx² and the counts n are ``lax.psum``-ed in one
        collective, so the statistics equal those of the whole, unsplit batch even when the
        shards hold different numbers of unmasked positions.

    Returns:
      (y [..., F] with x's dtype, (new_running_mean [F], new_running_var [F])) in the
      dtype of the running statistics. A feature with no unmasked position in the (global)
      batch normalizes with μ = running_mean, σ² = 0 (no NaN) and leaves its running
      statistics unchanged.
    """
    x = jnp.asarray(x)
    _check_min_rank("x", x, 2, "[..., F] with at least one batch axis")
    features = x.shape[-1]
    _check_feature_vector("scale", scale, features)
    _check_feature_vector("bias", bias, features)
    _check_feature_vector("running_mean", running_mean, features, optional=False)
    _check_feature_vector("running_var", running_var, features, optional=False)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r}; allowed: a float in [0, 1]")
    if eps < 0:
        raise ValueError(f"eps={eps!r}; allowed: eps >= 0")
    if mask is not None:
        mask = _prepare_mask(mask, x)
    stats_dtype = _stats_dtype(x.dtype)
    xf = x.astype(stats_dtype)

    if train:
        axes = tuple(range(x.ndim - 1))
        # Sums of x - c and (x - c)² with c = running_mean: exact for any constant c, and once
        # the running mean is close to the batch mean it avoids the cancellation in
        # E[x²] - E[x]² when |mean| >> std. (c is the same on every device: the running
        # statistics are replicated.)
        shift = jax.lax.stop_gradient(jnp.asarray(running_mean, stats_dtype))
        centred = xf - shift
        if mask is None:
            count = jnp.full((features,), x.size // features, stats_dtype)
        else:
            count = jnp.sum(mask, axis=axes, dtype=stats_dtype)
            centred = jnp.where(mask, centred, 0.0)
        sums = jnp.sum(centred, axis=axes)
        square_sums = jnp.sum(centred * centred, axis=axes)
        if axis_name is not None:
            sums, square_sums, count = jax.lax.psum((sums, square_sums, count), axis_name)
        safe_count = jnp.maximum(count, 1.0)
        shifted_mean = sums / safe_count
        var = jnp.maximum(square_sums / safe_count - shifted_mean * shifted_mean, 0.0)
        mean = shift + shifted_mean
        seen = count > 0
        old_mean = jnp.asarray(running_mean)
        old_var = jnp.asarray(running_var)
        new_mean = jnp.where(seen, momentum * old_mean + (1.0 - momentum) * mean, old_mean)
        new_var = jnp.where(seen, momentum * old_var + (1.0 - momentum) * var, old_var)
        new_stats = (new_mean.astype(old_mean.dtype), new_var.astype(old_var.dtype))
    else:
        mean = jnp.asarray(running_mean, stats_dtype)
        var = jnp.asarray(running_var, stats_dtype)
        new_stats = (jnp.asarray(running_mean), jnp.asarray(running_var))

    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return _affine(y, scale, bias).astype(x.dtype), new_stats
