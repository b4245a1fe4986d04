"""The jitted steps: `train_step(state, batch) -> state` and the deterministic `eval_step`.

Train step t, on a batch of B examples with labels y_b and weights w_b (0 on padding rows):

    key_t   = fold_in(state.rng, t)                      dropout masks, never reused; a resumed
                                                         run draws the same ones
    z_b     = model(tokens_b, mask_b, train=True)        [B, C] logits
    L_task  = sum_b w_b * CE(z_b, y_b) / max(sum_b w_b, 1),   CE(z, y) = -log softmax(z)_y
    L       = L_task + lambda * sum_i w_i^2               only with weight_decay_mode "l2"
    g       = dL / dparams;  then Optax (clipping, Adam/AdamW/SGD, schedule: jaxnn.train.optim)

The hyperparameters are arrays: lambda, the learning rate and the optimizer's constants are read
from ``state.opt_state.hyperparams`` (``optax.inject_hyperparams``), the dropout rate is an
optional call-time argument; so ``jax.vmap`` of this very step trains K trials at once.

With ``model.dtype = "float16"`` the state carries a dynamic loss scale s: the step
differentiates s * L, divides the gradients by s, and skips the update (params and optimizer
state unchanged, s halved) when they are not finite (jaxnn.train.precision).

BatchNorm running statistics are updated from the batch in the same step. With
``sparse_embeddings`` the embedding tables never get a dense gradient: the step differentiates
with respect to the looked-up rows table[ids] [B, T', D] and hands (ids, row gradients) to the
lazy sparse Adam of jaxnn.train.sparse, so a step costs O(rows touched), not O(table).

The step also adds to ``state.metrics`` (weighted loss sum, examples, correct predictions) and
records the first step whose loss is not finite, all on the device: the loop reads them only
when it logs (no host sync per step).

Eval: the confusion matrix (rows = true class, columns = predicted) and the loss sum are
accumulated on the device over every batch; accuracy and macro F1 come from the final matrix
(never an average of per-batch F1s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxnn.metrics import confusion_matrix
from jaxnn.ops import softmax_cross_entropy
from jaxnn.train import sparse as sparse_lib
from jaxnn.train.optim import get_hyperparams, l2_loss
from jaxnn.train.precision import all_finite
from jaxnn.train.state import NO_NONFINITE, TrainState

__all__ = ["make_eval_step", "make_train_step", "zero_eval_metrics"]

Batch = dict[str, jax.Array]


def _task_loss(logits, labels, weights):
    per_example = softmax_cross_entropy(logits, labels)
    loss_sum = jnp.sum(per_example * weights)
    weight = jnp.sum(weights)
    return loss_sum / jnp.maximum(weight, 1.0), loss_sum, weight


def _update_metrics(state: TrainState, loss, loss_sum, weight, logits, labels, weights):
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
    first_bad = state.metrics["nonfinite_step"]
    first_bad = jnp.where(
        (first_bad == NO_NONFINITE) & ~jnp.isfinite(loss), state.step.astype(jnp.int32), first_bad
    )
    return {
        "loss_sum": state.metrics["loss_sum"] + loss_sum,
        "weight": state.metrics["weight"] + weight,
        "correct": state.metrics["correct"] + correct,
        "nonfinite_step": first_bad,
    }


def _scaled(state: TrainState, loss: jax.Array) -> jax.Array:
    """s * loss under a dynamic loss scale, else the loss itself."""
    return loss if state.loss_scale is None else state.loss_scale.scale_loss(loss)


def _unscale(state: TrainState, grads: Any) -> tuple[Any, jax.Array | None]:
    """(grads / s, all finite) under a dynamic loss scale, else (grads, None)."""
    if state.loss_scale is None:
        return grads, None
    grads = state.loss_scale.unscale(grads)
    return grads, all_finite(grads)


def _finish(state: TrainState, finite, update: Callable, new_vars) -> TrainState:
    """The next state, ``update() -> (params, opt_state)``; with a loss scale, a step whose
    gradients are not finite keeps the old params and optimizer state (skipped: `lax.cond`,
    so a big sparse table is not copied) and the scale adapts."""
    loss_scale = state.loss_scale
    if loss_scale is None:
        params, opt_state = update()
    else:
        params, opt_state = jax.lax.cond(finite, update, lambda: (state.params, state.opt_state))
        loss_scale = loss_scale.adjust(finite)
    return state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_vars.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
        loss_scale=loss_scale,
    )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    l2_weight_decay: bool = False,
    sparse_embeddings: bool = False,
) -> Callable[..., TrainState]:
    """The (unjitted) train step ``step(state, batch, dropout_rate=None) -> state`` of ``model``.

    Args:
      model: a jaxnn.models classifier.
      tx: the optimizer of `jaxnn.train.optim.make_optimizer` (hyperparameters injected: the
        learning rate, weight decay, ... are arrays in ``state.opt_state.hyperparams``); with
        ``sparse_embeddings`` made with ``tables=model.table_names()``.
      l2_weight_decay: add the l2 form's lambda * sum w^2 to the loss (`l2_loss`), lambda read
        from ``state.opt_state.hyperparams["weight_decay"]`` (weight_decay_mode "l2").
      sparse_embeddings: the embedding tables get no dense gradient: the step hands their
        `jaxnn.train.sparse.SparseRows` gradients to ``tx`` (lazy updates).

    With ``sparse_embeddings`` the step also takes ``table_rows``: None = one gradient slot per
    lookup (N = B T'; no host work); or a tuple of Python ints, one per table in
    ``model.table_names()`` order, each >= the batch's distinct unmasked ids of that table
    (`jaxnn.train.sparse.distinct_rows`, rounded by `row_bucket`; a static argument under
    jit). The step then gathers those K distinct rows once, hands them with each lookup's slot
    to the model's ``classify_rows`` (or, for a model without it, expands them to the lookups
    for ``classify``) and differentiates w.r.t. the K rows, so the lazy optimizer reads and
    writes K rows of the table and its moments, not N: the same numbers, less traffic.

    The returned step's ``dropout_rate``: None uses the model's own rate (its ``dropout_rate``
    attribute, from the config); a float32 scalar array is passed to the model at call time
    (``model.apply(..., dropout_rate=rate)``), so that K trials with different rates are one
    program under ``jax.vmap`` (jaxnn.tune.trials). Everything a tuner varies is then an
    array: ``jax.vmap(step, in_axes=(0, None, 0))(states, batch, rates)`` trains K trials.
    """

    def _l2(state, params):
        if not l2_weight_decay:
            return 0.0
        return l2_loss(params, get_hyperparams(state.opt_state)["weight_decay"])

    def _rate(dropout_rate):
        return {} if dropout_rate is None else {"dropout_rate": dropout_rate}

    def dense_step(state: TrainState, batch: Batch, dropout_rate=None) -> TrainState:
        key = jax.random.fold_in(state.rng, state.step)
        labels, weights = batch["labels"], batch["weights"]

        def loss_fn(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, new_vars = model.apply(
                variables,
                batch["tokens"],
                batch["mask"],
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
                **_rate(dropout_rate),
            )
            task, loss_sum, weight = _task_loss(logits, labels, weights)
            total = task + _l2(state, params)
            return _scaled(state, total), (task, loss_sum, weight, logits, new_vars)

        grads, (task, loss_sum, weight, logits, new_vars) = jax.grad(loss_fn, has_aux=True)(
            state.params
        )
        grads, finite = _unscale(state, grads)

        def update():
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        return _finish(state, finite, update, new_vars).replace(
            metrics=_update_metrics(state, task, loss_sum, weight, logits, labels, weights),
        )

    def sparse_step(
        state: TrainState, batch: Batch, dropout_rate=None, table_rows=None
    ) -> TrainState:
        key = jax.random.fold_in(state.rng, state.step)
        labels, weights = batch["labels"], batch["weights"]
        features = model.apply({}, batch["tokens"], batch["mask"], method="feature_ids")
        tables = tuple(features)
        dense_params = {k: v for k, v in state.params.items() if k not in tables}
        ids = {name: features[name][0] for name in tables}
        masks = {name: features[name][1] for name in tables}
        if table_rows is None:  # one slot per lookup: rows are the looked-up rows [B, T', D]
            rows = {name: state.params[name]["embedding"][ids[name]] for name in tables}
            inputs, method = lambda rows: (rows, masks), "classify"
        else:  # the distinct rows [K, D] (K = table_rows), gathered once, and each lookup's slot
            distinct = {
                name: sparse_lib.distinct_slots(ids[name], masks[name], size=size)
                for name, size in zip(tables, table_rows, strict=True)
            }
            rows = {
                name: sparse_lib.gather_rows(state.params[name]["embedding"], distinct[name][0])
                for name in tables
            }
            slots = {name: distinct[name][1] for name in tables}
            if callable(getattr(model, "classify_rows", None)):  # pools from the rows itself
                inputs, method = lambda rows: (rows, slots, masks), "classify_rows"
            else:  # expand the rows to the lookups [B, T', D]
                inputs, method = (
                    lambda rows: (
                        {n: r.at[slots[n]].get(mode="fill", fill_value=0) for n, r in rows.items()},
                        masks,
                    ),
                    "classify",
                )

        def loss_fn(dense_params, rows):
            variables = {"params": dense_params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, new_vars = model.apply(
                variables,
                *inputs(rows),
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
                method=method,
                **_rate(dropout_rate),
            )
            task, loss_sum, weight = _task_loss(logits, labels, weights)
            total = task + _l2(state, dense_params)
            return _scaled(state, total), (task, loss_sum, weight, logits, new_vars)

        (dense_grads, row_grads), (task, loss_sum, weight, logits, new_vars) = jax.grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(dense_params, rows)
        (dense_grads, row_grads), finite = _unscale(state, (dense_grads, row_grads))

        def update():
            if table_rows is None:
                grads = sparse_lib.table_gradients(tables, dense_grads, ids, row_grads, masks)
            else:  # the gradient of the distinct rows is the table's, row-sparse
                grads = dict(dense_grads) | {
                    n: {"embedding": sparse_lib.SparseRows(distinct[n][0], row_grads[n])}
                    for n in tables
                }
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return sparse_lib.apply_updates(state.params, updates), opt_state

        return _finish(state, finite, update, new_vars).replace(
            metrics=_update_metrics(state, task, loss_sum, weight, logits, labels, weights),
        )

    return sparse_step if sparse_embeddings else dense_step


def zero_eval_metrics(num_classes: int) -> dict[str, jax.Array]:
    """Empty eval sums: confusion matrix float32 [C, C], loss sum, examples."""
    return {
        "confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
        "loss_sum": jnp.zeros((), jnp.float32),
        "weight": jnp.zeros((), jnp.float32),
    }


def make_eval_step(
    model: nn.Module, num_classes: int
) -> Callable[[dict[str, Any], dict[str, jax.Array], Batch], dict[str, jax.Array]]:
    """``eval_step(variables, sums, batch) -> sums``: deterministic (no dropout, BatchNorm uses
    its running statistics); adds the batch's confusion matrix and loss to ``sums``."""

    def eval_step(variables, sums, batch):
        logits = model.apply(variables, batch["tokens"], batch["mask"], train=False)
        labels, weights = batch["labels"], batch["weights"]
        per_example = softmax_cross_entropy(logits, labels)
        predictions = jnp.argmax(logits, axis=-1)
        cm = confusion_matrix(labels, predictions, num_classes, weights=weights)
        return {
            "confusion": sums["confusion"] + cm.astype(jnp.float32),
            "loss_sum": sums["loss_sum"] + jnp.sum(per_example * weights),
            "weight": sums["weight"] + jnp.sum(weights),
        }

    return eval_step
