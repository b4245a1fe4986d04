"""The training loop, top to bottom: data -> model -> jitted steps -> epochs -> best -> test once.

    train_and_evaluate(config, workdir)        the whole run (what train.py calls)
      validate_config, mesh_from_config        bad input fails here, before data or compile
      lock the workdir, check its config       (jaxnn.train.workdir)
      data    = load_data(config)              vocabulary from train only; test split untouched
      check the splits and the data's          nothing in the workdir is written before this
      fingerprint, write the run files
      fitted  = fit(config, data, workdir)     epochs, validation each epoch, early stopping on
                                               the validation metric, latest + best checkpoints,
                                               resume from the newest readable checkpoint
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

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxnn.data import errors as data_errors
from jaxnn.data.prepare import EncodedSplit, Prepared, prepare, prepare_test
from jaxnn.data.sharded import ShardedSplit
from jaxnn.train import workdir as workdir_lib
from jaxnn.train.checkpoint import Checkpoints
from jaxnn.train.config import config_to_dict, corpus_options, validate_config
from jaxnn.train.distributed import describe_mesh, process_group
from jaxnn.train.errors import (
    ConfigMismatchError,
    DataError,
    NonFiniteLossError,
    RunError,
    environment_failure,
)
from jaxnn.train.logs import (
    MetricsLog,
    epoch_records,
    plot_learning_curves,
    progress_logging,
    read_jsonl,
    write_json,
)
from jaxnn.train.state import TrainState
from jaxnn.train.trainer import LogWindow, Trainer, mesh_from_config, snapshot

__all__ = [
    "FitResult",
    "best_variables",
    "fit",
    "load_data",
    "load_test",
    "train_and_evaluate",
]

log = logging.getLogger("jaxnn.train")


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
        **corpus_options(d),
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
        **corpus_options(d),
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


def is_main_process() -> bool:
    """Process 0 writes logs, plots and results (every process writes its checkpoint shards)."""
    return jax.process_index() == 0


def _sync(name: str) -> None:
    """Barrier across processes (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------
# fit: epochs, validation, early stopping, checkpoints, resume
# ----------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
      history: one record per epoch (the epoch lines of metrics.jsonl).
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


def _fresh_meta() -> dict[str, Any]:
    """The loop's position, saved as JSON with every checkpoint."""
    return {
        "epoch": 0,
        "batch_in_epoch": 0,
        "best": None,
        "bad_epochs": 0,
        "stopped_early": False,
        "wall_time": 0.0,
        "log_window": None,
    }


@dataclass
class _Run:
    """What one `fit` call carries between its helpers."""

    trainer: Trainer
    data: Prepared
    checkpoints: Checkpoints | None
    metrics_log: MetricsLog | None
    meta: dict
    history: list[dict]
    window: LogWindow
    run_start: float = 0.0
    best_variables: Any = None

    @property
    def train(self) -> Mapping[str, Any]:
        return self.trainer.config["train"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.run_start


def _open_workdir(workdir: Path | None, trainer: Trainer) -> tuple[Checkpoints | None, Any]:
    if workdir is None:
        return None, None
    main = is_main_process()
    checkpoints = Checkpoints(
        workdir, keep=trainer.config["train"]["keep_checkpoints"], writer=main
    )
    # every process reads metrics.jsonl (the history); only process 0 writes it
    try:
        metrics_log = MetricsLog(workdir) if main else None
    except Exception:
        checkpoints.close()
        raise
    return checkpoints, metrics_log


def _resume(run: _Run, state: TrainState, workdir: Path | None) -> TrainState:
    """The newest readable checkpoint's state and position (or ``state``); truncates the
    metrics log to it; rewrites the best checkpoint if a kill came between the two saves."""
    checkpoints = run.checkpoints
    restored = None if checkpoints is None else checkpoints.restore_newest_readable(state)
    if restored is not None:
        state, meta = restored
        run.meta.update(meta)
        step = int(state.step)
        log.info(
            "resumed from the checkpoint at step %d (epoch %d, batch %d)",
            step,
            run.meta["epoch"] + 1,
            run.meta["batch_in_epoch"],
        )
        if run.metrics_log is not None:
            run.metrics_log.truncate(step)
        best = run.meta["best"]
        if best is not None and best["step"] == step and step not in checkpoints.best_steps():
            log.info("writing the best checkpoint (step %d) an interrupted run missed", step)
            checkpoints.save_best(step, state.variables(), best)
    elif run.metrics_log is not None:  # killed before the first checkpoint: start afresh
        run.metrics_log.truncate(0)
    run.window = LogWindow.from_dict(run.meta.get("log_window"))
    if run.metrics_log is not None:
        run.history = epoch_records(run.metrics_log.records())
    elif workdir is not None and (workdir / "metrics.jsonl").is_file():
        step = int(state.step)
        run.history = [
            r for r in epoch_records(read_jsonl(workdir / "metrics.jsonl")) if r["step"] <= step
        ]
    run.run_start = time.perf_counter() - run.meta["wall_time"]
    return state


def _save(run: _Run, state: TrainState, **position: int) -> None:
    """Checkpoint ``state`` with the loop's position (never a non-finite state)."""
    if run.checkpoints is None:
        return
    run.trainer.train_summary(state)
    run.trainer.check_finite_params(state)
    run.meta.update(position, wall_time=run.elapsed(), log_window=run.window.as_dict())
    run.checkpoints.save(int(jax.device_get(state.step)), state, run.meta)


def _log_step(run: _Run, record: dict[str, Any]) -> None:
    record["wall_time"] = run.elapsed()
    if run.metrics_log is not None:
        run.metrics_log.write(record)


def _epoch_record(run: _Run, state: TrainState, epoch: int, val: Mapping[str, Any]) -> dict:
    train = run.trainer.train_summary(state)
    step = int(jax.device_get(state.step))
    record = {
        "kind": "epoch",
        "epoch": epoch + 1,
        "step": step,
        "wall_time": run.elapsed(),
        "learning_rate": float(run.trainer.schedule(max(step - 1, 0))),
        **train,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "train_unk_ratio": float(run.data.train.unk.ratio),
        "val_unk_ratio": float(run.data.validation.unk.ratio),
    }
    run.history.append(record)
    if run.metrics_log is not None:
        run.metrics_log.write(record)
    log.info(
        "epoch %d step %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro F1 %.4f | "
        "%.1f s",
        epoch + 1,
        step,
        train["train_loss"],
        train["train_accuracy"],
        val["loss"],
        val["accuracy"],
        val["macro_f1"],
        record["wall_time"],
    )
    return record


def _is_better(run: _Run, val: Mapping[str, Any]) -> bool:
    select = run.train["select_metric"]
    best = run.meta["best"]
    return best is None or val[select] > best[select]


def _end_of_epoch(run: _Run, state: TrainState, epoch: int, val: Mapping[str, Any]) -> None:
    """Best and early-stopping bookkeeping, then the latest checkpoint, then the best copy (a
    kill between the two is repaired on resume: `_resume`)."""
    step = _epoch_record(run, state, epoch, val)["step"]
    improved = _is_better(run, val)
    if improved:
        keys = ("loss", "accuracy", "macro_f1", "unk_ratio", "precision", "recall", "f1")
        run.meta["best"] = {
            "epoch": epoch + 1,
            "step": step,
            **{k: val[k] for k in keys},
            "confusion_matrix": val["confusion_matrix"],
        }
        run.meta["bad_epochs"] = 0
        if run.checkpoints is None:
            run.best_variables = snapshot(state.variables())
    else:
        run.meta["bad_epochs"] += 1
    patience = run.train["patience"]
    if patience and run.meta["bad_epochs"] >= patience and epoch + 1 < run.train["num_epochs"]:
        log.info(
            "early stopping: no better validation %s for %d epochs (best: epoch %d)",
            run.train["select_metric"],
            run.meta["bad_epochs"],
            run.meta["best"]["epoch"],
        )
        run.meta["stopped_early"] = True
    _save(run, state, epoch=epoch + 1, batch_in_epoch=0)
    if improved and run.checkpoints is not None:
        run.checkpoints.save_best(step, state.variables(), run.meta["best"])
    run.meta["batch_in_epoch"] = 0


def _nonfinite(err: NonFiniteLossError, run: _Run, epoch: int) -> NonFiniteLossError:
    """The message names the failing update and the step of the last good checkpoint without
    reusing one number for both (the checkpoint of step N holds the state after N updates)."""
    where = ""
    checkpoints = run.checkpoints
    if checkpoints is not None and checkpoints.latest_step() is not None:
        good = checkpoints.latest_step()
        where = (
            f"; the last good checkpoint, {checkpoints.latest_dir / str(good)}, holds the state "
            f"after {good} updates, before the failing one, and is intact"
        )
    return NonFiniteLossError(
        f"training stopped: loss is not finite in update {err.step + 1} (step index {err.step}, "
        f"epoch {epoch + 1}){where}; lower optim.learning_rate or enable clipping",
        err.step,
    )


def _train_epochs(run: _Run, state: TrainState) -> TrainState:
    trainer, every = run.trainer, run.train["checkpoint_every_steps"]
    epoch = run.meta["epoch"]

    def on_step(state: TrainState, done: int) -> None:
        step = epoch * trainer.steps_per_epoch + done  # known on the host: no device sync
        if done < trainer.steps_per_epoch and step % every == 0:
            _save(run, state, epoch=epoch, batch_in_epoch=done)

    try:
        while epoch < run.train["num_epochs"] and not run.meta["stopped_early"]:
            state = trainer.run_epoch(
                state,
                epoch,
                start=run.meta["batch_in_epoch"],
                on_step=on_step if every and run.checkpoints else None,
                on_log=lambda record: _log_step(run, record),
                window=run.window,
                progress=run.train["progress_bar"],
            )
            val = trainer.evaluate(state.variables(), run.data.validation)
            _end_of_epoch(run, state, epoch, val)
            epoch += 1
    except NonFiniteLossError as err:
        raise _nonfinite(err, run, epoch) from None
    run.meta["epochs_run"] = epoch
    if run.checkpoints is not None and run.meta["best"] is not None:
        run.checkpoints.keep_only_best(run.meta["best"]["step"])
    return state


def fit(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    data: Prepared | None = None,
    workdir: str | Path | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    trainer: Trainer | None = None,
    validated: bool = False,
) -> FitResult:
    """Train with validation every epoch and early stopping; never touches the test split.

    With a ``workdir`` it writes metrics.jsonl (per-epoch records and, every
    ``train.log_every_steps``, per-step training records), TensorBoard events and checkpoints
    there and resumes from the newest readable checkpoint it finds; without one it writes
    nothing and keeps the best parameters in memory. ``validated=True``: ``config`` is already
    `validate_config`'s result and ``mesh`` `mesh_from_config`'s (neither is run again).
    `fit` takes no workdir lock and writes no config.json: `train_and_evaluate` does both.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (no checkpoint is written after that step).
      EnvironmentFailure: a checkpoint could not be written (disk full, permission).
    On every path the checkpoint managers, the metrics log and the prefetch threads are closed.
    """
    cfg = config if validated else validate_config(config)
    if trainer is None and not validated:  # before any data: fsdp and batch sizes fit devices
        mesh = mesh_from_config(cfg, mesh)
    if data is None:
        data = load_data(cfg)
    trainer = trainer or Trainer(cfg, data, mesh=mesh, validated=True)
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

    workdir = None if workdir is None else Path(workdir)
    checkpoints, metrics_log = _open_workdir(workdir, trainer)
    run = _Run(trainer, data, checkpoints, metrics_log, _fresh_meta(), [], LogWindow())
    try:
        state = _resume(run, state, workdir)
        state = _train_epochs(run, state)
    finally:
        if metrics_log is not None:
            metrics_log.close()
        if checkpoints is not None:
            checkpoints.close()
    return FitResult(
        history=run.history,
        best=run.meta["best"],
        best_variables=run.best_variables,
        state=state,
        stopped_early=run.meta["stopped_early"],
        trainer=trainer,
        info={"wall_time": run.meta["wall_time"], "epochs_run": run.meta["epochs_run"]},
    )


def best_variables(result: FitResult, workdir: str | Path | None) -> Any:
    """The best epoch's variables, from memory or from the workdir's best checkpoint (the step
    ``result.best["step"]`` names)."""
    if result.best_variables is not None:
        return result.best_variables
    if workdir is None:
        raise ValueError("no best variables in memory and no workdir to read them from")
    with Checkpoints(workdir, writer=False) as checkpoints:
        step = result.best["step"] if result.best else None
        variables, _ = checkpoints.restore_best(result.state.variables(), step=step)
    return variables


# ----------------------------------------------------------------------------------------------
# train_and_evaluate: the whole run
# ----------------------------------------------------------------------------------------------


def _check_workdir(cfg: Mapping[str, Any], workdir: Path, *, overwrite: bool) -> Exception | None:
    """Process 0, under the lock: clear the workdir (``overwrite``), then the refusal of a
    workdir holding another config (or None). Writes nothing else."""
    if overwrite:
        workdir_lib.clear_workdir(workdir)
    try:
        workdir_lib.check_config(cfg, workdir)
    except ConfigMismatchError as err:
        return err
    return None


def _read_data(cfg: Mapping[str, Any]) -> Prepared:
    """`load_data`, its failures as `DataError` (bad input, exit 2) or `EnvironmentFailure`
    (no space or permission, exit 1), naming the corpus."""
    corpus = cfg["data"]["corpus"]
    try:
        return load_data(cfg)
    except RunError:
        raise
    except data_errors.DataError as err:  # already names the file: keep its message and code
        failure = DataError(str(err), err.path or corpus)
        failure.exit_code = err.exit_code
        raise failure from err
    except OSError as err:
        failure = environment_failure(err, corpus, "reading the data of")
        if failure is not None:
            raise failure from err
        if not isinstance(err, FileNotFoundError):
            raise
        raise DataError(f"data.corpus={corpus!r}: {err}", corpus) from err
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(
            f"data.corpus={corpus!r} cannot be used: {err}; fix the data file or the data options",
            corpus,
        ) from err


def _start(cfg: Mapping[str, Any], workdir: Path, main: bool) -> Prepared:
    """Read and check the data, then (process 0) check and write the run files."""
    data = _read_data(cfg)
    workdir_lib.check_splits(data)
    refused = None
    if main:
        fingerprint = workdir_lib.data_fingerprint(cfg, data)
        try:
            workdir_lib.check_data(fingerprint, workdir)
            workdir_lib.write_run_files(cfg, workdir, fingerprint, data.vocab)
        except Exception as err:
            refused = err
    _sync("jaxnn_run_files")
    if refused is not None:
        raise refused
    if not main:
        saved = workdir / "config.json"
        if not saved.is_file() or workdir_lib.results_config(
            json.loads(saved.read_text("utf-8"))
        ) != workdir_lib.results_config(config_to_dict(cfg)):
            raise ConfigMismatchError(
                f"process {jax.process_index()}: {saved} does not hold this run's config (process "
                "0 refused the workdir, or the workdir is not on a filesystem all hosts share)",
                saved,
            )
    return data


def _evaluate_and_write(
    cfg: Mapping[str, Any], workdir: Path, data: Prepared, result: FitResult, start: float
) -> dict[str, Any]:
    main, trainer = is_main_process(), result.trainer
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
        "history": epoch_records(records),
    }
    tokenized = tokenized_per_process(
        {"train": data.train, "validation": data.validation, "test": test_split}
    )
    if tokenized:  # several processes: what each tokenized (one process: every text)
        results["tokenized_per_process"] = tokenized
        log.info("texts tokenized per process: %s", tokenized)
    if main:
        try:
            write_json(workdir / "results.json", results)
        except OSError as err:
            failure = environment_failure(err, workdir / "results.json", "writing")
            if failure is None:
                raise
            raise failure from err
    return results


def train_and_evaluate(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train ``config`` into ``workdir`` and evaluate its best checkpoint on the test split once.

    Runs again on the same workdir resume; a finished run returns its results.json unchanged.
    Progress (data, model, one line per epoch, the test result) is logged on the "jaxnn"
    logger, shown on stderr when the caller set up no logging; orbax's and absl's INFO lines
    stay hidden unless ``verbose``.

    Returns:
      The results dict written to results.json: {"test": {...}, "val": {...}, "best_epoch",
      "epochs_run", "stopped_early", "wall_time_s", "devices", "history", ...}.

    Raises:
      jaxnn.train.errors.RunError (InputError: exit code 2, EnvironmentFailure: 1) and
      NonFiniteLossError (3); see `jaxnn.train.errors`.
    """
    start = time.perf_counter()
    cfg = validate_config(config)  # before any data or compile
    mesh = mesh_from_config(cfg)  # fsdp and batch sizes must fit the devices, before any data
    workdir, main = Path(workdir), is_main_process()
    with progress_logging(verbose=verbose):
        lock = workdir_lib.WorkdirLock(workdir) if main else contextlib.nullcontext()
        with lock:
            refused = None
            if main:  # one process creates (or clears) the shared workdir; the others wait
                refused = _check_workdir(cfg, workdir, overwrite=overwrite)
            _sync("jaxnn_prepare_workdir")
            if refused is not None:
                raise refused
            results_path = workdir / "results.json"
            if results_path.is_file():
                log.info("%s is complete; results from %s", workdir, results_path)
                return json.loads(results_path.read_text(encoding="utf-8"))
            data = _start(cfg, workdir, main)
            result = fit(cfg, data, workdir, mesh=mesh, validated=True)
            _sync("jaxnn_fit_done")
            results = _evaluate_and_write(cfg, workdir, data, result, start)
            _sync("jaxnn_results")
    return results
