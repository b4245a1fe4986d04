"""jaxnn/tune/study.py: one Optuna study shared by processes; a killed tuner resumes.

Both tests start real processes (the tuner with the cheap objective of objective_src.py) on one
SQLite file, as `python -m jaxnn.tune` would.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from jaxnn.tune.study import config_key

REPO = Path(__file__).resolve().parents[2]
OBJECTIVE = Path(__file__).with_name("objective_src.py")
CANDIDATES = {"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "dropout": [0.0, 0.3, 0.5, 0.7]}

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("objective_src", {objective!r})
    obj = importlib.util.module_from_spec(spec); spec.loader.exec_module(obj)
    from jaxnn.tune.tuner import ProgressiveTuner
    config = obj.make_config({candidates!r}, group_size=1)
    runner = obj.FakeRunner(sleep_s={sleep}, log_path={log!r}, barrier={barrier!r},
                            parties={parties}, block_at={block_at})
    results = ProgressiveTuner(config, {workdir!r}, runner, storage={storage!r}).run()
    print(json.dumps(results["final"]["hyperparameters"]))
    """
)


def start(tmp_path, name, *, storage, parties=1, block_at=None, sleep=0.0):
    script = tmp_path / f"{name}.py"
    script.write_text(
        SCRIPT.format(
            objective=str(OBJECTIVE),
            candidates=CANDIDATES,
            sleep=sleep,
            log=str(tmp_path / "calls.log"),
            barrier=str(tmp_path / "barrier"),
            parties=parties,
            block_at=block_at,
            workdir=str(tmp_path / name),
            storage=storage,
        )
    )
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def finished_trials(storage):
    study = optuna.load_study(study_name="progressive", storage=storage)
    return [t for t in study.get_trials() if "record" in t.user_attrs]


def test_two_processes_share_one_study_and_run_each_trial_once(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [start(tmp_path, f"p{i}", storage=storage, parties=2, sleep=0.3) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    finals = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert finals[0] == finals[1] == {"learning_rate": 3e-3, "dropout": 0.3}
    done = finished_trials(storage)
    trials = [t for t in done if t.user_attrs["spec"]["kind"] == "trial"]
    keys = [t.user_attrs["key"] for t in trials]
    assert len(keys) == len(set(keys)) == 5 + 3  # dropout 0.0 is the lr stage's winner again
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 8  # nothing trained twice
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert owners == {p.pid for p in procs}  # both did part of the work
    finals_test = [t for t in done if t.user_attrs["spec"]["kind"] == "final_test"]
    assert len(finals_test) == 1  # test evaluated once in all
    for p in ("p0", "p1"):
        saved = json.loads((tmp_path / p / "tune_results.json").read_text())
        assert saved["final"]["test"] == finals_test[0].user_attrs["record"]["test_metrics"]


@pytest.mark.slow  # the in-process interrupt test of test_tuner.py covers resuming quickly
def test_killed_tuner_resumes_without_redoing_finished_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    proc = start(tmp_path, "killed", storage=storage, block_at=4)
    blocked = tmp_path / "calls.log.blocked"
    deadline = time.time() + 120
    while not blocked.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert blocked.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished_trials(storage)
    assert len(before) == 3
    study = optuna.load_study(study_name="progressive", storage=storage)
    running = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1  # the killed trial, left RUNNING by SIGKILL

    resumed = start(tmp_path, "resumed", storage=storage)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 3 + (8 - 3)  # the first run's 3, then only the 5 unfinished
    done = finished_trials(storage)
    keys = [t.user_attrs["key"] for t in done if t.user_attrs["spec"]["kind"] == "trial"]
    assert len(keys) == len(set(keys)) == 8
    finished_before = {t.user_attrs["key"]: t.number for t in before}
    for t in done:
        if t.user_attrs["key"] in finished_before:
            assert t.number == finished_before[t.user_attrs["key"]]  # kept, not redone
    killed = study.get_trials()[running[0].number]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert killed.user_attrs["abandoned"] == "stale" and "record" not in killed.user_attrs
    assert json.loads(out.strip().splitlines()[-1]) == {"learning_rate": 3e-3, "dropout": 0.3}


def test_config_key_depends_on_every_value_and_the_kind():
    base = {"optim": {"learning_rate": 1e-3}, "seed": 0}
    assert config_key(base) == config_key({"seed": 0, "optim": {"learning_rate": 1e-3}})
    assert config_key(base) != config_key({**base, "seed": 1})
    assert config_key(base) != config_key(base, kind="final_test")
