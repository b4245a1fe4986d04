"""Tests for jaxnn/train/sparse.py against independent references.

References: NumPy (np.add.at) for the duplicate-summed row gradient; optax.adam / adamw /
adagrad / sgd with dense gradients when every row is touched; a NumPy float64 transcription of
torch.optim.SparseAdam (torch/optim/_functional.py, sparse_adam) for partial touching with
duplicates; torch.optim.SparseAdam itself when torch is importable; optax.clip_by_global_norm
on the dense gradient; XLA's compiled memory analysis for the in-place (donated) update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn.train import sparse
from jaxnn.train.sparse import (
    SparseEmbeddingOptimizer,
    SparseRows,
    apply_updates,
    lazy_adagrad,
    lazy_adam,
    lazy_sgd,
    sparse_gradient,
    sparse_labels,
)

V, D = 23, 5

# one compilation per shape, shared by the tests (eager mode is tested once, separately)
_sparse_gradient = jax.jit(sparse_gradient, static_argnames="size")
_to_dense = jax.jit(SparseRows.to_dense, static_argnums=1)


def _lazy_step(tx):
    """A jitted lazy update + apply of one table from (ids, row_grads, mask)."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(table, state, ids, row_grads, mask):
        updates, state = tx.update(sparse_gradient(ids, row_grads, mask), state, table)
        return apply_updates(table, updates), state

    return step


def _batch(rng, shape=(3, 8), num_rows=V, dim=D, low=0):
    ids = rng.integers(low, num_rows, shape).astype(np.int32)
    row_grads = rng.standard_normal((*shape, dim)).astype(np.float32)
    return ids, row_grads


def _np_dense_grad(ids, row_grads, mask=None, num_rows=V):
    """dL/dE in float64: np.add.at sums the duplicates."""
    ids = np.asarray(ids).reshape(-1)
    row_grads = np.asarray(row_grads, np.float64).reshape(ids.size, -1)
    keep = np.ones(ids.size, bool) if mask is None else np.asarray(mask).reshape(-1)
    dense = np.zeros((num_rows, row_grads.shape[1]))
    np.add.at(dense, ids[keep], row_grads[keep])
    return dense, np.unique(ids[keep])


def _touch_all_ids(rng, num_rows=V):
    """Every row exactly once, shuffled, as [num_rows, 1] ids (no duplicates: exact sums)."""
    return rng.permutation(num_rows).astype(np.int32).reshape(num_rows, 1)


