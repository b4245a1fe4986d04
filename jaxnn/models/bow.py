"""Bag-of-words classifier (fastText style): embeddings -> dropout -> masked mean -> MLP head.

For a text with token ids x_1..x_n (and, optionally, hashed bigram ids b_1..b_{n-1}):

    pooled = (sum_i E[x_i] + sum_j G[b_j]) / (n + n_bigrams)        (study guide §7, mean pooling)
    logits = MLP(pooled)                                             [B, C]

E is the token table [V, D], G the hashed bigram table [bigram_buckets, D] (fastText's trick:
a bigram (a, b) is looked up at row `hashed_bigram_ids` = mix(a, b) mod bigram_buckets, so
the table has a fixed size whatever the number of distinct bigrams). Dropout (§3) acts on the
embedded vectors before pooling; the head has ``num_hidden_layers`` hidden layers of
``hidden_size`` units with ``activation`` (hidden_size = 0: a linear head, as in fastText).

The model splits in two so that a train step can update the tables sparsely (only the rows a
batch touches; jaxnn.train.sparse):

    feature_ids(tokens, mask)          -> {table name: (ids [B, T'], mask [B, T'])}  (no params)
    classify(vectors, masks, train)    -> logits, vectors[name] = table[name][ids]   [B, T', D]
    __call__(tokens, mask, train)      =  classify(lookup(feature_ids(...)))

Shapes: B batch, T tokens, D embed_dim, F hidden_size, V vocabulary, C classes. A row with no
real token (all padding) pools to the zero vector and gets the head's bias as logits.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.nn import MLP, Dropout
from jaxnn.ops import mean_pool

__all__ = ["BowClassifier", "hashed_bigram_ids"]

_GOLDEN = np.uint32(0x9E3779B1)
_MIX1 = np.uint32(0x85EBCA6B)
_MIX2 = np.uint32(0xC2B2AE35)


def hashed_bigram_ids(tokens: jax.Array, num_buckets: int) -> jax.Array:
    """Row of the bigram (tokens[:, t], tokens[:, t+1]) in a table of ``num_buckets`` rows.

    In uint32 arithmetic (wrapping mod 2^32), with a, b the two token ids:

        h = a * 0x9E3779B1 + b
        h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16   (murmur3 mix)
        id = h mod num_buckets

    Args:
      tokens: int [B, T] token ids.
      num_buckets: rows of the bigram table, >= 1.

    Returns:
      int32 [B, T - 1] (empty when T = 1). Bigrams touching padding still get an id; mask them
      with ``mask[:, :-1] & mask[:, 1:]``.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    a = tokens[:, :-1].astype(jnp.uint32)
    b = tokens[:, 1:].astype(jnp.uint32)
    h = a * _GOLDEN + b
    h = h ^ (h >> 16)
    h = h * _MIX1
    h = h ^ (h >> 13)
    h = h * _MIX2
    h = h ^ (h >> 16)
    return (h % jnp.uint32(num_buckets)).astype(jnp.int32)


class BowClassifier(nn.Module):
    """Bag-of-words text classifier (see module docstring).

    Attributes:
      vocab_size: V rows of the token table.
      num_classes: C.
      embed_dim: D.
      hidden_size: F units per hidden layer of the head (0 = linear head).
      num_hidden_layers: hidden layers when hidden_size > 0.
      activation: of the head's hidden layers (relu, gelu, tanh, sigmoid).
      dropout_rate: on the embedded vectors and the head's hidden layers.
      bigram_buckets: rows of the hashed bigram table (0 = unigrams only).
      dtype: compute dtype (parameters stay float32); logits are float32.

    Example:
      >>> model = BowClassifier(vocab_size=1000, num_classes=2, bigram_buckets=2**16)
      >>> variables = model.init(jax.random.key(0), tokens, mask, train=False)
      >>> logits = model.apply(variables, tokens, mask, train=False)            # [B, 2]
    """

    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    hidden_size: int = 0
    num_hidden_layers: int = 1
    activation: str = "relu"
    dropout_rate: float = 0.0
    bigram_buckets: int = 0
    dtype: Any = None

    def setup(self) -> None:
        init = nn.initializers.normal(stddev=0.1)
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=init)
        if self.bigram_buckets:
            self.bigram_embed = nn.Embed(self.bigram_buckets, self.embed_dim, embedding_init=init)
        self.embed_dropout = Dropout(self.dropout_rate)
        hidden = [self.hidden_size] * self.num_hidden_layers if self.hidden_size else []
        self.head = MLP(
            [*hidden, self.num_classes],
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
        )

    def table_names(self) -> tuple[str, ...]:
        """Names of the embedding tables (params[name]["embedding"]) looked up by feature_ids."""
        return ("embed", "bigram_embed") if self.bigram_buckets else ("embed",)

    def feature_ids(self, tokens: jax.Array, mask: jax.Array) -> dict[str, tuple]:
        """{table: (ids int32 [B, T'], mask bool [B, T'])}: tokens, and hashed bigrams if any."""
        features = {"embed": (tokens.astype(jnp.int32), mask)}
        if self.bigram_buckets:
            ids = hashed_bigram_ids(tokens, self.bigram_buckets)
            features["bigram_embed"] = (ids, mask[:, :-1] & mask[:, 1:])
        return features

    def classify(
        self, vectors: dict[str, jax.Array], masks: dict[str, jax.Array], *, train: bool
    ) -> jax.Array:
        """Logits [B, C] from looked-up vectors {table: [B, T', D]} and their masks [B, T']."""
        names = self.table_names()
        x = jnp.concatenate([vectors[n] for n in names], axis=1)
        m = jnp.concatenate([masks[n] for n in names], axis=1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.embed_dropout(x, deterministic=not train)
        pooled = mean_pool(x, m)
        return self.head(pooled, deterministic=not train).astype(jnp.float32)

    def lookup(self, features: dict[str, tuple]) -> dict[str, jax.Array]:
        """table[ids] for every feature table: {name: [B, T', D]}."""
        return {name: getattr(self, name)(ids) for name, (ids, _) in features.items()}

    def __call__(self, tokens: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """tokens int [B, T], mask bool [B, T] -> logits float32 [B, C]."""
        features = self.feature_ids(tokens, mask)
        vectors = self.lookup(features)
        return self.classify(vectors, {n: m for n, (_, m) in features.items()}, train=train)
