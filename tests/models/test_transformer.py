"""jaxnn/models/transformer.py: shapes, padding invariance, norms, pooling, probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.models import TransformerClassifier, get_model, predict_proba
from jaxnn.train.config import base_config


def _model(**kwargs):
    defaults = dict(
        vocab_size=40, num_classes=3, max_len=16, embed_dim=8, num_layers=2, num_heads=2, mlp_dim=16
    )
    return TransformerClassifier(**{**defaults, **kwargs})


def _init(model, tokens, mask):
    return jax.jit(lambda t, m: model.init(jax.random.key(0), t, m, train=False))(tokens, mask)


def _apply(model, variables, tokens, mask):
    return jax.jit(lambda v, t, m: model.apply(v, t, m, train=False))(variables, tokens, mask)


def _batch(length=10):
    rng = np.random.default_rng(0)
    lengths = np.array([length, 3, 1, 6])
    mask = np.arange(length) < lengths[:, None]
    tokens = np.where(mask, rng.integers(2, 40, size=(4, length)), 0).astype(np.int32)
    return tokens, mask


@pytest.mark.parametrize(
    ("norm", "pooling"),
    [("layer", "mean"), ("rms", "max"), ("batch", "first")],
)
def test_logits_shape_and_padding_invariance(norm, pooling):
    tokens, mask = _batch()
    model = _model(norm=norm, pooling=pooling)
    variables = _init(model, tokens, mask)
    logits = _apply(model, variables, tokens, mask)
    assert logits.shape == (4, 3) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # more padding at the end (a longer bucket) changes nothing for any row
    longer = np.pad(tokens, ((0, 0), (0, 6)))
    longer_mask = np.pad(mask, ((0, 0), (0, 6)))
    np.testing.assert_allclose(
        _apply(model, variables, longer, longer_mask), logits, rtol=1e-5, atol=1e-6
    )
    assert ("batch_stats" in variables) == (norm == "batch")


def test_a_row_does_not_depend_on_other_rows_in_eval():
    tokens, mask = _batch()
    model = _model(norm="batch")
    variables = _init(model, tokens, mask)
    full = _apply(model, variables, tokens, mask)
    single = _apply(model, variables, tokens[1:2], mask[1:2])
    np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=1e-6)


def test_batchnorm_updates_running_statistics_in_training():
    tokens, mask = _batch()
    model = _model(norm="batch")
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    _, updates = model.apply(
        variables,
        tokens,
        mask,
        train=True,
        rngs={"dropout": jax.random.key(1)},
        mutable=["batch_stats"],
    )
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        variables["batch_stats"],
        updates["batch_stats"],
    )
    assert all(jax.tree.leaves(changed))


def test_sequence_longer_than_max_len_is_refused():
    model = _model(max_len=4)
    tokens = jnp.ones((1, 6), jnp.int32)
    with pytest.raises(ValueError, match="T=6 is longer than max_len=4"):
        model.init(jax.random.key(0), tokens, tokens > 0, train=False)


def test_predict_proba_is_softmax_of_logits():
    tokens, mask = _batch()
    model = _model()
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    logits = np.asarray(model.apply(variables, tokens, mask, train=False), np.float64)
    probs = np.asarray(predict_proba(jnp.asarray(logits, jnp.float32)))
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_get_model_builds_both_models_and_refuses_others():
    config = base_config().to_dict()
    assert isinstance(
        get_model(config, vocab_size=10, num_classes=2),
        type(get_model(config, vocab_size=10, num_classes=2)),
    )
    config["model"]["name"] = "transformer"
    model = get_model(config, vocab_size=10, num_classes=2)
    assert isinstance(model, TransformerClassifier)
    assert model.max_len == config["data"]["max_len"]
    config["model"]["name"] = "no_such_model"
    with pytest.raises(ValueError, match=r"model\.name='no_such_model'.*bow, transformer"):
        get_model(config, vocab_size=10, num_classes=2)
