"""Checkpoints through orbax-checkpoint: the latest N train states, and the best parameters.

Layout under the workdir:

    checkpoints/<step>/   the whole `TrainState` + loop position (JSON), the latest
                          ``train.keep_checkpoints`` kept; a run restarts from the newest
                          that can be read
    best/<step>/          params + batch_stats of the best validation epoch, and its metrics
    corrupt/<name>-<time> checkpoints that could not be read, moved aside (never deleted)

Saves are synchronous: the state is donated to the next step, so its buffers must be on disk
before the step reuses them. Orbax writes each checkpoint to a temporary directory
(``<step>.orbax-checkpoint-tmp*``) and renames it when complete, so a run killed during a save
leaves the previous checkpoint intact; the temporary folders such a kill leaves are removed when
the workdir is opened again.

Every save can be repeated: a step that already exists (written before a kill, a full disk or a
fallback to an older checkpoint) is replaced. The best checkpoint is written as "new step, then
delete the others", and read by the step the loop's position names (`restore_best(step=...)`),
so a kill between the two leaves a readable best checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxnn.train.errors import EnvironmentFailure, environment_failure

__all__ = ["Checkpoints", "NoReadableCheckpointError"]

log = logging.getLogger("jaxnn.train")

_TMP_GLOB = "*.orbax-checkpoint-tmp*"


class NoReadableCheckpointError(EnvironmentFailure):
    """No kept checkpoint of the workdir could be read (nothing was moved or deleted)."""


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of ``tree``: what to restore into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the ``*.orbax-checkpoint-tmp*`` folders a killed save left in ``directory``."""
    removed = []
    if directory.is_dir():
        for tmp in sorted(directory.glob(_TMP_GLOB)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    if removed:
        log.warning(
            "removed %d unfinished checkpoint write(s) left by an interrupted run: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Checkpoints:
    """The latest train states and the best parameters of one workdir.

    Args:
      workdir: the run directory.
      keep: how many latest train states to keep (the best one is kept separately).
      writer: this process writes shared files (moves unreadable checkpoints aside, removes
        stale temporaries): process 0 of a multi-process run.
    """

    def __init__(self, workdir: str | Path, keep: int = 2, *, writer: bool = True):
        root = Path(workdir).absolute()
        self.root = root
        self.latest_dir = root / "checkpoints"
        self.best_dir = root / "best"
        self.corrupt_dir = root / "corrupt"
        self.writer = writer
        if writer:
            for directory in (self.latest_dir, self.best_dir):
                remove_stale_temporaries(directory)

        def manager(path: Path, max_to_keep: int | None) -> ocp.CheckpointManager:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            )
            return ocp.CheckpointManager(path, options=options)

        try:
            self._latest = manager(self.latest_dir, keep)
            self._best = manager(self.best_dir, None)  # old best steps deleted by save_best
        except Exception as err:
            failure = environment_failure(err, root, "creating the checkpoint folders in")
            if failure is None:
                raise
            raise failure from err
        self._closed = False

    # --- latest train state ------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._latest.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save the whole train state and the loop's position ``meta`` (JSON) at ``step``,
        replacing a checkpoint of the same step."""
        _save(self._latest, step, "state", state, meta, self.latest_dir)

    def restore(self, like: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of ``step`` (default newest), shaped and sharded like ``like``.

        ``like=None`` returns the saved tree as nested dicts of arrays (for inspection).
        """
        step = self._latest.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.latest_dir}")
        return _restore(self._latest, step, "state", like)

    def restore_newest_readable(self, like: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the newest checkpoint that can be read; None when there is none.

        A newer checkpoint that fails to read is reported in one warning line (its path and the
        reason) and moved to ``corrupt/`` once an older one has been read. When none can be
        read, `NoReadableCheckpointError` is raised and nothing is moved.
        """
        steps = self.all_steps()
        failed: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                restored = self.restore(like, step)
            except Exception as err:  # orbax/tensorstore raise many types for a broken file
                reason = _one_line(err)
                log.warning("checkpoint %s cannot be read: %s", self.latest_dir / str(step), reason)
                failed.append((step, reason))
                continue
            for bad, _ in failed:
                self._move_aside(self._latest, self.latest_dir / str(bad))
            if failed:
                self._latest.reload()
            return restored
        if failed:
            listing = "; ".join(f"step {s}: {r}" for s, r in failed)
            raise NoReadableCheckpointError(
                f"no checkpoint under {self.latest_dir} can be read ({listing}); nothing was "
                "changed: restore the folder from a backup, or start over with --overwrite",
                self.latest_dir,
            )
        return None

    def _move_aside(self, manager: ocp.CheckpointManager, path: Path) -> None:
        if not self.writer or not path.exists():
            return
        self.corrupt_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.corrupt_dir / f"{path.parent.name}-{path.name}-{stamp}"
        n = 1
        while target.exists():
            target = self.corrupt_dir / f"{path.parent.name}-{path.name}-{stamp}-{n}"
            n += 1
        shutil.move(str(path), str(target))
        log.warning("moved the unreadable checkpoint %s to %s", path, target)

    # --- best parameters ---------------------------------------------------------------------
    def best_step(self) -> int | None:
        return self._best.latest_step()

    def best_steps(self) -> list[int]:
        return sorted(self._best.all_steps())

    def save_best(self, step: int, variables: Any, meta: dict) -> None:
        """Make ``variables`` (params, batch_stats) and ``meta`` at ``step`` the best checkpoint:
        written first (replacing the same step), then every other best step deleted."""
        _save(self._best, step, "variables", variables, meta, self.best_dir)
        self.keep_only_best(step)

    def keep_only_best(self, step: int) -> None:
        """Delete every best step but ``step`` (one a kill between `save_best`'s write and its
        deletions left), when ``step`` is there."""
        steps = self._best.all_steps()
        if step in steps:
            for other in steps:
                if other != step:
                    self._best.delete(other)

    def restore_best(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(variables, meta) of the best checkpoint at ``step`` (default: the newest best step),
        shaped and sharded like ``like``."""
        step = self._best.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {self.best_dir}")
        return _restore(self._best, step, "variables", like)

    def close(self) -> None:
        """Wait for and close both managers (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        for manager in (self._latest, self._best):
            try:
                manager.close()
            except Exception as err:  # closing must not hide the error that led here
                log.warning("closing a checkpoint manager failed: %s", _one_line(err))

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _save(
    manager: ocp.CheckpointManager, step: int, name: str, tree: Any, meta: dict, where: Path
) -> None:
    """Save ``tree`` under item ``name`` and ``meta`` as JSON at ``step`` (replacing a checkpoint
    of the same step); wait until written. A full disk or a missing permission becomes an
    `EnvironmentFailure` naming ``where``; the unfinished temporary folder is removed."""
    args = ocp.args.Composite(
        **{name: ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
    )
    try:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
    except Exception as err:
        failure = environment_failure(err, where / str(step), "writing the checkpoint")
        if failure is None:
            raise
        for tmp in where.glob(f"{step}{_TMP_GLOB}"):
            shutil.rmtree(tmp, ignore_errors=True)
        manager.reload()
        raise failure from err


def _restore(manager: ocp.CheckpointManager, step: int, name: str, like: Any) -> tuple[Any, dict]:
    """(item ``name``, meta) at ``step``; shaped and sharded like ``like`` (None: as saved)."""
    target = ocp.args.StandardRestore(None if like is None else _abstract(like))
    restored = manager.restore(
        step, args=ocp.args.Composite(**{name: target, "meta": ocp.args.JsonRestore()})
    )
    return restored[name], dict(restored["meta"])
