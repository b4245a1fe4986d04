"""Scaled dot-product attention (study guide §9).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + bias) V

Shape letters: B batch, T query length, S key length, N heads, H head dim.
Layout is [B, T, N, H] as in ``jax.nn.dot_product_attention``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxnn.ops.dropout import (
    bits16_at,
    counter_grid,
    counters_fit,
    dropout,
    is_threefry_key,
    keep_threshold,
    key_words,
)

__all__ = ["IMPLEMENTATIONS", "dot_product_attention"]

IMPLEMENTATIONS = ("reference", "chunked", "xla", "cudnn", "pallas", "auto")


# --------------------------------------------------------------------------------------------
# Argument checking (trace time, before any compute)
# --------------------------------------------------------------------------------------------


def _broadcastable(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def _check_args(q, k, v, mask, bias, key_lengths, dropout_rate, dropout_rng, implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation={implementation!r}; allowed: {', '.join(IMPLEMENTATIONS)}"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{name} must have rank 4 ([B, T, N, H] for q, [B, S, N, H] for k and v); "
                f"got shape {jnp.shape(x)}"
            )
    batch, _, heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[2] != heads or k.shape[3] != head_dim:
        raise ValueError(
            f"k must have shape [B, S, N, H] = [{batch}, S, {heads}, {head_dim}] to match "
            f"q {q.shape}; got {k.shape}"
        )
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape [B, S, N, H'] matching k {k.shape}; got {v.shape}")
    target = (batch, heads, q.shape[1], k.shape[1])
    if mask is not None:
        if jnp.result_type(mask) != jnp.bool_:
            raise ValueError(f"mask must be boolean; got dtype {jnp.result_type(mask)}")
        if not _broadcastable(jnp.shape(mask), target):
            raise ValueError(
                f"mask shape {jnp.shape(mask)} is not broadcastable to [B, N, T, S] = {target}"
            )
    if bias is not None and not _broadcastable(jnp.shape(bias), target):
        raise ValueError(
            f"bias shape {jnp.shape(bias)} is not broadcastable to [B, N, T, S] = {target}"
        )
    if key_lengths is not None:
        if jnp.shape(key_lengths) != (batch,) or not jnp.issubdtype(
            jnp.result_type(key_lengths), jnp.integer
        ):
            raise ValueError(
                f"key_lengths must be an integer array of shape [B] = ({batch},); got shape "
                f"{jnp.shape(key_lengths)} dtype {jnp.result_type(key_lengths)}"
            )
    if not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"dropout_rate={dropout_rate!r}; allowed: a Python float in [0, 1]")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError(
            f"dropout_rate={dropout_rate} needs dropout_rng (a jax.random key); got None"
        )
    return target


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _combined_mask(mask, is_causal, key_lengths, t_len, s_len, q_offset=0, k_offset=0):
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


# --------------------------------------------------------------------------------------------
# "reference": materializes the [B, N, T, S] scores
# --------------------------------------------------------------------------------------------


def _reference(q, k, v, mask, bias, is_causal, key_lengths, dropout_rate, dropout_rng):
    t_len, head_dim = q.shape[1], q.shape[3]
    s_len = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    logits = jnp.einsum("btnh,bsnh->bnts", qf, kf, precision=lax.Precision.HIGHEST) * scale
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(jnp.float32)
    valid = _combined_mask(mask, is_causal, key_lengths, t_len, s_len)
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


# --------------------------------------------------------------------------------------------
# "chunked": FlashAttention in pure JAX (online softmax forward, recomputing custom_vjp backward)
# --------------------------------------------------------------------------------------------


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _split(length: int, targets: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """Padded length and one block size per target, all blocks dividing the padded length.

    The smallest target fixes the base block: the fewest blocks of at most that size, evened
    out and rounded up to a multiple of 8 (so padding wastes < 8 rows per block). Each
    other target gets the largest multiple of the base block that divides the padded length
    and does not exceed it.
    """
    base_target = min(targets)
    num = -(-length // base_target)
    base = _round_up(-(-length // num), 8)
    blocks = []
    for target in targets:
        factor = max(f for f in range(1, num + 1) if num % f == 0 and base * f <= max(target, base))
        blocks.append(base * factor)
    return num * base, tuple(blocks)


_FWD_BLOCKS = (1024, 2048)
_BWD_BLOCKS = (2048, 1024)
# Scores per step of the outer loop. 1M (16 (example, head) pairs of 256 x 256 blocks) over
# 512K: the transformer train step (B=64, T=256, N=4) 2.4 % faster on a 2-core Zen 5 EPYC
# (paired ratio 0.976, 12 of 15 interleaved rounds); 2M and 4M were 3 % and 7 % slower.
_GROUP_BUDGET = 1024 * 1024


def _as_rank4(x):
    return None if x is None else jnp.reshape(x, (1,) * (4 - jnp.ndim(x)) + jnp.shape(x))


def _pad_axis(x, axis, new_size, value):
    if x.shape[axis] in (1, new_size):
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, new_size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _slice_block(x, axis, start, size):
    """Block [start, start + size) of `x` along `axis`, or `x` itself where that axis is 1."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)


class _Static:
    """Hashable static plan of one blocked pass (part of a nondiff argument of custom_vjp)."""

    def __init__(self, t_len, s_len, t_pad, s_pad, block_q, block_k, flags):
        is_causal, has_mask, has_bias, has_lengths = flags
        self.t_len, self.s_len = t_len, s_len
        self.block_q, self.block_k = block_q, block_k
        self.num_q = t_pad // block_q
        self.num_k = s_pad // block_k
        self.is_causal, self.has_mask = is_causal, has_mask
        self.has_bias, self.has_lengths = has_bias, has_lengths
        self.ragged_k = s_pad != s_len
        self._key = (t_len, s_len, t_pad, s_pad, block_q, block_k, *flags)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key

    def needs_mask(self) -> bool:
        return self.is_causal or self.has_mask or self.has_lengths or self.ragged_k


