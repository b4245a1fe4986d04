"""Same-shape tuning trials: one vmapped program vs one run after another (jaxnn.tune.vmapped).

    python benchmarks/tune.py [--corpus bbc_news] [--epochs 3] [--repeats 3]

8 bow trials that differ only in learning rate, dropout and weight decay (the stage kinds the
progressive tuner trains together) are trained (a) one after another, each with the jitted
single-trial step, and (b) together, with the same step vmapped over the trial axis. Both see the
same batches, the same initial parameters and dropout masks, so their per-epoch metrics must
agree; the script prints the largest difference. Wall times are medians over ``--repeats`` runs
after one untimed warm-up run of each (compilation is reported separately: the first run's
wall). Writes benchmarks/results/tune.json, tune.md and tune.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxnn.train import load_data  # noqa: E402
from jaxnn.train.config import validate_config  # noqa: E402
from jaxnn.tune.vmapped import VmappedBowTrainer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

LEARNING_RATES = [1e-3, 3e-3, 1e-2, 3e-2]
DROPOUTS = [0.0, 0.3]


def base_config(corpus: str, epochs: int):
    spec = importlib.util.spec_from_file_location("tune_cfg", ROOT / "configs" / "tune_bbc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    del config["tune"]
    config.data.corpus = corpus
    if corpus == "imdb":
        config.data.max_len, config.data.max_vocab_size = 256, 30000
    config.train.num_epochs = epochs
    return validate_config(config)


def trials() -> dict[str, list[float]]:
    grid = [(lr, p) for p in DROPOUTS for lr in LEARNING_RATES]
    return {
        "learning_rate": [lr for lr, _ in grid],
        "dropout": [p for _, p in grid],
        "weight_decay": [1e-4 if i % 2 else 0.0 for i in range(len(grid))],
    }


def run(trainer: VmappedBowTrainer, hyper: dict, seeds: list[int]):
    start = time.perf_counter()
    out = trainer.fit(hyper, seeds)
    jax.block_until_ready(out.last_params)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="bbc_news")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = base_config(args.corpus, args.epochs)
    data = load_data(cfg)
    hyper = trials()
    seeds = [cfg["seed"]] * len(hyper["learning_rate"])
    sequential = VmappedBowTrainer(cfg, data, vmap=False)
    vmapped = VmappedBowTrainer(cfg, data, vmap=True)
    first = {
        "sequential": run(sequential, hyper, seeds)[0],
        "vmapped": run(vmapped, hyper, seeds)[0],
    }
    walls: dict[str, list[float]] = {"sequential": [], "vmapped": []}
    outs = {}
    for _ in range(args.repeats):  # alternate, so that machine noise hits both alike
        for name, trainer in (("sequential", sequential), ("vmapped", vmapped)):
            wall, outs[name] = run(trainer, hyper, seeds)
            walls[name].append(wall)
    med = {name: statistics.median(w) for name, w in walls.items()}
    diffs = {}
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
        diffs[key] = max(
            abs(a[key] - b[key])
            for ha, hb in zip(outs["sequential"].history, outs["vmapped"].history)
            for a, b in zip(ha, hb)
        )
    result = {
        "corpus": args.corpus,
        "trials": len(seeds),
        "epochs": args.epochs,
        "train_examples": len(data.train),
        "vocab_size": len(data.vocab),
        "batch_size": cfg["train"]["batch_size"],
        "hyperparameters": hyper,
        "wall_s": walls,
        "median_wall_s": med,
        "first_run_wall_s (with compile)": first,
        "ratio_vmapped_over_sequential": med["vmapped"] / med["sequential"],
        "first_run_ratio": first["vmapped"] / first["sequential"],
        "max_metric_difference": diffs,
        "failures": {n: o.failure for n, o in outs.items()},
        "final_val_macro_f1": {
            n: [h[-1]["val_macro_f1"] if h else None for h in o.history] for n, o in outs.items()
        },
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), jax {jax.__version__}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# 8 same-shape trials: vmapped vs sequential ({args.corpus}, {args.epochs} epochs)",
        "",
        "| run | median wall s | first run s (compile) | walls s |",
        "|---|---|---|---|",
    ]
    for name in ("sequential", "vmapped"):
        md.append(
            f"| {name} | {med[name]:.2f} | {first[name]:.2f} | "
            f"{', '.join(f'{w:.2f}' for w in walls[name])} |"
        )
    md += [
        "",
        f"ratio vmapped / sequential (median): **{result['ratio_vmapped_over_sequential']:.3f}**"
        f" (first run, compile included: {result['first_run_ratio']:.3f})",
        "",
        "largest per-epoch metric difference between the two: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()),
        "",
        f"machine: {result['machine']}",
    ]
    (RESULTS / "tune.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["sequential", "vmapped"]
    ax.bar(names, [med[n] for n in names], color=["tab:gray", "tab:blue"])
    for i, n in enumerate(names):
        ax.plot([i] * len(walls[n]), walls[n], "k.", alpha=0.6)
    ax.set_ylabel("wall s (median; dots: runs)")
    ax.set_title(f"8 trials, {args.corpus}: ratio {result['ratio_vmapped_over_sequential']:.2f}")
    fig.tight_layout()
    fig.savefig(RESULTS / "tune.png", dpi=100)
    print("\n".join(md))


if __name__ == "__main__":
    main()
