"""Compile time of every shipped config's train and eval step on the current backend.

    python benchmarks/compile.py [--configs imdb_transformer.py ...] [--quick]
                                 [--out DIR] [--commit-results] [--tag NAME]

For each config in configs/ that trains a model (tuner and bias-variance sweep configs are
listed as skipped: their trials run the ordinary step of the model their own config names),
the model, the optimizer and the jitted steps are built as train.py builds them
(`jaxnn.train` `build_steps`), on abstract inputs (`jax.ShapeDtypeStruct`s with the steps'
shardings: no parameter is initialised, no data loaded) of the config's shapes:

    train step: state, batch of train.batch_size x data.max_len (the largest length bucket)
    eval step:  variables, sums, batch of train.eval_batch_size x data.max_len

and each is timed as ``jax.jit(...).lower(...)`` (tracing + StableHLO) and then
``.compile()`` (XLA), separately. The vocabulary size is the config's ``max_vocab_size``, or
`DEFAULT_VOCAB` where it has none (the table's rows change the parameter shapes, not the
program). Also recorded: the optimized HLO's instruction count and while loops (a program that
grows with a Python-unrolled loop shows it there).

Each config is compiled in a process set up as train.py runs it (``--process-settings train``,
the default): a fresh Python process per config that calls `jaxnn.launch.configure_process`
before JAX's first computation, with `process_defaults` (the transformer configs: the CPU recipe
of train.py's docstring, ``--cpu_devices=cores --host_allocator=keep``; the others: train.py's
defaults). On a GPU or TPU no CPU setting is applied. $JAXNN_HOST_ALLOCATOR, $JAXNN_CPU_DEVICES
and $JAXNN_CPU_VECTOR_WIDTH, when set, override them, as they do for train.py.
``--process-settings none`` compiles every config in this one process, as it is.

Budget per step (issue #25): `BUDGET_S` seconds by backend; a step above it is flagged.
Writes compile[.TAG].json and .md into runs/benchmarks/ (``--out``), or into
benchmarks/results/ with ``--commit-results``. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# --- every use of jaxnn in this script goes through these imports -----------------------------
from jaxnn.launch import configure_process  # noqa: E402
from jaxnn.launch.cpu_devices import cpu_devices  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402
from jaxnn.models import compute_dtype, get_model  # noqa: E402
from jaxnn.train.config import config_from_file, config_to_dict, validate_config  # noqa: E402
from jaxnn.train.distributed import batch_sharding, make_mesh, replicated  # noqa: E402
from jaxnn.train.step import zero_eval_metrics  # noqa: E402
from jaxnn.train.trainer import build_steps  # noqa: E402

# ------------------------------------------------------------------------------------------------

CONFIGS = ROOT / "configs"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = ROOT / "runs" / "benchmarks"
BUDGET_S = {"cpu": 20.0, "gpu": 15.0, "tpu": 15.0}  # per step, issue #25
DEFAULT_VOCAB = 50_000  # IMDB's vocabulary at min_freq 2 is of this order
NUM_CLASSES = {"imdb": 2, "bbc_news": 5}
QUICK_CONFIGS = ("tiny.py",)
# --variants: the same config with one choice changed each, to find what a compile time comes
# from (dotted config keys; "xla" is the attention "auto" picks on a GPU for float32)
VARIANTS = {
    "attention xla": {"model.attention_impl": "xla"},
    "attention xla, no dropout": {"model.attention_impl": "xla", "model.dropout": 0.0},
    "attention xla, dense embeddings": {
        "model.attention_impl": "xla",
        "optim.sparse_embeddings": False,
    },
    "attention xla, no grad clip": {"model.attention_impl": "xla", "optim.grad_clip_norm": 0.0},
    "bfloat16": {"model.dtype": "bfloat16"},
    "bfloat16, attention xla": {"model.dtype": "bfloat16", "model.attention_impl": "xla"},
}
# configs that are not one training run: their keys beyond the run schema say so
NOT_A_RUN = ("tune", "analysis", "sweep")
# train.py's CPU recipe for the transformer (its docstring): --cpu_devices=cores
# --host_allocator=keep; benchmarks/train.py's PROCESS_DEFAULTS runs its transformers so too
TRANSFORMER_CPU_RECIPE = {"cpu_devices": "cores", "host_allocator": "keep"}


def process_defaults(config: Any) -> dict[str, str]:
    """The process settings train.py runs ``config`` with on a CPU (`configure_process`'s
    ``defaults``): `TRANSFORMER_CPU_RECIPE` for a transformer, else none (train.py's
    defaults)."""
    return dict(TRANSFORMER_CPU_RECIPE) if config["model"]["name"] == "transformer" else {}


def apply_process_settings(config: Any) -> dict[str, Any]:
    """``config``'s process settings (`process_defaults`) applied to this process, before
    JAX's first computation; nothing on a GPU or TPU. Returns `ProcessSettings.as_dict`."""
    train = config["train"]
    return configure_process(
        batch_sizes=(train["batch_size"], train["eval_batch_size"]),
        defaults=process_defaults(config),
    ).as_dict()


