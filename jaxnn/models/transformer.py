"""Transformer encoder classifier: embeddings + positions -> N pre-LN blocks -> pooling -> head.

    x_0    = E[tokens] + P[0..T-1]                                       [B, T, D]
    x_0    = dropout(x_0)
    x_l    = TransformerEncoderBlock_l(x_{l-1}, mask)   l = 1..N          pre-LN blocks
    pooled = pool(norm(x_N), mask)     mean, max or first token           [B, D]
    logits = Dense(dropout(pooled))                                      [B, C]

Each block (jaxnn.nn.TransformerEncoderBlock) is x + Attn(Norm(x)), then x + MLP(Norm(x)), with
multi-head scaled dot-product attention softmax(QK^T / sqrt(d_k)) V over the non-padding keys,
the chosen activation in the feed-forward layer, and LayerNorm, BatchNorm or RMSNorm. BatchNorm
keeps running statistics in the "batch_stats" collection (updated by the train step). Softmax
of the logits gives the class probabilities (`jaxnn.models.predict_proba`).

Like `BowClassifier`, the model splits into `feature_ids` (no parameters) and `classify` (from
the looked-up token vectors), so the token table can be updated sparsely.

Shapes: B batch, T tokens (<= max_len), D embed_dim, N heads, F mlp_dim, V vocabulary, C classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn.nn import Dropout, TransformerEncoderBlock, apply_norm, get_pool, make_norm

__all__ = ["TransformerClassifier"]


class TransformerClassifier(nn.Module):
    """Transformer encoder text classifier (see module docstring).

    Attributes:
      vocab_size: V.
      num_classes: C.
      max_len: longest sequence T (rows of the position table).
      embed_dim: D (a multiple of num_heads).
      num_layers: N blocks (0 = pooled embeddings straight to the head).
      num_heads: attention heads.
      mlp_dim: F, the feed-forward hidden size.
      dropout_rate: on embeddings, block outputs and the pooled vector: the default of a call,
        which may pass its own (``dropout_rate=``, an array: hyperparameters are data).
      attention_dropout_rate: on the attention weights (None = the ``dropout_rate`` attribute,
        never a call's rate: it stays static); with any rate ``attention_impl="auto"`` keeps
        off the materialized [B, N, T, S] weights (rate > 0: the blocked kernel).
      activation: of the feed-forward layer (relu, gelu, tanh, sigmoid).
      norm: "layer", "batch" or "rms".
      pooling: "mean", "max" or "first".
      attention_impl: passed to jaxnn.ops.dot_product_attention.
      dtype: compute dtype (parameters stay float32); logits are float32.
    """

    vocab_size: int
    num_classes: int
    max_len: int
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    dropout_rate: float = 0.0
    attention_dropout_rate: float | None = None
    activation: str = "gelu"
    norm: str = "layer"
    pooling: str = "mean"
    attention_impl: str = "auto"
    dtype: Any = None

    def setup(self) -> None:
        init = nn.initializers.normal(stddev=0.02)
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=init)
        self.position_embed = nn.Embed(self.max_len, self.embed_dim, embedding_init=init)
        self.embed_dropout = Dropout(self.dropout_rate)
        self.blocks = [
            TransformerEncoderBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                activation=self.activation,
                norm=self.norm,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
            )
            for _ in range(self.num_layers)
        ]
        self.final_norm = make_norm(self.norm)
        self.pool = get_pool(self.pooling)
        self.head_dropout = Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype)

    def table_names(self) -> tuple[str, ...]:
        """Embedding tables looked up by `feature_ids` (the position table is not one)."""
        return ("embed",)

    def feature_ids(self, tokens: jax.Array, mask: jax.Array) -> dict[str, tuple]:
        """{"embed": (tokens int32 [B, T], mask bool [B, T])}."""
        return {"embed": (tokens.astype(jnp.int32), mask)}

    def lookup(self, features: dict[str, tuple]) -> dict[str, jax.Array]:
        return {name: getattr(self, name)(ids) for name, (ids, _) in features.items()}

    def classify(
        self,
        vectors: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        *,
        train: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, C] from token vectors {"embed": [B, T, D]} and {"embed": mask [B, T]}.

        ``dropout_rate``: this call's rate of the embedding, block and head dropouts (a float32
        array under ``jax.vmap``: one per trial); None = the ``dropout_rate`` attribute. The
        attention dropout keeps its static rate."""
        rate = dropout_rate
        x, mask = vectors["embed"], masks["embed"]
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length T={length} is longer than max_len={self.max_len}")
        x = x + self.position_embed(jnp.arange(length))[None]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.embed_dropout(x, deterministic=not train, rate=rate)
        for block in self.blocks:
            x = block(x, mask, train=train, dropout_rate=rate)
        x = apply_norm(self.final_norm, x, mask=mask, train=train)
        pooled = self.pool(x, mask)
        pooled = self.head_dropout(pooled, deterministic=not train, rate=rate)
        return self.head(pooled).astype(jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """tokens int [B, T], mask bool [B, T] -> logits float32 [B, C]; ``dropout_rate``
        (None = the attribute) as in `classify`."""
        features = self.feature_ids(tokens, mask)
        vectors = self.lookup(features)
        masks = {n: m for n, (_, m) in features.items()}
        return self.classify(vectors, masks, train=train, dropout_rate=dropout_rate)
