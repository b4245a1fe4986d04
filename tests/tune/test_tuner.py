"""jaxnn/tune/tuner.py with a cheap objective we control (tests/tune/objective_src.py)."""

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest

from jaxnn.tune.space import build_stages
from jaxnn.tune.tuner import ProgressiveTuner, run_search, split_config, validation_value

_spec = importlib.util.spec_from_file_location(
    "objective_src", Path(__file__).with_name("objective_src.py")
)
obj = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(obj)

CANDIDATES = {
    "learning_rate": [1e-3, 3e-3, 1e-2, 2.0],  # 2.0 diverges
    "dropout": [0.0, 0.3, 0.5],
    "hidden_size": [16, 64],
    "weight_decay": [0.0, 1e-4],
    "optimizer": ["adam", "adamw"],
    "activation": ["relu", "gelu"],
}


def brute_force_best(candidates, score):
    """Independent reference: the grid point with the best score (separable objective)."""
    names = list(candidates)
    best = None
    for values in itertools.product(*(candidates[n] for n in names)):
        h = {**obj.hparams(obj.make_config(candidates)), **dict(zip(names, values))}
        if h["learning_rate"] >= 1.0:
            continue
        if best is None or score(h) > score(best):
            best = h
    return {n: best[n] for n in names}


def tune(tmp_path, candidates=CANDIDATES, runner=None, plots=False, **kw):
    runner = runner or obj.FakeRunner()
    config = obj.make_config(candidates, **kw)
    results = ProgressiveTuner(config, tmp_path, runner, plots=plots).run()
    return results, runner


