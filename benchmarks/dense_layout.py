"""Why jaxnn's Dense layers flatten their rows: rank-3 vs flat [M, D] forward + backward on XLA.

    .venv/bin/python benchmarks/dense_layout.py [--batch 64] [--length 256] [--reps 7]

Times jax.grad of a sum-of-squares loss through, on x [B, T, D]:
  - the feed-forward layer Dense(D -> F) -> GELU -> Dense(F -> D), written on the rank-3 array
    (what nn.Dense does with [B, T, D] input) and on x.reshape(B·T, D) (what jaxnn.nn.MLP does);
  - the four attention projections (query/key/value [D, N, H], out [N, H, D]) as rank-3/4
    einsums (nn.DenseGeneral's form) and as flat [B·T, D] @ [D, N·H] matmuls (what
    jaxnn.nn.MultiHeadAttention does).
The variants alternate round by round in one process (benchmarks/timing.py) and compute the
same gradients (the largest relative difference is printed). On XLA:CPU the rank-3 backward
compiles transposing elementwise fusions around the kernel gradient; elsewhere the two forms
may time the same.

Writes benchmarks/results/dense_layout.json and .md. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)
from timing import time_interleaved  # noqa: E402  (benchmarks/timing.py)

from jaxnn.launch import configure_process  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results


def feed_forward(flat: bool):
    def loss(x, w1, w2):
        h = x.reshape(-1, x.shape[-1]) if flat else x
        return jnp.sum((jax.nn.gelu(h @ w1, approximate=False) @ w2) ** 2)

    return loss


def projections(flat: bool):
    def loss(x, wq, wk, wv, wo):
        d, n, h = wq.shape
        if flat:
            rows = x.reshape(-1, d)
            q, k, v = (rows @ w.reshape(d, n * h) for w in (wq, wk, wv))
            return jnp.sum(((q * k + v) @ wo.reshape(n * h, -1)) ** 2)
        q, k, v = (jnp.einsum("btd,dnh->btnh", x, w) for w in (wq, wk, wv))
        return jnp.sum(jnp.einsum("btnh,nhd->btd", q * k + v, wo) ** 2)

    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--mlp-dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=7)
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    b, t, d, f, n = args.batch, args.length, args.dim, args.mlp_dim, args.heads
    for flag, value in (
        ("--batch", b),
        ("--length", t),
        ("--dim", d),
        ("--mlp-dim", f),
        ("--heads", n),
        ("--reps", args.reps),
    ):
        if value < 1:
            parser.error(f"{flag}={value}; allowed: an integer >= 1")
    if d % n:
        parser.error(f"--dim={d} must be divisible by --heads={n}")
    keys = jax.random.split(jax.random.key(0), 7)
    x = jax.random.normal(keys[0], (b, t, d))
    ff_args = (
        x,
        0.05 * jax.random.normal(keys[1], (d, f)),
        0.05 * jax.random.normal(keys[2], (f, d)),
    )
    heads = [0.05 * jax.random.normal(keys[i], (d, n, d // n)) for i in (3, 4, 5)]
    proj_args = (x, *heads, 0.05 * jax.random.normal(keys[6], (n, d // n, d)))

    cases = {"feed_forward": (feed_forward, ff_args), "projections": (projections, proj_args)}
    results = {
        "shape": {"B": b, "T": t, "D": d, "F": f, "N": n},
        "backend": jax.default_backend(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "host_allocator": host_allocator()["mode"],
        "cases": {},
    }
    runners, grads = {}, {}
    for name, (make, inputs) in cases.items():
        for form in ("rank3", "flat"):
            step = jax.jit(jax.grad(make(form == "flat"), argnums=tuple(range(len(inputs)))))
            grads[name, form] = jax.block_until_ready(step(*inputs))  # compile + warm up
            runners[f"{name}/{form}"] = lambda s=step, a=inputs: jax.block_until_ready(s(*a))
    times = time_interleaved(runners, args.reps, warmup=1)
    lines = [
        "# Dense layout: rank-3 vs flat rows, forward + backward (benchmarks/dense_layout.py)",
        "",
        f"Backend {results['backend']}, B={b}, T={t}, D={d}, F={f}, N={n}; medians of "
        f"{args.reps} interleaved rounds; load average at start {results['load_average']}; "
        f"host allocator {results['host_allocator']}.",
        "",
        "| layer | rank-3 ms | flat ms | rank-3 / flat | largest relative gradient difference |",
        "|---|---|---|---|---|",
    ]
    for name in cases:
        rank3 = statistics.median(times[f"{name}/rank3"])
        flat = statistics.median(times[f"{name}/flat"])
        diff = max(
            float(jnp.max(jnp.abs(a - c)) / jnp.maximum(jnp.max(jnp.abs(c)), 1e-30))
            for a, c in zip(grads[name, "rank3"], grads[name, "flat"], strict=True)
        )
        results["cases"][name] = {
            "rank3_s": rank3,
            "flat_s": flat,
            "speedup": rank3 / flat,
            "max_relative_grad_diff": diff,
        }
        lines.append(
            f"| {name} | {1e3 * rank3:.1f} | {1e3 * flat:.1f} | {rank3 / flat:.2f}x | {diff:.1e} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dense_layout.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "dense_layout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    configure_process()  # before JAX's first computation; CPU runs only (jaxnn.launch)
    main()
