"""Claims of the README's concept map, checked on jaxnn's own layers: stacked linear layers
collapse to one, a ReLU MLP fits XOR where a linear one cannot, ReLU is not linear, and the
dropout rate is the fraction of units zeroed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn.nn import MLP
from jaxnn.ops import dropout, identity, relu, softmax_cross_entropy


def test_two_dense_layers_without_activation_are_one_dense_layer():
    """W2 (W1 x + b1) + b2 = (W1 W2)ᵀ... one linear map: a stack collapses to one layer."""
    mlp = MLP((7, 3), activation="identity")
    x = jax.random.normal(jax.random.key(0), (16, 5))
    rng = np.random.default_rng(1)
    params = {  # the shapes of mlp.init's params, random values (biases too, so they matter)
        "Dense_0": {"kernel": rng.normal(size=(5, 7)) / 2, "bias": rng.normal(size=7)},
        "Dense_1": {"kernel": rng.normal(size=(7, 3)) / 2, "bias": rng.normal(size=3)},
    }
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    shapes = jax.eval_shape(lambda: mlp.init(jax.random.key(0), x, deterministic=True)["params"])
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, shapes)
    w1, b1 = (
        np.asarray(params["Dense_0"]["kernel"], np.float64),
        np.asarray(params["Dense_0"]["bias"]),
    )
    w2, b2 = (
        np.asarray(params["Dense_1"]["kernel"], np.float64),
        np.asarray(params["Dense_1"]["bias"]),
    )
    # the composed single layer: x W + b with W = W1 W2 [5, 3], b = b1 W2 + b2 [3]
    w, b = w1 @ w2, b1 @ w2 + b2
    two_layers = mlp.apply({"params": params}, x, deterministic=True)
    np.testing.assert_allclose(two_layers, np.asarray(x, np.float64) @ w + b, rtol=1e-5, atol=1e-5)
    # with a ReLU in between, no single matrix reproduces the stack: the least-squares best
    # linear fit leaves a clear residual
    nonlinear = MLP((7, 3), activation="relu").apply({"params": params}, x, deterministic=True)
    design = np.concatenate([np.asarray(x, np.float64), np.ones((16, 1))], axis=1)
    fit, *_ = np.linalg.lstsq(design, np.asarray(nonlinear, np.float64), rcond=None)
    assert np.max(np.abs(design @ fit - np.asarray(nonlinear))) > 1e-2


XOR_X = jnp.asarray([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.asarray([0, 1, 1, 0])


def _train_xor(activation: str, seeds: jax.Array, steps: int = 300) -> np.ndarray:
    """Accuracy on XOR of MLP((16, 2), activation) trained with Adam, one run per seed (vmap)."""
    model = MLP((16, 2), activation=activation)
    optimizer = optax.adam(0.05)

    def loss_fn(params):
        logits = model.apply({"params": params}, XOR_X, deterministic=True)
        return jnp.mean(softmax_cross_entropy(logits, XOR_Y))

    def run(seed):
        params = model.init(jax.random.key(seed), XOR_X, deterministic=True)["params"]

        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
        predictions = jnp.argmax(model.apply({"params": params}, XOR_X, deterministic=True), -1)
        return jnp.mean(predictions == XOR_Y)

    return np.asarray(jax.jit(jax.vmap(run))(seeds))


def test_relu_mlp_fits_xor_but_a_linear_one_cannot():
    """Non-linearity lets a model learn a boundary no linear model can (XOR)."""
    seeds = jnp.arange(4)
    relu_accuracy = _train_xor("relu", seeds)
    linear_accuracy = _train_xor("identity", seeds)
    np.testing.assert_array_equal(relu_accuracy, 1.0)
    # XOR is not linearly separable: any linear classifier gets at most 3 of the 4 points
    assert np.all(linear_accuracy <= 0.75), linear_accuracy


def test_relu_is_not_linear():
    """ReLU is piecewise linear but not linear."""
    a, b = jnp.float32(1.0), jnp.float32(-1.0)
    assert float(relu(a + b)) == 0.0 and float(relu(a) + relu(b)) == 1.0  # additivity fails
    assert float(relu(-2.0 * a)) != -2.0 * float(relu(a))  # homogeneity fails for c < 0


_finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(a=_finite, b=_finite, c=st.floats(0, 100, width=32))
def test_property_relu_additivity_and_homogeneity(a, b, c):
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    relu_np = lambda v: np.asarray(relu(jnp.float32(v)))
    # XLA flushes float32 subnormals to zero (NumPy keeps them): equal up to the smallest normal
    tiny = np.finfo(np.float32).tiny
    # positively homogeneous: relu(c x) = c relu(x) for c >= 0 ...
    np.testing.assert_allclose(relu_np(c * a), c * relu_np(a), rtol=1e-6, atol=tiny)
    # ... additive only when a and b have the same sign; for opposite signs the gap
    # relu(a) + relu(b) - relu(a + b) is min(|a|, |b|) > 0 (up to float32 rounding)
    if a * b >= 0:
        np.testing.assert_allclose(relu_np(a + b), relu_np(a) + relu_np(b), rtol=1e-6, atol=tiny)
    else:
        gap = relu_np(a) + relu_np(b) - relu_np(a + b)
        rounding = 1e-6 * (abs(a) + abs(b))
        np.testing.assert_allclose(gap, min(abs(a), abs(b)), atol=rounding)
        # a linear map (identity) has no such gap
        np.testing.assert_allclose(identity(a + b), identity(a) + identity(b), rtol=1e-6)


def test_dropout_rate_is_the_fraction_zeroed():
    """Dropout = 0.3 means 30% of the units are set to zero, at random."""
    rate, n = 0.3, 100_000
    y = dropout(jnp.ones((n,)), rate, jax.random.key(0))
    assert abs(float(jnp.mean(y == 0)) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
