"""Lazy (row-sparse) optimizers for big embedding tables: a step costs O(rows touched), not O(V D).

A batch of B texts of T' features looks up N = B T' rows of a table E [V, D] (V up to 2^20
hashed bigrams). The loss depends on E only through those rows, so its gradient is zero on every
other row. A dense optimizer still reads and writes all V D entries of E and of its moments on
every step; a lazy one updates only the rows the batch touched, as PyTorch's
``Embedding(sparse=True)`` + ``torch.optim.SparseAdam`` do.

The pieces, from the gradient to the table:

1. ``sparse_gradient(ids, row_grads, mask)``: the gradient w.r.t. the looked-up rows,
   dL/d(E[ids]) [..., D], becomes the gradient of E in row-sparse form, `SparseRows`:

       indices [K] int32 = the distinct ids, sorted        (K = N by default: fixed shapes)
       values  [K, D]    = g_r = sum over lookups n with ids_n = r of dL/d(E[ids])_n

   Duplicate ids are summed (the chain rule through a gather). Masked lookups (padding) touch
   nothing. The K - (number of distinct ids) unused slots hold indices >= 2^31 - 1 - K, outside
   any table: every gather from them reads 0 and every scatter to them is dropped, so they are
   no-ops. ``SparseRows.to_dense(V)`` is the [V, D] gradient.

2. ``lazy_adam`` / ``lazy_adagrad`` / ``lazy_sgd``: optax ``GradientTransformation``s whose
   gradients are `SparseRows`. For each touched row r (t = the global step count, 1-based,
   lr_t from ``learning_rate`` at count t - 1, as optax):

       m_r <- b1 m_r + (1 - b1) g_r
       v_r <- b2 v_r + (1 - b2) g_r^2
       u_r  = m^_r / (sqrt(v^_r) + eps),   m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)   [optax]
       u_r  = sqrt(1 - b2^t) / (1 - b1^t) * m_r / (sqrt(v_r) + eps)           [eps_mode="torch"]
       E_r <- E_r - lr_t (u_r + weight_decay E_r)

   Untouched rows keep E_r, m_r, v_r unchanged: their moments do not decay (the "lazy" part;
   this is SparseAdam's semantics, and differs from dense Adam, where a row whose gradient is
   0 still moves by its old momentum). The bias correction uses the global step count t, not
   the number of times the row was touched (as SparseAdam). When every row is touched at every
   step, lazy_adam == optax.adam (and == optax.adamw with ``weight_decay``), lazy_adagrad ==
   optax.adagrad, lazy_sgd == optax.sgd. Their updates are `SparseRows` of -lr_t (...) rows.

   eps: optax.adam (like torch.optim.Adam and Kingma & Ba's Algorithm 1) adds eps to
   sqrt(v^); torch.optim.SparseAdam adds it to sqrt(v) before the bias correction (Kingma &
   Ba's "more efficient" form, their Section 2). They differ when sqrt(v) is not >> eps;
   ``eps_mode`` picks.

   Decoupled weight decay (AdamW-style, -lr_t weight_decay E_r) is applied to touched rows
   only: a row not seen for s steps is not shrunk by (1 - lr weight_decay)^s, so the decay is
   proportional to how often a row is used, not to time. Default 0 (jaxnn decays Dense kernels
   only; the L2 form of weight decay, a loss term, would make every row's gradient dense).

3. ``apply_updates(params, updates)``: like optax.apply_updates, but a `SparseRows` update is
   scattered into its table (E.at[indices].add(values)): O(K D).

From a config, `jaxnn.train.optim.make_optimizer(optim, total_steps, tables=...)` builds this
composition with the hyperparameters injected (``optax.inject_hyperparams``): the lazy
optimizers take traced learning rates, moment decays and momentum like optax's own.

Optax composition: label the table leaves "sparse" and everything else "dense"
(``sparse_labels``) and use ``optax.multi_transform({"dense": tx, "sparse": lazy_adam(...)},
sparse_labels(tables))``; the dense optimizer never sees the tables, the lazy one sees only
them. ``clip_by_global_norm`` clips dense and sparse gradients together (the norm of a
`SparseRows` is that of its dense form). `SparseEmbeddingOptimizer` bundles all of this.

In place: under ``jax.jit`` with the params and optimizer state donated, each update is a
gather of K rows of E, m, v and a scatter of K rows back into the same buffers (no copy of the
[V, D] arrays): the cost is O(N log N + K D), independent of V (see
benchmarks/sparse_embedding.py).

Example: the train step of a model with embedding tables (jaxnn.models' ``feature_ids`` /
``classify`` split; each table is ``params[name]["embedding"]`` [V, D])::

    sparse = SparseEmbeddingOptimizer(tables=("embed", "bigram_embed"),
                                      sparse_tx=lazy_adam(schedule))
    tx = optax.adam(schedule)                    # the dense params' optimizer
    opt_state = sparse.init(tx, params)          # instead of tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, key):
        features = model.apply({}, batch["tokens"], batch["mask"], method="feature_ids")
        ids = {name: i for name, (i, _) in features.items()}        # int32 [B, T']
        masks = {name: m for name, (_, m) in features.items()}      # bool  [B, T']
        dense_params = {k: v for k, v in params.items() if k not in ids}
        rows = {name: params[name]["embedding"][ids[name]] for name in ids}  # [B, T', D]

        def loss_fn(dense_params, rows):
            logits = model.apply({"params": dense_params}, rows, masks, train=True,
                                 rngs={"dropout": key}, method="classify")
            return loss(logits, batch["labels"])

        dense_grads, row_grads = jax.grad(loss_fn, argnums=(0, 1))(dense_params, rows)
        return sparse.step(tx, params, opt_state, dense_grads, ids, row_grads, masks)

``sparse.step`` is, spelled out with plain optax::

    grads = dense_grads | {name: {"embedding": sparse_gradient(ids[name], row_grads[name],
                                                                masks[name])} for name in ids}
    updates, opt_state = sparse.transform(tx).update(grads, opt_state, params)
    params = apply_updates(params, updates)

Shapes: V table rows, D embedding dim, N lookups in a batch (B T'), K slots of a `SparseRows`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.custom_batching import custom_vmap

__all__ = [
    "LazyAdagradState",
    "LazyAdamState",
    "LazySgdState",
    "SparseEmbeddingOptimizer",
    "SparseRows",
    "apply_updates",
    "clip_by_global_norm",
    "distinct_rows",
    "distinct_slots",
    "gather_rows",
    "is_sparse",
    "lazy_adagrad",
    "lazy_adam",
    "lazy_sgd",
    "row_bucket",
    "sparse_gradient",
    "sparse_labels",
    "table_gradients",
    "trial_minor_axes",
    "trial_minor_tables",
]

_INT32_MAX = int(np.iinfo(np.int32).max)
# Dropped lookups (masked) sort after every real id, at this index.
_MASKED_ID = _INT32_MAX

ScalarOrSchedule = float | jax.Array | optax.Schedule


# --------------------------------------------------------------------------------------------
# The row-sparse gradient
# --------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Rows ``indices`` of a [V, D] array; every other row is zero. A registered pytree.

    Attributes:
      indices: int32 [K], sorted ascending and distinct. Slots not in use hold indices
        >= 2^31 - 1 - K (outside any table), so they are dropped by every scatter.
      values: [K, D] the rows (0 in unused slots).

    `sparse_gradient` makes them with these properties; the optimizers and `apply_updates`
    rely on them (a hand-made SparseRows with repeated indices would lose all but one write).
    """

    indices: jax.Array
    values: jax.Array

    def to_dense(self, num_rows: int) -> jax.Array:
        """The dense [V, D] array (V = ``num_rows``); for tests and debugging: O(V D)."""
        dense = jnp.zeros((num_rows, *self.values.shape[1:]), self.values.dtype)
        return dense.at[self.indices].add(self.values, mode="drop")


