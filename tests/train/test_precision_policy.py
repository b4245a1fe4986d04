"""The bfloat16 policy, read from the train step's HLO, and bf16 logits against float32 ones.

With ``model.dtype = "bfloat16"`` the transformer's train step must run every dense matmul
(query/key/value/out projections, both feed-forward layers, the head; forward, input gradient
and weight gradient) with bfloat16 operands, while the attention scores, the softmax, norm and
loss statistics stay float32. The check parses the HLO of the jitted step: every ``dot`` /
``convolution`` (and cuBLAS gemm custom call) with its operand types, every ``reduce`` with its
operand and result type.

Which HLO: on GPU and TPU the compiled module (``jit(step).lower(...).compile().as_text()``).
XLA:CPU has no bfloat16 matmul, so its compiler rewrites each bf16 dot into converts around a
float32 dot; there the policy is read from the HLO as JAX emits it
(``lower(...).as_text(dialect="hlo")``), the program every backend receives.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.models import TransformerClassifier
from jaxnn.train import Trainer, load_data
from jaxnn.train.distributed import shard_batch
from jaxnn.train.precision import compute_dtype

NUM_LAYERS = 2

_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<type>\S+)\s+(?P<op>[\w-]+)\(")
_TYPE = re.compile(r"^(?P<dtype>[a-z]+\d*)\[(?P<dims>[^\]]*)\]")
_INLINE = re.compile(r"^(?P<type>[a-z]+\d*\[[^\]]*\](?:\{[^}]*\})?)\s+%?(?P<name>\S+)$")


def _split_operands(text: str) -> list[str]:
    """'a, b' or 'bf16[2,3]{1,0} %a, f32[3] %b' -> the operands (commas inside []{} kept)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            if depth == 0:
                out.append(text[start:i])
                return [o.strip() for o in out if o.strip()]
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [o.strip() for o in out if o.strip()]


def _type(text: str) -> tuple[str, tuple[int, ...]] | None:
    m = _TYPE.match(text)
    if m is None:
        return None
    dims = tuple(int(d) for d in m["dims"].split(",") if d.strip().isdigit())
    return m["dtype"], dims


