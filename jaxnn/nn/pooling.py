"""Pooling modules: parameter-free wrappers of jaxnn.ops.pooling.

All take ``(x, mask)`` with x [B, T, D] and mask [B, T] (True = real token) and return [B, D].
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxnn import ops

__all__ = ["POOLS", "FirstTokenPool", "MaxPool", "MeanPool", "get_pool"]


class MeanPool(nn.Module):
    """Mean of the unmasked token vectors; an all-padding row gives zeros."""

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return ops.mean_pool(x, mask)


class MaxPool(nn.Module):
    """Element-wise max over the unmasked token vectors; an all-padding row gives zeros."""

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return ops.max_pool(x, mask)


class FirstTokenPool(nn.Module):
    """The first token's vector x[:, 0]; ``mask`` is accepted for a uniform call and unused."""

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        del mask
        return ops.first_token_pool(x)


POOLS = {"mean": MeanPool, "max": MaxPool, "first": FirstTokenPool}


def get_pool(name: str) -> nn.Module:
    """A pooling module by name: "mean", "max" or "first". Unknown names raise ValueError."""
    if name not in POOLS:
        raise ValueError(f"pooling={name!r} is not known; valid names: {', '.join(POOLS)}")
    return POOLS[name]()
