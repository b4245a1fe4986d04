"""Wrappers around attention kernels that JAX ships: "xla" / "cudnn" (jax.nn) and "pallas".

Each wrapper takes our arguments ([B, T, N, H] layout, boolean mask, bias, is_causal,
key_lengths), maps them onto the kernel's own, and sets the output of a query that sees no
key to zero (value and gradient), as "reference" does. Plus the kernel "auto" picks for
mid-sized CPU problems: the value of "chunked" with the derivatives of "xla".

Shape letters: B batch, T query length, S key length, N heads, H head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxnn.ops.attention.chunked import blocked_attention, split_over_batch
from jaxnn.ops.attention.masks import as_rank4, zero_empty_rows

PALLAS_PLATFORMS = ("gpu", "tpu")


def jax_nn_attention(q, k, v, mask, bias, is_causal, key_lengths, implementation) -> jax.Array:
    """``jax.nn.dot_product_attention(implementation=...)`` ("xla" or "cudnn").

    key_lengths go to its ``key_value_seq_lengths`` (cuDNN's padding mask: no [B, N, T, S]
    mask is built); rows that see no key are set to zero (jax.nn gives them uniform weights).
    """
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
        bias=None if bias is None else as_rank4(jnp.asarray(bias)).astype(q.dtype),
        mask=as_rank4(mask),
        is_causal=is_causal,
        key_value_seq_lengths=(
            None if key_lengths is None else jnp.asarray(key_lengths, jnp.int32)
        ),
        implementation=implementation,
    )
    return zero_empty_rows(out, k.shape[1], mask, is_causal, key_lengths).astype(dtype)


def pallas_attention(
    q,
    k,
    v,
    mask,
    bias,
    is_causal,
    key_lengths,
    *,
    platform: str | None = None,
    interpret: bool = False,
    block_sizes=None,
) -> jax.Array:
    """JAX's Pallas flash-attention kernels.

    GPU (``jax.experimental.pallas.ops.gpu.attention.mha``): is_causal only. TPU
    (``...ops.tpu.flash_attention``): is_causal, bias (broadcast to [B, N, T, S]: the one
    wrapper that materializes a [B, N, T, S] array, the kernel's ``ab``) and
    key_lengths (as key segment ids: a query's segment 1 sees only keys of segment 1, the
    first key_lengths[b]); T and S multiples of the kernel's blocks (128 by default).

    ``platform`` picks the kernel (default: the default backend); ``interpret=True`` runs it
    in Pallas' interpreter, which works on the CPU (the tests use it). For the TPU kernel that
    covers the forward pass; its backward is traced when differentiated, so differentiate it
    inside ``jax.experimental.pallas.tpu.force_tpu_interpret_mode()``. ``block_sizes`` is
    passed to the kernel as is.
    """
    platform = platform or jax.default_backend()
    if platform not in PALLAS_PLATFORMS:
        raise ValueError(
            f"implementation='pallas' needs a GPU or TPU backend (JAX ships Pallas flash-attention "
            f"kernels only for those); the default backend is {platform!r}. Use 'chunked' on CPU."
        )
    if mask is not None:
        raise ValueError(
            "implementation='pallas' does not support mask; pass is_causal (and key_lengths on "
            "TPU), or use implementation='chunked' / 'xla'"
        )
    scale = 1.0 / math.sqrt(q.shape[-1])
    if platform == "gpu":
        for name, value in (("bias", bias), ("key_lengths", key_lengths)):
            if value is not None:
                raise ValueError(
                    f"implementation='pallas' on GPU does not support {name}; use 'cudnn', "
                    "'xla' or 'chunked'"
                )
        from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

        kwargs = {} if block_sizes is None else {"block_sizes": block_sizes}
        return pallas_gpu.mha(
            q, k, v, None, sm_scale=scale, causal=is_causal, interpret=interpret, **kwargs
        )
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

    to_bnth = lambda x: jnp.swapaxes(x, 1, 2)
    batch, t_len, heads, _ = q.shape
    s_len = k.shape[1]
    full_bias = None
    if bias is not None:
        # The kernel scales (Q Kᵀ + ab) by sm_scale, so ab = bias / scale gives Q Kᵀ·scale + bias.
        shape = (batch, heads, t_len, s_len)
        full_bias = jnp.broadcast_to(as_rank4(jnp.asarray(bias)) / scale, shape).astype(q.dtype)
    segments = None
    if key_lengths is not None:
        # At least one visible key per example, so no row of the kernel is empty; the rows of
        # an example with no keys are set to zero below.
        lengths = jnp.maximum(jnp.asarray(key_lengths, jnp.int32), 1)
        kv_ids = (jnp.arange(s_len, dtype=jnp.int32)[None] < lengths[:, None]).astype(jnp.int32)
        segments = pallas_tpu.SegmentIds(q=jnp.ones((batch, t_len), jnp.int32), kv=kv_ids)

    def run():
        return pallas_tpu.flash_attention(
            to_bnth(q),
            to_bnth(k),
            to_bnth(v),
            ab=full_bias,
            segment_ids=segments,
            causal=is_causal,
            sm_scale=scale,
            block_sizes=block_sizes,
        )

    if interpret:
        from jax.experimental.pallas import tpu as pltpu

        with pltpu.force_tpu_interpret_mode():
            out = run()
    else:
        out = run()
    return zero_empty_rows(to_bnth(out), s_len, None, is_causal, key_lengths)


def chunked_forward_xla_gradient(q, k, v, mask, bias, is_causal, key_lengths) -> jax.Array:
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
    return split_over_batch(blocked_attention, q, k, v, mask, bias, is_causal, key_lengths)


def _mixed_jvp(is_causal, primals, tangents):
    q, k, v, mask, bias, key_lengths = primals
    xla = lambda q, k, v, bias: jax_nn_attention(q, k, v, mask, bias, is_causal, key_lengths, "xla")
    d_q, d_k, d_v, _, d_bias, _ = tangents  # masks and lengths (integers) have no tangent
    if bias is None:
        return jax.jvp(lambda q, k, v: xla(q, k, v, None), (q, k, v), (d_q, d_k, d_v))
    return jax.jvp(xla, (q, k, v, bias), (d_q, d_k, d_v, d_bias))


_mixed = jax.custom_jvp(_mixed_value, nondiff_argnums=(0,))
_mixed.defjvp(_mixed_jvp)
