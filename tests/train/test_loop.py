"""jaxnn/train/loop.py: the workdir a run leaves, test split used once, per-step metrics, early
stopping, refusing a different config, non-finite loss, progress logging without set-up, and a
SIGKILLed run resuming to bitwise the same end."""

from __future__ import annotations

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from jaxnn.testing import driver_command, fault_env, without_timings
from jaxnn.train import loop
from jaxnn.train.checkpoint import Checkpoints
from jaxnn.train.errors import ConfigMismatchError, NonFiniteLossError
from jaxnn.train.logs import epoch_records, step_records
from jaxnn.train.loop import fit, train_and_evaluate

from .conftest import ROOT

RECORD_KEYS = {
    "kind",
    "epoch",
    "step",
    "wall_time",
    "learning_rate",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "train_unk_ratio",
    "val_unk_ratio",
}


def test_train_and_evaluate_writes_the_workdir_and_uses_test_once(
    tiny_config, tmp_path, monkeypatch
):
    calls = []
    real_load_test = loop.load_test
    monkeypatch.setattr(
        loop, "load_test", lambda *a, **k: calls.append(1) or real_load_test(*a, **k)
    )
    workdir = tmp_path / "run"
    results = train_and_evaluate(tiny_config, workdir)
    for name in [
        "config.json",
        "vocab.json",
        "metrics.jsonl",
        "learning_curves.png",
        "results.json",
        "checkpoints",
        "best",
        "tensorboard",
    ]:
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    records = epoch_records(lines)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert results["history"] == records
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["test"]["accuracy"] == results["test"]["accuracy"]
    for split in ("test", "val"):
        assert 0.0 <= results[split]["accuracy"] <= 1.0
        assert 0.0 <= results[split]["macro_f1"] <= 1.0
    # the synthetic classes are separable by keywords: the run must learn them
    assert results["val"]["accuracy"] > 0.6
    assert results["val"]["macro_f1"] == max(r["val_macro_f1"] for r in records)
    assert calls == [1]
    # the same command again: complete, same results, the test split not touched again
    again = train_and_evaluate(tiny_config, workdir)
    assert again["test"] == results["test"]
    assert calls == [1]


def test_different_config_is_refused_and_overwrite_starts_over(tiny_config, tmp_path):
    workdir = tmp_path / "run"
    tiny_config.train.num_epochs = 1
    tiny_config.train.max_steps_per_epoch = 3
    train_and_evaluate(tiny_config, workdir)
    tiny_config.optim.learning_rate = 0.123
    with pytest.raises(
        ConfigMismatchError, match=r"optim\.learning_rate: saved 0\.05, requested 0\.123"
    ):
        train_and_evaluate(tiny_config, workdir)
    results = train_and_evaluate(tiny_config, workdir, overwrite=True)
    assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 0.123
    assert results["epochs_run"] == 1