# ---------------------------------------------------------------------------------------------
# sparse_gradient
# ---------------------------------------------------------------------------------------------
class TestSparseGradient:
    @pytest.mark.parametrize(
        ("jit", "masked"),
        [(True, False), (True, True), (False, True)],
        ids=["jit", "jit-mask", "eager-mask"],
    )
    def test_sums_duplicates_like_numpy(self, jit, masked):
        rng = np.random.default_rng(0)
        ids, row_grads = _batch(rng, (4, 9), num_rows=7)  # 36 lookups of 7 rows: many repeats
        mask = rng.random((4, 9)) < 0.7 if masked else None
        fn = _sparse_gradient if jit else sparse_gradient
        sg = fn(ids, row_grads, mask)
        dense, touched = _np_dense_grad(ids, row_grads, mask, num_rows=7)
        k = len(touched)
        assert sg.indices.shape == (36,) and sg.values.shape == (36, D)
        np.testing.assert_array_equal(np.asarray(sg.indices[:k]), touched)
        np.testing.assert_allclose(np.asarray(sg.values[:k]), dense[touched], rtol=1e-5, atol=1e-6)
        # unused slots: zero values, distinct increasing indices outside any table
        pad = np.asarray(sg.indices[k:])
        assert np.all(pad >= np.iinfo(np.int32).max - 36 + 1)
        assert np.all(np.diff(np.asarray(sg.indices)) > 0)
        np.testing.assert_array_equal(np.asarray(sg.values[k:]), 0)
        np.testing.assert_allclose(np.asarray(_to_dense(sg, 7)), dense, rtol=1e-5, atol=1e-6)

    def test_is_the_gradient_of_the_gather(self):
        # autodiff of E[ids] gives the dense table gradient; the sparse form must equal it
        rng = np.random.default_rng(1)
        ids, weights = _batch(rng, (5, 6))
        table = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)

        def loss(rows):
            return jnp.sum(jnp.tanh(rows) * weights)

        @jax.jit
        def both(table):
            dense = jax.grad(lambda t: loss(t[ids]))(table)
            return dense, sparse_gradient(ids, jax.grad(loss)(table[ids]))

        dense, sg = both(table)
        np.testing.assert_allclose(np.asarray(_to_dense(sg, V)), np.asarray(dense), rtol=1e-6)

    def test_size_and_all_masked(self):
        rng = np.random.default_rng(2)
        ids, row_grads = _batch(rng, (2, 10), num_rows=4)
        sg = _sparse_gradient(ids, row_grads, size=4)  # at most 4 distinct ids
        dense, touched = _np_dense_grad(ids, row_grads, num_rows=4)
        np.testing.assert_array_equal(np.asarray(sg.indices[: len(touched)]), touched)
        np.testing.assert_allclose(np.asarray(_to_dense(sg, 4)), dense, rtol=1e-5, atol=1e-6)
        small = _sparse_gradient(ids, row_grads, size=2)  # too few slots: the 2 smallest ids
        np.testing.assert_array_equal(np.asarray(small.indices), touched[:2])
        np.testing.assert_allclose(np.asarray(small.values), dense[touched[:2]], rtol=1e-5)
        empty = _sparse_gradient(ids, row_grads, np.zeros((2, 10), bool))
        assert np.all(np.asarray(empty.indices) >= np.iinfo(np.int32).max - 20 + 1)
        np.testing.assert_array_equal(np.asarray(_to_dense(empty, 4)), 0)

    def test_is_a_pytree(self):
        sg = _sparse_gradient(np.array([1, 1, 0]), np.ones((3, 2), np.float32))
        leaves, treedef = jax.tree.flatten(sg)
        assert len(leaves) == 2
        assert isinstance(jax.tree.unflatten(treedef, leaves), SparseRows)
        doubled = jax.jit(lambda s: jax.tree.map(lambda x: x * 2, s))(sg)
        np.testing.assert_array_equal(np.asarray(doubled.values[:2]), [[2, 2], [4, 4]])

    def test_bad_arguments(self):
        ids = np.zeros((2, 3), np.int32)
        with pytest.raises(ValueError, match="row_grads must have shape"):
            sparse_gradient(ids, np.zeros((2, 4, 5), np.float32))
        with pytest.raises(TypeError, match="ids must be integer"):
            sparse_gradient(ids.astype(np.float32), np.zeros((2, 3, 5), np.float32))
        with pytest.raises(ValueError, match="mask must have the shape"):
            sparse_gradient(ids, np.zeros((2, 3, 5), np.float32), np.ones(6, bool))
        with pytest.raises(ValueError, match="size"):
            sparse_gradient(ids, np.zeros((2, 3, 5), np.float32), size=-1)


class TestApplyUpdates:
    def test_scatters_only_listed_rows(self):
        rng = np.random.default_rng(3)
        table = rng.standard_normal((V, D)).astype(np.float32)
        ids, row_grads = _batch(rng, (2, 4))
        update = _sparse_gradient(ids, row_grads)  # has unused (padding) slots
        params = {"t": jnp.asarray(table), "b": jnp.ones(3)}
        new = jax.jit(apply_updates)(params, {"t": update, "b": jnp.full(3, 0.5)})
        dense, touched = _np_dense_grad(ids, row_grads)
        np.testing.assert_allclose(np.asarray(new["t"]), table + dense, rtol=1e-6, atol=1e-6)
        untouched = np.setdiff1d(np.arange(V), touched)
        np.testing.assert_array_equal(np.asarray(new["t"])[untouched], table[untouched])
        np.testing.assert_array_equal(np.asarray(new["b"]), 1.5)


# ---------------------------------------------------------------------------------------------
# lazy optimizers == optax when every row is touched
# ---------------------------------------------------------------------------------------------
def _run_both(lazy_tx, dense_tx, steps=6, seed=4):
    """Every row touched once per step; returns the lazy and the optax tables and states."""
    rng = np.random.default_rng(seed)
    table0 = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)

    @jax.jit
    def lazy_step(table, state, ids, row_grads):
        updates, state = lazy_tx.update(sparse_gradient(ids, row_grads), state, table)
        return apply_updates(table, updates), state

    @jax.jit
    def dense_step(table, state, ids, row_grads):
        grads = jnp.zeros_like(table).at[ids[:, 0]].set(row_grads[:, 0])
        updates, state = dense_tx.update(grads, state, table)
        return optax.apply_updates(table, updates), state

    lazy = (table0, lazy_tx.init(table0))
    dense = (table0, dense_tx.init(table0))
    for _ in range(steps):
        ids = _touch_all_ids(rng)
        row_grads = rng.standard_normal((V, 1, D)).astype(np.float32)
        lazy = lazy_step(*lazy, ids, row_grads)
        dense = dense_step(*dense, ids, row_grads)
    return lazy, dense


