"""jaxnn/nn/pooling.py: the modules, get_pool and a NumPy check of each."""

import jax
import numpy as np
import pytest

from jaxnn.nn import FirstTokenPool, MaxPool, MeanPool, get_pool

X = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
MASK = np.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)


def test_modules_match_numpy():
    mean = MeanPool().apply({}, X, MASK)
    np.testing.assert_allclose(mean[0], X[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean[1], X[1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(mean[2], 0.0)
    largest = jax.jit(lambda x, m: MaxPool().apply({}, x, m))(X, MASK)
    np.testing.assert_array_equal(largest[0], X[0, :2].max(0))
    np.testing.assert_array_equal(largest[2], 0.0)
    np.testing.assert_array_equal(FirstTokenPool().apply({}, X, MASK), X[:, 0])


def test_get_pool():
    assert isinstance(get_pool("mean"), MeanPool)
    assert isinstance(get_pool("max"), MaxPool)
    assert isinstance(get_pool("first"), FirstTokenPool)
    with pytest.raises(ValueError, match=r"'cls'.*mean, max, first"):
        get_pool("cls")
