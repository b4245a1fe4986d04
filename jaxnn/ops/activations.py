"""Activation functions: the non-linearity between layers.

Without an activation, a stack of Dense layers is one Dense layer (W2 (W1 x + b1) + b2 =
(W2 W1) x + (W2 b1 + b2)); each function here breaks that collapse. All are element-wise:
x [...] -> [...] with the dtype of x.

    relu(x)     = max(0, x)
    sigmoid(x)  = 1 / (1 + e^{-x})
    tanh(x)     = (e^x - e^{-x}) / (e^x + e^{-x})
    gelu(x)     = x Φ(x) = x/2 (1 + erf(x / √2))                       (exact)
    gelu_tanh(x)= x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))               (approximate=True)
    identity(x) = x                                                      ("linear")
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "gelu",
    "gelu_tanh",
    "get_activation",
    "identity",
    "relu",
    "sigmoid",
    "tanh",
]


def relu(x: jax.Array) -> jax.Array:
    """ReLU(x) = max(0, x), element-wise.

    Piecewise linear but not linear: relu(1 + (-1)) = 0 while relu(1) + relu(-1) = 1.
    The gradient at exactly 0 is taken as 0 (as in ``jax.nn.relu``).
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def sigmoid(x: jax.Array) -> jax.Array:
    """σ(x) = 1 / (1 + e^{-x}), element-wise, output in [0, 1].

    Evaluated without overflow: with e = exp(-|x|) (always in (0, 1]),
    σ(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0. Both branches are finite for
    every finite x, so the value and the gradient σ(x)(1 - σ(x)) stay finite (and no overflow
    warning is raised) even for |x| = 1e4, where the textbook form computes e^{10000} = inf.
    """
    x = jnp.asarray(x)
    e = jnp.exp(-jnp.abs(x))
    one = jnp.ones_like(e)
    return jnp.where(x >= 0, one / (one + e), e / (one + e))


def tanh(x: jax.Array) -> jax.Array:
    """tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x}), in [-1, 1]: the zero-centred 2σ(2x) - 1."""
    return jnp.tanh(x)


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU(x) = x Φ(x), Φ the standard normal CDF; the Transformer activation.

    approximate=False (default): exact, x/2 (1 + erf(x / √2)).
    approximate=True: the tanh form x/2 (1 + tanh(√(2/π) (x + 0.044715 x³))) of Hendrycks &
    Gimpel (2016), "Gaussian Error Linear Units"; the two differ by less than 1e-3.
    """
    x = jnp.asarray(x)
    if approximate:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU in its tanh approximation: ``gelu(x, approximate=True)``."""
    return gelu(x, approximate=True)


def identity(x: jax.Array) -> jax.Array:
    """identity(x) = x: no activation (a purely linear layer)."""
    return jnp.asarray(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "identity": identity,
    "linear": identity,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name`` (one of the keys of ``ACTIVATIONS``).

    Raises:
      ValueError: ``name`` is not a known activation; the message lists the valid names.
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation={name!r} is not known; valid names: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
