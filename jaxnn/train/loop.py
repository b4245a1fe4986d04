"""The training loop, top to bottom: data -> model -> jitted steps -> epochs -> best -> test once.

    train_and_evaluate(config, workdir)        the whole run (what train.py calls)
      validate_config(config)                  bad input fails here, before data or compile
      data    = load_data(config)              vocabulary from train only; test split untouched
      fitted  = fit(config, data, workdir)     epochs, validation each epoch, early stopping on
                                               the validation metric, best + latest checkpoints,
                                               resume from the newest checkpoint
      test    = evaluate(best params, test)    the test split, once, at the very end
      results.json, learning_curves.png

`fit` is the library entry point for tuning: it never loads or touches the test split and, with
``workdir=None``, writes nothing (the best parameters stay in memory).

Reproducibility: batch order of epoch e is drawn from (seed, e), the dropout key of step t is
fold_in(key, t), and checkpoints hold the whole train state including the epoch's running sums,
so a run killed at any point and restarted with the same command ends with bitwise the same
parameters as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxnn.data.batches import BatchIterator, default_buckets, eval_batches, prefetch
from jaxnn.data.prepare import EncodedSplit, Prepared, prepare, prepare_test
from jaxnn.data.sharded import ShardedSplit
from jaxnn.metrics import accuracy, macro_f1, precision_recall_f1
from jaxnn.models import get_model
from jaxnn.train import sparse as sparse_lib
from jaxnn.train.checkpoint import Checkpoints
from jaxnn.train.config import config_to_dict, validate_config, weight_decay_mode
from jaxnn.train.distributed import (
    batch_sharding,
    check_divisible,
    describe_mesh,
    local_rows,
    make_mesh,
    process_group,
    replicated,
    shard_batch,
    state_sharding,
    under_mesh,
    waits_for_each_call,
)
from jaxnn.train.logs import MetricsLog, plot_learning_curves, read_jsonl, write_json
from jaxnn.train.optim import make_optimizer, make_schedule
from jaxnn.train.precision import DynamicLossScale, all_finite
from jaxnn.train.state import NO_NONFINITE, TrainState, zero_train_metrics
from jaxnn.train.step import make_eval_step, make_train_step, zero_eval_metrics

_all_finite = jax.jit(all_finite)

__all__ = [
    "ConfigMismatchError",
    "FitResult",
    "NonFiniteLossError",
    "Steps",
    "Trainer",
    "build_steps",
    "fit",
    "init_train_state",
    "load_data",
    "mesh_from_config",
    "train_and_evaluate",
]

log = logging.getLogger("jaxnn.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class ConfigMismatchError(ValueError):
    """The workdir holds a run of a different config (restart with overwrite=True)."""


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_data(config: Mapping[str, Any]) -> Prepared:
    """Train and validation splits of ``config.data`` encoded with a vocabulary built on train.

    Cached by jaxnn.data (a second call reads NumPy files). The test split is not loaded.
    Under ``jax.distributed`` with P > 1 processes every process must call it: each tokenizes
    only its share and then the rows of each global batch it feeds (`jaxnn.data.ShardedSplit`;
    the vocabulary and the batches are those of one process).
    """
    d = config["data"]
    return prepare(
        d["corpus"],
        max_len=d["max_len"],
        min_freq=d["min_freq"],
        max_size=d["max_vocab_size"] or None,
        seed=d["split_seed"],
        unk_warn_threshold=d["unk_warn_threshold"],
        processes=process_group(),
    )


def load_test(config: Mapping[str, Any], data: Prepared) -> EncodedSplit | ShardedSplit:
    """The test split encoded with the training vocabulary: for the final evaluation only
    (with several processes, each encodes its share: see `load_data`)."""
    d = config["data"]
    return prepare_test(
        d["corpus"],
        data.vocab,
        max_len=d["max_len"],
        seed=d["split_seed"],
        unk_warn_threshold=d["unk_warn_threshold"],
        processes=process_group(),
    )


def tokenized_per_process(splits: Mapping[str, EncodedSplit | ShardedSplit]) -> list[dict]:
    """[P] {"process", split name: texts that process tokenized for it} (a collective: every
    process calls it); [] with one process, which encodes every text of every split."""
    group = process_group()
    if group.count == 1:
        return []
    mine = {name: np.asarray([split.num_tokenized]) for name, split in splits.items()}
    return [
        {"process": p, **{name: int(g[name][0]) for name in splits}}
        for p, g in enumerate(group.exchange(mine))
    ]


# ----------------------------------------------------------------------------------------------
# Model, optimizer, jitted steps
# ----------------------------------------------------------------------------------------------


def mesh_from_config(
    config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None
) -> jax.sharding.Mesh:
    """``mesh``, or (None) the mesh over every device (all processes) with ``config.mesh.fsdp``
    parameter shards; checks that the global batch sizes divide by its device count
    (ConfigError otherwise)."""
    if mesh is None:
        mesh = make_mesh(fsdp=config["mesh"]["fsdp"])
    check_divisible("train.batch_size", config["train"]["batch_size"], mesh)
    check_divisible("train.eval_batch_size", config["train"]["eval_batch_size"], mesh)
    return mesh


def is_main_process() -> bool:
    """Process 0 writes logs, plots and results (every process writes its checkpoint shards)."""
    return jax.process_index() == 0


def _sync(name: str) -> None:
    """Barrier across processes (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclass(frozen=True)
class Steps:
    """The optimizer and the jitted steps of one config and model (see `build_steps`).

    ``state_sharding`` is the `TrainState` of `NamedSharding`s the steps take and return
    (replicated, or FSDP-split leaves with ``mesh.fsdp > 1``); ``init`` builds a fresh state.
    """

    schedule: Any
    tx: Any
    sparse: sparse_lib.SparseEmbeddingOptimizer | None
    train_step: Callable
    eval_step: Callable
    state_sharding: Any = None
    init: Callable | None = None


def _make_init(
    config: Mapping[str, Any], model: Any, tx: Any, sparse: Any
) -> Callable[[int], TrainState]:
    """``init(length) -> TrainState``: parameters from key(seed), fresh optimizer state, and a
    dynamic loss scale for float16 (parameter shapes do not depend on ``length``)."""
    key = jax.random.PRNGKey(config["seed"])
    init_key, dropout_key = jax.random.split(key)
    optim = config["optim"]
    half = config["model"]["dtype"] == "float16"

    def init(length: int) -> TrainState:
        tokens = jnp.zeros((1, length), jnp.int32)
        mask = jnp.ones((1, length), bool)
        variables = model.init(init_key, tokens, mask, train=False)
        params = variables["params"]
        opt_state = sparse.init(tx, params) if sparse is not None else tx.init(params)
        loss_scale = None
        if half:
            loss_scale = DynamicLossScale.create(
                optim["initial_loss_scale"], period=optim["loss_scale_period"]
            )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=opt_state,
            rng=dropout_key,
            metrics=zero_train_metrics(),
            loss_scale=loss_scale,
        )

    return init


