"""Sum of each text's looked-up embedding rows, without forming the looked-up vectors.

    out[b] = sum_t rows[slot[b, t]]                                          [B, D]
    out[b] = sum_t keep[b, t] * scale * rows[slot[b, t]]       (dropout on the vectors)

for rows [U, D] (a table, or a batch's distinct rows) and slot int [B, T] (U or more, or
negative: padding, nothing looked up): PyTorch's ``F.embedding_bag(mode="sum")``. A
bag-of-words model pools this way. The plain form ``rows[slot].sum(1)`` writes the [B, T, D]
float vectors first, and under ``jax.vmap`` over K trials (jaxnn.tune) [B, T, K, D], many
times a CPU's caches. Two forms here:

- counts: ``counts [B, U] @ rows`` with counts[b, u] = #{t : slot[b, t] = u}, when U is at most
  a few times T (a batch's distinct rows, jaxnn.train.sparse.distinct_slots). The counts depend
  on the batch only (under vmap: made once for all trials); the rows' gradient is
  counts^T @ g, written [U, D] row-major.
- blocked: a scan over blocks of texts, gathering and summing forward and scattering the
  gradient block by block. On a single CPU device a block holds about 2^16 looked-up elements
  per trial, so it stays in the caches; on an accelerator, or when the step is traced under a
  mesh of several devices (``jax.sharding.use_abstract_mesh``, as jaxnn.train's steps are),
  the whole batch is one block, which XLA partitions along B (a loop over blocks of the global
  batch would run on every device). Dropout, whose mask differs per element, always takes
  this form. Under ``jax.vmap`` over trials that share the slots and the dropout draws (each
  with its own rows and rate), one pass serves all of them, their rows side by side; trials
  known to have rate 0 (`jaxnn.ops.dropout.rate_free_trials`) are summed without the mask, in
  the form a run of theirs alone would take.

Both sum in float32 (the counts product at full precision: a TF32 or bf16 pass would round
the rows). Gradients flow to ``rows`` only, in reverse mode (grad, vjp): both forms are
``jax.custom_vjp`` functions, so forward-mode autodiff (jvp, jax.hessian) raises TypeError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from jaxnn.ops.dropout import rate_free_trials_of

__all__ = ["embedding_bag_sum"]

# The counts form while U <= this x T: its B U D multiply-adds then cost less than the blocked
# form's B T D gathered elements (a dense product runs many times faster per element).
COUNTS_MAX_ROWS_PER_LOOKUP = 8

# Looked-up elements per block of the blocked form on a CPU (per trial under vmap).
BLOCK_ELEMENTS = 1 << 16


def embedding_bag_sum(
    rows: jax.Array,
    slot: jax.Array,
    *,
    dropout: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """float32 [B, D]: each text's sum of ``rows[slot[b, t]]`` over t (see the module docstring).

    Args:
      rows: [U, D] floating.
      slot: int [B, T]; a value >= U or < 0 (e.g. U on padding) looks up nothing.
      dropout: optional (bits uint16 [B, T, D], threshold int32 scalar, scale float32 scalar):
        each looked-up element is kept where bits >= threshold and scaled by ``scale``, the
        rule of `jaxnn.ops.dropout.dropout` for those draws (`uniform_bits16`,
        `keep_threshold`; threshold and scale may be traced, e.g. one per trial).

    Returns:
      float32 [B, D]; zeros for a text with nothing looked up. Reverse-mode differentiable
      w.r.t. ``rows`` (jit, grad, vmap; not jvp).
    """
    rows = jnp.asarray(rows, jnp.float32)
    slot = jnp.asarray(slot, jnp.int32)
    if rows.ndim != 2 or slot.ndim != 2:
        raise ValueError(f"rows must be [U, D] and slot [B, T]; got {rows.shape}, {slot.shape}")
    if slot.shape[0] == 0 or slot.shape[1] == 0:
        return jnp.zeros((slot.shape[0], rows.shape[1]), jnp.float32)
    slot = jnp.where(slot < 0, rows.shape[0], slot)  # padding, in both forms
    if dropout is not None:
        bits, threshold, scale = dropout
        bits = jnp.asarray(bits)
        if bits.shape != (*slot.shape, rows.shape[1]):
            raise ValueError(
                f"dropout bits must have shape [B, T, D] = {(*slot.shape, rows.shape[1])}; "
                f"got {bits.shape}"
            )
        return _blocked_sum(
            rows, slot, bits, jnp.asarray(threshold, jnp.int32), jnp.asarray(scale, jnp.float32)
        )
    if _counts_form(rows.shape[0], slot):
        return _counts_product(_counts(slot, rows.shape[0]), rows)
    return _blocked_sum(rows, slot, None, None, None)


# -- the counts form ------------------------------------------------------------------------------
def _counts_form(num_rows: int, slot: jax.Array) -> bool:
    return num_rows <= COUNTS_MAX_ROWS_PER_LOOKUP * slot.shape[1]


def _counts(slot: jax.Array, num_rows: int) -> jax.Array:
    """float32 [B, U]: counts[b, u] = #{t : slot[b, t] = u} (slots >= U count nowhere)."""
    b = slot.shape[0]
    counts = jnp.zeros((b, num_rows + 1), jnp.float32)
    return counts.at[jnp.arange(b)[:, None], jnp.minimum(slot, num_rows)].add(1.0)[:, :num_rows]


