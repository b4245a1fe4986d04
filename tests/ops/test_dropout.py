"""jaxnn/ops/dropout.py: the Bernoulli(1 - rate) keep mask, the 1/(1 - rate) scaling, edge cases."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn.ops import dropout


class DropoutTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_transcription_of_the_formula(self):
        rate = 0.3
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 50)), jnp.float32)
        key = jax.random.key(1)
        y = self.variant(lambda v, k: dropout(v, rate, k))(x, key)
        # the keep mask is Bernoulli(1 - rate) drawn from the key: survivors are x / (1 - rate)
        keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
        expected = np.where(keep, np.asarray(x, np.float64) / (1.0 - rate), 0.0)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        # gradient: 1/(1 - rate) where kept, 0 where dropped
        grad = self.variant(jax.grad(lambda v, k: jnp.sum(dropout(v, rate, k))))(x, key)
        np.testing.assert_allclose(grad, keep / (1.0 - rate), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_identity_and_zero_cases(self):
        x = jnp.arange(12.0).reshape(3, 4)
        key = jax.random.key(0)
        np.testing.assert_array_equal(self.variant(lambda v: dropout(v, 0.5, key, True))(x), x)
        np.testing.assert_array_equal(self.variant(lambda v: dropout(v, 0.0, key))(x), x)
        np.testing.assert_array_equal(self.variant(lambda v: dropout(v, 0.0, None))(x), x)
        zeros = self.variant(lambda v: dropout(v, 1.0, None))(x)
        np.testing.assert_array_equal(zeros, 0.0)
        grad = self.variant(jax.grad(lambda v: jnp.sum(dropout(v, 1.0, key))))(x)
        np.testing.assert_array_equal(grad, 0.0)


def test_traced_rate_under_vmap():
    """A per-trial rate traced by vmap: same masks as the static rate, rate = 1 gives zeros."""
    x = jnp.ones((4, 1000))
    key = jax.random.key(3)
    rates = jnp.asarray([0.0, 0.25, 0.5, 1.0])
    out = jax.jit(jax.vmap(lambda r: dropout(x, r, key)))(rates)
    for i, rate in enumerate([0.0, 0.25, 0.5]):
        np.testing.assert_allclose(out[i], dropout(x, rate, key), rtol=1e-6)
    np.testing.assert_array_equal(out[3], 0.0)
    grad = jax.grad(lambda v: jnp.sum(jax.vmap(lambda r: dropout(v, r, key))(rates)))(x)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_dtype_and_shape_kept():
    x = jnp.ones((2, 3, 5), jnp.bfloat16)
    y = dropout(x, 0.5, jax.random.key(0))
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    assert set(np.unique(np.asarray(y, np.float32))) <= {0.0, 2.0}


def test_different_keys_give_different_masks():
    x = jnp.ones((64,))
    a = dropout(x, 0.5, jax.random.key(0))
    b = dropout(x, 0.5, jax.random.key(1))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, dropout(x, 0.5, jax.random.key(0)))


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_outside_unit_interval_raises(rate):
    with pytest.raises(ValueError, match="rate="):
        dropout(jnp.ones(3), rate, jax.random.key(0))


def test_missing_rng_and_non_scalar_rate_raise():
    with pytest.raises(ValueError, match="rng"):
        dropout(jnp.ones(3), 0.5, None)
    with pytest.raises(ValueError, match="scalar"):
        dropout(jnp.ones(3), jnp.asarray([0.1, 0.2]), jax.random.key(0))


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_property_zero_fraction_and_mean(rate, seed):
    """Study guide §3: rate = 0.3 zeroes 30% of units; the mean is preserved in expectation."""
    n = 20_000
    # eager on purpose: a jit with a static rate would compile once per example
    y = np.asarray(dropout(jnp.ones((n,)), rate, jax.random.key(seed)), np.float64)
    zero_fraction = np.mean(y == 0.0)
    assert abs(zero_fraction - rate) <= 4.0 * math.sqrt(rate * (1 - rate) / n)
    # each output is 1/(1 - rate) w.p. 1 - rate else 0: mean 1, variance rate / (1 - rate)
    assert abs(y.mean() - 1.0) <= 4.0 * math.sqrt(rate / (1.0 - rate) / n)
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)
