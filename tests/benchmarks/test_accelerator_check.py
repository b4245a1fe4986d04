"""benchmarks/accelerator_check.py: its parsers and report writer, and --quick end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.conftest import BENCHMARKS, load_script

check = load_script("accelerator_check")

PYTEST_OUTPUT = """\
........F..s..E.                                                          [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/ops/test_attention.py:12: implementation='cudnn' needs an NVIDIA GPU
FAILED tests/ops/test_softmax.py::test_matches_jax[float32-3] - AssertionError: Not equal
FAILED tests/nn/test_mlp.py::TestMLP::test_shapes - ValueError: bad
ERROR tests/train/test_step.py::test_compiles - RuntimeError: boom
= 2 failed, 12 passed, 1 skipped, 3 deselected, 2 warnings, 1 error in 41.27s (0:00:41) =
"""


def test_parse_pytest_summary_counts_and_ids():
    summary = check.parse_pytest_summary(PYTEST_OUTPUT)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (12, 2, 1)
    assert (summary["errors"], summary["deselected"], summary["xfailed"]) == (1, 3, 0)
    assert summary["duration_s"] == pytest.approx(41.27)
    assert summary["failed_ids"] == [
        "tests/ops/test_softmax.py::test_matches_jax[float32-3]",
        "tests/nn/test_mlp.py::TestMLP::test_shapes",
        "tests/train/test_step.py::test_compiles",
    ]


def test_parse_pytest_summary_all_passed_and_no_summary():
    summary = check.parse_pytest_summary("....\n============ 4 passed in 0.50s ============\n")
    assert (summary["passed"], summary["failed"], summary["failed_ids"]) == (4, 0, [])
    empty = check.parse_pytest_summary("Traceback (most recent call last):\nImportError: x\n")
    assert (empty["passed"], empty["duration_s"], empty["summary_line"]) == (0, None, "")


def test_parse_pytest_summary_quiet_line():
    """pytest -q prints the final line without its "=" rule."""
    summary = check.parse_pytest_summary("....\n1 failed, 36 passed, 2 skipped in 51.83s\n")
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (36, 1, 2)
    assert summary["summary_line"] == "1 failed, 36 passed, 2 skipped in 51.83s"


def test_device_slug():
    assert check.device_slug("NVIDIA H200") == "nvidia_h200"
    assert check.device_slug("TPU v5 lite") == "tpu_v5_lite"
    assert check.device_slug("") == "unknown"


def test_attention_command_uses_only_listed_flags():
    old_help = "usage: attention.py [--quick] [--dtypes ...] [--no-torch] [--tag TAG]"
    command = check.attention_command(old_help, quick=False, backend="gpu", out="/o")
    assert command[2:] == ["--quick", "--dtypes", "bfloat16", "--tag", "accelerator_check"]
    new_help = old_help + " [--out OUT] [--seq-lens N ...] [--reps REPS]"
    quick = check.attention_command(new_help, quick=True, backend="cpu", out="/o")
    assert quick[2:] == [
        "--seq-lens",
        "128",
        "256",
        "--reps",
        "2",
        "--no-torch",
        "--out",
        "/o",
        "--tag",
        "accelerator_check_quick",
    ]
    # "--outfile" is not "--out"
    assert "--out" not in check.attention_command(
        "[--outfile F]", quick=True, backend="cpu", out="/o"
    )


def test_run_command_records_output_and_timeout(tmp_path):
    ok = check.run_command(
        [sys.executable, "-c", "print('hello')"],
        timeout_s=30,
        log_path=tmp_path / "a.log",
        prefix="t",
        echo=False,
    )
    assert (ok["returncode"], ok["timed_out"], ok["output"].strip()) == (0, False, "hello")
    assert "hello" in (tmp_path / "a.log").read_text()
    slow = check.run_command(
        [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(60)"],
        timeout_s=2,
        log_path=tmp_path / "b.log",
        prefix="t",
        echo=False,
    )
    assert slow["timed_out"] and slow["returncode"] is None and slow["seconds"] < 30
    assert check._status(slow) == "timeout" and "start" in slow["output"]


def _report():
    return {
        "started": "2026-12-04 19:00:00",
        "command": "python benchmarks/accelerator_check.py",
        "quick": False,
        "budget_s": 480.0,
        "total_s": 301.0,
        "steps": {
            "environment": {
                "status": "ok",
                "step_seconds": 4.0,
                "backend": "gpu",
                "device_kind": "NVIDIA H200",
                "device_count": 1,
                "cpu_count": 16,
                "python": "3.12.3",
                "versions": {"jax": "0.11.2", "torch": None},
                "missing_dependencies": ["optuna"],
                "nvidia_smi": "NVIDIA H200, 580.1, 143771 MiB, 9.0",
            },
            "tests": {
                "status": "failed",
                "step_seconds": 80.0,
                "passed": 280,
                "failed": 1,
                "errors": 0,
                "skipped": 9,
                "failed_ids": ["tests/ops/test_x.py::test_y"],
            },
            "end_to_end": {
                "status": "ok",
                "step_seconds": 70.0,
                "config": "configs/imdb_transformer.py",
                "test_accuracy": 0.8812,
                "wall_time_s": 61.5,
                "meets_target": True,
            },
            "attention": {"status": "timeout", "step_seconds": 120.0, "error": "killed"},
            "train_bench": {"status": "skipped", "reason": "the check's budget is spent"},
        },
    }


def test_write_report_markdown_and_json(tmp_path):
    json_path, md_path = check.write_report(_report(), tmp_path, "accelerator_check.nvidia_h200")
    assert json.loads(json_path.read_text())["steps"]["tests"]["failed"] == 1
    md = md_path.read_text()
    assert md.startswith("# Accelerator check: NVIDIA H200")
    assert "| tests | failed | 80 | 280 passed, 1 failed, 0 errors, 9 skipped |" in md
    assert "test accuracy 0.8812, wall 61.5 s; target (>= 0.87, <= 90 s) met" in md
    assert "- `tests/ops/test_x.py::test_y`" in md
    assert "missing pure-Python dependencies: optuna" in md
    assert "torch missing" in md and "NVIDIA H200, 580.1" in md
    assert "| train_bench | skipped | n/a | the check's budget is spent |" in md


def test_missing_dependencies_names_what_is_not_importable(monkeypatch):
    monkeypatch.setattr(check, "PURE_PYTHON", (("json", "json"), ("no_such_mod_xyz", "no-such")))
    assert check.missing_dependencies() == ["no-such"]


@pytest.mark.slow
def test_quick_check_end_to_end(tmp_path):
    """The whole --quick check on this machine's CPU (about a minute or two)."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    root = BENCHMARKS.parent
    subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "accelerator_check.py"),
            "--quick",
            "--out",
            str(out),
            "--log-dir",
            str(logs),
            "--steps",
            "compile",
            "tests",
        ],
        cwd=root,
        check=True,
        timeout=600,
    )
    [json_path] = list(Path(out).glob("accelerator_check.*.quick.json"))
    report = json.loads(json_path.read_text())
    assert report["steps"]["environment"]["status"] == "ok"
    assert report["steps"]["compile"]["status"] == "ok", report["steps"]["compile"]
    assert report["steps"]["tests"]["passed"] > 0 and report["steps"]["tests"]["failed"] == 0


