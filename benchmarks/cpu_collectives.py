"""Does XLA:CPU's in-process all-reduce hang on forced host devices? Counts hangs per setting.

    .venv/bin/python benchmarks/cpu_collectives.py [--devices 2] [--trials 6] [--steps 50]

Each trial is a fresh Python process with ``--xla_force_host_platform_device_count=D`` that
dispatches a chain of ``--steps`` jitted steps over a D-device data mesh: a small matmul on the
sharded batch, then a cross-device sum accumulated into a replicated carry, so step k+1 needs
step k's result (as a train or evaluation loop does). "async" dispatches the chain without
waiting; "sync" waits for each step's result (`jax.block_until_ready`) before the next dispatch.
A trial that has not finished within ``--timeout`` seconds counts as hung (XLA itself aborts
such a process after 40 s: "Termination timeout for `all reduce RendezvousKey...`").

On a 2-core machine with 2 devices, "async" hung in most trials and "sync" in none (README,
Scaling section): XLA runs every device's part of a program on the one shared worker pool, and
a device that runs ahead into the next program's all-reduce can leave no worker for the other.
This is why jaxnn's train and evaluation steps wait for their result on such a mesh
(`jaxnn.train.distributed.waits_for_each_call`; `--cpu_devices`, jaxnn.launch.cpu_devices).

Writes benchmarks/results/cpu_collectives.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results

CHILD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
steps, sync = int(sys.argv[1]), sys.argv[2] == "sync"
mesh = Mesh(np.array(jax.devices()), ("data",))
rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
w = jax.device_put(jax.random.normal(jax.random.key(0), (128, 128)), rep)
x = jax.device_put(jax.random.normal(jax.random.key(1), (4096, 128)), rows)

@jax.jit
def step(w, x, carry):
    y = jnp.tanh(x @ w) @ w
    return carry + jnp.sum(y, axis=0)  # a sum over the sharded rows: an all-reduce

carry = jax.device_put(jnp.zeros(128), rep)
for _ in range(steps):
    carry = step(w, x, carry)
    if sync:
        jax.block_until_ready(carry)
jax.block_until_ready(carry)
print("done")
"""


def trial(devices: int, steps: int, mode: str, timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    start = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(steps), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        finished = out.returncode == 0 and "done" in out.stdout
        detail = "" if finished else f"exit {out.returncode}: {out.stderr.strip()[-200:]}"
    except subprocess.TimeoutExpired:
        finished, detail = False, f"no result within {timeout:g} s"
    return {"finished": finished, "seconds": time.perf_counter() - start, "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per trial")
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    for name, value, low in (
        ("devices", args.devices, 2),
        ("trials", args.trials, 1),
        ("steps", args.steps, 1),
    ):
        if value < low:
            parser.error(f"--{name}={value}; allowed: an integer >= {low}")
    if args.timeout <= 0:
        parser.error(f"--timeout={args.timeout}; allowed: seconds > 0")
    results = {"devices": args.devices, "steps": args.steps, "cpus": os.cpu_count(), "modes": {}}
    for mode in ("async", "sync"):
        runs = []
        for i in range(args.trials):
            runs.append(trial(args.devices, args.steps, mode, args.timeout))
            state = "finished" if runs[-1]["finished"] else "HUNG"
            print(
                f"[{mode}] trial {i + 1}/{args.trials}: {state} ({runs[-1]['seconds']:.1f} s)",
                flush=True,
            )
        results["modes"][mode] = {"hung": sum(not r["finished"] for r in runs), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu_collectives.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# XLA:CPU in-process all-reduce on forced host devices (benchmarks/cpu_collectives.py)",
        "",
        f"{args.devices} forced host devices on {os.cpu_count()} CPUs; a chain of {args.steps} "
        f"dependent jitted steps per trial, each trial a fresh process ({args.timeout:g} s limit).",
        "",
        "| dispatch | trials | hung |",
        "|---|---|---|",
    ]
    for mode, r in results["modes"].items():
        lines.append(f"| {mode} | {len(r['runs'])} | {r['hung']} |")
    (RESULTS / "cpu_collectives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
