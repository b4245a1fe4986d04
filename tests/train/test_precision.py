"""jaxnn/train/precision.py: the dynamic loss scale against a plain-Python transcription of its
rule, the float16 step skipping non-finite updates, and the bfloat16 policy (parameters,
logits and loss float32; matmuls bfloat16)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.models import BowClassifier, TransformerClassifier
from jaxnn.train.distributed import shard_batch
from jaxnn.train.loop import Trainer, load_data
from jaxnn.train.precision import DynamicLossScale, all_finite, compute_dtype


def _reference_scales(flags, scale, period, factor):
    """The rule, written out: skip + divide on overflow (not below 1), grow after `period`."""
    good, out = 0, []
    for finite in flags:
        if finite:
            good += 1
            if good == period:
                scale, good = scale * factor, 0
        else:
            scale, good = max(scale / factor, 1.0), 0
        out.append((scale, good))
    return out


@pytest.mark.parametrize("period", [1, 3])
def test_loss_scale_follows_the_rule(period):
    rng = np.random.default_rng(period)
    flags = [bool(x) for x in rng.random(60) < 0.75] + [False] * 70  # ends pinned at 1
    ls = DynamicLossScale.create(2.0**4, period=period, factor=2.0)
    adjust = jax.jit(lambda ls, f: ls.adjust(f))
    got = []
    for finite in flags:
        ls = adjust(ls, jnp.asarray(finite))
        got.append((float(ls.scale), int(ls.good_steps)))
    assert got == _reference_scales(flags, 2.0**4, period, 2.0)
    assert got[-1][0] == 1.0


def test_scaled_gradients_unscale_to_the_true_gradients():
    w = jnp.array([0.3, -1.2, 2.0], jnp.float32)
    x = jnp.array([1.5, 0.25, -0.75], jnp.float32)

    def loss(w):
        return jnp.sum(jnp.tanh(w * x)) ** 2

    ls = DynamicLossScale.create(2.0**12)
    scaled = jax.grad(lambda w: ls.scale_loss(loss(w)))(w)
    np.testing.assert_allclose(ls.unscale(scaled), jax.grad(loss)(w), rtol=1e-6)
    assert bool(all_finite({"a": w, "b": (x,)}))
    assert not bool(all_finite({"a": w, "b": jnp.array([1.0, jnp.inf])}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial_scale": 0.5}, "initial_scale"),
        ({"period": 0}, "period"),
        ({"factor": 1.0}, "factor"),
    ],
)
def test_loss_scale_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicLossScale.create(**kwargs)


def _trainer(tiny_config, dtype, **optim):
    config = tiny_config
    config.model.dtype = dtype
    config.model.dropout = 0.0
    for key, value in optim.items():
        config.optim[key] = value
    data = load_data(config)
    trainer = Trainer(config, data)
    index = trainer.train_batches.order(0)[0]
    return trainer, shard_batch(trainer.train_batches.make_batch(index), trainer.mesh)


def test_float16_step_skips_an_overflow_and_halves_the_scale(tiny_config):
    # s = 2^100 overflows float16 in the backward pass: the update must be skipped
    trainer, batch = _trainer(tiny_config, "float16", initial_loss_scale=2.0**100)
    state = trainer.init_state()
    before = jax.tree.map(np.array, (state.params, state.opt_state))
    state = trainer.train_step(state, batch)
    assert float(state.loss_scale.scale) == 2.0**99
    assert int(state.loss_scale.good_steps) == 0
    assert int(state.step) == 1
    after = jax.tree.map(np.array, (state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(float(state.metrics["loss_sum"]))  # the forward loss itself was fine


def test_float16_training_with_a_sane_scale_updates_float32_params(tiny_config):
    trainer, batch = _trainer(tiny_config, "float16", initial_loss_scale=2.0**10)
    state = trainer.init_state()
    first = jax.tree.map(np.array, state.params)
    for _ in range(3):
        state = trainer.train_step(state, batch)
    assert float(state.loss_scale.scale) == 2.0**10 and int(state.loss_scale.good_steps) == 3
    for b in jax.tree.leaves(state.params):
        assert b.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(b)))
    moved = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(state.params), strict=True)
    ]
    assert all(moved)


def test_bfloat16_step_keeps_float32_state_and_computes_in_bfloat16(tiny_config):
    trainer, batch = _trainer(tiny_config, "bfloat16")
    state = trainer.init_state()
    assert state.loss_scale is None  # bfloat16 has float32's range: no loss scaling
    jaxpr = str(jax.make_jaxpr(trainer.train_step)(state, batch))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    state = trainer.train_step(state, batch)
    for leaf in jax.tree.leaves((state.params, state.opt_state, state.metrics)):
        assert leaf.dtype != jnp.bfloat16
    assert state.metrics["loss_sum"].dtype == jnp.float32


@pytest.mark.parametrize("model_name", ["bow", "transformer"])
def test_bfloat16_model_gives_float32_logits_close_to_float32(model_name):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 50, size=(4, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16) < rng.integers(1, 17, size=(4, 1)))

    def build(dtype):
        if model_name == "bow":
            return BowClassifier(
                vocab_size=50,
                num_classes=3,
                embed_dim=32,
                hidden_size=32,
                bigram_buckets=64,
                dtype=dtype,
            )
        return TransformerClassifier(
            vocab_size=50,
            num_classes=3,
            max_len=16,
            embed_dim=32,
            num_layers=1,
            num_heads=4,
            mlp_dim=64,
            dtype=dtype,
        )

    full, half = build(None), build(compute_dtype("bfloat16"))
    variables = full.init(jax.random.key(0), tokens, mask, train=False)
    assert all(
        p.dtype == jnp.float32
        for p in jax.tree.leaves(half.init(jax.random.key(0), tokens, mask, train=False))
    )
    reference = full.apply(variables, tokens, mask, train=False)
    logits = half.apply(variables, tokens, mask, train=False)
    assert logits.dtype == jnp.float32
    assert "bf16" in str(
        jax.make_jaxpr(lambda v: half.apply(v, tokens, mask, train=False))(variables)
    )
    # bfloat16 keeps 8 significant bits: agreement to about 1e-2 of the logits' scale
    scale = float(jnp.max(jnp.abs(reference)))
    np.testing.assert_allclose(logits, reference, atol=3e-2 * max(scale, 1.0))
    assert not np.array_equal(np.asarray(logits), np.asarray(reference))  # it did compute in bf16


def test_compute_dtype_names():
    assert compute_dtype("float32") is None
    assert compute_dtype("bfloat16") == jnp.bfloat16
    assert compute_dtype("float16") == jnp.float16
