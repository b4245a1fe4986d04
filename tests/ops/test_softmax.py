"""jaxnn/ops/softmax.py against jax.nn and NumPy; hypothesis properties; softmax vs z-scoring."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxnn.ops import log_softmax, softmax, standardize


def _np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _logits(seed=0, shape=(3, 4, 9), scale=4.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(np.float32)


COT = jnp.asarray(_logits(1))


class SoftmaxReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(-1, 0, 1)
    def test_matches_jax_nn_and_numpy(self, axis):
        x = jnp.asarray(_logits())
        for ours, theirs in ((softmax, jax.nn.softmax), (log_softmax, jax.nn.log_softmax)):
            got = self.variant(lambda v, f=ours: f(v, axis=axis))(x)
            np.testing.assert_allclose(got, theirs(x, axis=axis), rtol=1e-5, atol=1e-6)
            grad = self.variant(jax.grad(lambda v, f=ours: jnp.sum(f(v, axis=axis) * COT)))(x)
            ref = jax.grad(lambda v, f=theirs: jnp.sum(f(v, axis=axis) * COT))(x)
            np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            self.variant(lambda v: softmax(v, axis=axis))(x),
            _np_softmax(np.asarray(x, np.float64), axis),
            rtol=1e-5,
            atol=1e-7,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_where_matches_jax_nn_on_unmasked_entries(self):
        x = jnp.asarray(_logits(2, (4, 6)))
        where = jnp.asarray(np.random.default_rng(3).random((4, 6)) > 0.4).at[:, 0].set(True)
        got = self.variant(lambda v, w: softmax(v, where=w))(x, where)
        np.testing.assert_allclose(got, jax.nn.softmax(x, where=where), rtol=1e-5, atol=1e-7)
        got_log = self.variant(lambda v, w: log_softmax(v, where=w))(x, where)
        ref_log = jax.nn.log_softmax(x, where=where)
        np.testing.assert_allclose(got_log[where], ref_log[where], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got_log[~where], 0.0)
        # masked entries carry no gradient even when they hold huge values
        big = jnp.where(where, x, 1e30)
        grad = self.variant(jax.grad(lambda v, w: jnp.sum(softmax(v, where=w) ** 2)))(big, where)
        ref = jax.grad(lambda v: jnp.sum(jax.nn.softmax(v, where=where) ** 2))(x)
        np.testing.assert_array_equal(grad[~where], 0.0)
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_fully_masked_row_gives_zeros_in_value_and_gradient(maybe_jit, fn):
    x = jnp.asarray(_logits(4, (3, 5)))
    where = jnp.asarray([[True] * 5, [False] * 5, [True, False, True, False, False]])
    value = maybe_jit(lambda v: fn(v, where=where))(x)
    grad = maybe_jit(jax.grad(lambda v: jnp.sum(jnp.sin(fn(v, where=where)))))(x)
    np.testing.assert_array_equal(value[1], 0.0)
    np.testing.assert_array_equal(grad[1], 0.0)
    assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(grad)))
    # a row of -inf logits (the other way to mask) has probabilities 0 (log 0 = -inf, as
    # jax.nn.log_softmax) and a zero gradient
    neg = jnp.full((2, 4), -jnp.inf)
    expected = 0.0 if fn is softmax else -np.inf
    np.testing.assert_array_equal(maybe_jit(fn)(neg), expected)
    np.testing.assert_array_equal(maybe_jit(jax.grad(lambda v: jnp.sum(softmax(v))))(neg), 0.0)


def test_large_logits_do_not_overflow(maybe_jit):
    x = jnp.asarray([[1e4, 1e4 - 1.0, -1e4], [88.0, 89.0, 90.0]], jnp.float32)
    got = maybe_jit(softmax)(x)
    np.testing.assert_allclose(got, _np_softmax(np.asarray(x, np.float64)), rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(maybe_jit(log_softmax)(x))))


def test_half_precision_dtype_kept_statistics_float32():
    x = jnp.asarray(_logits(5, (4, 300)), jnp.bfloat16)
    got = softmax(x)
    assert got.dtype == jnp.bfloat16
    ref = jax.nn.softmax(x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=1e-2, atol=1e-4)
    assert standardize(x).dtype == jnp.bfloat16 and log_softmax(x).dtype == jnp.bfloat16


@pytest.mark.parametrize("fn", [softmax, log_softmax], ids=["softmax", "log_softmax"])
def test_bf16_results_are_the_float32_results_rounded_once(fn):
    """With float32 statistics (max, exp, sum, log) the only bf16 rounding is the final one,
    so the output equals the float64 result rounded to bf16 (a tie, or a float32 error
    crossing a rounding boundary, is rare: at most 1 % of entries may differ by one ulp).
    With the statistics in bf16, exp, the sum and the quotient each round to 8 bits and
    about three quarters of the entries come out one ulp or more off."""
    x = jnp.asarray(_logits(11, (64, 512), scale=3.0), jnp.bfloat16)
    exact = np.asarray(x, np.float64)
    exact = exact - exact.max(-1, keepdims=True)
    total = np.exp(exact).sum(-1, keepdims=True)
    want = np.exp(exact) / total if fn is softmax else exact - np.log(total)
    want = np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16))
    got = np.asarray(fn(x))
    assert got.dtype == jnp.bfloat16
    assert np.mean(got == want) >= 0.99


def test_float16_row_longer_than_float16_range_sums_in_float32():
    """70,000 equal logits: their exp sum, 70,000, overflows float16 (max 65,504), so a float16
    computation gives 1/inf = 0 everywhere; float32 statistics give 1/70000 (a float16
    subnormal, 1.43e-5) in every entry, summing to 1 within float16's subnormal spacing."""
    x = jnp.zeros((70_000,), jnp.float16)
    got = np.asarray(softmax(x), np.float64)
    np.testing.assert_allclose(got, 1 / 70_000, rtol=0.05)  # subnormal spacing 6e-8: 4 %
    assert np.all(np.isfinite(np.asarray(log_softmax(x), np.float32)))
    np.testing.assert_allclose(np.asarray(log_softmax(x), np.float32), -np.log(70_000), rtol=1e-3)