def _close(a, b, rtol=1e-6, atol=1e-7):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


class TestEqualsOptaxWhenAllRowsTouched:
    def test_adam(self):
        (table, state), (ref_table, ref_state) = _run_both(lazy_adam(1e-2), optax.adam(1e-2))
        _close(table, ref_table)
        _close(state.mu, ref_state[0].mu)
        _close(state.nu, ref_state[0].nu)
        assert int(state.count) == int(ref_state[0].count) == 6

    def test_adam_with_schedule_and_hyperparameters(self):
        schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 2, 6)
        (table, _), (ref, _) = _run_both(
            lazy_adam(schedule, b1=0.8, b2=0.99, eps=1e-6), optax.adam(schedule, 0.8, 0.99, 1e-6)
        )
        _close(table, ref)

    def test_adamw_decoupled_weight_decay(self):
        (table, _), (ref, _) = _run_both(
            lazy_adam(1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)
        )
        _close(table, ref)

    def test_adagrad(self):
        (table, state), (ref, ref_state) = _run_both(lazy_adagrad(0.1), optax.adagrad(0.1))
        _close(table, ref)
        _close(state.sum_of_squares, ref_state[0].sum_of_squares)

    def test_sgd_momentum(self):
        (table, _), (ref, _) = _run_both(lazy_sgd(0.05, momentum=0.9), optax.sgd(0.05, 0.9))
        _close(table, ref)

    def test_torch_eps_mode_differs_from_optax(self):
        # eps_mode="torch" is a different formula: with tiny gradients the difference shows
        rng = np.random.default_rng(5)
        ids = np.arange(4, dtype=np.int32)
        row_grads = 1e-8 * rng.standard_normal((4, 2)).astype(np.float32)
        outs = []
        for mode in ("optax", "torch"):
            tx = lazy_adam(1.0, eps_mode=mode)
            table = jnp.zeros((4, 2))
            new, _ = _lazy_step(tx)(table, tx.init(table), ids, row_grads, np.ones(4, bool))
            outs.append(np.asarray(new))
        assert np.max(np.abs(outs[0] - outs[1])) > 1e-3


class TestLazySemantics:
    @pytest.mark.parametrize("which", ["adagrad", "sgd"])
    def test_adagrad_and_plain_sgd_equal_optax_with_partial_touching(self, which):
        # untouched rows have g = 0: Adagrad's and plain SGD's dense updates leave them alone,
        # so the lazy versions equal optax exactly even when few rows are touched
        rng = np.random.default_rng(6)
        table0 = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
        if which == "adagrad":
            lazy_tx, dense_tx = lazy_adagrad(0.1), optax.adagrad(0.1)
        else:
            lazy_tx, dense_tx = lazy_sgd(0.1), optax.sgd(0.1)

        @jax.jit
        def dense_step(table, state, ids, row_grads):
            grads = jnp.zeros_like(table).at[ids].add(row_grads)
            updates, state = dense_tx.update(grads, state, table)
            return optax.apply_updates(table, updates), state

        lazy_step = _lazy_step(lazy_tx)
        lazy = (table0 + 0, lazy_tx.init(table0))
        dense = (table0, dense_tx.init(table0))
        for _ in range(4):
            ids, row_grads = _batch(rng, (2, 3))
            lazy = lazy_step(*lazy, ids, row_grads, np.ones((2, 3), bool))
            dense = dense_step(*dense, ids, row_grads)
        _close(lazy[0], dense[0], rtol=1e-5, atol=1e-6)

    def test_untouched_rows_and_moments_do_not_change(self):
        rng = np.random.default_rng(7)
        table = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
        tx = lazy_adam(0.1)
        ids, row_grads = _batch(rng, (2, 5))
        mask = rng.random((2, 5)) < 0.6
        new, state = _lazy_step(tx)(table + 0, tx.init(table), ids, row_grads, mask)
        _, touched = _np_dense_grad(ids, row_grads, mask)
        untouched = np.setdiff1d(np.arange(V), touched)
        np.testing.assert_array_equal(np.asarray(new)[untouched], np.asarray(table)[untouched])
        np.testing.assert_array_equal(np.asarray(state.mu)[untouched], 0)
        np.testing.assert_array_equal(np.asarray(state.nu)[untouched], 0)
        assert np.all(np.asarray(state.nu)[touched] > 0)


