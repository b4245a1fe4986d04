"""jaxnn/ops/pooling.py against NumPy transcriptions; padding invariance as a property."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxnn.ops import first_token_pool, max_pool, mean_pool

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6, 5)).astype(np.float32)
MASK = np.asarray(
    [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]], bool
)


def _np_mean_pool(x, mask):
    out = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        rows = x[b][mask[b]]
        if len(rows):
            out[b] = rows.sum(0) / len(rows)  # (1/n) Σ embedding_i
    return out


def _np_max_pool(x, mask):
    out = np.zeros((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        rows = x[b][mask[b]]
        if len(rows):
            out[b] = rows.max(0)
    return out


class PoolingTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_values_match_numpy(self):
        np.testing.assert_allclose(
            self.variant(mean_pool)(X, MASK), _np_mean_pool(X, MASK), rtol=1e-6, atol=1e-7
        )
        np.testing.assert_allclose(self.variant(max_pool)(X, MASK), _np_max_pool(X, MASK))
        np.testing.assert_array_equal(self.variant(first_token_pool)(X), X[:, 0])
        # mask None means every token is real
        np.testing.assert_allclose(self.variant(mean_pool)(X, None), X.mean(1), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_match_numpy(self):
        cot = RNG.normal(size=(4, 5)).astype(np.float32)
        grad_mean = self.variant(jax.grad(lambda x: jnp.sum(mean_pool(x, MASK) * cot)))(X)
        counts = np.maximum(MASK.sum(1), 1)[:, None, None]
        np.testing.assert_allclose(grad_mean, MASK[..., None] * cot[:, None, :] / counts, rtol=1e-6)
        grad_max = self.variant(jax.grad(lambda x: jnp.sum(max_pool(x, MASK) * cot)))(X)
        expected = np.zeros_like(X)
        for b in range(4):
            for d in range(5):
                valid = np.flatnonzero(MASK[b])
                if len(valid):
                    expected[b, valid[np.argmax(X[b, valid, d])], d] = cot[b, d]
        np.testing.assert_allclose(grad_max, expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_all_padding_row_gives_zeros_without_nan(self):
        poisoned = np.where(MASK[..., None], X, np.nan).astype(np.float32)
        for fn in (mean_pool, max_pool):
            out = self.variant(fn)(poisoned, MASK)
            np.testing.assert_array_equal(out[2], 0.0)
            assert bool(jnp.all(jnp.isfinite(out)))
            grad = self.variant(jax.grad(lambda x, f=fn: jnp.sum(f(x, MASK))))(poisoned)
            np.testing.assert_array_equal(grad[~MASK], 0.0)


def test_dtype_kept_and_half_precision_sum():
    x = jnp.asarray(X, jnp.bfloat16)
    out = mean_pool(x, MASK)
    assert out.dtype == jnp.bfloat16 and max_pool(x, MASK).dtype == jnp.bfloat16
    ref = _np_mean_pool(np.asarray(x, np.float32), MASK)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=1e-2, atol=1e-2)


def test_check_grads(x64):
    x = jnp.asarray(X, jnp.float64)
    check_grads(jax.jit(lambda v: mean_pool(v, MASK)), (x,), order=2, modes=("fwd", "rev"))
    check_grads(jax.jit(lambda v: max_pool(v, MASK)), (x,), order=1, modes=("fwd", "rev"))


def test_bad_shapes_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"x must have rank 3 \(\[B, T, D\]\)"):
        mean_pool(jnp.ones((4, 6)), MASK)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\] = \(4, 6\)"):
        mean_pool(X, MASK[:, :5])
    with pytest.raises(ValueError, match="mask"):
        jax.jit(max_pool)(X, MASK[None])
    with pytest.raises(ValueError, match="T >= 1"):
        first_token_pool(jnp.ones((2, 0, 3)))


_jit_mean_pool = jax.jit(mean_pool)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=3, max_size=3),
    padding=hnp.arrays(
        np.float32, (3, 6, 4), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)
    ),
)
def test_property_mean_pool_ignores_whatever_sits_in_padding(lengths, padding):
    x = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.arange(6)[None, :] < np.asarray(lengths)[:, None]
    garbage = np.where(mask[..., None], x, padding)
    np.testing.assert_array_equal(_jit_mean_pool(garbage, mask), _jit_mean_pool(x, mask))
    np.testing.assert_allclose(_jit_mean_pool(garbage, mask), _np_mean_pool(x, mask), atol=1e-6)
