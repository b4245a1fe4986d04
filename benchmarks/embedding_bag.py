"""The blocked bag sum's lookup sum on XLA:CPU: one jnp.sum over T vs adding halves.

    .venv/bin/python benchmarks/embedding_bag.py [--rows 1792] [--batch 32] [--length 256]

jaxnn.ops.embedding_bag sums each text's looked-up rows block by block. Its forward reduces a
block [c, T, (K,) D] over the middle axis T. XLA:CPU hands a plain sum there to a library
(YNNPACK) reduction; adding halves (T/2, T/4, ...) keeps it in XLA's own element-wise loop
fusions. This script times both (``HALVE_LOOKUP_SUM`` False /
True) on forward + backward (jax.grad) of:

  one trial, dropout 0.3     rows [U, D], the masked blocked form (what ``python train.py``
                             runs with dropout on a bag-of-words model)
  8 trials, half dropout     jax.vmap over 8 trials sharing the batch and the draws, 4 of them
                             rate 0 (`rate_free_trials`), rows [U, 8, D] (what jaxnn.tune's
                             TrialGroup runs for a mixed group)
  one trial, no dropout      U > 8 T rows, so the unmasked blocked form (not the counts one)

The shapes default to an IMDB tuning batch (benchmarks/tune.py --corpus imdb: B = 32 texts of
T = 256 tokens, U = 1792 distinct rows, D = 64). Variants alternate round by round in one
process (benchmarks/timing.py); each timing is ``--calls`` calls. The largest difference
between the two forms' outputs and gradients is printed (they add in different orders).

Writes benchmarks/results/embedding_bag.json and .md. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)
from timing import time_interleaved  # noqa: E402  (benchmarks/timing.py)

from jaxnn.launch import configure_process  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402
from jaxnn.ops import embedding_bag as bag  # noqa: E402
from jaxnn.ops.dropout import keep_rule, rate_free_trials, uniform_bits16  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results
TRIALS, FREE, RATE = 8, 4, 0.3


def cases(u: int, b: int, t: int, d: int) -> dict:
    """{name: (function, inputs)}: jax.grad of a loss through the bag sum, rows -> d rows."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(t // 2, t + 1, b)  # texts of different lengths: padding is U
    slot = np.where(np.arange(t) < lengths[:, None], rng.integers(0, u, (b, t)), u)
    slot = jnp.asarray(slot, jnp.int32)
    bits = uniform_bits16(jax.random.key(1), (b, t, d))

    def loss(rows, weights, rate, slot=slot):
        if rate is None:
            out = bag.embedding_bag_sum(rows, slot)
        else:
            threshold, scale = keep_rule(rate)
            out = bag.embedding_bag_sum(rows, slot, dropout=(bits, threshold, scale))
        return jnp.sum(jnp.tanh(out) * weights)

    rates = jnp.asarray([0.0] * FREE + [RATE] * (TRIALS - FREE), jnp.float32)

    def trials(rows, weights):
        with rate_free_trials(FREE, trials=TRIALS):
            return jax.vmap(jax.grad(loss), in_axes=(1, 1, 0), out_axes=1)(rows, weights, rates)

    wide = 16 * t  # > 8 T rows: the unmasked blocked form
    wide_slot = jnp.where(slot < u, slot * (wide // u), wide)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {
        f"one trial, dropout {RATE}": (
            lambda r, w: jax.grad(loss)(r, w, RATE),
            (normal(u, d), normal(b, d)),
        ),
        f"{TRIALS} trials, {FREE} at dropout {RATE}": (
            trials,
            (normal(u, TRIALS, d), normal(b, TRIALS, d)),
        ),
        "one trial, no dropout": (
            lambda r, w: jax.grad(lambda r, w: loss(r, w, None, wide_slot))(r, w),
            (normal(wide, d), normal(b, d)),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1792, help="U, distinct rows of a batch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20, help="calls per timing")
    add_output_flags(parser)
    args = parser.parse_args()
    for flag, value in (
        ("--rows", args.rows),
        ("--batch", args.batch),
        ("--length", args.length),
        ("--dim", args.dim),
        ("--reps", args.reps),
        ("--calls", args.calls),
    ):
        if value < 1:
            parser.error(f"{flag}={value}; allowed: an integer >= 1")
    global RESULTS
    RESULTS = output_dir(args)
    u, b, t, d = args.rows, args.batch, args.length, args.dim
    runners, grads = {}, {}
    for name, (fn, inputs) in cases(u, b, t, d).items():
        for form, halve in (("sum", False), ("halves", True)):
            # read when the function is traced, just below (no trace cached from the other form)
            bag.HALVE_LOOKUP_SUM = halve
            jax.clear_caches()
            step = jax.jit(fn).lower(*inputs).compile()
            bag.HALVE_LOOKUP_SUM = True
            grads[name, form] = step(*inputs)

            def run(step=step, inputs=inputs, calls=args.calls):
                for _ in range(calls):
                    out = step(*inputs)
                jax.block_until_ready(out)

            runners[f"{name}/{form}"] = run
    times = time_interleaved(runners, args.reps, warmup=1)
    results = {
        "shape": {"U": u, "B": b, "T": t, "D": d},
        "backend": jax.default_backend(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, host allocator {host_allocator()['mode']}",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "calls_per_timing": args.calls,
        "cases": {},
    }
    lines = [
        "# Blocked bag sum: jnp.sum over T vs adding halves (benchmarks/embedding_bag.py)",
        "",
        f"Forward + backward (jax.grad) of `embedding_bag_sum`; backend {results['backend']}, "
        f"U={u} rows, B={b} texts of T={t} tokens, D={d}; ms per call, median and range of "
        f"{args.reps} interleaved rounds of {args.calls} calls; load average at start "
        f"{results['load_average']}; {results['machine']}.",
        "",
        "| case | sum ms | halves ms | halves / sum | largest gradient difference |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(n.rsplit("/", 1)[0] for n in runners):
        ms = {
            form: [1e3 * s / args.calls for s in times[f"{name}/{form}"]]
            for form in ("sum", "halves")
        }
        med = {form: statistics.median(v) for form, v in ms.items()}
        diff = float(jnp.max(jnp.abs(grads[name, "sum"] - grads[name, "halves"])))
        results["cases"][name] = {
            "ms_per_call": ms,
            "median_ms": med,
            "ratio_halves_over_sum": med["halves"] / med["sum"],
            "max_abs_grad_difference": diff,
        }
        spread = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
        lines.append(
            f"| {name} | {spread(ms['sum'])} | {spread(ms['halves'])} | "
            f"**{med['halves'] / med['sum']:.2f}** | {diff:.1e} |"
        )
    (RESULTS / "embedding_bag.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "embedding_bag.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    configure_process()  # before JAX's first computation; CPU runs only (jaxnn.launch)
    main()
