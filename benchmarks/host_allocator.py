"""What jaxnn.launch.host_memory's "keep" allocator setting buys: the same work under glibc's
defaults ("system") and under "keep", in alternating fresh processes.

    .venv/bin/python benchmarks/host_allocator.py [--rounds 3] [--reps 5] [--quick] [--no-torch]

The setting is process-wide and must come before JAX's first computation, so each measurement is
a child process (this script with --worker MODE); the modes alternate round by round, so load
from other processes hits both alike. Each child times, interleaved (benchmarks/timing.py):
  - fresh_output_64MiB: a jitted x + 1 on a [4096, 4096] float32 array (a new 64 MiB output);
  - attention_{chunked,xla}: forward + backward of jaxnn.ops.dot_product_attention at the
    transformer benchmark's shape (B=64, T=256, N=4, H=32; --quick B=16);
  - {transformer,bow}_step: benchmarks/train.py's jitted train steps;
  - torch_{transformer,bow}_step: PyTorch's twins of those steps (when torch is importable),
    since the setting is process-wide and reaches PyTorch's CPU allocations too.
A child reports each workload's median over --reps; a mode's figure is the median over rounds.

Writes benchmarks/results/host_allocator.json, .md and .png. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn.launch.host_memory import configure_host_allocator, host_allocator  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results
MODES = ("system", "keep")
MARK = "HOST_ALLOCATOR_RESULT "


def worker(mode: str, reps: int, quick: bool, with_torch: bool) -> dict:
    """Seconds per call of each workload under ``mode`` (applied before JAX starts)."""
    applied = configure_host_allocator(mode)
    import jax
    import jax.numpy as jnp
    from timing import time_interleaved

    import train as bench_train  # benchmarks/train.py
    from jaxnn.ops.attention import dot_product_attention

    runners, per_call = {}, {}
    x = jnp.ones((4096, 4096), jnp.float32)
    add_one = jax.jit(lambda a: a + 1.0)
    runners["fresh_output_64MiB"] = lambda: add_one(x).block_until_ready()
    per_call["fresh_output_64MiB"] = 1

    batch = 16 if quick else 64
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, d_out = (jax.random.normal(key, (batch, 256, 4, 32)) for key in keys)
    for impl in ("chunked", "xla"):

        def attend(q, k, v, impl=impl):
            return dot_product_attention(q, k, v, implementation=impl)

        grads = jax.jit(lambda q, k, v, d, f=attend: jax.vjp(f, q, k, v)[1](d))
        runners[f"attention_{impl}"] = lambda g=grads: jax.block_until_ready(g(q, k, v, d_out))
        per_call[f"attention_{impl}"] = 1

    configs = bench_train.model_configs(quick)
    for name, config in configs.items():
        steps = 4 if name == "bow" else 2
        prepared = bench_train.prepare_jax(config, steps)
        runners[f"{name}_step"] = prepared["block"]
        per_call[f"{name}_step"] = steps
        twin = bench_train.prepare_torch(name, config, steps) if with_torch else None
        if twin:
            runners[f"torch_{name}_step"] = twin["block"]
            per_call[f"torch_{name}_step"] = steps
    for run in runners.values():  # warm-up (first-touch of every buffer)
        run()
    times = time_interleaved(runners, reps, settle_s=0.3)
    return {
        "mode": applied,
        "allocator": host_allocator(),
        "seconds": {n: statistics.median(t) / per_call[n] for n, t in times.items()},
    }


def run_child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--reps", str(args.reps)]
    cmd += ["--quick"] * args.quick + ["--no-torch"] * args.no_torch
    env = {**os.environ, "JAXNN_HOST_ALLOCATOR": mode}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


def write_outputs(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "host_allocator.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    rows = [
        "| workload | system ms | keep ms | system / keep | system rounds ms | keep rounds ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["workloads"].items():
        rounds = {m: ", ".join(f"{1e3 * s:.1f}" for s in r[m]["rounds_s"]) for m in MODES}
        rows.append(
            f"| {name} | {1e3 * r['system']['median_s']:.1f} | {1e3 * r['keep']['median_s']:.1f}"
            f" | **{r['speedup']:.2f}x** | {rounds['system']} | {rounds['keep']} |"
        )
    lines = [
        "# Host allocator: glibc defaults vs jaxnn's `keep` (benchmarks/host_allocator.py)",
        "",
        f"{results['machine']}; jax {results['jax_version']}. {results['rounds']} rounds, the "
        f"two modes alternating in fresh processes; each process times its workloads "
        f"interleaved, {results['reps']} reps, medians. keep = {results['keep_detail']}.",
        f"Load average (1, 5, 15 min) before / after: {results['load_before']} / "
        f"{results['load_after']}.",
        "",
        *rows,
        "",
        "Times are per call (per train step for *_step). torch_* rows are PyTorch's eager twins "
        "of the train steps in the same processes: the setting is process-wide.",
    ]
    (RESULTS / "host_allocator.md").write_text("\n".join(lines) + "\n", "utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["workloads"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, [results["workloads"][n]["speedup"] for n in names])
    ax.axvline(1.0, color="gray", ls="--")
    ax.set_xlabel("time with glibc defaults / time with keep")
    ax.invert_yaxis()
    ax.set_title("host allocator 'keep': speed-up per workload (median of rounds)")
    fig.tight_layout()
    fig.savefig(RESULTS / "host_allocator.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two modes")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per workload per child")
    parser.add_argument("--quick", action="store_true", help="smaller batches")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    for flag in ("rounds", "reps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.worker:
        result = worker(args.worker, args.reps, args.quick, not args.no_torch)
        print(MARK + json.dumps(result), flush=True)
        return
    import jax

    load_before = [round(x, 2) for x in os.getloadavg()]
    per_mode = {m: [] for m in MODES}
    for i in range(args.rounds):
        for mode in MODES:
            print(f"[round {i + 1}/{args.rounds}] {mode} ...", flush=True)
            child = run_child(mode, args)
            if child["mode"] != mode:
                raise RuntimeError(f"asked for {mode!r}, the child ran {child['allocator']}")
            per_mode[mode].append(child)
    workloads = {}
    for name in per_mode["keep"][0]["seconds"]:
        entry = {}
        for mode in MODES:
            rounds = [c["seconds"][name] for c in per_mode[mode]]
            entry[mode] = {"median_s": statistics.median(rounds), "rounds_s": rounds}
        entry["speedup"] = entry["system"]["median_s"] / entry["keep"]["median_s"]
        workloads[name] = entry
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax_version": jax.__version__,
        "rounds": args.rounds,
        "reps": args.reps,
        "quick": args.quick,
        "keep_detail": per_mode["keep"][0]["allocator"]["detail"],
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "workloads": workloads,
    }
    write_outputs(results)
    print((RESULTS / "host_allocator.md").read_text())


if __name__ == "__main__":
    main()