def _exact_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b at full float32 precision (a TF32 or bf16 pass would round the rows)."""
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


@jax.custom_vjp
def _counts_product(counts: jax.Array, rows: jax.Array) -> jax.Array:
    """counts [B, U] @ rows [U, D] at full float32 precision. The rows' gradient is written as
    counts^T @ g [U, D]: the form autodiff derives is a [D, U] product transposed afterwards,
    which under vmap leaves an optimizer's element-wise update reading it across the grain. The
    counts get a zero gradient (they are data)."""
    return _exact_dot(counts, rows)


def _counts_product_fwd(counts, rows):
    return _counts_product(counts, rows), counts


def _counts_product_bwd(counts, g):
    return jnp.zeros_like(counts), _exact_dot(counts.T, g)


_counts_product.defvjp(_counts_product_fwd, _counts_product_bwd)


# -- the blocked form -----------------------------------------------------------------------------
def _block_rows(batch: int, per_row: int) -> int:
    """Texts per block: the whole batch off the CPU or under a mesh of several devices; on one
    CPU device the largest divisor of ``batch`` with at most `BLOCK_ELEMENTS` elements per
    block."""
    mesh = jax.sharding.get_abstract_mesh()
    if jax.default_backend() != "cpu" or (not mesh.empty and mesh.size > 1):
        return batch
    most = max(1, BLOCK_ELEMENTS // max(per_row, 1))
    return max(c for c in range(1, min(batch, most) + 1) if batch % c == 0)


def _blocks(slot, bits, d):
    b, t = slot.shape
    c = _block_rows(b, t * d)
    slot_blocks = slot.reshape(b // c, c, t)
    bit_blocks = None if bits is None else bits.reshape(b // c, c, t, d)
    return c, slot_blocks, bit_blocks


def _kept(values, bits, threshold):
    """values [c, T, D] (or [c, T, G, D]: G groups sharing the draws) where the draws bits
    [c, T, D] are >= threshold (a scalar, or one per group [G]), else 0; all without bits."""
    if bits is None:
        return values
    if values.ndim == 3:
        return jnp.where(bits.astype(jnp.int32) >= threshold, values, 0.0)
    return jnp.where(bits[:, :, None, :].astype(jnp.int32) >= threshold[:, None], values, 0.0)


def _scaled(values, scale):
    """values [B, D] * scale, or [B, G, D] * scale [G] per group."""
    return values * (scale if values.ndim == 2 else scale[:, None])


# The blocked form's passes take rows [U, D] and give [B, D]; or, for G groups of rows that share
# the lookups and the dropout draws, rows [U, G, D] -> [B, G, D] with threshold and scale [G].
# Under jax.vmap over K trials that share the batch (jaxnn.tune: per-trial rows and dropout
# rate, shared slots and draws), the batching rule of `_batched_over_groups` makes the K trials
# the G groups: one gather reads each looked-up row of all trials as one K*D slice (the tuner
# stores its tables trial-minor, jaxnn.train.sparse.trial_minor_tables) and nothing is
# transposed to [K, U, D], as vmap's own rule would do to scan over trials-first blocks.
# ``groups`` (a slice) restricts a pass to some of the G groups, read and written in place.
def _forward_pass(rows, slot, bits, threshold, scale, groups=slice(None)):
    _, slot_blocks, bit_blocks = _blocks(slot, bits, rows.shape[-1])

    def block(_, xs):
        s, u = xs
        x = rows.at[s, groups].get(mode="fill", fill_value=0)  # [c, T, (G,) D]
        return None, jnp.sum(_kept(x, u, threshold), axis=1)

    _, sums = jax.lax.scan(block, None, (slot_blocks, bit_blocks))
    out = sums.reshape(slot.shape[0], *sums.shape[2:])
    return out if bits is None else _scaled(out, scale)


def _backward_pass(g, slot, bits, threshold, scale, num_rows, into=None, groups=slice(None)):
    """The rows' gradient for g [B, (G,) D], added into ``into[:, groups]``; without ``into``,
    a zero [U, (G,) D] (then ``groups`` must select all of its groups)."""
    c, slot_blocks, bit_blocks = _blocks(slot, bits, g.shape[-1])
    if bits is not None:
        g = _scaled(g, scale)
    g_blocks = g.reshape(slot_blocks.shape[0], c, 1, *g.shape[1:])

    def block(acc, xs):
        s, u, gb = xs
        contrib = _kept(jnp.broadcast_to(gb, (*s.shape, *g.shape[1:])), u, threshold)
        return acc.at[s, groups].add(contrib, mode="drop"), None

    if into is None:
        into = jnp.zeros((num_rows, *g.shape[1:]), jnp.float32)
    acc, _ = jax.lax.scan(block, into, (slot_blocks, bit_blocks, g_blocks))
    return acc


# Trials known to have dropout rate 0 (`jaxnn.ops.dropout.rate_free_trials`, the leading F of
# the K groups) are summed without the mask, by the form `embedding_bag_sum` would choose for
# one of them alone; the other K - F groups take the masked blocked pass.
def _forward_split(rows, slot, bits, threshold, scale, *, free):
    u, k, d = rows.shape
    if _counts_form(u, slot):
        plain = _exact_dot(_counts(slot, u), rows[:, :free].reshape(u, free * d))
        plain = plain.reshape(slot.shape[0], free, d)
    else:
        plain = _forward_pass(rows, slot, None, None, None, slice(0, free))
    if free == k:
        return plain
    rest = slice(free, k)
    masked = _forward_pass(rows, slot, bits, threshold[rest], scale[rest], rest)
    return jnp.concatenate([plain, masked], axis=1)


def _backward_split(g, slot, bits, threshold, scale, num_rows, *, free):
    b, k, d = g.shape
    zeros = jnp.zeros((num_rows, k, d), jnp.float32)
    if _counts_form(num_rows, slot):
        plain = _exact_dot(_counts(slot, num_rows).T, g[:, :free].reshape(b, free * d))
        acc = zeros.at[:, :free].set(plain.reshape(num_rows, free, d))
    else:
        acc = _backward_pass(g[:, :free], slot, None, None, None, num_rows, zeros, slice(0, free))
    if free == k:
        return acc
    rest = slice(free, k)
    return _backward_pass(g[:, rest], slot, bits, threshold[rest], scale[rest], num_rows, acc, rest)


def _batched_over_groups(kernel, split):
    """``kernel(x [N, D], slot, bits, threshold, scale, *static)`` with a batching rule: K
    vmapped trials with their own x (and threshold, scale) and shared ``slot`` and ``bits`` run
    as one call on x [N, K, D]; any other batching is vmap's own. With the leading F trials
    known to have dropout rate 0 (`jaxnn.ops.dropout.rate_free_trials_of`), the call is
    ``split(x [N, K, D], slot, bits, threshold [K], scale [K], *static, free=F)``."""

    def call(x, slot, bits, threshold, scale, *static):
        def one(x, slot, *drop):
            return kernel(x, slot, *(drop or (None,) * 3), *static)

        f = custom_vmap(one)

        @f.def_vmap
        def rule(axis_size, in_batched, x, slot, *drop):
            x_b, slot_b, *drop_b = in_batched
            if not x_b or slot_b or (drop and drop_b[0]):  # not sharing the batch
                axes = tuple(0 if b else None for b in in_batched)
                return jax.vmap(one, in_axes=axes)(x, slot, *drop), True
            groups = jnp.swapaxes(x, 0, 1)  # [K, N, D] -> [N, K, D]
            if not drop:
                return jnp.swapaxes(one(groups, slot), 0, 1), True
            draws = drop[0]
            thresholds, scales = (jnp.broadcast_to(v, (axis_size,)) for v in drop[1:])
            free = rate_free_trials_of(axis_size)
            if free:
                out = split(groups, slot, draws, thresholds, scales, *static, free=free)
            else:
                out = one(groups, slot, draws, thresholds, scales)
            return jnp.swapaxes(out, 0, 1), True

        return f(x, slot) if bits is None else f(x, slot, bits, threshold, scale)

    return call


_forward = _batched_over_groups(_forward_pass, _forward_split)
_backward = _batched_over_groups(_backward_pass, _backward_split)


@jax.custom_vjp
def _blocked_sum(rows, slot, bits, threshold, scale):
    return _forward(rows, slot, bits, threshold, scale)


def _blocked_sum_fwd(rows, slot, bits, threshold, scale):
    out = _forward(rows, slot, bits, threshold, scale)
    return out, (rows.shape[0], slot, bits, threshold, scale)


def _blocked_sum_bwd(res, g):
    num_rows, slot, bits, threshold, scale = res
    return _backward(g, slot, bits, threshold, scale, num_rows), None, None, None, None


_blocked_sum.defvjp(_blocked_sum_fwd, _blocked_sum_bwd)
