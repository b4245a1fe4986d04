"""The "chunked" attention kernel: FlashAttention in pure JAX.

Online-softmax forward over query and key blocks (Dao et al. 2022; Rabe & Staats 2021) and a
recomputing ``jax.custom_vjp`` backward from the saved log-sum-exp, so forward + backward
memory is O(T·H) per head plus one block, never a T×S matrix. Attention dropout regenerates
each block's keep mask from Threefry counters, exactly the mask "reference" draws. Under a
device mesh the kernel runs on each device's examples with ``jax.shard_map``.

Shape letters: B batch, T query length, S key length, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxnn.ops.attention.masks import as_rank4
from jaxnn.ops.dropout import (
    bits16_at,
    counter_grid,
    counters_fit,
    is_threefry_key,
    keep_threshold,
    key_words,
)


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


# Block-size targets (queries, keys) of the forward and the backward pass.
FWD_BLOCKS = (1024, 2048)
BWD_BLOCKS = (2048, 1024)
# Scores per step of the outer loop (16 (example, head) pairs of 256 x 256 blocks): the
# fastest budget of the measured 512K..4M, see benchmarks/results/attention_auto.md.
GROUP_BUDGET = 1024 * 1024


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


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Static plan of one blocked pass: lengths, padded lengths, block sizes, what to mask."""

    t_len: int
    s_len: int
    t_pad: int
    s_pad: int
    block_q: int
    block_k: int
    is_causal: bool
    has_mask: bool
    has_bias: bool
    has_lengths: bool

    @property
    def num_q(self) -> int:
        return self.t_pad // self.block_q

    @property
    def num_k(self) -> int:
        return self.s_pad // self.block_k

    @property
    def ragged_k(self) -> bool:
        return self.s_pad != self.s_len

    def needs_mask(self) -> bool:
        return self.is_causal or self.has_mask or self.has_lengths or self.ragged_k


def _block_valid(st: BlockPlan, mask, lengths, q_start, k_start):
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


def _block_logits(st: BlockPlan, q_blk, kt_blk, bias, q_start, k_start):
    s = jnp.einsum("bnqh,bnhk->bnqk", q_blk, kt_blk, preferred_element_type=jnp.float32)
    if st.has_bias:
        s = s + _slice_block(_slice_block(bias, 2, q_start, st.block_q), 3, k_start, st.block_k)
    return s


@dataclasses.dataclass(frozen=True)
class DropoutPlan:
    """Static part of "chunked" attention dropout (hashable: part of the custom_vjp plan).

    The mask is the one "reference" draws for its [B, N, T, S] weights with jaxnn.ops.dropout:
    element (b, n, t, s) is kept iff draw s mod 4 of the Threefry counter
    ((b·N + n)·T + t)·G + floor(s / 4), G = ceil(S / 4), is >= τ (`bits16_at`). Any block's
    counters follow from its offsets, so the forward and backward passes regenerate each
    block's mask and never hold a T×S array.
    """

    threshold: int  # keep a 16-bit draw u iff u >= threshold
    scale: float  # survivors' scale, 2^16 / (2^16 - threshold)
    heads: int
    t_len: int
    groups: int  # G = ceil(S / 4)

    @classmethod
    def create(cls, rate: float, heads: int, t_len: int, s_len: int) -> DropoutPlan:
        threshold, scale = keep_threshold(rate)
        return cls(threshold, scale, heads, t_len, counter_grid((s_len,))[0])


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """Everything static about one "chunked" call (the custom_vjp's nondiff argument).

    ``forward_group`` / ``backward_group``: (examples, heads) per step of the outer loop.
    """

    forward: BlockPlan
    backward: BlockPlan
    forward_group: tuple[int, int]
    backward_group: tuple[int, int]
    dropout: DropoutPlan | None


def _block_keep(drop: DropoutPlan, seed, b0, n0, shape, q_start, k_start):
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