def is_sparse(x: Any) -> bool:
    """True for a `SparseRows` (the ``is_leaf`` for tree maps over gradient trees)."""
    return isinstance(x, SparseRows)


def sparse_gradient(
    ids: jax.Array,
    row_grads: jax.Array,
    mask: jax.Array | None = None,
    *,
    size: int | None = None,
) -> SparseRows:
    """The gradient of a table from the gradient of its looked-up rows, duplicates summed.

    With rows = E[ids] (a gather of N = ids.size rows), dL/dE_r = sum_{n: ids_n = r} dL/drows_n.

    Args:
      ids: int [...] the looked-up row ids (any shape, e.g. [B, T']), each in [0, V).
      row_grads: [..., D] dL/d(E[ids]), leading shape equal to ``ids.shape``.
      mask: optional bool [...] like ``ids``; False drops a lookup (padding): its row is not
        touched (like ``padding_idx`` in PyTorch's sparse embedding gradient).
      size: K, the slots of the result, a Python int; default N (always enough). A smaller K
        saves work when the number of distinct ids is known to be <= K; ids beyond the K
        smallest distinct ones would be lost.

    Returns:
      SparseRows(indices int32 [K] sorted and distinct, values [K, D] in row_grads' dtype).

    Cost: a sort of N ids, a binary search of each, and a scatter-add of N rows into K:
    O(N log N + N D); no [V, D] array. On CPU the duplicates are summed in lookup order
    (deterministic, bitwise reproducible); on GPU the scatter-add's order is not fixed.
    Shapes are fixed (jit-friendly); ids >= 2^31 - 1 - K are not supported.
    """
    ids = jnp.asarray(ids)
    row_grads = jnp.asarray(row_grads)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integer row ids, got dtype {ids.dtype}")
    if row_grads.ndim != ids.ndim + 1 or row_grads.shape[:-1] != ids.shape:
        raise ValueError(
            f"row_grads must have shape ids.shape + (D,) = {ids.shape} + (D,), "
            f"got {row_grads.shape}"
        )
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != ids.shape:
            raise ValueError(f"mask must have the shape of ids {ids.shape}, got {mask.shape}")
    num = ids.size
    if size is None:
        size = num
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a Python int >= 0, got {size!r}")
    dim = row_grads.shape[-1]
    indices, slot = distinct_slots(ids, mask, size=size)
    values = jax.ops.segment_sum(
        row_grads.reshape(num, dim), slot.reshape(num), num_segments=size, mode="drop"
    )
    return SparseRows(indices=indices, values=values)


