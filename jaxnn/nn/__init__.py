"""jaxnn.nn: thin flax.linen modules over jaxnn.ops; they own parameters and RNG streams only.

Dropout                                   "dropout" RNG stream
MLP                                       Dense + activation + dropout
LayerNorm, RMSNorm, BatchNorm, make_norm, apply_norm
MeanPool, MaxPool, FirstTokenPool, get_pool
MultiHeadAttention, TransformerEncoderBlock
"""

from jaxnn.nn.attention import MultiHeadAttention
from jaxnn.nn.dropout import Dropout
from jaxnn.nn.mlp import MLP
from jaxnn.nn.normalization import NORMS, BatchNorm, LayerNorm, RMSNorm, apply_norm, make_norm
from jaxnn.nn.pooling import POOLS, FirstTokenPool, MaxPool, MeanPool, get_pool
from jaxnn.nn.transformer import TransformerEncoderBlock

__all__ = [
    "MLP",
    "NORMS",
    "POOLS",
    "BatchNorm",
    "Dropout",
    "FirstTokenPool",
    "LayerNorm",
    "MaxPool",
    "MeanPool",
    "MultiHeadAttention",
    "RMSNorm",
    "TransformerEncoderBlock",
    "apply_norm",
    "get_pool",
    "make_norm",
]
