"""Benchmark one optimizer step of a big embedding table: dense optax.adam vs lazy sparse Adam.

The table of the bow model's hashed bigrams, E [V, D] with V = 2^20, D = 64 (256 MiB in
float32, the same again for each Adam moment), and one batch of B x T = 64 x 256 looked-up
ids with their row gradients dL/d(E[ids]) [B, T, D]. Each variant is one jitted function with
the table and the optimizer state donated (updated in place), timed from the row gradients
to the new table and state (block_until_ready):

  dense          g = zeros[V, D].at[ids].add(row_grads) (what autodiff of E[ids] gives),
                 optax.adam update, optax.apply_updates: O(V D)
  sparse         jaxnn.train.sparse: sparse_gradient (sort, search, scatter-add), lazy_adam,
                 apply_updates (scatter of the touched rows): O(N log N + K D), N = B T
  sparse, no donation   the same without donated buffers: XLA must copy E, m and v (O(V D)),
                 which shows why the train step donates its state

Reports the median and the spread of --repeats timed calls of each (after a warm-up call that
compiles), and the ratio dense / sparse measured in the same run. Writes
benchmarks/results/sparse_embedding.json, .md and .png. Run:

    .venv/bin/python benchmarks/sparse_embedding.py [--repeats 20] [--rows 1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from output import add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn.launch import configure_process  # noqa: E402
from jaxnn.train import sparse  # noqa: E402


def dense_step_fn(tx):
    def step(table, opt_state, ids, row_grads):
        grads = jnp.zeros_like(table).at[ids].add(row_grads)
        updates, opt_state = tx.update(grads, opt_state, table)
        return optax.apply_updates(table, updates), opt_state

    return step


def sparse_step_fn(tx):
    def step(table, opt_state, ids, row_grads):
        grads = sparse.sparse_gradient(ids, row_grads)
        updates, opt_state = tx.update(grads, opt_state, table)
        return sparse.apply_updates(table, updates), opt_state

    return step


def time_variant(step, tx, table_np, batches, repeats, donate):
    """Median seconds of one call; a fresh table and state per variant (donation eats them)."""
    fn = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    table = jnp.asarray(table_np)
    opt_state = tx.init(table)
    start = time.perf_counter()
    table, opt_state = fn(table, opt_state, *batches[0])
    jax.block_until_ready((table, opt_state))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        ids, row_grads = batches[(i + 1) % len(batches)]
        start = time.perf_counter()
        table, opt_state = fn(table, opt_state, ids, row_grads)
        jax.block_until_ready((table, opt_state))
        times.append(time.perf_counter() - start)
    del table, opt_state
    return {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "max_s": float(np.max(times)),
        "first_call_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**20, help="V, rows of the table")
    parser.add_argument("--dim", type=int, default=64, help="D")
    parser.add_argument("--batch-size", type=int, default=64, help="B")
    parser.add_argument("--length", type=int, default=256, help="T, ids per example")
    parser.add_argument("--repeats", type=int, default=20)
    add_output_flags(parser)
    args = parser.parse_args()
    stem = output_dir(args) / "sparse_embedding"

    rng = np.random.default_rng(0)
    table_np = (0.1 * rng.standard_normal((args.rows, args.dim))).astype(np.float32)
    batches = []
    for _ in range(4):
        ids = rng.integers(0, args.rows, (args.batch_size, args.length)).astype(np.int32)
        row_grads = rng.standard_normal((args.batch_size, args.length, args.dim)).astype(np.float32)
        batches.append((jnp.asarray(ids), jnp.asarray(row_grads)))
    distinct = float(np.mean([len(np.unique(np.asarray(ids))) for ids, _ in batches]))

    load_before = os.getloadavg()
    lr = 1e-3
    variants = {
        "dense optax.adam": (dense_step_fn(optax.adam(lr)), optax.adam(lr), True),
        "sparse lazy_adam": (sparse_step_fn(sparse.lazy_adam(lr)), sparse.lazy_adam(lr), True),
        "sparse lazy_adam, no donation": (
            sparse_step_fn(sparse.lazy_adam(lr)),
            sparse.lazy_adam(lr),
            False,
        ),
    }
    results = {}
    for name, (step, tx, donate) in variants.items():
        results[name] = time_variant(step, tx, table_np, batches, args.repeats, donate)
        print(
            f"{name:32s} median {results[name]['median_s'] * 1e3:9.2f} ms  "
            f"(min {results[name]['min_s'] * 1e3:.2f}, max {results[name]['max_s'] * 1e3:.2f}; "
            f"first call {results[name]['first_call_s']:.2f} s)",
            flush=True,
        )
    ratio = results["dense optax.adam"]["median_s"] / results["sparse lazy_adam"]["median_s"]
    ratio_min = results["dense optax.adam"]["min_s"] / results["sparse lazy_adam"]["min_s"]
    print(f"dense / sparse: {ratio:.1f}x (medians), {ratio_min:.1f}x (minima)")

    report = {
        "benchmark": "sparse_embedding",
        "what": "one jitted optimizer step of an embedding table from row gradients",
        "table": {"rows": args.rows, "dim": args.dim, "dtype": "float32"},
        "batch": {"batch_size": args.batch_size, "length": args.length},
        "distinct_ids_per_batch": distinct,
        "repeats": args.repeats,
        "results": results,
        "dense_over_sparse_median": ratio,
        "dense_over_sparse_min": ratio_min,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "cpu_count": os.cpu_count(),
            "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        },
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Sparse embedding update: dense optax.adam vs lazy sparse Adam",
        "",
        f"One jitted optimizer step of a {args.rows} x {args.dim} float32 table from the row "
        f"gradients of a {args.batch_size} x {args.length} batch "
        f"({distinct:.0f} distinct ids on average); median of {args.repeats} calls "
        f"on {jax.devices()[0].platform}.",
        "Command: `.venv/bin/python benchmarks/sparse_embedding.py`.",
        "",
        "| variant | median ms | min ms | max ms | first call (compile) s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['median_s'] * 1e3:.2f} | {r['min_s'] * 1e3:.2f} | "
            f"{r['max_s'] * 1e3:.2f} | {r['first_call_s']:.2f} |"
        )
    lines += [
        "",
        f"Dense / sparse (same run): **{ratio:.1f}x** on medians, {ratio_min:.1f}x on minima. "
        f"Machine: {os.cpu_count()} CPU "
        f"cores, 1-minute load average {load_before[0]:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the run (other jobs share the cores: absolute times "
        "are noisy, the ratio less so).",
        "",
        "The two are not the same optimizer when rows are skipped: lazy Adam leaves the rows a "
        "batch does not touch (and their moments) alone, dense Adam still moves them by their "
        "old momentum; they agree when every row is touched (tests/train/test_sparse.py).",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    medians = [results[n]["median_s"] * 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.barh(names, medians, color=["tab:gray", "tab:blue", "tab:orange"][: len(names)])
    ax.set_xscale("log")
    ax.set_xlabel("median ms per optimizer step (log scale)")
    ax.invert_yaxis()
    for y, value in enumerate(medians):
        ax.text(value, y, f" {value:.1f} ms", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    configure_process()  # before JAX's first computation; CPU runs only (jaxnn.launch)
    main()