def test_validation_value_is_the_best_epoch_and_skips_nan():
    history = [
        {"epoch": 1, "val_macro_f1": 0.5},
        {"epoch": 2, "val_macro_f1": math.nan},
        {"epoch": 3, "val_macro_f1": 0.7},
        {"epoch": 4, "val_macro_f1": 0.6},
    ]
    assert validation_value(history, "macro_f1") == (0.7, 3)
    value, epoch = validation_value([{"epoch": 1, "val_macro_f1": math.nan}], "macro_f1")
    assert math.isnan(value) and epoch is None


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One tuning run over CANDIDATES, shared by the tests that only read its outputs."""
    workdir = tmp_path_factory.mktemp("full")
    results, runner = tune(workdir, plots=True)
    return workdir, results, runner


def test_progressive_finds_the_known_optimum_on_validation_macro_f1(full_run):
    _, results, runner = full_run
    expected = brute_force_best(CANDIDATES, obj.f1_score)
    assert results["final"]["hyperparameters"] == expected
    assert [s["name"] for s in results["stages"]] == [
        "learning_rate",
        "dropout",
        "hidden_size",
        "weight_decay",
        "optimizer",
        "activation",
    ]
    # Test evaluated exactly once, on the final config, after every trial.
    assert len(runner.test_calls) == 1
    assert obj.hparams(obj.make_config({}).__class__(runner.test_calls[0])) == {
        **obj.hparams(obj.make_config({})),
        **expected,
    }
    assert results["final"]["test"]["macro_f1"] == pytest.approx(
        obj.f1_score({**obj.hparams(obj.make_config({})), **expected}) - 0.05
    )
    # The validation value is the best epoch's (the last one here).
    first = results["stages"][0]["candidates"][1]
    assert first["validation"]["best_epoch"] == obj.EPOCHS


def test_selection_by_accuracy_follows_the_config(tmp_path):
    results, _ = tune(tmp_path, metric="accuracy")
    assert results["final"]["hyperparameters"]["learning_rate"] == obj.ACC_BEST_LR
    assert results["metric"] == "accuracy"


def test_diverging_trial_is_recorded_failed_and_the_tuner_goes_on(full_run):
    _, results, _ = full_run
    lr_stage = results["stages"][0]
    failed = [c for c in lr_stage["candidates"] if c["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["values"] == {"learning_rate": 2.0}
    assert "non-finite" in failed[0]["failure_reason"]
    assert lr_stage["winner"] == {"learning_rate": 3e-3}
    assert len(results["stages"]) == 6


def test_a_runner_that_raises_fails_its_trials_with_the_reason(tmp_path):
    class Flaky(obj.FakeRunner):
        def run(self, configs):
            if any(c.model.dropout == 0.5 for c in configs):
                raise FloatingPointError("boom in dropout 0.5")
            return super().run(configs)

    results, _ = tune(
        tmp_path,
        candidates={"learning_rate": [3e-3], "dropout": [0.3, 0.5]},
        runner=Flaky(),
        group_size=1,
    )
    cands = results["stages"][1]["candidates"]
    assert cands[1]["status"] == "failed"
    assert "FloatingPointError: boom in dropout 0.5" in cands[1]["failure_reason"]
    assert results["stages"][1]["winner"] == {"dropout": 0.3}


def test_every_candidate_failing_keeps_the_previous_value(tmp_path):
    results, _ = tune(tmp_path, candidates={"dropout": [0.3], "learning_rate": [2.0, 5.0]})
    assert results["stages"][0]["winner"] is None
    assert results["stages"][0]["note"].startswith("every candidate failed")
    assert results["final"]["hyperparameters"]["learning_rate"] == 1e-3  # base_config's value


def test_shape_sharing_stage_is_one_runner_call_and_repeats_are_not_rerun(tmp_path):
    cands = {"learning_rate": [1e-3, 3e-3, 1e-2], "dropout": [0.0, 0.3], "hidden_size": [16, 64]}
    results, runner = tune(tmp_path, candidates=cands, group_size=8)
    assert [len(call) for call in runner.calls] == [3, 1, 1]  # stage 2 reuses dropout=0.0
    assert results["num_trials"] == 5
    group2 = results["stages"][1]["candidates"]
    assert group2[0]["trial"] == results["stages"][0]["candidates"][1]["trial"]  # same trial
    results2, runner2 = tune(tmp_path / "g1", candidates=cands, group_size=1)
    assert [len(call) for call in runner2.calls] == [1] * 5
    assert results2["final"] == results["final"] | {"test": results2["final"]["test"]}


def test_errors_come_before_any_training(tmp_path):
    runner = obj.FakeRunner()
    bad = [
        ({"learning_rate": []}, {}, "empty"),
        ({"lr": [1e-3]}, {}, "unknown hyperparameter 'lr'"),
        ({"dropout": [1.0]}, {}, "dropout=1.0 is out of range"),
        ({"learning_rate": [1e-3]}, {"metric": "loss"}, "tune.metric='loss'"),
        ({"learning_rate": [1e-3]}, {"group_size": 0}, "group_size"),
        ({"learning_rate": [1e-3]}, {"colour": 1}, "unknown tune keys"),
    ]
    for candidates, extra, match in bad:
        config = obj.make_config(candidates, **extra)
        with pytest.raises(ValueError, match=match):
            ProgressiveTuner(config, tmp_path, runner).run()
    config = obj.make_config({"learning_rate": [1e-3]})
    config.optim.learning_rte = 0.1
    with pytest.raises(ValueError, match="learning_rte"):
        split_config(config)
    assert runner.calls == [] and runner.test_calls == []
    assert not (tmp_path / "tune.db").exists()


def test_interrupted_run_resumes_without_redoing_finished_trials(tmp_path):
    class Interrupting(obj.FakeRunner):
        def run(self, configs):
            if self.count >= 4:
                raise KeyboardInterrupt
            return super().run(configs)

    cands = {
        "learning_rate": [1e-3, 3e-3, 1e-2],
        "dropout": [0.0, 0.3, 0.5],
        "hidden_size": [16, 64],
    }
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path, candidates=cands, runner=Interrupting(), group_size=1)
    results, runner = tune(tmp_path, candidates=cands, group_size=1)
    ran = [call[0] for call in runner.calls]
    assert len(ran) == 6 - 4  # 6 distinct trials (3 + 2 + 1), 4 finished before the interrupt
    fresh, _ = tune(tmp_path / "fresh", candidates=cands, group_size=1)
    assert results["final"]["hyperparameters"] == fresh["final"]["hyperparameters"]
    # A third run is all cache: nothing trained, test not evaluated again.
    again, runner3 = tune(tmp_path, candidates=cands, group_size=1)
    assert runner3.calls == [] and runner3.test_calls == []
    assert again["final"]["test"] == results["final"]["test"]


def test_outputs_json_markdown_and_one_plot_per_stage(full_run):
    tmp_path, results, _ = full_run
    saved = json.loads((tmp_path / "tune_results.json").read_text())
    assert [s["name"] for s in saved["stages"]] == [s["name"] for s in results["stages"]]
    assert saved["final"]["test"] == pytest.approx(results["final"]["test"])
    for stage in saved["stages"]:
        for cand in stage["candidates"]:
            assert {"values", "status", "validation", "trial", "wall_time_s", "seed"} <= set(cand)
    md = (tmp_path / "tune_results.md").read_text()
    assert "**learning_rate=0.003**" in md and "non-finite" in md and "test (evaluated once" in md
    plots = sorted(p.name for p in tmp_path.glob("stage_*.png"))
    assert len(plots) == len(results["stages"]) and plots[0] == "stage_1_learning_rate.png"
    # Optuna has the full records.
    import optuna

    study = optuna.load_study(study_name="progressive", storage=f"sqlite:///{tmp_path}/tune.db")
    trials = [t for t in study.get_trials() if t.user_attrs["spec"]["kind"] == "trial"]
    assert len(trials) == results["num_trials"]
    for t in trials:
        spec, record = t.user_attrs["spec"], t.user_attrs["record"]
        assert spec["config"]["optim"]["learning_rate"] > 0 and spec["seed"] == 0
        assert len(record["history"]) >= 1 and record["status"] in ("complete", "failed")
        assert record["wall_time_s"] >= 0
        if record["status"] == "failed":
            assert "non-finite" in record["failure_reason"]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_baseline_search_uses_the_budget_and_resumes(tmp_path, sampler):
    config = obj.make_config(CANDIDATES)
    runner = obj.FakeRunner()
    out = run_search(config, tmp_path, runner, sampler=sampler, n_trials=6)
    assert out["n_trials"] == 6 and sum(len(c) for c in runner.calls) == 6
    values = [r["validation"]["value"] for r in out["trials"] if r["status"] == "complete"]
    assert out["best"]["validation"]["value"] == max(values)
    for r in out["trials"]:
        for name, value in r["hyperparameters"].items():
            assert value in CANDIDATES[name]
    more = run_search(config, tmp_path, obj.FakeRunner(), sampler=sampler, n_trials=8)
    assert more["n_trials"] == 8 and [r["trial"] for r in more["trials"][:6]] == [
        r["trial"] for r in out["trials"]
    ]


def test_stage_count_matches_build_stages():
    stages = build_stages(CANDIDATES)
    assert sum(len(s.candidates) for s in stages) == 4 + 3 + 2 + 2 + 2 + 2
