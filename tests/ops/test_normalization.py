"""jaxnn/ops/normalization.py against flax.linen (LayerNorm, RMSNorm, BatchNorm) and NumPy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxnn.ops import batch_norm, layer_norm, rms_norm

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(loc=1.5, scale=2.0, size=(3, 5, 6)), jnp.float32)
SCALE = jnp.asarray(RNG.normal(size=6) + 1.0, jnp.float32)
BIAS = jnp.asarray(RNG.normal(size=6), jnp.float32)
RUNNING_MEAN = jnp.asarray(RNG.normal(size=6), jnp.float32)
RUNNING_VAR = jnp.asarray(RNG.random(6) + 0.5, jnp.float32)
COTANGENT = jnp.asarray(RNG.normal(size=(3, 5, 6)), jnp.float32)
MASK = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)  # [B, T]


def _flax_apply(module, params, x, **kwargs):
    return module.apply(params, x, **kwargs)


def _grads(fn, *args):
    """Gradients of <fn(*args), COTANGENT> with respect to every argument."""
    return jax.grad(
        lambda *a: jnp.sum(fn(*a) * COTANGENT[..., : a[0].shape[-1]]), range(len(args))
    )(*args)


class PerSampleNormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_layer_norm_matches_flax_values_and_gradients(self):
        module = nn.LayerNorm(epsilon=1e-6)
        params = {"params": {"scale": SCALE, "bias": BIAS}}
        ours = self.variant(lambda x, s, b: layer_norm(x, s, b, eps=1e-6))
        np.testing.assert_allclose(ours(X, SCALE, BIAS), module.apply(params, X), atol=2e-5)

        def theirs(x, s, b):
            return module.apply({"params": {"scale": s, "bias": b}}, x)

        for g, r in zip(
            self.variant(lambda *a: _grads(layer_norm, *a))(X, SCALE, BIAS),
            _grads(theirs, X, SCALE, BIAS),
        ):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_layer_norm_matches_numpy(self):
        x = np.asarray(X, np.float64)
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        ref = (x - mean) / np.sqrt(var + 1e-3) * np.asarray(SCALE) + np.asarray(BIAS)
        got = self.variant(lambda v: layer_norm(v, SCALE, BIAS, eps=1e-3))(X)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        no_affine = self.variant(lambda v: layer_norm(v, None, None, eps=1e-3))(X)
        np.testing.assert_allclose(no_affine, (x - mean) / np.sqrt(var + 1e-3), atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rms_norm_matches_flax_and_numpy(self):
        module = nn.RMSNorm(epsilon=1e-6)
        got = self.variant(lambda v, s: rms_norm(v, s))(X, SCALE)
        np.testing.assert_allclose(got, module.apply({"params": {"scale": SCALE}}, X), atol=2e-5)
        x = np.asarray(X, np.float64)
        ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * np.asarray(SCALE)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

        def theirs(x, s):
            return module.apply({"params": {"scale": s}}, x)

        for g, r in zip(
            self.variant(lambda *a: _grads(rms_norm, *a))(X, SCALE), _grads(theirs, X, SCALE)
        ):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def _flax_batch_norm(x, mask=None, train=True, running=(RUNNING_MEAN, RUNNING_VAR)):
    module = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    variables = {
        "params": {"scale": SCALE, "bias": BIAS},
        "batch_stats": {"mean": running[0], "var": running[1]},
    }
    y, updates = module.apply(variables, x, mask=mask, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    return y, (stats["mean"], stats["var"])


class BatchNormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(True, False)
    def test_matches_flax_including_running_averages(self, train):
        ours = self.variant(
            lambda x, m, v: batch_norm(x, SCALE, BIAS, m, v, train=train, momentum=0.9, eps=1e-5)
        )
        y, (mean, var) = ours(X, RUNNING_MEAN, RUNNING_VAR)
        ref_y, (ref_mean, ref_var) = _flax_batch_norm(X, train=train)
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, ref_var, rtol=1e-5, atol=1e-6)

        # gradients of the output with respect to x, scale and bias
        def theirs(x, s, b):
            module = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
            variables = {
                "params": {"scale": s, "bias": b},
                "batch_stats": {"mean": RUNNING_MEAN, "var": RUNNING_VAR},
            }
            return module.apply(variables, x, mutable=["batch_stats"])[0]

        def ours_y(x, s, b):
            return batch_norm(x, s, b, RUNNING_MEAN, RUNNING_VAR, train=train)[0]

        for g, r in zip(
            self.variant(lambda *a: _grads(ours_y, *a))(X, SCALE, BIAS),
            _grads(theirs, X, SCALE, BIAS),
        ):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_equals_flax_on_only_the_unmasked_rows(self):
        ours = self.variant(
            lambda x, mask: batch_norm(
                x, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True, mask=mask
            )
        )
        y, (mean, var) = ours(X, MASK)  # mask [B, T]
        rows = X[np.asarray(MASK)]  # [n, D], the real tokens only
        ref_y, (ref_mean, ref_var) = _flax_batch_norm(rows)
        np.testing.assert_allclose(y[np.asarray(MASK)], ref_y, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, ref_var, rtol=1e-5, atol=1e-6)
        # the [B, T, 1] form and flax's own mask argument agree
        y3, stats3 = ours(X, MASK[..., None])
        np.testing.assert_allclose(y3, y, rtol=1e-6)
        flax_y, flax_stats = _flax_batch_norm(X, mask=MASK[..., None])
        np.testing.assert_allclose(y3, flax_y, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(stats3[1], flax_stats[1], rtol=1e-5, atol=1e-6)

    def test_padding_never_moves_the_statistics_or_the_gradient(self):
        garbage = jnp.where(MASK[..., None], X, 1e6)

        def run(x):
            return batch_norm(x, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True, mask=MASK)

        y_a, stats_a = run(X)
        y_b, stats_b = run(garbage)
        np.testing.assert_allclose(stats_a, stats_b, rtol=1e-6)
        np.testing.assert_allclose(y_a[np.asarray(MASK)], y_b[np.asarray(MASK)], rtol=1e-5)
        grad = jax.grad(lambda x: jnp.sum(run(x)[0] * MASK[..., None] * COTANGENT))(garbage)
        np.testing.assert_array_equal(grad[~np.asarray(MASK)], 0.0)
        assert bool(jnp.all(jnp.isfinite(grad)))

    def test_axis_name_gives_exact_global_statistics_with_uneven_shards(self):
        # 3 "devices" (vmap with an axis name), one example each, 3, 5 and 1 real tokens:
        # the psum of masked sums and counts equals the unsharded statistics exactly.
        def one_device(x, mask):
            return batch_norm(
                x, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True, mask=mask, axis_name="d"
            )

        y_sharded, (mean_s, var_s) = jax.vmap(one_device, axis_name="d")(X[:, None], MASK[:, None])
        y, (mean, var) = batch_norm(
            X, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True, mask=MASK
        )
        np.testing.assert_allclose(y_sharded[:, 0], y, rtol=1e-5, atol=1e-6)
        for d in range(3):
            np.testing.assert_allclose(mean_s[d], mean, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(var_s[d], var, rtol=1e-6, atol=1e-7)
        # flax's pmean of per-device means is not the global mean here (a check that the
        # uneven split matters)
        flax_mean = np.mean([np.asarray(X[d][np.asarray(MASK[d])]).mean(0) for d in range(3)], 0)
        exact = np.asarray(X)[np.asarray(MASK)].mean(0)
        assert np.max(np.abs(flax_mean - exact)) > 1e-2
        np.testing.assert_allclose((mean - 0.9 * RUNNING_MEAN) / 0.1, exact, rtol=1e-4, atol=1e-5)

    def test_eval_uses_running_statistics(self):
        x = np.asarray(X, np.float64)
        y, stats = batch_norm(X, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=False)
        ref = (x - np.asarray(RUNNING_MEAN)) / np.sqrt(np.asarray(RUNNING_VAR) + 1e-5)
        np.testing.assert_allclose(
            y, ref * np.asarray(SCALE) + np.asarray(BIAS), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(stats[0], RUNNING_MEAN)
        np.testing.assert_array_equal(stats[1], RUNNING_VAR)

    def test_numpy_transcription_biased_variance_and_momentum(self):
        x = np.asarray(X, np.float64).reshape(-1, 6)
        y, (mean, var) = batch_norm(
            X, None, None, RUNNING_MEAN, RUNNING_VAR, train=True, momentum=0.8
        )
        mu, sigma2 = x.mean(0), x.var(0)  # ddof=0: the biased variance, as flax
        np.testing.assert_allclose(
            y.reshape(-1, 6), (x - mu) / np.sqrt(sigma2 + 1e-5), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(mean, 0.8 * np.asarray(RUNNING_MEAN) + 0.2 * mu, rtol=1e-5)
        np.testing.assert_allclose(var, 0.8 * np.asarray(RUNNING_VAR) + 0.2 * sigma2, rtol=1e-5)

    def test_empty_batch_keeps_running_statistics(self):
        empty = jnp.zeros(MASK.shape, bool)
        y, (mean, var) = batch_norm(
            X, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True, mask=empty
        )
        np.testing.assert_array_equal(mean, RUNNING_MEAN)
        np.testing.assert_array_equal(var, RUNNING_VAR)
        assert bool(jnp.all(jnp.isfinite(y)))


def test_half_precision_statistics_in_float32():
    x16 = (X * 3.0 + 100.0).astype(jnp.bfloat16)
    x32 = x16.astype(jnp.float32)  # the same values, exactly
    y16, (mean16, var16) = batch_norm(x16, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True)
    y32, (mean32, var32) = batch_norm(x32, SCALE, BIAS, RUNNING_MEAN, RUNNING_VAR, train=True)
    assert y16.dtype == jnp.bfloat16 and mean16.dtype == jnp.float32
    np.testing.assert_allclose(mean16, mean32, rtol=1e-6)
    np.testing.assert_allclose(var16, var32, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=1e-2, atol=2e-2)
    for fn in (lambda v: layer_norm(v, SCALE, BIAS), lambda v: rms_norm(v, SCALE)):
        out16 = fn(x16)
        assert out16.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out16, np.float32), fn(x32), rtol=1e-2, atol=2e-2)


def test_variance_clipped_at_zero_and_constant_features():
    # constant features: variance exactly 0, output = bias, no NaN
    const = jnp.full((4, 6), 3.0)
    y, (_, var) = batch_norm(
        const, SCALE, BIAS, jnp.zeros(6), jnp.ones(6), train=True, momentum=0.0
    )
    np.testing.assert_array_equal(var, 0.0)
    np.testing.assert_allclose(y, jnp.broadcast_to(BIAS, (4, 6)), atol=1e-6)
    # |mean| >> std in float32: E[x²] - E[x]² rounds below zero; the result stays >= 0
    big = jnp.asarray(1e4 + RNG.normal(scale=1e-3, size=(512, 6)), jnp.float32)
    _, (_, var) = batch_norm(big, None, None, jnp.zeros(6), jnp.ones(6), train=True, momentum=0.0)
    assert bool(jnp.all(var >= 0)) and bool(jnp.all(jnp.isfinite(var)))
    np.testing.assert_allclose(layer_norm(const, None, None), 0.0)


def test_check_grads(x64):
    x = jnp.asarray(np.asarray(X, np.float64))
    s, b = jnp.asarray(SCALE, jnp.float64), jnp.asarray(BIAS, jnp.float64)
    m, v = jnp.asarray(RUNNING_MEAN, jnp.float64), jnp.asarray(RUNNING_VAR, jnp.float64)
    check_grads(jax.jit(lambda *a: layer_norm(*a)), (x, s, b), order=1, modes=("fwd", "rev"))
    check_grads(jax.jit(lambda *a: rms_norm(*a)), (x, s), order=1, modes=("fwd", "rev"))
    check_grads(
        jax.jit(lambda x, s, b: batch_norm(x, s, b, m, v, train=True, mask=MASK)[0]),
        (x, s, b),
        order=1,
        modes=("fwd", "rev"),
    )


def test_bad_shapes_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"scale must have shape \[F\] = \(6,\)"):
        layer_norm(X, jnp.ones(5), BIAS)
    with pytest.raises(ValueError, match="bias"):
        layer_norm(X, SCALE, jnp.ones((1, 6)))
    with pytest.raises(ValueError, match="x must have rank >= 1"):
        rms_norm(jnp.float32(1.0), None)
    with pytest.raises(ValueError, match="x must have rank >= 2"):
        batch_norm(jnp.ones(6), None, None, RUNNING_MEAN, RUNNING_VAR, train=True)
    with pytest.raises(ValueError, match="running_var"):
        batch_norm(X, None, None, RUNNING_MEAN, jnp.ones(4), train=True)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
        batch_norm(X, None, None, RUNNING_MEAN, RUNNING_VAR, train=True, mask=MASK[:, :4])
    with pytest.raises(ValueError, match="momentum"):
        batch_norm(X, None, None, RUNNING_MEAN, RUNNING_VAR, train=True, momentum=1.5)
    # raised at trace time, under jit
    with pytest.raises(ValueError, match="scale"):
        jax.jit(lambda x: layer_norm(x, jnp.ones(3), None))(X)


_jit_layer_norm = jax.jit(lambda x: layer_norm(x, None, None, eps=1e-6))


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([2, 8, 32])),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
@example(x=np.linspace(-3.0, 5.0, 16, dtype=np.float32).reshape(2, 8))
def test_property_layer_norm_rows_have_mean_0_and_variance_1(x):
    y = np.asarray(_jit_layer_norm(x), np.float64)
    x64 = x.astype(np.float64)
    var = x64.var(-1)
    # any row: finite, and a z-score entry is at most sqrt(D - 1) in size
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= np.sqrt(x.shape[-1]) + 1e-3)
    # rows whose spread float32 resolves (std >= 1e-3 · max|x|; below that, rounding the mean
    # to float32 already moves every entry by up to 6e-8 · max|x|): mean 0, variance
    # σ² / (σ² + ε), i.e. 1 unless σ² is comparable to ε
    good = np.sqrt(var) >= 1e-3 * np.abs(x64).max(-1)
    np.testing.assert_allclose(y.mean(-1)[good], 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(-1)[good], (var / (var + 1e-6))[good], rtol=1e-3, atol=1e-4)
