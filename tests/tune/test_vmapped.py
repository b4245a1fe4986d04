"""jaxnn/tune/vmapped.py: K trials in one vmapped program = K separate runs = an Optax reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn.analysis.synthetic import xor_corpus
from jaxnn.data import BatchIterator, prepare
from jaxnn.ops.dropout import uniform_bits16
from jaxnn.train.config import base_config
from jaxnn.train.optim import l2_loss, make_optimizer
from jaxnn.tune.vmapped import VmappedBowTrainer, _dropout_mean_pool, shared_signature


def xor_data(neutral: int):
    """The xor corpus with ``neutral`` filler words: with many, validation holds words unseen in
    training (13 % unknown at 400), which is the point, so the unknown-word warning is off."""
    corpus = xor_corpus(num_train=96, num_validation=64, neutral=neutral, length=10, seed=1)
    return prepare(corpus, max_len=16, cache=False, unk_warn_threshold=None)


@pytest.fixture(scope="module")
def data():
    corpus = xor_corpus(num_train=96, num_validation=64, neutral=30, length=10, seed=1)
    return prepare(corpus, max_len=16, cache=False)


def config(**over):
    cfg = base_config()
    cfg.data.max_len = 16
    cfg.data.sort_pool = 0
    cfg.model.hidden_size = 8
    cfg.model.embed_dim = 6
    cfg.train.batch_size = 16
    cfg.train.num_epochs = 2
    cfg.train.eval_batch_size = 32
    cfg.optim.schedule = "constant"
    for path, value in over.items():
        section, name = path.split("__")
        cfg[section][name] = value
    return cfg


def reference_params(cfg, data, lr, wd, seed):
    """Dense training with Optax (jaxnn.train.optim) on a loss written out with jax.nn."""
    trainer = VmappedBowTrainer(cfg, data, vmap=False)  # only for init and the schedule length
    params = trainer.init(seed)
    optim = {**cfg.optim.to_dict(), "learning_rate": lr, "weight_decay": wd}
    total = trainer.steps_per_epoch * cfg.train.num_epochs
    tx = make_optimizer(optim, total)
    state = tx.init(params)
    l2 = cfg.optim.optimizer != "adamw"

    def loss_fn(p, batch):
        e = p["embed"][batch["tokens"]]  # [B, T, D]
        m = batch["mask"][..., None].astype(jnp.float32)
        h = (e * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        for i, layer in enumerate(p["head"]):
            h = h @ layer["kernel"] + layer["bias"]
            if i < len(p["head"]) - 1:
                h = jax.nn.relu(h)
        ce = optax.softmax_cross_entropy_with_integer_labels(h, batch["labels"])
        w = batch["weights"]
        loss = (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
        return loss + (l2_loss(p, wd) if l2 else 0.0)

    grad = jax.jit(jax.grad(loss_fn))
    batches = BatchIterator(
        data.train, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed
    )
    for epoch in range(cfg.train.num_epochs):
        for batch in batches.epoch(epoch):
            g = grad(params, {k: jnp.asarray(v) for k, v in batch.items()})
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    "over, lr, wd",
    [
        ({"optim__optimizer": "adam"}, 1e-2, 1e-3),  # l2 in the loss
        pytest.param(  # decoupled decay, clipping
            {"optim__optimizer": "adamw", "optim__grad_clip_norm": 0.5},
            3e-2,
            1e-2,
            marks=pytest.mark.slow,
        ),
        pytest.param(  # momentum, warmup + cosine schedule
            {"optim__optimizer": "sgd", "optim__schedule": "cosine", "optim__warmup_steps": 3},
            0.3,
            0.0,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_dense_update_matches_optax(data, over, lr, wd):
    cfg = config(optim__sparse_embeddings=False, **over)
    trainer = VmappedBowTrainer(cfg, data, vmap=True)
    out = trainer.fit({"learning_rate": [lr], "dropout": [0.0], "weight_decay": [wd]}, [3])
    assert out.failure == [None]
    ref = reference_params(cfg, data, lr, wd, 3)
    got = jax.tree.map(lambda x: x[0], out.last_params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("neutral", [30, 400])  # V < B*T (touched-mask form), V > B*T (rows)
def test_lazy_rows_equal_dense_for_plain_sgd_and_untouched_rows_stay(neutral):
    data = xor_data(neutral)
    assert (len(data.vocab) < 16 * 16) == (neutral == 30)
    over = {"optim__optimizer": "sgd", "optim__momentum": 0.0}
    hyper = {"learning_rate": [0.5], "dropout": [0.0], "weight_decay": [0.0]}
    dense = VmappedBowTrainer(config(optim__sparse_embeddings=False, **over), data).fit(hyper, [0])
    lazy = VmappedBowTrainer(config(optim__sparse_embeddings=True, **over), data).fit(hyper, [0])
    for a, b in zip(jax.tree.leaves(dense.last_params), jax.tree.leaves(lazy.last_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Adam, lazily: a row no training text uses (<unk>, id 1) keeps its initial value.
    trainer = VmappedBowTrainer(config(), data)
    out = trainer.fit({"learning_rate": [0.1], "dropout": [0.0], "weight_decay": [0.0]}, [0])
    used = np.unique(data.train.tokens[data.train.tokens > 0])
    unused = np.setdiff1d(np.arange(len(data.vocab)), used)
    assert unused.size >= 1
    init = np.asarray(trainer.init(0)["embed"])  # (eager; fit's jitted init may differ by 1 ulp)
    final = np.asarray(out.last_params["embed"][0])
    np.testing.assert_allclose(final[unused], init[unused], rtol=1e-6, atol=1e-7)
    assert np.abs(final[used] - init[used]).max() > 1e-2


@pytest.mark.slow  # ~25 s on 2 cores
def test_vmapped_group_equals_separate_runs_and_a_diverging_trial_fails_alone(data):
    cfg = config(train__num_epochs=3)
    hyper = {
        "learning_rate": [1e-2, 3e-2, 1e30],
        "dropout": [0.0, 0.4, 0.0],
        "weight_decay": [0.0, 1e-3, 0.0],
    }
    group = VmappedBowTrainer(cfg, data, vmap=True).fit(hyper, [5, 5, 5])
    alone = VmappedBowTrainer(cfg, data, vmap=False).fit(hyper, [5, 5, 5])
    assert group.failure[:2] == [None, None] and group.failure == alone.failure
    assert group.failure[2].startswith("non-finite training loss at epoch 1, step")
    assert group.history[2] == [] and group.best_epoch == alone.best_epoch
    for g, a in zip(group.history[:2], alone.history[:2]):
        assert [r["epoch"] for r in g] == [1, 2, 3]
        for rg, ra in zip(g, a):
            for key in ("train_loss", "val_loss"):
                assert rg[key] == pytest.approx(ra[key], rel=1e-5)
            assert rg["val_accuracy"] == ra["val_accuracy"]
            assert rg["val_macro_f1"] == pytest.approx(ra["val_macro_f1"], abs=1e-12)


def test_best_params_are_each_trials_params_at_its_best_epoch():
    """best_params[t] = the params after trial t's best epoch, whether that epoch is the last
    (the final selection is made while converting to the public layout) or an earlier one,
    with trials reordered (dropout first) inside the group. The schedule is constant, so a run
    of e epochs ends with the params a longer run has after epoch e."""
    data = xor_data(30)
    hyper = {
        "learning_rate": [3e-1, 1e-2, 1.0, 3.0, 0.1],
        "dropout": [0.4, 0.0, 0.0, 0.4, 0.0],
        "weight_decay": [0.0] * 5,
    }
    fits = {
        e: VmappedBowTrainer(config(train__num_epochs=e), data).fit(hyper, [0] * 5)
        for e in (1, 3, 4)
    }
    assert fits[4].best_epoch == [3, 1, 3, 1, 3]  # none improves in the last epoch of 4
    assert fits[3].best_epoch == [3, 1, 3, 1, 3]  # some do in the last epoch of 3
    for epochs in (3, 4):
        out = fits[epochs]
        for t, best in enumerate(out.best_epoch):
            want = jax.tree.map(lambda x, t=t: x[t], fits[best].last_params)
            got = jax.tree.map(lambda x, t=t: x[t], out.best_params)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_zero_sample_weights_leave_a_trial_untrained(data):
    trainer = VmappedBowTrainer(config(), data)
    weights = np.ones((2, len(data.train)), np.float32)
    weights[1] = 0.0
    out = trainer.fit(
        {"learning_rate": [0.1, 0.1], "dropout": [0.0, 0.0], "weight_decay": [0.0, 0.0]},
        [0, 0],
        sample_weights=weights,
    )
    init = trainer.init(0)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(out.last_params)):
        np.testing.assert_allclose(np.asarray(b[1]), np.asarray(a), rtol=1e-6, atol=1e-7)
    kernel = np.asarray(out.last_params["head"][0]["kernel"])
    assert not np.array_equal(kernel[0], np.asarray(init["head"][0]["kernel"]))


def test_bad_input_is_refused_before_compiling(data):
    with pytest.raises(ValueError, match=r"model\.name='transformer'"):
        VmappedBowTrainer(config(model__name="transformer", model__embed_dim=8), data)
    trainer = VmappedBowTrainer(config(), data)
    with pytest.raises(ValueError, match="dropout in"):
        trainer.fit({"learning_rate": [0.1], "dropout": [1.0], "weight_decay": [0.0]}, [0])
    with pytest.raises(ValueError, match="shape"):
        trainer.fit({"learning_rate": [0.1, 0.2], "dropout": [0.0], "weight_decay": [0.0]}, [0])
    with pytest.raises(ValueError, match="sample_weights"):
        trainer.fit(
            {"learning_rate": [0.1], "dropout": [0.0], "weight_decay": [0.0]},
            [0],
            sample_weights=np.ones((1, 3)),
        )


def test_signature_ignores_only_the_vmappable_fields():
    a = config().to_dict()
    b = config(optim__learning_rate=0.5, model__dropout=0.3, optim__weight_decay=0.1).to_dict()
    c = config(model__hidden_size=16).to_dict()
    assert shared_signature(a) == shared_signature(b) != shared_signature(c)


def numpy_dropout_pool(rows, invs, masks, bits, rates, g):
    """The formula of `_dropout_mean_pool` written out in NumPy, and its gradient for the
    cotangent g [B, K, D]: pooled[b, k] = sum over tables and real tokens of
    keep * E[k][id] * 2^16 / (2^16 - tau_k), divided by the text's real tokens."""
    tau = np.minimum(np.round(np.asarray(rates, np.float64) * 2**16), 2**16 - 1)
    scale = 2**16 / (2**16 - tau)
    b, (k, d) = bits.shape[0], rows[0].shape[1:]
    count = np.maximum(sum(m.sum(1) for m in masks), 1)
    pooled, grads = np.zeros((b, k, d)), [np.zeros(r.shape) for r in rows]
    start = 0
    for r, inv, m, gr in zip(rows, invs, masks, grads):
        for i in range(b):
            for t in np.flatnonzero(m[i]):
                for j in range(k):
                    keep = (bits[i, start + t].astype(np.int64) >= tau[j]) * scale[j]
                    pooled[i, j] += keep * r[inv[i, t], j] / count[i]
                    gr[inv[i, t], j] += keep * g[i, j] / count[i]
        start += inv.shape[1]
    return pooled, grads


