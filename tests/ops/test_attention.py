"""Tests for the jaxnn/ops/attention/ package against independent references.

References: a NumPy transcription of softmax(QKᵀ/√H + bias)V, jax.nn.dot_product_attention,
and (for the fast implementations) implementation="reference", values and gradients.

Precision: float32 comparisons are exactness checks at F32_TOL (relative), run with float32
matmuls at full precision (tests/ops/conftest.py); half-precision paths use `_half_tol`,
a stated multiple of the dtype's epsilon. Kernels a backend lacks ("cudnn" off NVIDIA GPUs,
Pallas off GPU/TPU) run here only where they can: Pallas in its interpreter on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnn.ops.attention import backends, chunked, dispatch, dot_product_attention

CPU_IMPLEMENTATIONS = ("chunked", "xla")
F32_TOL = 1e-5  # relative error of a float32 kernel against the float32 reference


def _half_tol(dtype, ulps=4):
    """Relative tolerance of a half-precision result: ``ulps`` times the dtype's epsilon
    (bf16: 4 · 2^-7 = 0.031; f16: 4 · 2^-10 = 0.0039). Inputs are the same half-precision
    arrays for both sides and every kernel computes in float32, so what differs is the
    rounding of the output (and of the cotangent sin(out) that feeds the gradients)."""
    return ulps * float(jnp.finfo(dtype).eps)


MIXED = "chunked value, xla gradient"  # "auto"'s choice for mid-sized CPU problems


def _auto(
    q,
    k,
    dropout_rate=0.0,
    return_weights=False,
    mask=None,
    key_lengths=None,
    dropout_rng=None,
    bias=None,
    backend=None,
):
    """What "auto" runs for these arguments: an implementation name, or MIXED."""
    choice = dispatch.choose_for(
        q,
        k,
        mask=mask,
        bias=bias,
        key_lengths=key_lengths,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        return_weights=return_weights,
        backend=backend,
    )
    return MIXED if choice.xla_gradient else choice.implementation


def _qkv(batch=2, t_len=37, s_len=53, heads=3, head_dim=16, dtype=jnp.float32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (batch, t_len, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (batch, s_len, heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (batch, s_len, heads, head_dim), jnp.float32).astype(dtype)
    return q, k, v


def _numpy_attention(q, k, v, mask=None, bias=None, is_causal=False, key_lengths=None):
    """softmax(Q Kᵀ / √H + bias) V in float64 NumPy, one (b, n, t) row at a time."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, t_len, heads, head_dim = q.shape
    s_len = k.shape[1]
    mask = None if mask is None else np.broadcast_to(mask, (batch, heads, t_len, s_len))
    bias = None if bias is None else np.broadcast_to(bias, (batch, heads, t_len, s_len))
    out = np.zeros((batch, t_len, heads, v.shape[-1]))
    for b, n, t in itertools.product(range(batch), range(heads), range(t_len)):
        scores = k[b, :, n] @ q[b, t, n] / np.sqrt(head_dim)
        if bias is not None:
            scores = scores + bias[b, n, t]
        visible = np.ones(s_len, bool)
        if mask is not None:
            visible &= mask[b, n, t]
        if is_causal:
            visible &= np.arange(s_len) <= t
        if key_lengths is not None:
            visible &= np.arange(s_len) < key_lengths[b]
        if not visible.any():
            continue  # a query that sees no key: zeros
        e = np.exp(scores[visible] - scores[visible].max())
        out[b, t, n] = (e / e.sum()) @ v[b, visible, n]
    return out


