"""Mutation check: does the fast suite catch small, meaningful breaks of jaxnn?

Each mutation is one textual patch (file, old text, new text) of the kind a real regression
looks like: a swapped model, a dropped norm, the last epoch evaluated instead of the best,
statistics in the input dtype, a cache option ignored, weight decay skipped, an off-by-one
padding mask, a dropped attention scale, sample instead of population variance, ... The patch
is applied to a COPY of the project in a temporary directory (the working tree is never
touched), and the fast tests named for it (``-m "not slow"``; ``--full`` runs the whole fast
suite instead) run against that copy. A mutation is

  caught          the tests fail (pytest exit code 1, or 2 for a collection error)
  missed          the tests pass: no fast test notices the break
  not applicable  the old text is not in the file exactly once (the code moved or changed:
                  update the patch), or the file is gone
  error           pytest could not run (exit codes 3, 4, 5: internal error, usage, no tests)

Before the mutations, the union of the named tests runs once on an unmutated copy
(``--no-baseline`` skips it): a red baseline makes every "caught" meaningless, so it aborts.

Usage:
  python benchmarks/mutation.py                       # all mutations, their own test subsets
  python benchmarks/mutation.py --only drop-final-norm evaluate-last-epoch
  python benchmarks/mutation.py --list                # names, claims, whether each applies
  python benchmarks/mutation.py --full                # the whole fast suite per mutation
  python benchmarks/mutation.py --commit-results      # also benchmarks/results/mutation.{json,md}
  python benchmarks/mutation.py --only skip-weight-decay --update-results
      # re-run a few after a change to their files: their rows of benchmarks/results/mutation.*
      # are replaced and a note says when, at which commit, and by which command

Results go to runs/benchmarks/mutation/ (JSON + Markdown) by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "results", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "*.egg-info", "build", "dist",
)  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    """One patch: replace ``old`` (which must occur exactly once in ``file``) by ``new``.

    ``tests`` are the pytest paths (files or node ids) that should catch it; ``claim`` is the
    property the mutation breaks, in words. ``also``: more (file, old, new) patches applied
    with the first, for one break that spans several files (every attention kernel, say);
    each old text must occur exactly once in its file, too.
    """

    name: str
    claim: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    also: tuple[tuple[str, str, str], ...] = ()

    def patches(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.file, self.old, self.new), *self.also)

    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(file for file, _, _ in self.patches()))


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "swap-model",
        "get_model builds the model the config names",
        "jaxnn/models/registry.py",
        '    spec = resolve(model["name"])\n    return spec.build(',
        '    spec = resolve("bow" if model["name"] == "transformer" else model["name"])\n'
        "    return spec.build(",
        ("tests/models", "tests/train/test_config.py", "tests/train/test_precision_policy.py"),
    ),
    Mutation(
        "drop-final-norm",
        "the transformer normalizes the last block's output before pooling",
        "jaxnn/models/transformer.py",
        "        x = apply_norm(self.final_norm, x, mask=mask, train=train)\n",
        "",
        ("tests/models",),
    ),
    Mutation(
        "drop-position-embeddings",
        "the transformer adds position embeddings to the token embeddings",
        "jaxnn/models/transformer.py",
        "        x = x + self.position_embed(jnp.arange(length))[None]",
        "        x = x + 0.0 * self.position_embed(jnp.arange(length))[None]",
        ("tests/models",),
    ),
    Mutation(
        "evaluate-last-epoch",
        "the test split is evaluated with the best checkpoint's parameters",
        "jaxnn/train/loop.py",
        "    variables = best_variables(result, workdir)\n",
        "    variables = result.state.variables()\n",
        ("tests/train/test_best_checkpoint.py", "tests/train/test_loop.py"),
    ),
    Mutation(
        "resume-restarts-the-epoch",
        "a run killed mid-epoch resumes at the checkpointed batch, bitwise",
        "jaxnn/train/loop.py",
        '                start=run.meta["batch_in_epoch"],',
        "                start=0,",
        ("tests/train/test_resume_mid_epoch.py", "tests/train/test_loop.py"),
    ),
    Mutation(
        "softmax-statistics-in-input-dtype",
        "softmax keeps its max and sum in float32 for half-precision inputs",
        "jaxnn/ops/softmax.py",
        "    x = x.astype(_compute_dtype(x.dtype))\n    if where is None:",
        "    if where is None:",
        ("tests/ops/test_softmax.py",),
    ),
    Mutation(
        "attention-scores-in-input-dtype",
        "attention scores and their softmax are float32 for half-precision q, k, v "
        '(kernels "reference" and "chunked")',
        "jaxnn/ops/attention/reference.py",
        "    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))\n",
        "    qf, kf, vf = q, k, v\n",
        (
            "tests/ops/test_attention.py",
            "tests/nn/test_attention.py",
            "tests/train/test_precision_policy.py",
        ),
        also=(
            (
                "jaxnn/ops/attention/reference.py",
                "logits + jnp.asarray(bias).astype(jnp.float32)",
                "logits + jnp.asarray(bias).astype(logits.dtype)",
            ),
            # the blocked kernel: its inputs, and so its block logits, in q's dtype
            (
                "jaxnn/ops/attention/chunked.py",
                "    q_t = _pad_axis(jnp.swapaxes(q.astype(jnp.float32) * scale, 1, 2)",
                "    q_t = _pad_axis(jnp.swapaxes(q * scale, 1, 2)",
            ),
            (
                "jaxnn/ops/attention/chunked.py",
                "    k_t = _pad_axis(jnp.swapaxes(k.astype(jnp.float32), 1, 2)",
                "    k_t = _pad_axis(jnp.swapaxes(k, 1, 2)",
            ),
            (
                "jaxnn/ops/attention/chunked.py",
                "    v_t = _pad_axis(jnp.swapaxes(v.astype(jnp.float32), 1, 2)",
                "    v_t = _pad_axis(jnp.swapaxes(v, 1, 2)",
            ),
            (
                "jaxnn/ops/attention/chunked.py",
                '    s = jnp.einsum("bnqh,bnhk->bnqk", q_blk, kt_blk, '
                "preferred_element_type=jnp.float32)",
                '    s = jnp.einsum("bnqh,bnhk->bnqk", q_blk, kt_blk, '
                "preferred_element_type=q_blk.dtype)",
            ),
        ),
    ),
    Mutation(
        "norm-statistics-in-input-dtype",
        "layer/RMS/batch norm statistics are float32 for half-precision inputs",
        "jaxnn/ops/normalization.py",
        "    return jnp.promote_types(dtype, jnp.float32)\n\n\ndef _check_min_rank",
        "    return jnp.dtype(dtype)\n\n\ndef _check_min_rank",
        ("tests/ops/test_normalization.py", "tests/train/test_precision_policy.py"),
    ),
    Mutation(
        "sample-variance-in-layer-norm",
        "layer norm divides by the population variance (mean over F), not the sample one",
        "jaxnn/ops/normalization.py",
        "    var = jnp.mean(centred * centred, axis=-1, keepdims=True)\n    y = centred",
        "    var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (x.shape[-1] - 1)\n"
        "    y = centred",
        ("tests/ops/test_normalization.py", "tests/models/test_transformer_reference.py"),
    ),
    Mutation(
        "drop-attention-scale",
        'attention scores are divided by sqrt(head_dim) (kernels "reference" and "chunked")',
        "jaxnn/ops/attention/reference.py",
        "    scale = 1.0 / math.sqrt(head_dim)\n    qf, kf, vf",
        "    scale = 1.0\n    qf, kf, vf",
        ("tests/ops/test_attention.py", "tests/models/test_transformer_reference.py"),
        also=(
            (
                "jaxnn/ops/attention/chunked.py",
                "    scale = 1.0 / math.sqrt(head_dim)\n    # One transposition",
                "    scale = 1.0\n    # One transposition",
            ),
        ),
    ),
    Mutation(
        "padding-mask-off-by-one",
        "a batch's mask marks exactly the first `length` tokens of each row",
        "jaxnn/data/batches.py",
        '"mask": np.arange(length) < row_lengths[:, None],',
        '"mask": np.arange(length) <= row_lengths[:, None],',
        ("tests/data/test_batches.py",),
    ),
    Mutation(
        "mean-pool-counts-padding",
        "mean pooling divides by the number of real tokens",
        "jaxnn/ops/pooling.py",
        "    count = jnp.sum(mask, axis=1, dtype=acc)[:, None]",
        "    count = jnp.full((x.shape[0], 1), x.shape[1], acc)",
        ("tests/ops/test_pooling.py", "tests/models/test_transformer_reference.py"),
    ),
    Mutation(
        "skip-weight-decay",
        "decoupled weight decay is applied by the optimizer",
        "jaxnn/train/optim.py",
        "        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))",
        "        pass",
        ("tests/train/test_optim.py",),
    ),
    Mutation(
        "ignore-a-corpus-option-in-the-cache",
        "any change of a file corpus's reading options misses the prepare cache",
        "jaxnn/data/corpora.py",
        '    return {"corpus": str(path), "files": digest, "options": _jsonable(resolved)}',
        '    return {"corpus": str(path), "files": digest, "options": {}}',
        ("tests/data/test_prepare.py", "tests/data/test_corpora.py"),
    ),
    Mutation(
        "ignore-min-freq-in-the-cache",
        "a different min_freq misses the prepare cache",
        "jaxnn/data/prepare.py",
        '        "min_freq": min_freq,\n        "max_size": max_size,\n    }',
        '        "max_size": max_size,\n    }',
        ("tests/data/test_prepare.py",),
    ),
    Mutation(
        "bf16-dense-layers-in-f32",
        "with model.dtype=bfloat16 the feed-forward matmuls run in bfloat16",
        "jaxnn/nn/mlp.py",
        "nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32",
        "nn.Dense(width, dtype=None, param_dtype=jnp.float32",
        ("tests/nn/test_mlp.py", "tests/train/test_precision_policy.py"),
    ),
    Mutation(
        "sparse-adam-without-bias-correction",
        "lazy (sparse) Adam corrects the moments' bias as optax and torch.optim.SparseAdam do",
        "jaxnn/train/sparse.py",
        "        correction1 = 1 - b1**count  # as optax computes them",
        "        correction1 = 1.0 + 0 * count  # as optax computes them",
        ("tests/train/test_sparse.py",),
    ),
)


def applicability(root: Path, mutation: Mutation) -> str | None:
    """None when every patch applies to the tree at ``root``, else why not."""
    texts: dict[str, str] = {}
    for number, (file, old, new) in enumerate(mutation.patches(), start=1):
        where = f" (patch {number})" if mutation.also else ""
        path = root / file
        if not path.is_file():
            return f"{file} does not exist (moved?){where}"
        text = texts.setdefault(file, path.read_text(encoding="utf-8"))
        count = text.count(old)
        if count != 1:
            return f"the old text occurs {count} times in {file} (must be exactly once){where}"
        texts[file] = text.replace(old, new, 1)
    return None


def copy_project(destination: Path) -> Path:
    shutil.copytree(ROOT, destination, ignore=COPY_IGNORE, symlinks=True)
    return destination


def apply(root: Path, mutation: Mutation) -> None:
    for file, old, new in mutation.patches():
        path = root / file
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace(old, new, 1), encoding="utf-8")


def run_tests(root: Path, tests: list[str], args: argparse.Namespace) -> tuple[int, float, str]:
    """pytest in ``root`` on ``tests`` (the fast ones); (exit code, seconds, output tail)."""
    command = [args.python, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:randomly"]
    command += ["-p", "no:cacheprovider", "-n", str(args.workers)]
    if not args.no_exitfirst:
        command.append("-x")
    command += tests
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=args.timeout
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = -1, f"timed out after {args.timeout} s\n{err.stdout or ''}"
    return code, time.perf_counter() - start, output[-3000:]


def _existing(root: Path, tests: tuple[str, ...] | list[str]) -> list[str]:
    return [t for t in tests if (root / t.split("::")[0]).exists()]


def _scope(root: Path, mutations: list[Mutation], args: argparse.Namespace) -> list[str]:
    """The tests to run: the whole suite (--full), --tests, or the mutations' own."""
    if args.full:
        return ["tests"]
    if args.tests:
        return _existing(root, args.tests)
    return sorted({t for m in mutations for t in _existing(root, m.tests)})