def _block_valid(st: _Static, mask, lengths, q_start, k_start):
    """Boolean [B|1, N|1, bq, bk] validity of one block, or None when every entry is valid."""
    if not st.needs_mask():
        return None
    bq, bk = st.block_q, st.block_k
    valid = None
    if st.has_mask:
        valid = _slice_block(_slice_block(mask, 2, q_start, bq), 3, k_start, bk)
    k_idx = k_start + lax.broadcasted_iota(jnp.int32, (1, 1, 1, bk), 3)
    if st.is_causal:
        q_idx = q_start + lax.broadcasted_iota(jnp.int32, (1, 1, bq, 1), 2)
        causal = k_idx <= q_idx
        valid = causal if valid is None else valid & causal
    if st.has_lengths:
        # `lengths` is already clipped to S, so it also masks the zero padding of the last block.
        pad = k_idx < lengths[:, None, None, None]
        valid = pad if valid is None else valid & pad
    elif st.ragged_k:
        pad = k_idx < st.s_len
        valid = pad if valid is None else valid & pad
    return valid


def _block_logits(st: _Static, q_blk, kt_blk, bias, q_start, k_start):
    s = jnp.einsum("bnqh,bnhk->bnqk", q_blk, kt_blk, preferred_element_type=jnp.float32)
    if st.has_bias:
        s = s + _slice_block(_slice_block(bias, 2, q_start, st.block_q), 3, k_start, st.block_k)
    return s


class _Dropout:
    """Static part of "chunked" attention dropout (hashable: part of the custom_vjp plan).

    The mask is the one "reference" draws for its [B, N, T, S] weights with jaxnn.ops.dropout:
    element (b, n, t, s) is kept iff draw s mod 4 of the Threefry counter
    ((b·N + n)·T + t)·G + floor(s / 4), G = ceil(S / 4), is >= τ (`bits16_at`). Any block's
    counters follow from its offsets, so the forward and backward passes regenerate each
    block's mask and never hold a T×S array.
    """

    def __init__(self, rate: float, heads: int, t_len: int, s_len: int):
        self.threshold, self.scale = keep_threshold(rate)
        self.heads, self.t_len, self.groups = heads, t_len, counter_grid((s_len,))[0]
        self._key = (self.threshold, heads, t_len, self.groups)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Dropout) and self._key == other._key


