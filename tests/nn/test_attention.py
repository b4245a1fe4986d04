"""jaxnn/nn/attention.py against flax.linen.MultiHeadDotProductAttention with the same weights."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.nn import MultiHeadAttention

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(3, 6, 8)), jnp.float32)
MASK = jnp.asarray([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]], bool)


def _flax_reference(num_heads, qkv_features=None, out_features=None):
    return nn.MultiHeadDotProductAttention(
        num_heads=num_heads, qkv_features=qkv_features, out_features=out_features
    )


def _flax_apply(reference, variables, x, mask):
    return reference.apply(variables, x, mask=mask[:, None, None, :], deterministic=True)


@pytest.mark.parametrize(
    ("impl", "heads", "qkv", "out"),
    [("reference", 2, None, None), ("chunked", 4, 16, 5)],
)
def test_matches_flax_values_and_gradients(random_variables, impl, heads, qkv, out):
    ours = MultiHeadAttention(heads, qkv_features=qkv, out_features=out, attention_impl=impl)
    reference = _flax_reference(heads, qkv, out)
    variables = random_variables(ours, X, MASK, deterministic=True)
    # the same parameter tree: flax's module accepts our variables as they are
    flax_shapes = jax.eval_shape(reference.init, jax.random.key(0), X)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_shapes)
    cot = jnp.asarray(RNG.normal(size=(3, 6, out or 8)), jnp.float32)

    @jax.jit
    def ours_value_and_grad(v, x):
        f = lambda v, x: jnp.sum(ours.apply(v, x, MASK, deterministic=True) * cot)
        return ours.apply(v, x, MASK, deterministic=True), jax.grad(f, (0, 1))(v, x)

    @jax.jit
    def flax_value_and_grad(v, x):
        f = lambda v, x: jnp.sum(_flax_apply(reference, v, x, MASK) * cot)
        return _flax_apply(reference, v, x, MASK), jax.grad(f, (0, 1))(v, x)

    got, g_ours = ours_value_and_grad(variables, X)
    ref, g_ref = flax_value_and_grad(variables, X)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_no_mask_and_padding_invariance(random_variables):
    ours = MultiHeadAttention(2)
    variables = random_variables(ours, X, MASK, deterministic=True)
    reference = _flax_reference(2)
    no_mask = jax.jit(lambda v, x: ours.apply(v, x, deterministic=True))
    np.testing.assert_allclose(
        no_mask(variables, X),
        jax.jit(lambda v, x: reference.apply(v, x, deterministic=True))(variables, X),
        atol=2e-5,
    )
    # padded tokens are never attended to: changing them leaves real positions unchanged
    garbage = jnp.where(MASK[..., None], X, 100.0)
    masked = jax.jit(lambda v, x: ours.apply(v, x, MASK, deterministic=True))
    a = masked(variables, X)
    b = masked(variables, garbage)
    np.testing.assert_allclose(a[np.asarray(MASK)], b[np.asarray(MASK)], rtol=1e-5, atol=1e-5)


def test_key_lengths_equal_the_trailing_padding_mask(random_variables):
    """key_lengths [B] is the [B, T] padding mask of real-tokens-first rows (MASK's rows are);
    float32 exactness at 1e-5 under the suite's highest matmul precision."""
    ours = MultiHeadAttention(2)
    variables = random_variables(ours, X, MASK, deterministic=True)
    lengths = jnp.sum(MASK, axis=1).astype(jnp.int32)
    by_mask = jax.jit(lambda v: ours.apply(v, X, MASK, deterministic=True))(variables)
    by_lengths = jax.jit(lambda v: ours.apply(v, X, key_lengths=lengths, deterministic=True))(
        variables
    )
    np.testing.assert_allclose(by_lengths, by_mask, rtol=1e-5, atol=1e-5)


def test_all_padding_row_gives_the_output_bias(random_variables):
    ours = MultiHeadAttention(2)
    variables = random_variables(ours, X, MASK, deterministic=True)
    mask = MASK.at[2].set(False)
    y = jax.jit(lambda v, m: ours.apply(v, X, m, deterministic=True))(variables, mask)
    expected = jnp.broadcast_to(variables["params"]["out"]["bias"], (6, 8))
    np.testing.assert_allclose(y[2], expected, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(y)))


def test_attention_dropout_uses_the_dropout_stream(random_variables):
    ours = MultiHeadAttention(2, dropout_rate=0.5)
    variables = random_variables(ours, X, MASK, deterministic=True)
    run = jax.jit(
        lambda key, det: ours.apply(variables, X, MASK, deterministic=det, rngs={"dropout": key}),
        static_argnums=1,
    )
    det = run(jax.random.key(0), True)
    a, b = run(jax.random.key(1), False), run(jax.random.key(2), False)
    assert not np.allclose(a, det) and not np.allclose(a, b)
    without = jax.jit(lambda v: MultiHeadAttention(2).apply(v, X, MASK, deterministic=True))
    np.testing.assert_allclose(det, without(variables), rtol=1e-5, atol=1e-6)


def test_dtype_bf16(random_variables):
    ours = MultiHeadAttention(2, dtype=jnp.bfloat16)
    variables = random_variables(ours, X, MASK, deterministic=True)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    y = jax.jit(lambda v: ours.apply(v, X, MASK, deterministic=True))(variables)
    assert y.dtype == jnp.bfloat16
    ref = jax.jit(lambda v: MultiHeadAttention(2).apply(v, X, MASK, deterministic=True))(variables)
    # every matmul rounds its bf16 inputs (relative error eps/2 each, eps = 2^-7) and four of
    # them chain: allow 6 eps relative, and as absolute slack for entries near zero
    tol = 6 * float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=tol, atol=tol)


def test_bad_shapes_raise():
    ours = MultiHeadAttention(3)
    with pytest.raises(ValueError, match="qkv_features=8 must be divisible by num_heads=3"):
        ours.init(jax.random.key(0), X, MASK, deterministic=True)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\] = \(3, 6\)"):
        MultiHeadAttention(2).init(jax.random.key(0), X, MASK[:, :5], deterministic=True)
    with pytest.raises(ValueError, match="x must have rank 3"):
        MultiHeadAttention(2).init(jax.random.key(0), X[0], deterministic=True)


def test_initialization_equals_flax():
    """Parameters are initialized exactly like flax's MultiHeadDotProductAttention (same tree,
    same RNG paths, same initializers), so a flax checkpoint and ours are interchangeable."""
    x = jnp.ones((2, 5, 16))
    ours = MultiHeadAttention(num_heads=4).init(jax.random.key(3), x, deterministic=True)
    theirs = nn.MultiHeadDotProductAttention(num_heads=4).init(jax.random.key(3), x)
    chex.assert_trees_all_equal(ours, theirs)
