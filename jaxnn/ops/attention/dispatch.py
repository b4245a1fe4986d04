"""What implementation="auto" runs: a short table of rules, the first that applies wins.

Each rule names the implementation it picks and why; the numbers behind the thresholds are in
benchmarks/results/attention_auto.md. The rules read only static facts (shapes, dtype, which
arguments are given, the backend from `default_backend`), so the choice is made at trace time
and costs nothing at run time. The principle on GPU/TPU: never the [B, N, T, S] weights where
a fused kernel can do the job; only return_weights (and dropout masks the blocked kernel
cannot reproduce) send a call to "reference".

Shape letters: B batch, T query length, S key length, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.ops.attention.chunked import dropout_problem

# --- thresholds, each measured: see benchmarks/results/attention_auto.md ---------------

# CPU: from one head's T·S = 128² up the blocked kernel beats the materialized graph, whose
# loop-free graph has less overhead below.
CPU_CHUNKED_MIN_HEAD_SCORES = 128 * 128
# CPU: mid-sized float32 problems train fastest as XLA's graph (its backward reuses the saved
# probabilities) but run forward alone fastest blocked: value from "chunked", derivatives
# from "xla", inside this window of one head's T·S, B·N·T·S and H.
CPU_MIXED_MAX_HEAD_SCORES = 256 * 256
CPU_MIXED_SCORES = (1 << 20, 1 << 21)
CPU_MIXED_MAX_HEAD_DIM = 64
# cuDNN's flash attention (via jax.nn): fp16/bf16 only, H a multiple of 8 up to 128 (256 from
# Hopper on; 128 is the portable bound), even T and S when a bias is trained. A general boolean
# mask is left to "xla": jax.nn would turn it into a bias of the mask's shape, which cuDNN does
# not broadcast the way a [B, 1, 1, S] padding mask needs; key padding goes as key_lengths.
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
CUDNN_MAX_HEAD_DIM = 128
CUDNN_HEAD_DIM_MULTIPLE = 8
# Pallas' TPU flash attention tiles T and S by 128.
TPU_PALLAS_BLOCK = 128
# Memory guard on GPU/TPU: "xla" holds several [B, N, T, S] float32 arrays; above this many
# scores (4 GiB per array) the blocked kernel, whose memory is linear in T, runs instead
# (at 2^33 scores "xla" asked an H200 for 80 GiB).
XLA_MAX_SCORES = 1 << 30

ACCELERATORS = ("gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static facts of one attention call that "auto" decides on."""

    backend: str  # jax.default_backend(): "cpu", "gpu", "tpu", ...
    batch: int
    t_len: int
    s_len: int
    heads: int
    head_dim: int
    dtype: np.dtype
    has_mask: bool
    has_bias: bool
    has_lengths: bool
    dropout: bool  # dropout_rate > 0
    chunked_can_drop: bool  # "chunked" can draw the masks "reference" would
    return_weights: bool

    @property
    def head_scores(self) -> int:
        return self.t_len * self.s_len

    @property
    def scores(self) -> int:
        return self.batch * self.heads * self.t_len * self.s_len