def _variables_sharding(state_sharding: TrainState, has_batch_stats: bool) -> dict[str, Any]:
    if has_batch_stats:
        return {"params": state_sharding.params, "batch_stats": state_sharding.batch_stats}
    return {"params": state_sharding.params}


def build_steps(
    config: Mapping[str, Any],
    model: Any,
    num_classes: int,
    total_steps: int,
    mesh: jax.sharding.Mesh,
    *,
    init_length: int = 16,
) -> Steps:
    """Optimizer (dense Optax + lazy sparse tables) and the jitted train/eval steps.

    ``init_length`` is the token length of the dummy batch whose shapes give the parameter
    shapes (the Trainer passes its smallest bucket; nothing is computed).

    train_step: ``(state, batch) -> state``, the state donated, replicated (or FSDP-split with
    ``mesh.fsdp > 1``: `jaxnn.train.distributed.state_sharding`), the batch sharded over the
    whole mesh. eval_step: ``(variables, sums, batch) -> sums``, the sums donated.
    """
    optim = config["optim"]
    schedule = make_schedule(optim, total_steps)
    sparse = None  # the tables' lazy updates are part of tx (make_optimizer's tables)
    tables = model.table_names() if optim["sparse_embeddings"] else ()
    tx = make_optimizer(optim, total_steps, tables=tables)
    l2 = weight_decay_mode(optim) == "l2" and optim["weight_decay"] > 0
    rep, bat = replicated(mesh), batch_sharding(mesh)
    init = _make_init(config, model, tx, sparse)
    abstract = jax.eval_shape(lambda: init(init_length))  # shapes only: nothing computed
    shardings = state_sharding(abstract, mesh)
    variables = _variables_sharding(shardings, bool(abstract.batch_stats))
    step = make_train_step(model, tx, l2_weight_decay=l2, sparse_embeddings=bool(tables))
    train_step = jax.jit(
        under_mesh(step, mesh),
        in_shardings=(shardings, bat),
        out_shardings=shardings,
        donate_argnums=0,
    )
    eval_step = jax.jit(
        under_mesh(make_eval_step(model, num_classes), mesh),
        in_shardings=(variables, rep, bat),
        out_shardings=rep,
        donate_argnums=1,
    )
    # several CPU devices of one process (jaxnn.cpu_devices): each step waits for its result,
    # or XLA's in-process all-reduce can deadlock (waits_for_each_call)
    train_step, eval_step = (waits_for_each_call(f, mesh) for f in (train_step, eval_step))
    return Steps(schedule, tx, sparse, train_step, eval_step, shardings, init)


