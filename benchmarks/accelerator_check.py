"""One command that checks jaxnn on whatever accelerator JAX sees (issue #25), in <= 8 minutes.

    python benchmarks/accelerator_check.py [--quick] [--out DIR] [--log-dir DIR] [--budget-s 480]

Steps, each in its own subprocess with its own timeout (cut further so the whole check keeps
to ``--budget-s``); each prints as it goes, and a step that fails or times out is recorded,
not fatal:

  environment   backend, device name and count, driver (nvidia-smi when present), versions of
                jax, jaxlib, flax, optax, orbax, chex, torch; the pure-Python dependencies
                that are missing (one line: this script installs nothing)
  compile       benchmarks/compile.py, one process per shipped config, set up as train.py runs
                it (jaxnn.launch; CPU settings on a CPU only), against its budget (a config
                whose step compiles for minutes is cut off alone)
  tests         the fast suite: pytest -m "not slow" -n <cores>; pass/fail/skip counts and the
                failing test ids
  end_to_end    python train.py --config=configs/imdb_transformer.py: test accuracy, wall time
                (its results.json)
  train_bench   benchmarks/train.py: jaxnn's train step against PyTorch on the same device
  attention     benchmarks/attention.py's sweep (bfloat16 on an accelerator)

Writes accelerator_check.<device>.md and .json into ``--out`` (default benchmarks/results/;
with --quick runs/benchmarks/), and every step's full output to ``--log-dir``.
``--quick`` runs a small subset of each step on the CPU in a minute or two, so CI can check
that the check works.

The parent process never initialises a JAX backend (on a GPU it would hold the device's
memory the steps need); pytest runs with XLA_PYTHON_CLIENT_PREALLOCATE=false, as its workers
share one device.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_QUICK_OUT = ROOT / "runs" / "benchmarks"
DEFAULT_LOGS = ROOT / "runs" / "benchmarks" / "accelerator_check_logs"
BUDGET_S = 480.0  # issue #25: the whole check within 8 minutes of wall on an accelerator
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "torch", "numpy")
# pure-Python dependencies (import name, distribution) the project or its tests use
PURE_PYTHON = (
    ("ml_collections", "ml-collections"),
    ("absl", "absl-py"),
    ("tensorboardX", "tensorboardX"),
    ("optuna", "optuna"),
    ("hypothesis", "hypothesis"),
    ("sklearn", "scikit-learn"),
    ("matplotlib", "matplotlib"),
    ("pytest", "pytest"),
    ("xdist", "pytest-xdist"),
)
TRAIN_CONFIG = "configs/imdb_transformer.py"
QUICK_TRAIN_CONFIG = "configs/tiny.py"
TARGET_TEST_ACCURACY, TARGET_WALL_S = 0.87, 90.0  # issue #25, imdb_transformer.py on a GPU


# ----------------------------------------------------------------------------------------------
# Running a step
# ----------------------------------------------------------------------------------------------


def run_command(
    command: list[str],
    *,
    timeout_s: float,
    log_path: Path,
    prefix: str,
    env: dict[str, str] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run ``command`` from the project root, its output streamed (``prefix``ed) and saved to
    ``log_path``; killed with its process group after ``timeout_s``.

    Returns {"returncode" (None when timed out), "timed_out", "seconds", "output"}."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def pump() -> None:
            for line in process.stdout:
                lines.append(line)
                log.write(line)
                log.flush()
                if echo:
                    print(f"  [{prefix}] {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        reader.join(timeout=10)
        if timed_out:
            log.write(f"\n[timed out after {timeout_s:.0f} s]\n")
    return {
        "returncode": None if timed_out else process.returncode,
        "timed_out": timed_out,
        "seconds": time.perf_counter() - start,
        "output": "".join(lines),
    }


def _status(run: dict[str, Any]) -> str:
    if run["timed_out"]:
        return "timeout"
    return "ok" if run["returncode"] == 0 else "failed"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------
# Parsers (pure functions: tests/benchmarks/test_accelerator_check.py)
# ----------------------------------------------------------------------------------------------

# the final line, with (default) or without (-q) its "=" rule: "= 2 failed, 9 passed in 3.1s ="
_SUMMARY = re.compile(
    r"^[= ]*((?:\d+ [a-z]+(?:, )?)+|no tests ran) in ([\d.]+)s(?: \([^)]*\))?[= ]*$", re.M
)
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)")
_FAILED_ID = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def parse_pytest_summary(output: str) -> dict[str, Any]:
    """Counts and failing ids from pytest's output (``-ra`` short summary and final line).

    Returns {"passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected": int,
    "duration_s": float or None, "failed_ids": [test ids, FAILED then ERROR, in order],
    "summary_line": str}; counts pytest did not print are 0."""
    counts = dict.fromkeys(
        ("passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected"), 0
    )
    matches = list(_SUMMARY.finditer(output))
    duration, line = None, ""
    if matches:
        last = matches[-1]
        line, duration = last.group(0).strip("= \n"), float(last.group(2))
        for number, kind in _COUNT.findall(last.group(1)):
            kind = "errors" if kind.startswith("error") else kind
            if kind in counts:
                counts[kind] = int(number)
    failed_ids = list(dict.fromkeys(m.group(2) for m in _FAILED_ID.finditer(output)))
    return {**counts, "duration_s": duration, "failed_ids": failed_ids, "summary_line": line}


def missing_dependencies() -> list[str]:
    """Distribution names of `PURE_PYTHON` dependencies that are not importable here."""
    return [dist for module, dist in PURE_PYTHON if importlib.util.find_spec(module) is None]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_slug(device_kind: str) -> str:
    """'NVIDIA H200' -> 'nvidia_h200' (file-name safe)."""
    slug = re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_")
    return slug or "unknown"


# ----------------------------------------------------------------------------------------------
# Steps: each (args, timeout_s, log_dir) -> result dict with "status"
# ----------------------------------------------------------------------------------------------

_PROBE = """
import json, jax
devices = jax.devices()
print("JSON:" + json.dumps({
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "platform_version": getattr(devices[0].client, "platform_version", ""),
}))
"""


def step_environment(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    run = run_command(
        [sys.executable, "-c", _PROBE],
        timeout_s=timeout_s,
        log_path=log_dir / "environment.log",
        prefix="environment",
    )
    result: dict[str, Any] = {"status": _status(run), "seconds": run["seconds"]}
    found = [ln for ln in run["output"].splitlines() if ln.startswith("JSON:")]
    if found:
        result.update(json.loads(found[-1][5:]))
    else:
        result["status"] = "failed"
        result["error"] = _tail(run["output"])
    result["versions"] = package_versions()
    result["python"] = sys.version.split()[0]
    result["cpu_count"] = os.cpu_count()
    result["missing_dependencies"] = missing_dependencies()
    if shutil.which("nvidia-smi"):
        smi = run_command(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            timeout_s=30,
            log_path=log_dir / "nvidia_smi.log",
            prefix="nvidia-smi",
        )
        result["nvidia_smi"] = smi["output"].strip()
    return result


def _compile_one(
    name: str,
    extra: list[str],
    label: str,
    timeout_s: float,
    tmp: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """benchmarks/compile.py for one config in its own process: {config label: entry}."""
    tag = device_slug(label)
    run = run_command(
        [
            sys.executable,
            "benchmarks/compile.py",
            "--configs",
            name,
            "--out",
            tmp,
            "--tag",
            tag,
            *extra,
        ],
        timeout_s=timeout_s,
        log_path=log_dir / f"compile.{tag}.log",
        prefix=f"compile {label}",
        env=env,
    )
    path = Path(tmp) / f"compile.{tag}.json"
    if path.is_file() and not run["timed_out"]:
        part = json.loads(path.read_text(encoding="utf-8"))
        entries = part.pop("configs")
        for value in entries.values():
            value["host_allocator"] = part.get("host_allocator")
            value["cpu_devices"] = part.get("cpu_devices")
        return {
            "header": part,
            "configs": {(label if key == name else key): value for key, value in entries.items()},
        }
    why = f"timed out after {run['seconds']:.0f} s" if run["timed_out"] else "failed"
    return {"configs": {label: {"error": f"{why}: {_tail(run['output'], 3)}"}}}


def step_compile(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    """Each config's steps compiled in a process with the process settings train.py runs it
    with (benchmarks/compile.py ``--process-settings train``: jaxnn.launch.configure_process,
    CPU settings on a CPU only); a config over budget (or cut off) is compiled once more
    without them (``--process-settings none``; on a CPU the host allocator is the suspect:
    issue #25), then on a GPU also without XLA's autotuning, to tell the suspects apart."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import compile as compile_bench  # benchmarks/compile.py (imports JAX, starts no backend)

    merged: dict[str, Any] = {"configs": {}}
    names = []
    for name, config, skipped in compile_bench.shipped_configs(
        list(compile_bench.QUICK_CONFIGS) if args.quick else None
    ):
        if config is None:
            merged["configs"][name] = {"skipped": skipped}
        else:
            names.append(name)
    deadline = time.perf_counter() + timeout_s
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            left = deadline - time.perf_counter()
            if left < 5:
                merged["configs"][name] = {"error": "not run: the step's time was spent"}
                continue
            part = _compile_one(
                name,
                ["--process-settings", "train"],
                name,
                min(left, args.compile_timeout_s),
                tmp,
                log_dir,
            )
            merged.setdefault("header", part.get("header"))
            merged["configs"].update(part["configs"])
        # then, with the time left, each config over budget (or cut off) once more without
        # its process settings
        for name in names:
            entry = merged["configs"].get(name, {})
            left = deadline - time.perf_counter()
            if args.quick or left < 20 or not ("error" in entry or entry.get("over_budget")):
                continue
            if entry.get("error", "").startswith("not run"):
                continue
            label = f"{name} [no process settings]"
            none = ["--process-settings", "none"]
            again = _compile_one(name, none, label, min(left, 60.0), tmp, log_dir)
            merged["configs"].update(again["configs"])
            # still slow on a GPU: is it XLA's autotuning of the matmul fusions?
            entry = again["configs"].get(label, {})
            left = deadline - time.perf_counter()
            backend = (args.environment or {}).get("backend")
            if backend == "gpu" and left >= 20 and ("error" in entry or entry.get("over_budget")):
                flags = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0").strip()
                label = f"{name} [no process settings, XLA autotuning off]"
                again = _compile_one(
                    name, none, label, min(left, 60.0), tmp, log_dir, env={"XLA_FLAGS": flags}
                )
                merged["configs"].update(again["configs"])
    header = merged.pop("header", None) or {}
    merged = {
        "backend": header.get("backend", "?"),
        "devices": header.get("devices", []),
        "jax_version": header.get("jax_version", "?"),
        "host_allocator": "per config, as train.py runs it",
        "process_settings": "train",
        "budget_s": header.get("budget_s", compile_bench.budget_s("gpu")),
        "configs": merged["configs"],
    }
    bad = [
        n
        for n, e in merged["configs"].items()
        if "[" not in n and ("error" in e or e.get("over_budget"))
    ]
    return {
        "status": "ok" if not bad else "failed",
        "over_budget_or_failed": bad,
        "results": merged,
        "markdown": compile_bench.markdown(merged),
        "compiled": sum(1 for n, e in merged["configs"].items() if "train" in e and "[" not in n),
    }


def step_tests(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    workers = "0" if importlib.util.find_spec("xdist") is None else str(os.cpu_count() or 1)
    paths = ["tests/nn/test_mlp.py"] if args.quick else ["tests"]
    command = [sys.executable, "-m", "pytest", *paths, "-m", "not slow", "-q", "-ra"]
    command += ["-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist") is not None:
        command += ["-n", "0" if args.quick else workers]
    run = run_command(
        command,
        timeout_s=timeout_s,
        log_path=log_dir / "tests.log",
        prefix="tests",
        env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        echo=False,  # a few hundred lines; the log has them, the summary comes below
    )
    summary = parse_pytest_summary(run["output"])
    print(f"  [tests] {summary['summary_line'] or _tail(run['output'], 3)}", flush=True)
    status = _status(run)
    if status == "failed" and summary["failed"] == 0 and summary["errors"] == 0:
        summary["error"] = _tail(run["output"])
    return {"status": status, "command": " ".join(command), "seconds": run["seconds"], **summary}


def step_end_to_end(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    config = QUICK_TRAIN_CONFIG if args.quick else TRAIN_CONFIG
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}"]
        run = run_command(
            command, timeout_s=timeout_s, log_path=log_dir / "end_to_end.log", prefix="train.py"
        )
        result: dict[str, Any] = {
            "status": _status(run),
            "config": config,
            "process_seconds": run["seconds"],
        }
        path = Path(workdir) / "results.json"
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            result["test_accuracy"] = saved["test"]["accuracy"]
            result["test_macro_f1"] = saved["test"]["macro_f1"]
            result["wall_time_s"] = saved.get("wall_time_s")
            result["best_epoch"] = saved.get("best_epoch")
        elif result["status"] == "ok":
            result["status"] = "failed"
        if result["status"] != "ok":
            result["error"] = _tail(run["output"])
    if not args.quick and "test_accuracy" in result:
        result["meets_target"] = bool(
            result["test_accuracy"] >= TARGET_TEST_ACCURACY
            and (result["wall_time_s"] or 1e9) <= TARGET_WALL_S
        )
    return result


def step_train_bench(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "benchmarks/train.py", "--out", out, "--epoch-corpus", ""]
        if args.quick:
            command += ["--quick", "--models", "bow", "--repeats", "1"]
        else:
            # bow is host-bound (issue #25): the accelerator's comparison is the transformers'
            command += ["--repeats", "3", "--models", "transformer", "transformer_gpu"]
        run = run_command(
            command, timeout_s=timeout_s, log_path=log_dir / "train_bench.log", prefix="train"
        )
        result: dict[str, Any] = {"status": _status(run), "seconds": run["seconds"]}
        md, js = Path(out) / "train.md", Path(out) / "train.json"
        if md.is_file():
            result["markdown"] = md.read_text(encoding="utf-8")
            result["results"] = json.loads(js.read_text(encoding="utf-8"))
        else:
            result["error"] = _tail(run["output"])
            if result["status"] == "ok":
                result["status"] = "failed"
    return result


def attention_command(help_text: str, *, quick: bool, backend: str, out: str) -> list[str]:
    """benchmarks/attention.py's arguments, using only the flags its ``--help`` lists (the
    script's options change; a flag it lacks is left out)."""
    has = lambda flag: re.search(rf"(^|[\s\[|,]){re.escape(flag)}\b", help_text) is not None
    command = [sys.executable, "benchmarks/attention.py"]
    if quick:
        command += ["--seq-lens", "128", "256"] if has("--seq-lens") else []
        command += ["--reps", "2"] if has("--reps") else []
        command += ["--no-torch"] if has("--no-torch") else []
    else:
        command += ["--quick"] if has("--quick") else []
        if backend != "cpu" and has("--dtypes"):
            command += ["--dtypes", "bfloat16"]
    if has("--out"):
        command += ["--out", out]
    if has("--tag"):
        command += ["--tag", "accelerator_check" + ("_quick" if quick else "")]
    return command


def step_attention(args, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    help_run = run_command(
        [sys.executable, "benchmarks/attention.py", "--help"],
        timeout_s=min(timeout_s, 60),
        log_path=log_dir / "attention_help.log",
        prefix="attention",
        echo=False,
    )
    if help_run["returncode"] != 0:
        return {"status": "failed", "error": _tail(help_run["output"])}
    backend = (args.environment or {}).get("backend", "cpu")
    with tempfile.TemporaryDirectory() as out:
        command = attention_command(help_run["output"], quick=args.quick, backend=backend, out=out)
        run = run_command(
            command,
            timeout_s=timeout_s - help_run["seconds"],
            log_path=log_dir / "attention.log",
            prefix="attention",
        )
        result: dict[str, Any] = {"status": _status(run), "command": " ".join(command[1:])}
        # the report: in --out when the script takes it, else where it writes by default
        tag = command[command.index("--tag") + 1] if "--tag" in command else None
        stem = "attention" + (f".{tag}" if tag else "")
        for folder in (Path(out), RESULTS):
            if (folder / f"{stem}.md").is_file() and (folder / f"{stem}.json").is_file():
                result["markdown"] = (folder / f"{stem}.md").read_text(encoding="utf-8")
                result["results"] = json.loads((folder / f"{stem}.json").read_text("utf-8"))
                # its files go where the check's report goes (they were written under a tag
                # of this check's own, so moving them takes nothing of anyone else's)
                args.out_dir.mkdir(parents=True, exist_ok=True)
                for suffix in (".md", ".json", ".png"):
                    source = folder / f"{stem}{suffix}"
                    if source.is_file() and source.parent.resolve() != args.out_dir.resolve():
                        shutil.move(str(source), args.out_dir / source.name)
                result["report_path"] = str(args.out_dir / f"{stem}.md")
                break
        if result["status"] != "ok" or "markdown" not in result:
            result["error"] = _tail(run["output"])
            result["status"] = "failed" if result["status"] == "ok" else result["status"]
    return result


STEPS: dict[str, tuple[Callable, float]] = {  # name: (function, timeout s on an accelerator)
    "environment": (step_environment, 60),
    "compile": (step_compile, 180),
    "tests": (step_tests, 120),
    "end_to_end": (step_end_to_end, 130),
    "train_bench": (step_train_bench, 150),
    "attention": (step_attention, 100),
}
QUICK_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = "") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The check's report as Markdown: one summary table, then each step's details."""
    env = report["steps"].get("environment", {})
    lines = [
        f"# Accelerator check: {env.get('device_kind', 'unknown device')}"
        + (" (--quick)" if report.get("quick") else ""),
        "",
        f"{report['started']} UTC, {report['total_s']:.0f} s of wall "
        f"(budget {report['budget_s']:.0f} s). Command: `{report['command']}`.",
        "",
        f"- backend {env.get('backend', '?')}, {env.get('device_count', '?')} x "
        f"{env.get('device_kind', '?')}; {env.get('cpu_count', '?')} CPUs; "
        f"Python {env.get('python', '?')}",
    ]
    if env.get("nvidia_smi"):
        lines.append(
            f"- nvidia-smi (name, driver, memory, compute capability): {env['nvidia_smi']}"
        )
    if env.get("platform_version"):
        lines.append(f"- platform: {env['platform_version']}")
    versions = env.get("versions") or {}
    lines.append("- " + ", ".join(f"{k} {v or 'missing'}" for k, v in versions.items()))
    missing = env.get("missing_dependencies") or []
    lines.append(
        "- missing pure-Python dependencies: " + (", ".join(missing) if missing else "none")
    )
    lines += ["", "| step | status | seconds | result |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        lines.append(
            f"| {name} | {step.get('status', '?')} | {_fmt(step.get('step_seconds'), '.0f')} | "
            f"{summarize(name, step)} |"
        )
    for name, step in report["steps"].items():
        body = []
        if step.get("markdown"):
            body.append(_demote(step["markdown"]))
        if name == "tests" and step.get("failed_ids"):
            body += ["Failing tests:", "", *[f"- `{t}`" for t in step["failed_ids"]]]
        if step.get("error"):
            body += ["```", step["error"], "```"]
        if body:
            lines += ["", f"## {name}", "", *body]
    return "\n".join(lines).rstrip() + "\n"


def _demote(text: str) -> str:
    """A sub-report's headings two levels down (below the check's "## step")."""
    return re.sub(r"^(#+) ", r"##\1 ", text.strip(), flags=re.M)


def summarize(name: str, step: dict[str, Any]) -> str:
    """One table cell for a step."""
    if step.get("status") == "skipped":
        return step.get("reason", "")
    if name == "environment":
        return f"{step.get('backend', '?')}: {step.get('device_kind', '?')}"
    if name == "tests":
        return (
            f"{step.get('passed', 0)} passed, {step.get('failed', 0)} failed, "
            f"{step.get('errors', 0)} errors, {step.get('skipped', 0)} skipped"
        )
    if name == "compile":
        bad = step.get("over_budget_or_failed") or []
        return f"{step.get('compiled', 0)} configs compiled; over budget or failed: " + (
            ", ".join(bad) if bad else "none"
        )
    if name == "end_to_end":
        if "test_accuracy" not in step:
            return step.get("config", "")
        target = (
            ""
            if "meets_target" not in step
            else (
                f"; target (>= {TARGET_TEST_ACCURACY}, <= {TARGET_WALL_S:.0f} s) "
                + ("met" if step["meets_target"] else "**not met**")
            )
        )
        return (
            f"{step['config']}: test accuracy {step['test_accuracy']:.4f}, "
            f"wall {_fmt(step.get('wall_time_s'), '.1f')} s{target}"
        )
    if name == "train_bench":
        models = (step.get("results") or {}).get("models", {})
        cells = []
        for model, r in models.items():
            ratio = r.get("jax_over_torch_tokens")
            cells.append(
                f"{model}: MFU {r['mfu_vs_matmul']:.1%}"
                + (f", {ratio:.2f}x PyTorch" if ratio else "")
            )
        return "; ".join(cells)
    if name == "attention":
        rows = (step.get("results") or {}).get("results", [])
        ok = sum(1 for r in rows if r.get("status") == "ok")
        return f"{ok} of {len(rows)} runs measured"
    return ""


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``stem``.json and ``stem``.md into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset, on the CPU too")
    parser.add_argument("--out", default=None, help="report folder (default runs/benchmarks)")
    parser.add_argument(
        "--commit-results", action="store_true", help="write the report into benchmarks/results"
    )
    parser.add_argument("--log-dir", default=str(DEFAULT_LOGS), help="each step's full output")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole check's wall")
    parser.add_argument(
        "--compile-timeout-s", type=float, default=60.0, help="one config's compile process"
    )
    parser.add_argument(
        "--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="steps to run"
    )
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s={args.budget_s}; allowed: seconds > 0")
    out = Path(args.out) if args.out else (RESULTS if args.commit_results else DEFAULT_QUICK_OUT)
    args.out_dir = out
    log_dir = Path(args.log_dir)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": "python benchmarks/accelerator_check.py " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "steps": {},
    }
    args.environment = None
    steps = ["environment", *[s for s in args.steps if s != "environment"]]
    for name in steps:
        function, timeout_s = STEPS[name]
        left = args.budget_s - (time.perf_counter() - started)
        if args.quick:
            timeout_s = QUICK_TIMEOUT_S
        timeout_s = min(timeout_s, left)
        if timeout_s < 10:
            report["steps"][name] = {"status": "skipped", "reason": "the check's budget is spent"}
            print(f"[{name}] skipped: the check's budget is spent", flush=True)
            continue
        print(f"[{name}] (at most {timeout_s:.0f} s) ...", flush=True)
        step_start = time.perf_counter()
        try:
            result = function(args, timeout_s, log_dir)
        except Exception as error:  # a broken step is recorded; the others still run
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        result["step_seconds"] = time.perf_counter() - step_start
        report["steps"][name] = result
        if name == "environment":
            args.environment = result
            missing = result.get("missing_dependencies")
            if missing:
                print(f"missing pure-Python dependencies: {', '.join(missing)}", flush=True)
        print(
            f"[{name}] {result['status']} in {result['step_seconds']:.0f} s: "
            f"{summarize(name, result)}",
            flush=True,
        )
    report["total_s"] = time.perf_counter() - started
    env = report["steps"]["environment"]
    stem = "accelerator_check." + device_slug(env.get("device_kind", "unknown"))
    stem += ".quick" if args.quick else ""
    json_path, md_path = write_report(report, out, stem)
    print(f"wrote {md_path} and {json_path.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
