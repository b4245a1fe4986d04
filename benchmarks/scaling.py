"""Scaling benchmark: the jitted train step on 1, 2 and 4 devices (data parallel, and FSDP).

    .venv/bin/python benchmarks/scaling.py [--quick] [--devices 1,2,4]

One subprocess per device count. On a CPU-only machine the devices are forced host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N): they share the same cores, so the step
does not get faster; this run only shows the plumbing (sharded batch, collectives, the same
code path as a multi-GPU run). On a machine with N accelerators the same command uses them and
the table gives the scaling efficiency: examples/s on N devices / (N x examples/s on 1).

For every (model, device count, fsdp) it reports, at a fixed global batch:
  - step time (median over timed blocks, after a warmup) and examples/s,
  - bytes communicated per step, read from the compiled program: every collective instruction
    in ``compiled.as_text()`` (all-reduce, all-gather, reduce-scatter, all-to-all,
    collective-permute) with the size of its operands, i.e. what each device puts on the wire
    per step (a collective inside a loop body is counted once).

Writes benchmarks/results/scaling.json, scaling.md and scaling.png. Timings on a shared CPU are
noisy: medians, and ratios measured in the same run; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn.launch import configure_process  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTRUCTION = re.compile(
    r"=\s*(?P<result>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start)?\("
)


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += count * DTYPE_BYTES.get(dtype, 4)
    return total


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count": n, "bytes": operand bytes}} of every collective in an HLO module's text.

    An instruction looks like ``%x = f32[64,2]{1,0} all-reduce(f32[64,2]{1,0} %y), ...`` (or
    ``all-reduce-start``; the ``-done`` half is not counted). The operand list is the text
    inside the op's parentheses up to the first ``)``; its shapes' bytes are the payload.
    """
    out: dict[str, dict[str, int]] = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if not match:
            continue
        rest = line[match.end() :]
        operands = rest.split(")", 1)[0]
        size = _shape_bytes(operands)
        if size == 0:  # operands printed without shapes: fall back to the result's size
            size = _shape_bytes(match.group("result"))
        entry = out.setdefault(match.group("op"), {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    return out


# ----------------------------------------------------------------------------------------------
# Worker: one device count, in its own process
# ----------------------------------------------------------------------------------------------


def _train_benchmark():
    """benchmarks/train.py as a module (loaded by path: the root's train.py owns the name)."""
    spec = importlib.util.spec_from_file_location(
        "bench_train", Path(__file__).with_name("train.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_configs(quick: bool) -> dict[str, dict]:
    """benchmarks/train.py's bow (default.py's, 2^20 hashed bigrams) and transformer models, with
    batches that divide by 4 devices: bow B=64 x T=256, transformer B=32 (16 quick) x T=128."""
    configs = _train_benchmark().model_configs(quick)
    configs["bow"]["train"]["batch_size"] = 64
    configs["transformer"]["train"]["batch_size"] = 16 if quick else 32
    configs["transformer"]["data"]["max_len"] = 128
    return configs


def worker(quick: bool, fsdp_values: list[int]) -> list[dict]:
    import jax

    from jaxnn.train.distributed import describe_mesh, make_mesh

    bench = _train_benchmark()
    repeats, per_block = (3, 3) if quick else (5, 5)
    rows = []
    for name, config in model_configs(quick).items():
        for fsdp in fsdp_values:
            if jax.device_count() % fsdp:
                continue
            config = json.loads(json.dumps(config))
            config["mesh"]["fsdp"] = fsdp
            mesh = make_mesh(fsdp=fsdp)
            result = bench.bench_jax(config, per_block, repeats, mesh=mesh)
            comm = collective_bytes(result.pop("compiled").as_text())
            batch_size, length = config["train"]["batch_size"], config["data"]["max_len"]
            compile_s, step_s, times = (result[k] for k in ("compile_s", "step_s", "block_times_s"))
            rows.append(
                {
                    "backend": f"JAX {jax.__version__}, backend {jax.default_backend()}",
                    "model": name,
                    "devices": jax.device_count(),
                    "fsdp": fsdp,
                    "mesh": describe_mesh(mesh),
                    "batch_size": batch_size,
                    "length": length,
                    "compile_s": compile_s,
                    "step_s": step_s,
                    "examples_per_s": batch_size / step_s,
                    "collectives": comm,
                    "comm_bytes_per_step": sum(v["bytes"] for v in comm.values()),
                    "block_times_s": times,
                }
            )
            print(
                f"[{name}] {jax.device_count()} devices fsdp={fsdp}: {step_s * 1e3:.1f} ms/step, "
                f"{batch_size / step_s:,.0f} ex/s, {rows[-1]['comm_bytes_per_step']:,} B comm",
                file=sys.stderr,
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def run_count(count: int, quick: bool) -> list[dict]:
    # the driver never starts a JAX backend itself (it would hold the accelerators): the host
    # device count matters only on a CPU-only machine; with GPUs the first `count` are used
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
    fsdp = [1, 2] if count >= 2 else [1]
    cmd = [sys.executable, __file__, "--worker", "--fsdp", ",".join(map(str, fsdp))]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    sys.stderr.write(out.stderr[-2000:] if out.returncode else "")
    if out.returncode:
        raise RuntimeError(f"worker with {count} devices failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_outputs(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    base = {(r["model"]): r for r in results["rows"] if r["devices"] == 1}
    lines = [
        "# Scaling benchmark (benchmarks/scaling.py)",
        "",
        f"{results['platform']}. {results['machine']}. Load average at start: "
        f"{results['load_average']}. {results['note']}",
        "",
        "| model | devices | fsdp | global B x T | ms/step | examples/s | vs 1 device | "
        "efficiency | bytes communicated / step | collectives |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        one = base[r["model"]]
        speedup = r["examples_per_s"] / one["examples_per_s"]
        ops = ", ".join(f"{k} x{v['count']}" for k, v in sorted(r["collectives"].items())) or "-"
        lines.append(
            f"| {r['model']} | {r['devices']} | {r['fsdp']} | {r['batch_size']} x {r['length']} "
            f"| {r['step_s'] * 1e3:.1f} | {r['examples_per_s']:,.0f} | {speedup:.2f}x | "
            f"{speedup / r['devices']:.0%} | {r['comm_bytes_per_step']:,} | {ops} |"
        )
    lines += [
        "",
        "efficiency = examples/s on N devices / (N x examples/s on 1 device). Bytes: operand "
        "sizes of the collectives in the compiled step (per device, per step).",
    ]
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for model in sorted({r["model"] for r in results["rows"]}):
        for fsdp, style in ((1, "-o"), (2, "--s")):
            rows = [r for r in results["rows"] if r["model"] == model and r["fsdp"] == fsdp]
            if not rows:
                continue
            label = f"{model}" + (" fsdp=2" if fsdp == 2 else "")
            ax.plot(
                [r["devices"] for r in rows],
                [r["examples_per_s"] for r in rows],
                style,
                label=label,
            )
            multi = [r for r in rows if r["devices"] > 1]  # 1 device communicates nothing
            ax2.plot(
                [r["devices"] for r in multi],
                [r["comm_bytes_per_step"] / 1e6 for r in multi],
                style,
                label=label,
            )
    ax.set_xlabel("devices")
    ax.set_xticks(sorted({r["devices"] for r in results["rows"]}))
    ax.set_ylabel("train examples/s (median)")
    ax.set_yscale("log")
    ax.set_title("throughput at a fixed global batch")
    ax.legend()
    ax2.set_xlabel("devices")
    ax2.set_xticks(sorted({r["devices"] for r in results["rows"] if r["devices"] > 1}))
    ax2.set_ylabel("MB communicated per step, per device")
    ax2.set_yscale("log")
    ax2.set_title("collectives in the compiled step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    parser.add_argument("--devices", default="1,2,4", help="device counts, comma separated")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", default="1", help=argparse.SUPPRESS)
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    if args.worker:
        rows = worker(args.quick, [int(x) for x in args.fsdp.split(",")])
        print(json.dumps(rows))
        return
    counts = [int(x) for x in args.devices.split(",")]
    rows = []
    for count in counts:
        print(f"[{count} devices] ...", flush=True)
        rows += run_count(count, args.quick)
    for count in counts:
        got = {r["devices"] for r in rows if r["devices"] == count}
        if not got:
            raise RuntimeError(f"the worker for {count} devices saw another device count")
    cpu = rows[0]["backend"].endswith("cpu")
    results = {
        "platform": rows[0]["backend"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "note": (
            "Forced host devices sharing the CPU cores: this shows the plumbing (sharded batch, "
            "collectives), not a speed-up."
            if cpu
            else "One accelerator per device."
        ),
        "rows": rows,
    }
    write_outputs(results)
    print((RESULTS / "scaling.md").read_text())


if __name__ == "__main__":
    configure_process()  # before JAX's first computation; CPU runs only (jaxnn.launch)
    main()