def counts_of(invs, masks, sizes):
    """`_host_rows`'s counts of each table: occurrences of each slot among a text's real tokens
    over the text's real tokens in all tables, [B, U_n] (and its transpose)."""
    b = invs[0].shape[0]
    total = np.maximum(sum(m.sum(1) for m in masks), 1)
    out = []
    for inv, m, u in zip(invs, masks, sizes):
        c = np.zeros((b, u), np.float32)
        for i in range(b):
            np.add.at(c[i], inv[i][m[i]], 1.0 / total[i])
        out.append((c, np.ascontiguousarray(c.T)))
    return tuple(out)


@pytest.mark.parametrize("chunk", [1, 2, 6])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("num_dropout", [3, 2])
def test_pooled_dropout_of_trials_sharing_draws_matches_numpy(chunk, jit, num_dropout):
    """K = 3 trials over two tables of different lengths (unigrams, bigrams), a text without
    tokens, chunks that split the batch: values and gradients. All three with dropout (rates
    0, 0.3, 0.7), or the first two (0.3, 0.7) and a third without, pooled by the counts
    matmul (the formula with rate 0)."""
    rng = np.random.default_rng(0)
    b, k, d, sizes, lengths = 6, 3, 5, (7, 4), (5, 4)
    rows = tuple(rng.standard_normal((u, k, d)).astype(np.float32) for u in sizes)
    invs = tuple(rng.integers(0, u, (b, t)).astype(np.int32) for u, t in zip(sizes, lengths))
    masks = tuple(rng.random((b, t)) < 0.7 for t in lengths)
    masks[0][2], masks[1][2] = False, False  # text 2 has no tokens: pooled zeros, no NaN
    bits = uniform_bits16(jax.random.key(3), (b, sum(lengths), d))
    rates = jnp.asarray([0.0, 0.3, 0.7] if num_dropout == k else [0.3, 0.7, 0.0], jnp.float32)
    counts = None if num_dropout == k else counts_of(invs, masks, sizes)
    g = rng.standard_normal((b, k, d)).astype(np.float32)

    def objective(rows):
        pooled = _dropout_mean_pool(
            chunk, num_dropout, rows, invs, masks, counts, bits, rates[:num_dropout]
        )
        return jnp.sum(pooled * g), pooled

    fn = jax.value_and_grad(objective, has_aux=True)
    (_, pooled), grads = (jax.jit(fn) if jit else fn)(rows)
    want, want_grads = numpy_dropout_pool(rows, invs, masks, np.asarray(bits), rates, g)
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(pooled)[2] == 0)
    for got, ref in zip(grads, want_grads):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # the rate-0.7 trial drops about 70 % of the tokens' entries
    kept = np.asarray(bits).astype(np.int64) >= round(0.7 * 2**16)
    assert 0.2 < kept.mean() < 0.4


