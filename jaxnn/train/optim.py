"""Optimizers from the config: Adam / AdamW / SGD with momentum, weight decay, clipping, schedule.

Everything is an Optax chain of named transforms (no hand-rolled optimizer):

    adam   = chain(clip_by_global_norm(c), scale_by_adam(b1, b2, eps),              scale(-lr_t))
    adamw  = chain(clip_by_global_norm(c), scale_by_adam(b1, b2, eps),
                   add_decayed_weights(lambda, mask),                                 scale(-lr_t))
    sgd    = chain(clip_by_global_norm(c), trace(momentum),                          scale(-lr_t))

Hyperparameters are data: the chain is built inside ``optax.inject_hyperparams``, so the values
a tuner varies (`HYPERPARAMETERS`: learning_rate, weight_decay, b1, b2, eps, momentum,
grad_clip_norm) are float32 arrays in the optimizer state (``opt_state.hyperparams``), not
Python floats baked into the program. K trials that differ only in them are one program under
``jax.vmap`` (jaxnn.tune.trials); `set_hyperparams` writes a trial's values into a fresh state.
What changes the program's structure stays a Python decision of the config: the optimizer's
name, the weight-decay form, and whether clipping (``grad_clip_norm > 0``) and momentum
(``momentum > 0``) are on.

Weight decay comes in the two forms the field uses (`weight_decay_mode`):

- ``l2``: the L2 term in the loss, Loss_total = Loss_task + lambda * sum_i w_i^2, added to the loss
  by the train step (`l2_loss`, the one function of this form), so its gradient 2 lambda w flows
  through Adam's moments. lambda is read from ``opt_state.hyperparams["weight_decay"]``.
- ``decoupled``: AdamW (Loshchilov & Hutter 2019): w <- w - lr_t * (adam_update + lambda * w),
  outside the gradient: optax.add_decayed_weights with `decay_mask` (always in the chain in this
  mode, so lambda = 0 and lambda > 0 share one program; 0 adds exactly 0).

Both act only on the leaves `decay_mask` marks: Dense kernels (the "weights" w). Biases,
normalization scales and biases, and embedding tables (token, hashed bigram, position) are left
alone; embedding tables may be updated sparsely (jaxnn.train.sparse), and decaying every row at
every step would cost O(table size).

The learning rate lr_t = learning_rate * shape_t: ``shape_t`` (`make_schedule` at peak 1) is a
linear warmup from 0 to 1 over ``warmup_steps``, then a cosine decay to ``end_lr_fraction`` at
``total_steps`` ("cosine"), or constant; ``learning_rate`` is the injected peak.

With ``tables`` (``optim.sparse_embeddings``: the model's embedding tables, whose gradients are
`jaxnn.train.sparse.SparseRows`), the tables get the lazy counterpart of the dense optimizer
(lazy_adam / lazy_sgd, with the same injected hyperparameters) through optax.multi_transform,
and the clipping sees dense and sparse gradients together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.train import sparse as sparse_lib
from jaxnn.train.config import weight_decay_mode

__all__ = [
    "HYPERPARAMETERS",
    "decay_mask",
    "get_hyperparams",
    "l2_loss",
    "make_optimizer",
    "make_schedule",
    "set_hyperparams",
]

# The optimizer's injected hyperparameters (float32 arrays in opt_state.hyperparams).
HYPERPARAMETERS = ("learning_rate", "weight_decay", "b1", "b2", "eps", "momentum", "grad_clip_norm")


def make_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """lr_t for step t with the config's peak (see module docstring); ``total_steps`` = epochs *
    steps per epoch. ``make_schedule({**optim, "learning_rate": 1.0}, n)`` is the shape."""
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


def l2_loss(params: Any, weight_decay: float | jax.Array) -> jax.Array:
    """lambda * sum of w^2 over the kernels of ``params`` (the L2 term), float32 scalar.

    ``weight_decay`` (lambda) may be a traced array (one per trial under ``jax.vmap``); 0 gives
    exactly 0 and a zero gradient."""
    mask = decay_mask(params)
    leaves = [
        jnp.sum(jnp.square(p.astype(jnp.float32)))
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))
        if m
    ]
    total = sum(leaves) if leaves else jnp.zeros((), jnp.float32)
    return jnp.asarray(weight_decay, jnp.float32) * total


def make_optimizer(
    optim: Mapping[str, Any], total_steps: int, *, tables: Sequence[sparse_lib.TablePath] = ()
) -> optax.GradientTransformation:
    """The Optax optimizer of the config's ``optim`` section, hyperparameters injected.

    Args:
      optim: the ``config.optim`` section (validated).
      total_steps: steps of the whole run, for the schedule's shape.
      tables: the embedding tables updated lazily (``model.table_names()`` with
        ``optim.sparse_embeddings``; their gradients are `jaxnn.train.sparse.SparseRows`);
        () = every parameter dense.

    Returns:
      ``optax.inject_hyperparams`` of the chain (module docstring): ``opt_state.hyperparams``
      holds float32 scalars named `HYPERPARAMETERS`, the config's values after ``init``.
    """
    name = optim["optimizer"]
    if name not in ("adam", "adamw", "sgd"):  # validate_config rejects this first
        raise ValueError(f"optim.optimizer={name!r}; allowed: adam, adamw, sgd")
    shape = make_schedule({**optim, "learning_rate": 1.0}, total_steps)
    clip_on = float(optim["grad_clip_norm"]) > 0
    momentum_on = float(optim["momentum"]) > 0
    decoupled = weight_decay_mode(optim) == "decoupled"
    tables = tuple(tables)

    def chain(learning_rate, weight_decay, b1, b2, eps, momentum, grad_clip_norm):
        def lr(count):
            return learning_rate * shape(count)

        parts: list[optax.GradientTransformation] = []
        if name in ("adam", "adamw"):
            parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
        elif momentum_on:
            parts.append(optax.trace(decay=momentum, nesterov=False))
        if decoupled:
            parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
        parts.append(optax.scale_by_learning_rate(lr))
        tx = optax.chain(*parts)
        if tables:
            if name == "sgd":
                lazy = sparse_lib.lazy_sgd(lr, momentum=momentum if momentum_on else 0.0)
            else:
                lazy = sparse_lib.lazy_adam(lr, b1=b1, b2=b2, eps=eps)
            tx = optax.multi_transform(
                {"dense": tx, "sparse": lazy}, sparse_lib.sparse_labels(tables)
            )
            clip = sparse_lib.clip_by_global_norm
        else:
            clip = optax.clip_by_global_norm
        return optax.chain(clip(grad_clip_norm), tx) if clip_on else tx

    values = {h: float(optim[h]) for h in HYPERPARAMETERS}
    return optax.inject_hyperparams(chain, hyperparam_dtype=jnp.float32)(**values)


def get_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """The injected hyperparameters of a `make_optimizer` state: {name: float32 array}."""
    return dict(_injected(opt_state).hyperparams)


def set_hyperparams(opt_state: Any, **values: float | jax.Array) -> Any:
    """A copy of ``opt_state`` with the named injected hyperparameters replaced.

    ``set_hyperparams(tx.init(params), learning_rate=1e-2, weight_decay=1e-4)``; each value is a
    float32 scalar (or, for a state with a leading trial axis, an array [K]). Unknown names
    raise, naming the allowed ones."""
    state = _injected(opt_state)
    unknown = sorted(set(values) - set(state.hyperparams))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; allowed: {sorted(state.hyperparams)}")
    hyper = dict(state.hyperparams)
    for key, value in values.items():
        hyper[key] = jnp.asarray(value, hyper[key].dtype)
    return state._replace(hyperparams=hyper)


def _injected(opt_state: Any) -> optax.InjectHyperparamsState:
    if not hasattr(opt_state, "hyperparams"):
        raise TypeError(
            f"opt_state is a {type(opt_state).__name__}, not the state of a "
            "jaxnn.train.optim.make_optimizer optimizer (optax.InjectHyperparamsState)"
        )
    return opt_state