def budget_s(backend: str | None = None) -> float:
    """Seconds one step may take to compile on ``backend`` (default: JAX's)."""
    return BUDGET_S.get(backend or jax.default_backend(), BUDGET_S["gpu"])


def shipped_configs(
    names: list[str] | None = None, configs_dir: Path = CONFIGS
) -> list[tuple[str, Any, str]]:
    """[(file name, validated config or None, reason skipped or '')] for configs/*.py (or
    ``names`` of it), sorted by name."""
    paths = [configs_dir / n for n in names] if names else sorted(configs_dir.glob("[!_]*.py"))
    found = []
    for path in paths:
        config = config_from_file(path)
        extra = [k for k in NOT_A_RUN if k in config]
        if extra:
            found.append((path.name, None, f"not a training run (has config.{extra[0]})"))
            continue
        found.append((path.name, validate_config(config), ""))
    return found


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A validated copy of ``config`` with dotted keys ("model.dropout") set."""
    config = config_to_dict(validate_config(config))  # a plain nested dict
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return validate_config(config)


def _abstract(tree: Any, shardings: Any) -> Any:
    """``tree``'s arrays as ShapeDtypeStructs with the matching leaf of ``shardings`` (a tree
    of the same arrays' shardings, or one sharding for all)."""
    leaves, treedef = jax.tree.flatten(tree)
    if isinstance(shardings, jax.sharding.Sharding):
        placed = [shardings] * len(leaves)
    else:
        placed = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(placed) != len(leaves):
        raise ValueError(f"{len(leaves)} arrays but {len(placed)} shardings")
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, placed)]
    return jax.tree.unflatten(treedef, specs)


