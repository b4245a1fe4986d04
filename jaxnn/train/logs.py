"""What a run writes: metrics.jsonl, TensorBoard events, learning_curves.png, JSON files.

metrics.jsonl has one JSON object per line, of two kinds:

    every train.log_every_steps steps:
    {"kind": "step", "epoch", "step", "wall_time", "learning_rate",
     "train_loss", "train_accuracy",                     over the steps since the previous line
     "examples_per_s", "tokens_per_s"}                   throughput (wall clock)

    every epoch:
    {"kind": "epoch", "epoch", "step", "wall_time", "learning_rate",
     "train_loss", "train_accuracy",                     running means over the epoch's steps
     "val_loss", "val_accuracy", "val_macro_f1",         on the validation split
     "train_unk_ratio", "val_unk_ratio"}                 unknown-word ratio

(`epoch_records` keeps the epoch lines; lines without "kind" are epoch lines of older runs.)
TensorBoard receives the same scalars (tensorboardX, no TensorFlow needed): the step lines
under "train_step/...", the epoch lines under "train/...", "val/...". learning_curves.png plots
the per-step training loss with the per-epoch validation points on one step axis: the picture
of over- and underfitting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MetricsLog",
    "epoch_records",
    "plot_learning_curves",
    "progress_logging",
    "read_jsonl",
    "step_records",
    "write_json",
]

# loggers of libraries whose INFO lines drown a run's progress (shown with verbose=True)
THIRD_PARTY_LOGGERS = ("absl", "orbax", "jax._src.xla_bridge", "jax._src.distributed")


@contextlib.contextmanager
def progress_logging(*, verbose: bool = False) -> Iterator[logging.Logger]:
    """Show the "jaxnn" loggers' INFO lines on stderr while the block runs, when the caller set
    up no logging (neither the root logger nor "jaxnn" has a handler); hold the third-party
    loggers (`THIRD_PARTY_LOGGERS`) whose level nobody set at WARNING unless ``verbose``.
    Everything is put back afterwards. A caller's own logging set-up always wins."""
    logger = logging.getLogger("jaxnn")
    added = None
    old_level = logger.level
    if not logging.getLogger().handlers and not logger.handlers:
        added = logging.StreamHandler()
        added.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(added)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    quieted = []
    if not verbose:
        for name in THIRD_PARTY_LOGGERS:
            third = logging.getLogger(name)
            if third.level == logging.NOTSET:
                third.setLevel(logging.WARNING)
                quieted.append(third)
    try:
        yield logger
    finally:
        for third in quieted:
            third.setLevel(logging.NOTSET)
        if added is not None:
            logger.removeHandler(added)
            logger.setLevel(old_level)


def epoch_records(records: Iterable[dict]) -> list[dict]:
    """The per-epoch lines of metrics.jsonl (those without "kind" come from older runs)."""
    return [r for r in records if r.get("kind", "epoch") == "epoch"]


def step_records(records: Iterable[dict]) -> list[dict]:
    """The per-step training lines of metrics.jsonl."""
    return [r for r in records if r.get("kind") == "step"]


def _summary_writer():
    """tensorboardX.SummaryWriter, imported without PyTorch.

    tensorboardX imports torch when it is installed (4 s here) only to accept torch tensors as
    values; jaxnn logs Python floats, so torch is hidden from that one import unless it is
    already loaded.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file ([] if absent); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsLog:
    """Appends evaluations to ``<workdir>/metrics.jsonl`` and TensorBoard events.

    On resume, `truncate(step)` drops the records written after the checkpoint the run
    restarts from, so the file ends up as that of an uninterrupted run.
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._writer = None
        self._tensorboard = tensorboard  # the event file is opened at the first write

    def _events(self):
        if self._writer is None and self._tensorboard:
            self._writer = _summary_writer()(str(self.workdir / "tensorboard"))
        return self._writer

    def truncate(self, step: int) -> None:
        """Keep only the records with ``record["step"] <= step``."""
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), "utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._events() is not None:
            step = int(record["step"])
            per_step = record.get("kind") == "step"
            for key, value in record.items():
                if key in ("step", "epoch") or not isinstance(value, int | float):
                    continue
                if per_step:
                    tag = f"train_step/{key.removeprefix('train_')}"
                else:
                    group, _, name = key.partition("_")
                    tag = f"{group}/{name}" if group in ("train", "val", "test") else key
                self._writer.add_scalar(tag, value, step)
            if not per_step:
                self._writer.flush()

    def records(self) -> list[dict]:
        return read_jsonl(self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_learning_curves(records: Iterable[dict], path: str | Path, *, title: str = "") -> Path:
    """learning_curves.png on one step axis (integer ticks): the per-step training loss with
    the per-epoch training and validation loss points (left); the per-step training accuracy
    with the per-epoch validation accuracy and macro F1 points (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = list(records)
    steps, epochs = step_records(records), epoch_records(records)
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))

    def x(rows: list[dict]) -> list[int]:
        return [int(r["step"]) for r in rows]

    if steps:
        ax_loss.plot(x(steps), [r["train_loss"] for r in steps], "-", lw=1, label="train (steps)")
        ax_score.plot(
            x(steps), [r["train_accuracy"] for r in steps], "-", lw=1, label="train accuracy"
        )
    ax_loss.plot(x(epochs), [r["train_loss"] for r in epochs], "o", label="train (epoch mean)")
    ax_loss.plot(x(epochs), [r["val_loss"] for r in epochs], "s-", label="validation")
    ax_score.plot(x(epochs), [r["val_accuracy"] for r in epochs], "s-", label="validation accuracy")
    ax_score.plot(x(epochs), [r["val_macro_f1"] for r in epochs], "^-", label="validation macro F1")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_score.set_ylabel("score")
    for ax in (ax_loss, ax_score):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
