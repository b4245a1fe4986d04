"""jaxnn/train/trainer.py: the logging window's arithmetic and the validated-config contract
(the training itself is exercised by test_loop.py, test_step.py and test_precision.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnn.train.trainer import LogWindow, Trainer


def test_a_log_window_reports_the_steps_since_the_previous_record():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 2.0, 12).astype(np.float32)  # per-step weighted loss sums
    weights = rng.integers(8, 17, 12).astype(np.float32)
    correct = np.floor(weights * 0.5).astype(np.float32)
    window = LogWindow()
    window.start_timer()
    records = []
    for step in range(1, 13):
        window.count(int(weights[step - 1]), 5 * int(weights[step - 1]))
        if step % 4 == 0:
            sums = {
                "loss_sum": float(losses[:step].sum()),
                "weight": float(weights[:step].sum()),
                "correct": float(correct[:step].sum()),
            }
            records.append(window.record(sums, step=step, epoch=1))
    for k, record in enumerate(records):
        part = slice(4 * k, 4 * k + 4)
        np.testing.assert_allclose(
            record["train_loss"], losses[part].sum() / weights[part].sum(), rtol=1e-5
        )
        np.testing.assert_allclose(
            record["train_accuracy"], correct[part].sum() / weights[part].sum(), rtol=1e-5
        )
        assert record["tokens_per_s"] == pytest.approx(5 * record["examples_per_s"])
    # saved with a checkpoint and read back: the next record is the same
    again = LogWindow.from_dict(LogWindow.from_dict(records and window.as_dict()).as_dict())
    assert again.as_dict() == window.as_dict()


def test_a_trainer_of_a_validated_config_needs_its_mesh():
    with pytest.raises(ValueError, match="needs the mesh"):
        Trainer({}, None, validated=True)