def test_step_compile_reruns_a_slow_config_without_its_process_settings(monkeypatch, tmp_path):
    """A config over budget is compiled again without its process settings, then (on a GPU)
    without XLA's autotuning; the others once, with theirs (as train.py runs them)."""
    calls = []

    def fake_compile_one(name, extra, label, timeout_s, tmp, log_dir, env=None):
        calls.append((label, extra, env))
        slow = name == "imdb_transformer.py" and "[" not in label
        timing = {
            "lower_s": 1.0,
            "compile_s": 99.0 if slow else 2.0,
            "total_s": 3.0,
            "hlo": {"instructions": 1, "while_loops": 0, "top_ops": {}},
        }
        shapes = {"train_batch": [1, 1], "eval_batch": [1, 1], "model": "m", "dtype": "f"}
        entry = {
            "shapes": shapes,
            "train": timing,
            "eval": timing,
            "over_budget": ["train"] if slow or "settings]" in label else [],
        }
        return {"header": {"backend": "gpu", "budget_s": 15.0}, "configs": {label: entry}}

    monkeypatch.setattr(check, "_compile_one", fake_compile_one)
    args = type(
        "Args", (), {"quick": False, "compile_timeout_s": 60.0, "environment": {"backend": "gpu"}}
    )()
    result = check.step_compile(args, 600.0, tmp_path)
    labels = [label for label, _, _ in calls]
    assert "tune_imdb.py" not in labels  # not a training run: never started
    assert result["results"]["configs"]["tune_imdb.py"]["skipped"]
    assert labels.count("imdb_transformer.py") == 1
    reruns = [c for c in calls if c[0].startswith("imdb_transformer.py [")]
    assert [r[1] for r in reruns] == [["--process-settings", "none"]] * 2
    assert "--xla_gpu_autotune_level=0" in reruns[1][2]["XLA_FLAGS"]
    assert all(
        extra == ["--process-settings", "train"] for label, extra, _ in calls if "[" not in label
    )
    assert result["over_budget_or_failed"] == ["imdb_transformer.py"]
    assert result["status"] == "failed"