@dataclasses.dataclass(frozen=True)
class Choice:
    """What "auto" runs: an implementation name, and for the CPU window ``xla_gradient``
    (the value of "chunked", the derivatives of "xla"); ``rule`` names the rule that chose."""

    implementation: str
    xla_gradient: bool = False
    rule: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the table: on ``backends``, when ``applies``, run ``implementation``."""

    name: str
    backends: str  # "any", "gpu", "tpu", "gpu|tpu", or "cpu" (also any other host backend)
    applies: Callable[[Problem], bool]
    implementation: str
    reason: str
    xla_gradient: bool = False

    def covers(self, backend: str) -> bool:
        if self.backends == "any":
            return True
        if self.backends == "cpu":
            return backend not in ACCELERATORS
        return backend in self.backends.split("|")


def _cudnn_fits(p: Problem) -> bool:
    return (
        p.dtype in CUDNN_DTYPES
        and p.head_dim <= CUDNN_MAX_HEAD_DIM
        and p.head_dim % CUDNN_HEAD_DIM_MULTIPLE == 0
        and not p.has_mask
        and (not p.has_bias or (p.t_len % 2 == 0 and p.s_len % 2 == 0))
    )


def _tpu_pallas_fits(p: Problem) -> bool:
    return not p.has_mask and p.t_len % TPU_PALLAS_BLOCK == 0 and p.s_len % TPU_PALLAS_BLOCK == 0


def _cpu_mixed_window(p: Problem) -> bool:
    return (
        p.dtype == jnp.float32
        and p.head_dim <= CPU_MIXED_MAX_HEAD_DIM
        and p.head_scores <= CPU_MIXED_MAX_HEAD_SCORES
        and CPU_MIXED_SCORES[0] <= p.scores <= CPU_MIXED_SCORES[1]
    )


RULES: tuple[Rule, ...] = (
    Rule("weights", "any", lambda p: p.return_weights, "reference",
         "only 'reference' materializes, and so can return, the [B, N, T, S] weights"),
    Rule("dropout, no counters", "any", lambda p: p.dropout and not p.chunked_can_drop,
         "reference",
         "the blocked kernel's masks need a Threefry key and B·N·T·ceil(S/4) < 2^32"),
    Rule("dropout", "any", lambda p: p.dropout, "chunked",
         "exact dropout without [B, N, T, S] weights; no fused kernel drops attention weights"),
    Rule("cudnn", "gpu", _cudnn_fits, "cudnn",
         "fused, the fastest JAX kernel measured on an H200 (attention_auto.md); "
         "key_lengths go to its sequence-length arguments"),
    Rule("xla memory guard", "gpu|tpu", lambda p: p.scores > XLA_MAX_SCORES, "chunked",
         "'xla' would hold [B, N, T, S] arrays of more than XLA_MAX_SCORES scores"),
    Rule("tpu pallas", "tpu", _tpu_pallas_fits, "pallas",
         "fused flash attention; key_lengths as key segment ids, bias as its ab"),
    Rule("xla", "gpu|tpu", lambda p: True, "xla",
         "no fused kernel fits (float32, odd H, a general mask): jax.nn's XLA graph"),
    Rule("cpu window", "cpu", _cpu_mixed_window, "chunked",
         "value from the blocked forward, derivatives from XLA's graph (faster to train)",
         xla_gradient=True),
    Rule("cpu chunked", "cpu", lambda p: p.head_scores >= CPU_CHUNKED_MIN_HEAD_SCORES,
         "chunked", "blocked kernel from one head's T·S = 128² up"),
    Rule("cpu small", "cpu", lambda p: True, "reference",
         "small heads: the fused reference graph has the least loop overhead"),
)  # fmt: skip


def choose(problem: Problem) -> Choice:
    """The first rule of RULES that applies to ``problem``."""
    for rule in RULES:
        if rule.covers(problem.backend) and rule.applies(problem):
            return Choice(rule.implementation, rule.xla_gradient, rule.name)
    raise AssertionError("the last rule applies to every problem")  # pragma: no cover


def default_backend() -> str:
    """The backend "auto" decides for (a function, so tests can pin the GPU/TPU rules)."""
    return jax.default_backend()


def describe(
    q, k, *, mask, bias, key_lengths, dropout_rate, dropout_rng, return_weights, backend=None
) -> Problem:
    """The `Problem` of one call ([B, T, N, H] queries, [B, S, N, H] keys)."""
    batch, t_len, heads, head_dim = q.shape
    dropout = dropout_rate > 0.0
    return Problem(
        backend=backend or default_backend(),
        batch=batch,
        t_len=t_len,
        s_len=k.shape[1],
        heads=heads,
        head_dim=head_dim,
        dtype=jnp.dtype(q.dtype),
        has_mask=mask is not None,
        has_bias=bias is not None,
        has_lengths=key_lengths is not None,
        dropout=dropout,
        chunked_can_drop=dropout and dropout_problem(q, k, dropout_rng) is None,
        return_weights=bool(return_weights),
    )


def choose_for(q, k, **kwargs) -> Choice:
    """`choose` of `describe` (same keyword arguments)."""
    return choose(describe(q, k, **kwargs))
