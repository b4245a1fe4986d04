"""Masks shared by every attention kernel: which query may attend to which key.

Shape letters: B batch, T query length, S key length, N heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def as_rank4(x: jax.Array | None) -> jax.Array | None:
    """``x`` with leading axes of size 1 added up to rank 4 (None stays None)."""
    return None if x is None else jnp.reshape(x, (1,) * (4 - jnp.ndim(x)) + jnp.shape(x))


def combined_mask(mask, is_causal, key_lengths, t_len, s_len, q_offset=0, k_offset=0):
    """Boolean "query may attend to key" broadcastable to [B, N, T, S], or None for all-true.

    ``q_offset`` / ``k_offset`` are the absolute positions of the first query / key (for
    blocks). Causal is aligned top-left like ``jax.nn``: query t sees keys s <= t.
    """
    out = None if mask is None else jnp.asarray(mask)
    if is_causal:
        t_idx = q_offset + lax.broadcasted_iota(jnp.int32, (t_len, s_len), 0)
        s_idx = k_offset + lax.broadcasted_iota(jnp.int32, (t_len, s_len), 1)
        causal = s_idx <= t_idx
        out = causal if out is None else out & causal
    if key_lengths is not None:
        s_idx = k_offset + lax.broadcasted_iota(jnp.int32, (1, s_len), 1)
        pad = s_idx[None, None] < jnp.asarray(key_lengths, jnp.int32)[:, None, None, None]
        out = pad if out is None else out & pad
    return out


def rows_with_a_key(mask, is_causal, key_lengths, t_len, s_len):
    """Boolean broadcastable to [B, N, T]: does query t see at least one key? None if all do."""
    if mask is None:
        # Causal is top-left aligned, so every query sees key 0 unless its example has no keys.
        if key_lengths is None:
            return None
        return (jnp.asarray(key_lengths) > 0)[:, None, None]
    visible = combined_mask(as_rank4(mask), is_causal, key_lengths, t_len, s_len)
    return jnp.any(visible, axis=-1)


def zero_empty_rows(out, s_len, mask, is_causal, key_lengths):
    """Zeros (value and gradient) for the queries [B, T, N, H] of ``out`` that see no key.

    The fused kernels (jax.nn's, Pallas') give such rows uniform weights or undefined values.
    """
    batch, t_len, heads, _ = out.shape
    ok = rows_with_a_key(mask, is_causal, key_lengths, t_len, s_len)
    if ok is None:
        return out
    ok = jnp.swapaxes(jnp.broadcast_to(ok, (batch, heads, t_len)), 1, 2)[..., None]
    return jnp.where(ok, out, jnp.zeros((), out.dtype))
