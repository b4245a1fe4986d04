"""Whole text classifiers: `BowClassifier`, `TransformerClassifier`, built by `get_model`.

Both map tokens int [B, T] and mask bool [B, T] to logits float32 [B, C]:
``model.apply(variables, tokens, mask, train=...)``. `predict_proba` turns logits into class
probabilities with softmax (study guide §8): p_c = exp(z_c) / sum_j exp(z_j).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn.models.bow import BowClassifier, hashed_bigram_ids, hashed_ngram_ids, unique_ids
from jaxnn.models.transformer import TransformerClassifier
from jaxnn.ops import softmax

__all__ = [
    "BowClassifier",
    "TransformerClassifier",
    "get_model",
    "hashed_bigram_ids",
    "hashed_ngram_ids",
    "predict_proba",
    "unique_ids",
]

MODEL_NAMES = ("bow", "transformer")


def _dtype(name: str) -> Any:
    return None if name == "float32" else jnp.dtype(name)


def get_model(config: Mapping[str, Any], *, vocab_size: int, num_classes: int) -> nn.Module:
    """The model of a run config (``config.model``, ``config.data.max_len``).

    Args:
      config: a validated run config (ConfigDict or nested dict).
      vocab_size: V, from the vocabulary built on the training split.
      num_classes: C, from the corpus's label names.

    Raises:
      ValueError: naming ``model.name`` when it is not "bow" or "transformer".
    """
    m = config["model"]
    name = m["name"]
    if name == "bow":
        return BowClassifier(
            vocab_size=vocab_size,
            num_classes=num_classes,
            embed_dim=m["embed_dim"],
            hidden_size=m["hidden_size"],
            num_hidden_layers=m["num_hidden_layers"],
            activation=m["activation"],
            dropout_rate=m["dropout"],
            bigram_buckets=m["bigram_buckets"],
            trigram_buckets=m["trigram_buckets"],
            binary_features=m["binary_features"],
            pooling=m["pooling"],
            dtype=_dtype(m["dtype"]),
        )
    if name == "transformer":
        return TransformerClassifier(
            vocab_size=vocab_size,
            num_classes=num_classes,
            max_len=config["data"]["max_len"],
            embed_dim=m["embed_dim"],
            num_layers=m["num_layers"],
            num_heads=m["num_heads"],
            mlp_dim=m["mlp_dim"],
            dropout_rate=m["dropout"],
            attention_dropout_rate=m["attention_dropout"],
            activation=m["activation"],
            norm=m["norm"],
            pooling=m["pooling"],
            attention_impl=m["attention_impl"],
            dtype=_dtype(m["dtype"]),
        )
    raise ValueError(f"model.name={name!r} is not allowed; allowed: {', '.join(MODEL_NAMES)}")


def predict_proba(logits: jax.Array) -> jax.Array:
    """Class probabilities softmax(logits) over the last axis: [B, C] -> [B, C], rows sum to 1."""
    return softmax(logits, axis=-1)
