"""Multi-layer perceptron: Dense layers with an activation (and dropout) between them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn import ops
from jaxnn.nn.dropout import Dropout

__all__ = ["MLP"]


class MLP(nn.Module):
    """x -> Dense_0 -> act -> dropout -> Dense_1 -> ... -> Dense_{L-1} (no activation at the end).

        h_0 = x,  h_{l+1} = dropout(act(h_l W_l + b_l))  for l < L - 1,  out = h_{L-1} W + b

    Without the activation the whole stack is one linear map; the
    activation is chosen by name from ``jaxnn.ops.ACTIVATIONS``.

    Attributes:
      features: output sizes of the L Dense layers, e.g. (F, C).
      activation: name of the activation between layers (relu, gelu, gelu_tanh, tanh,
        sigmoid, identity).
      dropout_rate: dropout after each hidden activation ("dropout" RNG stream).
      dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32. None: inferred
        from the input and parameters (float32).

    Shapes: x [..., D] -> [..., features[-1]]. Parameters: Dense_l/{kernel, bias}.

    Example:
      >>> mlp = MLP((64, 2), activation="gelu", dropout_rate=0.1)
      >>> params = mlp.init(jax.random.key(0), x, deterministic=True)
      >>> logits = mlp.apply(params, x, deterministic=False, rngs={"dropout": key})
    """

    features: Sequence[int]
    activation: str = "relu"
    dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool,
        dropout_rate: float | jax.Array | None = None,
    ) -> jax.Array:
        """x [..., D] -> [..., features[-1]]; ``dropout_rate`` (an array under ``jax.vmap``)
        replaces the attribute at call time; None keeps it."""
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        if len(self.features) == 0:
            raise ValueError("features must name at least one layer size; got ()")
        act = ops.get_activation(self.activation)
        if jnp.ndim(x) < 1:
            raise ValueError(
                f"x must have at least rank 1 ([..., D]); got shape {jnp.shape(x)} (a scalar)"
            )
        # Rows flattened to [M, D]: on XLA:CPU a rank-3 Dense's backward (the kernel gradient
        # contracting B and T) is compiled with transposing elementwise fusions; a B=64, T=256
        # feed-forward layer's forward + backward takes about 1.8x longer than on the flat rows
        # (benchmarks/dense_layout.py). Row-major flattening keeps the dropout draws the same
        # (tests/nn/test_mlp.py).
        leading = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x
        for i, width in enumerate(self.features):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=f"Dense_{i}")(x)
            if i < len(self.features) - 1:
                x = act(x)
                x = Dropout(self.dropout_rate)(x, deterministic=deterministic, rate=rate)
        return x.reshape(*leading, x.shape[-1])
