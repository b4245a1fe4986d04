"""The "reference" attention kernel: materializes the [B, N, T, S] scores in float32.

    weights = dropout(masked_softmax(Q Kᵀ / √H + bias)),   out = weights V

The one implementation that returns the weights; the others are checked against it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn.ops.attention.masks import combined_mask
from jaxnn.ops.dropout import dropout


def reference_attention(
    q, k, v, mask, bias, is_causal, key_lengths, dropout_rate, dropout_rng
) -> tuple[jax.Array, jax.Array]:
    """(out [B, T, N, H] in q's dtype, weights [B, N, T, S] float32 after dropout).

    Every statistic (logits, row max, sum) is float32 whatever the input dtype; the matmuls
    run at ``Precision.HIGHEST``. A row with no valid key gets zero weights.
    """
    t_len, head_dim = q.shape[1], q.shape[3]
    s_len = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    logits = jnp.einsum("btnh,bsnh->bnts", qf, kf, precision=lax.Precision.HIGHEST) * scale
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(jnp.float32)
    valid = combined_mask(mask, is_causal, key_lengths, t_len, s_len)
    if valid is None:
        valid = jnp.ones((1, 1, 1, 1), bool)
    valid = jnp.broadcast_to(valid, logits.shape)
    # Masked softmax: the max and the exp only see valid logits (the second `where` keeps
    # exp away from masked entries so no inf * 0 = NaN reaches the gradient); a row with no
    # valid key has a zero sum and gets zero weights.
    row_max = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    shifted = jnp.where(valid, logits - row_max, 0.0)
    unnorm = jnp.where(valid, jnp.exp(shifted), 0.0)
    denom = jnp.sum(unnorm, axis=-1, keepdims=True)
    weights = unnorm / jnp.where(denom > 0, denom, 1.0)
    # attention dropout is jaxnn.ops.dropout on the weights (the same 16-bit Threefry draws)
    weights = dropout(weights, dropout_rate, dropout_rng)
    out = jnp.einsum("bnts,bsnh->btnh", weights, vf, precision=lax.Precision.HIGHEST)
    return out.astype(q.dtype), weights
