"""Chaos run: train.py killed at random moments, resumed, and compared with an undisturbed run.

    python benchmarks/chaos.py --runs 5              (writes runs/benchmarks/chaos/)
    python benchmarks/chaos.py --runs 20 --seed 3 [--commit-results]

Each of N runs trains configs/tiny.py (2 epochs of 8 steps, a checkpoint every 3 steps) on a
small synthetic corpus into a fresh workdir and suffers 1-3 faults drawn from the matrix:

  kill_at_step   SIGKILL just before a random train step
  kill_in_save   SIGKILL while a random checkpoint's temporary folder exists (latest or best)
  kill_after_s   SIGKILL at a random time since the process started (import, data, compile,
                 training, test evaluation, results)
  disk_full      a checkpoint save raises ENOSPC (the run must exit 1 with an error: line)
  busy           a second train.py starts into the workdir while the first runs (it must exit
                 2 at once, naming the holder)

then the same command is run until it exits 0 (at most 3 clean reruns). A run counts as
identical when its results.json (test and validation metrics, history), metrics.jsonl (timings
aside), final train state and best parameters equal the undisturbed run's bitwise; as stuck
when no rerun finishes. Writes chaos.json and chaos.md into runs/benchmarks/
(benchmarks/results/ with --commit-results); the runs themselves live under --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn.testing import driver_command, fault_env, tiny_train_args, without_timings  # noqa: E402
from jaxnn.testing.faults import (  # noqa: E402
    TINY_CHECKPOINT_EVERY,
    TINY_EPOCHS,
    TINY_STEPS_PER_EPOCH,
)

STEPS_PER_EPOCH, EPOCHS, EVERY = TINY_STEPS_PER_EPOCH, TINY_EPOCHS, TINY_CHECKPOINT_EVERY
FAULT_KINDS = ("kill_at_step", "kill_in_save", "kill_after_s", "disk_full", "busy")


def write_corpus(path: Path, num_texts: int = 240, seed: int = 0) -> Path:
    """A 3-class CSV whose classes are told apart by a few keywords among filler words."""
    rng = random.Random(seed)
    words = {
        "sport": ["goal", "match", "team", "coach"],
        "money": ["bank", "shares", "profit", "tax"],
        "film": ["actor", "movie", "scene", "plot"],
    }
    filler = [f"w{i}" for i in range(60)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(num_texts):
            label = sorted(words)[i % 3]
            text = rng.choices(filler, k=rng.randint(4, 30)) + rng.choices(words[label], k=3)
            rng.shuffle(text)
            writer.writerow([" ".join(text) + f" n{i}", label])
    return path


def run(args: list[str], env: dict, faults: dict | None = None, wait: bool = True):
    env = fault_env(env, root=ROOT, **(faults or {}))
    command = driver_command(args)
    if not wait:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)


def fingerprint(workdir: Path) -> dict:
    """What must equal the undisturbed run's: results, metrics lines, final and best states."""
    import hashlib

    import jax
    import numpy as np

    from jaxnn.train.checkpoint import Checkpoints

    results = json.loads((workdir / "results.json").read_text())
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]

    def digest(tree) -> str:
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(tree):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        return h.hexdigest()

    with Checkpoints(workdir, writer=False) as checkpoints:
        state, meta = checkpoints.restore()
        best, _ = checkpoints.restore_best(None)
        best_steps = checkpoints.best_steps()
    return {
        "results": {k: results[k] for k in ("test", "val", "best_epoch", "epochs_run")},
        "history": without_timings(results["history"]),
        "metrics": without_timings(lines),
        "state": digest(state),
        "epoch": meta["epoch"],
        "best": digest(best),
        "best_steps": best_steps,
    }


def draw_fault(rng: random.Random, reference_s: float) -> tuple[str, dict]:
    kind = rng.choice(FAULT_KINDS)
    total = STEPS_PER_EPOCH * EPOCHS
    if kind == "kill_at_step":
        return kind, {"kill_at_step": rng.randint(1, total)}
    if kind == "kill_in_save":
        folder = rng.choice(["checkpoints", "best"])
        saves = [s for s in range(1, total + 1) if s % EVERY == 0 or s % STEPS_PER_EPOCH == 0]
        step = rng.choice(saves if folder == "checkpoints" else [STEPS_PER_EPOCH, total])
        return kind, {"kill_when": f"{folder}/{step}.orbax-checkpoint-tmp*"}
    if kind == "kill_after_s":
        return kind, {"kill_after_s": round(rng.uniform(0.5, reference_s), 2)}
    if kind == "disk_full":
        return kind, {"disk_full_at_save": rng.randint(1, 8)}
    return kind, {}