def _rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks far smaller than T and S so every test crosses block and padding boundaries."""
    monkeypatch.setattr(chunked, "FWD_BLOCKS", (16, 32))
    monkeypatch.setattr(chunked, "BWD_BLOCKS", (8, 16))
    # Forward one (example, head) per step, backward all heads of one example per step.
    monkeypatch.setattr(chunked, "GROUP_BUDGET", 512)


# ------------------------------------------------------------------------------------------
# The reference against NumPy and jax.nn
# ------------------------------------------------------------------------------------------

CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "mask": dict(mask="random"),
    "bias": dict(bias="random"),
    "lengths": dict(key_lengths=(0, 20)),
    "causal+lengths": dict(is_causal=True, key_lengths=(5, 53)),
    "causal+mask+bias+lengths": dict(
        is_causal=True, mask="random", bias="random", key_lengths=(0, 9)
    ),
}


def _make_case(case, batch, t_len, s_len, heads):
    kwargs = dict(CASES[case])
    if kwargs.get("mask") == "random":
        mask = np.array(jax.random.bernoulli(jax.random.key(7), 0.7, (batch, 1, t_len, s_len)))
        mask[0, 0, 3] = False  # a fully masked query row
        kwargs["mask"] = jnp.asarray(mask)
    if kwargs.get("bias") == "random":
        kwargs["bias"] = jax.random.normal(jax.random.key(8), (1, heads, t_len, s_len))
    if "key_lengths" in kwargs:
        kwargs["key_lengths"] = jnp.asarray(kwargs["key_lengths"], jnp.int32)
    return kwargs


def _attend(implementation, kwargs, jit):
    """dot_product_attention as a function of (q, k, v, bias) with the other arguments fixed."""
    fixed = {name: value for name, value in kwargs.items() if name != "bias"}

    def fn(q, k, v, bias=None):
        return dot_product_attention(q, k, v, bias=bias, implementation=implementation, **fixed)

    return jax.jit(fn) if jit else fn


def _loss(implementation, kwargs, jit):
    """Gradients of Σ sin(attention) wrt q, k, v (and bias when given)."""
    return _value_and_grads(implementation, kwargs, jit, value=False)


def _value_and_grads(implementation, kwargs, jit, value=True):
    """(attention output, gradients of Σ sin(output)) from one traced function."""
    attend = _attend(implementation, kwargs, False)

    def loss(*args):
        out = attend(*args)
        # A non-uniform cotangent so every output entry matters.
        return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

    argnums = (0, 1, 2, 3) if "bias" in kwargs else (0, 1, 2)
    grad = jax.grad(loss, argnums=argnums, has_aux=True)

    def both(*args):
        grads, out = grad(*args)
        return (out, grads) if value else grads

    return jax.jit(both) if jit else both


@pytest.mark.parametrize(
    ("case", "jit"), [(case, True) for case in CASES] + [("causal+mask+bias+lengths", False)]
)
def test_reference_matches_numpy(case, jit):
    q, k, v = _qkv()
    kwargs = _make_case(case, 2, 37, 53, 3)
    out = _attend("reference", kwargs, jit)(q, k, v, kwargs.get("bias"))
    expected = _numpy_attention(q, k, v, **{name: np.asarray(a) for name, a in kwargs.items()})
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("case", ["causal", "causal+mask+bias+lengths"])
def test_reference_matches_jax_nn_values_and_gradients(case):
    q, k, v = _qkv(t_len=29, s_len=29)
    kwargs = _make_case(case, 2, 29, 29, 3)
    if "mask" in kwargs:  # jax.nn gives masked-out rows uniform weights; keep every row visible
        kwargs["mask"] = kwargs["mask"].at[..., 0].set(True)
    if "key_lengths" in kwargs:
        kwargs["key_lengths"] = jnp.maximum(kwargs["key_lengths"], 1)

    def jax_nn(q, k, v, bias=None):
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            mask=kwargs.get("mask"),
            is_causal=kwargs.get("is_causal", False),
            key_value_seq_lengths=kwargs.get("key_lengths"),
            implementation="xla",
        )

    bias = kwargs.get("bias")
    args = (q, k, v) if bias is None else (q, k, v, bias)
    argnums = tuple(range(len(args)))
    loss = lambda *a: (jnp.sum(jnp.sin(jax_nn(*a))), jax_nn(*a))
    expected_grads, expected = jax.jit(jax.grad(loss, argnums, has_aux=True))(*args)
    got, got_grads = _value_and_grads("reference", kwargs, True)(*args)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_reference_gradients_numerically():
    q, k, v = _qkv(batch=1, t_len=5, s_len=6, heads=2, head_dim=4)
    kwargs = dict(is_causal=True, key_lengths=jnp.array([4]))
    fn = _attend("reference", kwargs, True)
    check_grads(
        lambda q, k, v: fn(q, k, v), (q, k, v), order=1, modes=("rev",), atol=2e-2, rtol=2e-2
    )


# ------------------------------------------------------------------------------------------
# Every implementation against the reference, values and gradients
# ------------------------------------------------------------------------------------------


def _assert_matches_reference(implementation, case, jit, dtype=jnp.float32, tol=F32_TOL):
    # T = 37, S = 53: neither a multiple of the (small) blocks, and T != S.
    q, k, v = _qkv(dtype=dtype)
    kwargs = _make_case(case, 2, 37, 53, 3)
    args = (q, k, v) if "bias" not in kwargs else (q, k, v, kwargs["bias"])
    want, want_grads = _value_and_grads("reference", kwargs, True)(*args)
    for impl in [implementation] if isinstance(implementation, str) else implementation:
        got, got_grads = _value_and_grads(impl, kwargs, jit)(*args)
        assert got.dtype == dtype
        assert np.isfinite(np.asarray(got, np.float32)).all()
        assert _rel_err(got, want) < tol, impl
        for g, w in zip(got_grads, want_grads):
            assert g.dtype == w.dtype
            assert np.isfinite(np.asarray(g, np.float32)).all()
            assert _rel_err(g, w) < tol, impl


@pytest.mark.parametrize("case", ["plain", "bias", "causal+lengths", "causal+mask+bias+lengths"])
def test_implementations_match_reference_f32(case, small_blocks):
    _assert_matches_reference(CPU_IMPLEMENTATIONS, case, jit=True)


def test_chunked_matches_reference_without_jit(small_blocks):
    _assert_matches_reference("chunked", "causal+mask+bias+lengths", jit=False)


@pytest.mark.parametrize(
    ("implementation", "dtype"),
    [("chunked", jnp.bfloat16), ("xla", jnp.bfloat16), ("chunked", jnp.float16)],
)
def test_implementation_matches_reference_half(implementation, dtype, small_blocks):
    tol = _half_tol(dtype)
    _assert_matches_reference(implementation, "causal+lengths", jit=True, dtype=dtype, tol=tol)


@pytest.mark.parametrize(("budget", "groups"), [(256 * 2, (1, 2)), (256 * 8, (2, 4))])
def test_chunked_head_groups_match_reference(monkeypatch, budget, groups):
    """Batching (example, head) pairs per step: some heads of an example, several examples
    (one head per step and all heads of one example are the small_blocks fixture's forward
    and backward); with a bias broadcast over B (its gradient sums over the examples of a
    group) and a per-example mask."""
    monkeypatch.setattr(chunked, "FWD_BLOCKS", (16, 16))
    monkeypatch.setattr(chunked, "BWD_BLOCKS", (16, 16))
    monkeypatch.setattr(chunked, "GROUP_BUDGET", budget)
    assert chunked._group_sizes(2, 4, 16 * 16) == groups
    q, k, v = _qkv(batch=2, t_len=21, s_len=27, heads=4, head_dim=8)
    kwargs = _make_case("causal+mask+bias+lengths", 2, 21, 27, 4)
    args = (q, k, v, kwargs["bias"])
    want, want_grads = _value_and_grads("reference", kwargs, True)(*args)
    got, got_grads = _value_and_grads("chunked", kwargs, True)(*args)
    assert _rel_err(got, want) < F32_TOL
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape and _rel_err(g, w) < F32_TOL


@pytest.mark.parametrize(
    ("batch", "heads", "elems", "budget", "expected"),
    [
        (4, 8, 512 * 1024, 512 * 1024, (1, 1)),  # long sequences: one head per step
        (4, 8, 512 * 512, 512 * 1024, (1, 2)),
        (64, 4, 256 * 256, 512 * 1024, (2, 4)),  # T = 256: all heads of 2 examples
        (3, 6, 100, 450, (1, 3)),  # 4 heads would fit but does not divide N = 6
        (5, 2, 100, 450, (1, 2)),  # 2 examples would fit but do not divide B = 5
        (2, 2, 10**6, 10, (1, 1)),  # a block larger than the budget: still one head
    ],
)
def test_group_sizes_rule(monkeypatch, batch, heads, elems, budget, expected):
    monkeypatch.setattr(chunked, "GROUP_BUDGET", budget)
    gb, gn = chunked._group_sizes(batch, heads, elems)
    assert (gb, gn) == expected
    assert batch % gb == 0 and heads % gn == 0


@pytest.mark.parametrize("length", [1, 7, 8, 100, 512, 513, 1000, 2048, 3000, 65536])
def test_block_split_rule(length):
    """Padded length and blocks: each block divides the padded length, is a multiple of 8
    (or the whole short sequence rounded up), is at most its target (or the base block), and
    padding is less than 8 rows per base block."""
    padded, (small, large) = chunked._split(length, (512, 1024))
    assert padded >= length and padded % small == 0 and padded % large == 0
    assert small % 8 == 0 and large % small == 0
    assert small <= max(512, 8) and large <= max(1024, small)
    num = padded // small
    assert padded - length < 8 * num
    assert num == -(-length // 512)  # the fewest blocks of at most 512


def test_causal_and_length_block_skipping_bounds():
    """Key blocks wholly above the causal diagonal or past every key length are not visited."""
    st = chunked.BlockPlan(100, 100, 112, 112, 16, 16, True, False, False, True)
    lengths = jnp.array([40, 20])
    # Queries 0..15 see keys <= 15: only block 0; queries 96..99 see up to key 99, but no
    # example has more than 40 keys: blocks 0..2.
    assert int(chunked._key_block_range(st, lengths, 0)) == 1
    assert int(chunked._key_block_range(st, lengths, 96)) == 3
    st = chunked.BlockPlan(100, 100, 112, 112, 16, 16, False, False, False, False)
    assert int(chunked._key_block_range(st, None, 0)) == 7


def _logits_near_1e4(dtype=jnp.bfloat16, s_len=64):
    """q, k, v (B=1, T=2, N=1, H=4) whose logits are 10000 + s for key s: exact in bf16
    inputs (q = [100, 1, 0, 0], k_s = [200, 2s, 0, 0], all bf16 integers), and in float32
    logits, but not in bf16, whose spacing at 1e4 is 64: there all S logits round to 9984."""
    s = np.arange(s_len, dtype=np.float32)
    q = np.zeros((1, 2, 1, 4), np.float32)
    q[..., 0], q[..., 1] = 100.0, 1.0
    k = np.zeros((1, s_len, 1, 4), np.float32)
    k[0, :, 0, 0], k[0, :, 0, 1] = 200.0, 2 * s
    v = np.zeros((1, s_len, 1, 4), np.float32)
    v[0, :, 0, 0] = s  # out = the expected key index under the softmax weights
    v[0, :, 0, 1] = 1.0  # out = Σ weights = 1
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


@pytest.mark.parametrize("implementation", ["reference", "chunked", "xla", "auto"])
def test_bf16_inputs_keep_float32_logits_and_statistics(implementation, small_blocks):
    """Logits 10000 + s: with float32 logits and softmax statistics the weights are
    ∝ e^s and out[0] = Σ_s s·e^s / Σ_s e^s = 62.42 (S = 64), out[1] = 1; logits or statistics
    in bf16 collapse every logit to one value, giving uniform weights and out[0] = 31.5.
    Tolerance: bf16 output rounding, `_half_tol(bf16)`."""
    q, k, v = _logits_near_1e4()
    s = np.arange(64.0)
    weights = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    want = np.array([weights @ s, 1.0, 0.0, 0.0])
    got = np.asarray(dot_product_attention(q, k, v, implementation=implementation), np.float64)
    assert got.dtype == np.float64 and dot_product_attention(q, k, v).dtype == jnp.bfloat16
    for t in range(2):
        assert _rel_err(got[0, t, 0], want) < _half_tol(jnp.bfloat16), got[0, t, 0]


def test_chunked_default_blocks_long_ragged_sequence():
    # The production block sizes (not the small test ones) with T, S not multiples of them
    # and longer than one block, so several query and key blocks (and padding) are visited.
    q, k, v = _qkv(batch=1, t_len=2600, s_len=2300, heads=1, head_dim=32)
    kwargs = dict(is_causal=True, key_lengths=jnp.array([2250]))
    got, got_grads = _value_and_grads("chunked", kwargs, True)(q, k, v)
    want, want_grads = _value_and_grads("reference", kwargs, True)(q, k, v)
    assert _rel_err(got, want) < F32_TOL
    for g, w in zip(got_grads, want_grads):
        assert _rel_err(g, w) < F32_TOL


@pytest.mark.parametrize("implementation", ["reference", *CPU_IMPLEMENTATIONS, "auto"])
def test_query_that_sees_no_key_gives_zeros_and_zero_gradient(implementation, small_blocks):
    q, k, v = _qkv(batch=2, t_len=20, s_len=24)
    mask = jnp.ones((2, 1, 20, 24), bool).at[1, 0, 5].set(False)
    kwargs = dict(mask=mask, key_lengths=jnp.array([0, 24]))
    out, (d_q, d_k, d_v) = _value_and_grads(implementation, kwargs, True)(q, k, v)
    assert np.all(np.asarray(out[0]) == 0.0)  # example 0: no keys at all
    assert np.all(np.asarray(out[1, 5]) == 0.0)  # example 1, query 5: fully masked row
    assert np.isfinite(np.asarray(out)).all()
    for g in (d_q, d_k, d_v):
        assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(d_q[0]) == 0.0) and np.all(np.asarray(d_q[1, 5]) == 0.0)
    assert np.all(np.asarray(d_k[0]) == 0.0) and np.all(np.asarray(d_v[0]) == 0.0)


@pytest.mark.parametrize(
    "shape, dtype, want",
    [
        ((2, 256, 8, 64), jnp.float32, MIXED),  # B·N·T·S = 2^20: one graph, saved probabilities
        ((4, 256, 8, 64), jnp.float32, MIXED),  # 2^21 scores, T·S = 256²: both at the limit
        ((16, 128, 4, 32), jnp.float32, MIXED),
        ((2, 128, 8, 64), jnp.float32, "chunked"),  # 2^18 scores: under the window
        ((1, 512, 4, 64), jnp.float32, "chunked"),  # 2^20 scores, but one head's T·S over 256²
        ((8, 256, 8, 64), jnp.float32, "chunked"),  # B·N·T·S over 2^21
        ((1, 16, 3, 16), jnp.float32, "reference"),
        ((2, 256, 4, 128), jnp.float32, "chunked"),  # H over 64
        ((64, 256, 4, 32), jnp.float32, "chunked"),  # benchmarks/train.py's transformer
        ((2, 256, 8, 64), jnp.bfloat16, "chunked"),  # "xla" would compute in bf16
        ((128, 64, 8, 32), jnp.float32, "reference"),  # T·S under 128², many scores
    ],
)
def test_auto_on_cpu_is_documented_choice(shape, dtype, want):
    assert jax.default_backend() == "cpu"
    q = jax.ShapeDtypeStruct(shape, dtype)
    assert _auto(q, q, 0.0, False, None, None) == want


def test_auto_on_cpu_never_gives_dropout_or_weights_to_xla_and_is_correct():
    q, k, v = _qkv(batch=4, t_len=256, s_len=256, heads=4, head_dim=16)
    assert _auto(q, k, 0.0, False, None, None) == MIXED
    assert _auto(q, k, 0.1, False, None, None, jax.random.key(0)) == "chunked"
    assert _auto(q, k, 0.1, False, None, None) == "reference"  # no key given
    assert _auto(q, k, 0.0, True, None, None) == "reference"
    for shape in [(4, 256, 4), (1, 1100, 1)]:  # "xla", then "chunked"
        q, k, v = _qkv(batch=shape[0], t_len=shape[1], s_len=shape[1], heads=shape[2])
        np.testing.assert_allclose(
            dot_product_attention(q, k, v, is_causal=True),
            dot_product_attention(q, k, v, is_causal=True, implementation="reference"),
            rtol=1e-5,
            atol=1e-6,
        )


def test_auto_window_values_come_from_chunked_and_derivatives_from_xla():
    q, k, v = _qkv(batch=4, t_len=256, s_len=256, heads=4, head_dim=16)
    assert _auto(q, k, 0.0, False, None, None) == MIXED
    bias = 0.5 * jax.random.normal(jax.random.key(7), (1, 4, 256, 256))
    lengths = jnp.array([256, 200, 3, 0])  # the last example sees no key: zeros

    def attend(impl):
        return lambda q, k, v, b: dot_product_attention(
            q, k, v, bias=b, key_lengths=lengths, is_causal=True, implementation=impl
        )

    def loss(impl):
        return lambda q, k, v, b: jnp.sum(jnp.sin(attend(impl)(q, k, v, b)))

    args = (q, k, v, bias)
    want = _numpy_attention(q, k, v, bias=bias, is_causal=True, key_lengths=np.asarray(lengths))
    for f in (attend("auto"), jax.jit(attend("auto"))):
        assert _rel_err(f(*args), want) < F32_TOL
    grads = jax.jit(jax.grad(loss("auto"), argnums=(0, 1, 2, 3)))(*args)
    for got, want in zip(grads, jax.grad(loss("reference"), argnums=(0, 1, 2, 3))(*args)):
        assert _rel_err(got, want) < F32_TOL
    # Which kernel runs: the value alone is the blocked loop, its gradient XLA's loop-free graph.
    assert "while" in jax.jit(attend("auto")).lower(*args).as_text()
    assert "while" not in jax.jit(jax.grad(loss("auto"))).lower(*args).as_text()
    # Forward mode and second derivatives work, as with "xla".
    tangents = (v, q, k, bias)
    _, jvp_auto = jax.jvp(attend("auto"), args, tangents)
    _, jvp_ref = jax.jvp(attend("reference"), args, tangents)
    assert _rel_err(jvp_auto, jvp_ref) < F32_TOL

    def grad_norm(impl):
        return lambda q: jnp.sum(jax.grad(loss(impl))(q, k, v, bias) ** 2)

    assert _rel_err(jax.grad(grad_norm("auto"))(q), jax.grad(grad_norm("reference"))(q)) < 1e-4


def test_chunked_under_vmap_matches_reference():
    q, k, v = (jnp.stack([x, 2 * x]) for x in _qkv(batch=1, t_len=40, s_len=40))
    fn = lambda impl: jax.vmap(lambda q, k, v: dot_product_attention(q, k, v, implementation=impl))
    assert _rel_err(fn("chunked")(q, k, v), fn("reference")(q, k, v)) < F32_TOL


def test_chunked_temporary_memory_is_linear_in_length(small_blocks):
    """fwd+bwd temp memory: the reference holds [B, N, T, S] arrays, chunked O(T·H) + blocks."""
    q, k, v = _qkv(batch=1, t_len=2048, s_len=2048, heads=1, head_dim=16)

    def temp_bytes(implementation):
        grad = _loss(implementation, {}, True)
        return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    scores_bytes = 2048 * 2048 * 4
    assert temp_bytes("reference") >= scores_bytes
    assert temp_bytes("chunked") <= scores_bytes / 10


# ------------------------------------------------------------------------------------------
# "auto" on GPU and TPU, pinned on the CPU: dispatch reads its backend from
# dispatch.default_backend, which these tests set to "gpu" / "tpu"
# ------------------------------------------------------------------------------------------

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


@pytest.mark.parametrize(
    ("backend", "shape", "dtype", "given", "want"),
    [
        ("gpu", (2, 256, 8, 64), BF16, "", "cudnn"),
        ("gpu", (2, 256, 8, 64), F16, "key_lengths causal", "cudnn"),  # lengths: no mask built
        ("gpu", (2, 256, 8, 128), BF16, "bias", "cudnn"),
        ("gpu", (2, 256, 8, 64), BF16, "mask", "xla"),  # a general mask: pass key_lengths
        ("gpu", (2, 256, 8, 64), F32, "", "xla"),  # cuDNN needs fp16/bf16
        ("gpu", (2, 256, 8, 60), BF16, "", "xla"),  # H not a multiple of 8
        ("gpu", (2, 256, 8, 256), BF16, "", "xla"),  # H over 128
        ("gpu", (2, 255, 8, 64), BF16, "bias", "xla"),  # odd T with a bias
        ("gpu", (2, 16384, 16, 64), F32, "", "chunked"),  # 2^33 scores: the memory guard
        ("gpu", (2, 256, 8, 64), BF16, "dropout", "chunked"),  # dropout off the CPU
        ("gpu", (2, 256, 8, 64), BF16, "dropout rbg", "reference"),  # masks need Threefry
        ("gpu", (2, 256, 8, 64), BF16, "weights", "reference"),
        ("tpu", (2, 256, 8, 64), BF16, "", "pallas"),
        ("tpu", (2, 256, 8, 64), F32, "key_lengths bias causal", "pallas"),
        ("tpu", (2, 256, 8, 64), BF16, "mask", "xla"),  # Pallas takes no general mask
        ("tpu", (2, 200, 8, 64), BF16, "", "xla"),  # T not a multiple of 128
        ("tpu", (2, 256, 8, 64), BF16, "dropout key_lengths", "chunked"),
        ("tpu", (2, 256, 8, 64), BF16, "weights dropout", "reference"),
        ("tpu", (4, 16384, 32, 64), BF16, "mask", "chunked"),  # the memory guard
    ],
)
def test_auto_on_accelerators_is_documented_choice(backend, shape, dtype, given, want):
    q = jax.ShapeDtypeStruct(shape, dtype)
    words = given.split()
    rng = jax.random.key(0, impl="rbg") if "rbg" in words else jax.random.key(0)
    got = _auto(
        q,
        q,
        dropout_rate=0.1 if "dropout" in words else 0.0,
        return_weights="weights" in words,
        mask=jnp.ones((1, 1, 1, shape[1]), bool) if "mask" in words else None,
        key_lengths=jnp.ones((shape[0],), jnp.int32) if "key_lengths" in words else None,
        bias=jnp.zeros((1, 1, 1, shape[1])) if "bias" in words else None,
        dropout_rng=rng if "dropout" in words else None,
        backend=backend,
    )
    assert got == want
    # The rules never let a fused-kernel backend fall back to the materialized weights
    # unless the weights are asked for or the dropout masks need them.
    if got == "reference":
        assert "weights" in words or "rbg" in words


def test_every_rule_names_a_known_implementation_and_a_reason():
    from jaxnn.ops.attention import IMPLEMENTATIONS

    for rule in dispatch.RULES:
        assert rule.implementation in IMPLEMENTATIONS and rule.implementation != "auto"
        assert rule.reason and rule.backends in ("any", "cpu", "gpu", "tpu", "gpu|tpu")
    # the last rule for each backend applies to every problem, so "auto" always decides
    assert dispatch.RULES[-1].backends == "cpu"
    assert [r.name for r in dispatch.RULES if r.backends == "gpu|tpu"][-1] == "xla"


@pytest.fixture
def spy_kernels(monkeypatch):
    """Replace the fused-kernel wrappers that dot_product_attention calls with spies that
    record their arguments and return the reference's result (they cannot run on a CPU)."""
    import jaxnn.ops.attention as package

    calls = []

    def spy(name):
        def kernel(q, k, v, mask, bias, is_causal, key_lengths, *args, **kwargs):
            calls.append(dict(name=name, args=args, mask=mask, key_lengths=key_lengths))
            return dot_product_attention(
                q,
                k,
                v,
                mask=mask,
                bias=bias,
                is_causal=is_causal,
                key_lengths=key_lengths,
                implementation="reference",
            )

        return kernel

    monkeypatch.setattr(package, "jax_nn_attention", spy("jax.nn"))
    monkeypatch.setattr(package, "pallas_attention", spy("pallas"))
    return calls