def test_a_workdir_with_the_old_process_keys_resumes(tiny_config, tmp_path):
    """train.host_allocator, train.cpu_vector_width and train.cpu_devices are process flags
    now; a workdir whose config.json an older jaxnn wrote with them resumes."""
    workdir = tmp_path / "run"
    tiny_config.train.num_epochs = 1
    tiny_config.train.max_steps_per_epoch = 3
    first = train_and_evaluate(tiny_config, workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["train"].update(host_allocator="keep", cpu_vector_width="256", cpu_devices="cores")
    (workdir / "config.json").write_text(json.dumps(saved))
    again = train_and_evaluate(tiny_config, workdir)  # not refused: complete, same results
    assert again["test"] == first["test"]
    tiny_config.train.batch_size = 3  # a key that changes results still refuses
    with pytest.raises(ConfigMismatchError, match=r"train\.batch_size: saved \d+, requested 3"):
        train_and_evaluate(tiny_config, workdir)


def test_early_stopping_when_validation_stops_improving(tiny_config):
    tiny_config.optim.learning_rate = 1e-12  # nothing moves: validation never improves
    tiny_config.train.num_epochs = 6
    tiny_config.train.patience = 2
    result = fit(tiny_config)
    assert result.stopped_early
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best["epoch"] == 1
    assert result.best_variables is not None  # no workdir: the best params stay in memory


def test_nonfinite_loss_stops_the_run_naming_the_step(tiny_config, tmp_path):
    tiny_config.optim.optimizer = "sgd"
    tiny_config.optim.learning_rate = 1e30
    tiny_config.optim.sparse_embeddings = False
    tiny_config.optim.warmup_steps = 1000  # lr_t = t * 1e27: step 0 harmless, then divergence
    tiny_config.train.checkpoint_every_steps = 1
    with pytest.raises(NonFiniteLossError) as raised:
        train_and_evaluate(tiny_config, tmp_path / "run")
    message = str(raised.value)
    bad = raised.value.step
    checkpoints = Checkpoints(tmp_path / "run")
    good = checkpoints.latest_step()
    state, _ = checkpoints.restore()
    checkpoints.close()
    # the failing update and the checkpoint's step are told apart: no "step 2 ... (step 2)"
    assert f"not finite in update {bad + 1} (step index {bad}," in message
    assert f"holds the state after {good} updates, before the failing one" in message
    assert good <= bad
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    assert not (tmp_path / "run" / "results.json").exists()


def _train(args, kill_at=0):
    faults = {"kill_at_step": kill_at} if kill_at else {}
    env = fault_env(os.environ, root=ROOT, **faults)
    return subprocess.run(driver_command(args), env=env, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow  # three subprocesses, ~75 s on 2 cores
def test_sigkilled_run_resumes_to_bitwise_the_same_parameters(synthetic_corpus, tmp_path):
    args = [
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--config.data.corpus={synthetic_corpus}",
        "--config.data.max_len=48",
        "--config.data.min_freq=1",
        "--config.train.batch_size=16",
        "--config.train.eval_batch_size=64",
        "--config.train.num_epochs=2",
        "--config.train.checkpoint_every_steps=7",
    ]
    straight = _train([*args, f"--workdir={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    # killed mid-epoch 2 (steps per epoch: 24), after the step-35 checkpoint, then resumed
    killed = _train([*args, f"--workdir={tmp_path / 'resumed'}"], kill_at=40)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "resumed" / "results.json").exists()
    resumed = _train([*args, f"--workdir={tmp_path / 'resumed'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 35" in resumed.stderr

    states = {}
    for name in ("straight", "resumed"):
        checkpoints = Checkpoints(tmp_path / name)
        states[name], meta = checkpoints.restore()
        checkpoints.close()
        assert meta["epoch"] == 2
    a, b = states["straight"], states["resumed"]
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # params, optimizer state, rng, sums
    records = {
        name: without_timings(
            [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        )
        for name in states
    }
    assert records["straight"] == records["resumed"]
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in states}
    assert results["straight"]["test"] == results["resumed"]["test"]


def test_metrics_per_step_progress_lines_and_one_validation_per_run(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """Per-step training lines every log_every_steps (their weighted mean is the epoch's mean
    loss), progress lines on stderr without any logging set-up by the caller, orbax/absl INFO
    hidden, and validate_config / mesh_from_config run once per run."""
    import logging

    from jaxnn.train import trainer as trainer_lib

    tiny_config.train.max_steps_per_epoch = 9
    tiny_config.train.log_every_steps = 3
    counts = {"validate": 0, "mesh": 0}
    for module in (loop, trainer_lib):
        real_validate, real_mesh = module.validate_config, module.mesh_from_config

        def validate(*a, _real=real_validate, **k):
            counts["validate"] += 1
            return _real(*a, **k)

        def mesh(*a, _real=real_mesh, **k):
            counts["mesh"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, "validate_config", validate)
        monkeypatch.setattr(module, "mesh_from_config", mesh)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as a bare `python -c` has
    workdir = tmp_path / "run"
    results = train_and_evaluate(tiny_config, workdir)
    assert counts == {"validate": 1, "mesh": 1}
    err = capsys.readouterr().err
    assert "epoch 1 step 9: train loss" in err and "epoch 2 step 18" in err and "test (best" in err
    assert "orbax" not in err.lower()
    assert logging.getLogger("orbax").level == logging.NOTSET  # put back afterwards

    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = step_records(lines)
    assert [r["step"] for r in steps] == [3, 6, 9, 12, 15, 18]
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2]
    for r in steps:
        assert r["examples_per_s"] > 0 and r["tokens_per_s"] > r["examples_per_s"]
        assert r["learning_rate"] > 0 and np.isfinite(r["train_loss"])
    # equal windows of equal batch sizes: the epoch's mean loss is the mean of its windows
    for epoch in (1, 2):
        windows = [r["train_loss"] for r in steps if r["epoch"] == epoch]
        mean = next(r for r in results["history"] if r["epoch"] == epoch)["train_loss"]
        np.testing.assert_allclose(np.mean(windows), mean, rtol=1e-5)
    scalars = _tensorboard_scalars(workdir / "tensorboard")
    assert {"train_step/loss", "train_step/examples_per_s", "val/loss"} <= set(scalars)
    assert [step for step, _ in scalars["train_step/loss"]] == [3, 6, 9, 12, 15, 18]
    np.testing.assert_allclose(
        [value for _, value in scalars["train_step/loss"]],
        [r["train_loss"] for r in steps],
        rtol=1e-6,
    )


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the event files in ``folder`` (TFRecord framing: u64 length,
    u32 crc, the Event proto, u32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_unreadable_data_is_a_data_error_and_leaves_no_workdir(tiny_config, tmp_path):
    from jaxnn.train.errors import DataError

    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,category\nsome text,sport\n")
    tiny_config.data.corpus = str(bad)
    with pytest.raises(DataError, match=r"bad\.csv.*text") as raised:
        train_and_evaluate(tiny_config, tmp_path / "run")
    assert raised.value.exit_code == 2
    assert not (tmp_path / "run").exists()  # the next run is not blocked