def row_bucket(count: int, limit: int | None = None, *, per_octave: int = 4) -> int:
    """A slot count K >= ``count`` from a short list, for `sparse_gradient`'s static ``size``.

    K is the smallest m * 2^e >= count with m in [per_octave, 2 per_octave) (at most
    1/per_octave of the slots unused above 2 per_octave), at least 1 and at most ``limit``
    (e.g. N, the number of lookups, which always suffices). Jitting a step per K then compiles
    only about ``per_octave`` programs per doubling of the distinct rows of a batch.
    """
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if per_octave < 1:
        raise ValueError(f"per_octave must be >= 1, got {per_octave}")
    size = max(count, 1)
    if size > 2 * per_octave:
        step = 1 << ((size // per_octave).bit_length() - 1)  # 2^e with per_octave*2^e <= size
        size = -(-size // step) * step
    return size if limit is None else min(size, int(limit))


def distinct_rows(ids: np.ndarray, mask: np.ndarray | None = None) -> int:
    """The number of distinct unmasked ids (host NumPy): the rows a batch's lookups touch."""
    ids = np.asarray(ids)
    if mask is not None:
        ids = ids[np.asarray(mask, bool)]
    return int(np.unique(ids).size)


def distinct_slots(
    ids: jax.Array, mask: jax.Array | None = None, *, size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """The distinct ids of a lookup and each lookup's slot among them (no gradient involved).

    Args:
      ids: int [...] looked-up row ids, each in [0, V); mask: optional bool like ``ids``.
      size: K, the slots (a Python int; default N = ids.size, always enough).

    Returns:
      (indices int32 [K]: the distinct unmasked ids sorted, unused slots holding increasing
      indices >= 2^31 - 1 - K (outside any table); slot int32 like ``ids``: the position of
      each lookup's id in ``indices``, K for a masked lookup). Then E[ids] equals
      ``E.at[indices].get(mode="fill")`` [K, D] gathered at ``slot`` (0 where masked), and
      dL/dE in row-sparse form is the segment sum of the lookups' gradients by ``slot``:
      `sparse_gradient`. Cost: a sort of N ids and a binary search of each.
    """
    ids = jnp.asarray(ids)
    num = ids.size
    size = num if size is None else size
    flat_ids = ids.reshape(num).astype(jnp.int32)
    if mask is not None:
        flat_ids = jnp.where(jnp.asarray(mask).reshape(num), flat_ids, _MASKED_ID)
    # The distinct ids, sorted: sort the ids alone (a one-operand sort; carrying a permutation
    # along is several times slower on CPU) and keep the first of each run of equal ids.
    sorted_ids = jnp.sort(flat_ids)
    is_first = jnp.concatenate([jnp.ones((min(num, 1),), bool), sorted_ids[1:] != sorted_ids[:-1]])
    run = jnp.cumsum(is_first.astype(jnp.int32)) - 1
    # Masked lookups (id _MASKED_ID, sorted last) are not written; unused slots keep distinct,
    # increasing, out-of-range indices.
    run = jnp.where(sorted_ids == _MASKED_ID, size, run)
    unused = (_INT32_MAX - size + 1) + jnp.arange(size, dtype=jnp.int32)
    indices = unused.at[run].set(sorted_ids, mode="drop")
    # Each lookup's slot: binary search of its id among the sorted distinct ids.
    slot = jnp.searchsorted(indices, flat_ids, method="scan").astype(jnp.int32)
    slot = jnp.where(flat_ids == _MASKED_ID, size, slot)
    return indices, slot.reshape(ids.shape)


def gather_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
    """table[indices] for the sorted distinct ``indices`` of `distinct_slots`; 0 for unused
    (out-of-range) slots."""
    return _gather(table, indices)


# The three row operations of a lazy update: gather rows, overwrite them, add to them. Indices
# are the sorted distinct ones of `distinct_slots` (or any unique sorted ones).
def _plain_gather(table, indices):
    return table.at[indices].get(
        mode="fill", fill_value=0, indices_are_sorted=True, unique_indices=True
    )


def _plain_set(table, indices, rows):
    return table.at[indices].set(
        rows.astype(table.dtype), mode="drop", indices_are_sorted=True, unique_indices=True
    )


def _plain_add(table, indices, rows):
    return table.at[indices].add(
        rows.astype(table.dtype), mode="drop", indices_are_sorted=True, unique_indices=True
    )


# --------------------------------------------------------------------------------------------
# K trials' tables stored trial-minor (jaxnn.tune.trials)
# --------------------------------------------------------------------------------------------
# Under jax.vmap over K trials whose tables are [K, V, D], a gather of U shared row indices
# reads K separate D-vectors per index, from K tables that together outgrow the CPU's caches,
# and the lazy update then works on [U, K, D] rows in K-strided pieces. Stored [V, K, D]
# (vmapped with in_axes = out_axes = 1 on the tables), the K trials' copies of a row are one
# contiguous K*D slice: one gather of U slices. jax.vmap's own rules for gather and scatter
# move the trial axis to the front, a transpose of the whole table on every step; the batching
# rule below instead works on the [V, K, D] table in place (its two swapaxes cancel the ones
# vmap inserts), through its 2-D [V, K*D] view: each row of all K trials is one row of that
# view. The numbers are the same either way; only the memory traffic changes
# (benchmarks/results/tune.md).
_TRIAL_MINOR = jax.make_user_context(default_value=False)  # part of jax.jit's cache key


@contextlib.contextmanager
def trial_minor_tables():
    """Trace the lazy row operations for K trials' tables stored trial-minor, [V, K, D].

    Inside this context (at trace time), `gather_rows`, the lazy optimizers' row updates and
    `apply_updates` of a `SparseRows` update batch a vmapped table with shared indices by
    working on the table's [V, K, D] layout: use it around ``jax.vmap(step, in_axes=axes,
    out_axes=axes)`` with ``axes = trial_minor_axes(states, tables)`` and the tables kept
    [V, K, D] between steps (as jaxnn.tune.trials.TrialGroup does). Correct in any layout;
    with the tables stored [K, V, D] it would cost two whole-table transposes per operation,
    which is why it is not the default. Reverse-mode differentiation through the row
    operations is not supported inside it (the lazy step differentiates w.r.t. gathered rows,
    never through the gather). Like `jaxnn.ops.dropout.rate_free_trials`, it is part of
    ``jax.jit``'s cache key: a jitted function is traced anew inside and outside it.
    """
    with _TRIAL_MINOR(True):
        yield


def trial_minor_axes(tree: Any, tables: Sequence[TablePath]) -> Any:
    """The vmap axes of K trials' ``tree`` (a TrainState, params, variables) stored
    trial-minor: 1 on each table leaf and on its optimizer moments (leaves whose path ends with
    a table's path: [V, K, D]), 0 on every other leaf ([K, ...])."""
    paths = _table_paths(tables)

    def axis(path, _):
        keys = tuple(_key_name(k) for k in path)
        return 1 if any(keys[-len(t) :] == t for t in paths) else 0

    return jax.tree_util.tree_map_with_path(axis, tree)


def _trial_minor(plain: Callable) -> Callable:
    """``plain(table, indices, *rows)`` with the trial-minor batching rule (see above)."""
    batched = custom_vmap(plain)

    @batched.def_vmap
    def rule(axis_size, in_batched, table, indices, *rows):
        table_batched, indices_batched, *rows_batched = in_batched
        if not table_batched or indices_batched:  # not the tuning layout: vmap's own rules
            axes = tuple(0 if b else None for b in in_batched)
            return jax.vmap(plain, in_axes=axes)(table, indices, *rows), True
        minor = [jnp.swapaxes(table, 0, 1)]  # [K, V, ...] -> [V, K, ...]
        for r, b in zip(rows, rows_batched, strict=True):  # [K, U, ...] or [U, ...]
            if b:
                minor.append(jnp.swapaxes(r, 0, 1))
            else:
                minor.append(jnp.broadcast_to(r[:, None], (r.shape[0], axis_size, *r.shape[1:])))
        # on 2-D [N, K*D] views (free reshapes): XLA:CPU gathers and scatters whole rows of a
        # 2-D array faster than [K, D] slices of a 3-D one (benchmarks/RESULTS.md, tuning)
        flat = [x.reshape(x.shape[0], math.prod(x.shape[1:])) for x in minor]
        out = plain(flat[0], indices, *flat[1:])  # [U, K*D] rows or the [V, K*D] table
        out = out.reshape(out.shape[0], *minor[0].shape[1:])
        return jnp.swapaxes(out, 0, 1), True

    return batched


_minor_gather = _trial_minor(_plain_gather)
_minor_set = _trial_minor(_plain_set)
_minor_add = _trial_minor(_plain_add)


def _gather(table: jax.Array, indices: jax.Array) -> jax.Array:
    return (_minor_gather if _TRIAL_MINOR.value else _plain_gather)(table, indices)


def _scatter_set(table: jax.Array, indices: jax.Array, rows: jax.Array) -> jax.Array:
    return (_minor_set if _TRIAL_MINOR.value else _plain_set)(table, indices, rows)


def _scatter_add(table: jax.Array, indices: jax.Array, rows: jax.Array) -> jax.Array:
    return (_minor_add if _TRIAL_MINOR.value else _plain_add)(table, indices, rows)


# --------------------------------------------------------------------------------------------
# Lazy optimizers (optax GradientTransformations over SparseRows gradients)
# --------------------------------------------------------------------------------------------
def _check_sparse_leaves(leaves: list, name: str) -> None:
    for leaf in leaves:
        if not isinstance(leaf, SparseRows):
            raise TypeError(
                f"{name} updates tables from SparseRows gradients (jaxnn.train.sparse."
                f"sparse_gradient), got a {type(leaf).__name__}; label dense parameters for "
                "another optimizer (sparse_labels + optax.multi_transform)"
            )


def _learning_rate(learning_rate: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _concrete(value: Any) -> float | None:
    """``value`` as a Python float when it is known at trace time; None when it is traced (an
    injected hyperparameter under jit, `optax.inject_hyperparams`) or a schedule."""
    if callable(value):
        return None
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    number = _concrete(value)
    if number is None:  # a schedule or a traced array: the caller's guarantee
        return
    ok = number >= 0 if allow_zero else number > 0
    if not ok:
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_decay(name: str, value: Any) -> None:
    number = _concrete(value)
    if number is not None and not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _is_zero(value: Any) -> bool:
    """True only for a value known to be 0 at trace time (a traced one may not be)."""
    return _concrete(value) == 0.0


def _log(decay: Any) -> Any:
    number = _concrete(decay)
    if number is None:
        return jnp.log(jnp.asarray(decay, jnp.float32))
    return math.log(number) if number > 0 else -math.inf


class LazyAdamState(NamedTuple):
    """count: int32 [] steps taken; mu, nu: first and second moments, like the tables."""

    count: jax.Array
    mu: Any
    nu: Any


def lazy_adam(
    learning_rate: ScalarOrSchedule,
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    *,
    weight_decay: float | jax.Array = 0.0,
    eps_mode: str = "optax",
) -> optax.GradientTransformation:
    """Lazy Adam for tables with `SparseRows` gradients (formulas in the module docstring).

    Args:
      learning_rate: lr, a float or an optax schedule of the step count.
      b1, b2: moment decay rates in [0, 1).
      eps: added to the denominator.
      weight_decay: decoupled decay of touched rows (AdamW-style); 0 = none.
      eps_mode: "optax" (eps added to sqrt(v^): optax.adam, torch.optim.Adam) or "torch"
        (eps added to sqrt(v): torch.optim.SparseAdam). Each computes the bias corrections
        1 - b^t like its reference: "optax" as optax does, in float32; "torch" accurately
        (as -expm1(t log b); torch uses float64 scalars), which matters at small t, where
        float32's 0.999 is 0.99900001.

    Returns:
      An optax GradientTransformation. ``init(tables)`` makes zero moments like the tables
      (a pytree of [V, D] arrays); ``update(grads, state, tables)`` takes a pytree of
      `SparseRows` and returns `SparseRows` updates -lr_t (u + weight_decay E) for
      `apply_updates`. ``tables`` are needed by ``update`` only when weight_decay > 0.
    """
    _check_positive("learning_rate", learning_rate)
    _check_decay("b1", b1)
    _check_decay("b2", b2)
    _check_positive("eps", eps, allow_zero=True)
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    if eps_mode not in ("optax", "torch"):
        raise ValueError(f"eps_mode must be 'optax' or 'torch', got {eps_mode!r}")

    def init_fn(params):
        return LazyAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
        )

    decays = not _is_zero(weight_decay)

    def update_fn(updates, state, params=None):
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_sparse)
        _check_sparse_leaves(leaves, "lazy_adam")
        if decays and params is None:
            raise ValueError("lazy_adam with weight_decay > 0 needs params in update()")
        mu = treedef.flatten_up_to(state.mu)
        nu = treedef.flatten_up_to(state.nu)
        tables = treedef.flatten_up_to(params) if decays else [None] * len(leaves)
        count = optax.safe_increment(state.count)
        step_size = -1.0 * _learning_rate(learning_rate, state.count)
        correction1 = 1 - b1**count  # as optax computes them
        correction2 = 1 - b2**count
        new_updates, new_mu, new_nu = [], [], []
        for grad, m, v, table in zip(leaves, mu, nu, tables):
            idx, g = grad.indices, grad.values
            m_rows = (1 - b1) * g + b1 * _gather(m, idx)
            v_rows = (1 - b2) * (g**2) + b2 * _gather(v, idx)
            if eps_mode == "optax":
                m_hat = m_rows / correction1.astype(m_rows.dtype)
                v_hat = v_rows / correction2.astype(v_rows.dtype)
                u = m_hat / (jnp.sqrt(v_hat) + eps)
            else:
                # torch computes the corrections in float64; 1 - b^t = -expm1(t log b) keeps
                # float32 accurate where 1 - b2**t (b2 = 0.999 -> 0.99900001 in float32) is not
                exact1 = -jnp.expm1(count * _log(b1))
                exact2 = -jnp.expm1(count * _log(b2))
                scale = jnp.sqrt(exact2) / exact1
                u = scale.astype(m_rows.dtype) * (m_rows / (jnp.sqrt(v_rows) + eps))
            if decays:
                u = u + weight_decay * _gather(table, idx)
            delta = jnp.asarray(step_size, dtype=u.dtype) * u
            new_updates.append(SparseRows(idx, delta))
            new_mu.append(_scatter_set(m, idx, m_rows))
            new_nu.append(_scatter_set(v, idx, v_rows))
        return (
            treedef.unflatten(new_updates),
            LazyAdamState(count, treedef.unflatten(new_mu), treedef.unflatten(new_nu)),
        )

    return optax.GradientTransformation(init_fn, update_fn)


class LazyAdagradState(NamedTuple):
    """count: int32 [] steps taken; sum_of_squares: accumulated g^2, like the tables."""

    count: jax.Array
    sum_of_squares: Any


def lazy_adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> optax.GradientTransformation:
    """Lazy Adagrad (optax.adagrad's formula) for tables with `SparseRows` gradients.

    For each touched row r:  s_r <- s_r + g_r^2;  E_r <- E_r - lr_t g_r / sqrt(s_r + eps)
    (0 where s_r = 0). Adagrad is naturally lazy: an untouched row's accumulator would not
    change anyway, so with the same initial value this equals optax.adagrad exactly, touched
    or not. (torch.optim.Adagrad differs: eps outside the sqrt, initial accumulator 0.)

    Args:
      learning_rate: lr, a float or an optax schedule of the step count.
      initial_accumulator_value: s at the start, >= 0.
      eps: inside the square root.
    """
    _check_positive("learning_rate", learning_rate)
    _check_positive("initial_accumulator_value", initial_accumulator_value, allow_zero=True)
    _check_positive("eps", eps, allow_zero=True)

    def init_fn(params):
        return LazyAdagradState(
            count=jnp.zeros([], jnp.int32),
            sum_of_squares=optax.tree.full_like(params, initial_accumulator_value),
        )

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_sparse)
        _check_sparse_leaves(leaves, "lazy_adagrad")
        sums = treedef.flatten_up_to(state.sum_of_squares)
        step_size = -1.0 * _learning_rate(learning_rate, state.count)
        new_updates, new_sums = [], []
        for grad, s in zip(leaves, sums):
            idx, g = grad.indices, grad.values
            s_rows = g * g + _gather(s, idx)
            inv = jnp.where(s_rows > 0, jax.lax.rsqrt(s_rows + eps), 0.0)
            u = inv * g
            new_updates.append(SparseRows(idx, jnp.asarray(step_size, dtype=u.dtype) * u))
            new_sums.append(_scatter_set(s, idx, s_rows))
        return (
            treedef.unflatten(new_updates),
            LazyAdagradState(optax.safe_increment(state.count), treedef.unflatten(new_sums)),
        )

    return optax.GradientTransformation(init_fn, update_fn)


class LazySgdState(NamedTuple):
    """count: int32 [] steps taken; trace: momentum buffers like the tables (None without)."""

    count: jax.Array
    trace: Any


def lazy_sgd(
    learning_rate: ScalarOrSchedule, momentum: float | jax.Array = 0.0
) -> optax.GradientTransformation:
    """Lazy SGD with momentum for tables with `SparseRows` gradients.

    For each touched row r:  b_r <- momentum b_r + g_r;  E_r <- E_r - lr_t b_r. Untouched rows
    keep their momentum buffer and do not move. momentum = 0: plain SGD, which is exactly
    optax.sgd (untouched rows have g = 0); momentum > 0 equals optax.sgd(lr, momentum) when
    every row is touched at every step.
    """
    _check_positive("learning_rate", learning_rate)
    _check_decay("momentum", momentum)
    with_momentum = not _is_zero(momentum)  # a traced momentum keeps its buffers

    def init_fn(params):
        trace = optax.tree.zeros_like(params) if with_momentum else None
        return LazySgdState(count=jnp.zeros([], jnp.int32), trace=trace)

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_sparse)
        _check_sparse_leaves(leaves, "lazy_sgd")
        step_size = -1.0 * _learning_rate(learning_rate, state.count)
        traces = treedef.flatten_up_to(state.trace) if with_momentum else [None] * len(leaves)
        new_updates, new_traces = [], []
        for grad, buf in zip(leaves, traces):
            idx, g = grad.indices, grad.values
            if with_momentum:
                g = g + momentum * _gather(buf, idx)
                new_traces.append(_scatter_set(buf, idx, g))
            new_updates.append(SparseRows(idx, jnp.asarray(step_size, dtype=g.dtype) * g))
        trace = treedef.unflatten(new_traces) if with_momentum else None
        return (
            treedef.unflatten(new_updates),
            LazySgdState(optax.safe_increment(state.count), trace),
        )

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Composition with dense optax
# --------------------------------------------------------------------------------------------
def clip_by_global_norm(max_norm: float | jax.Array) -> optax.GradientTransformation:
    """optax.clip_by_global_norm over a gradient tree holding arrays and `SparseRows`.

    ||g|| = sqrt(sum over dense leaves of sum g^2 + sum over SparseRows of sum values^2)
    (the norm of the dense gradient: `sparse_gradient` sums duplicates first); if
    ||g|| >= max_norm every gradient is scaled by max_norm / ||g||, as optax does.
    """
    _check_positive("max_norm", max_norm)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        arrays = [
            leaf.values if is_sparse(leaf) else leaf
            for leaf in jax.tree.leaves(updates, is_leaf=is_sparse)
        ]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in arrays))
        trigger = norm < max_norm

        def clip(x):
            return jax.lax.select(trigger, x, (x / norm.astype(x.dtype)) * max_norm)

        def clip_leaf(leaf):
            if is_sparse(leaf):
                return SparseRows(leaf.indices, clip(leaf.values))
            return clip(leaf)

        return jax.tree.map(clip_leaf, updates, is_leaf=is_sparse), state

    return optax.GradientTransformation(init_fn, update_fn)


