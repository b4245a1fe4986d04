"""Bag-of-words classifier (fastText style): embeddings -> dropout -> masked mean -> MLP head.

For a text with token ids x_1..x_n (and, optionally, hashed bigram ids b_1..b_{n-1} and
hashed trigram ids c_1..c_{n-2}), the bag of its K features (all of them, or with
``binary_features`` each distinct id once per table, NBSVM's binarized counts):

    s      = sum_i E[x_i] + sum_j G[b_j] + sum_k H[c_k]                          [B, D]
    pooled = s / K         (pooling "mean")
           = s / sqrt(K)   (pooling "sqrt": the sum scaled by 1/sqrt(K))
    logits = MLP(pooled)                                                         [B, C]

E is the token table [V, D], G the hashed bigram table [bigram_buckets, D], H the hashed
trigram table [trigram_buckets, D] (fastText's trick: an n-gram is looked up at row
`hashed_ngram_ids` = mix(ids) mod buckets, so a table has a fixed size whatever the number of
distinct n-grams). Dropout acts on the embedded vectors before pooling; the head has
``num_hidden_layers`` hidden layers of ``hidden_size`` units with ``activation``
(hidden_size = 0: a linear head, as in fastText).

The model splits in two so that a train step can update the tables sparsely (only the rows a
batch touches; jaxnn.train.sparse):

    feature_ids(tokens, mask)          -> {table name: (ids [B, T'], mask [B, T'])}  (no params)
    classify(vectors, masks, train)    -> logits, vectors[name] = table[name][ids]   [B, T', D]
    classify_rows(rows, slots, masks, train) = classify(rows[slots]), without forming the
                                         float vectors [B, T', D]
    __call__(tokens, mask, train)      =  classify_rows(tables, ids, masks)

classify_rows sums a text's vectors with `jaxnn.ops.embedding_bag_sum` (under ``jax.vmap`` over
trials, jaxnn.tune, the [B, T', D] vectors would be K times larger, far beyond a CPU's caches);
that op is reverse-mode only, so the model takes grad and vjp but not jvp or jax.hessian. With
dropout the draws are those of `classify` (uint16 [B, T', D], made once for all trials). An id
outside its table makes its text's logits NaN.

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
from jaxnn.ops import embedding_bag_sum, mean_pool
from jaxnn.ops.dropout import keep_rule, static_rate, uniform_bits16

__all__ = [
    "POOLINGS",
    "BowClassifier",
    "hashed_bigram_ids",
    "hashed_ngram_ids",
    "unique_ids",
]

POOLINGS = ("mean", "sqrt")

_GOLDEN = np.uint32(0x9E3779B1)
_MIX1 = np.uint32(0x85EBCA6B)
_MIX2 = np.uint32(0xC2B2AE35)
_INT32_MAX = np.iinfo(np.int32).max


def _mix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * _MIX1
    h = h ^ (h >> 13)
    h = h * _MIX2
    return h ^ (h >> 16)


def hashed_ngram_ids(tokens: jax.Array, n: int, num_buckets: int) -> jax.Array:
    """Row of the n-gram (tokens[:, t], ..., tokens[:, t+n-1]) in a table of ``num_buckets`` rows.

    In uint32 arithmetic (wrapping mod 2^32), with a_1..a_n the n token ids:

        h = a_1;  for k = 2..n:  h = mix(h * 0x9E3779B1 + a_k)
        mix(h): h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
        id = h mod num_buckets

    (murmur3's finalizer as the mix). n = 2 is `hashed_bigram_ids`.

    Args:
      tokens: int [B, T] token ids.
      n: the n-gram order, >= 2.
      num_buckets: rows of the table, >= 1.

    Returns:
      int32 [B, max(T - n + 1, 0)]. N-grams touching padding still get an id; mask them with
      the AND of the n shifted masks (``BowClassifier.feature_ids`` does).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    width = max(tokens.shape[1] - n + 1, 0)
    cols = [tokens[:, k : k + width].astype(jnp.uint32) for k in range(n)]
    h = cols[0]
    for col in cols[1:]:
        h = _mix(h * _GOLDEN + col)
    return (h % jnp.uint32(num_buckets)).astype(jnp.int32)


def _ngram_mask(mask: jax.Array, n: int) -> jax.Array:
    """bool [B, max(T - n + 1, 0)]: every one of the n positions is a real token."""
    width = max(mask.shape[1] - n + 1, 0)
    out = mask[:, :width]
    for k in range(1, n):
        out = out & mask[:, k : k + width]
    return out


def unique_ids(ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each distinct unmasked id of a row once: the binarized bag (NBSVM's presence features).

    Args:
      ids: int [B, T'] ids (ids >= 2^31 - 1 are not supported).
      mask: bool [B, T'] (False = padding, ignored).

    Returns:
      (ids int32 [B, T'], mask bool [B, T']): the row's ids sorted, the mask True on the first of
      each run of equal unmasked ids; masked slots hold id 0. As a bag, the row's distinct ids.
    """
    big = jnp.where(mask, ids.astype(jnp.int32), _INT32_MAX)
    s = jnp.sort(big, axis=1)
    first = jnp.concatenate([jnp.ones_like(s[:, :1], bool), s[:, 1:] != s[:, :-1]], axis=1)
    keep = first & (s != _INT32_MAX)
    return jnp.where(keep, s, 0), keep


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
    return hashed_ngram_ids(tokens, 2, num_buckets)


class BowClassifier(nn.Module):
    """Bag-of-words text classifier (see module docstring).

    Attributes:
      vocab_size: V rows of the token table.
      num_classes: C.
      embed_dim: D.
      hidden_size: F units per hidden layer of the head (0 = linear head).
      num_hidden_layers: hidden layers when hidden_size > 0.
      activation: of the head's hidden layers (relu, gelu, tanh, sigmoid).
      dropout_rate: on the embedded vectors and the head's hidden layers: the default of a
        call, which may pass its own (``dropout_rate=``, an array: hyperparameters are data).
      bigram_buckets: rows of the hashed bigram table (0 = no bigrams).
      trigram_buckets: rows of the hashed trigram table (0 = no trigrams).
      binary_features: count each distinct feature id once per text and table.
      pooling: "mean" (sum / K) or "sqrt" (sum / sqrt(K)) over the K features of a text.
      dtype: compute dtype (parameters stay float32); logits are float32.

    Example:
      >>> model = BowClassifier(vocab_size=1000, num_classes=2, bigram_buckets=2**16)
      >>> variables = model.init(jax.random.key(0), tokens, mask, train=False)
      >>> logits = model.apply(variables, tokens, mask, train=False)            # [B, 2]
      >>> logits = model.apply(variables, tokens, mask, train=True, dropout_rate=jnp.float32(0.3),
      ...                      rngs={"dropout": key})
    """

    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    hidden_size: int = 0
    num_hidden_layers: int = 1
    activation: str = "relu"
    dropout_rate: float = 0.0
    bigram_buckets: int = 0
    trigram_buckets: int = 0
    binary_features: bool = False
    pooling: str = "mean"
    dtype: Any = None

    def setup(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not allowed; allowed: {', '.join(POOLINGS)}"
            )
        init = nn.initializers.normal(stddev=0.1)
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=init)
        if self.bigram_buckets:
            self.bigram_embed = nn.Embed(self.bigram_buckets, self.embed_dim, embedding_init=init)
        if self.trigram_buckets:
            self.trigram_embed = nn.Embed(self.trigram_buckets, self.embed_dim, embedding_init=init)
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
        names = ["embed"]
        if self.bigram_buckets:
            names.append("bigram_embed")
        if self.trigram_buckets:
            names.append("trigram_embed")
        return tuple(names)

    def feature_ids(self, tokens: jax.Array, mask: jax.Array) -> dict[str, tuple]:
        """{table: (ids int32 [B, T'], mask bool [B, T'])}: tokens, hashed bigrams, trigrams.

        With ``binary_features`` each table's ids are `unique_ids` (sorted, duplicates masked).
        """
        features = {"embed": (tokens.astype(jnp.int32), mask)}
        for name, n, buckets in (
            ("bigram_embed", 2, self.bigram_buckets),
            ("trigram_embed", 3, self.trigram_buckets),
        ):
            if buckets:
                features[name] = (hashed_ngram_ids(tokens, n, buckets), _ngram_mask(mask, n))
        if self.binary_features:
            features = {name: unique_ids(*feature) for name, feature in features.items()}
        return features

    def classify(
        self,
        vectors: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        *,
        train: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, C] from looked-up vectors {table: [B, T', D]} and their masks [B, T'].

        ``dropout_rate``: the rate of this call (a float32 array under ``jax.vmap``: one per
        trial); None = the ``dropout_rate`` attribute."""
        names = self.table_names()
        x = jnp.concatenate([vectors[n] for n in names], axis=1)
        m = jnp.concatenate([masks[n] for n in names], axis=1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.embed_dropout(x, deterministic=not train, rate=dropout_rate)
        count = jnp.sum(m, axis=1, keepdims=True, dtype=jnp.float32)
        return self._head(mean_pool(x, m), count, train=train, dropout_rate=dropout_rate)

    def classify_rows(
        self,
        rows: dict[str, jax.Array],
        slots: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        *,
        train: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """`classify` of the vectors ``rows[name][slots[name]]``, without forming those vectors.

        Args:
          rows: {table: [U, D]} the rows the lookups read: a batch's distinct rows
            (`jaxnn.train.sparse.distinct_slots`), or a whole table.
          slots: {table: int [B, T']} each lookup's row in ``rows`` (any value where the mask
            is False).
          masks: {table: bool [B, T']}.
          train, dropout_rate: as in `classify` (the same dropout draws).

        The sum of a text's vectors is `jaxnn.ops.embedding_bag_sum` (a counts matrix product
        for a batch's few distinct rows, a blocked gather and sum otherwise and with dropout,
        whose draws are made once for the joined [B, T', D] as `classify` makes them).
        """
        names = self.table_names()
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        count = sum(jnp.sum(masks[n], axis=1, keepdims=True, dtype=jnp.float32) for n in names)
        # a real lookup outside the rows makes its text NaN (as jnp.take's fill would), through
        # the count: data only, so under vmap it is computed once for all trials
        outside = sum(
            jnp.sum(masks[n] & ((slots[n] < 0) | (slots[n] >= rows[n].shape[0])), axis=1)
            for n in names
        )
        count = jnp.where(outside[:, None] > 0, jnp.nan, count)
        total = self._summed(rows, slots, masks, train=train, rate=rate)
        return self._head(
            total / jnp.maximum(count, 1.0), count, train=train, dropout_rate=dropout_rate
        )

    def _summed(self, rows, slots, masks, *, train, rate) -> jax.Array:
        """float32 [B, D]: sum over t of dropout(x)[b, t], x = the tables' vectors joined along
        T' as `classify` joins them (its dropout draws); see `classify_rows`."""
        names = self.table_names()
        batch = masks[names[0]].shape[0]
        dropout = train and static_rate(rate) != 0.0
        if dropout:  # `classify`'s draws: the embed_dropout module's key, the joined [B, T', D]
            threshold, scale = keep_rule(rate)  # checks a static rate as Dropout does
            key = self.embed_dropout.make_rng("dropout")
            widths = [masks[n].shape[1] for n in names]
            bits = uniform_bits16(key, (batch, sum(widths), self.embed_dim))
            offsets = np.cumsum([0, *widths])
            threshold, scale = jnp.asarray(threshold, jnp.int32), jnp.asarray(scale, jnp.float32)
        total = jnp.zeros((batch, self.embed_dim), jnp.float32)
        for i, n in enumerate(names):
            r, m = rows[n], masks[n]  # summed in float32 (`classify` rounds x to dtype first)
            slot = jnp.where(m, slots[n], r.shape[0])  # U: nothing
            if dropout:
                keep = (bits[:, offsets[i] : offsets[i + 1]], threshold, scale)
                total = total + embedding_bag_sum(r, slot, dropout=keep)
            else:
                total = total + embedding_bag_sum(r, slot)
        return total

    def _head(self, pooled, count, *, train, dropout_rate):
        """logits float32 [B, C] from the mean of a text's K = ``count`` [B, 1] vectors (the
        "sqrt" scaling in float32, then one rounding to the compute dtype)."""
        if self.pooling == "sqrt":  # sum / sqrt(K) = mean * sqrt(K)
            pooled = pooled.astype(jnp.float32) * jnp.sqrt(count)
        pooled = pooled.astype(self.dtype or jnp.float32)
        head = self.head(pooled, deterministic=not train, dropout_rate=dropout_rate)
        return head.astype(jnp.float32)

    def lookup(self, features: dict[str, tuple]) -> dict[str, jax.Array]:
        """table[ids] for every feature table: {name: [B, T', D]}."""
        return {name: getattr(self, name)(ids) for name, (ids, _) in features.items()}

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
        tables = {n: getattr(self, n).embedding for n in features}
        ids = {n: i for n, (i, _) in features.items()}
        masks = {n: m for n, (_, m) in features.items()}
        return self.classify_rows(tables, ids, masks, train=train, dropout_rate=dropout_rate)