@pytest.mark.parametrize(
    ("backend", "kernel", "args"), [("gpu", "jax.nn", ("cudnn",)), ("tpu", "pallas", ())]
)
def test_auto_on_accelerators_passes_key_lengths_to_the_fused_kernel(
    backend, kernel, args, spy_kernels, monkeypatch
):
    monkeypatch.setattr(dispatch, "default_backend", lambda: backend)
    q, k, v = _qkv(batch=2, t_len=128, s_len=128, heads=2, head_dim=16, dtype=jnp.bfloat16)
    lengths = jnp.array([100, 7])
    out = dot_product_attention(q, k, v, key_lengths=lengths, is_causal=True)
    assert [c["name"] for c in spy_kernels] == [kernel]
    assert spy_kernels[0]["args"] == args
    assert spy_kernels[0]["mask"] is None  # no [B, N, T, S] (or [B, 1, 1, S]) mask is built
    assert spy_kernels[0]["key_lengths"] is lengths
    assert out.shape == q.shape


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_auto_dropout_off_the_cpu_is_the_exact_blocked_kernel(backend, spy_kernels, monkeypatch):
    """Dropout on GPU/TPU: "chunked" (no [B, N, T, S] weights), the masks "reference" draws."""
    monkeypatch.setattr(dispatch, "default_backend", lambda: backend)
    q, k, v = _qkv(batch=2, t_len=40, s_len=40, heads=2, head_dim=8)
    kwargs = dict(key_lengths=jnp.array([40, 9]), dropout_rate=0.2, dropout_rng=jax.random.key(4))
    got = dot_product_attention(q, k, v, **kwargs)
    assert spy_kernels == []  # neither jax.nn nor Pallas
    want = dot_product_attention(q, k, v, **kwargs, implementation="reference")
    assert _rel_err(got, want) < F32_TOL
    chunked_only = dot_product_attention(q, k, v, **kwargs, implementation="chunked")
    np.testing.assert_array_equal(got, chunked_only)