def _batch(batch_size: int, length: int, sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return {
        "tokens": spec((batch_size, length), jnp.int32),
        "mask": spec((batch_size, length), jnp.bool_),
        "labels": spec((batch_size,), jnp.int32),
        "weights": spec((batch_size,), jnp.float32),
    }


_COMMENT = re.compile(r"/\*.*?\*/")  # /*index=5*/ inside tuple shapes
_OP = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+\s*=\s*[^=]*?\s([a-z][\w\-]*)\(", re.M)


def hlo_summary(compiled: Any) -> dict[str, Any]:
    """Instruction count, while loops and the five commonest ops of a compiled program's
    optimized HLO (all its computations)."""
    try:
        text = compiled.as_text()
    except Exception as error:  # some backends do not expose it
        return {"error": f"{type(error).__name__}: {error}"}
    ops = [m.group(2) for m in _OP.finditer(_COMMENT.sub("", text))]
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    top = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    return {"instructions": len(ops), "while_loops": counts.get("while", 0), "top_ops": top}


def time_compile(jitted: Any, *args: Any) -> dict[str, Any]:
    """{"lower_s", "compile_s", "total_s", "cpu_s", "hlo"} of ``jitted.lower(*args).compile()``
    (wall seconds, and the process's CPU seconds of the two together)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done, cpu_done = time.perf_counter(), time.process_time()
    return {
        "lower_s": lowered_at - start,
        "compile_s": done - lowered_at,
        "total_s": done - start,
        # CPU seconds of this process (all threads) for lower + compile: on a loaded machine
        # the wall time grows with the load, this much less
        "cpu_s": cpu_done - cpu_start,
        "hlo": hlo_summary(compiled),
    }


def dtype_label(name: str) -> str:
    """``model.dtype`` as the table shows it: "auto" with what it is on this backend."""
    if name != "auto":
        return name
    return f"auto: {jnp.dtype(compute_dtype(name) or jnp.float32).name}"


def compile_config(
    config: Any, *, vocab_size: int | None = None, num_classes: int | None = None, mesh=None
) -> dict[str, Any]:
    """Lower + compile times of one validated config's train and eval step (module docstring).

    Returns {"shapes": {...}, "train": time_compile(...), "eval": time_compile(...)}."""
    mesh = make_mesh() if mesh is None else mesh
    data, train = config["data"], config["train"]
    vocab_size = vocab_size or data["max_vocab_size"] or DEFAULT_VOCAB
    corpus = str(data["corpus"])
    num_classes = num_classes or NUM_CLASSES.get(corpus, 2)
    length = int(data["max_len"])
    model = get_model(config, vocab_size=vocab_size, num_classes=num_classes)
    steps = build_steps(config, model, num_classes, total_steps=10_000, mesh=mesh)
    state = _abstract(jax.eval_shape(lambda: steps.init(length)), steps.state_sharding)
    bat = batch_sharding(mesh)
    result = {
        "shapes": {
            "train_batch": [train["batch_size"], length],
            "eval_batch": [train["eval_batch_size"], length],
            "vocab_size": vocab_size,
            "num_classes": num_classes,
            "model": config["model"]["name"],
            "dtype": dtype_label(config["model"]["dtype"]),
            "devices": int(mesh.size),
        },
        "train": time_compile(steps.train_step, state, _batch(train["batch_size"], length, bat)),
    }
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    rep = replicated(mesh)
    sums = _abstract(jax.eval_shape(lambda: zero_eval_metrics(num_classes)), rep)
    eval_batch = _batch(train["eval_batch_size"], length, bat)
    result["eval"] = time_compile(steps.eval_step, variables, sums, eval_batch)
    return result


def run(
    names: list[str] | None = None,
    *,
    quick: bool = False,
    variants: bool = False,
    only_variant: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Compile every shipped config (``names``, or `QUICK_CONFIGS` with ``quick``), and with
    ``variants`` each one's `VARIANTS` too; a config that fails is recorded with its error.
    Returns the results dict `write_report` takes."""
    backend = jax.default_backend()
    budget = budget_s(backend)
    results: dict[str, Any] = {
        "backend": backend,
        "devices": [str(d.device_kind) for d in jax.devices()],
        "machine": f"{platform.processor() or platform.machine()}",
        "jax_version": jax.__version__,
        "host_allocator": host_allocator()["mode"],
        "cpu_devices": cpu_devices()["devices"] if backend == "cpu" else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "budget_s": budget,
        "configs": {},
    }
    todo = []
    for name, config, skipped in shipped_configs(names or (list(QUICK_CONFIGS) if quick else None)):
        if only_variant and config is not None:
            overrides = VARIANTS[only_variant]
            todo.append((f"{name} [{only_variant}]", with_overrides(config, overrides), ""))
            continue
        todo.append((name, config, skipped))
        if variants and config is not None:
            for label, overrides in VARIANTS.items():
                todo.append((f"{name} [{label}]", with_overrides(config, overrides), ""))
    for name, config, skipped in todo:
        if config is None:
            results["configs"][name] = {"skipped": skipped}
            log(f"[compile] {name}: skipped ({skipped})")
            continue
        log(f"[compile] {name} ...")
        try:
            entry = compile_config(config)
        except Exception as error:  # recorded, the others still run
            entry = {"error": f"{type(error).__name__}: {error}"[:2000]}
            log(f"[compile] {name}: FAILED {entry['error'][:300]}")
            results["configs"][name] = entry
            continue
        entry["over_budget"] = [s for s in ("train", "eval") if entry[s]["total_s"] > budget]
        results["configs"][name] = entry
        log(
            f"[compile] {name}: train {entry['train']['lower_s']:.2f} + "
            f"{entry['train']['compile_s']:.2f} s, eval {entry['eval']['lower_s']:.2f} + "
            f"{entry['eval']['compile_s']:.2f} s"
            + (
                f"  OVER BUDGET ({budget:.0f} s): {entry['over_budget']}"
                if entry["over_budget"]
                else ""
            )
        )
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def process_label(entry: dict[str, Any]) -> str:
    """The process settings a config was compiled under, as its entry records them, for its
    row's label: e.g. " (allocator keep, 2 CPU devices)"; '' where it records none."""
    parts = []
    if entry.get("host_allocator"):
        parts.append(f"allocator {entry['host_allocator']}")
    if entry.get("cpu_devices"):
        n = entry["cpu_devices"]
        parts.append(f"{n} CPU device{'s' if n != 1 else ''}")
    return f" ({', '.join(parts)})" if parts else ""


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per config)."""
    budget = results["budget_s"]
    lines = [
        "# Compile time per shipped config (benchmarks/compile.py)",
        "",
        f"Backend {results['backend']} ({', '.join(sorted(set(results['devices'])))}), "
        f"jax {results['jax_version']}. Process settings: "
        + (
            "each config in its own process, as train.py runs it (jaxnn.launch; on a CPU the "
            "transformers with --cpu_devices=cores --host_allocator=keep); "
            if results.get("process_settings") == "train"
            else f"none (one process, host allocator {results.get('host_allocator', '?')}); "
        )
        + f"Budget: {budget:.0f} s per step (lower + compile)."
        + (
            f" Load average {results['load_average']} on {results['cpu_count']} CPUs at the "
            "start (wall times grow with the load; CPU seconds much less)."
            if results.get("load_average")
            else ""
        ),
        "",
        "| config | model | train B x T | train lower s | train compile s | train CPU s | "
        "eval B x T | eval lower s | eval compile s | train HLO ops / whiles | within budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["configs"].items():
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or "error: " + " ".join(r["error"].split())[:160]
            lines.append(f"| {name} | {why} |  |  |  |  |  |  |  |  |  |")
            continue
        t, e, s = r["train"], r["eval"], r["shapes"]
        hlo = t["hlo"]
        ops = f"{hlo['instructions']} / {hlo['while_loops']}" if "instructions" in hlo else "n/a"
        ok = "yes" if not r["over_budget"] else "**no: " + ", ".join(r["over_budget"]) + "**"
        label = name + process_label(r)
        lines.append(
            f"| {label} | {s['model']} ({s['dtype']}) | {s['train_batch'][0]} x "
            f"{s['train_batch'][1]} | {t['lower_s']:.2f} | {t['compile_s']:.2f} | "
            f"{_fmt(t.get('cpu_s'))} | "
            f"{s['eval_batch'][0]} x {s['eval_batch'][1]} | {e['lower_s']:.2f} | "
            f"{e['compile_s']:.2f} | {ops} | {ok} |"
        )
    lines += [
        "",
        "Abstract inputs of the config's shapes at its largest length bucket (data.max_len); "
        "a fresh process compiles each step once, as train.py does on its first batch.",
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: Path, tag: str = "") -> tuple[Path, Path]:
    """Write compile[.tag].json and .md into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "compile" + (f".{tag}" if tag else "")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(results), encoding="utf-8")
    return json_path, md_path


