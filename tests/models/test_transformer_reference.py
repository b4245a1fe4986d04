"""jaxnn.models.TransformerClassifier against an independent float64 NumPy forward pass with the
model's own weights copied in (embeddings + positions, pre-LN blocks, final norm, pooling, head;
dropout off), and its parts against flax.linen (LayerNorm, MultiHeadDotProductAttention, Dense).

The NumPy transcription follows the model's docstring, not its code:

    x_0    = E[tokens] + P[0..T-1]
    x_l    = x + MHA(Norm_1(x), mask);  x_l = x_l + W_2 act(W_1 Norm_2(x_l))      l = 1..L
    pooled = pool(Norm(x_L), mask)      mean / max over real tokens, or the first token
    logits = pooled W_h + b_h

All comparisons run under ``jax.default_matmul_precision("highest")`` so that the tolerance
(1e-5 relative to the logit scale, float32 against float64) holds on GPU (TF32) and TPU too.
"""

from __future__ import annotations

import math

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.models import TransformerClassifier

VOCAB, CLASSES, MAX_LEN = 40, 3, 12
B, T, D, HEADS, MLP_DIM = 3, 10, 16, 4, 24


# ------------------------------------------------------------------ NumPy reference (float64)
def np_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # population variance, as Ba et al.
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def np_norm(kind, x, p):
    if kind == "layer":
        return np_layer_norm(x, p["scale"], p["bias"])
    return np_rms_norm(x, p["scale"])


erf = np.vectorize(math.erf)