def one_run(i: int, rng, corpus, out, env, reference, reference_s) -> dict:
    workdir = out / f"run{i}"
    shutil.rmtree(workdir, ignore_errors=True)
    args = tiny_train_args(corpus, workdir, root=ROOT)
    faults, codes = [], []
    for _ in range(rng.randint(1, 3)):
        kind, fault = draw_fault(rng, reference_s)
        if kind == "busy":
            first = run(args, env, wait=False)
            time.sleep(rng.uniform(1.0, reference_s * 0.8))
            second = run(args, env)
            _, first_err = first.communicate()
            codes.append([first.returncode, second.returncode])
            # one of the two is refused at once, naming the holder (or they did not overlap)
            refused = [
                rc == 2 and "is in use by process" in err
                for rc, err in ((first.returncode, first_err), (second.returncode, second.stderr))
            ]
            ok = any(refused) or codes[-1] == [0, 0]
            faults.append({"fault": kind, "rc": codes[-1], "clean": ok})
            continue
        done = run(args, env, fault)
        codes.append(done.returncode)
        clean = done.returncode in (0, -9) or (kind == "disk_full" and done.returncode == 1)
        faults.append({"fault": kind, **fault, "rc": done.returncode, "clean": clean})
    finished = False
    for _ in range(3):
        if (workdir / "results.json").is_file():
            finished = True
            break
        done = run(args, env)
        if done.returncode != 0:
            faults.append({"rerun_rc": done.returncode, "stderr": done.stderr[-1500:]})
    finished = finished or (workdir / "results.json").is_file()
    identical = finished and fingerprint(workdir) == reference
    return {
        "run": i,
        "faults": faults,
        "finished": finished,
        "identical": identical,
        "clean_failures": all(f.get("clean", True) for f in faults),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="N faulty runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "benchmarks" / "chaos",
        help="folder of the runs' workdirs, corpus and caches",
    )
    add_output_flags(parser)  # where chaos.json / chaos.md go
    args = parser.parse_args()
    report_dir = output_dir(args)
    out = args.work.absolute()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)  # fault_env (jaxnn.testing) adds this tree to PYTHONPATH
    env.setdefault("JAXNN_DATA_DIR", str(out / "data"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "xla-cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    corpus = write_corpus(out / "corpus.csv")
    shutil.rmtree(out / "reference", ignore_errors=True)
    start = time.perf_counter()
    done = run(tiny_train_args(corpus, out / "reference", root=ROOT), env)
    reference_s = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    reference = fingerprint(out / "reference")
    rng = random.Random(args.seed)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(i, rng, corpus, out, env, reference, reference_s))
        r = runs[-1]
        print(
            f"run {i}: {', '.join(f['fault'] for f in r['faults'] if 'fault' in f)} -> "
            f"{'identical' if r['identical'] else 'DIFFERENT' if r['finished'] else 'STUCK'}",
            flush=True,
        )
    summary = {
        "runs": len(runs),
        "identical": sum(r["identical"] for r in runs),
        "stuck": sum(not r["finished"] for r in runs),
        "clean_failures": sum(r["clean_failures"] for r in runs),
        "reference_wall_s": round(reference_s, 1),
        "seed": args.seed,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "detail": runs,
    }
    (report_dir / "chaos.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / "chaos.md").write_text(
        f"# chaos: {summary['identical']}/{summary['runs']} runs identical to the undisturbed "
        f"one, {summary['stuck']} stuck, {summary['clean_failures']}/{summary['runs']} with "
        f"only clean failures (seed {args.seed})\n\n"
        "| run | faults | finished | identical |\n|---|---|---|---|\n"
        + "".join(
            f"| {r['run']} | {', '.join(f['fault'] for f in r['faults'] if 'fault' in f)} | "
            f"{r['finished']} | {r['identical']} |\n"
            for r in runs
        )
    )
    print(
        f"{summary['identical']}/{summary['runs']} identical to the undisturbed run, "
        f"{summary['stuck']} stuck; {report_dir / 'chaos.md'}"
    )
    return 0 if summary["identical"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
