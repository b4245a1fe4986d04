"""The trainer: train state, optimizer and jitted steps of one config, and the per-epoch loop.

    build_steps(config, model, ...)   -> Steps      optimizer + jitted train/eval steps
    init_train_state(...)             -> TrainState fresh parameters, laid out on the mesh
    Trainer(config, data)                           model, mesh, steps; run_epoch, evaluate

`jaxnn.train.loop.fit` drives a Trainer through epochs; the tuner builds one per trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxnn.data.batches import BatchIterator, default_buckets, eval_batches, prefetch
from jaxnn.data.per_process import process_batch
from jaxnn.data.prepare import EncodedSplit, Prepared
from jaxnn.data.sharded import ShardedSplit
from jaxnn.metrics import accuracy, macro_f1, precision_recall_f1
from jaxnn.models import get_model, supports_sparse_embeddings
from jaxnn.train.config import validate_config, weight_decay_mode
from jaxnn.train.distributed import (
    batch_sharding,
    check_divisible,
    local_rows,
    make_mesh,
    replicated,
    shard_batch,
    state_sharding,
    under_mesh,
    waits_for_each_call,
)
from jaxnn.train.errors import NonFiniteLossError
from jaxnn.train.optim import make_optimizer, make_schedule
from jaxnn.train.precision import DynamicLossScale, all_finite, uses_loss_scale
from jaxnn.train.state import NO_NONFINITE, TrainState, zero_train_metrics
from jaxnn.train.step import make_eval_step, make_train_step, zero_eval_metrics

_all_finite = jax.jit(all_finite)

__all__ = [
    "LogWindow",
    "Steps",
    "Trainer",
    "build_steps",
    "fresh_state",
    "init_train_state",
    "mesh_from_config",
    "metrics_from_confusion",
    "snapshot",
    "training_batches",
]

log = logging.getLogger("jaxnn.train")


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


@dataclass(frozen=True)
class Steps:
    """The optimizer and the jitted steps of one config and model (see `build_steps`).

    ``state_sharding`` is the `TrainState` of `NamedSharding`s the steps take and return
    (replicated, or FSDP-split leaves with ``mesh.fsdp > 1``); ``init`` builds a fresh state.
    """

    schedule: Any
    tx: Any
    train_step: Callable
    eval_step: Callable
    state_sharding: Any = None
    init: Callable | None = None


def fresh_state(
    config: Mapping[str, Any], model: Any, tx: Any, key: jax.Array, length: int
) -> TrainState:
    """A new `TrainState`: parameters drawn from ``key``'s first split (the dropout stream gets
    the second), ``tx``'s fresh optimizer state, and a dynamic loss scale for float16.

    ``length`` is the token length of the dummy batch whose shapes give the parameter shapes
    (they do not depend on it). Shared by `build_steps` and the tuner's vmapped trials.
    """
    init_key, dropout_key = jax.random.split(key)
    optim = config["optim"]
    tokens = jnp.zeros((1, length), jnp.int32)
    variables = model.init(init_key, tokens, jnp.ones((1, length), bool), train=False)
    params = variables["params"]
    loss_scale = None
    if uses_loss_scale(config["model"]["dtype"]):
        loss_scale = DynamicLossScale.create(
            optim["initial_loss_scale"], period=optim["loss_scale_period"]
        )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=dropout_key,
        metrics=zero_train_metrics(),
        loss_scale=loss_scale,
    )


def _make_init(config: Mapping[str, Any], model: Any, tx: Any) -> Callable[[int], TrainState]:
    """``init(length) -> TrainState``: `fresh_state` from key(config.seed)."""
    key = jax.random.PRNGKey(config["seed"])
    return lambda length: fresh_state(config, model, tx, key, length)


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
    tables = ()
    if optim["sparse_embeddings"] and not supports_sparse_embeddings(model):
        log.info(
            "%s has no sparse-embedding interface (jaxnn.models.registry): dense updates",
            type(model).__name__,
        )
    elif optim["sparse_embeddings"]:
        tables = model.table_names()
    tx = make_optimizer(optim, total_steps, tables=tables)
    l2 = weight_decay_mode(optim) == "l2" and optim["weight_decay"] > 0
    rep, bat = replicated(mesh), batch_sharding(mesh)
    init = _make_init(config, model, tx)
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
    # several CPU devices of one process (jaxnn.launch.cpu_devices): each step waits for its result,
    # or XLA's in-process all-reduce can deadlock (waits_for_each_call)
    train_step, eval_step = (waits_for_each_call(f, mesh) for f in (train_step, eval_step))
    return Steps(schedule, tx, train_step, eval_step, shardings, init)


def init_train_state(
    config: Mapping[str, Any], model: Any, steps: Steps, mesh: jax.sharding.Mesh, length: int
) -> TrainState:
    """Parameters from key(seed) and a fresh optimizer state, laid out on ``mesh`` as the steps
    expect (``steps.state_sharding``: replicated, or FSDP-split)."""
    init = steps.init or _make_init(config, model, steps.tx)
    shardings = steps.state_sharding
    if shardings is None:
        shardings = state_sharding(jax.eval_shape(lambda: init(length)), mesh)
    return jax.block_until_ready(jax.jit(lambda: init(length), out_shardings=shardings)())


def training_batches(
    config: Mapping[str, Any], data: Prepared
) -> tuple[tuple[int, ...], BatchIterator, int]:
    """(length buckets, the shuffled training batches, steps per epoch) of a run: whole batches
    only (``remainder="drop"``), reshuffled from (seed, epoch), grouped by length within pools;
    ``train.max_steps_per_epoch`` (when set) caps the steps. Shared by `Trainer` and the
    tuner's vmapped trials, so both walk the same batches."""
    d, t = config["data"], config["train"]
    buckets = default_buckets(data.max_len, min(d["smallest_bucket"], data.max_len))
    batches = BatchIterator(
        data.train,
        batch_size=t["batch_size"],
        shuffle=True,
        seed=config["seed"],
        remainder="drop",
        buckets=buckets,
        sort_pool=d["sort_pool"],
    )
    full = batches.num_batches()
    steps = min(full, t["max_steps_per_epoch"]) if t["max_steps_per_epoch"] else full
    return buckets, batches, steps


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
        validated: bool = False,
    ):
        """``validated=True``: ``config`` is already `validate_config`'s result and ``mesh`` is
        `mesh_from_config`'s (how `fit` passes them, so each runs once per run)."""
        if validated and mesh is None:
            raise ValueError("Trainer(validated=True) needs the mesh of mesh_from_config")
        self.config = cfg = config if validated else validate_config(config)
        self.data = data
        self.mesh = mesh if validated else mesh_from_config(cfg, mesh)
        self.num_classes = data.num_classes
        self.model = get_model(cfg, vocab_size=len(data.vocab), num_classes=self.num_classes)
        t = cfg["train"]
        self.buckets, self.train_batches, self.steps_per_epoch = training_batches(cfg, data)
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
        self.schedule, self.tx = steps.schedule, steps.tx
        self.train_step, self.eval_step = steps.train_step, steps.eval_step

    # --- state ---------------------------------------------------------------------------------
    def init_state(self) -> TrainState:
        """Fresh parameters and optimizer state from ``config.seed``, replicated on the mesh."""
        return init_train_state(self.config, self.model, self.steps, self.mesh, self.buckets[0])

    def reset_metrics(self, state: TrainState) -> TrainState:
        metrics = jax.jit(zero_train_metrics, out_shardings=replicated(self.mesh))()
        return state.replace(metrics=metrics)

    # --- training ------------------------------------------------------------------------------
    def _host_batches(self, batches: BatchIterator, order: Any) -> Iterator[dict[str, np.ndarray]]:
        rows = local_rows(batches.batch_size, self.mesh)
        return (process_batch(batches, index, rows) for index in order)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Sharded batches ``start..steps_per_epoch-1`` of ``epoch``, built ahead on a thread
        (closing the iterator stops and joins that thread).

        Each process builds only its rows of every global batch (`process_batch`)."""
        order = self.train_batches.order(epoch)[start : self.steps_per_epoch]
        host = self._host_batches(self.train_batches, order)
        return prefetch(host, self.config["data"]["prefetch"], lambda b: shard_batch(b, self.mesh))

    def train_sums(self, state: TrainState) -> dict[str, float]:
        """The epoch's running sums on the host (one host sync); raises on a non-finite loss."""
        metrics = jax.device_get(state.metrics)
        bad = int(metrics["nonfinite_step"])
        if bad != NO_NONFINITE:
            raise NonFiniteLossError(f"training loss is not finite at step {bad}", bad)
        return {k: float(metrics[k]) for k in ("loss_sum", "weight", "correct")}

    def train_summary(self, state: TrainState) -> dict[str, float]:
        """The epoch's running means (one host sync); raises on a non-finite loss."""
        sums = self.train_sums(state)
        weight = max(sums["weight"], 1.0)
        return {
            "train_loss": sums["loss_sum"] / weight,
            "train_accuracy": sums["correct"] / weight,
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
        on_log: Callable[[dict[str, float]], None] | None = None,
        window: LogWindow | None = None,
        progress: bool = False,
    ) -> TrainState:
        """Steps ``start..`` of ``epoch``; ``on_step(state, batches_done)`` after each step.

        Every ``train.log_every_steps`` global steps (and only then: one host sync) the running
        sums are read, checked finite, and ``on_log(record)`` receives the training record of
        the steps since the previous logging step (`LogWindow.record`). ``window`` holds the
        sums at that previous logging step (None: a fresh window at ``start``); it is updated in
        place, so a caller can save it with its checkpoint and resume the same windows.
        """
        if start == 0:
            state = self.reset_metrics(state)
        if window is None or start == 0:
            window = LogWindow() if window is None else window.reset()
        log_every = self.config["train"]["log_every_steps"]
        batch_size = self.config["train"]["batch_size"]
        order = self.train_batches.order(epoch)[start : self.steps_per_epoch]
        lengths = self.train_batches.lengths
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}",
            unit="step",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        window.start_timer()
        done = start
        batches = self.batches(epoch, start)
        try:
            for index, batch in zip(order, batches, strict=True):
                state = self.train_step(state, batch)
                done += 1
                bar.update(1)
                window.count(batch_size, int(lengths[index].sum()))
                step = epoch * self.steps_per_epoch + done  # known on the host: no device sync
                if step % log_every == 0:
                    sums = self.train_sums(state)  # the one host sync + finite check
                    record = window.record(sums, step=step, epoch=epoch + 1)
                    record["learning_rate"] = float(self.schedule(step - 1))
                    bar.set_postfix(
                        loss=f"{record['train_loss']:.4f}",
                        ex_per_s=f"{record['examples_per_s']:.0f}",
                    )
                    if on_log is not None:
                        on_log(record)
                if on_step is not None:
                    on_step(state, done)
        finally:
            batches.close()  # stops and joins the prefetch thread, on every path
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
        host = self._host_batches(batches, batches.order(0))
        sharded = prefetch(host, 2, lambda b: shard_batch(b, self.mesh))
        try:
            for batch in sharded:
                sums = self.eval_step(variables, sums, batch)
        finally:
            sharded.close()
        sums = jax.device_get(sums)
        return metrics_from_confusion(sums, split)


