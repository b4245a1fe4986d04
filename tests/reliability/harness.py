"""Runs of train.py in a subprocess with a fault injected at a chosen moment, and the check that
a run ended as an undisturbed one (`assert_same_run`).

Faults (environment variables read by `DRIVER`, which then runs train.py unchanged):
  JAXNN_KILL_AT_STEP=n         SIGKILL itself just before the n-th train step of this process
  JAXNN_KILL_WHEN=<glob>       SIGKILL itself as soon as a path matching <glob> (relative to the
                               workdir) exists: e.g. "checkpoints/*.orbax-checkpoint-tmp*" kills
                               while a checkpoint's temporary folder is being written
  JAXNN_KILL_AFTER_S=t         SIGKILL itself t seconds after start (benchmarks/chaos.py)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import glob, os, runpy, signal, sys, threading, time

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
    pattern = os.environ.get("JAXNN_KILL_WHEN")
    if pattern:
        def watch():
            while not glob.glob(os.path.join(workdir, pattern)):
                time.sleep(0.0005)
            die()
        threading.Thread(target=watch, daemon=True).start()
    after = float(os.environ.get("JAXNN_KILL_AFTER_S") or 0)
    if after:
        threading.Timer(after, die).start()
    kill_at = int(os.environ.get("JAXNN_KILL_AT_STEP") or 0)
    if kill_at:
        import jaxnn.train.trainer as trainer
        original_init = trainer.Trainer.__init__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            step, calls = self.train_step, [0]

            def train_step(state, batch):
                calls[0] += 1
                if calls[0] == kill_at:
                    die()
                return step(state, batch)

            self.train_step = train_step

        trainer.Trainer.__init__ = init
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path(os.path.join(os.environ["JAXNN_ROOT"], "train.py"), run_name="__main__")
    """
)

TIMING_KEYS = {"wall_time", "examples_per_s", "tokens_per_s"}


def train_args(corpus: Path, workdir: Path, *extra: str) -> list[str]:
    """configs/tiny.py on ``corpus``, sized to run in seconds: 2 epochs of 8 steps, a
    checkpoint every 3 steps, a metrics line every 2."""
    return [
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--config.data.corpus={corpus}",
        "--config.data.max_len=48",
        "--config.data.min_freq=1",
        "--config.data.smallest_bucket=48",
        "--config.optim.learning_rate=0.05",
        "--config.train.batch_size=16",
        "--config.train.eval_batch_size=64",
        "--config.train.num_epochs=2",
        "--config.train.max_steps_per_epoch=8",
        "--config.train.checkpoint_every_steps=3",
        "--config.train.log_every_steps=2",
        f"--workdir={workdir}",
        *extra,
    ]


def run_train(args: list[str], timeout: float = 600, **faults: str) -> subprocess.CompletedProcess:
    """train.py ``args`` in a subprocess under `DRIVER`, with ``faults`` (see module doc)."""
    env = dict(os.environ, JAXNN_ROOT=str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key, value in faults.items():
        env[f"JAXNN_{key.upper()}"] = str(value)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


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
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in ref["history"]]
    assert [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in got["history"]] == strip
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
