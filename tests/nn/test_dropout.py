"""jaxnn/nn/dropout.py against flax.linen.Dropout: the same "dropout" stream and key, the same
scaling; the mask is jaxnn.ops.dropout's (16-bit Threefry draws, not jax.random.bernoulli)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import ops
from jaxnn.nn import Dropout

X = jax.random.normal(jax.random.key(0), (4, 32))


class KeyProbe(nn.Module):
    """Returns the key flax hands a top-level module that asks the "dropout" stream once."""

    @nn.compact
    def __call__(self):
        return self.make_rng("dropout")


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9, 1.0])
def test_matches_flax_dropout(rate):
    rngs = {"dropout": jax.random.key(7)}
    ours = jax.jit(lambda x: Dropout(rate).apply({}, x, deterministic=False, rngs=rngs))(X)
    theirs = nn.Dropout(rate).apply({}, X, deterministic=False, rngs=rngs)
    # the same key flax's own Dropout draws from, fed to the op
    key = KeyProbe().apply({}, rngs=rngs)
    np.testing.assert_allclose(ours, ops.dropout(X, rate, key), rtol=1e-6)
    if rate in (0.0, 1.0):
        np.testing.assert_array_equal(ours, theirs)
    else:  # survivors scaled like flax's (up to the 2^-16 rounding of the rate)
        np.testing.assert_allclose(ours[ours != 0], X[ours != 0] / (1 - rate), rtol=1e-4)
        big = Dropout(rate).apply({}, jnp.ones((200, 500)), deterministic=False, rngs=rngs)
        assert abs(float(jnp.mean(big == 0)) - rate) < 4 * np.sqrt(rate * (1 - rate) / 1e5)


def test_deterministic_is_identity_and_needs_no_rng():
    np.testing.assert_array_equal(Dropout(0.5).apply({}, X, deterministic=True), X)


def test_draws_from_the_dropout_stream():
    layer = Dropout(0.5)
    a = layer.apply({}, X, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = layer.apply({}, X, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.array_equal(a, b)
    with pytest.raises(Exception, match="dropout"):
        layer.apply({}, X, deterministic=False)  # no RNG given


def test_bad_rate_raises():
    with pytest.raises(ValueError, match="rate="):
        Dropout(1.5).apply({}, X, deterministic=False, rngs={"dropout": jax.random.key(1)})
    with pytest.raises(ValueError, match="rate="):
        Dropout(-0.5).apply({}, X, deterministic=True)


def test_bf16_kept():
    y = Dropout(0.5).apply(
        {}, X.astype(jnp.bfloat16), deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    assert y.dtype == jnp.bfloat16
