"""Scaled dot-product attention.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + bias) V

Shape letters: B batch, T query length, S key length, N heads, H head dim.
Layout is [B, T, N, H] as in ``jax.nn.dot_product_attention``.

One idea per module: ``masks`` (which query sees which key), ``reference`` (the materialized
[B, N, T, S] kernel), ``chunked`` (the blocked kernel, its backward, dropout counters and the
split over a device mesh), ``backends`` (jax.nn's "xla"/"cudnn" and JAX's Pallas kernels) and
``dispatch`` (the table of rules behind implementation="auto"). This module holds the public
function and its argument checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn.ops.attention.backends import (
    chunked_forward_xla_gradient,
    jax_nn_attention,
    pallas_attention,
)
from jaxnn.ops.attention.chunked import chunked_attention
from jaxnn.ops.attention.dispatch import choose_for
from jaxnn.ops.attention.reference import reference_attention

__all__ = ["IMPLEMENTATIONS", "dot_product_attention"]

# The one list of implementation names (configs validate against it).
IMPLEMENTATIONS = ("auto", "reference", "chunked", "xla", "cudnn", "pallas")


def _broadcastable(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def _check_args(q, k, v, mask, bias, key_lengths, dropout_rate, dropout_rng, implementation):
    """Raises ValueError naming the bad argument; trace time, before any compute."""
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
    """Scaled dot-product attention, softmax(Q Kᵀ / √H + bias) V.

    Args:
      q: queries [B, T, N, H].
      k: keys [B, S, N, H].
      v: values [B, S, N, H].
      mask: boolean, broadcastable to [B, N, T, S]; True = the query may attend to the key.
      bias: additive logits bias broadcastable to [B, N, T, S] (added after the 1/√H scaling).
      is_causal: query t attends only to keys s <= t (top-left aligned, as jax.nn).
      key_lengths: int [B], number of valid (non-padding) keys per example; keys s >= length
        are masked out. Prefer it to an equivalent ``mask``: the fused kernels take it as
        their sequence-length argument and build no mask at all.
      dropout_rate: attention dropout on the softmax weights (survivors scaled by 1/(1-rate)).
      dropout_rng: jax.random key, required when dropout_rate > 0.
      return_weights: also return the attention weights [B, N, T, S] (after dropout).
      implementation: one of ``IMPLEMENTATIONS``; all give the same result (to rounding):

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
          step within 1024·1024 scores (``chunked.GROUP_BUDGET``; e.g. T = 256: all heads of
          several examples per step). Every block matmul is a plain [m, k] @ [k, n] (Kᵀ, Qᵀ,
          dOᵀ are transposed once per group), which XLA's CPU GEMMs run fastest. Key blocks
          that are entirely causal-masked or beyond the group's key_lengths are skipped.
          bf16/f16 inputs are computed in float32. Supports mask, bias (with its gradient),
          is_causal, key_lengths and dropout; not return_weights. First-order reverse-mode
          differentiation only: forward mode (jax.jvp, jax.jacfwd) raises TypeError (JAX's
          rule for a custom_vjp function), a second derivative (grad of grad, jax.hessian)
          raises NotImplementedError. Dropout is exact: each block regenerates, from its
          counters, the mask "reference" draws for the whole [B, N, T, S] weights
          (jaxnn.ops.dropout's Threefry draws), so both give the same result; the softmax
          sums use the undropped probabilities and the backward keeps D = rowsum(dO ∘ O). It
          needs a Threefry key and B·N·T·ceil(S/4) < 2^32 (else ValueError). Traced under a
          device mesh (``jax.sharding.use_abstract_mesh``, as jaxnn.train's steps are) with B
          divisible by the device count, it runs under ``jax.shard_map`` on each device's
          examples (XLA cannot split its loops itself); each device's masks are its rows' of
          the whole batch.
        * "xla" / "cudnn": jax.nn.dot_product_attention's own implementations ("cudnn" needs
          an NVIDIA GPU, fp16/bf16 and H a multiple of 8); key_lengths become its
          key_value_seq_lengths. Rows that see no key are set to zero afterwards (jax.nn would
          give them uniform weights). No dropout or return_weights.
        * "pallas": the Pallas flash-attention kernels shipped with JAX, on GPU (is_causal
          only) and TPU (is_causal, bias and key_lengths; T and S multiples of 128); raises on
          CPU and for a mask.
        * "auto" (default): the first rule of ``jaxnn.ops.attention.dispatch.RULES`` that
          applies, in short: "reference" when return_weights is requested; with dropout,
          "chunked" (exact, no [B, N, T, S] weights; "reference" only for a key or shape the
          blocked kernel cannot draw the same masks with); on GPU "cudnn" for fp16/bf16 with
          H <= 128, H % 8 == 0 and no general mask (key_lengths and is_causal are fine), on
          TPU "pallas" without a mask and with T, S multiples of 128, else "xla" there (or
          "chunked" when "xla" would hold more than 2^30 scores);
          on CPU, for mid-sized float32 problems (T·S <= 256², 2^20 <= B·N·T·S <= 2^21,
          H <= 64), the value from "chunked" and the derivatives from "xla" (a custom_jvp;
          forward mode and second derivatives work there as with "xla"), else "chunked" when
          T·S >= 128², else "reference". Why each threshold:
          benchmarks/results/attention_auto.md.

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
    xla_gradient = False
    if implementation == "auto":
        choice = choose_for(
            q,
            k,
            mask=mask,
            bias=bias,
            key_lengths=key_lengths,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
            return_weights=return_weights,
        )
        implementation, xla_gradient = choice.implementation, choice.xla_gradient
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
        out, weights = reference_attention(
            q, k, v, mask, bias, is_causal, key_lengths, dropout_rate, dropout_rng
        )
        return (out, weights) if return_weights else out
    if implementation == "chunked" and xla_gradient:
        return chunked_forward_xla_gradient(q, k, v, mask, bias, is_causal, key_lengths)
    if implementation == "chunked":
        return chunked_attention(
            q, k, v, mask, bias, is_causal, key_lengths, dropout_rate, dropout_rng
        )
    if implementation in ("xla", "cudnn"):
        return jax_nn_attention(q, k, v, mask, bias, is_causal, key_lengths, implementation)
    return pallas_attention(q, k, v, mask, bias, is_causal, key_lengths)