# ---------------------------------------------------------------------------------------------
# lazy_adam(eps_mode="torch") == torch.optim.SparseAdam
# ---------------------------------------------------------------------------------------------
def _np_sparse_adam(table, batches, lr, b1=0.9, b2=0.999, eps=1e-8):
    """NumPy float64 transcription of torch.optim.SparseAdam (torch/optim/_functional.py)."""
    param = np.asarray(table, np.float64).copy()
    exp_avg = np.zeros_like(param)
    exp_avg_sq = np.zeros_like(param)
    for step, (ids, row_grads, mask) in enumerate(batches, start=1):
        dense, touched = _np_dense_grad(ids, row_grads, mask, num_rows=param.shape[0])
        if touched.size == 0:  # SparseAdam skips an empty gradient (its step still counts)
            continue
        grad = dense[touched]  # grad.coalesce(): distinct indices, duplicates summed
        old_m, old_v = exp_avg[touched], exp_avg_sq[touched]
        m_update = (grad - old_m) * (1 - b1)
        v_update = (grad**2 - old_v) * (1 - b2)
        exp_avg[touched] += m_update
        exp_avg_sq[touched] += v_update
        numer = m_update + old_m
        denom = np.sqrt(v_update + old_v) + eps
        step_size = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        param[touched] += -step_size * numer / denom
    return param, exp_avg, exp_avg_sq


