"""Outputs of a tuning run: tune_results.json, tune_results.md and one plot per stage."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["comparison_markdown", "markdown_table", "plot_stage", "write_tune_outputs"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _values(values: Mapping) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def markdown_table(results: Mapping) -> str:
    """The stages as Markdown: one table row per candidate, the winner in bold."""
    metric = results["metric"]
    lines = [
        f"# Progressive tuning (validation {metric})",
        "",
        f"{results['num_trials']} distinct trials; storage `{results['storage']}`, "
        f"study `{results['study_name']}`.",
        "",
        f"| stage | candidate | status | val {metric} | best epoch | wall s | trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, stage in enumerate(results["stages"], 1):
        for cand in stage["candidates"]:
            won = stage["winner"] == cand["values"]
            val = cand["validation"] or {}
            text = _values(cand["values"])
            if won:
                text = f"**{text}**"
            status = cand["status"]
            if cand.get("failure_reason"):
                status += f" ({cand['failure_reason']})"
            lines.append(
                f"| {index}. {stage['name']} | {text} | {status} | {_fmt(val.get('value'))} | "
                f"{_fmt(val.get('best_epoch'))} | {_fmt(cand.get('wall_time_s'))} | "
                f"{cand['trial']} |"
            )
    final = results["final"]
    lines += ["", f"Final: {_values(final['hyperparameters'])}", ""]
    if final.get("validation"):
        lines.append(f"- validation {metric}: {_fmt(final['validation']['value'])}")
    lines.append("- test (evaluated once, after tuning): " + _values(final.get("test") or {}))
    return "\n".join(lines) + "\n"


def plot_stage(stage: Mapping, metric: str, path: str | os.PathLike) -> None:
    """Validation metric against candidate for one stage (failed candidates marked x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = stage["candidates"]
    labels = [
        _values(c["values"]) if len(c["values"]) > 1 else _fmt(*c["values"].values()) for c in cands
    ]
    values = [(c["validation"] or {}).get("value", math.nan) for c in cands]
    values = [math.nan if v is None else v for v in values]
    xs = list(range(len(cands)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cands) + 2), 3.2))
    ax.plot(xs, values, "o-", color="tab:blue", label=f"validation {metric}")
    for x, c in zip(xs, cands):
        if c["status"] != "complete":
            ax.plot(
                [x],
                [min((v for v in values if not math.isnan(v)), default=0)],
                "x",
                color="tab:red",
                label="failed",
            )
        if stage["winner"] == c["values"]:
            ax.plot([x], [values[x]], "*", color="tab:orange", markersize=14, label="chosen")
    ax.set_xticks(xs, labels, rotation=30 if len(cands) > 4 else 0, ha="right")
    ax.set_xlabel(stage["name"])
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"stage {stage['name']}")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tune_outputs(
    results: Mapping, workdir: str | os.PathLike, *, plots: bool = True
) -> dict[str, str]:
    """Write tune_results.json, tune_results.md and stage_<i>_<name>.png; returns the paths."""
    workdir = Path(workdir)
    paths = {"json": workdir / "tune_results.json", "markdown": workdir / "tune_results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(results))
    for index, stage in enumerate(results["stages"] if plots else [], 1):
        path = workdir / f"stage_{index}_{stage['name'].replace('+', '_')}.png"
        plot_stage(stage, results["metric"], path)
        paths[f"plot_{index}"] = path
    return {k: str(v) for k, v in paths.items()}


def comparison_markdown(rows: list[Mapping], metric: str) -> str:
    """Progressive vs random vs TPE: best validation metric at an equal trial count."""
    lines = [
        f"| corpus | search | trials | best val {metric} | best hyperparameters | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['corpus']} | {row['search']} | {row['n_trials']} | "
            f"{_fmt(row['best_value'])} | {_values(row['hyperparameters'] or {})} | "
            f"{_fmt(row['wall_time_s'])} |"
        )
    return "\n".join(lines) + "\n"