def test_pooled_dropout_refuses_inconsistent_parts():
    rows = (jnp.ones((4, 3, 2)),)
    invs, masks = (np.zeros((2, 3), np.int32),), (np.ones((2, 3), bool),)
    bits = jnp.zeros((2, 3, 2), jnp.uint16)
    with pytest.raises(ValueError, match="num_dropout=2"):  # 2 < K = 3 but no counts
        _dropout_mean_pool(1, 2, rows, invs, masks, None, bits, jnp.zeros(2))
    with pytest.raises(ValueError, match="chunk=4"):
        _dropout_mean_pool(4, 3, rows, invs, masks, None, bits, jnp.zeros(3))


@pytest.mark.parametrize("neutral", [30, 400])  # V < 256 (touched form), V > 256 (rows form)
def test_host_rows_match_a_numpy_transcription(neutral):
    """The per-batch bookkeeping: distinct rows, each token's slot, the mean as a counts matrix."""
    data = xor_data(neutral)
    trainer = VmappedBowTrainer(config(), data)
    batch = next(iter(trainer.train_batches.epoch(0)))
    tokens, mask = batch["tokens"], batch["mask"]
    (entry,) = trainer._host_rows(batch).values()
    v = len(data.vocab)
    assert ("rows" in entry) == (neutral == 400)
    if "rows" in entry:
        distinct = np.unique(tokens[mask])
        rows = entry["rows"]
        assert rows.shape[0] > distinct.size
        np.testing.assert_array_equal(rows[: distinct.size], distinct)
        assert np.all(rows[distinct.size :] == v)
        np.testing.assert_array_equal(rows[entry["inv"]][mask], tokens[mask])
        slots = rows
    else:  # touched form: the whole table
        np.testing.assert_array_equal(np.flatnonzero(entry["touched"]), np.unique(tokens[mask]))
        slots = np.arange(v)
    expected = np.zeros((tokens.shape[0], slots.shape[0]))
    for b in range(tokens.shape[0]):
        n = max(mask[b].sum(), 1)
        for t in np.flatnonzero(mask[b]):
            expected[b, np.flatnonzero(slots == tokens[b, t])[0]] += 1.0 / n
    np.testing.assert_allclose(entry["counts"], expected, rtol=1e-6)
    np.testing.assert_array_equal(entry["counts_t"], entry["counts"].T)


