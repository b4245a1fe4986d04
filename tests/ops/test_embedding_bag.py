"""jaxnn/ops/embedding_bag.py against a NumPy transcription and PyTorch's F.embedding_bag."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.ops import embedding_bag
from jaxnn.ops.dropout import rate_free_trials, rate_free_trials_of
from jaxnn.ops.embedding_bag import embedding_bag_sum


def _inputs(seed=0, b=12, t=7, d=4, u=10):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(u, d)).astype(np.float32)
    slot = rng.integers(0, u + 1, size=(b, t)).astype(np.int32)  # u = padding
    slot[0] = u  # a text with nothing looked up
    bits = rng.integers(0, 2**16, size=(b, t, d)).astype(np.uint16)
    g = rng.normal(size=(b, d)).astype(np.float32)
    return rows, slot, bits, g


def _numpy(rows, slot, bits=None, threshold=0, scale=1.0):
    """sum_t [bits >= threshold] * scale * rows[slot] with slot >= U looking up nothing, and
    the gradient of sum(out * g) w.r.t. rows, by the formula."""
    u, d = rows.shape
    keep = np.broadcast_to((slot < u)[..., None], (*slot.shape, d))
    if bits is not None:
        keep = keep & (bits.astype(np.int64) >= threshold)
    padded = np.concatenate([rows, np.zeros((1, d), np.float32)])
    vectors = padded[np.minimum(slot, u)]
    out = np.sum(np.where(keep, vectors * scale, 0.0), axis=1)

    def grad(g):
        acc = np.zeros((u + 1, d), np.float32)
        np.add.at(acc, np.minimum(slot, u), np.where(keep, g[:, None, :] * scale, 0.0))
        return acc[:u]

    return out, grad


@pytest.fixture(params=["counts", "blocked", "blocked_one_text"])
def form(request, monkeypatch):
    """Force each form: the counts product, blocks of 2 texts, blocks of 1 text."""
    if request.param == "counts":
        monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", 10**6)
    else:
        monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", 0)
        per_text = 7 * 4  # t * d of `_inputs`
        blocks = 2 if request.param == "blocked" else 1
        monkeypatch.setattr(embedding_bag, "BLOCK_ELEMENTS", blocks * per_text)
    return request.param


@pytest.mark.parametrize("jit", [False, True])
def test_sum_and_gradient_match_numpy(form, jit):
    rows, slot, _, g = _inputs()
    want, want_grad = _numpy(rows, slot)
    fn = jax.jit(embedding_bag_sum) if jit else embedding_bag_sum
    np.testing.assert_allclose(fn(rows, slot), want, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda r: jnp.sum(fn(r, slot) * g))(rows)
    np.testing.assert_allclose(grad, want_grad(g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("traced", [False, True])
def test_dropout_sum_and_gradient_match_numpy(form, traced):
    """The kept elements (bits >= threshold), scaled; the threshold and scale may be traced.
    (Dropout always takes the blocked form: the "counts" case runs one block of 12 texts.)"""
    rows, slot, bits, g = _inputs(seed=1)
    threshold, scale = 19661, 1.4285777
    want, want_grad = _numpy(rows, slot, bits, threshold, scale)
    if traced:
        fn = jax.jit(lambda r, th, sc: embedding_bag_sum(r, slot, dropout=(bits, th, sc)))
    else:
        fn = lambda r, th, sc: embedding_bag_sum(r, slot, dropout=(bits, th, sc))
    np.testing.assert_allclose(fn(rows, threshold, scale), want, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda r: jnp.sum(fn(r, threshold, scale) * g))(rows)
    np.testing.assert_allclose(grad, want_grad(g), rtol=1e-5, atol=1e-6)


def test_vmapped_over_rows_and_rates_equals_one_at_a_time(form):
    """K trials' rows and thresholds under vmap, the slots and draws shared: each trial's
    result and gradient equal its own call."""
    rows, slot, bits, g = _inputs(seed=2)
    stacked = np.stack([rows, 2 * rows + 1, -rows])
    thresholds = jnp.asarray([0, 19661, 40000], jnp.int32)
    scales = jnp.asarray([1.0, 1.4285777, 2.5], jnp.float32)

    def one(r, th, sc):
        return jnp.sum(embedding_bag_sum(r, slot, dropout=(bits, th, sc)) * g)

    values, grads = jax.jit(jax.vmap(jax.value_and_grad(one)))(stacked, thresholds, scales)
    for k in range(3):
        want, want_grad = _numpy(stacked[k], slot, bits, int(thresholds[k]), float(scales[k]))
        np.testing.assert_allclose(values[k], np.sum(want * g), rtol=1e-5)
        np.testing.assert_allclose(grads[k], want_grad(g), rtol=1e-5, atol=1e-6)


def test_vmapped_trials_sharing_the_batch_run_as_groups_and_others_as_vmap_does():
    """Shared slots and draws: the K trials run as K groups of one blocked pass (its
    accumulator [U, K, D], the rows' trial-minor layout). Draws or slots per trial: vmap's own
    rule. Each way, every trial's value and gradient equal its own call."""
    rows, slot, bits, g = _inputs(seed=3)
    k = 3
    stacked = np.stack([rows, 2 * rows + 1, -rows])
    many_bits = np.stack([bits, bits[::-1], np.roll(bits, 1, axis=-1)])
    many_slots = np.stack([slot, slot[::-1], np.where(slot > 2, slot - 1, slot)])
    many = np.concatenate([stacked, stacked], axis=1)  # U past the counts form's limit
    thresholds = jnp.asarray([0, 19661, 40000], jnp.int32)

    def one(r, s, u, th):
        return jnp.sum(embedding_bag_sum(r, s, dropout=(u, th, 1.5)) * g)

    grad = jax.jit(jax.vmap(jax.value_and_grad(one), in_axes=(0, None, None, 0)))
    jaxpr = str(jax.make_jaxpr(grad)(many, slot, bits, thresholds))
    assert f"f32[{many.shape[1]},{k},{rows.shape[1]}]" in jaxpr  # the grouped accumulator
    for axes, s, u in [
        ((0, None, None, 0), slot, bits),
        ((0, None, 0, 0), slot, many_bits),
        ((0, 0, None, 0), many_slots, bits),
    ]:
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(one), in_axes=axes))(
            many, s, u, thresholds
        )
        for j in range(k):
            pick = lambda x, a, j=j: x[j] if a == 0 else x
            want, want_grad = _numpy(
                many[j], pick(s, axes[1]), pick(u, axes[2]), int(thresholds[j]), 1.5
            )
            np.testing.assert_allclose(values[j], np.sum(want * g), rtol=1e-5)
            np.testing.assert_allclose(grads[j], want_grad(g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("free", [0, 1, 3, 4])
def test_rate_free_trials_sum_without_the_mask(form, free):
    """Under `rate_free_trials(F, trials=K)` the first F of K vmapped trials (shared slots and
    draws, per-trial rows and gradients) are summed without the mask, by the form one of them
    would take alone, the other K - F with it; each trial equals NumPy. The rule obeys the
    context alone (it is a promise about the rates): every trial here has a nonzero rate, so
    any other count, or ignoring the context, gives other numbers."""
    rows, slot, bits, _ = _inputs(seed=4)
    k = 4
    rng = np.random.default_rng(5)
    many = np.stack([rows, 2 * rows + 1, -rows, rows[::-1]])
    gs = rng.normal(size=(k, slot.shape[0], rows.shape[1])).astype(np.float32)
    thresholds = np.asarray([30000, 19661, 19661, 40000], np.int32)
    scales = np.asarray([1.8, 1.4285777, 1.4285777, 2.5], np.float32)

    def one(r, g, th, sc):
        return jnp.sum(embedding_bag_sum(r, slot, dropout=(bits, th, sc)) * g)

    def run(r, g, th, sc):
        with rate_free_trials(free, trials=k):
            return jax.vmap(jax.value_and_grad(one))(r, g, th, sc)

    jaxpr = str(jax.make_jaxpr(run)(many, gs, thresholds, scales))
    assert ("dot_general" in jaxpr) == (form == "counts" and free > 0)
    values, grads = jax.jit(run)(many, gs, thresholds, scales)
    for j in range(k):
        unmasked = j < free
        want, want_grad = _numpy(
            many[j],
            slot,
            None if unmasked else bits,
            int(thresholds[j]),
            1.0 if unmasked else float(scales[j]),
        )
        np.testing.assert_allclose(values[j], np.sum(want * gs[j]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads[j], want_grad(gs[j]), rtol=1e-5, atol=1e-6)


def test_rate_free_trials_are_part_of_the_jit_cache_key(monkeypatch):
    """A function jitted without the context inside it, called outside it and then inside it,
    is traced for each: inside, the promised trials are summed without the mask."""
    monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", 0)
    rows, slot, bits, _ = _inputs(seed=7)
    many = np.stack([rows, -rows, 2 * rows])
    thresholds = np.asarray([30000, 19661, 40000], np.int32)
    traces = []

    def run(r, th):
        traces.append(1)
        sums = lambda r, th: embedding_bag_sum(r, slot, dropout=(bits, th, 1.5))
        return jax.vmap(sums)(r, th)

    jitted = jax.jit(run)
    outside = jitted(many, thresholds)
    with rate_free_trials(2, trials=3):
        inside = jitted(many, thresholds)
        jitted(many, thresholds)
    assert len(traces) == 2
    for j in range(3):
        masked, _ = _numpy(many[j], slot, bits, int(thresholds[j]), 1.5)
        np.testing.assert_allclose(outside[j], masked, rtol=1e-5, atol=1e-5)
        want = _numpy(many[j], slot)[0] if j < 2 else masked
        np.testing.assert_allclose(inside[j], want, rtol=1e-5, atol=1e-5)


def test_rate_free_trials_are_a_count_of_those_trials():
    with pytest.raises(ValueError, match=r"count must be in \[0, trials=4\]; got 5"):
        with rate_free_trials(5, trials=4):
            pass
    with rate_free_trials(2, trials=4):
        assert rate_free_trials_of(4) == 2
        assert rate_free_trials_of(3) == 0  # another vmapped axis: not known
    assert rate_free_trials_of(4) == 0


def test_counts_form_is_chosen_for_few_rows_and_blocks_for_many():
    rows, slot, _, _ = _inputs()
    few = jax.make_jaxpr(lambda r: embedding_bag_sum(r, slot))(rows)
    assert "dot_general" in str(few) and "scan" not in str(few)
    many = jnp.zeros((8 * slot.shape[1] + 1, rows.shape[1]))
    blocked = jax.make_jaxpr(lambda r: embedding_bag_sum(r, slot))(many)
    assert "scan" in str(blocked)


def test_bad_shapes_are_refused():
    rows, slot, bits, _ = _inputs()
    with pytest.raises(ValueError, match=r"rows must be \[U, D\] and slot \[B, T\]"):
        embedding_bag_sum(rows[0], slot)
    with pytest.raises(ValueError, match=r"bits must have shape \[B, T, D\] = \(12, 7, 4\)"):
        embedding_bag_sum(rows, slot, dropout=(bits[:, :3], 0, 1.0))


def test_matches_torch_embedding_bag_sum():
    """An independent implementation: torch.nn.functional.embedding_bag(mode="sum"), values and
    the gradient of the rows (padding given as empty bags entries via offsets)."""
    torch = pytest.importorskip("torch")
    rows, slot, _, g = _inputs(seed=3)
    u = rows.shape[0]
    flat, offsets = [], []
    for text in slot:
        offsets.append(len(flat))
        flat.extend(int(s) for s in text if s < u)
    weight = torch.tensor(rows, requires_grad=True)
    out = torch.nn.functional.embedding_bag(
        torch.tensor(flat, dtype=torch.long), weight, torch.tensor(offsets), mode="sum"
    )
    (out * torch.tensor(g)).sum().backward()
    got = embedding_bag_sum(rows, slot)
    grad = jax.grad(lambda r: jnp.sum(embedding_bag_sum(r, slot) * g))(rows)
    np.testing.assert_allclose(got, out.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_negative_slots_are_padding_in_both_forms(monkeypatch):
    """A negative slot looks up nothing, whichever form runs (they used to disagree)."""
    rows, slot, _, _ = _inputs(seed=4)
    slot[1, :3] = [-1, -2, -7]
    padded = np.where(slot < 0, rows.shape[0], slot)
    want, _ = _numpy(rows, padded)
    for ratio in (10**6, 0):  # counts, blocked
        monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", ratio)
        np.testing.assert_allclose(embedding_bag_sum(rows, slot), want, rtol=1e-6, atol=1e-6)


def test_blocked_gradient_never_forms_the_batch_of_vectors(monkeypatch):
    """The op's promise: with blocks of 2 texts, no float array of B T D elements (the looked-up
    vectors, or their cotangent) appears anywhere in the gradient's program."""
    monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", 0)
    monkeypatch.setattr(embedding_bag, "BLOCK_ELEMENTS", 2 * 7 * 4)
    rows, slot, bits, g = _inputs()
    b, t, d = bits.shape

    def loss(r):
        plain = embedding_bag_sum(r, slot)
        dropped = embedding_bag_sum(r, slot, dropout=(bits, 19661, 1.43))
        return jnp.sum((plain + dropped) * g)

    jaxpr = jax.make_jaxpr(jax.grad(loss))(rows)

    def shapes(jaxpr):
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                yield var.aval
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from shapes(inner)

    big = [
        a
        for a in shapes(jaxpr.jaxpr)
        if jnp.issubdtype(a.dtype, jnp.floating) and np.prod(a.shape) >= b * t * d
    ]
    assert not big, big
    blocks = [a for a in shapes(jaxpr.jaxpr) if a.shape == (2, t, d)]
    assert blocks  # the per-block vectors are there instead


def test_one_block_under_a_mesh_of_several_devices():
    """Under a multi-device mesh the whole batch is one block (XLA splits it along B; a loop
    over the global batch's blocks would run on every device); one device keeps blocks."""
    from jax.sharding import AbstractMesh

    assert embedding_bag._block_rows(32, 256 * 64) == 4  # this CPU, 2^16 elements a block
    with jax.sharding.use_abstract_mesh(AbstractMesh((2,), ("data",))):
        assert embedding_bag._block_rows(32, 256 * 64) == 32
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("data",))):
        assert embedding_bag._block_rows(32, 256 * 64) == 4


def test_empty_batch_or_texts_give_zeros():
    rows = np.ones((5, 3), np.float32)
    assert embedding_bag_sum(rows, np.zeros((0, 4), np.int32)).shape == (0, 3)
    np.testing.assert_array_equal(embedding_bag_sum(rows, np.zeros((2, 0), np.int32)), 0.0)


def test_forward_mode_is_refused_with_a_type_error():
    """The documented limit of a custom_vjp op."""
    rows, slot, _, _ = _inputs()
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda r: embedding_bag_sum(r, slot), (rows,), (rows,))
