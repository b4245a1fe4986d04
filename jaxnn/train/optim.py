"""Optimizers from the config: Adam / AdamW / SGD with momentum, weight decay, clipping, schedule.

Everything is an Optax chain of named transforms (no hand-rolled optimizer):

    adam   = chain(clip_by_global_norm(c), scale_by_adam(b1, b2, eps),              scale(-lr_t))
    adamw  = chain(clip_by_global_norm(c), scale_by_adam(b1, b2, eps),
                   add_decayed_weights(lambda, mask),                                 scale(-lr_t))
    sgd    = chain(clip_by_global_norm(c), trace(momentum),                          scale(-lr_t))

Weight decay (study guide §3) comes in the two forms the field uses (`weight_decay_mode`):

- ``l2``: the guide's formula, Loss_total = Loss_task + lambda * sum_i w_i^2, added to the loss
  by the train step (`l2_loss`), so its gradient 2 * lambda * w flows through Adam's moments.
- ``decoupled``: AdamW (Loshchilov & Hutter 2019): w <- w - lr_t * (adam_update + lambda * w),
  outside the gradient.

Both act only on the leaves `decay_mask` marks: Dense kernels (the "weights" w). Biases,
normalization scales and biases, and embedding tables (token, hashed bigram, position) are left
alone; embedding tables are updated sparsely (jaxnn.train.sparse), and decaying every row at
every step would cost O(table size).

The learning rate lr_t: linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then a
cosine decay to ``learning_rate * end_lr_fraction`` at ``total_steps`` ("cosine"), or constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.train.config import weight_decay_mode

__all__ = ["decay_mask", "l2_loss", "make_optimizer", "make_schedule"]


def make_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """lr_t for step t (see module docstring); ``total_steps`` = epochs * steps per epoch."""
    peak = float(optim["learning_rate"])
    warmup = int(optim["warmup_steps"])
    if optim["schedule"] == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
        )
    decay_steps = max(int(total_steps), warmup + 1)
    end_value = peak * float(optim["end_lr_fraction"])
    if warmup == 0:  # the same values; optax logs a warning for a 0-step warmup ramp
        alpha = 0.0 if peak == 0.0 else end_value / peak
        return optax.cosine_decay_schedule(init_value=peak, decay_steps=decay_steps, alpha=alpha)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=decay_steps,
        end_value=end_value,
    )


def decay_mask(params: Any) -> Any:
    """Pytree of bools like ``params``: True on Dense kernels (the leaves named "kernel")."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def l2_loss(params: Any, weight_decay: float) -> jax.Array:
    """lambda * sum of w^2 over the kernels of ``params`` (the guide's L2 term), float32 scalar."""
    mask = decay_mask(params)
    leaves = [
        jnp.sum(jnp.square(p.astype(jnp.float32)))
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))
        if m
    ]
    total = sum(leaves) if leaves else jnp.zeros((), jnp.float32)
    return weight_decay * total


def make_optimizer(
    optim: Mapping[str, Any], total_steps: int, *, clip: bool = True
) -> optax.GradientTransformation:
    """The dense Optax chain of the config's ``optim`` section (see module docstring).

    Args:
      optim: the ``config.optim`` section (validated).
      total_steps: steps of the whole run, for the cosine schedule.
      clip: False leaves out clipping (the sparse optimizer then clips dense and sparse
        gradients together, jaxnn.train.sparse).
    """
    schedule = make_schedule(optim, total_steps)
    parts: list[optax.GradientTransformation] = []
    clip_norm = float(optim["grad_clip_norm"])
    if clip and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if optim["optimizer"] in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=optim["b1"], b2=optim["b2"], eps=optim["eps"]))
    elif optim["optimizer"] == "sgd":
        if optim["momentum"] > 0:
            parts.append(optax.trace(decay=optim["momentum"], nesterov=False))
    else:  # validate_config rejects this first
        raise ValueError(f"optim.optimizer={optim['optimizer']!r}; allowed: adam, adamw, sgd")
    weight_decay = float(optim["weight_decay"])
    if weight_decay > 0 and weight_decay_mode(optim) == "decoupled":
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)
