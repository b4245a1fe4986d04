"""jaxnn.ops: the math of the layers as pure functions (no state, no Flax; jit/vmap/grad-safe).

Shape letters: B batch, T query/sequence length, S key length, N heads, H head dim,
D model dim, F features, V vocabulary, C classes.

  activations  relu, sigmoid, tanh, gelu, identity, get_activation
  softmax      softmax, log_softmax, standardize
  dropout      dropout
  normalization layer_norm, rms_norm, batch_norm
  pooling      mean_pool, max_pool, first_token_pool
  embedding_bag embedding_bag_sum (a text's looked-up rows summed, never formed whole)
  attention    dot_product_attention, ATTENTION_IMPLEMENTATIONS
               (a package: checks, reference, chunked, backends, dispatch)
  losses       softmax_cross_entropy, l2_penalty
"""

from jaxnn.ops.activations import (
    ACTIVATIONS,
    gelu,
    gelu_tanh,
    get_activation,
    identity,
    relu,
    sigmoid,
    tanh,
)
from jaxnn.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from jaxnn.ops.attention import dot_product_attention
from jaxnn.ops.dropout import dropout
from jaxnn.ops.embedding_bag import embedding_bag_sum
from jaxnn.ops.losses import l2_penalty, softmax_cross_entropy
from jaxnn.ops.normalization import batch_norm, layer_norm, rms_norm
from jaxnn.ops.pooling import first_token_pool, max_pool, mean_pool
from jaxnn.ops.softmax import log_softmax, softmax, standardize

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_IMPLEMENTATIONS",
    "batch_norm",
    "dot_product_attention",
    "dropout",
    "embedding_bag_sum",
    "first_token_pool",
    "gelu",
    "gelu_tanh",
    "get_activation",
    "identity",
    "l2_penalty",
    "layer_norm",
    "log_softmax",
    "max_pool",
    "mean_pool",
    "relu",
    "rms_norm",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "standardize",
    "tanh",
]