def test_public_names_import():
    """Every name in the __all__ of jaxnn.ops and jaxnn.ops.attention exists; the two public
    import paths of dot_product_attention are one function; one list of names."""
    import jaxnn.ops
    import jaxnn.ops.attention as package

    for module in (jaxnn.ops, package):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
    assert jaxnn.ops.dot_product_attention is package.dot_product_attention
    assert jaxnn.ops.ATTENTION_IMPLEMENTATIONS is package.IMPLEMENTATIONS
    assert "auto" in package.IMPLEMENTATIONS and "chunked" in package.IMPLEMENTATIONS
    assert not any(" " in name for name in package.IMPLEMENTATIONS)  # no sentinels posing


def test_chunked_forward_mode_raises_type_error():
    """As documented: "chunked" is a custom_vjp, so jax.jvp / jax.jacfwd raise TypeError."""
    q, k, v = _qkv(batch=1, t_len=9, s_len=11, heads=2, head_dim=4)
    attend = lambda q: dot_product_attention(q, k, v, implementation="chunked")
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(attend, (q,), (q,))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(attend)(q)


# ------------------------------------------------------------------------------------------
# The Pallas wrappers, run in Pallas' interpreter on the CPU (on a GPU/TPU the same tests
# run the compiled kernel of that platform)
# ------------------------------------------------------------------------------------------