def parse_hlo(text: str) -> list[dict]:
    """Instructions of an HLO module: name, (dtype, shape), op, operand (dtype, shape)s, line."""
    rows, types = [], {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        result = _type(m["type"])
        if result is not None:
            types[m["name"]] = result
        rows.append({"name": m["name"], "type": result, "op": m["op"], "line": line, "at": m})
    for row in rows:
        operands = []
        for operand in _split_operands(row["line"][row["at"].end() :]):
            inline = _INLINE.match(operand)
            if inline is not None:
                operands.append(_type(inline["type"]))
            else:
                operands.append(types.get(operand.lstrip("%")))
        row["operands"] = operands
    return rows


def _is_matmul(row: dict) -> bool:
    if row["op"] in ("dot", "convolution"):
        return True
    return row["op"] == "custom-call" and re.search(r'custom_call_target="__cublas', row["line"])


def _train_step_hlo(config) -> tuple[str, str, Trainer]:
    data = load_data(config)
    trainer = Trainer(config, data)
    state = trainer.init_state()
    index = trainer.train_batches.order(0)[0]
    batch = shard_batch(trainer.train_batches.make_batch(index), trainer.mesh)
    lowered = jax.jit(trainer.train_step).lower(state, batch)
    if jax.default_backend() == "cpu":
        return lowered.as_text(dialect="hlo"), "lowered", trainer
    return lowered.compile().as_text(), "compiled", trainer


@pytest.fixture
def bf16_transformer_config(tiny_config):
    config = tiny_config
    config.model.name = "transformer"
    config.model.embed_dim = 32
    config.model.num_layers = NUM_LAYERS
    config.model.num_heads = 4
    config.model.mlp_dim = 64
    config.model.dropout = 0.0
    config.model.attention_dropout = 0.0
    config.model.dtype = "bfloat16"
    return config


def test_bf16_train_step_runs_dense_matmuls_in_bf16_and_statistics_in_f32(
    bf16_transformer_config,
):
    text, which, _ = _train_step_hlo(bf16_transformer_config)
    rows = parse_hlo(text)
    matmuls = [r for r in rows if _is_matmul(r)]
    assert matmuls, f"no dot in the {which} HLO"
    for row in matmuls:
        assert all(o is not None for o in row["operands"]), row["line"]

    # dense layers: rank-2 products (the model flattens rows to [M, D] before each Dense)
    dense = [r for r in matmuls if r["type"] is not None and len(r["type"][1]) == 2]
    attention = [r for r in matmuls if r["type"] is not None and len(r["type"][1]) == 4]
    for row in dense:
        assert [o[0] for o in row["operands"]] == ["bf16", "bf16"], row["line"]
        assert row["type"][0] == "bf16", row["line"]
    if which == "lowered":  # the exact program: 3 products (y, dx, dW) per Dense layer
        dense_layers = 6 * NUM_LAYERS + 1  # q, k, v, out, mlp_0, mlp_1 per block; the head
        assert len(dense) == 3 * dense_layers, [r["line"] for r in dense]
        assert len(attention) == 6 * NUM_LAYERS  # QK^T, PV forward; 4 backward products
    # attention scores and their gradients accumulate in float32 (bf16 or f32 operands)
    for row in attention:
        assert row["type"][0] == "f32", row["line"]
        assert {o[0] for o in row["operands"]} <= {"bf16", "f32"}, row["line"]

    # statistics: every reduction over the last (feature / key / class) axis of an activation
    # (layer-norm mean and variance, softmax max and sum, the loss's log-sum-exp) is float32
    per_row = [
        r
        for r in rows
        if r["op"] == "reduce"
        and r["operands"]
        and r["operands"][0] is not None
        and len(r["operands"][0][1]) >= 2
        and re.search(rf"dimensions=\{{{len(r['operands'][0][1]) - 1}\}}", r["line"])
    ]
    floating = [r for r in per_row if r["operands"][0][0] in ("bf16", "f16", "f32")]
    for row in floating:
        assert row["type"] is not None and row["type"][0] == "f32", row["line"]
    norms = 2 * NUM_LAYERS + 1
    assert len(floating) >= 2 * norms + 2 * NUM_LAYERS + 2, len(floating)


def test_f32_train_step_has_no_bf16_anywhere(bf16_transformer_config):
    """The same parse on the float32 model: no bf16 value at all (the parser sees dtypes)."""
    bf16_transformer_config.model.dtype = "float32"
    text, _, _ = _train_step_hlo(bf16_transformer_config)
    rows = parse_hlo(text)
    assert [r for r in rows if _is_matmul(r)]
    assert not [r["line"] for r in rows if r["type"] is not None and r["type"][0] == "bf16"]


# bf16 keeps 8 significant bits: each rounding to bf16 has relative error <= u = eps/2 = 2^-8.
BF16_U = float(jnp.finfo(jnp.bfloat16).eps) / 2


def test_bf16_logits_close_to_f32_with_a_tolerance_from_bf16_eps():
    """Tolerance: |z_bf16 - z_f32| <= K * u * S, with u = 2^-8 (bf16's unit roundoff) and
    S = max |z_f32| the logit scale. K counts the bf16 roundings along the deepest path to a
    logit, each adding a relative error <= u to first order: the embedding sum, then per block
    the norm output, the attention output, the residual, the norm output, the feed-forward
    hidden and output, the residual (8), then the final norm, the pooled vector and the head:
    K = 8 L + 4 (20 here, 7.8 % of S; the error measured is about 1 u*S). A bf16 path that
    computes something else than the float32 one (a lost mask, a different kernel, a dropped
    cast) exceeds it; whether the statistics stay float32 is pinned by the HLO test above,
    since two-pass statistics in bf16 still stay within this first-order bound."""
    rng = np.random.default_rng(0)
    vocab, length, batch = 200, 32, 8
    tokens = jnp.asarray(rng.integers(1, vocab, size=(batch, length)), jnp.int32)
    mask = jnp.asarray(np.arange(length) < rng.integers(4, length + 1, size=(batch, 1)))

    def build(dtype):
        return TransformerClassifier(
            vocab_size=vocab,
            num_classes=5,
            max_len=length,
            embed_dim=64,
            num_layers=NUM_LAYERS,
            num_heads=4,
            mlp_dim=128,
            attention_impl="reference",
            dtype=dtype,
        )

    full, half = build(None), build(compute_dtype("bfloat16"))
    variables = full.init(jax.random.key(0), tokens, mask, train=False)
    # visible weights (init's 0.02 embeddings give logits of a few 1e-2; scale them up)
    variables = jax.tree.map(
        lambda a: a * 20.0 if a.ndim == 2 and a.shape[0] >= length else a, variables
    )
    with jax.default_matmul_precision("highest"):
        reference = np.asarray(
            jax.jit(full.apply, static_argnames="train")(variables, tokens, mask, train=False),
            np.float64,
        )
    half_logits = jax.jit(half.apply, static_argnames="train")(variables, tokens, mask, train=False)
    assert half_logits.dtype == jnp.float32  # logits leave the model in float32
    logits = np.asarray(half_logits, np.float64)
    scale = float(np.abs(reference).max())
    assert scale > 0.5  # the logits are not all near zero
    k = 8 * NUM_LAYERS + 4
    error = float(np.abs(logits - reference).max())
    print(f"bf16 logit error {error:.3g} = {error / (BF16_U * scale):.2f} u*S; bound {k} u*S")
    assert error <= k * BF16_U * scale, (error, k * BF16_U * scale)
    assert error > 0  # it did compute in bf16
