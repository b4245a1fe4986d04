"""train_and_evaluate evaluates the test split once, with the best epoch's parameters.

A distinguishable best epoch is planted: `Trainer.evaluate` is wrapped so that the validation
metric peaks at epoch 1 and is worse at every later epoch, while the parameters keep moving.
The reported test metrics must then be those of an independent evaluation of epoch 1's
parameters (copied on the host when epoch 1 was validated), and must differ from those of the
last epoch's parameters. A loop that evaluated the last state, or the best epoch's metrics with
other parameters, fails here.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxnn.train import Trainer, load_data, load_test, train_and_evaluate


def _host_copy(tree):
    # the train step donates the state's buffers: keep a real copy, not a view
    return jax.tree.map(lambda a: np.array(a, copy=True), jax.device_get(tree))


def _same_tree(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _comparable(metrics: dict) -> dict:
    """The test metrics as plain Python values (results.json holds them the same way)."""
    keys = ("loss", "accuracy", "macro_f1", "confusion_matrix", "precision", "recall", "f1")
    return {k: np.asarray(metrics[k]).tolist() for k in keys}


def test_test_split_is_evaluated_once_with_the_best_epochs_parameters(
    tiny_config, tmp_path, monkeypatch
):
    tiny_config.train.num_epochs = 3
    tiny_config.train.max_steps_per_epoch = 8
    tiny_config.train.patience = 0  # no early stopping: epochs 2 and 3 run and move the params
    select = tiny_config.train.select_metric
    real_evaluate = Trainer.evaluate
    calls = []  # (split, host copy of the variables, planted metrics)

    def evaluate(self, variables, split):
        metrics = dict(real_evaluate(self, variables, split))
        if not calls or split is calls[0][0]:  # the validation split (same object each epoch)
            epoch = sum(split is c[0] for c in calls) + 1
            # plant the best epoch: 1 scores highest, later epochs lower and lower
            metrics[select] = 1.0 if epoch == 1 else 0.5 - 0.1 * epoch
        calls.append((split, _host_copy(variables), metrics))
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    results = train_and_evaluate(tiny_config, tmp_path / "run")
    monkeypatch.undo()

    validation_split = calls[0][0]
    val_calls = [c for c in calls if c[0] is validation_split]
    test_calls = [c for c in calls if c[0] is not validation_split]
    assert len(val_calls) == 3 and len(test_calls) == 1  # every epoch validated; test once
    assert calls[-1] is test_calls[0]  # ... and only after training
    assert results["best_epoch"] == 1 and results["val"]["epoch"] == 1
    assert results["val"][select] == 1.0

    epoch_1, last = val_calls[0][1], val_calls[-1][1]
    assert not _same_tree(epoch_1, last)  # the parameters did move after the best epoch
    assert _same_tree(test_calls[0][1], epoch_1)  # the test split saw epoch 1's parameters

    # an independent evaluation, by a fresh trainer, of epoch 1's and of the last parameters
    data = load_data(tiny_config)
    trainer = Trainer(tiny_config, data)
    test_split = load_test(tiny_config, data)
    of_best = real_evaluate(trainer, epoch_1, test_split)
    of_last = real_evaluate(trainer, last, test_split)
    assert _comparable(results["test"]) == _comparable(of_best)
    assert _comparable(of_last) != _comparable(of_best)
    assert results["test"]["loss"] != of_last["loss"]
