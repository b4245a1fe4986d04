"""jaxnn/ops/activations.py against jax.nn and NumPy transcriptions of the formulas."""

import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxnn.ops import activations as act

REFERENCES = {
    "relu": (jax.nn.relu, lambda x: np.maximum(x, 0.0)),
    "sigmoid": (jax.nn.sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x))),
    "tanh": (jnp.tanh, lambda x: (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x))),
    "gelu": (
        lambda x: jax.nn.gelu(x, approximate=False),
        lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    ),
    "gelu_tanh": (
        lambda x: jax.nn.gelu(x, approximate=True),
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    ),
    "identity": (lambda x: x, lambda x: x),
}


def _inputs(seed=0, shape=(4, 33)):
    x = np.random.default_rng(seed).normal(scale=3.0, size=shape)
    x[0, :5] = [0.0, -0.0, 1e-8, -1e-8, 20.0]  # 0 and tiny values, a large one
    return x


class ActivationReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*REFERENCES)
    def test_values_and_gradients_match_references(self, name):
        fn = act.get_activation(name)
        jax_ref, numpy_ref = REFERENCES[name]
        x64 = _inputs()
        x = jnp.asarray(x64, jnp.float32)
        got = self.variant(fn)(x)
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_allclose(got, jax_ref(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got, numpy_ref(x64), rtol=1e-5, atol=1e-6)
        grad = self.variant(jax.grad(lambda v: jnp.sum(fn(v))))(x)
        ref_grad = jax.grad(lambda v: jnp.sum(jax_ref(v)))(x)
        # float32 cancellation in 1 + tanh(.) for x << 0 differs between forms by ~1e-6
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gelu_approximate_flag(self):
        x = jnp.asarray(_inputs(1), jnp.float32)
        exact = self.variant(lambda v: act.gelu(v))(x)
        approx = self.variant(lambda v: act.gelu(v, approximate=True))(x)
        np.testing.assert_allclose(exact, jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(approx, jax.nn.gelu(x, approximate=True), rtol=1e-6, atol=1e-6)
        # the two forms are close but not identical
        assert 0 < float(jnp.max(jnp.abs(exact - approx))) < 1e-3


@pytest.mark.parametrize("name", ["relu", "sigmoid", "gelu", "gelu_tanh"])
def test_check_grads_float64(x64, name):
    fn = act.get_activation(name)
    x = jnp.asarray(_inputs(2, (3, 7)))
    x = jnp.where(jnp.abs(x) < 1e-2, 0.5, x)  # relu's kink at 0 has no finite difference
    check_grads(jax.jit(fn), (x,), order=2 if name != "relu" else 1, modes=("fwd", "rev"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_sigmoid_finite_for_huge_inputs_without_warnings(maybe_jit, dtype):
    x = jnp.asarray([-1e4, -1e3, -100.0, -30.0, 0.0, 30.0, 100.0, 1e3, 1e4], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = maybe_jit(act.sigmoid)(x)
        grad = maybe_jit(jax.grad(lambda v: jnp.sum(act.sigmoid(v))))(x)
    assert value.dtype == dtype and grad.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(np.asarray(value, np.float32)[[0, -1]], [0.0, 1.0])
    np.testing.assert_allclose(np.asarray(grad, np.float32)[[0, -1]], [0.0, 0.0])
    np.testing.assert_allclose(np.asarray(value, np.float32)[4], 0.5)


def test_sigmoid_textbook_form_overflows_where_ours_does_not():
    # the reason for the stable form: NumPy's 1/(1+exp(-x)) warns at x = -1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            1.0 / (1.0 + np.exp(-np.float32(-1e4)))
        np.asarray(act.sigmoid(np.float32(-1e4)))


def test_dtype_preserved():
    x = jnp.linspace(-3, 3, 16, dtype=jnp.bfloat16)
    for name, fn in act.ACTIVATIONS.items():
        assert fn(x).dtype == jnp.bfloat16, name


def test_get_activation_names_and_unknown_name():
    assert act.get_activation("linear") is act.identity
    assert act.get_activation("gelu_tanh") is act.gelu_tanh
    assert set(act.ACTIVATIONS) == {"relu", "gelu", "gelu_tanh", "tanh", "sigmoid"} | {
        "identity",
        "linear",
    }
    with pytest.raises(ValueError, match="swish") as info:
        act.get_activation("swish")
    for name in act.ACTIVATIONS:
        assert name in str(info.value)
