"""jaxnn/nn/transformer.py against the same pre-LN block composed from flax.linen modules."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.nn import TransformerEncoderBlock
from tests.nn.conftest import make_random_variables

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(3, 6, 8)), jnp.float32)
MASK = jnp.asarray([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]], bool)
FLAX_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def _variables(norm, activation):
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, norm=norm, activation=activation)
    return make_random_variables(block, X, MASK, train=False)


def _flax_block(variables, x, mask, norm, activation, train):
    """x + Attn(Norm1(x)); x + MLP(Norm2(x)), each piece a flax.linen module."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    new_stats = {}

    def apply_norm(name, h):
        if norm == "layer":
            return nn.LayerNorm(epsilon=1e-6).apply({"params": params[name]}, h)
        if norm == "rms":
            return nn.RMSNorm(epsilon=1e-6).apply({"params": params[name]}, h)
        out, upd = nn.BatchNorm(momentum=0.9, epsilon=1e-5).apply(
            {"params": params[name], "batch_stats": stats[name]},
            h,
            use_running_average=not train,
            mask=mask[..., None],
            mutable=["batch_stats"],
        )
        new_stats[name] = upd["batch_stats"]
        return out

    h = apply_norm("norm_1", x)
    h = nn.MultiHeadDotProductAttention(num_heads=2).apply(
        {"params": params["attention"]}, h, mask=mask[:, None, None, :], deterministic=True
    )
    x = x + h
    h = apply_norm("norm_2", x)
    h = nn.Dense(16).apply({"params": params["mlp"]["Dense_0"]}, h)
    h = FLAX_ACTIVATIONS[activation](h)
    h = nn.Dense(8).apply({"params": params["mlp"]["Dense_1"]}, h)
    return x + h, new_stats


@pytest.mark.parametrize(
    ("norm", "activation"), [("layer", "gelu"), ("rms", "relu"), ("batch", "tanh")]
)
def test_matches_flax_composition_and_ignores_padding(norm, activation):
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, norm=norm, activation=activation)
    variables = _variables(norm, activation)
    cot = jnp.asarray(RNG.normal(size=X.shape), jnp.float32)

    @jax.jit
    def ours(v, x):
        def loss(p):
            y, upd = block.apply({**v, "params": p}, x, MASK, train=True, mutable=["batch_stats"])
            return jnp.sum(y * cot), (y, upd.get("batch_stats", {}))

        return jax.grad(loss, has_aux=True)(v["params"])

    @jax.jit
    def reference(v, x):
        def loss(p):
            y, stats = _flax_block({**v, "params": p}, x, MASK, norm, activation, train=True)
            return jnp.sum(y * cot), (y, stats)

        return jax.grad(loss, has_aux=True)(v["params"])

    g_ours, (y, stats) = ours(variables, X)
    g_ref, (ref_y, ref_stats) = reference(variables, X)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    assert jax.tree.structure(stats) == jax.tree.structure(ref_stats)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats)):  # batch norm only
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

    # real positions (and batch statistics) do not depend on what padded positions hold
    _, (y_garbage, stats_garbage) = ours(variables, jnp.where(MASK[..., None], X, 1e3))
    keep = np.asarray(MASK)
    np.testing.assert_allclose(y_garbage[keep], y[keep], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_garbage), jax.tree.leaves(stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    if norm == "batch":  # evaluation: running statistics
        trained = {**variables, "batch_stats": stats}
        y_eval = jax.jit(lambda v: block.apply(v, X, MASK, train=False))(trained)
        ref_eval = jax.jit(lambda v: _flax_block(v, X, MASK, norm, activation, False)[0])(trained)
        np.testing.assert_allclose(y_eval, ref_eval, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, dropout_rate=0.3)
    variables = _variables("layer", "gelu")
    run = jax.jit(
        lambda key, train: block.apply(variables, X, MASK, train=train, rngs={"dropout": key}),
        static_argnums=1,
    )
    # evaluation: deterministic, whatever the key
    np.testing.assert_array_equal(run(jax.random.key(0), False), run(jax.random.key(1), False))
    a, b = run(jax.random.key(1), True), run(jax.random.key(2), True)
    assert not np.allclose(a, b) and not np.allclose(a, run(jax.random.key(1), False))


def test_attention_dropout_is_its_own_rate():
    """attention_dropout_rate defaults to dropout_rate and can be set apart; the blocked kernel
    drops attention weights exactly as the reference does (same masks, same result)."""
    variables = _variables("layer", "gelu")
    key = jax.random.key(3)

    def run(impl="chunked", **kwargs):
        block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, attention_impl=impl, **kwargs)
        return block.apply(variables, X, MASK, train=True, rngs={"dropout": key})

    inherited = run(dropout_rate=0.3)  # 0.3 on the attention weights too
    np.testing.assert_allclose(inherited, run("reference", dropout_rate=0.3), rtol=1e-5, atol=1e-5)
    dropped = run(dropout_rate=0.3, attention_dropout_rate=0.0)
    reference = run("reference", dropout_rate=0.3, attention_dropout_rate=0.0)
    np.testing.assert_allclose(dropped, reference, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dropped, inherited)
    assert not np.allclose(dropped, run(dropout_rate=0.0))


def test_bf16_and_bad_input():
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, dtype=jnp.bfloat16)
    variables = _variables("layer", "gelu")
    # computation in bf16; the residual stream keeps the dtype of x
    f32 = jax.eval_shape(lambda: block.apply(variables, X, MASK, train=False))
    assert f32.dtype == jnp.float32
    y = jax.jit(lambda v, x: block.apply(v, x, MASK, train=False))(
        variables, X.astype(jnp.bfloat16)
    )
    assert y.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))  # values: see the MHA/MLP tests
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        block.apply(variables, X, MASK[:, :3], train=False)
    with pytest.raises(ValueError, match="norm='group'"):
        TransformerEncoderBlock(num_heads=2, mlp_dim=16, norm="group").init(
            jax.random.key(0), X, MASK, train=False
        )
