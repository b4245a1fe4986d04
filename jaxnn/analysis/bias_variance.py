"""Bias and variance of a classifier, measured, and the under/overfitting curve.

K models train on K bootstrap resamples of the training split, all in one vmapped, jitted
program (`jaxnn.tune.trials`: ``jax.vmap`` of the ordinary train step; a resample is a vector
of example counts drawn from Multinomial(N, 1/N), used as per-example loss weights; every model
also gets its own init and dropout seed). On the held-out examples x (the validation split),
with ŷ_k(x) the probability vector [C] of model k, y(x) the one-hot label and E the mean over
the K models:

    variance(x)      = E[ ||ŷ(x) − E[ŷ(x)]||² ]          (summed over C)
    bias²(x)         = ||E[ŷ(x)] − y(x)||²                (squared bias against the labels; it
                                                           includes the labels' own noise)
    expected loss(x) = E[ ||ŷ(x) − y(x)||² ]  =  bias²(x) + variance(x)      (exactly)

each averaged over the held-out examples; also the models' mean 0-1 error on the held-out split
("validation error") and the error of the averaged prediction E[ŷ].

`sweep` repeats this for several capacities (``hidden_size`` or ``embed_dim``) and records every
epoch, which gives the picture of under- and overfitting: small models underfit (high bias, low
variance), large unregularized ones overfit (low bias, high variance). Early stopping would
choose, for each capacity, the epoch with the lowest validation error; the plot marks it and the
best capacity.

Run: ``python -m jaxnn.analysis.bias_variance --config=configs/bias_variance_bbc.py
--workdir=runs/bias_variance_bbc`` (with --host_allocator, --cpu_vector_width, --cpu_devices
for a CPU process: jaxnn.launch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

__all__ = [
    "bootstrap_weights",
    "decompose",
    "plot_sweep",
    "split_config",
    "sweep",
]

log = logging.getLogger("jaxnn.analysis")

CAPACITY_PARAMS = {"hidden_size": ("model", "hidden_size"), "embed_dim": ("model", "embed_dim")}


def decompose(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Squared bias, variance and expected loss of an ensemble's predictions.

    Args:
      probs: [K, N, C] predicted probabilities of K models on N held-out examples.
      labels: int [N] class ids in [0, C).

    Returns:
      {"bias2", "variance", "expected_loss", "error", "ensemble_error"}: means over the N
      examples (formulas in the module docstring); ``error`` = mean over models of the 0-1 error,
      ``ensemble_error`` = 0-1 error of argmax E[ŷ]. K = 1 gives variance 0.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 3 or labels.shape != probs.shape[1:2]:
        raise ValueError(
            f"probs must be [K, N, C] and labels [N]; got {probs.shape} and {labels.shape}"
        )
    num_classes = probs.shape[2]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    onehot = np.eye(num_classes)[labels]  # [N, C]
    mean = probs.mean(axis=0)  # E[ŷ(x)]  [N, C]
    variance = np.mean(np.sum((probs - mean) ** 2, axis=-1), axis=0)  # [N]
    bias2 = np.sum((mean - onehot) ** 2, axis=-1)  # [N]
    expected = np.mean(np.sum((probs - onehot) ** 2, axis=-1), axis=0)  # [N]
    error = np.mean(probs.argmax(-1) != labels[None, :])
    ensemble_error = np.mean(mean.argmax(-1) != labels)
    return {
        "bias2": float(bias2.mean()),
        "variance": float(variance.mean()),
        "expected_loss": float(expected.mean()),
        "error": float(error),
        "ensemble_error": float(ensemble_error),
    }


def bootstrap_weights(num_models: int, num_examples: int, seed: int) -> np.ndarray:
    """[K, N] float32 counts: row k = how often each example is drawn in resample k (sums to N)."""
    if num_models < 1 or num_examples < 1:
        raise ValueError(
            f"num_models and num_examples must be >= 1, got {num_models}, {num_examples}"
        )
    rng = np.random.default_rng([seed, 7])
    return rng.multinomial(
        num_examples, np.full(num_examples, 1.0 / num_examples), num_models
    ).astype(np.float32)


def split_config(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(validated training config dict, checked ``analysis`` section); raises before any work."""
    from jaxnn.train.config import validate_config

    if "analysis" not in config:
        raise ValueError("the config has no 'analysis' section (see configs/bias_variance_bbc.py)")
    analysis = dict(config.analysis.to_dict())
    allowed = {"capacity_param", "capacities", "num_models", "seed"}
    unknown = sorted(set(analysis) - allowed)
    if unknown:
        raise ValueError(f"unknown analysis keys {unknown}; allowed: {sorted(allowed)}")
    param = analysis.get("capacity_param", "hidden_size")
    if param not in CAPACITY_PARAMS:
        raise ValueError(f"analysis.capacity_param={param!r}; allowed: {sorted(CAPACITY_PARAMS)}")
    capacities = list(analysis.get("capacities", ()))
    low = 0 if param == "hidden_size" else 1
    if not capacities or any(
        isinstance(c, bool) or not isinstance(c, int) or c < low for c in capacities
    ):
        raise ValueError(
            f"analysis.capacities={capacities!r}; allowed: a non-empty list of ints >= {low}"
        )
    num_models = analysis.get("num_models", 8)
    if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 2:
        raise ValueError(f"analysis.num_models={num_models!r}; allowed: an int >= 2")
    train = {k: v for k, v in config.to_dict().items() if k != "analysis"}
    cfg = validate_config(train)
    if cfg["model"]["name"] != "bow":
        raise ValueError(f"model.name={cfg['model']['name']!r}; the analysis trains 'bow' models")
    return cfg, {
        "capacity_param": param,
        "capacities": sorted(capacities),
        "num_models": num_models,
        "seed": int(analysis.get("seed", 0)),
    }