def _partial_batches(seed, steps=7, shape=(4, 6), num_rows=V):
    """Batches touching a few rows each, with duplicates, padding id 0 masked; one empty."""
    rng = np.random.default_rng(seed)
    batches = []
    for step in range(steps):
        ids = rng.integers(0, num_rows // 2, shape).astype(np.int32)  # half the rows: repeats
        ids[:, -2:] = 0  # padding
        row_grads = rng.standard_normal((*shape, D)).astype(np.float32)
        mask = ids != 0
        if step == 3:
            mask = np.zeros(shape, bool)  # a batch of padding only
        batches.append((ids, row_grads, mask))
    return batches


def _run_lazy(tx, table, batches):
    step = _lazy_step(tx)
    table = jnp.asarray(table)
    state = tx.init(table)
    for ids, row_grads, mask in batches:
        table, state = step(table, state, ids, row_grads, mask)
    return table, state


class TestEqualsSparseAdam:
    def test_numpy_transcription(self):
        lr = 0.3  # large steps: the rows move far, differences would show
        rng = np.random.default_rng(8)
        table = rng.standard_normal((V, D)).astype(np.float32)
        batches = _partial_batches(9)
        ours, state = _run_lazy(lazy_adam(lr, eps_mode="torch"), table, batches)
        ref, ref_m, ref_v = _np_sparse_adam(table, batches, lr)
        _close(ours, ref, rtol=2e-6, atol=2e-6)
        _close(state.mu, ref_m, rtol=2e-6, atol=1e-7)
        _close(state.nu, ref_v, rtol=2e-6, atol=1e-7)
        assert int(state.count) == len(batches)
        assert np.all(np.asarray(ours)[V // 2 :] == table[V // 2 :])  # rows never touched

    def test_torch_sparse_adam(self):
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(10)
        table = rng.standard_normal((V, D)).astype(np.float32)
        batches = _partial_batches(11)
        lr, b1, b2, eps = 0.05, 0.8, 0.99, 1e-6
        weight = torch.nn.Parameter(torch.from_numpy(table.copy()))
        opt = torch.optim.SparseAdam([weight], lr=lr, betas=(b1, b2), eps=eps)
        for ids, row_grads, mask in batches:
            opt.zero_grad()
            ids_t = torch.from_numpy(ids.astype(np.int64))
            if not mask.any():  # all padding: every lookup dropped
                ids_t = torch.zeros_like(ids_t)
            rows = torch.nn.functional.embedding(ids_t, weight, padding_idx=0, sparse=True)
            (rows * torch.from_numpy(row_grads)).sum().backward()  # dL/drows = row_grads
            opt.step()
        ours, _ = _run_lazy(lazy_adam(lr, b1, b2, eps, eps_mode="torch"), table, batches)
        _close(ours, weight.detach().numpy(), rtol=1e-5, atol=1e-6)
        ref, _, _ = _np_sparse_adam(table, batches, lr, b1, b2, eps)
        _close(weight.detach().numpy(), ref, rtol=1e-5, atol=1e-6)  # the transcription is right


# ---------------------------------------------------------------------------------------------
# Composition with optax: multi_transform, clipping, the train-step helper
# ---------------------------------------------------------------------------------------------
def _model_params(rng):
    return {
        "embed": {"embedding": jnp.asarray(rng.standard_normal((V, D)), jnp.float32)},
        "head": {
            "kernel": jnp.asarray(rng.standard_normal((D, 3)), jnp.float32),
            "bias": jnp.zeros(3, jnp.float32),
        },
    }


def _loss(dense_params, rows, mask, labels):
    pooled = jnp.sum(rows * mask[..., None], 1) / jnp.maximum(jnp.sum(mask, 1, keepdims=True), 1)
    logits = pooled @ dense_params["head"]["kernel"] + dense_params["head"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _full_loss(params, ids, mask, labels):
    return _loss(params, params["embed"]["embedding"][ids], mask, labels)


def _np_lazy_adam(table, state, grad_dense, touched, lr, step, b1=0.9, b2=0.999, eps=1e-8):
    """One lazy Adam step in NumPy float64, optax's eps placement, on the touched rows."""
    m, v = state
    m[touched] = b1 * m[touched] + (1 - b1) * grad_dense[touched]
    v[touched] = b2 * v[touched] + (1 - b2) * grad_dense[touched] ** 2
    m_hat = m[touched] / (1 - b1**step)
    v_hat = v[touched] / (1 - b2**step)
    table[touched] -= lr * m_hat / (np.sqrt(v_hat) + eps)


class TestComposition:
    def test_train_step_matches_reference(self):
        clip_norm = 0.05  # small enough to clip at every step
        rng = np.random.default_rng(12)
        params = _model_params(rng)
        lr = 0.05
        opt = SparseEmbeddingOptimizer(("embed",), lazy_adam(lr), clip_norm=clip_norm)
        tx = optax.adam(lr)

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def train_step(params, opt_state, ids, mask, labels):
            dense_params = {k: v for k, v in params.items() if k != "embed"}
            rows = params["embed"]["embedding"][ids]
            dense_grads, row_grads = jax.grad(_loss, argnums=(0, 1))(
                dense_params, rows, mask, labels
            )
            return opt.step(
                tx,
                params,
                opt_state,
                dense_grads,
                {"embed": ids},
                {"embed": row_grads},
                {"embed": mask},
            )

        # reference: full autodiff gradient (dense table gradient), optax.clip_by_global_norm,
        # optax.adam on the head, a NumPy lazy Adam on the rows the unmasked ids touch
        ref_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        ref_table_state = (np.zeros((V, D)), np.zeros((V, D)))
        ref_head_state = tx.init(params["head"])
        clip = optax.clip_by_global_norm(clip_norm)

        @jax.jit
        def reference(params, head_state, ids, mask, labels):
            grads = jax.grad(_full_loss)(params, ids, mask, labels)
            norm = optax.tree.norm(grads)
            grads, _ = clip.update(grads, clip.init(grads))
            head_updates, head_state = tx.update(grads["head"], head_state)
            return grads["embed"]["embedding"], head_updates, head_state, norm

        opt_state = opt.init(tx, params)
        for step in range(1, 4):
            ids = rng.integers(0, V, (4, 6)).astype(np.int32)
            mask = rng.random((4, 6)) < 0.8
            labels = rng.integers(0, 3, 4).astype(np.int32)
            f32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), ref_params)
            table_grad, head_updates, ref_head_state, norm = reference(
                f32, ref_head_state, ids, mask, labels
            )
            assert norm > clip_norm  # the clip acts
            ref_params["head"] = jax.tree.map(
                lambda p, u: p + np.asarray(u, np.float64), ref_params["head"], head_updates
            )
            touched = np.unique(ids[mask])
            _np_lazy_adam(
                ref_params["embed"]["embedding"],
                ref_table_state,
                np.asarray(table_grad, np.float64),
                touched,
                lr,
                step,
            )
            params, opt_state = train_step(params, opt_state, ids, mask, labels)
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
                np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
                b[...] = np.asarray(a)  # keep the reference on our float32 trajectory

    def test_multi_transform_labels(self):
        rng = np.random.default_rng(13)
        params = _model_params(rng)
        labels = sparse_labels(["embed"])(params)
        assert labels == {
            "embed": {"embedding": "sparse"},
            "head": {"kernel": "dense", "bias": "dense"},
        }
        grads = {
            "embed": {"embedding": sparse_gradient(np.array([2, 2]), np.ones((2, D)))},
            "head": jax.tree.map(jnp.ones_like, params["head"]),
        }
        assert sparse_labels([("embed", "embedding")])(grads) == labels
        tx = optax.multi_transform({"dense": optax.sgd(1.0), "sparse": lazy_sgd(1.0)}, labels)
        updates, _ = tx.update(grads, tx.init(params), params)
        new = apply_updates(params, updates)
        expected = np.asarray(params["embed"]["embedding"]).copy()
        expected[2] -= 2.0
        np.testing.assert_allclose(np.asarray(new["embed"]["embedding"]), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(new["head"]["bias"]), -1.0)

    def test_a_dense_gradient_for_a_sparse_table_is_refused(self):
        tx = lazy_adam(0.1)
        table = jnp.zeros((4, 2))
        with pytest.raises(TypeError, match="SparseRows"):
            tx.update(jnp.ones((4, 2)), tx.init(table), table)

    def test_injected_hyperparameters_equal_python_floats(self):
        """optax.inject_hyperparams(lazy_adam / lazy_sgd): traced learning rate, b1, b2, eps,
        momentum under jit give the same steps as the same Python floats."""
        rng = np.random.default_rng(0)
        table = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
        ids = jnp.asarray([[0, 2, 2, 5]])
        for plain, injected in (
            (
                lazy_adam(0.05, b1=0.8, b2=0.99, eps=1e-6),
                optax.inject_hyperparams(lazy_adam)(0.05, b1=0.8, b2=0.99, eps=1e-6),
            ),
            (lazy_sgd(0.05, momentum=0.5), optax.inject_hyperparams(lazy_sgd)(0.05, momentum=0.5)),
        ):
            a, b = table, table
            sa, sb = plain.init(a), injected.init(b)
            update_a = jax.jit(plain.update)
            update_b = jax.jit(injected.update)
            for _ in range(3):
                g = sparse_gradient(ids, jnp.asarray(rng.normal(size=(1, 4, 3)), jnp.float32))
                u, sa = update_a(g, sa, a)
                a = apply_updates(a, u)
                u, sb = update_b(g, sb, b)
                b = apply_updates(b, u)
                _close(a, b, rtol=1e-6, atol=1e-7)

    @pytest.mark.parametrize(
        ("name", "kind"), [("adam", sparse.LazyAdamState), ("sgd", sparse.LazySgdState)]
    )
    def test_make_optimizer_gives_the_tables_lazy_states(self, name, kind):
        from jaxnn.train.config import base_config
        from jaxnn.train.optim import make_optimizer

        optim = {**base_config().optim.to_dict(), "grad_clip_norm": 1.0, "optimizer": name}
        params = {"embed": {"embedding": jnp.zeros((3, 2))}, "dense": {"kernel": jnp.ones((2, 2))}}
        state = make_optimizer(optim, 10, tables=("embed",)).init(params)
        leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
        assert any(isinstance(x, kind) for x in leaves)
        assert float(state.hyperparams["grad_clip_norm"]) == 1.0

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="eps_mode"):
            lazy_adam(1e-3, eps_mode="keras")
        with pytest.raises(ValueError, match="b1"):
            lazy_adam(1e-3, b1=1.0)
        with pytest.raises(ValueError, match="learning_rate"):
            lazy_adam(0.0)
        with pytest.raises(ValueError, match="momentum"):
            lazy_sgd(0.1, momentum=-0.5)
        with pytest.raises(TypeError, match="tables"):
            SparseEmbeddingOptimizer("embed", lazy_adam(1e-3))
        opt = SparseEmbeddingOptimizer(("embed",), lazy_adam(1e-3))
        ids, row_grads = np.zeros(2, np.int32), np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError, match="masks must be a dict"):
            opt.gradients({}, {"embed": ids}, {"embed": row_grads}, jnp.int32(3))
        with pytest.raises(ValueError, match="missing"):
            opt.gradients({}, {"other": np.zeros(2, np.int32)}, {"other": np.zeros((2, 3))})


