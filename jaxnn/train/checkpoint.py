"""Checkpoints through orbax-checkpoint: the latest N train states, and the best parameters.

Layout under the workdir:

    checkpoints/<step>/   the whole `TrainState` + loop position (JSON), the latest
                          ``train.keep_checkpoints`` kept; a run restarts from the newest
    best/<step>/          params + batch_stats of the best validation epoch, and its metrics

Saves are synchronous: the state is donated to the next step, so its buffers must be on disk
before the step reuses them. Orbax writes each checkpoint to a temporary directory and renames it
when complete, so a run killed during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]

log = logging.getLogger("jaxnn.train")


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of ``tree``: what to restore into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
    """The latest train states and the best parameters of one workdir.

    Args:
      workdir: the run directory.
      keep: how many latest train states to keep (the best one is kept separately).
    """

    def __init__(self, workdir: str | Path, keep: int = 2):
        root = Path(workdir).absolute()
        self.latest_dir = root / "checkpoints"
        self.best_dir = root / "best"

        def manager(path: Path, max_to_keep: int) -> ocp.CheckpointManager:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            )
            return ocp.CheckpointManager(path, options=options)

        self._latest = manager(self.latest_dir, keep)
        self._best = manager(self.best_dir, 1)

    # --- latest train state ------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save the whole train state and the loop's position ``meta`` (JSON) at ``step``."""
        _save(self._latest, step, "state", state, meta)

    def restore(self, like: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of ``step`` (default newest), shaped and sharded like ``like``.

        ``like=None`` returns the saved tree as nested dicts of arrays (for inspection).
        """
        step = self._latest.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.latest_dir}")
        return _restore(self._latest, step, "state", like)

    # --- best parameters ---------------------------------------------------------------------
    def best_step(self) -> int | None:
        return self._best.latest_step()

    def save_best(self, step: int, variables: Any, meta: dict) -> None:
        """Replace the best checkpoint with ``variables`` (params, batch_stats) and ``meta``."""
        _save(self._best, step, "variables", variables, meta)

    def restore_best(self, like: Any) -> tuple[Any, dict]:
        """(variables, meta) of the best checkpoint, shaped and sharded like ``like``."""
        step = self._best.latest_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {self.best_dir}")
        return _restore(self._best, step, "variables", like)

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _save(manager: ocp.CheckpointManager, step: int, name: str, tree: Any, meta: dict) -> None:
    """Save ``tree`` under item ``name`` and ``meta`` as JSON at ``step``; wait until written."""
    args = ocp.args.Composite(
        **{name: ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
    )
    manager.save(step, args=args, force=True)
    manager.wait_until_finished()


def _restore(manager: ocp.CheckpointManager, step: int, name: str, like: Any) -> tuple[Any, dict]:
    """(item ``name``, meta) at ``step``; shaped and sharded like ``like`` (None: as saved)."""
    target = ocp.args.StandardRestore(None if like is None else _abstract(like))
    restored = manager.restore(
        step, args=ocp.args.Composite(**{name: target, "meta": ocp.args.JsonRestore()})
    )
    return restored[name], dict(restored["meta"])
