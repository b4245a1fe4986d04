"""train.py in a subprocess with a fault injected at a chosen moment.

`driver_command` runs train.py of a source checkout (``root``: by default the tree this module
lies in, which needs an editable install) under a small driver that reads the faults from the
environment that `fault_env` makes, then runs train.py unchanged:

  kill_at_step=n        SIGKILL itself just before the n-th train step of this process
  kill_when=<glob>      SIGKILL itself as soon as a path matching <glob> (relative to the
                        workdir) exists: e.g. "checkpoints/*.orbax-checkpoint-tmp*" kills while
                        a checkpoint's temporary folder is being written
  kill_after_s=t        SIGKILL itself t seconds after start (import, data, compile, training...)
  disk_full_at_save=n   the n-th checkpoint save of this process (latest and best saves counted
                        together) fails as a full disk does in orbax: a ValueError raised from
                        OSError(ENOSPC)

Example (a run killed at its 5th step, then resumed by the same command)::

    args = tiny_train_args(corpus, workdir)
    env = fault_env(os.environ, kill_at_step=5)
    subprocess.run(driver_command(args), env=env)                    # dies with -9
    subprocess.run(driver_command(args), env=fault_env(os.environ))  # resumes

The undisturbed run and the resumed one must then end the same (tests/reliability compares
results, metrics lines without `TIMING_KEYS`, and the final and best states bitwise).
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "FAULTS",
    "ROOT",
    "TIMING_KEYS",
    "TINY_CHECKPOINT_EVERY",
    "TINY_EPOCHS",
    "TINY_STEPS_PER_EPOCH",
    "driver_command",
    "fault_env",
    "stop_before_step",
    "tiny_train_args",
    "without_timings",
]

ROOT = Path(__file__).resolve().parents[2]  # this module's tree: train.py, configs/ (editable)

# The faults of the driver (keywords of `fault_env`); benchmarks/chaos.py builds its fault kinds
# (a kill inside a save, a busy workdir, ...) from these
FAULTS = ("kill_at_step", "kill_when", "kill_after_s", "disk_full_at_save")

# Keys of metrics lines and history records that differ from run to run (the clock)
TIMING_KEYS = frozenset({"wall_time", "examples_per_s", "tokens_per_s"})

# The configs/tiny.py run of `tiny_train_args`: seconds long, several checkpoints an epoch
TINY_EPOCHS, TINY_STEPS_PER_EPOCH, TINY_CHECKPOINT_EVERY = 2, 8, 3

DRIVER = textwrap.dedent(
    """
    import errno, glob, os, runpy, signal, sys, threading, time

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
        from jaxnn.testing.faults import stop_before_step

        trainer.Trainer.__init__ = stop_before_step(kill_at, die)
    full_at = int(os.environ.get("JAXNN_DISK_FULL_AT_SAVE") or 0)
    if full_at:
        import orbax.checkpoint as ocp
        real_save, saves = ocp.CheckpointManager.save, [0]

        def save(self, step, *args, **kwargs):
            saves[0] += 1
            if saves[0] == full_at:
                raise ValueError("write failed") from OSError(errno.ENOSPC, "No space left")
            return real_save(self, step, *args, **kwargs)

        ocp.CheckpointManager.save = save
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path(os.path.join(os.environ["JAXNN_ROOT"], "train.py"), run_name="__main__")
    """
)


def _source_tree(root: Path | str) -> Path:
    root = Path(root).resolve()
    if not (root / "train.py").is_file():
        raise FileNotFoundError(
            f"jaxnn.testing.faults runs train.py of a source checkout, and {root / 'train.py'} "
            "does not exist: pass root= the checkout, or install jaxnn from one with "
            "`pip install -e .`"
        )
    return root


def stop_before_step(at: int, stop: Callable[[], None]) -> Callable:
    """A `jaxnn.train.trainer.Trainer.__init__` whose trainers each call ``stop()`` just
    before their ``at``-th train step: SIGKILL in the driver (one trainer per run), a raised
    KeyboardInterrupt in an in-process test. Install it in place of the original, which it
    wraps (e.g. ``monkeypatch.setattr(Trainer, "__init__", stop_before_step(...))``)."""
    from jaxnn.train.trainer import Trainer

    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        step, calls = self.train_step, [0]

        def train_step(state, batch):
            calls[0] += 1
            if calls[0] == at:
                stop()
            return step(state, batch)

        self.train_step = train_step

    return init


def fault_env(
    base: Mapping[str, str], *, root: Path | str = ROOT, **faults: object
) -> dict[str, str]:
    """A copy of the environment ``base`` for `driver_command`: the source tree ``root``
    importable and located (first on PYTHONPATH; JAXNN_ROOT, whose train.py the driver runs),
    and each fault of ``faults`` (names in `FAULTS`, see the module docstring) as
    JAXNN_<NAME>; a fault variable already in ``base`` is dropped. No faults: an undisturbed
    run. FileNotFoundError when ``root`` holds no train.py; ValueError for an unknown fault."""
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; allowed: {list(FAULTS)}")
    root = _source_tree(root)
    env = dict(base, JAXNN_ROOT=str(root))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    for name in FAULTS:  # a fault left in ``base`` by a caller does not leak into this run
        env.pop(f"JAXNN_{name.upper()}", None)
    for name, value in faults.items():
        env[f"JAXNN_{name.upper()}"] = str(value)
    return env


def driver_command(args: list[str]) -> list[str]:
    """The command that runs train.py with ``args`` under the fault driver (this Python)."""
    return [sys.executable, "-c", DRIVER, *args]


def tiny_train_args(corpus: Path, workdir: Path, *extra: str, root: Path | str = ROOT) -> list[str]:
    """train.py arguments of ``root``'s configs/tiny.py on the CSV ``corpus``, sized to run
    in seconds: `TINY_EPOCHS` epochs of `TINY_STEPS_PER_EPOCH` steps, a checkpoint every
    `TINY_CHECKPOINT_EVERY` steps, a metrics line every 2; ``extra`` arguments last."""
    return [
        f"--config={Path(root) / 'configs' / 'tiny.py'}",
        f"--config.data.corpus={corpus}",
        "--config.data.max_len=48",
        "--config.data.min_freq=1",
        "--config.data.smallest_bucket=48",
        "--config.train.batch_size=16",
        "--config.train.eval_batch_size=64",
        f"--config.train.num_epochs={TINY_EPOCHS}",
        f"--config.train.max_steps_per_epoch={TINY_STEPS_PER_EPOCH}",
        f"--config.train.checkpoint_every_steps={TINY_CHECKPOINT_EVERY}",
        "--config.train.log_every_steps=2",
        f"--workdir={workdir}",
        *extra,
    ]


def without_timings(records: list[dict]) -> list[dict]:
    """Metrics lines or history records without their `TIMING_KEYS`."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
