"""Runs of train.py in a subprocess with a fault injected at a chosen moment
(`jaxnn.testing.faults`: the faults and their names), and the check that a run ended as an
undisturbed one (`assert_same_run`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jax
import numpy as np

from jaxnn.testing import driver_command, fault_env, tiny_train_args, without_timings

ROOT = Path(__file__).resolve().parents[2]


def train_args(corpus: Path, workdir: Path, *extra: str) -> list[str]:
    """configs/tiny.py on ``corpus``, sized to run in seconds (`tiny_train_args`: 2 epochs of
    8 steps, a checkpoint every 3 steps, a metrics line every 2), learning rate 0.05."""
    return tiny_train_args(corpus, workdir, "--config.optim.learning_rate=0.05", *extra, root=ROOT)


def run_train(args: list[str], timeout: float = 600, **faults: str) -> subprocess.CompletedProcess:
    """train.py ``args`` in a subprocess under the fault driver, with ``faults``
    (`jaxnn.testing.faults`: kill_at_step, kill_when, kill_after_s, disk_full_at_save)."""
    return subprocess.run(
        driver_command(args),
        env=fault_env(os.environ, root=ROOT, **faults),  # this tree's train.py, as cwd
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return without_timings([json.loads(x) for x in lines])


def final_state(workdir: Path):
    from jaxnn.train.checkpoint import Checkpoints

    with Checkpoints(workdir, writer=False) as checkpoints:
        return checkpoints.restore()


def assert_same_run(reference: Path, workdir: Path) -> None:
    """``workdir`` ended as the undisturbed ``reference``: the same results (test and
    validation metrics, history), the same metrics.jsonl (timings aside), and bitwise the same
    final train state and best parameters."""
    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((workdir / "results.json").read_text())
    for key in ("test", "val", "best_epoch", "epochs_run", "stopped_early"):
        assert got[key] == ref[key], key
    assert without_timings(got["history"]) == without_timings(ref["history"])
    assert _records(workdir) == _records(reference)
    (a, meta_a), (b, meta_b) = final_state(reference), final_state(workdir)
    assert meta_a["epoch"] == meta_b["epoch"]
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    from jaxnn.train.checkpoint import Checkpoints

    with Checkpoints(reference, writer=False) as x, Checkpoints(workdir, writer=False) as y:
        assert x.best_steps() == y.best_steps()
        best_a, _ = x.restore_best(None)
        best_b, _ = y.restore_best(None)
    jax.tree.map(np.testing.assert_array_equal, best_a, best_b)
