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
from jaxnn.ops.dropout import uniform_bits16


def _rotl(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def numpy_threefry2x32(key, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al. 2011, Random123), transcribed in NumPy uint32."""
    k0, k1 = (np.uint32(k) for k in key)
    ks = [k0, k1, np.uint32(k0 ^ k1 ^ np.uint32(0x1BD11BDA))]
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for group in range(5):
        for r in rotations[group % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def numpy_dropout(x, rate, key):
    """The docstring rule: four 16-bit draws per Threefry(key, (row-major index, 0))."""
    x = np.asarray(x, np.float64)
    lead, last = x.shape[:-1], x.shape[-1]
    groups = -(-last // 4)
    counter = np.arange(int(np.prod(lead, dtype=np.int64)) * groups, dtype=np.uint32)
    with np.errstate(over="ignore"):
        w0, w1 = numpy_threefry2x32(key, counter, np.zeros_like(counter))
    draws = np.stack([w0 & 0xFFFF, w0 >> 16, w1 & 0xFFFF, w1 >> 16], -1)
    draws = draws.reshape(*lead, 4 * groups)[..., :last]
    threshold = min(round(rate * 2**16), 2**16 - 1)
    keep = draws >= threshold
    return np.where(keep, x * 2**16 / (2**16 - threshold), 0.0), keep, threshold


class DropoutTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_transcription_of_the_formula(self):
        rate = 0.3
        # 8 x 50: the last group of each row is partial (50 = 4 * 12 + 2)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 50)), jnp.float32)
        key = jax.random.key(1)
        y = self.variant(lambda v, k: dropout(v, rate, k))(x, key)
        expected, keep, threshold = numpy_dropout(x, rate, jax.random.key_data(key))
        assert threshold == 19661  # round(0.3 * 65536)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        # gradient: the scale where kept, 0 where dropped
        grad = self.variant(jax.grad(lambda v, k: jnp.sum(dropout(v, rate, k))))(x, key)
        np.testing.assert_allclose(grad, keep * 2**16 / (2**16 - threshold), rtol=1e-6)

    def test_numpy_threefry_matches_jax_random_known_answer(self):
        """The NumPy transcription itself against jax.random's Threefry (raw key bits)."""
        key = np.asarray([0x13198A2E, 0x03707344], np.uint32)
        counts = np.arange(6, dtype=np.uint32)
        with np.errstate(over="ignore"):
            w0, w1 = numpy_threefry2x32(key, counts[:3], counts[3:])
        from jax.extend.random import threefry_2x32

        np.testing.assert_array_equal(np.concatenate([w0, w1]), threefry_2x32(key, counts))

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
    """rate = 0.3 zeroes 30% of units; the mean is preserved in expectation."""
    n = 20_000
    # eager on purpose: a jit with a static rate would compile once per example
    y = np.asarray(dropout(jnp.ones((n,)), rate, jax.random.key(seed)), np.float64)
    zero_fraction = np.mean(y == 0.0)
    assert abs(zero_fraction - rate) <= 4.0 * math.sqrt(rate * (1 - rate) / n)
    # each output is 1/(1 - rate) w.p. 1 - rate else 0: mean 1, variance rate / (1 - rate)
    assert abs(y.mean() - 1.0) <= 4.0 * math.sqrt(rate / (1.0 - rate) / n)
    threshold = round(rate * 2**16)
    np.testing.assert_allclose(y[y != 0], 2**16 / (2**16 - threshold), rtol=1e-6)


def test_uniform_bits16_are_uniform_and_uncorrelated_within_a_word():
    """The four draws of one hash are used side by side: check they behave as independent."""
    draws = np.asarray(uniform_bits16(jax.random.key(5), (400, 1000)), np.float64) / 65535.0
    n = draws.size
    assert abs(draws.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    counts, _ = np.histogram(draws, bins=16, range=(0, 1))
    chi2 = np.sum((counts - n / 16) ** 2 / (n / 16))
    assert chi2 < 45.0  # 15 degrees of freedom: p ~ 1e-4
    for lag in (1, 2, 3, 4):
        corr = np.corrcoef(draws[:, :-lag].ravel(), draws[:, lag:].ravel())[0, 1]
        assert abs(corr) < 4 / math.sqrt(n), (lag, corr)


def test_other_key_implementations_and_shapes():
    """rbg keys fall back to jax.random.bits; legacy uint32 keys, scalars and odd shapes work."""
    for key in (jax.random.key(0, impl="rbg"), jax.random.PRNGKey(0)):
        y = np.asarray(dropout(jnp.ones((3, 5)), 0.5, key))
        assert y.shape == (3, 5) and set(np.unique(y)) <= {0.0, 2.0}
    np.testing.assert_array_equal(
        dropout(jnp.ones(5), 0.4, jax.random.PRNGKey(2)),
        dropout(jnp.ones(5), 0.4, jax.random.key(2)),
    )
    assert dropout(jnp.float32(3.0), 0.5, jax.random.key(0)).shape == ()
    assert uniform_bits16(jax.random.key(0), (2, 0, 3)).shape == (2, 0, 3)


def test_rate_rounds_to_a_multiple_of_2_to_the_minus_16_and_never_drops_all():
    key = jax.random.key(0)
    y = np.asarray(dropout(jnp.ones(2**20), 1.0 - 1e-9, key))  # 16 survivors expected
    assert 0 < np.count_nonzero(y) and np.allclose(y[y != 0], 65536.0)
    np.testing.assert_array_equal(dropout(jnp.ones(64), 1e-9, key), 1.0)
