"""jaxnn/train/step.py: the train step against an independent JAX/Optax transcription, sparse vs
dense tables, dropout keys, weights, BatchNorm statistics, eval sums against scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score

from jaxnn.train.distributed import shard_batch
from jaxnn.train.loop import NonFiniteLossError, Trainer, load_data


def _config(tiny_config, **overrides):
    config = tiny_config
    config.model.bigram_buckets = 0
    config.model.hidden_size = 0
    config.model.dropout = 0.0
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    config.optim.learning_rate = 0.05
    for path, value in overrides.items():
        section, key = path.split("__")
        config[section][key] = value
    return config


def _first_batch(trainer):
    index = trainer.train_batches.order(0)[0]
    return trainer.train_batches.make_batch(index)


def _reference_loss(params, batch, l2):
    """Mean pooling + linear head + weighted cross-entropy, written out independently."""
    table = params["embed"]["embedding"]
    kernel, bias = _head_kernel(params), _head_leaf(params, "bias")
    mask = batch["mask"].astype(jnp.float32)
    vectors = table[batch["tokens"]] * mask[..., None]
    pooled = vectors.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    logits = pooled @ kernel + bias
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    w = batch["weights"]
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0) + l2 * jnp.sum(kernel**2)


def _head_leaf(params, name):
    """The one leaf called ``name`` in the (single-layer) head, whatever the MLP names it."""
    leaves = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params["head"])[0]
        if getattr(path[-1], "key", None) == name
    ]
    assert len(leaves) == 1
    return leaves[0]


def _head_kernel(params):
    return _head_leaf(params, "kernel")


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 0.01), ("sgd", 0.0)]
)
def test_dense_step_equals_reference(tiny_config, optimizer, weight_decay):
    config = _config(
        tiny_config,
        optim__optimizer=optimizer,
        optim__weight_decay=weight_decay,
        optim__sparse_embeddings=False,
    )
    data = load_data(config)
    trainer = Trainer(config, data)
    state = trainer.init_state()
    params0 = jax.tree.map(np.array, state.params)
    batch = _first_batch(trainer)
    state = trainer.train_step(state, shard_batch(batch, trainer.mesh))

    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    grads = jax.grad(_reference_loss)(params0, jbatch, weight_decay)
    tx = optax.adam(0.05) if optimizer == "adam" else optax.sgd(0.05, momentum=0.9)
    updates, _ = tx.update(grads, tx.init(params0), params0)
    expected = optax.apply_updates(params0, updates)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), state.params, expected
    )
    assert int(state.step) == 1
    metrics = jax.device_get(state.metrics)
    np.testing.assert_allclose(metrics["weight"], batch["weights"].sum())
    loss0 = _reference_loss(params0, jbatch, 0.0)
    np.testing.assert_allclose(metrics["loss_sum"] / metrics["weight"], loss0, rtol=1e-5)


def test_sparse_tables_match_dense_adam_on_the_first_step_and_touch_only_batch_rows(tiny_config):
    # From zero moments, Adam leaves rows with zero gradient unchanged, so lazy (sparse) Adam and
    # dense Adam agree exactly on step 1; later they differ by design (lazy moments).
    results = {}
    for sparse in (False, True):
        config = _config(tiny_config, optim__sparse_embeddings=sparse)
        config.model.bigram_buckets = 512
        trainer = Trainer(config, load_data(config))
        state = trainer.init_state()
        before = np.array(state.params["bigram_embed"]["embedding"])
        batch = _first_batch(trainer)
        state = trainer.train_step(state, shard_batch(batch, trainer.mesh))
        results[sparse] = (jax.tree.map(np.array, state.params), before, batch)
    dense, _, _ = results[False]
    sparse, before, batch = results[True]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sparse, dense)
    # rows of the bigram table that no bigram of the batch hashes to are bit-identical
    from jaxnn.models import hashed_bigram_ids

    ids = np.asarray(hashed_bigram_ids(jnp.asarray(batch["tokens"]), 512))
    valid = batch["mask"][:, :-1] & batch["mask"][:, 1:]
    touched = np.zeros(512, bool)
    touched[ids[valid]] = True
    after = sparse["bigram_embed"]["embedding"]
    np.testing.assert_array_equal(after[~touched], before[~touched])
    assert np.all(np.any(after[touched] != before[touched], axis=1))


def test_dropout_key_is_folded_from_the_step(tiny_config):
    config = _config(tiny_config, model__dropout=0.5, optim__sparse_embeddings=False)
    trainer = Trainer(config, load_data(config))
    batch = shard_batch(_first_batch(trainer), trainer.mesh)
    a = trainer.train_step(trainer.init_state(), batch)
    b = trainer.train_step(trainer.init_state(), batch)
    # same state and batch -> bitwise the same step (same key)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    # the same batch at step 1 draws another mask: its loss differs from step 0's
    state = trainer.reset_metrics(trainer.init_state())
    state = trainer.train_step(state, batch)
    loss0 = float(state.metrics["loss_sum"])
    rng0 = np.array(state.rng)
    state = trainer.reset_metrics(state)
    state2 = state.replace(params=trainer.init_state().params)  # same params, step 1
    state2 = trainer.train_step(state2, batch)
    assert float(state2.metrics["loss_sum"]) != loss0
    np.testing.assert_array_equal(np.array(state2.rng), rng0)  # the base key never changes


def test_zero_weight_rows_do_not_change_the_step(tiny_config):
    config = _config(tiny_config, optim__sparse_embeddings=False)
    trainer = Trainer(config, load_data(config))
    batch = _first_batch(trainer)
    padded = {k: v.copy() for k, v in batch.items()}
    half = len(batch["labels"]) // 2
    padded["weights"][half:] = 0.0
    padded["labels"][half:] = (padded["labels"][half:] + 1) % trainer.num_classes
    trimmed = {k: v.copy() for k, v in batch.items()}
    trimmed["weights"][half:] = 0.0
    a = trainer.train_step(trainer.init_state(), shard_batch(padded, trainer.mesh))
    b = trainer.train_step(trainer.init_state(), shard_batch(trimmed, trainer.mesh))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a.params, b.params)
    np.testing.assert_allclose(float(a.metrics["weight"]), half)


def test_nonfinite_loss_is_recorded_with_its_step(tiny_config):
    config = _config(tiny_config, optim__sparse_embeddings=False)
    trainer = Trainer(config, load_data(config))
    state = trainer.init_state()
    batch = shard_batch(_first_batch(trainer), trainer.mesh)
    state = trainer.train_step(state, batch)
    trainer.train_summary(state)  # finite so far
    bad = jax.tree.map(lambda x: x, state.params)
    bad["embed"]["embedding"] = bad["embed"]["embedding"] * jnp.nan
    state = trainer.train_step(state.replace(params=bad), batch)
    with pytest.raises(NonFiniteLossError, match="step 1") as info:
        trainer.train_summary(state)
    assert info.value.step == 1


def test_eval_sums_equal_scikit_learn(tiny_config):
    config = _config(tiny_config, optim__sparse_embeddings=False)
    config.train.eval_batch_size = 16  # many batches and a padded last one
    data = load_data(config)
    trainer = Trainer(config, data)
    state = trainer.init_state()
    for batch in trainer.batches(0):
        state = trainer.train_step(state, batch)
    metrics = trainer.evaluate(state.variables(), data.validation)
    tokens = jnp.asarray(data.validation.tokens)
    mask = jnp.arange(tokens.shape[1]) < jnp.asarray(data.validation.lengths)[:, None]
    logits = trainer.model.apply(state.variables(), tokens, mask, train=False)
    predictions = np.asarray(jnp.argmax(logits, -1))
    labels = data.validation.labels
    cm = sk_confusion_matrix(labels, predictions, labels=range(trainer.num_classes))
    np.testing.assert_array_equal(metrics["confusion_matrix"], cm)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(predictions == labels), rtol=1e-6)
    np.testing.assert_allclose(
        metrics["macro_f1"],
        f1_score(labels, predictions, average="macro", zero_division=0),
        rtol=1e-6,
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels))
    np.testing.assert_allclose(metrics["loss"], float(ce.mean()), rtol=1e-5)
    assert metrics["num_examples"] == len(labels)


def test_batchnorm_running_statistics_update_in_the_step(tiny_config):
    config = _config(tiny_config, optim__sparse_embeddings=False)
    config.model.name = "transformer"
    config.model.embed_dim = 16
    config.model.num_heads = 2
    config.model.mlp_dim = 32
    config.model.num_layers = 1
    config.model.norm = "batch"
    trainer = Trainer(config, load_data(config))
    state = trainer.init_state()
    assert state.batch_stats, "BatchNorm must keep running statistics"
    before = jax.tree.map(np.array, state.batch_stats)
    state = trainer.train_step(state, shard_batch(_first_batch(trainer), trainer.mesh))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.batch_stats)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("sparse", [False, True])
def test_call_time_dropout_rate_equals_the_static_rate(tiny_config, sparse):
    """The step's ``dropout_rate`` array, on a model built with rate 0, draws the very masks of
    a model built with that rate (same key): hyperparameters are data."""
    from jaxnn.models import get_model
    from jaxnn.train.step import make_train_step

    config = _config(tiny_config, model__dropout=0.4, model__hidden_size=8)
    config.optim.sparse_embeddings = sparse
    data = load_data(config)
    trainer = Trainer(config, data)
    state = trainer.init_state()
    batch = {k: jnp.asarray(v) for k, v in _first_batch(trainer).items()}
    cfg0 = {**trainer.config, "model": {**trainer.config["model"], "dropout": 0.0}}
    model0 = get_model(cfg0, vocab_size=len(data.vocab), num_classes=data.num_classes)
    kw = {"sparse_embeddings": sparse}
    static = jax.jit(make_train_step(trainer.model, trainer.tx, **kw))(state, batch)
    traced = jax.jit(make_train_step(model0, trainer.tx, **kw))(state, batch, jnp.float32(0.4))
    plain = jax.jit(make_train_step(model0, trainer.tx, **kw))(state, batch)
    zero = jax.jit(make_train_step(trainer.model, trainer.tx, **kw))(state, batch, jnp.float32(0.0))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, traced.params, static.params)
    jax.tree.map(close, traced.metrics, static.metrics)
    jax.tree.map(close, zero.params, plain.params)  # a traced 0 keeps everything
    assert float(static.metrics["loss_sum"]) != float(plain.metrics["loss_sum"])


def test_sparse_step_on_distinct_rows_equals_one_slot_per_lookup(tiny_config):
    """``table_rows`` (the step differentiates the batch's distinct rows, K slots, instead of
    one slot per lookup) changes no number: params, moments and metrics equal the default's,
    with dropout; a K with unused slots (larger than the distinct rows) changes nothing."""
    from jaxnn.train import sparse as sparse_lib
    from jaxnn.train.step import make_train_step

    config = _config(tiny_config, model__dropout=0.3, model__hidden_size=8)
    config.optim.sparse_embeddings = True
    trainer = Trainer(config, load_data(config))
    batch = {k: jnp.asarray(v) for k, v in _first_batch(trainer).items()}
    features = trainer.model.apply({}, batch["tokens"], batch["mask"], method="feature_ids")
    tables = trainer.model.table_names()
    exact = tuple(sparse_lib.distinct_rows(*map(np.asarray, features[n])) for n in tables)
    assert all(0 < k < batch["tokens"].size for k in exact)
    step = jax.jit(
        make_train_step(trainer.model, trainer.tx, sparse_embeddings=True), static_argnums=3
    )
    reference = step(trainer.init_state(), batch)
    for rows in (exact, tuple(k + 5 for k in exact)):
        state = step(trainer.init_state(), batch, None, rows)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        jax.tree.map(close, state.params, reference.params)
        jax.tree.map(close, state.opt_state, reference.opt_state)
        jax.tree.map(close, state.metrics, reference.metrics)


def test_l2_weight_decay_is_read_from_the_optimizer_state(tiny_config):
    """lambda of the l2 form is the injected hyperparameter: set_hyperparams changes the step as
    the reference loss with that lambda does."""
    from jaxnn.train.optim import set_hyperparams
    from jaxnn.train.step import make_train_step

    config = _config(tiny_config, optim__weight_decay=0.0, optim__sparse_embeddings=False)
    config.optim.optimizer = "sgd"
    config.optim.momentum = 0.0
    trainer = Trainer(config, load_data(config))
    state = trainer.init_state()
    state = state.replace(opt_state=set_hyperparams(state.opt_state, weight_decay=0.03))
    batch = {k: jnp.asarray(v) for k, v in _first_batch(trainer).items()}
    step = jax.jit(make_train_step(trainer.model, trainer.tx, l2_weight_decay=True))
    new = step(state, batch)
    params0 = jax.tree.map(np.array, state.params)
    grads = jax.grad(_reference_loss)(params0, batch, 0.03)
    expected = jax.tree.map(lambda p, g: p - 0.05 * g, params0, grads)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), new.params, expected
    )