@dataclass
class LogWindow:
    """The training sums at the previous logging step, and what was fed since then.

    The loss of a logging record is that of the steps since the previous one:
    (loss_sum_now - loss_sum) / (weight_now - weight), from the state's running sums, so it is
    the same whether or not the run was resumed in between (the window is saved with each
    checkpoint, `as_dict` / `from_dict`). Throughput (examples/s, tokens/s) is wall-clock.
    """

    loss_sum: float = 0.0
    weight: float = 0.0
    correct: float = 0.0
    examples: int = 0
    tokens: int = 0
    started: float = 0.0

    def reset(self) -> LogWindow:
        self.loss_sum = self.weight = self.correct = 0.0
        self.examples = self.tokens = 0
        return self

    def start_timer(self) -> None:
        self.started, self.examples, self.tokens = time.perf_counter(), 0, 0

    def count(self, examples: int, tokens: int) -> None:
        self.examples += examples
        self.tokens += tokens

    def record(self, sums: Mapping[str, float], *, step: int, epoch: int) -> dict[str, Any]:
        """The record of the steps since the previous logging step; starts the next window."""
        now = time.perf_counter()
        seconds = max(now - self.started, 1e-9)
        weight = sums["weight"] - self.weight
        record = {
            "kind": "step",
            "step": step,
            "epoch": epoch,
            "train_loss": (sums["loss_sum"] - self.loss_sum) / max(weight, 1.0),
            "train_accuracy": (sums["correct"] - self.correct) / max(weight, 1.0),
            "examples_per_s": self.examples / seconds,
            "tokens_per_s": self.tokens / seconds,
        }
        self.loss_sum, self.weight, self.correct = sums["loss_sum"], sums["weight"], sums["correct"]
        self.started, self.examples, self.tokens = now, 0, 0
        return record

    def as_dict(self) -> dict[str, float]:
        return {"loss_sum": self.loss_sum, "weight": self.weight, "correct": self.correct}

    @classmethod
    def from_dict(cls, values: Mapping[str, float] | None) -> LogWindow:
        values = values or {}
        return cls(**{k: float(values.get(k, 0.0)) for k in ("loss_sum", "weight", "correct")})


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


def snapshot(tree: Any) -> Any:
    """A copy that survives the donation of ``tree`` to the next step: host NumPy arrays when
    this process holds every element, else device copies with the same sharding."""

    def copy(x):
        if x.is_fully_addressable:
            return np.array(x, copy=True)
        return jax.jit(jnp.copy, out_shardings=x.sharding)(x)

    return jax.tree.map(copy, tree)