def test_lazy_group_in_trial_minor_layout_equals_optax_per_trial():
    """K = 3 trials (different lr, decay, seed) in one program, lazily updated [V, K, D] rows:
    each equals its own dense Optax run (plain SGD: lazy = dense)."""
    data = xor_data(400)
    cfg = config(optim__optimizer="sgd", optim__momentum=0.0)
    trainer = VmappedBowTrainer(cfg, data)
    batch = next(iter(trainer.train_batches.epoch(0)))
    assert "rows" in trainer._host_rows(batch)["embed"]  # the distinct-rows form
    lrs, wds, seeds = [0.5, 0.2, 0.8], [0.0, 1e-2, 1e-3], [0, 1, 2]
    out = trainer.fit({"learning_rate": lrs, "dropout": [0.0] * 3, "weight_decay": wds}, seeds)
    assert out.last_params["embed"].shape == (3, len(data.vocab), 6)
    for k in range(3):
        ref = reference_params(cfg, data, lrs[k], wds[k], seeds[k])
        got = jax.tree.map(lambda x, k=k: x[k], out.last_params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("seeds", [[4, 4, 4], [1, 2, 1]])  # dropout draws shared, or not
def test_dropout_trials_in_a_group_equal_their_separate_runs(data, seeds):
    cfg = config(model__hidden_size=8, model__num_hidden_layers=1)
    hyper = {
        "learning_rate": [3e-2, 1e-2, 3e-2],
        "dropout": [0.3, 0.0, 0.5],
        "weight_decay": [0.0] * 3,
    }
    group = VmappedBowTrainer(cfg, data, vmap=True).fit(hyper, seeds)
    alone = VmappedBowTrainer(cfg, data, vmap=False).fit(hyper, seeds)
    for g, a in zip(group.history, alone.history):
        assert len(g) == len(a) == 2
        for rg, ra in zip(g, a):
            for key in ("train_loss", "val_loss"):
                assert rg[key] == pytest.approx(ra[key], rel=1e-5)
            assert rg["val_accuracy"] == ra["val_accuracy"]
    for x, y in zip(jax.tree.leaves(group.last_params), jax.tree.leaves(alone.last_params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    # trials 0 and 2 (dropout 0.3, 0.5) moved differently from each other and from trial 1
    assert group.history[0][-1]["train_loss"] != group.history[2][-1]["train_loss"]
