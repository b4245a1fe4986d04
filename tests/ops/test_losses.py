"""jaxnn/ops/losses.py against optax and NumPy transcriptions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxnn.ops import l2_penalty, softmax_cross_entropy

RNG = np.random.default_rng(0)
LOGITS = jnp.asarray(RNG.normal(scale=3.0, size=(6, 5)), jnp.float32)
LABELS = jnp.asarray([0, 4, 2, 2, 1, 3], jnp.int32)


def _np_cross_entropy(logits, labels, eps):
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    c = z.shape[-1]
    q = (1 - eps) * np.eye(c)[np.asarray(labels)] + eps / c
    return -(q * log_p).sum(-1)


class CrossEntropyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, 0.1)
    def test_matches_optax_and_numpy(self, eps):
        ours = self.variant(lambda z, y: softmax_cross_entropy(z, y, label_smoothing=eps))

        def theirs(z, y):
            targets = optax.smooth_labels(jax.nn.one_hot(y, 5), eps)
            return optax.softmax_cross_entropy(z, targets)

        loss = ours(LOGITS, LABELS)
        assert loss.shape == (6,) and loss.dtype == jnp.float32
        np.testing.assert_allclose(loss, theirs(LOGITS, LABELS), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss, _np_cross_entropy(LOGITS, LABELS, eps), rtol=1e-5)
        if eps == 0.0:
            ref = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
            np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
        grad = self.variant(jax.grad(lambda z: jnp.sum(ours(z, LABELS))))(LOGITS)
        ref_grad = jax.grad(lambda z: jnp.sum(theirs(z, LABELS)))(LOGITS)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite_and_bf16_loss_is_float32():
    z = jnp.asarray([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], jnp.float32)
    loss = softmax_cross_entropy(z, jnp.asarray([1, 2]))
    np.testing.assert_allclose(loss, [2e4, np.log(3.0)], rtol=1e-6)
    loss16 = softmax_cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS)
    assert loss16.dtype == jnp.float32
    ref = _np_cross_entropy(LOGITS.astype(jnp.bfloat16).astype(jnp.float32), LABELS, 0.0)
    np.testing.assert_allclose(loss16, ref, rtol=1e-5)


def test_label_outside_classes_contributes_only_smoothing():
    labels = jnp.asarray([-1, 5])
    np.testing.assert_array_equal(softmax_cross_entropy(LOGITS[:2], labels), 0.0)
    smooth = softmax_cross_entropy(LOGITS[:2], labels, label_smoothing=0.2)
    log_p = jax.nn.log_softmax(LOGITS[:2])
    np.testing.assert_allclose(smooth, -0.2 / 5 * jnp.sum(log_p, -1), rtol=1e-5)


def test_cross_entropy_check_grads(x64):
    z = jnp.asarray(LOGITS, jnp.float64)
    check_grads(
        jax.jit(lambda v: softmax_cross_entropy(v, LABELS, 0.1)), (z,), 2, modes=("fwd", "rev")
    )


def test_cross_entropy_bad_arguments():
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        softmax_cross_entropy(LOGITS, LABELS[:4])
    with pytest.raises(ValueError, match="integer"):
        softmax_cross_entropy(LOGITS, LABELS.astype(jnp.float32))
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(LOGITS, LABELS, label_smoothing=1.5)


PARAMS = {
    "dense": {"kernel": jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32), "bias": jnp.ones(4)},
    "norm": {"scale": jnp.full((4,), 2.0)},
    "head": [jnp.asarray(RNG.normal(size=(4, 2)), jnp.float32)],
}


def _np_sum_squares(*arrays):
    return sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)


def test_l2_penalty_all_leaves_and_masks(maybe_jit):
    every = _np_sum_squares(*jax.tree.leaves(PARAMS))
    np.testing.assert_allclose(maybe_jit(l2_penalty)(PARAMS), every, rtol=1e-6)
    mask = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "head": [True]}
    expected = _np_sum_squares(PARAMS["dense"]["kernel"], PARAMS["head"][0])
    np.testing.assert_allclose(
        maybe_jit(lambda p: l2_penalty(p, mask))(PARAMS), expected, rtol=1e-6
    )
    # a prefix mask selects whole subtrees; a callable mask is called on params
    prefix = {"dense": True, "norm": False, "head": False}
    np.testing.assert_allclose(
        l2_penalty(PARAMS, prefix), _np_sum_squares(*PARAMS["dense"].values()), rtol=1e-6
    )
    kernels = lambda p: jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", p
    )
    np.testing.assert_allclose(
        l2_penalty(PARAMS, kernels), _np_sum_squares(PARAMS["dense"]["kernel"]), rtol=1e-6
    )
    assert float(l2_penalty(PARAMS, {"dense": False, "norm": False, "head": False})) == 0.0


def test_l2_penalty_gradient_is_2w_on_selected_leaves():
    mask = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": True}, "head": [False]}
    grads = jax.grad(lambda p: l2_penalty(p, mask))(PARAMS)
    np.testing.assert_allclose(grads["dense"]["kernel"], 2 * PARAMS["dense"]["kernel"])
    np.testing.assert_array_equal(grads["dense"]["bias"], 0.0)
    np.testing.assert_allclose(grads["norm"]["scale"], 2 * PARAMS["norm"]["scale"])
    np.testing.assert_array_equal(grads["head"][0], 0.0)


def test_total_loss_is_task_loss_plus_l2_penalty():
    """Loss_total = Loss_task + λ Σ w², and its gradient adds 2λw (optax's add_decayed_weights
    adds λw to the gradient, i.e. the same thing with λ/2)."""
    lam = 0.01
    w = {"kernel": jnp.asarray(RNG.normal(size=(5, 5)), jnp.float32)}

    def total(p):
        return jnp.mean(softmax_cross_entropy(LOGITS @ p["kernel"], LABELS)) + lam * l2_penalty(p)

    def task(p):
        return jnp.mean(softmax_cross_entropy(LOGITS @ p["kernel"], LABELS))

    g_total, g_task = jax.grad(total)(w), jax.grad(task)(w)
    decayed, _ = optax.add_decayed_weights(2 * lam).update(g_task, None, w)
    np.testing.assert_allclose(g_total["kernel"], decayed["kernel"], rtol=1e-5, atol=1e-7)


def test_l2_penalty_mask_mismatch_raises():
    with pytest.raises(ValueError, match="mask"):
        l2_penalty(PARAMS, {"dense": True})
    with pytest.raises(ValueError, match="bools"):
        l2_penalty(PARAMS, {"dense": "yes", "norm": False, "head": False})
