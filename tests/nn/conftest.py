"""Shared helpers for the jaxnn.nn tests."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def make_random_variables(module, *args, seed=0, **kwargs):
    """Variables of ``module.init(key, *args, **kwargs)`` filled with NumPy random values.

    Only the shapes come from flax (``jax.eval_shape``, no compilation; compiling flax's
    initializers costs seconds on CPU). Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1),
    running variances ~ U(0.5, 1.5), everything else (biases, running means) ~ N(0, 0.1), so
    that every parameter matters in a comparison against a reference.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture
def random_variables():
    return make_random_variables
