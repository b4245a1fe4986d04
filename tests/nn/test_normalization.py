"""jaxnn/nn/normalization.py against flax.linen LayerNorm, RMSNorm, BatchNorm (same variables)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.nn import BatchNorm, LayerNorm, RMSNorm, apply_norm, make_norm
from tests.nn.conftest import make_random_variables

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(loc=2.0, scale=3.0, size=(3, 5, 4)), jnp.float32)
MASK = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(LayerNorm(), nn.LayerNorm(epsilon=1e-6)), (RMSNorm(), nn.RMSNorm(epsilon=1e-6))],
)
def test_per_sample_norms_match_flax(ours, theirs):
    variables = make_random_variables(ours, X)
    assert jax.tree.structure(variables) == jax.tree.structure(theirs.init(jax.random.key(0), X))
    np.testing.assert_allclose(
        jax.jit(ours.apply)(variables, X), theirs.apply(variables, X), rtol=1e-5, atol=2e-5
    )
    g_ours = jax.grad(lambda v: jnp.sum(jnp.sin(ours.apply(v, X))))(variables)
    g_theirs = jax.grad(lambda v: jnp.sum(jnp.sin(theirs.apply(v, X))))(variables)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # the uniform call changes nothing for per-sample norms
    np.testing.assert_array_equal(
        ours.apply(variables, X, mask=MASK, train=True), ours.apply(variables, X)
    )


def test_batch_norm_matches_flax_over_training_steps_and_eval():
    ours = BatchNorm(momentum=0.8, epsilon=1e-5)
    theirs = nn.BatchNorm(momentum=0.8, epsilon=1e-5)
    v_ours = ours.init(jax.random.key(0), X, use_running_average=False)
    v_theirs = theirs.init(jax.random.key(0), X, use_running_average=False)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    # init does not move the running statistics (as flax)
    np.testing.assert_array_equal(v_ours["batch_stats"]["mean"], 0.0)
    np.testing.assert_array_equal(v_ours["batch_stats"]["var"], 1.0)
    params = make_random_variables(ours, X, use_running_average=False)["params"]
    v_ours = {"params": params, "batch_stats": v_ours["batch_stats"]}
    v_theirs = dict(v_ours)
    step = jax.jit(
        lambda v, x: ours.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    )
    for i in range(3):
        x = X * (i + 1) + i
        y, upd = step(v_ours, x)
        ref_y, ref_upd = theirs.apply(
            v_theirs, x, use_running_average=False, mutable=["batch_stats"]
        )
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=3e-5)
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                upd["batch_stats"][name], ref_upd["batch_stats"][name], rtol=1e-5, atol=1e-5
            )
        v_ours = {"params": params, **upd}
        v_theirs = {"params": params, **ref_upd}
    y_eval = ours.apply(v_ours, X, use_running_average=True)
    np.testing.assert_allclose(
        y_eval, theirs.apply(v_theirs, X, use_running_average=True), rtol=1e-5, atol=3e-5
    )
    # train=... is the same as use_running_average=not train
    np.testing.assert_array_equal(ours.apply(v_ours, X, train=False), y_eval)
    # gradients in training mode
    g_ours = jax.grad(
        lambda p: jnp.sum(jnp.sin(step({"params": p, "batch_stats": v_ours["batch_stats"]}, X)[0]))
    )(params)
    g_theirs = jax.grad(
        lambda p: jnp.sum(
            jnp.sin(
                theirs.apply(
                    {"params": p, "batch_stats": v_ours["batch_stats"]},
                    X,
                    use_running_average=False,
                    mutable=["batch_stats"],
                )[0]
            )
        )
    )(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_masked_batch_norm_equals_flax_on_the_real_rows_only():
    ours = BatchNorm()
    variables = make_random_variables(ours, X, use_running_average=False)
    y, upd = ours.apply(variables, X, train=True, mask=MASK, mutable=["batch_stats"])
    rows = X[np.asarray(MASK)]
    ref_y, ref_upd = nn.BatchNorm(momentum=0.9, epsilon=1e-5).apply(
        variables, rows, use_running_average=False, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y[np.asarray(MASK)], ref_y, rtol=1e-5, atol=3e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(
            upd["batch_stats"][name], ref_upd["batch_stats"][name], rtol=1e-5, atol=1e-6
        )


def test_batch_norm_axis_name_across_mapped_devices():
    ours = BatchNorm(axis_name="devices")
    variables = ours.init(jax.random.key(0), X, use_running_average=False)

    def per_device(x, mask):
        return ours.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])

    y_mapped, upd_mapped = jax.vmap(per_device, axis_name="devices")(X[:, None], MASK[:, None])
    y, upd = BatchNorm().apply(variables, X, train=True, mask=MASK, mutable=["batch_stats"])
    np.testing.assert_allclose(y_mapped[:, 0], y, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        for d in range(3):
            np.testing.assert_allclose(
                upd_mapped["batch_stats"][name][d], upd["batch_stats"][name], rtol=1e-5, atol=1e-6
            )


def test_dtype_bf16_params_and_stats_float32():
    for module in (
        LayerNorm(dtype=jnp.bfloat16),
        RMSNorm(dtype=jnp.bfloat16),
        BatchNorm(dtype=jnp.bfloat16),
    ):
        variables = module.init(jax.random.key(0), X, train=False)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
        y = module.apply(variables, X, train=False)
        assert y.dtype == jnp.bfloat16


def test_make_norm_and_apply_norm():
    assert isinstance(make_norm("layer"), LayerNorm)
    assert isinstance(make_norm("rms", epsilon=1e-3), RMSNorm)
    assert make_norm("batch", momentum=0.5).momentum == 0.5
    with pytest.raises(ValueError, match=r"'group'.*layer, batch, rms"):
        make_norm("group")

    class Block(nn.Module):
        norm: str

        @nn.compact
        def __call__(self, x, mask, train):
            return apply_norm(make_norm(self.norm), x, mask=mask, train=train)

    for name in ("layer", "batch", "rms"):
        block = Block(name)
        variables = block.init(jax.random.key(0), X, MASK, False)
        y, upd = block.apply(variables, X, MASK, True, mutable=["batch_stats"])
        assert y.shape == X.shape
        assert ("batch_stats" in upd) == (name == "batch")
    with pytest.raises(ValueError, match="exactly one of use_running_average or train"):
        BatchNorm().init(jax.random.key(0), X)
