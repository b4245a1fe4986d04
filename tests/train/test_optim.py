"""jaxnn/train/optim.py against Optax's own aliases and NumPy transcriptions of the formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn.train.config import base_config
from jaxnn.train.optim import (
    HYPERPARAMETERS,
    decay_mask,
    get_hyperparams,
    l2_loss,
    make_optimizer,
    make_schedule,
    set_hyperparams,
)


def _optim(**overrides):
    optim = base_config().optim.to_dict()
    optim.update(schedule="constant", warmup_steps=0)
    optim.update(overrides)
    return optim


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embed": {"embedding": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)},
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        },
        "norm": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
        "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
    }


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _run(tx, params, steps=4):
    state = tx.init(params)
    for t in range(steps):
        updates, state = tx.update(_grads(params, t + 10), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_decay_mask_marks_kernels_only():
    mask = decay_mask(_params())
    assert mask["dense"]["kernel"] and mask["head"]["kernel"]
    assert not mask["dense"]["bias"]
    assert not mask["norm"]["scale"] and not mask["norm"]["bias"]
    assert not mask["embed"]["embedding"]


def test_l2_loss_is_lambda_sum_of_squared_kernels():
    params = _params()
    expected = 0.01 * (
        np.sum(np.square(params["dense"]["kernel"])) + np.sum(np.square(params["head"]["kernel"]))
    )
    np.testing.assert_allclose(l2_loss(params, 0.01), expected, rtol=1e-6)


def test_l2_gradient_is_two_lambda_w_on_kernels_and_zero_elsewhere():
    params = _params()
    grads = jax.grad(lambda p: l2_loss(p, 0.05))(params)
    np.testing.assert_allclose(grads["dense"]["kernel"], 0.1 * params["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(grads["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(grads["norm"]["scale"], 0.0)
    np.testing.assert_array_equal(grads["embed"]["embedding"], 0.0)


def test_adam_equals_optax_adam():
    params = _params()
    ours = _run(make_optimizer(_optim(optimizer="adam", learning_rate=0.01), 10), params)
    ref = _run(optax.adam(0.01), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)


def test_adamw_equals_optax_adamw_with_the_kernel_mask():
    params = _params()
    optim = _optim(optimizer="adamw", learning_rate=0.01, weight_decay=0.1)
    ours = _run(make_optimizer(optim, 10), params)
    ref = _run(optax.adamw(0.01, weight_decay=0.1, mask=decay_mask), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)
    # biases and norm scales were not decayed: they equal plain Adam's
    plain = _run(optax.adam(0.01), params)
    np.testing.assert_allclose(ours["norm"]["scale"], plain["norm"]["scale"], rtol=1e-6)
    assert not np.allclose(ours["dense"]["kernel"], plain["dense"]["kernel"])


def test_l2_mode_adds_no_decay_to_the_optimizer():
    params = _params()
    optim = _optim(optimizer="adam", learning_rate=0.01, weight_decay=0.1)  # auto -> l2
    ours = _run(make_optimizer(optim, 10), params)
    ref = _run(optax.adam(0.01), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)


def test_sgd_with_momentum_equals_numpy():
    params = _params()
    lr, mu = 0.1, 0.9
    ours = _run(make_optimizer(_optim(optimizer="sgd", learning_rate=lr, momentum=mu), 10), params)
    p = np.asarray(params["head"]["kernel"], np.float64)
    velocity = np.zeros_like(p)
    for t in range(4):
        g = np.asarray(_grads(params, t + 10)["head"]["kernel"], np.float64)
        velocity = mu * velocity + g
        p = p - lr * velocity
    np.testing.assert_allclose(ours["head"]["kernel"], p, rtol=1e-5)


def test_clipping_scales_the_global_norm_down():
    params = _params()
    grads = _grads(params, 3)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    clip = float(norm) / 4
    tx = make_optimizer(
        _optim(optimizer="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=clip), 10
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(
        updates["dense"]["kernel"], -np.asarray(grads["dense"]["kernel"]) / 4, rtol=1e-5
    )


def test_warmup_then_cosine_schedule():
    optim = _optim(schedule="cosine", warmup_steps=10, learning_rate=1.0, end_lr_fraction=0.1)
    schedule = make_schedule(optim, total_steps=110)
    for t in [0, 5, 10]:
        np.testing.assert_allclose(schedule(t), t / 10, atol=1e-6)
    for t in [10, 35, 60, 110]:
        progress = (t - 10) / 100
        expected = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))
        np.testing.assert_allclose(schedule(t), expected, rtol=1e-5)


@pytest.mark.parametrize("warmup", [0, 4])
def test_constant_schedule(warmup):
    schedule = make_schedule(_optim(learning_rate=0.3, warmup_steps=warmup), 100)
    np.testing.assert_allclose(schedule(50), 0.3, rtol=1e-6)
    if warmup:
        np.testing.assert_allclose(schedule(2), 0.15, rtol=1e-6)


# float32 hyperparameters (arrays in the state) round like the arrays they are: the comparisons
# with optax's Python-float aliases hold to float32 tolerance, not bitwise.


def test_hyperparameters_are_arrays_in_the_state():
    optim = _optim(optimizer="adamw", learning_rate=0.01, weight_decay=0.1, grad_clip_norm=1.0)
    state = make_optimizer(optim, 10).init(_params())
    hyper = get_hyperparams(state)
    assert set(hyper) == set(HYPERPARAMETERS)
    for name in HYPERPARAMETERS:
        assert hyper[name].dtype == jnp.float32 and hyper[name].shape == ()
        np.testing.assert_allclose(hyper[name], optim[name], rtol=1e-7)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        set_hyperparams(state, lr=1.0)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("adam", lambda lr, wd: optax.adam(lr)),
        ("adamw", lambda lr, wd: optax.adamw(lr, weight_decay=wd, mask=decay_mask)),
    ],
)
def test_injected_values_equal_optax_with_those_floats_step_by_step(name, reference):
    """A state whose learning rate / decay were replaced (set_hyperparams) equals optax's alias
    built with those Python floats, after every one of 4 steps; under jit."""
    params = _params()
    tx = make_optimizer(_optim(optimizer=name, learning_rate=0.5, weight_decay=0.0), 10)
    ref_tx = reference(0.03, 0.2)
    ours = set_hyperparams(tx.init(params), learning_rate=0.03, weight_decay=0.2)
    ref = ref_tx.init(params)
    p_ours, p_ref = params, params
    step = jax.jit(lambda t, g, s, p: t.update(g, s, p), static_argnums=0)
    for t in range(4):
        u, ours = step(tx, _grads(p_ours, t), ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, ref = step(ref_tx, _grads(p_ref, t), ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_ours, p_ref
        )


def test_vmapped_hyperparameters_equal_separate_optimizers():
    """jax.vmap over a stacked state with K = 2 learning rates = the two runs apart."""
    params = _params()
    tx = make_optimizer(_optim(optimizer="adam", learning_rate=0.01, grad_clip_norm=0.5), 10)
    rates = [0.01, 0.1]
    states = [set_hyperparams(tx.init(params), learning_rate=r) for r in rates]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    stacked_params = jax.tree.map(lambda *x: jnp.stack(x), params, params)
    grads = _grads(params, 1)
    updates, _ = jax.vmap(tx.update, in_axes=(None, 0, 0))(grads, stacked, stacked_params)
    for k, state in enumerate(states):
        alone, _ = tx.update(grads, state, params)
        picked = jax.tree.map(lambda a, k=k: a[k], updates)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), picked, alone
        )