def _block_keep(drop: _Dropout, seed, b0, n0, shape, q_start, k_start):
    """Boolean [gb, gn, bq, bk] keep mask of one block of the group starting at example b0
    (of the whole batch: ``seed[2]`` holds this device's first example) and head n0."""
    gb, gn, bq, bk = shape
    u32 = lambda x: jnp.asarray(x).astype(jnp.uint32)
    iota = lambda n, axis: lax.broadcasted_iota(jnp.uint32, (gb, gn, bq, bk // 4), axis)
    b = seed[2] + u32(b0) + iota(gb, 0)
    n = u32(n0) + iota(gn, 1)
    t = u32(q_start) + iota(bq, 2)
    g = u32(k_start // 4) + iota(bk // 4, 3)
    counter = ((b * np.uint32(drop.heads) + n) * np.uint32(drop.t_len) + t) * np.uint32(
        drop.groups
    ) + g
    return bits16_at(seed[:2], counter).astype(jnp.int32) >= drop.threshold


def _key_block_range(st: _Static, lengths, q_start):
    """[0, hi) key blocks that can hold a visible key for queries starting at q_start."""
    hi = jnp.int32(st.num_k)
    if st.is_causal:
        last_q = jnp.minimum(q_start + st.block_q, st.t_len) - 1
        hi = jnp.minimum(hi, last_q // st.block_k + 1)
    if st.has_lengths:
        hi = jnp.minimum(hi, (jnp.max(lengths) + st.block_k - 1) // st.block_k)
    return hi


def _chunked_forward(st: _Static, q, k, v, bias, mask, lengths, drop=None, seed=None, b0=0, n0=0):
    """q [B,N,Tp,H] (already scaled), k/v [B,N,Sp,H] f32 -> out [B,N,Tp,Hv], lse [B,N,Tp].

    With ``drop`` (a `_Dropout`), the probabilities that multiply V are dropped (survivors
    scaled) while the softmax sums use them all; (b0, n0) are this group's first example and
    head, so each block draws the mask "reference" would."""
    batch, heads, _, _ = q.shape
    head_dim_v = v.shape[-1]
    bq, bk = st.block_q, st.block_k
    k_t = jnp.swapaxes(k, 2, 3)  # [B, N, H, Sp]: every block matmul is a plain [m,k]@[k,n]

    def one_query_block(i):
        q_start = i * bq
        q_blk = lax.dynamic_slice_in_dim(q, q_start, bq, 2)

        def body(j, carry):
            m_prev, l_prev, acc_prev = carry
            k_start = j * bk
            kt_blk = lax.dynamic_slice_in_dim(k_t, k_start, bk, 3)
            v_blk = lax.dynamic_slice_in_dim(v, k_start, bk, 2)
            s = _block_logits(st, q_blk, kt_blk, bias, q_start, k_start)
            valid = _block_valid(st, mask, lengths, q_start, k_start)
            if valid is not None:
                s = jnp.where(valid, s, -jnp.inf)
            m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m_prev - m_safe)
            l_new = l_prev * alpha + jnp.sum(p, axis=-1)
            if drop is not None:
                keep = _block_keep(drop, seed, b0, n0, p.shape, q_start, k_start)
                p = jnp.where(keep, p * drop.scale, 0.0)
            pv = jnp.einsum("bnqk,bnkh->bnqh", p, v_blk, preferred_element_type=jnp.float32)
            return m_new, l_new, acc_prev * alpha[..., None] + pv

        init = (
            jnp.full((batch, heads, bq), -jnp.inf, jnp.float32),
            jnp.zeros((batch, heads, bq), jnp.float32),
            jnp.zeros((batch, heads, bq, head_dim_v), jnp.float32),
        )
        hi = _key_block_range(st, lengths, q_start)
        m, total, acc = lax.fori_loop(0, hi, body, init)
        seen = total > 0
        out = acc / jnp.where(seen, total, 1.0)[..., None]
        # A row that sees no key: zero output and lse = +inf, so the backward's exp(s - lse) = 0.
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), jnp.inf)
        return out, lse

    out, lse = lax.map(one_query_block, jnp.arange(st.num_q))
    # [nq, B, N, bq, ...] -> [B, N, nq * bq, ...]
    out = jnp.moveaxis(out, 0, 2).reshape(batch, heads, st.num_q * bq, head_dim_v)
    lse = jnp.moveaxis(lse, 0, 2).reshape(batch, heads, st.num_q * bq)
    return out, lse


def _chunked_backward(
    st: _Static, q, k, v, bias, mask, lengths, out, lse, d_out, drop=None, seed=None, b0=0, n0=0
):
    """Gradients of `_chunked_forward` from the saved log-sum-exp. With dropout (M the keep
    mask, c its scale): dV = (P∘M·c)ᵀ dO, dP = (dO Vᵀ)∘M·c, and D = rowsum(dO ∘ O) as without
    it (O = (P∘M·c) V), so dS = P ∘ (dP - D) keeps its form."""
    batch, heads, _, head_dim = q.shape
    bq, bk = st.block_q, st.block_k
    delta = jnp.sum(d_out * out, axis=-1)  # D_t = Σ_h dO ∘ O, [B, N, Tp]
    hi_k = None if not st.has_lengths else (jnp.max(lengths) + bk - 1) // bk
    d_bias0 = jnp.zeros(bias.shape, jnp.float32) if st.has_bias else None
    # Kᵀ and dQᵀ sit behind optimization barriers so that they stay real transposes. When
    # the loops run once (T and S within one block), XLA would otherwise fold both swaps
    # into the dQᵀ = Kᵀ dSᵀ matmul and emit it with its lhs contracted on axis 2, a form
    # XLA:CPU leaves to a generic dot at about half the speed of its YNN kernels. At
    # B=64, T=256, N=4, H=32 this made attention forward + backward 129 -> 116 ms and the
    # benchmarked transformer step 555 -> 536 ms; longer sequences are unchanged.
    k_t = lax.optimization_barrier(jnp.swapaxes(k, 2, 3))  # [B, N, H, Sp]
    q_t = jnp.swapaxes(q, 2, 3)
    do_t = jnp.swapaxes(d_out, 2, 3)

    def one_key_block(carry, j):
        d_q, d_bias = carry
        k_start = j * bk
        k_blk = lax.dynamic_slice_in_dim(k, k_start, bk, 2)
        v_blk = lax.dynamic_slice_in_dim(v, k_start, bk, 2)
        kt_blk = lax.dynamic_slice_in_dim(k_t, k_start, bk, 3)
        lo = (k_start // bq) if st.is_causal else 0
        hi = jnp.int32(st.num_q)
        if hi_k is not None:
            hi = jnp.where(j < hi_k, hi, lo)

        def body(i, inner):
            d_k, d_v, d_q, d_bias = inner
            q_start = i * bq
            q_blk = lax.dynamic_slice_in_dim(q, q_start, bq, 2)
            qt_blk = lax.dynamic_slice_in_dim(q_t, q_start, bq, 3)
            do_blk = lax.dynamic_slice_in_dim(d_out, q_start, bq, 2)
            dot_blk = lax.dynamic_slice_in_dim(do_t, q_start, bq, 3)
            lse_blk = lax.dynamic_slice_in_dim(lse, q_start, bq, 2)
            delta_blk = lax.dynamic_slice_in_dim(delta, q_start, bq, 2)
            # Work on transposed [.., bk, bq] blocks: then dV = Pᵀ dO and dK = dSᵀ Q contract the
            # last axis of their left operand, the layout XLA's CPU matmul is fastest with.
            s_t = jnp.einsum("bnkh,bnhq->bnkq", k_blk, qt_blk, preferred_element_type=jnp.float32)
            if st.has_bias:
                b_blk = _slice_block(_slice_block(bias, 2, q_start, bq), 3, k_start, bk)
                s_t = s_t + jnp.swapaxes(b_blk, 2, 3)
            p_t = jnp.exp(s_t - lse_blk[..., None, :])
            valid = _block_valid(st, mask, lengths, q_start, k_start)
            if valid is not None:
                p_t = jnp.where(jnp.swapaxes(valid, 2, 3), p_t, 0.0)
            pd_t = p_t
            if drop is not None:
                gb, gn, _, _ = p_t.shape
                keep_t = jnp.swapaxes(
                    _block_keep(drop, seed, b0, n0, (gb, gn, bq, bk), q_start, k_start), 2, 3
                )
                pd_t = jnp.where(keep_t, p_t * drop.scale, 0.0)
            d_v = d_v + jnp.einsum(
                "bnkq,bnqh->bnkh", pd_t, do_blk, preferred_element_type=jnp.float32
            )
            dp_t = jnp.einsum("bnkh,bnhq->bnkq", v_blk, dot_blk, preferred_element_type=jnp.float32)
            if drop is not None:
                dp_t = jnp.where(keep_t, dp_t * drop.scale, 0.0)
            ds_t = p_t * (dp_t - delta_blk[..., None, :])
            d_k = d_k + jnp.einsum(
                "bnkq,bnqh->bnkh", ds_t, q_blk, preferred_element_type=jnp.float32
            )
            # dQᵀ = Kᵀ dSᵀ with Kᵀ stored once, so this matmul too contracts its lhs' last axis.
            dq_t = jnp.einsum("bnhk,bnkq->bnhq", kt_blk, ds_t, preferred_element_type=jnp.float32)
            dq_blk = lax.dynamic_slice_in_dim(d_q, q_start, bq, 3) + dq_t
            d_q = lax.dynamic_update_slice_in_dim(d_q, dq_blk, q_start, 3)
            if st.has_bias:
                d_s = jnp.swapaxes(ds_t, 2, 3)
                starts = [0, 0, q_start if d_bias.shape[2] > 1 else 0]
                starts.append(k_start if d_bias.shape[3] > 1 else 0)
                sizes = (*d_bias.shape[:2], min(d_bias.shape[2], bq), min(d_bias.shape[3], bk))
                axes = tuple(ax for ax in range(4) if d_bias.shape[ax] == 1)
                contrib = jnp.sum(d_s, axis=axes, keepdims=True) if axes else d_s
                cur = lax.dynamic_slice(d_bias, starts, sizes)
                d_bias = lax.dynamic_update_slice(d_bias, cur + contrib, starts)
            return d_k, d_v, d_q, d_bias

        init = (
            jnp.zeros((batch, heads, bk, head_dim), jnp.float32),
            jnp.zeros((batch, heads, bk, v.shape[-1]), jnp.float32),
            d_q,
            d_bias,
        )
        d_k, d_v, d_q, d_bias = lax.fori_loop(lo, hi, body, init)
        return (d_q, d_bias), (d_k, d_v)

    d_q_t0 = jnp.zeros((batch, heads, head_dim, q.shape[2]), jnp.float32)
    (d_q_t, d_bias), (d_k, d_v) = lax.scan(one_key_block, (d_q_t0, d_bias0), jnp.arange(st.num_k))
    d_q = jnp.swapaxes(lax.optimization_barrier(d_q_t), 2, 3)  # (see k_t above)
    d_k = jnp.moveaxis(d_k, 0, 2).reshape(batch, heads, st.num_k * bk, head_dim)
    d_v = jnp.moveaxis(d_v, 0, 2).reshape(batch, heads, st.num_k * bk, v.shape[-1])
    return d_q, d_k, d_v, d_bias


def _divisor_at_most(n: int, limit: float) -> int:
    """The largest divisor of n that is <= limit (at least 1)."""
    return max(d for d in range(1, n + 1) if n % d == 0 and (d <= limit or d == 1))


def _group_sizes(batch: int, heads: int, block_elems: int) -> tuple[int, int]:
    """(examples, heads) processed together per step of the outer loop.

    One (example, head) at a time keeps long-sequence blocks cache-resident; when the blocks
    are small (short T and S) several heads, then several examples, are batched into each
    step so that every matmul and elementwise op has about _GROUP_BUDGET scores to work on
    and the loop does not run B·N tiny iterations.
    """
    limit = max(1, _GROUP_BUDGET // block_elems)
    group_heads = _divisor_at_most(heads, limit)
    group_batch = 1
    if group_heads == heads:
        group_batch = _divisor_at_most(batch, limit // heads)
    return group_batch, group_heads


def _group(x, b, gb, n, gn):
    """Examples [b, b+gb) x heads [n, n+gn) of a [B|1, N|1, ...] array (broadcast axes kept)."""
    if x is None:
        return None
    return _slice_block(_slice_block(x, 0, b, gb), 1, n, gn)


def _ungroup(x, batch, heads, gb, gn):
    """[groups, gb, gn, ...] (groups ordered example-major) -> [B, N, ...]."""
    rest = x.shape[3:]
    x = x.reshape(batch // gb, heads // gn, gb, gn, *rest)
    return jnp.swapaxes(x, 1, 2).reshape(batch, heads, *rest)


def _group_starts(g, heads, gb, gn):
    per_row = heads // gn
    return (g // per_row) * gb, (g % per_row) * gn


def _forward_grouped(st: _Static, group, q, k, v, bias, mask, lengths, drop=None, seed=None):
    """Runs the blocked forward one group of (example, head) pairs at a time (see
    _group_sizes); each group's key loop stops at its longest key length."""
    batch, heads, _, _ = q.shape
    gb, gn = group

    def one_group(g):
        b, n = _group_starts(g, heads, gb, gn)
        length = None if lengths is None else lax.dynamic_slice_in_dim(lengths, b, gb)
        args = [_group(x, b, gb, n, gn) for x in (q, k, v, bias, mask)]
        return _chunked_forward(st, *args, length, drop, seed, b, n)

    out, lse = lax.map(one_group, jnp.arange((batch // gb) * (heads // gn)))
    return _ungroup(out, batch, heads, gb, gn), _ungroup(lse, batch, heads, gb, gn)


def _flash_impl(plan, q, k, v, bias, mask, lengths, seed):
    return _forward_grouped(plan[0], plan[2], q, k, v, bias, mask, lengths, plan[4], seed)[0]


def _flash_fwd(plan, q, k, v, bias, mask, lengths, seed):
    out, lse = _forward_grouped(plan[0], plan[2], q, k, v, bias, mask, lengths, plan[4], seed)
    return out, (q, k, v, bias, mask, lengths, seed, out, lse)


@jax.custom_jvp
def _first_order_only(arrays):
    """Identity, whose derivative raises: marks the blocked backward as not differentiable."""
    return arrays


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
    raise NotImplementedError(
        "implementation='chunked' has first derivatives only: its backward pass (loops with "
        "data-dependent bounds) cannot be differentiated again, so grad of grad, jax.hessian "
        "and the like are not available; use implementation='reference' or 'xla' for those"
    )


def _flash_bwd(plan, residuals, d_out):
    st, (gb, gn), drop = plan[1], plan[3], plan[4]
    q, k, v, bias, mask, lengths, seed, out, lse = residuals
    # A second derivative would differentiate this function: say so plainly, up front.
    q, k, v, bias, out, lse, d_out = _first_order_only((q, k, v, bias, out, lse, d_out))
    batch, heads = q.shape[:2]

    def one_group(d_bias, g):
        b, n = _group_starts(g, heads, gb, gn)
        length = None if lengths is None else lax.dynamic_slice_in_dim(lengths, b, gb)
        args = [_group(x, b, gb, n, gn) for x in (q, k, v, bias, mask, out, lse, d_out)]
        d_q, d_k, d_v, d_bias_group = _chunked_backward(
            st, *args[:5], length, *args[5:], drop, seed, b, n
        )
        if d_bias is not None:
            starts = (b if bias.shape[0] > 1 else 0, n if bias.shape[1] > 1 else 0, 0, 0)
            d_bias = lax.dynamic_update_slice(
                d_bias, lax.dynamic_slice(d_bias, starts, d_bias_group.shape) + d_bias_group, starts
            )
        return d_bias, (d_q, d_k, d_v)

    d_bias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
    num_groups = (batch // gb) * (heads // gn)
    d_bias, grads = lax.scan(one_group, d_bias0, jnp.arange(num_groups))
    d_q, d_k, d_v = (_ungroup(x, batch, heads, gb, gn) for x in grads)
    return d_q, d_k, d_v, d_bias, None, None, None


_flash = jax.custom_vjp(_flash_impl, nondiff_argnums=(0,))
_flash.defvjp(_flash_fwd, _flash_bwd)


def _chunked(q, k, v, mask, bias, is_causal, key_lengths, blocks=None, dropout=None):
    """blocks: optional ((fwd_block_q, fwd_block_k), (bwd_block_q, bwd_block_k)) targets.
    dropout: None or (rate, seed): seed uint32 [3] = the key's two words and the index of this
    call's first example in the whole batch (nonzero on a device of a mesh)."""
    if dropout is not None and dropout[0] >= 1.0:  # every weight dropped, as jaxnn.ops.dropout
        return jnp.zeros((*q.shape[:3], v.shape[-1]), q.dtype)
    t_len, head_dim = q.shape[1], q.shape[3]
    s_len = k.shape[1]
    fwd_blocks, bwd_blocks = blocks or (_FWD_BLOCKS, _BWD_BLOCKS)
    t_pad, (fwd_q, bwd_q) = _split(t_len, (fwd_blocks[0], bwd_blocks[0]))
    s_pad, (fwd_k, bwd_k) = _split(s_len, (fwd_blocks[1], bwd_blocks[1]))
    fwd_blocks, bwd_blocks = (fwd_q, fwd_k), (bwd_q, bwd_k)
    flags = (bool(is_causal), mask is not None, bias is not None, key_lengths is not None)
    plan = tuple(_Static(t_len, s_len, t_pad, s_pad, *b, flags) for b in (fwd_blocks, bwd_blocks))
    batch, heads = q.shape[0], q.shape[2]
    plan += tuple(_group_sizes(batch, heads, b[0] * b[1]) for b in (fwd_blocks, bwd_blocks))
    seed = None
    if dropout is None:
        plan += (None,)
    else:
        rate, seed = dropout
        plan += (_Dropout(rate, heads, t_len, s_len),)
    scale = 1.0 / math.sqrt(head_dim)
    # One transposition at entry to [B, N, T, H]; the scale is folded into q (O(T·H) work).
    q_t = _pad_axis(jnp.swapaxes(q.astype(jnp.float32) * scale, 1, 2), 2, t_pad, 0.0)
    k_t = _pad_axis(jnp.swapaxes(k.astype(jnp.float32), 1, 2), 2, s_pad, 0.0)
    v_t = _pad_axis(jnp.swapaxes(v.astype(jnp.float32), 1, 2), 2, s_pad, 0.0)
    mask4 = _as_rank4(mask)
    if mask4 is not None:
        mask4 = _pad_axis(_pad_axis(mask4, 2, t_pad, False), 3, s_pad, False)
    bias4 = _as_rank4(bias)
    if bias4 is not None:
        bias4 = _pad_axis(_pad_axis(bias4.astype(jnp.float32), 2, t_pad, 0.0), 3, s_pad, 0.0)
    lengths = None
    if key_lengths is not None:
        lengths = jnp.clip(jnp.asarray(key_lengths, jnp.int32), 0, s_len)
    out = _flash(plan, q_t, k_t, v_t, bias4, mask4, lengths, seed)
    return jnp.swapaxes(out[:, :, :t_len], 1, 2).astype(q.dtype)


def _split_over_batch(kernel, q, k, v, mask, bias, is_causal, key_lengths, dropout=None):
    """Run ``kernel`` on each device's examples when the batch is split over a device mesh.

    XLA cannot partition the blocked kernel's loops along the batch: under a mesh it would
    gather Q, K and V onto every device and compute the whole batch's attention everywhere.
    When tracing happens under a mesh (``jax.sharding.use_abstract_mesh``, as jaxnn.train's
    steps do) with more than one device and B divides by the device count, the kernel runs
    under ``jax.shard_map`` with B split over every mesh axis (the batch layout of
    jaxnn.train.distributed); per-example masks, biases and key lengths are split with it,
    broadcast ones replicated. Attention never mixes examples, so the result is the same.
    ``dropout`` (rate, seed): each device's seed carries the index of its first example, so
    its masks are those of the whole batch's.
    """
    mesh = jax.sharding.get_abstract_mesh()
    batch = q.shape[0]
    if mesh.empty or mesh.size == 1 or batch % mesh.size:
        return kernel(q, k, v, mask, bias, is_causal, key_lengths, dropout=dropout)
    split = P(tuple(mesh.axis_names))

    def spec(x, rank):
        if x is None:
            return None
        return split if jnp.ndim(x) == rank and jnp.shape(x)[0] == batch else P()

    mask4, bias4 = _as_rank4(mask), _as_rank4(bias)
    rate, seed = dropout if dropout is not None else (None, None)
    in_specs = (split, split, split, spec(mask4, 4), spec(bias4, 4), spec(key_lengths, 1))
    in_specs += (None if seed is None else P(),)

    def local(q, k, v, mask, bias, lengths, seed):
        drop = None
        if seed is not None:
            device = jnp.int32(0)  # this device's place along the flattened mesh axes
            for name in mesh.axis_names:
                device = device * mesh.shape[name] + lax.axis_index(name)
            drop = (rate, seed.at[2].set((device * q.shape[0]).astype(jnp.uint32)))
        return kernel(q, k, v, mask, bias, is_causal, lengths, dropout=drop)

    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=split, check_vma=False)(
        q, k, v, mask4, bias4, key_lengths, seed
    )


# --------------------------------------------------------------------------------------------
# "xla" / "cudnn" (jax.nn.dot_product_attention) and "pallas" (JAX's shipped flash kernels)
# --------------------------------------------------------------------------------------------


def _rows_with_a_key(mask, is_causal, key_lengths, t_len, s_len):
    """Boolean broadcastable to [B, N, T]: does query t see at least one key? None if all do."""
    if mask is None:
        # Causal is top-left aligned, so every query sees key 0 unless its example has no keys.
        if key_lengths is None:
            return None
        return (jnp.asarray(key_lengths) > 0)[:, None, None]
    visible = _combined_mask(_as_rank4(mask), is_causal, key_lengths, t_len, s_len)
    return jnp.any(visible, axis=-1)


def _zero_empty_rows(out, s_len, mask, is_causal, key_lengths):
    """Zeros (value and gradient) for queries that see no key; jax.nn gives them uniform weights."""
    batch, t_len, heads, _ = out.shape
    ok = _rows_with_a_key(mask, is_causal, key_lengths, t_len, s_len)
    if ok is None:
        return out
    ok = jnp.swapaxes(jnp.broadcast_to(ok, (batch, heads, t_len)), 1, 2)[..., None]
    return jnp.where(ok, out, jnp.zeros((), out.dtype))


def _jax_nn(q, k, v, mask, bias, is_causal, key_lengths, implementation):
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"implementation='cudnn' needs an NVIDIA GPU backend; the default backend is "
            f"{jax.default_backend()!r}. Use 'chunked', 'xla' or 'auto'."
        )
    dtype = q.dtype
    if dtype == jnp.float16 and jax.default_backend() == "cpu":
        # XLA's CPU dot has no float16 x float16 -> float32 mode, which jax.nn's backward uses.
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=None if bias is None else _as_rank4(jnp.asarray(bias)).astype(q.dtype),
        mask=_as_rank4(mask),
        is_causal=is_causal,
        key_value_seq_lengths=(
            None if key_lengths is None else jnp.asarray(key_lengths, jnp.int32)
        ),
        implementation=implementation,
    )
    return _zero_empty_rows(out, k.shape[1], mask, is_causal, key_lengths).astype(dtype)


def _pallas(q, k, v, mask, bias, is_causal, key_lengths):
    backend = jax.default_backend()
    if backend not in ("gpu", "tpu"):
        raise ValueError(
            f"implementation='pallas' needs a GPU or TPU backend (JAX ships Pallas flash-attention "
            f"kernels only for those); the default backend is {backend!r}. Use 'chunked' on CPU."
        )
    for name, value in (("mask", mask), ("key_lengths", key_lengths)):
        if value is not None:
            raise ValueError(
                f"implementation='pallas' does not support {name}; pass is_causal only, or use "
                f"implementation='chunked' / 'xla'"
            )
    scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "gpu":
        if bias is not None:
            raise ValueError("implementation='pallas' on GPU does not support bias; use 'xla'")
        from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

        return pallas_gpu.mha(q, k, v, None, sm_scale=scale, causal=is_causal)
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

    to_bnth = lambda x: jnp.swapaxes(x, 1, 2)
    full_bias = None
    if bias is not None:
        shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        full_bias = jnp.broadcast_to(_as_rank4(jnp.asarray(bias)), shape).astype(q.dtype)
    out = pallas_tpu.flash_attention(
        to_bnth(q), to_bnth(k), to_bnth(v), ab=full_bias, causal=is_causal, sm_scale=scale
    )
    return to_bnth(out)


# --------------------------------------------------------------------------------------------
# "auto"'s choice for mid-sized CPU problems: the blocked forward, XLA's graph when differentiated
# --------------------------------------------------------------------------------------------


def _chunked_forward_xla_gradient(q, k, v, mask, bias, is_causal, key_lengths):
    """Attention whose value comes from "chunked" and whose derivatives come from "xla".

    Where one head's probabilities still fit in the cache, the two kernels win in different
    modes: the blocked forward is faster alone, while XLA's materialized graph trains faster
    because its backward reuses the saved probabilities instead of recomputing them. As a
    custom_jvp whose rule is XLA's graph, this runs the blocked forward when only the value
    is needed (inference, evaluation) and XLA's forward and its derivative when the value is
    differentiated; forward mode, grad of grad and jax.hessian work as with "xla".
    """
    return _mixed(bool(is_causal), q, k, v, mask, bias, key_lengths)


def _mixed_value(is_causal, q, k, v, mask, bias, key_lengths):
    return _split_over_batch(_chunked, q, k, v, mask, bias, is_causal, key_lengths)


def _mixed_jvp(is_causal, primals, tangents):
    q, k, v, mask, bias, key_lengths = primals
    xla = lambda q, k, v, bias: _jax_nn(q, k, v, mask, bias, is_causal, key_lengths, "xla")
    d_q, d_k, d_v, _, d_bias, _ = tangents  # masks and lengths (integers) have no tangent
    if bias is None:
        return jax.jvp(lambda q, k, v: xla(q, k, v, None), (q, k, v), (d_q, d_k, d_v))
    return jax.jvp(xla, (q, k, v, bias), (d_q, d_k, d_v, d_bias))


_mixed = jax.custom_jvp(_mixed_value, nondiff_argnums=(0,))
_mixed.defjvp(_mixed_jvp)
_CHUNKED_FORWARD_XLA_GRADIENT = "chunked forward, xla gradient"  # internal to "auto"


def _chunked_dropout_problem(q, k, dropout_rng) -> str | None:
    """Why "chunked" cannot draw the masks "reference" would (None when it can)."""
    if dropout_rng is None:
        return "dropout_rng is None"
    if not is_threefry_key(dropout_rng):
        return "dropout_rng is not a Threefry key (the jax.random default)"
    batch, t_len, heads, _ = q.shape
    weights = (batch, heads, t_len, k.shape[1])  # what "reference" drops
    if not counters_fit(weights):
        grid = "·".join(map(str, counter_grid(weights)))
        return (
            f"B·N·T·ceil(S/4) = {grid} >= 2^32 (the 32-bit mask counters would wrap; "
            "jaxnn.ops.dropout then uses jax.random.bits)"
        )
    return None


def _check_chunked_dropout(q, k, dropout_rng) -> None:
    problem = _chunked_dropout_problem(q, k, dropout_rng)
    if problem:
        raise ValueError(
            f"implementation='chunked' cannot apply attention dropout here: {problem}; use "
            "implementation='reference'"
        )


def _auto(q, k, dropout_rate, return_weights, mask, key_lengths, dropout_rng=None) -> str:
    """The implementation "auto" picks (see dot_product_attention's docstring)."""
    if return_weights:
        return "reference"
    backend = jax.default_backend()
    if dropout_rate > 0.0 and (
        backend != "cpu" or _chunked_dropout_problem(q, k, dropout_rng) is not None
    ):
        return "reference"  # only these two implementations drop attention weights
    if backend == "gpu":
        cudnn_ok = q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128
        return "cudnn" if cudnn_ok and q.shape[-1] % 8 == 0 else "xla"
    if backend == "tpu":
        return "pallas" if mask is None and key_lengths is None else "xla"
    # CPU. Mid-sized float32 problems (each head's T·S within 256², 2^20 to 2^21 scores in
    # all, H <= 64) train fastest as XLA's one materialized graph, whose backward reuses the
    # saved probabilities instead of recomputing them, but run forward alone faster blocked:
    # there the value comes from "chunked" and the derivatives from "xla". From T·S = 128²
    # up the blocked kernel wins otherwise; below, the fused reference graph has less loop
    # overhead.
    batch, t_len, heads, head_dim = q.shape
    s_len = k.shape[1]
    if (
        dropout_rate == 0.0
        and q.dtype == jnp.float32
        and head_dim <= _AUTO_XLA_MAX_HEAD_DIM
        and t_len * s_len <= _AUTO_XLA_MAX_HEAD_SCORES
        and _AUTO_XLA_SCORES[0] <= batch * heads * t_len * s_len <= _AUTO_XLA_SCORES[1]
    ):
        return _CHUNKED_FORWARD_XLA_GRADIENT
    return "chunked" if t_len * s_len >= _AUTO_CHUNKED_MIN_SCORES else "reference"


_AUTO_CHUNKED_MIN_SCORES = 128 * 128
# Measured on a 2-core Xeon (AVX-512), f32 with a padding mask, one process per implementation,
# forward+backward ("xla" vs "chunked", ms): B=2, T=256, N=8, H=64: 9.5 vs 12.6-14.0;
# B=8, T=128, N=8, H=64: 10.3 vs 13.9-15.3; B=4, T=256, N=8, H=64: 18.3-20.1 vs 25.3-25.5;
# B=16, T=128, N=4, H=32: 5.7 vs 8.6. `benchmarks/attention.py --tag auto_small` (no mask,
# settle pauses) has "xla" 1.12-1.15x as fast forward+backward and "chunked" 1.25x as fast
# forward alone: training gains, inference loses a little. Outside the window the blocked
# kernel is as fast or faster: B=2, T=128, N=8, H=64 (2^18 scores) 3.8 vs 2.8; B=1, T=512,
# N=8, H=64: 15.5 vs 19.0 forward+backward but 6.4 vs 5.0 forward; B=1, T=1024, N=2, H=64
# (one head's scores outgrow the cache) 57.0 vs 12.9; B=2, T=256, N=4, H=128: 13.5 vs 6.5;
# B=64, T=256, N=4, H=32: 170 vs 113. On a 2-core AMD EPYC (AVX-512, `--tag auto_small_amd`)
# the window's forward+backward gain is smaller: B=2, T=256: xla 7.8 vs chunked 8.9 ms;
# B=8, T=128: a tie (9.3 vs 9.2). Since "auto" takes only the derivatives from "xla" there,
# its forward is chunked's (2.6 vs xla 3.2 ms and 3.2 vs 4.0 ms in that run).
_AUTO_XLA_MAX_HEAD_SCORES = 256 * 256
_AUTO_XLA_SCORES = (1 << 20, 1 << 21)
_AUTO_XLA_MAX_HEAD_DIM = 64


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    is_causal: bool = False,
    key_lengths: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_weights: bool = False,
    implementation: str = "auto",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention, softmax(Q Kᵀ / √H + bias) V (study guide §9).

    Args:
      q: queries [B, T, N, H].
      k: keys [B, S, N, H].
      v: values [B, S, N, H].
      mask: boolean, broadcastable to [B, N, T, S]; True = the query may attend to the key.
      bias: additive logits bias broadcastable to [B, N, T, S] (added after the 1/√H scaling).
      is_causal: query t attends only to keys s <= t (top-left aligned, as jax.nn).
      key_lengths: int [B], number of valid (non-padding) keys per example; keys s >= length
        are masked out.
      dropout_rate: attention dropout on the softmax weights (survivors scaled by 1/(1-rate)).
      dropout_rng: jax.random key, required when dropout_rate > 0.
      return_weights: also return the attention weights [B, N, T, S] (after dropout).
      implementation: which kernel computes it; all give the same result (to rounding):

        * "reference": materializes the [B, N, T, S] scores in float32. Supports every
          argument, including dropout and return_weights. Memory O(B·N·T·S).
        * "chunked": FlashAttention (Dao et al. 2022; Rabe & Staats 2021) in pure JAX. For
          each group of (example, head) pairs, loops over query blocks and, inside, key/value
          blocks with an online softmax (running max m and running sum l, output rescaled by
          exp(m_old - m_new)), never holding a T×S matrix. A jax.custom_vjp backward
          recomputes each block's probabilities from the saved log-sum-exp (one pass over key
          blocks, dQ accumulated across them, D = rowsum(dO ∘ O) computed once), so forward
          + backward memory is O(T·H) per head plus one block. Block sizes come from the
          shape: up to 1024 queries × 2048 keys forward and 2048 × 1024 backward, evened out so
          any T and S work with < 8 padded (masked) rows per block; a group is one head when
          the blocks are that large, else as many heads, then examples, as keep a group's
          block under 512·1024 scores (e.g. T = 256: all heads of several examples per step).
          Every block matmul is a plain [m, k] @ [k, n] (Kᵀ, Qᵀ, dOᵀ are transposed once per
          group), which XLA's CPU GEMMs run fastest. Key blocks that are entirely
          causal-masked or beyond the group's key_lengths are skipped. bf16/f16 inputs are
          computed in float32. Supports mask, bias (with its gradient), is_causal,
          key_lengths and dropout; not return_weights; first-order reverse-mode differentiation
          only (no jax.jvp / jacfwd, and no grad of grad: NotImplementedError). Dropout is
          exact: each block regenerates, from its counters, the mask "reference" draws for
          the whole [B, N, T, S] weights (jaxnn.ops.dropout's Threefry draws), so both give
          the same result; the softmax sums use the undropped probabilities and the backward
          keeps D = rowsum(dO ∘ O). It needs a Threefry key and
          B·N·T·ceil(S/4) < 2^32 (else ValueError). Traced under a device mesh
          (``jax.sharding.use_abstract_mesh``, as jaxnn.train's steps are) with B divisible by
          the device count, it runs under ``jax.shard_map`` on each device's examples (XLA
          cannot split its loops itself); each device's masks are its rows' of the whole batch.
        * "xla" / "cudnn": jax.nn.dot_product_attention's own implementations ("cudnn" needs
          an NVIDIA GPU). Rows that see no key are set to zero afterwards (jax.nn would give
          them uniform weights). No dropout or return_weights.
        * "pallas": the Pallas flash-attention kernels shipped with JAX, on GPU (is_causal
          only) and TPU (is_causal and bias); raises on CPU and for mask / key_lengths.
        * "auto" (default): "reference" when return_weights is requested, or dropout off the
          CPU (or with a key or shape "chunked" cannot match); else on
          GPU "cudnn" for bf16/f16 with H <= 128 and H % 8 == 0, otherwise "xla"; on TPU
          "pallas" when there is no mask or key_lengths, otherwise "xla"; on CPU, for
          mid-sized float32 problems without dropout (T·S <= 256², 2^20 <= B·N·T·S <= 2^21,
          H <= 64), the value from "chunked" and the derivatives from "xla" (a custom_jvp:
          the blocked forward is the faster one alone, XLA's graph, whose backward reuses
          the saved probabilities, the faster one to differentiate; forward mode and second
          derivatives work there as with "xla"), else "chunked" when T·S >= 128², else
          "reference". Measured on a 2-core Xeon (f32, key padding mask):
          at B=64, N=4, H=32, T = 128 and 256, "chunked" is 1.3-1.5× "xla" and 1.6-1.8×
          "reference" forward+backward; at B=1, N=2, T=1024 it is 4.4× "xla".

        An implementation that cannot honour an argument raises ValueError; nothing is
        silently ignored.

    Returns:
      [B, T, N, H] in q's dtype (and the weights [B, N, T, S] in float32 if return_weights).

    Edge cases: a query that can see no key at all (fully masked row, key_lengths = 0) gives
    zeros, with zero gradient and no NaN. Softmax statistics are float32 for every dtype.

    Example:
      >>> q = k = v = jnp.ones((2, 16, 4, 8))
      >>> dot_product_attention(q, k, v, is_causal=True).shape
      (2, 16, 4, 8)
    """
    _check_args(q, k, v, mask, bias, key_lengths, dropout_rate, dropout_rng, implementation)
    if implementation == "auto":
        implementation = _auto(q, k, dropout_rate, return_weights, mask, key_lengths, dropout_rng)
    if return_weights and implementation != "reference":
        raise ValueError(
            f"return_weights=True needs implementation='reference' (it materializes the "
            f"[B, N, T, S] weights); got implementation={implementation!r}"
        )
    if dropout_rate > 0.0 and implementation not in ("reference", "chunked"):
        raise ValueError(
            f"dropout_rate={dropout_rate} is supported by implementation='reference' and "
            f"'chunked' only; got implementation={implementation!r}"
        )
    if implementation == "reference":
        out, weights = _reference(
            q, k, v, mask, bias, is_causal, key_lengths, dropout_rate, dropout_rng
        )
        return (out, weights) if return_weights else out
    if implementation == "chunked":
        drop = None
        if dropout_rate > 0.0:
            _check_chunked_dropout(q, k, dropout_rng)
            words = key_words(dropout_rng).astype(jnp.uint32)
            drop = (float(dropout_rate), jnp.concatenate([words, jnp.zeros((1,), jnp.uint32)]))
        return _split_over_batch(_chunked, q, k, v, mask, bias, is_causal, key_lengths, drop)
    if implementation == _CHUNKED_FORWARD_XLA_GRADIENT:
        return _chunked_forward_xla_gradient(q, k, v, mask, bias, is_causal, key_lengths)
    if implementation in ("xla", "cudnn"):
        return _jax_nn(q, k, v, mask, bias, is_causal, key_lengths, implementation)
    return _pallas(q, k, v, mask, bias, is_causal, key_lengths)
