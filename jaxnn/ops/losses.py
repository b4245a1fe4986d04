"""Losses: softmax cross-entropy for classification and the L2 penalty of weight decay.

softmax_cross_entropy(z, y) = -Σ_c q_c log softmax(z)_c,  q = (1 - ε) onehot(y) + ε / C
l2_penalty(params)          = Σ_i w_i²
Loss_total = Loss_task + λ Σ_i w_i²                              (weight decay as an L2 term)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.ops.softmax import log_softmax

__all__ = ["l2_penalty", "softmax_cross_entropy"]


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example cross-entropy between softmax(logits) and (smoothed) integer labels.

        loss = -(1 - ε) log p_y - (ε / C) Σ_c log p_c,   p = softmax(logits)

    With ε = 0 this is the negative log-likelihood -log p_y. Label smoothing (Szegedy et al.
    2016) moves ε of the target mass to the uniform distribution.

    Args:
      logits: [B, C] (or [..., C]) unnormalized scores.
      labels: int [B] (or [...]) class indices in [0, C).
      label_smoothing: ε in [0, 1] (a Python float).

    Returns:
      float32 [B] (float64 for float64 logits). A label outside [0, C) (e.g. -1 on a padding
      row) matches no class: its loss is only the smoothing term (0 when ε = 0). Labels are
      data, so this is not checked; mask such rows with example weights.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"logits must have shape [..., C]; got shape {logits.shape}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} (logits {logits.shape} without the "
            f"class axis); got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}; allowed: a float in [0, 1]")
    num_classes = logits.shape[-1]
    compute = jnp.promote_types(logits.dtype, jnp.float32)
    log_probs = log_softmax(logits.astype(compute), axis=-1)
    targets = jax.nn.one_hot(labels, num_classes, dtype=compute)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return -jnp.sum(targets * log_probs, axis=-1)


def l2_penalty(params: Any, mask: Any | Callable[[Any], Any] | None = None) -> jax.Array:
    """Σ w² over every array leaf of ``params`` selected by ``mask``.

    Args:
      params: a pytree of arrays.
      mask: None (every leaf), a pytree of bools with the structure of ``params`` or a prefix
        of it (a bool on a subtree selects all of its leaves), or a callable params -> such a
        pytree (as in optax). Typical: weight-decay only the Dense kernels, not biases or
        norm scales.

    Returns:
      float32 scalar (float64 if any selected leaf is float64); 0 when nothing is selected.
    """
    if callable(mask):
        mask = mask(params)
    if mask is None:
        selected = jax.tree.leaves(params)
    else:
        mask_leaves, mask_def = jax.tree.flatten(mask)
        try:
            subtrees = mask_def.flatten_up_to(params)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"mask must be a pytree of bools shaped like params (or a prefix of it); "
                f"mask structure {mask_def} does not match params: {error}"
            ) from None
        selected = []
        for keep, subtree in zip(mask_leaves, subtrees):
            if not isinstance(keep, (bool, np.bool_)):
                raise ValueError(f"mask leaves must be Python bools; got {keep!r}")
            if keep:
                selected.extend(jax.tree.leaves(subtree))
    total = jnp.zeros((), jnp.float32)
    for leaf in selected:
        leaf = jnp.asarray(leaf)
        leaf = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
        total = total + jnp.sum(leaf * leaf)
    return total