def failed_tests(output: str) -> list[str]:
    """The node ids pytest's short summary names as FAILED or ERROR."""
    names = []
    for line in output.splitlines():
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                names.append(line[len(tag) :].split(" - ")[0].strip())
    return names


def verdict(code: int) -> str:
    if code in (1, 2):
        return "caught"
    if code == 0:
        return "missed"
    if code == -1:
        return "timeout"
    return "error"


def git_commit(root: Path) -> str:
    """HEAD's short hash at ``root`` ("+changes" when jaxnn/, tests/ or this script differ)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        paths = ["jaxnn", "tests", "benchmarks/mutation.py"]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=root)
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty.returncode else "")


def merge_update(old: dict, new: dict) -> dict:
    """``old`` results with the rows of ``new``'s mutations replaced, and a note of the update."""
    rows = {r["name"]: r for r in old["mutations"]}
    rows.update({r["name"]: r for r in new["mutations"]})
    order = [m.name for m in MUTATIONS if m.name in rows]
    order += [name for name in rows if name not in order]
    merged = dict(old, mutations=[rows[name] for name in order])
    names = ", ".join(r["name"] for r in new["mutations"])
    note = (
        f"Re-run {new['date']} at commit {new['commit']} (`{new['command']}`, baseline: "
        f"{new['baseline']}, {new['wall_s']:.0f} s): {names}; the other rows are from the run "
        "above."
    )
    merged["notes"] = [*old.get("notes", []), note]
    return merged