def test_check_grads(x64):
    x = jnp.asarray(_logits(6, (3, 5)), jnp.float64)
    where = jnp.asarray([[True, True, False, True, True]] * 3)
    check_grads(jax.jit(softmax), (x,), order=2, modes=("rev",))
    for fn in (softmax, log_softmax):
        check_grads(jax.jit(lambda v, f=fn: f(v, where=where)), (x,), order=1, modes=("rev",))
    check_grads(jax.jit(standardize), (x,), order=1, modes=("fwd", "rev"))


def test_standardize_matches_numpy(maybe_jit):
    x = _logits(7, (5, 11)).astype(np.float64)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(maybe_jit(standardize)(jnp.asarray(x, jnp.float32)), ref, rtol=1e-5)
    ref0 = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    got0 = maybe_jit(lambda v: standardize(v, axis=0, eps=1e-3))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got0, ref0, rtol=1e-5, atol=1e-6)


def test_softmax_is_not_z_scoring():
    """Softmax normalizes logits into probabilities, which is not z-scoring."""
    z = jnp.asarray([2.0, 1.0, 0.1, -1.0])
    p, s = softmax(z), standardize(z)
    # softmax: a distribution (positive, sums to 1), mean 1/C, not variance 1
    assert bool(jnp.all(p > 0)) and float(jnp.sum(p)) == pytest.approx(1.0, abs=1e-6)
    assert float(jnp.var(p)) < 0.5
    # z-score: mean 0, variance 1, negative entries, does not sum to 1
    assert float(jnp.mean(s)) == pytest.approx(0.0, abs=1e-6)
    assert float(jnp.var(s)) == pytest.approx(1.0, abs=1e-5)
    assert bool(jnp.any(s < 0)) and abs(float(jnp.sum(s)) - 1.0) > 0.5
    # both ignore a shift; only z-scoring ignores a scale
    np.testing.assert_allclose(softmax(z + 7.0), p, rtol=1e-5)
    np.testing.assert_allclose(standardize(z + 7.0), s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(standardize(3.0 * z), s, rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(softmax(3.0 * z) - p))) > 0.1
    # ... and softmax keeps the order but not the z-scores
    assert list(np.argsort(p)) == list(np.argsort(s))
    assert float(jnp.max(jnp.abs(p - s))) > 0.5


def test_bad_arguments_raise():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="axis=2"):
        softmax(x, axis=2)
    with pytest.raises(ValueError, match=r"where has shape \(3, 2\)"):
        softmax(x, where=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="eps"):
        standardize(x, eps=-1.0)


_jit_softmax = jax.jit(softmax)


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5),
        elements=st.floats(-60, 60, width=32),
    )
)
def test_property_softmax_is_a_distribution(x):
    p = np.asarray(_jit_softmax(x), np.float64)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    # strictly inside (0, 1) while float32 can tell e^-spread apart from 0 and 1 - e^-spread
    # from 1 (e^-15 = 3e-7 > float32 epsilon / 2)
    spread = x.max(-1, keepdims=True) - x.min(-1, keepdims=True)
    if x.shape[-1] > 1 and np.all(spread < 15):
        assert np.all(p > 0) and np.all(p < 1)
