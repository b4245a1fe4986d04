"""Dropout as a flax.linen module: owns the "dropout" RNG stream, the math is jaxnn.ops.dropout."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxnn import ops

__all__ = ["Dropout"]


class Dropout(nn.Module):
    """Inverted dropout (study guide §3): zero each element with probability ``rate``.

    Survivors are scaled by 1 / (1 - rate) so the expectation is unchanged; identity when
    ``deterministic`` (evaluation) or rate = 0. Randomness comes from the "dropout" stream.

    Attributes:
      rate: drop probability in [0, 1].

    Example:
      >>> layer = Dropout(0.3)
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        """x [...] -> [...] (same dtype)."""
        if deterministic or self.rate == 0.0:
            return ops.dropout(x, self.rate, None, deterministic=True)
        rng = None if self.rate == 1.0 else self.make_rng("dropout")
        return ops.dropout(x, self.rate, rng)
