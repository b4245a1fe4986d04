"""Whole text classifiers, and the registry that builds the one a run config names.

Every model maps tokens int32 [B, L] and mask bool [B, L] to logits float32 [B, C]:
``model.apply(variables, tokens, mask, train=...)``. `predict_proba` turns logits into class
probabilities with softmax: p_c = exp(z_c) / sum_j exp(z_j).

Built-ins: `BowClassifier` ("bow"), `TransformerClassifier` ("transformer"). Your own model:
``jaxnn.models.register("cnn", CnnClassifier, config_cls=CnnConfig)`` or
``config.model.name = "my_package.models:CnnClassifier"``; the interface a model satisfies, the
optional sparse-embedding interface and the hyperparameter section are documented in
`jaxnn.models.registry` (a worked example: examples/cnn_classifier.py).
"""

from __future__ import annotations

import jax

from jaxnn.models.bow import BowClassifier, hashed_bigram_ids, hashed_ngram_ids, unique_ids
from jaxnn.models.hyperparameters import ConfigError, check_fields, fail, param
from jaxnn.models.registry import (
    DTYPES,
    BowConfig,
    ModelSpec,
    SparseEmbeddingModel,
    TextClassifier,
    TransformerConfig,
    compute_dtype,
    default_section,
    get_model,
    model_names,
    register,
    resolve,
    supports_sparse_embeddings,
)
from jaxnn.models.transformer import TransformerClassifier
from jaxnn.ops import softmax

__all__ = [
    "DTYPES",
    "BowClassifier",
    "BowConfig",
    "ConfigError",
    "ModelSpec",
    "SparseEmbeddingModel",
    "TextClassifier",
    "TransformerClassifier",
    "TransformerConfig",
    "check_fields",
    "compute_dtype",
    "default_section",
    "fail",
    "get_model",
    "hashed_bigram_ids",
    "hashed_ngram_ids",
    "model_names",
    "param",
    "predict_proba",
    "register",
    "resolve",
    "supports_sparse_embeddings",
    "unique_ids",
]


def predict_proba(logits: jax.Array) -> jax.Array:
    """Class probabilities softmax(logits) over the last axis: [B, C] -> [B, C], rows sum to 1."""
    return softmax(logits, axis=-1)