def _key_block_range(st: BlockPlan, lengths, q_start):
    """[0, hi) key blocks that can hold a visible key for queries starting at q_start."""
    hi = jnp.int32(st.num_k)
    if st.is_causal:
        last_q = jnp.minimum(q_start + st.block_q, st.t_len) - 1
        hi = jnp.minimum(hi, last_q // st.block_k + 1)
    if st.has_lengths:
        hi = jnp.minimum(hi, (jnp.max(lengths) + st.block_k - 1) // st.block_k)
    return hi


def _chunked_forward(st: BlockPlan, q, k, v, bias, mask, lengths, drop=None, seed=None, b0=0, n0=0):
    """q [B,N,Tp,H] (already scaled), k/v [B,N,Sp,H] f32 -> out [B,N,Tp,Hv], lse [B,N,Tp].

    With ``drop`` (a `DropoutPlan`), the probabilities that multiply V are dropped (survivors
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
    st: BlockPlan, q, k, v, bias, mask, lengths, out, lse, d_out, drop=None, seed=None, b0=0, n0=0
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
    # XLA:CPU leaves to a generic dot at about half the speed (see
    # benchmarks/results/attention_auto.md).
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
    step so that every matmul and elementwise op has about GROUP_BUDGET scores to work on
    and the loop does not run B·N tiny iterations.
    """
    limit = max(1, GROUP_BUDGET // block_elems)
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


def _forward_grouped(st: BlockPlan, group, q, k, v, bias, mask, lengths, drop=None, seed=None):
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
    return _forward_grouped(
        plan.forward, plan.forward_group, q, k, v, bias, mask, lengths, plan.dropout, seed
    )[0]


def _flash_fwd(plan, q, k, v, bias, mask, lengths, seed):
    out, lse = _forward_grouped(
        plan.forward, plan.forward_group, q, k, v, bias, mask, lengths, plan.dropout, seed
    )
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
    st, (gb, gn), drop = plan.backward, plan.backward_group, plan.dropout
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


def blocked_attention(q, k, v, mask, bias, is_causal, key_lengths, blocks=None, dropout=None):
    """blocks: optional ((fwd_block_q, fwd_block_k), (bwd_block_q, bwd_block_k)) targets.
    dropout: None or (rate, seed): seed uint32 [3] = the key's two words and the index of this
    call's first example in the whole batch (nonzero on a device of a mesh)."""
    if dropout is not None and dropout[0] >= 1.0:  # every weight dropped, as jaxnn.ops.dropout
        return jnp.zeros((*q.shape[:3], v.shape[-1]), q.dtype)
    t_len, head_dim = q.shape[1], q.shape[3]
    s_len = k.shape[1]
    fwd_blocks, bwd_blocks = blocks or (FWD_BLOCKS, BWD_BLOCKS)
    t_pad, (fwd_q, bwd_q) = _split(t_len, (fwd_blocks[0], bwd_blocks[0]))
    s_pad, (fwd_k, bwd_k) = _split(s_len, (fwd_blocks[1], bwd_blocks[1]))
    fwd_blocks, bwd_blocks = (fwd_q, fwd_k), (bwd_q, bwd_k)
    flags = (bool(is_causal), mask is not None, bias is not None, key_lengths is not None)
    forward, backward = (
        BlockPlan(t_len, s_len, t_pad, s_pad, *b, *flags) for b in (fwd_blocks, bwd_blocks)
    )
    batch, heads = q.shape[0], q.shape[2]
    seed, drop = None, None
    if dropout is not None:
        rate, seed = dropout
        drop = DropoutPlan.create(rate, heads, t_len, s_len)
    plan = KernelPlan(
        forward,
        backward,
        _group_sizes(batch, heads, fwd_blocks[0] * fwd_blocks[1]),
        _group_sizes(batch, heads, bwd_blocks[0] * bwd_blocks[1]),
        drop,
    )
    scale = 1.0 / math.sqrt(head_dim)
    # One transposition at entry to [B, N, T, H]; the scale is folded into q (O(T·H) work).
    q_t = _pad_axis(jnp.swapaxes(q.astype(jnp.float32) * scale, 1, 2), 2, t_pad, 0.0)
    k_t = _pad_axis(jnp.swapaxes(k.astype(jnp.float32), 1, 2), 2, s_pad, 0.0)
    v_t = _pad_axis(jnp.swapaxes(v.astype(jnp.float32), 1, 2), 2, s_pad, 0.0)
    mask4 = as_rank4(mask)
    if mask4 is not None:
        mask4 = _pad_axis(_pad_axis(mask4, 2, t_pad, False), 3, s_pad, False)
    bias4 = as_rank4(bias)
    if bias4 is not None:
        bias4 = _pad_axis(_pad_axis(bias4.astype(jnp.float32), 2, t_pad, 0.0), 3, s_pad, 0.0)
    lengths = None
    if key_lengths is not None:
        lengths = jnp.clip(jnp.asarray(key_lengths, jnp.int32), 0, s_len)
    out = _flash(plan, q_t, k_t, v_t, bias4, mask4, lengths, seed)
    return jnp.swapaxes(out[:, :, :t_len], 1, 2).astype(q.dtype)


def split_over_batch(kernel, q, k, v, mask, bias, is_causal, key_lengths, dropout=None):
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

    mask4, bias4 = as_rank4(mask), as_rank4(bias)
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


def dropout_problem(q, k, dropout_rng) -> str | None:
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


def chunked_attention(
    q, k, v, mask, bias, is_causal, key_lengths, dropout_rate=0.0, dropout_rng=None
) -> jax.Array:
    """[B, T, N, H] attention by the blocked kernel (split over the batch under a mesh).

    Raises ValueError when dropout is asked for and `dropout_problem` names a reason the
    blocked kernel cannot draw the masks "reference" would.
    """
    drop = None
    if dropout_rate > 0.0:
        problem = dropout_problem(q, k, dropout_rng)
        if problem:
            raise ValueError(
                f"implementation='chunked' cannot apply attention dropout here: {problem}; use "
                "implementation='reference'"
            )
        words = key_words(dropout_rng).astype(jnp.uint32)
        drop = (float(dropout_rate), jnp.concatenate([words, jnp.zeros((1,), jnp.uint32)]))
    return split_over_batch(blocked_attention, q, k, v, mask, bias, is_causal, key_lengths, drop)