def init_train_state(
    config: Mapping[str, Any], model: Any, steps: Steps, mesh: jax.sharding.Mesh, length: int
) -> TrainState:
    """Parameters from key(seed) and a fresh optimizer state, laid out on ``mesh`` as the steps
    expect (``steps.state_sharding``: replicated, or FSDP-split)."""
    init = steps.init or _make_init(config, model, steps.tx, steps.sparse)
    shardings = steps.state_sharding
    if shardings is None:
        shardings = state_sharding(jax.eval_shape(lambda: init(length)), mesh)
    return jax.block_until_ready(jax.jit(lambda: init(length), out_shardings=shardings)())


class Trainer:
    """Everything one config needs to train on one dataset: model, optimizer, mesh, steps.

    Attributes:
      config: the validated config (plain dict).
      model: the flax module.
      mesh: the device mesh (axis "data", and "fsdp" with ``mesh.fsdp > 1``).
      train_batches: the `BatchIterator` of the training split.
      steps_per_epoch, total_steps: for the schedule.
      train_step: jitted ``(state, batch) -> state``, state donated, batch sharded on "data".
      eval_step: jitted ``(variables, sums, batch) -> sums``.

    The tuner can build one per trial and call `init_state`, `run_epoch` and `evaluate`.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        data: Prepared,
        *,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config = cfg = validate_config(config)
        self.data = data
        self.mesh = mesh_from_config(cfg, mesh)
        self.num_classes = data.num_classes
        self.model = get_model(cfg, vocab_size=len(data.vocab), num_classes=self.num_classes)
        d, t = cfg["data"], cfg["train"]
        self.buckets = default_buckets(data.max_len, min(d["smallest_bucket"], data.max_len))
        self.train_batches = BatchIterator(
            data.train,
            batch_size=t["batch_size"],
            shuffle=True,
            seed=cfg["seed"],
            remainder="drop",
            buckets=self.buckets,
            sort_pool=d["sort_pool"],
        )
        full = self.train_batches.num_batches()
        self.steps_per_epoch = (
            min(full, t["max_steps_per_epoch"]) if t["max_steps_per_epoch"] else full
        )
        self.total_steps = self.steps_per_epoch * t["num_epochs"]
        steps = build_steps(
            cfg,
            self.model,
            self.num_classes,
            self.total_steps,
            self.mesh,
            init_length=self.buckets[0],
        )
        self.steps = steps
        self.schedule, self.tx, self.sparse = steps.schedule, steps.tx, steps.sparse
        self.train_step, self.eval_step = steps.train_step, steps.eval_step

    # --- state ---------------------------------------------------------------------------------
    def init_state(self) -> TrainState:
        """Fresh parameters and optimizer state from ``config.seed``, replicated on the mesh."""
        return init_train_state(self.config, self.model, self.steps, self.mesh, self.buckets[0])

    def reset_metrics(self, state: TrainState) -> TrainState:
        metrics = jax.jit(zero_train_metrics, out_shardings=replicated(self.mesh))()
        return state.replace(metrics=metrics)

    # --- training ------------------------------------------------------------------------------
    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Sharded batches ``start..steps_per_epoch-1`` of ``epoch``, built ahead on a thread.

        Each process builds only its rows of every global batch (`process_batch`)."""
        order = self.train_batches.order(epoch)[start : self.steps_per_epoch]
        host = (process_batch(self.train_batches, index, self.mesh) for index in order)
        return prefetch(host, self.config["data"]["prefetch"], lambda b: shard_batch(b, self.mesh))

    def train_summary(self, state: TrainState) -> dict[str, float]:
        """The epoch's running means (one host sync); raises on a non-finite loss."""
        metrics = jax.device_get(state.metrics)
        bad = int(metrics["nonfinite_step"])
        if bad != NO_NONFINITE:
            raise NonFiniteLossError(f"training loss is not finite at step {bad}", bad)
        weight = max(float(metrics["weight"]), 1.0)
        return {
            "train_loss": float(metrics["loss_sum"]) / weight,
            "train_accuracy": float(metrics["correct"]) / weight,
        }

    def check_finite_params(self, state: TrainState) -> None:
        """Raise `NonFiniteLossError` when a parameter is NaN/inf (checked before each save)."""
        if not bool(_all_finite(state.params)):
            step = int(jax.device_get(state.step))
            raise NonFiniteLossError(f"parameters are not finite after step {step - 1}", step - 1)

    def run_epoch(
        self,
        state: TrainState,
        epoch: int,
        *,
        start: int = 0,
        on_step: Callable[[TrainState, int], None] | None = None,
        progress: bool = False,
    ) -> TrainState:
        """Steps ``start..`` of ``epoch``; ``on_step(state, batches_done)`` after each step."""
        if start == 0:
            state = self.reset_metrics(state)
        log_every = self.config["train"]["log_every_steps"]
        batch_size = self.config["train"]["batch_size"]
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}",
            unit="step",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        tick, tick_steps = time.perf_counter(), 0
        done = start
        for batch in self.batches(epoch, start):
            state = self.train_step(state, batch)
            done += 1
            tick_steps += 1
            bar.update(1)
            if done % log_every == 0 or done == self.steps_per_epoch:
                summary = self.train_summary(state)  # host sync + finite check
                now = time.perf_counter()
                rate = tick_steps * batch_size / max(now - tick, 1e-9)
                bar.set_postfix(loss=f"{summary['train_loss']:.4f}", ex_per_s=f"{rate:.0f}")
                tick, tick_steps = now, 0
            if on_step is not None:
                on_step(state, done)
        bar.close()
        return state

    # --- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self, variables: Mapping[str, Any], split: EncodedSplit | ShardedSplit
    ) -> dict[str, Any]:
        """Loss, accuracy, macro F1, per-class precision/recall/F1, confusion matrix, unk ratio.

        The confusion matrix is summed on the device over all batches (padding rows weigh 0);
        every metric comes from that one matrix. With several processes each feeds its rows of
        every global batch and the jitted sums run over the whole global batch, so the matrix
        (replicated on every device) is that of the whole split.
        """
        batches = eval_batches(
            split,
            batch_size=self.config["train"]["eval_batch_size"],
            buckets=self.buckets,
            sort_pool=self.config["data"]["sort_pool"],
        )
        zeros = jax.jit(
            lambda: zero_eval_metrics(self.num_classes), out_shardings=replicated(self.mesh)
        )
        sums = zeros()
        host = (process_batch(batches, index, self.mesh) for index in batches.order(0))
        for batch in prefetch(host, 2, lambda b: shard_batch(b, self.mesh)):
            sums = self.eval_step(variables, sums, batch)
        sums = jax.device_get(sums)
        return metrics_from_confusion(sums, split)


