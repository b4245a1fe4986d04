"""Dropout as a flax.linen module: owns the "dropout" RNG stream, the math is jaxnn.ops.dropout."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxnn import ops
from jaxnn.ops.dropout import static_rate

__all__ = ["Dropout"]


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability ``rate``.

    Survivors are scaled by 1 / (1 - rate) so the expectation is unchanged; identity when
    ``deterministic`` (evaluation) or rate = 0. Randomness comes from the "dropout" stream.

    Attributes:
      rate: drop probability in [0, 1].

    The rate may also come at call time (``rate=``), as an array: hyperparameters are data, so
    trials with different rates share one program (jaxnn.tune.trials).

    Example:
      >>> layer = Dropout(0.3)
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    """

    rate: float

    @nn.compact
    def __call__(
        self, x: jax.Array, *, deterministic: bool, rate: float | jax.Array | None = None
    ) -> jax.Array:
        """x [...] -> [...] (same dtype).

        ``rate``: a call-time rate that replaces the attribute (None keeps it); a traced float32
        scalar (one per trial under ``jax.vmap``) must lie in [0, 1]; a traced 0 keeps every
        element (the mask is still drawn), a traced 1 gives zeros (jaxnn.ops.dropout)."""
        rate = self.rate if rate is None else rate
        if deterministic:
            return ops.dropout(x, rate, None, deterministic=True)  # checks a static rate
        static = static_rate(rate)  # checks a static rate
        if static == 0.0:
            return ops.dropout(x, static, None)
        rng = None if static == 1.0 else self.make_rng("dropout")
        return ops.dropout(x, rate, rng)
