"""jaxnn/nn/mlp.py against a NumPy transcription of Dense -> activation -> ... -> Dense."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxnn import ops
from jaxnn.nn import MLP
from tests.nn.conftest import make_random_variables

X = jax.random.normal(jax.random.key(0), (6, 5))


def _np_mlp(params, x, activation):
    h = np.asarray(x, np.float64)
    layers = [params[f"Dense_{i}"] for i in range(len(params))]
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(layers) - 1:
            h = activation(h)
    return h


NUMPY_ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0),
    "tanh": np.tanh,
    "sigmoid": lambda h: 1 / (1 + np.exp(-h)),
    "identity": lambda h: h,
}


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_matches_numpy_jitted(activation):
    mlp = MLP((8, 3), activation=activation)
    params = _init(mlp)["params"]
    got = jax.jit(lambda p: mlp.apply({"params": p}, X, deterministic=True))(params)
    np.testing.assert_allclose(got, _np_mlp(params, X, NUMPY_ACTIVATIONS[activation]), atol=1e-5)


class MLPTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("relu", "sigmoid")
    def test_matches_numpy(self, activation):
        mlp = MLP((8, 7, 3), activation=activation)
        params = _init(mlp)["params"]
        got = self.variant(lambda p, x: mlp.apply({"params": p}, x, deterministic=True))(params, X)
        ref = _np_mlp(params, X, NUMPY_ACTIVATIONS[activation])
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        assert got.shape == (6, 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_matches_numpy_for_one_hidden_layer(self):
        mlp = MLP((4, 2), activation="relu")
        params = _init(mlp)["params"]
        grad = self.variant(
            jax.grad(lambda p: jnp.sum(mlp.apply({"params": p}, X, deterministic=True)))
        )(params)
        x = np.asarray(X, np.float64)
        w1, b1 = np.asarray(params["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["bias"])
        w2 = np.asarray(params["Dense_1"]["kernel"])
        pre = x @ w1 + b1
        d_hidden = np.ones((6, 2)) @ w2.T * (pre > 0)
        np.testing.assert_allclose(grad["Dense_0"]["kernel"], x.T @ d_hidden, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            grad["Dense_1"]["kernel"], np.maximum(pre, 0).T @ np.ones((6, 2)), rtol=1e-5
        )


def _init(mlp):
    return make_random_variables(mlp, X, deterministic=True)


def test_dropout_between_layers_only():
    rngs = {"dropout": jax.random.key(1)}
    # one layer: no hidden activation, so no dropout even in training
    single = MLP((3,), dropout_rate=0.9)
    params = _init(single)
    run = jax.jit(lambda p, det: single.apply(p, X, deterministic=det, rngs=rngs), static_argnums=1)
    np.testing.assert_array_equal(run(params, False), run(params, True))
    two = MLP((16, 3), dropout_rate=0.5)
    params = _init(two)
    run = jax.jit(lambda p, det: two.apply(p, X, deterministic=det, rngs=rngs), static_argnums=1)
    assert not np.allclose(run(params, False), run(params, True))


def test_dtype_computes_in_bf16_with_float32_params():
    mlp = MLP((8, 2), dtype=jnp.bfloat16)
    variables = _init(mlp)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    y = jax.jit(lambda v: mlp.apply(v, X, deterministic=True))(variables)
    assert y.dtype == jnp.bfloat16
    ref = jax.jit(lambda v: MLP((8, 2)).apply(v, X, deterministic=True))(variables)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=5e-2, atol=5e-2)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="activation='swish'"):
        MLP((2,), activation="swish").init(jax.random.key(0), X, deterministic=True)
    with pytest.raises(ValueError, match="features"):
        MLP(()).init(jax.random.key(0), X, deterministic=True)
    with pytest.raises(ValueError, match=r"at least rank 1.*got shape \(\)"):
        MLP((2,)).init(jax.random.key(0), jnp.float32(1.0), deterministic=True)


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3, 5)])
def test_any_rank_equals_the_unflattened_formula(shape):
    """The MLP flattens leading axes to rows internally (a faster backward on XLA:CPU); values
    and gradients equal Dense -> act -> Dense written on the unflattened array."""
    x = jax.random.normal(jax.random.key(4), shape)
    mlp = MLP((8, 3), activation="gelu")
    params = make_random_variables(mlp, x, deterministic=True)["params"]

    def formula(p):
        h = ops.get_activation("gelu")(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]

    got = jax.jit(lambda p: mlp.apply({"params": p}, x, deterministic=True))(params)
    assert got.shape == (*shape[:-1], 3)
    np.testing.assert_allclose(got, formula(params), rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda p: jnp.sum(mlp.apply({"params": p}, x, deterministic=True) ** 2)))(
        params
    )
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(formula(p) ** 2)))(params)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_flattening_rows_keeps_the_dropout_draws():
    """Dropout on the flattened hidden layer [M, F] draws what it would on [B, T, F]: the draws
    follow the row-major order of the leading axes (jaxnn.ops.dropout.uniform_bits16)."""
    key = jax.random.key(3)
    x = jnp.ones((2, 3, 10))
    np.testing.assert_array_equal(
        ops.dropout(x, 0.5, key).reshape(6, 10), ops.dropout(x.reshape(6, 10), 0.5, key)
    )