def _pallas_on(platform):
    """Run the platform's Pallas kernel compiled when on that platform, else interpreted."""
    return dict(platform=platform, interpret=jax.default_backend() != platform)


def test_pallas_gpu_kernel_matches_reference_interpreted():
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes

    blocks = BlockSizes(*(16,) * 6)
    q, k, v = _qkv(batch=1, t_len=48, s_len=48, heads=1, head_dim=16)  # 3 x 3 blocks

    def pallas(q, k, v):
        return backends.pallas_attention(
            q, k, v, None, None, True, None, block_sizes=blocks, **_pallas_on("gpu")
        )

    reference = lambda q, k, v: dot_product_attention(
        q, k, v, is_causal=True, implementation="reference"
    )
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    assert _rel_err(pallas(q, k, v), reference(q, k, v)) < F32_TOL
    got = jax.grad(loss(pallas), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        assert _rel_err(g, w) < F32_TOL


@pytest.mark.parametrize(
    "with_gradients", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["value", "grad"]
)
def test_pallas_tpu_kernel_with_key_lengths_and_bias_matches_reference_interpreted(
    with_gradients,
):
    """Key padding as key segment ids, an example with no keys (zeros), bias, causal. The
    gradients are slow in the interpreter on a CPU (about a minute): marked slow there."""
    q, k, v = _qkv(batch=2, t_len=128, s_len=128, heads=1, head_dim=32)
    bias = 0.5 * jax.random.normal(jax.random.key(3), (1, 1, 128, 128))
    lengths = jnp.array([77, 0])

    def pallas(q, k, v, bias):
        return backends.pallas_attention(q, k, v, None, bias, True, lengths, **_pallas_on("tpu"))

    def reference(q, k, v, bias):
        return dot_product_attention(
            q, k, v, bias=bias, key_lengths=lengths, is_causal=True, implementation="reference"
        )

    got = pallas(q, k, v, bias)
    assert np.all(np.asarray(got[1]) == 0.0)
    assert _rel_err(got, reference(q, k, v, bias)) < F32_TOL
    if not with_gradients:
        return
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    interpret = contextlib.nullcontext()
    if jax.default_backend() != "tpu":  # the kernel's backward is traced here, not in the call
        from jax.experimental.pallas import tpu as pltpu

        interpret = pltpu.force_tpu_interpret_mode()
    with interpret:
        got = jax.grad(loss(pallas), argnums=(0, 1, 2))(q, k, v, bias)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v, bias)
    for g, w in zip(got, want):
        assert np.isfinite(np.asarray(g)).all()
        assert _rel_err(g, w) < F32_TOL


