"""Same-shape tuning trials: one vmapped program vs one run after another (jaxnn.tune.trials).

    python benchmarks/tune.py [--corpus bbc_news] [--epochs 3] [--repeats 3]

8 bow trials that differ only in learning rate, dropout and weight decay (the stage kinds the
progressive tuner trains together) are trained (a) one after another, each alone with the
ordinary jitted train step of its own config (dropout rate static in its model, compiled once
per rate: what ``python train.py`` runs), and (b) together, as one K = 8 program: ``jax.vmap``
of the same ordinary step with the hyperparameters as arrays. Two groups: "mixed" (half the
trials with dropout 0.3: the headline) and "no_dropout". Both runs see the same batches, the
same initial parameters and dropout masks, so their per-epoch metrics must agree; the script
prints the largest difference. Wall times are medians over ``--repeats`` runs after one untimed
warm-up run of each (compilation is reported separately: the first run's wall), with the load
average before and after; the rounds alternate the two, and the median of the rounds' ratios is
given beside the ratio of the medians (on a shared machine whose load drifts, the paired figure
is the steadier one). Each run includes the per-epoch validation and the host-side batch work,
as in the tuner (a fit of the trials). Writes benchmarks/results/tune.json, tune.md and tune.png
(tune.CORPUS.* for a corpus other than bbc_news).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn.launch import TUNING_DEFAULTS, configure_process  # noqa: E402
from jaxnn.launch.cpu_vector_width import cpu_vector_width  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402
from jaxnn.train import load_data  # noqa: E402
from jaxnn.train.config import config_from_file, validate_config  # noqa: E402
from jaxnn.tune.trials import TrialGroup  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results

LEARNING_RATES = [1e-3, 3e-3, 1e-2, 3e-2]
DROPOUTS = [0.0, 0.3]


def base_config(corpus: str, epochs: int):
    config = config_from_file(ROOT / "configs" / "tune_bbc.py")
    del config["tune"]
    config.data.corpus = corpus
    if corpus == "imdb":
        config.data.max_len, config.data.max_vocab_size = 256, 30000
    config.train.num_epochs = epochs
    return validate_config(config)


def trials(dropouts: list[float]) -> dict[str, list[float]]:
    """8 trials: 4 learning rates x ``dropouts`` (two values), weight decay 0 / 1e-4 alternating."""
    grid = [(lr, p) for p in dropouts for lr in LEARNING_RATES]
    return {
        "learning_rate": [lr for lr, _ in grid],
        "dropout": [p for _, p in grid],
        "weight_decay": [1e-4 if i % 2 else 0.0 for i in range(len(grid))],
    }


# "mixed" (the headline): half the trials with dropout, as in the dropout stage. "no_dropout":
# the learning-rate and weight-decay stages while the best dropout is 0 (the configs' default).
GROUPS = {"mixed": [0.0, 0.3], "no_dropout": [0.0, 0.0]}


def run(trainer: TrialGroup, hyper: dict, seeds: list[int]):
    start = time.perf_counter()
    out = trainer.fit(hyper, seeds)
    jax.block_until_ready(out.last_variables)
    return time.perf_counter() - start, out


def measure(sequential, vmapped, hyper, seeds, repeats):
    first = {
        "sequential": run(sequential, hyper, seeds)[0],
        "vmapped": run(vmapped, hyper, seeds)[0],
    }
    walls: dict[str, list[float]] = {"sequential": [], "vmapped": []}
    outs = {}
    for _ in range(repeats):  # alternate, so that machine noise hits both alike
        for name, trainer in (("sequential", sequential), ("vmapped", vmapped)):
            wall, outs[name] = run(trainer, hyper, seeds)
            walls[name].append(wall)
    med = {name: statistics.median(w) for name, w in walls.items()}
    # each round runs the two back to back, so its ratio sees one load: the median of the
    # rounds' ratios is the estimate least moved by load that drifts over the run
    rounds = [v / s for s, v in zip(walls["sequential"], walls["vmapped"])]
    diffs = {}
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
        diffs[key] = max(
            abs(a[key] - b[key])
            for ha, hb in zip(outs["sequential"].history, outs["vmapped"].history)
            for a, b in zip(ha, hb)
        )
    return {
        "hyperparameters": hyper,
        "wall_s": walls,
        "median_wall_s": med,
        "first_run_wall_s (with compile)": first,
        "ratio_vmapped_over_sequential": med["vmapped"] / med["sequential"],
        "round_ratios": rounds,
        "median_round_ratio": statistics.median(rounds),
        "first_run_ratio": first["vmapped"] / first["sequential"],
        "max_metric_difference": diffs,
        "failures": {n: o.failure for n, o in outs.items()},
        "final_val_macro_f1": {
            n: [h[-1]["val_macro_f1"] if h else None for h in o.history] for n, o in outs.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="bbc_news")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    cfg = base_config(args.corpus, args.epochs)
    data = load_data(cfg)
    load_before = os.getloadavg()
    sequential = TrialGroup(cfg, data, vmap=False)
    vmapped = TrialGroup(cfg, data, vmap=True)
    groups = {}
    for name, dropouts in GROUPS.items():
        hyper = trials(dropouts)
        seeds = [cfg["seed"]] * len(hyper["learning_rate"])
        groups[name] = measure(sequential, vmapped, hyper, seeds, args.repeats)
    load_after = os.getloadavg()
    head = groups["mixed"]
    allocator = host_allocator()
    result = {
        "corpus": args.corpus,
        "trials": len(head["hyperparameters"]["learning_rate"]),
        "epochs": args.epochs,
        "train_examples": len(data.train),
        "vocab_size": len(data.vocab),
        "batch_size": cfg["train"]["batch_size"],
        "trials_per_program": vmapped.trials_per_program,
        "ratio_vmapped_over_sequential": head["ratio_vmapped_over_sequential"],
        "groups": groups,
        "loadavg_1_5_15 (before, after)": [load_before, load_after],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}, "
        f"host allocator {allocator['mode']} (huge pages: {allocator['huge_pages']}), "
        f"CPU vector width {cpu_vector_width()['detail']}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "tune" if args.corpus == "bbc_news" else f"tune.{args.corpus}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# 8 same-shape trials: vmapped vs sequential ({args.corpus}, {args.epochs} epochs)",
        "",
        "sequential = the ordinary jitted train step of each trial's config, one after another;",
        "vmapped = jax.vmap of that step over the 8 trials, one program. Groups: mixed =",
        "4 learning rates x dropout {0, 0.3}, weight decay 0 / 1e-4; no_dropout = the same",
        "with dropout 0 for all.",
        f"vmapped trials per program: {vmapped.trials_per_program or 'all'} (TrialGroup's "
        "default here; trials ordered by dropout rate, a chunk of one rate has it static).",
        "Each round runs sequential then vmapped; 'median of round ratios' pairs the two runs",
        "of a round (one load), 'ratio of medians' does not.",
        "",
        "| group | run | median wall s | first run s (compile) | walls s | ratio of medians "
        "| median of round ratios |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, g in groups.items():
        for name in ("sequential", "vmapped"):
            ratio = f"**{g['ratio_vmapped_over_sequential']:.3f}**" if name == "vmapped" else ""
            paired = f"{g['median_round_ratio']:.3f}" if name == "vmapped" else ""
            md.append(
                f"| {group} | {name} | {g['median_wall_s'][name]:.2f} | "
                f"{g['first_run_wall_s (with compile)'][name]:.2f} | "
                f"{', '.join(f'{w:.2f}' for w in g['wall_s'][name])} | {ratio} | {paired} |"
            )
    md.append("")
    for group, g in groups.items():
        md.append(
            f"{group}: largest per-epoch metric difference vmapped vs sequential: "
            + ", ".join(f"{k} {v:.2e}" for k, v in g["max_metric_difference"].items())
        )
        md.append("")
    md += [
        "load average (1, 5, 15 min) before / after: "
        + " / ".join(", ".join(f"{x:.2f}" for x in la) for la in (load_before, load_after)),
        "",
        f"machine: {result['machine']}",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = ["sequential", "vmapped"]
    for j, g in enumerate(groups.values()):
        for i, n in enumerate(names):
            x = 3 * j + i
            ax.bar(x, g["median_wall_s"][n], color=["tab:gray", "tab:blue"][i])
            ax.plot([x] * len(g["wall_s"][n]), g["wall_s"][n], "k.", alpha=0.6)
        ax.text(
            3 * j + 0.5,
            max(g["median_wall_s"].values()) * 1.02,
            f"{g['ratio_vmapped_over_sequential']:.2f}x",
            ha="center",
        )
    ax.set_xticks([3 * j + i for j in range(len(groups)) for i in range(2)])
    ax.set_xticklabels([f"{g}\n{n}" for g in groups for n in names], fontsize=8)
    ax.set_ylabel("wall s (median; dots: runs)")
    ax.set_title(f"8 trials, {args.corpus}, {args.epochs} epoch(s): vmapped / sequential")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    print("\n".join(md))


if __name__ == "__main__":
    # before JAX's first computation; CPU runs only (jaxnn.launch): the tuner's defaults
    configure_process(defaults=TUNING_DEFAULTS)
    main()
