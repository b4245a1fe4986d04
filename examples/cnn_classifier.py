"""A model of your own: a 1-D CNN text classifier with masked max pooling, registered as "cnn".

    python train.py --config=examples/cnn_classifier.py
    python train.py --config=examples/cnn_classifier.py --config.model.cnn.kernel_size=5

This file is both the model and its config (``get_config``). It shows everything a model needs
(jaxnn.models.registry documents the interface):

1. a flax module with ``__call__(tokens int32 [B, L], mask bool [B, L], *, train) -> logits
   float32 [B, C]``, whose fields include those get_model fills in (vocab_size, num_classes,
   dropout_rate from config.model.dropout, dtype from config.model.dtype);
2. a frozen dataclass of its hyperparameters, with types, defaults and ranges (`param`); they
   live in the config's own section, ``config.model.cnn``, so a typo is refused by name;
3. ``jaxnn.models.register("cnn", CnnClassifier, config_cls=CnnConfig)``.

The config names the model by import path, ``"examples.cnn_classifier:CnnClassifier"``, so a
run that loads any config file (or resumes from config.json) finds it: train.py's folder, the
repository root, is on ``sys.path``. It has no sparse-embedding interface, so it trains with
dense updates (train.py logs one line saying so).

The model (shapes: B batch, L tokens, D embedding, F filters, K kernel width, C classes):

    e      = E[tokens] * mask                       [B, L, D]  (padding rows zeroed)
    h      = act(conv1d(e, W [K, D, F]) + b)        [B, L, F]  ("SAME" padding)
    pooled = max over real positions l of h[:, l]   [B, F]     (padding set to -inf first;
                                                                 a row with no real token -> 0)
    logits = dropout(pooled) W_out + b_out          [B, C]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxnn.models import default_section, param, register
from jaxnn.ops.activations import ACTIVATIONS, get_activation

MODEL_NAME = "examples.cnn_classifier:CnnClassifier"


def masked_max_pool(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Max over the real positions: h [B, L, F], mask bool [B, L] -> [B, F] (float32).

    Padding positions are set to -inf before the max, so they never win; a row with no real
    token (all padding: a batch padded to its full size) would be -inf everywhere and is 0
    instead, so its logits stay finite and its gradient is zero.
    """
    h = h.astype(jnp.float32)
    masked = jnp.where(mask[..., None], h, -jnp.inf)
    pooled = jnp.max(masked, axis=1)
    return jnp.where(jnp.any(mask, axis=1)[:, None], pooled, 0.0)


@dataclasses.dataclass(frozen=True)
class CnnConfig:
    """The CNN's hyperparameters: ``config.model.cnn.<field>``."""

    embed_dim: int = param(64, ge=1, doc="D")
    num_filters: int = param(128, ge=1, doc="F")
    kernel_size: int = param(3, ge=1, doc="K, tokens per window")
    activation: str = param("relu", choices=tuple(ACTIVATIONS))


class CnnClassifier(nn.Module):
    """Embedding -> 1-D convolution -> masked max pooling -> dropout -> linear head."""

    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    num_filters: int = 128
    kernel_size: int = 3
    activation: str = "relu"
    dropout_rate: float = 0.0
    dtype: Any = None  # compute dtype; parameters stay float32, logits are float32

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """tokens int32 [B, L], mask bool [B, L] -> logits float32 [B, C]."""
        e = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
        e = jnp.where(mask[..., None], e, 0.0)
        if self.dtype is not None:
            e = e.astype(self.dtype)
        h = nn.Conv(
            self.num_filters, (self.kernel_size,), padding="SAME", dtype=self.dtype, name="conv"
        )(e)
        h = get_activation(self.activation)(h)
        pooled = masked_max_pool(h, mask)
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=not train)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled).astype(
            jnp.float32
        )


register("cnn", CnnClassifier, config_cls=CnnConfig)


def get_config() -> ml_collections.ConfigDict:
    """BBC News (5 topics) with the CNN: a run of a minute or two on a CPU."""
    from jaxnn.train.config import base_config

    config = base_config()
    config.data.corpus = "bbc_news"
    config.data.max_len = 512
    config.data.min_freq = 2
    config.model.name = MODEL_NAME
    config.model.cnn = default_section("cnn")
    config.model.cnn.embed_dim = 64
    config.model.cnn.num_filters = 128
    config.model.cnn.kernel_size = 3
    config.model.dropout = 0.2
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 20
    config.train.batch_size = 32
    config.train.num_epochs = 5
    config.train.patience = 2
    config.train.log_every_steps = 20
    return config