class TestInPlace:
    def test_donated_update_does_not_copy_the_table(self):
        # XLA's memory analysis of the compiled step: with donation the table and both moments
        # alias the outputs and the scratch memory is a small fraction of one table
        num_rows, dim = 2**15, 32
        table_bytes = num_rows * dim * 4
        tx = lazy_adam(1e-3)
        table = jnp.zeros((num_rows, dim))
        ids = jnp.zeros((8, 64), jnp.int32)
        row_grads = jnp.zeros((8, 64, dim))

        def step(table, state, ids, row_grads):
            updates, state = tx.update(sparse_gradient(ids, row_grads), state, table)
            return apply_updates(table, updates), state

        def analysis(donate):
            lowered = jax.jit(step, donate_argnums=donate).lower(
                table, tx.init(table), ids, row_grads
            )
            return lowered.compile().memory_analysis()

        donated = analysis((0, 1))
        if donated is None:
            pytest.skip("no memory analysis on this backend")
        assert donated.alias_size_in_bytes >= 3 * table_bytes
        assert donated.temp_size_in_bytes < table_bytes / 4
        # the check can fail: without donation the same step copies all three arrays
        assert analysis(()).alias_size_in_bytes == 0


def test_row_bucket_covers_the_count_with_few_sizes():
    from jaxnn.train.sparse import row_bucket

    sizes = {row_bucket(c) for c in range(1, 5000)}
    for c in range(0, 5000):
        k = row_bucket(c)
        assert k >= c and (c <= 8 or k <= c * 1.25), (c, k)
    assert len(sizes) < 60  # about 4 per doubling, not one per count
    assert row_bucket(20000, 16384) == 16384
    with pytest.raises(ValueError, match="count"):
        row_bucket(-1)


