"""Pre-LN Transformer encoder block: attention and an MLP, each in a normalized residual branch."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxnn.nn.attention import MultiHeadAttention
from jaxnn.nn.dropout import Dropout
from jaxnn.nn.mlp import MLP
from jaxnn.nn.normalization import apply_norm, make_norm

__all__ = ["TransformerEncoderBlock"]


class TransformerEncoderBlock(nn.Module):
    """Pre-LN encoder block (Xiong et al. 2020, "On Layer Normalization in the Transformer"):

        x = x + Dropout(MultiHeadAttention(Norm_1(x), mask))
        x = x + Dropout(Dense_2(Dropout(act(Dense_1(Norm_2(x))))))        Dense_1: D -> F

    Normalizing inside the residual branches (not after the sum) keeps the residual path an
    identity, which trains stably without learning-rate warm-up tricks.

    Attributes:
      num_heads: N attention heads (D divisible by N).
      mlp_dim: F, the feed-forward hidden size.
      dropout_rate: on the feed-forward hidden layer and both branch outputs; drawn from the
        "dropout" RNG stream when ``train``.
      attention_dropout_rate: on the attention weights; None means ``dropout_rate``. With a
        rate > 0, ``attention_impl="auto"`` picks the blocked kernel ("chunked"), which draws
        the same masks as "reference" without materializing the [B, N, T, S] weights.
      activation: name of the feed-forward activation (``jaxnn.ops.ACTIVATIONS``).
      norm: "layer", "batch" or "rms". BatchNorm keeps running statistics in "batch_stats"
        (apply with ``mutable=["batch_stats"]`` when training) and counts only real tokens.
      attention_impl: passed to ``jaxnn.ops.dot_product_attention``.
      dtype: computation dtype of the norms, attention and MLP (parameters float32; norm and
        softmax statistics float32). The residual stream keeps the dtype of x (x + branch
        promotes): pass x in bfloat16 for a bfloat16 stream, float32 for a float32 one.

    Call: ``(x, mask, *, train, dropout_rate=None)``: ``dropout_rate`` (a float32 array under
    ``jax.vmap``) replaces the attribute's rate of the feed-forward and branch dropouts at call
    time; the attention dropout keeps its static rate (it picks the attention kernel).
    x [B, T, D], mask bool [B, T] (True = real token) or None
    -> [B, T, D]. Outputs at real positions do not depend on what padded positions hold.

    Example:
      >>> block = TransformerEncoderBlock(num_heads=4, mlp_dim=256)
      >>> variables = block.init(jax.random.key(0), x, mask, train=False)
      >>> y = block.apply(variables, x, mask, train=True, rngs={"dropout": key})
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float | None = None
    activation: str = "gelu"
    norm: str = "layer"
    attention_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        *,
        train: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        if x.ndim != 3:
            raise ValueError(f"x must have rank 3 ([B, T, D]); got shape {x.shape}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape [B, T] = {x.shape[:2]}; got {mask.shape}")
        deterministic = not train
        model_dim = x.shape[-1]

        h = apply_norm(
            make_norm(self.norm, dtype=self.dtype, name="norm_1"), x, mask=mask, train=train
        )
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=(
                self.dropout_rate
                if self.attention_dropout_rate is None
                else self.attention_dropout_rate
            ),
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            name="attention",
        )(h, mask, deterministic=deterministic)
        x = x + Dropout(self.dropout_rate)(h, deterministic=deterministic, rate=rate)

        h = apply_norm(
            make_norm(self.norm, dtype=self.dtype, name="norm_2"), x, mask=mask, train=train
        )
        h = MLP(
            (self.mlp_dim, model_dim),
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="mlp",
        )(h, deterministic=deterministic, dropout_rate=rate)
        return x + Dropout(self.dropout_rate)(h, deterministic=deterministic, rate=rate)