def compile_in_subprocess(
    name: str, args: argparse.Namespace, tmp: str, log=print
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Config ``name`` (and its variants, as ``args`` asks) compiled by this script in a fresh
    process with the config's process settings: (that run's header or None, {label: entry}),
    each entry with the host allocator and CPU devices it ran under."""
    tag = re.sub(r"[^\w.-]", "_", name)
    command = [sys.executable, __file__, "--configs", name, "--out", tmp, "--tag", tag]
    command += ["--process-settings", "train"]
    command += ["--variants"] if args.variants else []
    command += ["--variant", args.variant] if args.variant else []
    run = subprocess.run(command, capture_output=True, text=True)
    for line in run.stdout.splitlines():
        if line.startswith("[compile]"):
            log(line)
    path = Path(tmp) / f"compile.{tag}.json"
    if run.returncode != 0 or not path.is_file():
        tail = " ".join((run.stderr or run.stdout).strip().splitlines()[-3:])
        return None, {name: {"error": f"exit code {run.returncode}: {tail}"[:2000]}}
    part = json.loads(path.read_text(encoding="utf-8"))
    entries = part.pop("configs")
    for entry in entries.values():
        if "train" in entry:
            entry["host_allocator"] = part.get("host_allocator")
            entry["cpu_devices"] = part.get("cpu_devices")
    return part, entries


def run_per_process(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """`run`'s results, each config compiled by `compile_in_subprocess` (this process starts
    no JAX backend)."""
    names = args.configs or (list(QUICK_CONFIGS) if args.quick else None)
    header: dict[str, Any] | None = None
    configs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, skipped in shipped_configs(names):
            if config is None:
                configs[name] = {"skipped": skipped}
                log(f"[compile] {name}: skipped ({skipped})")
                continue
            part, entries = compile_in_subprocess(name, args, tmp, log)
            header = header or part
            configs.update(entries)
    header = dict(header or {"backend": "?", "devices": [], "jax_version": jax.__version__})
    header.setdefault("budget_s", budget_s(header.get("backend", "gpu")))
    header["host_allocator"] = "per config"
    header["cpu_devices"] = None
    header["configs"] = configs
    return header


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, help="file names in configs/")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_CONFIGS)}")
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--commit-results", action="store_true", help="write to benchmarks/results")
    parser.add_argument("--tag", default="", help="compile.TAG.json / .md")
    parser.add_argument(
        "--variants", action="store_true", help="also each config with each of VARIANTS"
    )
    parser.add_argument(
        "--variant", choices=list(VARIANTS), default=None, help="only this variant of each config"
    )
    parser.add_argument(
        "--process-settings",
        choices=("train", "none"),
        default="train",
        help="train (default): each config in its own process with the process settings "
        "train.py runs it with on a CPU (jaxnn.launch; the transformers: cpu_devices=cores, "
        "host_allocator=keep); none: every config in this process, as it is",
    )
    args = parser.parse_args(argv)
    if args.configs:
        missing = [n for n in args.configs if not (CONFIGS / n).is_file()]
        if missing:
            parser.error(f"--configs {missing}: no such file in {CONFIGS}")
    out = Path(args.out) if args.out else (RESULTS if args.commit_results else DEFAULT_OUT)
    names = args.configs or (list(QUICK_CONFIGS) if args.quick else None)
    runs = [c for _, c, _ in shipped_configs(names) if c is not None]
    if args.process_settings == "train" and len(runs) == 1:
        # the one config's settings, process-wide, before JAX's first computation
        settings = apply_process_settings(runs[0])
        results = run(names, variants=args.variants, only_variant=args.variant)
        results["process"] = settings
    elif args.process_settings == "train":
        results = run_per_process(args)
    else:
        results = run(names, variants=args.variants, only_variant=args.variant)
    results["process_settings"] = args.process_settings
    _, md_path = write_report(results, out, args.tag)
    print(md_path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