def process_batch(batches: BatchIterator, index: np.ndarray, mesh: jax.sharding.Mesh) -> dict:
    """This process's rows (`local_rows`) of the global batch of examples ``index``.

    One process: ``batches.make_batch(index)``. Several: only the examples of this process's
    rows are gathered and padded, to the bucket length of the whole global batch (every process
    must agree on the shape; the lengths of every example are known to every process), so no
    process builds, or with a `ShardedSplit` tokenizes, another's rows.
    """
    size = batches.batch_size
    rows = local_rows(size, mesh)
    if rows == slice(0, size):
        return batches.make_batch(index)
    longest = int(batches.lengths[index].max(initial=0))
    bucket = np.asarray(batches.buckets)
    length = int(bucket[np.searchsorted(bucket, longest)])
    local = batches.make_batch(index[rows])  # padded to B rows, to its own bucket length
    count = rows.stop - rows.start
    out = {}
    for key, value in local.items():
        value = value[:count]
        if key in ("tokens", "mask") and value.shape[1] < length:
            value = np.pad(value, ((0, 0), (0, length - value.shape[1])))
        out[key] = value
    return out


def metrics_from_confusion(
    sums: Mapping[str, np.ndarray], split: EncodedSplit | ShardedSplit
) -> dict[str, Any]:
    cm = np.asarray(sums["confusion"])
    precision, recall, f1 = (np.asarray(x).tolist() for x in precision_recall_f1(cm))
    return {
        "loss": float(sums["loss_sum"]) / max(float(sums["weight"]), 1.0),
        "accuracy": float(accuracy(cm)),
        "macro_f1": float(macro_f1(cm)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "num_examples": len(split),
        "unk_ratio": float(split.unk.ratio),
    }


def _snapshot(tree: Any) -> Any:
    """A copy that survives the donation of ``tree`` to the next step: host NumPy arrays when
    this process holds every element, else device copies with the same sharding."""

    def copy(x):
        if x.is_fully_addressable:
            return np.array(x, copy=True)
        return jax.jit(jnp.copy, out_shardings=x.sharding)(x)

    return jax.tree.map(copy, tree)


# ----------------------------------------------------------------------------------------------
# fit: epochs, validation, early stopping, checkpoints, resume
# ----------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
      history: one record per epoch (the metrics.jsonl lines).
      best: the validation metrics of the best epoch, with "epoch" and "step".
      best_variables: params (+ batch_stats) of the best epoch (host arrays), or None when they
        live only in the workdir's best checkpoint.
      state: the final train state.
      stopped_early: early stopping ended the run before num_epochs.
      trainer: the `Trainer` (model, steps, mesh), for further evaluation.
    """

    history: list[dict]
    best: dict
    best_variables: Any
    state: TrainState
    stopped_early: bool
    trainer: Trainer
    info: dict = field(default_factory=dict)


def fit(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    data: Prepared | None = None,
    workdir: str | Path | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    trainer: Trainer | None = None,
) -> FitResult:
    """Train with validation every epoch and early stopping; never touches the test split.

    With a ``workdir`` it writes metrics.jsonl, TensorBoard events and checkpoints there and
    resumes from the newest checkpoint it finds; without one it writes nothing and keeps the
    best parameters in memory.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (no checkpoint is written after that step).
    """
    cfg = validate_config(config)
    if trainer is None:  # before any data: fsdp and batch sizes fit the devices
        mesh = mesh_from_config(cfg, mesh)
    if data is None:
        data = load_data(cfg)
    trainer = trainer or Trainer(cfg, data, mesh=mesh)
    t = cfg["train"]
    select = t["select_metric"]
    log.info("devices: %s", describe_mesh(trainer.mesh))
    log.info(
        "%s: %d train / %d validation examples, vocabulary %d, %d steps per epoch",
        data.name,
        len(data.train),
        len(data.validation),
        len(data.vocab),
        trainer.steps_per_epoch,
    )
    state = trainer.init_state()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    log.info("model %s: %d parameters", cfg["model"]["name"], n_params)

    checkpoints = metrics_log = None
    meta = {
        "epoch": 0,
        "batch_in_epoch": 0,
        "best": None,
        "bad_epochs": 0,
        "stopped_early": False,
        "wall_time": 0.0,
    }
    best_variables = None
    if workdir is not None:
        workdir = Path(workdir)
        checkpoints = Checkpoints(workdir, keep=t["keep_checkpoints"])
        # every process reads metrics.jsonl (the history); only process 0 writes it
        metrics_log = MetricsLog(workdir) if is_main_process() else None
        if checkpoints.latest_step() is not None:
            state, meta = checkpoints.restore(state)
            log.info(
                "resumed from the checkpoint at step %d (epoch %d, batch %d)",
                int(state.step),
                meta["epoch"] + 1,
                meta["batch_in_epoch"],
            )
            if metrics_log is not None:
                metrics_log.truncate(int(state.step))

    if metrics_log is not None:
        history = list(metrics_log.records())
    elif workdir is not None and (workdir / "metrics.jsonl").is_file():
        history = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["step"] <= int(state.step)]
    else:
        history = []
    run_start = time.perf_counter() - meta["wall_time"]

    def save(state: TrainState, **position) -> None:
        if checkpoints is None:
            return
        trainer.train_summary(state)  # never checkpoint a non-finite state
        trainer.check_finite_params(state)
        meta.update(position, wall_time=time.perf_counter() - run_start)
        step = int(jax.device_get(state.step))
        checkpoints.save(step, state, meta)

    every = t["checkpoint_every_steps"]

    def on_step(state: TrainState, done: int) -> None:
        step = epoch * trainer.steps_per_epoch + done  # known on the host: no device sync
        if every and done < trainer.steps_per_epoch and step % every == 0:
            save(state, epoch=epoch, batch_in_epoch=done)

    epoch = meta["epoch"]
    try:
        while epoch < t["num_epochs"] and not meta["stopped_early"]:
            state = trainer.run_epoch(
                state,
                epoch,
                start=meta["batch_in_epoch"],
                on_step=on_step if every and checkpoints else None,
                progress=t["progress_bar"],
            )
            train = trainer.train_summary(state)
            val = trainer.evaluate(state.variables(), data.validation)
            step = int(jax.device_get(state.step))
            record = {
                "epoch": epoch + 1,
                "step": step,
                "wall_time": time.perf_counter() - run_start,
                "learning_rate": float(trainer.schedule(max(step - 1, 0))),
                **train,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "train_unk_ratio": float(data.train.unk.ratio),
                "val_unk_ratio": float(data.validation.unk.ratio),
            }
            history.append(record)
            if metrics_log is not None:
                metrics_log.write(record)
            log.info(
                "epoch %d step %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro F1 "
                "%.4f | %.1f s",
                epoch + 1,
                step,
                train["train_loss"],
                train["train_accuracy"],
                val["loss"],
                val["accuracy"],
                val["macro_f1"],
                record["wall_time"],
            )
            best = meta["best"]
            if best is None or val[select] > best[select]:
                meta["best"] = {
                    "epoch": epoch + 1,
                    "step": step,
                    **{k: val[k] for k in ("loss", "accuracy", "macro_f1", "unk_ratio")},
                    "precision": val["precision"],
                    "recall": val["recall"],
                    "f1": val["f1"],
                    "confusion_matrix": val["confusion_matrix"],
                }
                meta["bad_epochs"] = 0
                if checkpoints is not None:
                    checkpoints.save_best(step, state.variables(), meta["best"])
                else:
                    best_variables = _snapshot(state.variables())
            else:
                meta["bad_epochs"] += 1
            epoch += 1
            stop = bool(t["patience"]) and meta["bad_epochs"] >= t["patience"]
            if stop and epoch < t["num_epochs"]:
                log.info(
                    "early stopping: no better validation %s for %d epochs (best: epoch %d)",
                    select,
                    meta["bad_epochs"],
                    meta["best"]["epoch"],
                )
                meta["stopped_early"] = True
            save(state, epoch=epoch, batch_in_epoch=0)
            meta["batch_in_epoch"] = 0
    except NonFiniteLossError as err:
        where = (
            f"; the last good checkpoint (step {checkpoints.latest_step()}) in "
            f"{checkpoints.latest_dir} is intact"
            if checkpoints is not None and checkpoints.latest_step() is not None
            else ""
        )
        raise NonFiniteLossError(
            f"training stopped: loss is not finite at step {err.step} (epoch {epoch + 1}){where}",
            err.step,
        ) from None
    finally:
        if metrics_log is not None:
            metrics_log.close()
    if checkpoints is not None:
        checkpoints.close()
    return FitResult(
        history=history,
        best=meta["best"],
        best_variables=best_variables,
        state=state,
        stopped_early=meta["stopped_early"],
        trainer=trainer,
        info={"wall_time": meta["wall_time"], "epochs_run": epoch},
    )


def best_variables(result: FitResult, workdir: str | Path | None) -> Any:
    """The best epoch's variables, from memory or from the workdir's best checkpoint."""
    if result.best_variables is not None:
        return result.best_variables
    if workdir is None:
        raise ValueError("no best variables in memory and no workdir to read them from")
    checkpoints = Checkpoints(workdir)
    try:
        variables, _ = checkpoints.restore_best(result.state.variables())
    finally:
        checkpoints.close()
    return variables


# ----------------------------------------------------------------------------------------------
# train_and_evaluate: the whole run
# ----------------------------------------------------------------------------------------------


def prepare_workdir(config: Mapping[str, Any], workdir: str | Path, *, overwrite: bool) -> Path:
    """Create ``workdir`` with config.json; refuse one holding a different config."""
    workdir = Path(workdir)
    saved_path = workdir / "config.json"
    wanted = config_to_dict(config)
    if overwrite and workdir.exists():
        log.info("overwrite: removing %s", workdir)
        shutil.rmtree(workdir)
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if _results_config(saved) != _results_config(wanted):
            diffs = _diff(_results_config(saved), _results_config(wanted))
            raise ConfigMismatchError(
                f"workdir {workdir} holds a run with a different config ({'; '.join(diffs[:5])}"
                f"{' ...' if len(diffs) > 5 else ''}); use another --workdir, or --overwrite to "
                "start over"
            )
    elif workdir.exists() and any(workdir.iterdir()):
        raise ConfigMismatchError(
            f"workdir {workdir} is not empty and has no config.json; use another --workdir, or "
            "--overwrite to start over"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(saved_path, wanted)
    return workdir


# Keys that change speed, not what is computed: a resumed run may differ in them (and a workdir
# written before a key existed resumes). The CPU vector width can change the rounding of
# vectorized reductions (jaxnn.cpu_vector_width), so only a run resumed under the same width
# ends bitwise equal to an uninterrupted one.
SPEED_ONLY_KEYS = (
    ("train", "host_allocator"),
    ("train", "cpu_vector_width"),
    ("train", "cpu_devices"),
)


def _results_config(config: Mapping) -> dict:
    """``config`` without `SPEED_ONLY_KEYS`, for comparing a saved run with a requested one."""
    out = {
        section: dict(values) if isinstance(values, Mapping) else values
        for section, values in config.items()
    }
    for section, key in SPEED_ONLY_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _diff(saved: Mapping, wanted: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, requested {b!r}")
    return out


def train_and_evaluate(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``config`` into ``workdir`` and evaluate its best checkpoint on the test split once.

    Runs again on the same workdir resume; a finished run returns its results.json unchanged.

    Returns:
      The results dict written to results.json: {"test": {...}, "val": {...}, "best_epoch",
      "epochs_run", "stopped_early", "wall_time_s", "devices", ...}.
    """
    start = time.perf_counter()
    cfg = validate_config(config)  # before any data or compile
    mesh = mesh_from_config(cfg)  # fsdp and batch sizes must fit the devices, before any data
    main = is_main_process()
    refused = None
    if main:  # one process creates (or clears) the shared workdir; the others wait for it
        try:
            workdir = prepare_workdir(cfg, workdir, overwrite=overwrite)
        except ConfigMismatchError as err:
            refused = err
    _sync("jaxnn_prepare_workdir")
    if refused is not None:
        raise refused
    workdir = Path(workdir)
    if not main:
        saved = workdir / "config.json"
        if not saved.is_file() or _results_config(
            json.loads(saved.read_text("utf-8"))
        ) != _results_config(config_to_dict(cfg)):
            raise ConfigMismatchError(
                f"process {jax.process_index()}: {saved} does not hold this run's config (process "
                "0 refused the workdir, or the workdir is not on a filesystem all hosts share)"
            )
    results_path = workdir / "results.json"
    if results_path.is_file():
        log.info("%s is complete; results from %s", workdir, results_path)
        return json.loads(results_path.read_text(encoding="utf-8"))
    data = load_data(cfg)
    if main:
        data.vocab.save(workdir / "vocab.json")
    result = fit(cfg, data, workdir, mesh=mesh)
    trainer = result.trainer
    _sync("jaxnn_fit_done")
    records = read_jsonl(workdir / "metrics.jsonl")
    if records and main:
        plot_learning_curves(records, workdir / "learning_curves.png", title=f"{data.name}")
    variables = best_variables(result, workdir)
    test_split = load_test(cfg, data)
    test = trainer.evaluate(variables, test_split)
    log.info(
        "test (best epoch %d): accuracy %.4f, macro F1 %.4f, unknown-word ratio %.2f%%",
        result.best["epoch"],
        test["accuracy"],
        test["macro_f1"],
        100 * test["unk_ratio"],
    )
    results = {
        "test": test,
        "val": result.best,
        "best_epoch": result.best["epoch"],
        "epochs_run": result.info["epochs_run"],
        "stopped_early": result.stopped_early,
        "train_wall_time_s": result.info["wall_time"],
        "wall_time_s": time.perf_counter() - start,
        "devices": describe_mesh(trainer.mesh),
        "corpus": data.name,
        "label_names": list(data.label_names),
        "num_examples": {
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(test_split),
        },
        "history": records,
    }
    tokenized = tokenized_per_process(
        {"train": data.train, "validation": data.validation, "test": test_split}
    )
    if tokenized:  # several processes: what each tokenized (one process: every text)
        results["tokenized_per_process"] = tokenized
        log.info("texts tokenized per process: %s", tokenized)
    if main:
        write_json(results_path, results)
    _sync("jaxnn_results")
    return results
