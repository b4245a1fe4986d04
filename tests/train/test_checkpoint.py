"""jaxnn/train/checkpoint.py: saves that can be repeated, the best checkpoint written before
the others are deleted, stale temporary folders removed, unreadable checkpoints moved aside."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.train.checkpoint import Checkpoints, NoReadableCheckpointError


def _break(step_dir) -> None:
    """Truncate the checkpoint's largest file (its array data) to half."""
    victim = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def _tree(value: float) -> dict:
    return {"w": jnp.full((3,), value, jnp.float32), "b": jnp.asarray(value, jnp.float32)}


def test_saving_an_existing_step_replaces_it(tmp_path):
    with Checkpoints(tmp_path, keep=2) as checkpoints:
        checkpoints.save(4, _tree(1.0), {"epoch": 1})
        checkpoints.save(4, _tree(2.0), {"epoch": 2})  # after a rollback: no StepAlreadyExists
        state, meta = checkpoints.restore(_tree(0.0))
    np.testing.assert_array_equal(state["w"], np.full(3, 2.0, np.float32))
    assert meta == {"epoch": 2}


def test_the_best_checkpoint_is_replaced_and_read_by_step(tmp_path):
    with Checkpoints(tmp_path) as checkpoints:
        checkpoints.save_best(8, _tree(1.0), {"step": 8})
        checkpoints.save_best(8, _tree(3.0), {"step": 8})  # repeated after a kill
        checkpoints.save_best(4, _tree(2.0), {"step": 4})  # a lower step may become the best
        assert checkpoints.best_steps() == [4]
        variables, meta = checkpoints.restore_best(_tree(0.0), step=4)
    np.testing.assert_array_equal(variables["b"], np.float32(2.0))
    assert meta == {"step": 4}


def test_stale_temporary_folders_are_removed_when_the_workdir_is_opened(tmp_path, caplog):
    with Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(3, _tree(1.0), {})
    stale = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000"
    stale.mkdir()
    (stale / "part").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="jaxnn"), Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.all_steps() == [3]
    assert not stale.exists()
    assert "6.orbax-checkpoint-tmp-1700000000" in caplog.text


def test_the_newest_readable_checkpoint_is_used_and_the_broken_one_moved_aside(tmp_path):
    with Checkpoints(tmp_path, keep=3) as checkpoints:
        assert checkpoints.restore_newest_readable(_tree(0.0)) is None  # nothing yet
        for step in (1, 2, 3):
            checkpoints.save(step, _tree(float(step)), {"step": step})
    _break(tmp_path / "checkpoints" / "3")
    with Checkpoints(tmp_path, keep=3) as checkpoints:
        state, meta = checkpoints.restore_newest_readable(_tree(0.0))
        assert meta == {"step": 2} and checkpoints.all_steps() == [1, 2]
    np.testing.assert_array_equal(state["w"], np.full(3, 2.0, np.float32))
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert moved.name.startswith("checkpoints-3-") and (moved / "state").is_dir()


def test_no_readable_checkpoint_raises_and_moves_nothing(tmp_path):
    with Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(1, _tree(1.0), {})
    _break(tmp_path / "checkpoints" / "1")
    with Checkpoints(tmp_path) as checkpoints, pytest.raises(NoReadableCheckpointError) as raised:
        checkpoints.restore_newest_readable(_tree(0.0))
    assert raised.value.exit_code == 1 and "step 1:" in str(raised.value)
    assert (tmp_path / "checkpoints" / "1").is_dir() and not (tmp_path / "corrupt").exists()
