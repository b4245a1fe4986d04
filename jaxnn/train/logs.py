"""What a run writes: metrics.jsonl, TensorBoard events, learning_curves.png, JSON files.

metrics.jsonl has one JSON object per evaluation (one per epoch):

    {"epoch", "step", "wall_time", "learning_rate",
     "train_loss", "train_accuracy",                     running means over the epoch's steps
     "val_loss", "val_accuracy", "val_macro_f1",         on the validation split
     "train_unk_ratio", "val_unk_ratio"}                 unknown-word ratio (§15)

TensorBoard receives the same scalars (tensorboardX, no TensorFlow needed). learning_curves.png
plots training vs validation loss and validation macro F1 per epoch: the picture of over- and
underfitting (§5).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_learning_curves", "read_jsonl", "write_json"]


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
        if tensorboard:
            self._writer = _summary_writer()(str(self.workdir / "tensorboard"))

    def truncate(self, step: int) -> None:
        """Keep only the records with ``record["step"] <= step``."""
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), "utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key in ("step",) or not isinstance(value, int | float):
                    continue
                group, _, name = key.partition("_")
                tag = f"{group}/{name}" if group in ("train", "val", "test") else key
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    def records(self) -> list[dict]:
        return read_jsonl(self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_learning_curves(records: Iterable[dict], path: str | Path, *, title: str = "") -> Path:
    """learning_curves.png: train vs validation loss (left), validation macro F1 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_f1.plot(epochs, [r["train_accuracy"] for r in records], "o-", label="train accuracy")
    ax_f1.plot(epochs, [r["val_accuracy"] for r in records], "s-", label="validation accuracy")
    ax_f1.plot(epochs, [r["val_macro_f1"] for r in records], "^-", label="validation macro F1")
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("score")
    ax_f1.legend()
    ax_f1.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