def test_distinct_slots_rebuild_the_lookup():
    from jaxnn.train.sparse import distinct_rows, distinct_slots

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, size=(4, 9))
    mask = rng.random((4, 9)) < 0.8
    k = distinct_rows(ids, mask)
    assert k == np.unique(ids[mask]).size
    indices, slot = distinct_slots(jnp.asarray(ids), jnp.asarray(mask), size=k + 2)
    indices, slot = np.asarray(indices), np.asarray(slot)
    np.testing.assert_array_equal(indices[:k], np.unique(ids[mask]))
    assert np.all(indices[k:] >= np.iinfo(np.int32).max - (k + 2))
    np.testing.assert_array_equal(indices[slot[mask]], ids[mask])
    assert np.all(slot[~mask] == k + 2)


# -- K trials' tables stored trial-minor ([V, K, D]; jaxnn.tune.trials) ----------------------
def _trial_update(tx):
    """One trial's lazy update + apply from shared (ids, mask) and its own row gradients."""

    def update(table, state, ids, row_grads, mask):
        updates, state = tx.update(sparse_gradient(ids, row_grads, mask), state, table)
        return apply_updates(table, updates), state

    return update


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: lazy_adam(optax.linear_schedule(0.1, 0.01, 5), weight_decay=0.01),
        lambda: lazy_adagrad(0.1),
        lambda: lazy_sgd(0.1, momentum=0.9),
    ],
    ids=["adam", "adagrad", "sgd_momentum"],
)
def test_trial_minor_tables_give_the_numbers_of_vmap_without_whole_table_copies(make_tx):
    """K trials vmapped with their tables and moments stored [V, K, D] (in/out axes 1, traced
    under ``trial_minor_tables``) end bitwise where the same trials vmapped [K, V, D] end; the
    compiled step copies no array of the tables' size (vmap's own rule would transpose each
    table on every operation). Also when the indices differ per trial (vmap's own rule)."""
    k, num_rows = 3, 41
    tx = make_tx()
    rng = np.random.default_rng(0)
    tables = jnp.asarray(rng.standard_normal((k, num_rows, D)).astype(np.float32))
    state = jax.vmap(tx.init)(tables)
    update = _trial_update(tx)
    plain = jax.jit(jax.vmap(update, in_axes=(0, 0, None, 0, None)))
    axes = sparse.trial_minor_axes((tables, state), ["embed"])
    # only leaves whose path ends in a table path are tables: a bare array is not one
    assert jax.tree.leaves(axes) == [0] * len(jax.tree.leaves(axes))
    table_axes = (1, jax.tree.map(lambda x: 1 if x.ndim == 3 else 0, state))

    def minor(table, state, ids, row_grads, mask):
        with sparse.trial_minor_tables():
            return jax.vmap(update, in_axes=(*table_axes, None, 0, None), out_axes=table_axes)(
                table, state, ids, row_grads, mask
            )

    minor = jax.jit(minor, donate_argnums=(0, 1))  # in place, as the tuner's step
    to_minor = lambda tree, axes: jax.tree.map(lambda x, a: jnp.moveaxis(x, 0, a), tree, axes)
    m_tables, m_state = to_minor((tables, state), table_axes)
    for step in range(4):
        ids, row_grads = _batch(rng, shape=(4, 6), num_rows=num_rows)
        row_grads = np.stack([row_grads * (j + 1) for j in range(k)])
        mask = rng.random(ids.shape) < 0.8
        tables, state = plain(tables, state, ids, row_grads, mask)
        m_tables, m_state = minor(m_tables, m_state, ids, row_grads, mask)
        back = jax.tree.map(lambda x, a: jnp.moveaxis(x, a, 0), (m_tables, m_state), table_axes)
        for a, b in zip(jax.tree.leaves((tables, state)), jax.tree.leaves(back), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {step}")
    hlo = minor.lower(m_tables, m_state, ids, row_grads, mask).compile().as_text()
    # no array in the trials-first layout, and no copy of a trial-minor table (nor of its 2-D
    # [V, K*D] view, which the row operations gather from and scatter into: a free reshape)
    assert f"f32[{k},{num_rows},{D}]" not in hlo
    copies = [
        line
        for line in hlo.splitlines()
        if (f"f32[{num_rows},{k},{D}]" in line or f"f32[{num_rows},{k * D}]" in line)
        and (" copy(" in line or " transpose(" in line)
    ]
    assert not copies, copies
    # the rows move as whole rows of the 2-D view, not as [K, D] slices of the 3-D table
    assert f"slice_sizes={{1,{k},{D}}}" not in hlo  # gathers
    scatters = [line for line in hlo.splitlines() if " scatter(" in line]
    assert scatters and not [x for x in scatters if f"f32[{num_rows},{k},{D}]" in x], scatters
    # indices per trial: vmap's own batching, the same numbers
    ids_k = np.stack([_batch(rng, shape=(4, 6), num_rows=num_rows)[0] for _ in range(k)])

    def minor_own(table, state, ids, row_grads, mask):
        with sparse.trial_minor_tables():
            return jax.vmap(update, in_axes=(*table_axes, 0, 0, None), out_axes=table_axes)(
                table, state, ids, row_grads, mask
            )

    got = jax.jit(minor_own)(m_tables, m_state, ids_k, row_grads, mask)
    want = jax.jit(jax.vmap(update, in_axes=(0, 0, 0, 0, None)))(
        tables, state, ids_k, row_grads, mask
    )
    got = jax.tree.map(lambda x, a: jnp.moveaxis(x, a, 0), got, table_axes)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_trial_minor_tables_are_part_of_the_jit_cache_key():
    """A gather jitted without the context inside it is traced again when called inside it
    (and once only): the program inside reads the [V, K, D] table without transposing it."""
    k, num_rows = 3, 41
    table = jnp.arange(num_rows * k * D, dtype=jnp.float32).reshape(num_rows, k, D)
    indices = jnp.asarray([2, 5, 40], jnp.int32)
    traces = []

    def rows(table, indices):
        traces.append(1)
        return jax.vmap(sparse.gather_rows, in_axes=(1, None))(table, indices)

    jitted = jax.jit(rows)
    outside = jitted(table, indices)
    with sparse.trial_minor_tables():
        inside = jitted(table, indices)
        jitted(table, indices)
        hlo = jitted.lower(table, indices).compile().as_text()
    assert len(traces) == 2
    np.testing.assert_array_equal(inside, outside)
    np.testing.assert_array_equal(inside, np.moveaxis(np.asarray(table), 1, 0)[:, [2, 5, 40]])
    assert f"f32[{k},{num_rows},{D}]" not in hlo  # no trials-first copy of the table


def test_trial_minor_axes_mark_the_tables_and_their_moments():
    params = {
        "embed": {"embedding": jnp.zeros((2, 7, 3))},
        "head": {"kernel": jnp.zeros((2, 3, 4))},
    }
    tx = sparse.SparseEmbeddingOptimizer(tables=("embed",), sparse_tx=lazy_adam(0.1)).transform(
        optax.adam(0.1)
    )
    state = jax.vmap(tx.init)(params)
    axes = sparse.trial_minor_axes({"params": params, "opt_state": state}, ["embed"])
    assert axes["params"] == {"embed": {"embedding": 1}, "head": {"kernel": 0}}
    flat = jax.tree_util.tree_flatten_with_path(axes["opt_state"])[0]
    marked = sorted(jax.tree_util.keystr(p) for p, a in flat if a == 1)
    assert len(marked) == 2 and all("mu" in m or "nu" in m for m in marked), marked
    assert all("embed" in m for m in marked)