def sweep(config: ml_collections.ConfigDict, data: Any = None) -> dict:
    """Train K bootstrap models per capacity; decompose every epoch's held-out predictions.

    Args:
      config: training config + ``analysis`` section (capacity_param, capacities, num_models,
        seed); train.num_epochs is the epoch sweep.
      data: a `jaxnn.data.Prepared` (default: loaded from config.data).

    Returns:
      {"capacity_param", "num_models", "rows": [{capacity, epoch, bias2, variance,
      expected_loss, error, ensemble_error, train_error}], "early_stopping": {capacity: epoch},
      "best": {capacity, epoch, error}}.
    """
    from jaxnn.train import load_data
    from jaxnn.train.config import config_to_dict
    from jaxnn.tune.trials import TrialGroup

    cfg, analysis = split_config(config)
    if data is None:
        data = load_data(cfg)
    k = analysis["num_models"]
    weights = bootstrap_weights(k, len(data.train), analysis["seed"])
    section, name = CAPACITY_PARAMS[analysis["capacity_param"]]
    rows = []
    o, m = cfg["optim"], cfg["model"]
    hyper = {
        "learning_rate": [o["learning_rate"]] * k,
        "dropout": [m["dropout"]] * k,
        "weight_decay": [o["weight_decay"]] * k,
    }
    seeds = [analysis["seed"] * 1000 + i for i in range(k)]
    for capacity in analysis["capacities"]:
        run = config_to_dict(cfg)  # a mutable copy of the frozen RunConfig
        run[section][name] = capacity
        run["train"]["patience"] = 0
        trainer = TrialGroup(run, data, vmap=True)
        out = trainer.fit(
            hyper,
            seeds,
            sample_weights=weights,
            eval_splits={"validation": data.validation, "train_eval": data.train},
            keep_probs=True,
        )
        failed = [f for f in out.failure if f]
        if failed:
            raise FloatingPointError(f"capacity {capacity}: {failed[0]}")
        val_probs, train_probs = out.probs["validation"], out.probs["train_eval"]  # [E, K, N, C]
        for epoch in range(val_probs.shape[0]):
            parts = decompose(val_probs[epoch], data.validation.labels)
            train_error = float(np.mean(train_probs[epoch].argmax(-1) != data.train.labels[None]))
            rows.append(
                {"capacity": capacity, "epoch": epoch + 1, **parts, "train_error": train_error}
            )
        last = rows[-1]
        log.info(
            "%s=%d: bias² %.4f variance %.4f expected loss %.4f val error %.4f (%.1f s)",
            name,
            capacity,
            last["bias2"],
            last["variance"],
            last["expected_loss"],
            last["error"],
            out.wall_time_s,
        )
    early = {}
    for capacity in analysis["capacities"]:
        curve = [r for r in rows if r["capacity"] == capacity]
        early[capacity] = min(curve, key=lambda r: (r["error"], r["epoch"]))["epoch"]
    best = min(
        (r for r in rows if r["epoch"] == early[r["capacity"]]),
        key=lambda r: (r["error"], r["capacity"]),
    )
    return {
        "capacity_param": analysis["capacity_param"],
        "num_models": k,
        "num_epochs": cfg["train"]["num_epochs"],
        "held_out": "validation",
        "rows": rows,
        "early_stopping": {str(c): e for c, e in early.items()},
        "best": {"capacity": best["capacity"], "epoch": best["epoch"], "error": best["error"]},
    }