TablePath = str | tuple[str, ...]


def _key_name(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def _table_paths(tables: Sequence[TablePath]) -> tuple[tuple[str, ...], ...]:
    if isinstance(tables, str):
        raise TypeError(f"tables must be a sequence of names or paths, got the string {tables!r}")
    paths = []
    for table in tables:
        if isinstance(table, str):
            paths.append((table, "embedding"))
        elif isinstance(table, tuple) and table and all(isinstance(k, str) for k in table):
            paths.append(table)
        else:
            raise TypeError(f"a table is a module name or a tuple path of str, got {table!r}")
    return tuple(paths)


def sparse_labels(tables: Sequence[TablePath]) -> Callable[[Any], Any]:
    """``param_labels`` for optax.multi_transform: "sparse" on the tables, "dense" elsewhere.

    Args:
      tables: each a module name ``name`` (the leaf ``params[name]["embedding"]``, as flax's
        nn.Embed names it) or a full path tuple of keys, e.g. ``("encoder", "embed", "embedding")``.

    Returns:
      ``labels(tree)`` for a params tree or a gradient tree (a `SparseRows` is one leaf).
    """
    paths = set(_table_paths(tables))

    def labels(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "sparse" if tuple(_key_name(k) for k in path) in paths else "dense",
            tree,
            is_leaf=is_sparse,
        )

    return labels


def apply_updates(params: Any, updates: Any) -> Any:
    """optax.apply_updates, with `SparseRows` updates scattered into their tables.

    Dense leaf: p + u (in p's dtype). SparseRows leaf: p.at[indices].add(values): only the K
    listed rows change, O(K D), in place under jit when params are donated.
    """

    def apply(p, u):
        if p is None:
            return None
        if is_sparse(u):
            return _scatter_add(p, u.indices, u.values)
        return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

    return jax.tree.map(apply, params, updates, is_leaf=lambda x: x is None)


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """A copy of the nested dict ``tree`` with ``tree[path] = value``."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set_path(out.get(path[0], {}), path[1:], value)
    return out


def table_gradients(
    tables: Sequence[TablePath],
    dense_grads: Mapping[str, Any],
    ids: Mapping[TablePath, jax.Array],
    row_grads: Mapping[TablePath, jax.Array],
    masks: Mapping[TablePath, jax.Array] | None = None,
    sizes: Mapping[TablePath, int] | None = None,
) -> dict:
    """The full gradient tree: ``dense_grads`` plus `sparse_gradient` (a `SparseRows`) at each
    table's path (``params[name]["embedding"]`` for a name).

    Args:
      tables: the tables' names or full paths; the keys of ``ids``, ``row_grads``, ``masks``.
      dense_grads: gradients of the other parameters.
      ids: {table: int [B, T'] looked-up row ids}.
      row_grads: {table: [B, T', D] dL/d(table[ids])}.
      masks: optional {table: bool [B, T']}; False = padding, the row is not touched.
      sizes: optional {table: K}, Python ints >= the table's distinct unmasked ids in this
        batch (`distinct_rows`, rounded up by `row_bucket`): the `SparseRows` then has K slots
        and the lazy optimizer gathers and scatters K rows instead of N = B T'. Default N.
    """
    for name, tree in (("ids", ids), ("row_grads", row_grads), ("masks", masks)):
        if not (isinstance(tree, Mapping) or (name == "masks" and tree is None)):
            allowed = "a dict {table: array}" + (" or None" if name == "masks" else "")
            raise TypeError(f"{name} must be {allowed}, got {type(tree).__name__}")
    missing = [t for t in tables if t not in ids or t not in row_grads]
    if missing:
        raise ValueError(
            f"ids and row_grads need an entry for every table {tuple(tables)}; missing "
            f"{missing} (ids has {list(ids)}, row_grads has {list(row_grads)})"
        )
    grads = dict(dense_grads)
    for table, path in zip(tables, _table_paths(tables)):
        mask = None if masks is None else masks.get(table)
        size = None if sizes is None else sizes.get(table)
        grads = _set_path(
            grads, path, sparse_gradient(ids[table], row_grads[table], mask, size=size)
        )
    return grads


@dataclasses.dataclass(frozen=True)
class SparseEmbeddingOptimizer:
    """Dense optax for most parameters, a lazy optimizer for the embedding tables.

    Attributes:
      tables: the tables' names (``params[name]["embedding"]``) or full paths; the keys of the
        ``ids`` / ``row_grads`` / ``masks`` dicts given to `step` are these entries.
      sparse_tx: the lazy optimizer of the tables (`lazy_adam`, `lazy_adagrad`, `lazy_sgd`).
      clip_norm: > 0 clips the global norm of all gradients, dense and sparse together
        (`clip_by_global_norm`) before either optimizer; 0 = off. (A clip inside the dense
        ``tx`` then only sees dense gradients whose norm is already <= clip_norm: a no-op.)
    """

    tables: tuple[TablePath, ...]
    sparse_tx: optax.GradientTransformation
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        _table_paths(self.tables)
        if not self.tables:
            raise ValueError("tables must name at least one embedding table, got ()")
        _check_positive("clip_norm", self.clip_norm, allow_zero=True)

    def transform(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The whole optimizer: [clip] -> multi_transform({"dense": tx, "sparse": sparse_tx})."""
        parts = optax.multi_transform(
            {"dense": tx, "sparse": self.sparse_tx}, sparse_labels(self.tables)
        )
        if self.clip_norm > 0:
            return optax.chain(clip_by_global_norm(self.clip_norm), parts)
        return parts

    def init(self, tx: optax.GradientTransformation, params: Any) -> Any:
        """The optimizer state of ``params`` (use instead of ``tx.init(params)``)."""
        return self.transform(tx).init(params)

    def gradients(
        self,
        dense_grads: Mapping[str, Any],
        ids: Mapping[TablePath, jax.Array],
        row_grads: Mapping[TablePath, jax.Array],
        masks: Mapping[TablePath, jax.Array] | None = None,
    ) -> dict:
        """The full gradient tree: ``dense_grads`` plus a `SparseRows` at each table's path."""
        return table_gradients(self.tables, dense_grads, ids, row_grads, masks)

    def step(
        self,
        tx: optax.GradientTransformation,
        params: Any,
        opt_state: Any,
        dense_grads: Mapping[str, Any],
        ids: Mapping[TablePath, jax.Array],
        row_grads: Mapping[TablePath, jax.Array],
        masks: Mapping[TablePath, jax.Array] | None = None,
    ) -> tuple[Any, Any]:
        """One optimizer step: returns (new params, new opt_state).

        Args:
          tx: the dense optimizer given to `init`.
          params: all parameters, tables included.
          opt_state: from `init` (or the previous step).
          dense_grads: gradients of the parameters other than the tables (params without
            the tables' entries).
          ids: {table: int [B, T'] looked-up row ids}.
          row_grads: {table: [B, T', D] dL/d(table[ids])}.
          masks: optional {table: bool [B, T']}; False = padding, the row is not touched.
        """
        grads = self.gradients(dense_grads, ids, row_grads, masks)
        updates, opt_state = self.transform(tx).update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state
