"""Multi-head self-attention over jaxnn.ops.dot_product_attention."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn import ops

__all__ = ["MultiHeadAttention"]


class _FlatDenseGeneral(nn.Module):
    """``nn.DenseGeneral`` over the last ``in_axes`` axes, computed as one 2-D matmul.

    Same parameters as ``nn.DenseGeneral(features, axis=(-in_axes, ..., -1))`` (kernel
    [*in_dims, *features], bias [*features], the kernel drawn flat as [prod(in), prod(out)] by
    LeCun-normal, then reshaped, as Flax does) and the same outputs, but the rows are flattened
    to [M, prod(in)] and the kernel to [prod(in), prod(out)] before the product: on XLA:CPU the
    rank-3/4 form compiles its backward with transposing fusions around the kernel gradient
    and runs slower (measured by benchmarks/dense_layout.py, see
    benchmarks/results/dense_layout.md).
    """

    features: tuple[int, ...]
    in_axes: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_dims = x.shape[x.ndim - self.in_axes :]
        fan_in, fan_out = math.prod(in_dims), math.prod(self.features)
        shape = (*in_dims, *self.features)

        def kernel_init(rng, shape, dtype=jnp.float32):
            flat = nn.initializers.lecun_normal()(rng, (fan_in, fan_out), dtype)
            return flat.reshape(shape)

        kernel = self.param("kernel", kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), self.features, jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        leading = x.shape[: x.ndim - self.in_axes]
        y = x.reshape(-1, fan_in) @ kernel.reshape(fan_in, fan_out) + bias.reshape(fan_out)
        return y.reshape(*leading, *self.features)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product self-attention.

        Q = x W_q + b_q,  K = x W_k + b_k,  V = x W_v + b_v          [B, T, N, H] each
        heads = softmax(Q Kᵀ / √H) V   per head, over the unmasked keys    [B, T, N, H]
        out   = Σ_{n,h} heads[..., n, h] W_o[n, h, :] + b_o           [B, T, out_features]

    Each query (what a token is looking for) scores every key (what each token offers); the
    softmax weights mix the values (what each token shares). The parameter layout
    (query/key/value kernels [D, N, H] and biases [N, H], out kernel [N, H, D'] and bias [D'])
    is that of ``flax.linen.MultiHeadDotProductAttention``.

    Attributes:
      num_heads: N.
      qkv_features: N · H (default: D); must be divisible by num_heads.
      out_features: D' (default: D).
      dropout_rate: dropout on the attention weights ("dropout" RNG stream); needs
        attention_impl "auto", "chunked" or "reference" when training ("auto" then runs the
        exact blocked kernel, which never holds the [B, N, T, S] weights).
      attention_impl: implementation passed to ``jaxnn.ops.dot_product_attention``.
      dtype: computation dtype (parameters stay float32; softmax statistics float32).

    Call: ``(x, mask=None, *, key_lengths=None, deterministic)``: x [B, T, D]; mask bool
    [B, T] marks the real tokens (False = padding key: no query attends to it), or a bool mask
    broadcastable to [B, N, T, S]; key_lengths int [B] says the same as a [B, T] mask whose
    real tokens come first (keys t >= key_lengths[b] are padding), in the form the fused
    GPU/TPU kernels take directly (no mask array is built). A query that sees no key gets
    zero attention output (so ``out`` = b_o).

    Example:
      >>> mha = MultiHeadAttention(num_heads=4)
      >>> params = mha.init(jax.random.key(0), x, mask, deterministic=True)
      >>> y = mha.apply(params, x, mask, deterministic=True)                    # [B, T, D]
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    attention_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        key_lengths: jax.Array | None = None,
        deterministic: bool,
    ) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x must have rank 3 ([B, T, D]); got shape {x.shape}")
        batch, length, model_dim = x.shape
        qkv_features = self.qkv_features or model_dim
        out_features = self.out_features or model_dim
        if self.num_heads < 1 or qkv_features % self.num_heads:
            raise ValueError(
                f"qkv_features={qkv_features} must be divisible by num_heads={self.num_heads}"
            )
        head_dim = qkv_features // self.num_heads
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.ndim == 2:
                if mask.shape != (batch, length):
                    raise ValueError(
                        f"mask must have shape [B, T] = {(batch, length)} (key padding) or be "
                        f"broadcastable to [B, N, T, S]; got {mask.shape}"
                    )
                mask = mask.astype(bool)[:, None, None, :]
            elif mask.ndim != 4:
                raise ValueError(
                    f"mask must have shape [B, T] = {(batch, length)} or rank 4 (broadcastable "
                    f"to [B, N, T, S]); got {mask.shape}"
                )

        def projection(name: str) -> _FlatDenseGeneral:
            return _FlatDenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name)

        query = projection("query")(x)
        key = projection("key")(x)
        value = projection("value")(x)
        rate = 0.0 if deterministic else self.dropout_rate
        heads = ops.dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            key_lengths=key_lengths,
            dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate > 0.0 else None,
            implementation=self.attention_impl,
        )
        return _FlatDenseGeneral((out_features,), in_axes=2, dtype=self.dtype, name="out")(heads)