@pytest.mark.parametrize(
    ("platform", "kwargs", "match"),
    [
        ("cpu", {}, "needs a GPU or TPU"),
        ("tpu", dict(mask=jnp.ones((1, 1, 1, 64), bool)), "does not support mask"),
        ("gpu", dict(key_lengths=jnp.array([3])), "on GPU does not support key_lengths"),
        ("gpu", dict(bias=jnp.zeros((64, 64))), "on GPU does not support bias"),
    ],
)
def test_pallas_refuses_what_its_kernel_lacks(platform, kwargs, match):
    q, k, v = _qkv(batch=1, t_len=64, s_len=64, heads=1, head_dim=16)
    args = {name: kwargs.get(name) for name in ("mask", "bias", "key_lengths")}
    with pytest.raises(ValueError, match=match):
        backends.pallas_attention(
            q, k, v, args["mask"], args["bias"], False, args["key_lengths"], platform=platform
        )


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="runs where cuDNN is absent")
def test_cudnn_off_an_nvidia_gpu_raises():
    q, k, v = _qkv(batch=1, t_len=8, s_len=8, heads=1, head_dim=8, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        dot_product_attention(q, k, v, implementation="cudnn")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on an NVIDIA GPU only")
@pytest.mark.parametrize("case", ["causal+lengths", "plain"])
def test_cudnn_matches_reference_bf16(case):
    q, k, v = _qkv(batch=2, t_len=64, s_len=64, heads=2, head_dim=16, dtype=jnp.bfloat16)
    kwargs = _make_case(case, 2, 64, 64, 2)
    got, got_grads = _value_and_grads("cudnn", kwargs, True)(q, k, v)
    want, want_grads = _value_and_grads("reference", kwargs, True)(q, k, v)
    assert _rel_err(got, want) < _half_tol(jnp.bfloat16)
    for g, w in zip(got_grads, want_grads):
        assert _rel_err(g, w) < _half_tol(jnp.bfloat16)


# ------------------------------------------------------------------------------------------
# Dropout (reference) and return_weights
# ------------------------------------------------------------------------------------------


def test_return_weights_are_the_softmax():
    q, k, v = _qkv(batch=1, t_len=6, s_len=7, heads=2, head_dim=8)
    out, weights = dot_product_attention(
        q, k, v, is_causal=True, return_weights=True, implementation="reference"
    )
    assert weights.shape == (1, 2, 6, 7)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(
        np.asarray(weights)[..., np.triu_indices(6, 1, 7)[0], np.triu_indices(6, 1, 7)[1]] == 0
    )
    np.testing.assert_allclose(out, jnp.einsum("bnts,bsnh->btnh", weights, v), rtol=1e-5, atol=1e-6)


def test_dropout_drops_at_rate_and_rescales_survivors():
    q, k, v = _qkv(batch=2, t_len=64, s_len=64, heads=4, head_dim=8)
    rate = 0.3
    _, clean = dot_product_attention(q, k, v, return_weights=True, implementation="reference")
    out, dropped = dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(3), return_weights=True
    )
    clean, dropped = np.asarray(clean), np.asarray(dropped)
    kept = dropped != 0
    n = clean.size
    assert abs((1 - kept.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    # jaxnn.ops.dropout's scale: the rate rounded to a multiple of 2^-16
    scale = 2**16 / (2**16 - round(rate * 2**16))
    np.testing.assert_allclose(dropped[kept], clean[kept] * scale, rtol=1e-6)
    np.testing.assert_allclose(out, np.einsum("bnts,bsnh->btnh", dropped, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("case", ["plain", "causal+lengths", "causal+mask+bias+lengths"])
def test_chunked_dropout_equals_reference_dropout(case, grouped, small_blocks, monkeypatch):
    """The blocked kernel regenerates each block's mask from its counters: the same masks as
    "reference" (jaxnn.ops.dropout on the whole [B, N, T, S] weights), so the same values and
    q/k/v(/bias) gradients, across block, padding and (example, head) group boundaries."""
    if grouped:  # several heads and examples per step: nonzero group offsets in the counters
        monkeypatch.setattr(chunked, "GROUP_BUDGET", 10**9)
    q, k, v = _qkv()  # B=2, T=37, S=53, N=3
    kwargs = _make_case(case, 2, 37, 53, 3)
    kwargs.update(dropout_rate=0.3, dropout_rng=jax.random.key(11))
    got, got_grads = _value_and_grads("chunked", kwargs, True)(q, k, v, kwargs.get("bias"))
    want, want_grads = _value_and_grads("reference", kwargs, True)(q, k, v, kwargs.get("bias"))
    assert _rel_err(got, want) < F32_TOL
    for g, w in zip(got_grads, want_grads):
        assert _rel_err(g, w) < F32_TOL
    no_drop = {**kwargs, "dropout_rate": 0.0}
    assert not np.allclose(got, _attend("chunked", no_drop, True)(q, k, v, kwargs.get("bias")))


def test_auto_drops_attention_with_the_blocked_kernel_on_cpu():
    q, k, _ = _qkv(t_len=200, s_len=200)
    key = jax.random.key(0)
    assert _auto(q, k, 0.1, False, None, None, key) == "chunked"
    assert _auto(q, k, 0.1, True, None, None, key) == "reference"  # return_weights
    rbg = jax.random.key(0, impl="rbg")  # masks "reference" draws with jax.random.bits
    assert _auto(q, k, 0.1, False, None, None, rbg) == "reference"


def test_chunked_dropout_refuses_shapes_whose_counters_would_wrap():
    # B·N·T·ceil(S/4) >= 2^32: jaxnn.ops.dropout falls back to jax.random.bits there, so the
    # blocked kernel could not draw the same masks (checked at trace time, nothing allocated)
    big = jax.ShapeDtypeStruct((4, 65536, 16, 8), jnp.float32)
    attend = lambda q, k, v: dot_product_attention(
        q, k, v, dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="chunked"
    )
    with pytest.raises(ValueError, match=r"2\^32"):
        jax.eval_shape(attend, big, big, big)


@pytest.mark.parametrize("implementation", ["auto", "reference", "chunked"])
def test_dropout_rate_one_gives_zeros_without_nan(implementation):
    # 2·256·256 weights: a threshold of 2^16 - 1 would let about two of them through
    q, k, v = _qkv(batch=1, t_len=256, s_len=256, heads=2)
    fn = lambda q: dot_product_attention(
        q, k, v, dropout_rate=1.0, dropout_rng=jax.random.key(0), implementation=implementation
    )
    assert np.all(np.asarray(fn(q)) == 0.0)
    assert np.isfinite(np.asarray(jax.grad(lambda q: fn(q).sum())(q))).all()


# ------------------------------------------------------------------------------------------
# Bad input: errors name the argument and come before any compute
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(implementation="flash"), "implementation='flash'"),
        (dict(mask=jnp.ones((2, 3, 37, 53), jnp.int32)), "mask must be boolean"),
        (dict(mask=jnp.ones((2, 3, 37, 52), bool)), "mask shape"),
        (dict(bias=jnp.ones((37, 50))), "bias shape"),
        (dict(key_lengths=jnp.ones((3,), jnp.int32)), "key_lengths"),
        (dict(key_lengths=jnp.ones((2,))), "key_lengths"),
        (dict(dropout_rate=1.5, dropout_rng=jax.random.key(0)), "dropout_rate=1.5"),
        (dict(dropout_rate=0.1), "dropout_rng"),
        (
            dict(
                dropout_rate=0.1,
                dropout_rng=jax.random.key(0, impl="rbg"),
                implementation="chunked",
            ),
            "not a Threefry key",
        ),
        (dict(dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="xla"), "reference"),
        (dict(return_weights=True, implementation="chunked"), "return_weights"),
        (dict(implementation="pallas"), "pallas"),
        (dict(implementation="cudnn"), "cudnn"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        dot_product_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 37, 3), (2, 53, 3, 16), (2, 53, 3, 16)), "q must have rank 4"),
        (((2, 37, 3, 16), (2, 53, 4, 16), (2, 53, 4, 16)), "k must have shape"),
        (((2, 37, 3, 16), (2, 53, 3, 8), (2, 53, 3, 8)), "k must have shape"),
        (((2, 37, 3, 16), (2, 53, 3, 16), (2, 50, 3, 16)), "v must have shape"),
    ],
)
def test_bad_shapes_raise_at_trace_time(shapes, match):
    arrays = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda q, k, v: dot_product_attention(q, k, v), *arrays)