def _final_rows(result: Mapping) -> list[Mapping]:
    last = result["num_epochs"]
    return [r for r in result["rows"] if r["epoch"] == last]


def plot_sweep(result: Mapping, path: str | os.PathLike) -> None:
    """Left: bias², variance, expected loss and validation error vs capacity (last epoch, and at
    the early-stopping epoch dashed); right: the same vs epoch for the largest capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    param = result["capacity_param"]
    early = {int(c): e for c, e in result["early_stopping"].items()}
    final = _final_rows(result)
    stopped = [r for r in result["rows"] if r["epoch"] == early[r["capacity"]]]
    caps = [r["capacity"] for r in final]
    xs = [max(c, 0.5) for c in caps]  # capacity 0 (linear head) drawn at 0.5 on the log axis
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = (
        ("bias2", "bias²", "tab:blue"),
        ("variance", "variance", "tab:orange"),
        ("expected_loss", "expected loss", "tab:gray"),
        ("error", "validation error", "tab:red"),
    )
    for key, label, color in series:
        left.plot(
            xs,
            [r[key] for r in final],
            "o-",
            color=color,
            label=f"{label} (epoch {result['num_epochs']})",
        )
    left.plot(
        xs,
        [r["error"] for r in stopped],
        "s--",
        color="tab:red",
        alpha=0.6,
        label="validation error at the early-stopping epoch",
    )
    best = result["best"]
    left.plot(
        [max(best["capacity"], 0.5)],
        [best["error"]],
        "*",
        color="black",
        markersize=15,
        label=f"early stopping's choice ({param}={best['capacity']}, epoch {best['epoch']})",
    )
    left.set_xscale("log", base=2)
    left.set_xlabel(f"capacity: {param}")
    left.set_title(f"bias-variance over capacity ({result['num_models']} bootstrap models)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    largest = max(caps)
    curve = [r for r in result["rows"] if r["capacity"] == largest]
    epochs = [r["epoch"] for r in curve]
    for key, label, color in series:
        right.plot(epochs, [r[key] for r in curve], "o-", color=color, label=label)
    right.plot(
        epochs, [r["train_error"] for r in curve], "o:", color="tab:green", label="training error"
    )
    right.axvline(
        early[largest],
        color="black",
        linestyle="--",
        label=f"early stopping (epoch {early[largest]})",
    )
    right.set_xlabel("epoch")
    right.set_title(f"{param}={largest}: over epochs")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(result: Mapping) -> str:
    """One table row per capacity: last epoch and early-stopping epoch."""
    param = result["capacity_param"]
    early = {int(c): e for c, e in result["early_stopping"].items()}
    lines = [
        f"| {param} | bias² | variance | expected loss | val error | train error | "
        "early-stop epoch | val error there |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["capacity"], r["epoch"]): r for r in result["rows"]}
    for r in _final_rows(result):
        stop = by_key[(r["capacity"], early[r["capacity"]])]
        lines.append(
            f"| {r['capacity']} | {r['bias2']:.4f} | {r['variance']:.4f} | "
            f"{r['expected_loss']:.4f} | {r['error']:.4f} | {r['train_error']:.4f} | "
            f"{early[r['capacity']]} | {stop['error']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(result: Mapping, workdir: str | os.PathLike) -> None:
    """bias_variance.json, bias_variance.md, bias_variance.png in ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bias_variance.json").write_text(json.dumps(result, indent=2) + "\n")
    (workdir / "bias_variance.md").write_text(markdown(result))
    plot_sweep(result, workdir / "bias_variance.png")


def _main(argv: Sequence[str], process_flags) -> int | None:
    import sys

    from absl import flags

    from jaxnn.launch import TUNING_DEFAULTS, configure_process

    del argv
    config = flags.FLAGS["config"].value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:  # before JAX's first computation; CPU runs only (jaxnn.launch)
        configure_process(**process_flags(), defaults=TUNING_DEFAULTS)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = flags.FLAGS["workdir"].value
    result = sweep(config)
    write_outputs(result, workdir)
    print(markdown(result))
    print(f"early stopping's choice: {result['best']}; plot: {Path(workdir) / 'bias_variance.png'}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from jaxnn.launch.flags import define_process_flags

    config_flags.DEFINE_config_file("config", None, "bias-variance config (get_config()).")
    flags.DEFINE_string("workdir", None, "output directory")
    process_flags = define_process_flags()  # --host_allocator, --cpu_vector_width, --cpu_devices
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: _main(argv, process_flags))