def write_reports(results: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = results["mutations"]
    applicable = [r for r in rows if r["verdict"] != "not applicable"]
    caught = [r for r in applicable if r["verdict"] == "caught"]
    wall = f" · wall time {results['wall_s']:.0f} s" if "wall_s" in results else ""
    lines = [
        "# Mutation check: which small breaks of jaxnn the fast suite catches",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']} · commit {results.get('commit', 'unknown')} · host: "
        f"{results['host']} · python {results['python']}{wall}  ",
        f"Tests per mutation: {results['scope']}; baseline: {results['baseline']}  ",
        "",
        f"**Score: {len(caught)} of {len(applicable)} applicable mutations caught** "
        f"({len(rows) - len(applicable)} not applicable).",
        "",
        "| mutation | claim it breaks | file | verdict | first failing test | tests run | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tests = ", ".join(f"`{t}`" for t in r["tests"]) or "-"
        note = f" ({r['reason']})" if r.get("reason") else ""
        files = ", ".join(f"`{f}`" for f in r["file"].split())
        by = ", ".join(f"`{t}`" for t in r.get("caught_by") or ()) or "-"
        lines.append(
            f"| {r['name']} | {r['claim']} | {files} | **{r['verdict']}**{note} | {by} | "
            f"{tests} | {r['seconds']:.0f} |"
        )
    if results.get("notes"):
        lines += ["", *results["notes"]]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list mutations and applicability")
    parser.add_argument("--full", action="store_true", help="the whole fast suite per mutation")
    parser.add_argument(
        "--tests", nargs="+", metavar="PATH", help="run these tests for every mutation instead"
    )
    parser.add_argument("--workers", default="0", help="pytest-xdist -n (default 0)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the deps")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--no-exitfirst", action="store_true", help="do not stop at a failure")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "mutation")
    parser.add_argument(
        "--commit-results",
        action="store_true",
        help="also write benchmarks/results/mutation.{json,md}",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="replace only the rows of the mutations run in benchmarks/results/mutation.*",
    )
    args = parser.parse_args(argv)
    committed = ROOT / "benchmarks" / "results" / "mutation.json"
    if args.update_results and not committed.is_file():
        print(f"error: --update-results needs {committed}; run with --commit-results first")
        return 2

    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        print(f"error: unknown mutation(s) {unknown}; known: {', '.join(sorted(names))}")
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    if args.list:
        for m in chosen:
            why = applicability(ROOT, m)
            print(f"{m.name:40s} {'applies' if why is None else 'NOT APPLICABLE: ' + why}")
            print(f"{'':40s} {m.claim}; files: {' '.join(m.files())}")
            print(f"{'':40s} tests: {' '.join(m.tests)}")
        return 0

    results = {
        "command": " ".join(
            ["python benchmarks/mutation.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "scope": (
            "the whole fast suite"
            if args.full
            else " ".join(args.tests)
            if args.tests
            else "the tests named per mutation"
        ),
        "commit": git_commit(ROOT),
        "baseline": "skipped",
        "mutations": [],
    }
    run_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnn-mutation-") as tmp:
        tmp = Path(tmp)
        if not args.no_baseline:
            base = copy_project(tmp / "baseline")
            tests = (
                ["tests"]
                if args.full
                else sorted({t for m in chosen for t in _existing(base, m.tests)})
            )
            code, seconds, output = run_tests(base, tests, args)
            results["baseline"] = f"exit {code} in {seconds:.0f} s"
            print(f"baseline (unmutated): exit {code} in {seconds:.0f} s", flush=True)
            if code != 0:
                print(output)
                print("error: the unmutated tests do not pass; fix them before mutating")
                return 1
            shutil.rmtree(base)
        for m in chosen:
            row = {**asdict(m), "tests": list(m.tests), "seconds": 0.0, "reason": None}
            del row["old"], row["new"], row["also"]
            row["file"] = " ".join(m.files())
            why = applicability(ROOT, m)
            if why is not None:
                row.update(verdict="not applicable", reason=why)
                print(f"{m.name}: not applicable ({why})", flush=True)
                results["mutations"].append(row)
                continue
            copy = copy_project(tmp / m.name)
            apply(copy, m)
            tests = _scope(copy, [m], args)
            if not tests:
                row.update(verdict="not applicable", reason="none of its tests exist")
                results["mutations"].append(row)
                shutil.rmtree(copy)
                continue
            code, seconds, output = run_tests(copy, tests, args)
            row.update(tests=tests, seconds=seconds, exit_code=code, verdict=verdict(code))
            if row["verdict"] == "caught":
                row["caught_by"] = failed_tests(output)
            else:
                row["output_tail"] = output[-1500:]
            by = f" by {', '.join(row['caught_by'])}" if row.get("caught_by") else ""
            print(f"{m.name}: {row['verdict']}{by} (exit {code}, {seconds:.0f} s)", flush=True)
            results["mutations"].append(row)
            shutil.rmtree(copy)
            write_reports(results, args.out, "mutation-partial")  # progress of a long run

    results["wall_s"] = time.perf_counter() - run_start
    (args.out / "mutation-partial.json").unlink(missing_ok=True)
    (args.out / "mutation-partial.md").unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    json_path, md_path = write_reports(results, args.out, f"mutation-{stamp}")
    print(f"wrote {json_path} and {md_path}")
    if args.commit_results or args.update_results:
        committed_results = results
        if args.update_results:
            old = json.loads(committed.read_text(encoding="utf-8"))
            committed_results = merge_update(old, results)
        json_path, md_path = write_reports(
            committed_results, ROOT / "benchmarks" / "results", "mutation"
        )
        print(f"wrote {json_path} and {md_path}")
    applicable = [r for r in results["mutations"] if r["verdict"] != "not applicable"]
    caught = sum(r["verdict"] == "caught" for r in applicable)
    print(f"score: {caught} of {len(applicable)} applicable mutations caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