ACTS = {
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


def np_attention(x, mask, p):
    """Multi-head scaled dot-product self-attention, padding keys excluded."""
    q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("btd,dnh->btnh", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("btd,dnh->btnh", x, p["value"]["kernel"]) + p["value"]["bias"]
    head_dim = q.shape[-1]
    scores = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(head_dim)
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bnts,bsnh->btnh", weights, v)
    return np.einsum("btnh,nhd->btd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def np_classifier(params, tokens, mask, *, num_layers, norm, pooling, activation):
    x = (
        params["embed"]["embedding"][tokens]
        + params["position_embed"]["embedding"][: tokens.shape[1]][None]
    )
    for layer in range(num_layers):
        p = params[f"blocks_{layer}"]
        x = x + np_attention(np_norm(norm, x, p["norm_1"]), mask, p["attention"])
        h = np_norm(norm, x, p["norm_2"])
        h = ACTS[activation](h @ p["mlp"]["Dense_0"]["kernel"] + p["mlp"]["Dense_0"]["bias"])
        x = x + h @ p["mlp"]["Dense_1"]["kernel"] + p["mlp"]["Dense_1"]["bias"]
    x = np_norm(norm, x, params["final_norm"])
    m = mask[..., None]
    if pooling == "mean":
        pooled = (x * m).sum(1) / m.sum(1)
    elif pooling == "max":
        pooled = np.where(m, x, -np.inf).max(1)
    else:
        pooled = x[:, 0]
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]


# ------------------------------------------------------------------ helpers
def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(B, T)).astype(np.int32)
    lengths = np.array([T, 1, 6])  # a full row, a one-token row, a padded row
    mask = np.arange(T)[None] < lengths[:, None]
    tokens = np.where(mask, tokens, 0)
    return tokens, mask


def _random_params(model, tokens, mask, seed=1):
    """The model's initial parameter tree with every leaf redrawn at a visible scale (the
    default init has zero biases, unit norm scales and 0.02 embeddings, which would hide a
    dropped bias, scale or position table)."""
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    leaves, treedef = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(seed)
    new = [
        rng.normal(0.0, 0.5, size=leaf.shape).astype(np.float32) + (1.0 if leaf.ndim == 1 else 0)
        for leaf in leaves
    ]
    return jax.tree.unflatten(treedef, new)


def _build(num_layers=2, norm="layer", pooling="mean", activation="gelu", impl="reference"):
    return TransformerClassifier(
        vocab_size=VOCAB,
        num_classes=CLASSES,
        max_len=MAX_LEN,
        embed_dim=D,
        num_layers=num_layers,
        num_heads=HEADS,
        mlp_dim=MLP_DIM,
        dropout_rate=0.0,
        activation=activation,
        norm=norm,
        pooling=pooling,
        attention_impl=impl,
    )


def _to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _assert_close(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * scale)


# ------------------------------------------------------------------ the whole classifier
@pytest.mark.parametrize(
    "num_layers, norm, pooling, activation",
    [
        (2, "layer", "mean", "gelu"),
        (1, "layer", "max", "relu"),
        (2, "rms", "first", "tanh"),
        (0, "layer", "mean", "gelu"),
    ],
)
def test_classifier_matches_numpy_forward(num_layers, norm, pooling, activation):
    tokens, mask = _inputs()
    model = _build(num_layers, norm, pooling, activation)
    params = _random_params(model, tokens, mask)
    with jax.default_matmul_precision("highest"):
        logits = jax.jit(model.apply, static_argnames="train")(
            {"params": params}, tokens, mask, train=False
        )
    assert logits.shape == (B, CLASSES) and logits.dtype == jnp.float32
    reference = np_classifier(
        _to64(params),
        tokens,
        mask,
        num_layers=num_layers,
        norm=norm,
        pooling=pooling,
        activation=activation,
    )
    _assert_close(logits, reference)


def test_every_attention_implementation_gives_the_reference_logits():
    tokens, mask = _inputs(3)
    model = _build()
    params = _random_params(model, tokens, mask, seed=4)
    reference = np_classifier(
        _to64(params), tokens, mask, num_layers=2, norm="layer", pooling="mean", activation="gelu"
    )
    for impl in ("auto", "reference", "chunked", "xla"):
        with jax.default_matmul_precision("highest"):
            logits = jax.jit(_build(impl=impl).apply, static_argnames="train")(
                {"params": params}, tokens, mask, train=False
            )
        _assert_close(logits, reference)


def test_parameter_tree_is_the_documented_one():
    """The reference reads exactly these parameters: a new or renamed one would be unread."""
    tokens, mask = _inputs()
    params = _build(num_layers=1).init(jax.random.key(0), tokens, mask, train=False)["params"]
    shapes = jax.tree.map(lambda a: a.shape, params)
    head_dim = D // HEADS
    dense = {"kernel": (D, HEADS, head_dim), "bias": (HEADS, head_dim)}
    norm = {"scale": (D,), "bias": (D,)}
    assert shapes == {
        "embed": {"embedding": (VOCAB, D)},
        "position_embed": {"embedding": (MAX_LEN, D)},
        "blocks_0": {
            "norm_1": norm,
            "attention": {
                "query": dense,
                "key": dense,
                "value": dense,
                "out": {"kernel": (HEADS, head_dim, D), "bias": (D,)},
            },
            "norm_2": norm,
            "mlp": {
                "Dense_0": {"kernel": (D, MLP_DIM), "bias": (MLP_DIM,)},
                "Dense_1": {"kernel": (MLP_DIM, D), "bias": (D,)},
            },
        },
        "final_norm": norm,
        "head": {"kernel": (D, CLASSES), "bias": (CLASSES,)},
    }


def test_padding_tokens_and_train_mode_without_dropout_change_nothing():
    tokens, mask = _inputs()
    model = _build()
    params = _random_params(model, tokens, mask)
    other = np.where(mask, tokens, 7).astype(np.int32)  # different ids under the padding
    with jax.default_matmul_precision("highest"):
        a = model.apply({"params": params}, tokens, mask, train=False)
        b = model.apply({"params": params}, other, mask, train=True)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ parts against flax.linen
def test_norms_match_flax_layernorm_and_rmsnorm():
    tokens, mask = _inputs()
    model = _build(num_layers=1)
    params = _random_params(model, tokens, mask)
    x = np.random.default_rng(5).normal(1.0, 2.0, size=(B, T, D)).astype(np.float32)
    from jaxnn.nn import LayerNorm, RMSNorm

    p = params["final_norm"]
    ours = LayerNorm().apply({"params": p}, x)
    theirs = fnn.LayerNorm(epsilon=1e-6).apply({"params": p}, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    ours = RMSNorm().apply({"params": {"scale": p["scale"]}}, x)
    theirs = fnn.RMSNorm(epsilon=1e-6).apply({"params": {"scale": p["scale"]}}, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_block_attention_matches_flax_multi_head_dot_product_attention():
    """The classifier's attention parameters, loaded into flax's module, give the same
    outputs (same [D, N, H] / [N, H, D] layout, same 1/sqrt(H) scale, same key-padding mask)."""
    tokens, mask = _inputs()
    model = _build(num_layers=1)
    params = _random_params(model, tokens, mask)
    p = params["blocks_0"]["attention"]
    x = np.random.default_rng(6).normal(size=(B, T, D)).astype(np.float32)
    from jaxnn.nn import MultiHeadAttention

    flax_mha = fnn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=D, out_features=D)
    flax_mask = fnn.make_attention_mask(mask, mask)  # [B, 1, T, S]: query and key real
    with jax.default_matmul_precision("highest"):
        ours = MultiHeadAttention(num_heads=HEADS, attention_impl="reference").apply(
            {"params": p}, x, mask, deterministic=True
        )
        theirs = flax_mha.apply({"params": p}, x, x, mask=flax_mask, deterministic=True)
    # flax zeroes nothing for a query that sees no key; compare real query positions only
    np.testing.assert_allclose(
        np.asarray(ours)[mask], np.asarray(theirs)[mask], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(ours, np.float64), np_attention(_to64(x), mask, _to64(p)), rtol=0, atol=1e-5
    )


def test_mlp_and_head_match_flax_dense():
    tokens, mask = _inputs()
    model = _build(num_layers=1)
    params = _random_params(model, tokens, mask)
    x = np.random.default_rng(7).normal(size=(B, D)).astype(np.float32)
    from jaxnn.nn import MLP

    mlp = params["blocks_0"]["mlp"]
    with jax.default_matmul_precision("highest"):
        ours = MLP((MLP_DIM, D), activation="gelu").apply({"params": mlp}, x, deterministic=True)
        h = fnn.Dense(MLP_DIM).apply({"params": mlp["Dense_0"]}, x)
        theirs = fnn.Dense(D).apply({"params": mlp["Dense_1"]}, jax.nn.gelu(h, approximate=False))
        head = fnn.Dense(CLASSES).apply({"params": params["head"]}, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        head, _to64(x) @ _to64(params["head"]["kernel"]) + params["head"]["bias"], atol=1e-5
    )
