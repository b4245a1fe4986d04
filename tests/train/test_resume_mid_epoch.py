"""A run interrupted mid-epoch resumes from its mid-epoch checkpoint to bitwise the same end.

In-process and at a tiny size (2 epochs of 5 steps, a checkpoint every 3 steps), so it runs in
CI in seconds; tests/train/test_loop.py has the slow SIGKILL version through train.py. The
interruption is an exception raised by the train step at a chosen call: the checkpoint of step 6
(epoch 2, batch 1) is the newest when step 9 is attempted, so the resumed run must start there
(4 more steps, not 5 from the epoch boundary) and end with the uninterrupted run's state:
parameters, optimizer state, RNG key, running sums, history.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxnn.train import Trainer, fit

STEPS_PER_EPOCH, EPOCHS, EVERY, INTERRUPT_AT = 5, 2, 3, 9


class Interrupted(RuntimeError):
    """Raised by the wrapped train step: the stand-in for a kill."""


def _count_steps(monkeypatch, interrupt_at: int | None) -> list[int]:
    """Wrap every new Trainer's train step to count calls (and raise at ``interrupt_at``)."""
    calls = [0]
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        step = self.train_step

        def train_step(state, batch):
            calls[0] += 1
            if calls[0] == interrupt_at:
                raise Interrupted(f"interrupted before train step call {interrupt_at}")
            return step(state, batch)

        self.train_step = train_step

    monkeypatch.setattr(Trainer, "__init__", init)
    return calls


def _history(result) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in result.history]


def test_run_interrupted_mid_epoch_resumes_bitwise(tiny_config, tmp_path, monkeypatch):
    tiny_config.train.num_epochs = EPOCHS
    tiny_config.train.max_steps_per_epoch = STEPS_PER_EPOCH
    tiny_config.train.checkpoint_every_steps = EVERY
    assert tiny_config.model.dropout > 0  # the dropout key of each step must be restored too

    calls = _count_steps(monkeypatch, None)
    straight = fit(tiny_config, workdir=tmp_path / "straight")
    assert calls[0] == EPOCHS * STEPS_PER_EPOCH

    calls = _count_steps(monkeypatch, INTERRUPT_AT)
    with pytest.raises(Interrupted):
        fit(tiny_config, workdir=tmp_path / "resumed")
    newest = (INTERRUPT_AT - 1) // EVERY * EVERY  # 6: mid-epoch 2
    assert newest % STEPS_PER_EPOCH != 0

    calls = _count_steps(monkeypatch, None)
    resumed = fit(tiny_config, workdir=tmp_path / "resumed")
    assert calls[0] == EPOCHS * STEPS_PER_EPOCH - newest  # started at the mid-epoch checkpoint

    a, b = straight.state, resumed.state
    assert int(a.step) == int(b.step) == EPOCHS * STEPS_PER_EPOCH
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # params, opt state, rng, running sums
    assert _history(straight) == _history(resumed)
    assert straight.best == resumed.best