# ------------------------------------------------------------------------------------------
# Slow: long sequences (excluded from CI; run with -m slow)
# ------------------------------------------------------------------------------------------


def test_second_derivatives_raise_for_chunked_and_work_elsewhere():
    q, k, v = _qkv(batch=1, t_len=9, s_len=11, heads=2, head_dim=4)

    def grad_norm(impl):
        def loss(q):
            return jnp.sum(dot_product_attention(q, k, v, implementation=impl) ** 2)

        return lambda q: jnp.sum(jax.grad(loss)(q) ** 2)

    want = jax.grad(grad_norm("reference"))(q)
    assert _rel_err(jax.grad(grad_norm("xla"))(q), want) < F32_TOL
    with pytest.raises(NotImplementedError, match="'chunked' has first derivatives only"):
        jax.grad(grad_norm("chunked"))(q)
    with pytest.raises(NotImplementedError, match="'reference' or 'xla'"):
        jax.hessian(lambda q: jnp.sum(dot_product_attention(q, k, v, implementation="chunked")))(q)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot forms")
@pytest.mark.parametrize(
    "shape",
    [(2, 256, 4, 32), (2, 100, 3, 16), (1, 2048, 2, 64)],
    ids=["one-block", "one-ragged-block", "many-blocks"],
)
def test_chunked_backward_matmuls_contract_the_lhs_last_axis(shape):
    """Every matmul of the compiled forward + backward contracts its left operand's last axis,
    the form XLA:CPU runs in its fast kernels. Guards the barriers in _chunked_backward:
    without them, a one-block pass folded Kᵀ and the final dQᵀ swap into the dQ matmul and
    compiled it as a generic dot contracting axis 2, at half the speed."""
    q = k = v = jnp.ones(shape, jnp.float32)

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, implementation="chunked"))

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
    dots = re.findall(r"= f32\[([\d,]*)\]\S* dot\(.*?lhs_contracting_dims=\{(\d+)\}", text)
    assert len(dots) >= 7  # QKᵀ and PV forward; recomputed scores, dV, dP, dK and dQ backward
    for dims, contracted in dots:
        rank = len(dims.split(","))
        assert int(contracted) == rank - 1, (dims, contracted)


@pytest.mark.slow
def test_chunked_matches_reference_long_causal_padded():
    q, k, v = _qkv(batch=2, t_len=3000, s_len=4000, heads=2, head_dim=64)
    kwargs = dict(is_causal=True, key_lengths=jnp.array([3500, 10]))
    got, got_grads = _value_and_grads("chunked", kwargs, True)(q, k, v)
    want, want_grads = _value_and_grads("reference", kwargs, True)(q, k, v)
    assert _rel_err(got, want) < F32_TOL
    for g, w in zip(got_grads, want_grads):
        assert _rel_err(g, w) < F32_TOL


@pytest.mark.slow
def test_chunked_runs_65536_tokens_where_reference_cannot():
    """T = S = 65536 forward+backward: chunked fits in a few hundred MiB of temporaries; the
    reference's compiled executable would need hundreds of GiB (more than this machine)."""
    shape = (1, 65536, 1, 64)
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)

    def grad_fn(implementation):
        loss = lambda q, k, v: jnp.sum(
            dot_product_attention(q, k, v, implementation=implementation)
        )
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    reference_temp = grad_fn("reference").lower(spec, spec, spec).compile().memory_analysis()
    assert reference_temp.temp_size_in_bytes > 24 * 2**30
    compiled = grad_fn("chunked").lower(spec, spec, spec).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 2**30
    q, k, v = _qkv(batch=1, t_len=65536, s_len=65536, heads=1, head_dim=64)
    grads = jax.block_until_ready(compiled(q, k, v))
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    # loss = Σ_t Σ_h out_th with out_t = Σ_s p_ts v_s, so ∂loss/∂v_sh = Σ_t p_ts and summing
    # over s and h gives H · Σ_t Σ_s p_ts = H · T (every softmax row sums to one).
    np.testing.assert_allclose(float(grads[2].sum()) / 64, 65536, rtol=1e-3)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxnn.ops.attention import dot_product_attention

mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "fsdp"))
B, T, N, H = 8, 200, 2, 16
q, k, v = (jax.random.normal(jax.random.key(i), (B, T, N, H)) for i in range(3))
bias = jax.random.normal(jax.random.key(5), (1, N, T, T))  # broadcast over B: replicated
lengths = jnp.arange(1, B + 1) * 25
mask = (jnp.arange(T)[None] < lengths[:, None] + 10)[:, None, None, :]  # per example: split
split, rep = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())

def loss(impl, q, k, v, bias, mask, lengths):
    # attention dropout too: each device's masks must be those of its rows of the whole batch
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, key_lengths=lengths,
                                is_causal=True, implementation=impl, dropout_rate=0.2,
                                dropout_rng=jax.random.key(9))
    return jnp.sum(out * v)

def sharded(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return jax.grad(lambda *a: loss("chunked", *a), argnums=(0, 1, 2, 3))(*args)

step = jax.jit(sharded, in_shardings=(split, split, split, rep, split, split))
args = (q, k, v, bias, mask, lengths)
hlo = step.lower(*args).compile().as_text()
assert hlo.count("all-gather(") == 0, hlo.count("all-gather(")
want = jax.grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2, 3))(*args)
for got, ref in zip(step(*args), want):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
print("OK")
"""


def test_chunked_splits_over_the_batch_under_a_mesh(tmp_path):
    """Under a 2 x 2 device mesh the blocked kernel runs on each device's examples (no
    all-gather of Q, K, V), with values and q/k/v/bias gradients equal to the reference."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = str(root)
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
