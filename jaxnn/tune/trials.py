"""K trials of one config family in one program: ``jax.vmap`` of the ordinary train step.

Hyperparameters are data (jaxnn.train.optim, jaxnn.train.step): the learning rate, weight decay
and the optimizer's other constants are float32 arrays in ``opt_state.hyperparams``, and the
dropout rate is a call-time argument of the model. So K trials whose configs differ only in
those values (`VMAP_FIELDS`; `shared_signature` groups them) train together as

    states = TrainState with a leading trial axis K       (params [K, ...], opt_state [K, ...])
    step   = jax.vmap(make_train_step(model, tx, ...), in_axes=(0, batch, 0))
    states = step(states, batch, dropout_rates [K])       one jitted program, the batch shared

with no code of their own: the model, the loss, the optimizer (dense, or lazy sparse tables)
and the metrics are jaxnn.train's. Any model can be tuned this way, the transformer included.
Every trial of a group sees the same batches (one `BatchIterator`, seeded by the config's
seed); a trial's own seed gives its initial parameters and dropout key, as ``jaxnn.train``
derives them from ``config.seed``. Trials of one seed share their dropout key: the group step
then passes the step counter and key unbatched, so the uniform draws of a dropout mask are
made once for all K trials (each compares them with its own rate).

On CPU at most ``trials_per_program`` trials share a program (8, or 4 without the kept host
memory of `jaxnn.launch.TUNING_DEFAULTS`): the group, ordered by dropout rate, is cut into
chunks trained one after another (a chunk of one rate has it built into its model).
With sparse embedding tables, the distinct rows of each batch are counted on the host once per
epoch and passed to the step (``table_rows``), so the lazy optimizer touches those rows only.
A vmapped group stores those tables and their optimizer moments trial-minor, [V, K, D]
(`jaxnn.train.sparse.trial_minor_axes`, traced under `jaxnn.train.sparse.trial_minor_tables`):
the K trials' copies of a row are one contiguous slice, so the step's row gathers and scatters
read and write U slices rather than K U scattered rows, and the bag-of-words sum runs the K
trials as groups of one pass (`jaxnn.ops.embedding_bag_sum`). A chunk's rate-0 trials, first
in its order, skip that pass's mask (`jaxnn.ops.dropout.rate_free_trials`), as their sequential
runs skip it. A bag model's per-epoch evaluation reads the tables in that layout too (its bag
sums run as groups, like the step's); another model's reads a trials-first copy per epoch.
`fit` returns the variables trials-first, as always. A float16 model's tables stay
trials-first: its loss scale's per-trial skip is a select over trials-first operands.

``vmap=False`` trains the same trials one after another, each with the ordinary jitted step of
its own config (dropout rate baked into its model, as ``python train.py`` would): the
sequential reference of tests/tune/test_trials.py and benchmarks/tune.py.

A trial whose training loss becomes non-finite is marked failed at that step (its history stops
there); the others are unaffected (vmapped trials share no arithmetic).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.data import eval_batches
from jaxnn.launch.host_memory import host_allocator
from jaxnn.metrics import accuracy, macro_f1
from jaxnn.models import get_model
from jaxnn.ops import softmax
from jaxnn.ops.dropout import rate_free_trials
from jaxnn.train import sparse as sparse_lib
from jaxnn.train.config import config_to_dict, validate_config, weight_decay_mode
from jaxnn.train.optim import HYPERPARAMETERS, make_optimizer, set_hyperparams
from jaxnn.train.precision import uses_loss_scale
from jaxnn.train.state import NO_NONFINITE, zero_train_metrics
from jaxnn.train.step import make_eval_step, make_train_step, zero_eval_metrics
from jaxnn.train.trainer import fresh_state, training_batches

__all__ = ["VMAP_FIELDS", "GroupResult", "TrialGroup", "shared_signature"]

# Config fields that are arrays at run time: trials differing only in them share one program.
VMAP_FIELDS = (("optim", "learning_rate"), ("model", "dropout"), ("optim", "weight_decay"))


def shared_signature(config: Mapping) -> str:
    """The config with `VMAP_FIELDS` blanked: trials with equal signatures share one program."""
    plain = config_to_dict(config)  # a RunConfig, a ConfigDict or nested dicts
    for section, name in VMAP_FIELDS:
        plain[section][name] = None
    return json.dumps(plain, sort_keys=True)


@dataclass
class GroupResult:
    """What `TrialGroup.fit` returns (index k = trial k).

    Attributes:
      history: per trial, one dict per epoch run before any failure or early stop: epoch,
        step, train_loss, train_accuracy, val_loss, val_accuracy, val_macro_f1 (and the same
        for any other eval split, prefixed with its name).
      failure: per trial, None or the reason ("non-finite training loss at epoch e, step s").
      best_epoch: per trial, the epoch with the best validation ``train.select_metric``.
      best_variables: flax variables with a leading axis K at each trial's best epoch.
      last_variables: flax variables with a leading axis K after the last epoch.
      probs: {split: [epochs, K, N, C] predicted probabilities} when ``keep_probs``.
      wall_time_s: the whole group's wall time.
    """

    history: list[list[dict]]
    failure: list[str | None]
    best_epoch: list[int | None]
    best_variables: Any
    last_variables: Any
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time_s: float = 0.0


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def _where(mask: jax.Array, new: Any, old: Any, axes: Any = 0) -> Any:
    """Per trial, ``new`` where mask [K] else ``old`` (fresh arrays); the trial axis of each
    leaf is ``axes`` (an int for all, or a matching tree of ints)."""
    if isinstance(axes, int):
        axes = jax.tree.map(lambda _: axes, new)

    def pick(n, o, a):
        shape = [1] * n.ndim
        shape[a] = -1
        return jnp.where(mask.reshape(shape), n, o)

    return jax.tree.map(pick, new, old, axes)


def _default_trials_per_program() -> int:
    """All trials in one program off the CPU (0). On a CPU, 8 while freed host memory is kept
    for reuse (`jaxnn.launch.TUNING_DEFAULTS`), else 4: without it, the pages of 8 trials'
    temporaries are mapped afresh on every step, and two programs of 4 beat one of 8
    (benchmarks/results/tune.md)."""
    if jax.default_backend() != "cpu":
        return 0
    return 8 if host_allocator()["mode"] == "keep" else 4


class TrialGroup:
    """Trains K trials of one config family (see module docstring).

    Args:
      config: a training config (validated here); its `VMAP_FIELDS` are the defaults of the
        trials' values given to `fit`.
      data: `jaxnn.data.Prepared` (train + validation; vocabulary from train).
      vmap: True = one jitted program over the trial axis; False = the ordinary jitted step of
        each trial's own config, one trial after another (the sequential reference).
      trials_per_program: with ``vmap``, at most this many trials per program (the trials,
        ordered by dropout rate, are cut into chunks trained one after another; a chunk of one
        rate has it static in its model); 0 = all in one; None = `_default_trials_per_program`.
    """

    def __init__(
        self, config: Any, data: Any, *, vmap: bool = True, trials_per_program: int | None = None
    ):
        cfg = validate_config(config)
        self.cfg, self.data, self.vmap = cfg, data, bool(vmap)
        if trials_per_program is None:
            trials_per_program = _default_trials_per_program()
        if isinstance(trials_per_program, bool) or int(trials_per_program) < 0:
            raise ValueError(
                f"trials_per_program must be an int >= 0 (0 = all), got {trials_per_program!r}"
            )
        self.trials_per_program = int(trials_per_program)
        t, o = cfg["train"], cfg["optim"]
        self.num_classes = data.num_classes
        self.buckets, self.train_batches, self.steps_per_epoch = training_batches(cfg, data)
        self.num_epochs = int(t["num_epochs"])
        self.total_steps = self.steps_per_epoch * self.num_epochs
        self.model = self._model(cfg["model"]["dropout"])
        self.tables = self.model.table_names() if o["sparse_embeddings"] else ()
        # a model that pools its tables with jaxnn.ops.embedding_bag_sum (``classify_rows``,
        # jaxnn.models.registry): its bag sums read [V, K, D] tables as groups, in evaluation
        # too, and can skip a rate-0 trial's mask. Any other model's lookups (jnp.take) would
        # transpose such tables on every call: it is evaluated on trials-first copies.
        self._pools_rows = callable(getattr(self.model, "classify_rows", None))
        self.tx = make_optimizer(o, self.total_steps, tables=self.tables)
        self.l2_mode = weight_decay_mode(o) == "l2"
        self._jitted: dict[tuple, Any] = {}
        self._rows_cache: dict[tuple, list] = {}
        self._to_leading = None
        self._feature_ids = jax.jit(
            lambda tokens, mask: self.model.apply({}, tokens, mask, method="feature_ids")
        )

    def _epoch_rows(self, epoch: int, indices: Sequence[np.ndarray]) -> list:
        """Per batch of the epoch, per table, the slots its sparse gradient needs: the distinct
        rows the batch looks up, rounded up to a few sizes (`jaxnn.train.sparse.row_bucket`),
        so the lazy optimizer touches those rows rather than one slot per lookup (static
        arguments of the step: a few programs per group). Found for the whole epoch before its
        first step (no host wait between steps) and kept: every fit of the group sees the same
        batches. [None, ...] without sparse tables."""
        if not self.tables:
            return [None] * len(indices)
        key = (epoch, hash(b"".join(np.asarray(i).tobytes() for i in indices)))
        if key not in self._rows_cache:
            pending = []
            for index in indices:
                batch = self.train_batches.make_batch(index)
                pending.append(self._feature_ids(batch["tokens"], batch["mask"]))
            self._rows_cache[key] = [
                tuple(
                    sparse_lib.row_bucket(sparse_lib.distinct_rows(ids, mask), ids.size)
                    for ids, mask in (features[name] for name in self.tables)
                )
                for features in jax.device_get(pending)
            ]
        return self._rows_cache[key]

    def _model(self, dropout: float) -> Any:
        model_cfg = {**self.cfg["model"], "dropout": float(dropout)}
        return get_model(
            {**self.cfg, "model": model_cfg},
            vocab_size=len(self.data.vocab),
            num_classes=self.num_classes,
        )

    def _trial_axes(self, tree: Any) -> Any:
        """Each leaf's trial axis in a vmapped group's state: 1 for the sparse tables and their
        optimizer moments, stored [V, K, D] so that the K trials' copies of a row are adjacent
        (`jaxnn.train.sparse.trial_minor_tables`), 0 for every other leaf."""
        if not self.tables or uses_loss_scale(self.cfg["model"]["dtype"]):
            # float16's loss scale skips a step per trial with a lax.cond that vmap turns into a
            # select over trials-first operands: trial-minor tables would be transposed twice
            # per step there, so they stay [K, V, D]
            return jax.tree.map(lambda _: 0, tree)
        return sparse_lib.trial_minor_axes(tree, self.tables)

    def _leading(self, tree: Any) -> Any:
        """A vmapped group's variables with the trial axis first on every leaf, as `fit`
        returns them (and as a non-bag model's evaluation reads them): a copy of each table."""
        if not any(jax.tree.leaves(self._trial_axes(tree))):
            return tree
        if self._to_leading is None:
            self._to_leading = jax.jit(
                lambda t: jax.tree.map(lambda x, a: jnp.moveaxis(x, a, 0), t, self._trial_axes(t))
            )
        return self._to_leading(tree)

    def _for_eval(self, variables: Any) -> Any:
        """A vmapped group's variables as its evaluation reads them: as stored for a bag model
        (tables [V, K, D], read as groups by its bag sums), else trials-first copies."""
        return variables if self._pools_rows else self._leading(variables)

    def _eval_axes(self, variables: Any) -> Any:
        """The trial axes of `_for_eval`'s variables: as stored, or 0 on every leaf."""
        return self._trial_axes(variables) if self._pools_rows else 0

    # -- the programs ---------------------------------------------------------------------------
    def _init_fn(self, model: Any):
        """``init(seed, hyper) -> TrainState``, as jaxnn.train derives it from config.seed
        (`jaxnn.train.trainer.fresh_state`), with this trial's hyperparameters injected."""
        length = self.buckets[0]

        def init(seed, hyper):
            state = fresh_state(self.cfg, model, self.tx, jax.random.PRNGKey(seed), length)
            return state.replace(opt_state=set_hyperparams(state.opt_state, **hyper))

        return init

    def _programs(
        self,
        dropout: float | None,
        l2: bool,
        shared_rng: bool,
        per_trial_weights: bool,
        group_rate: float | None = None,
        rate_free: int = 0,
    ):
        """(init, train_step, evaluate) jitted; vmapped over trials when ``dropout`` is None.
        ``group_rate``: every vmapped trial has this dropout rate: it is built into the model
        (static, as in a sequential run; rate 0 then costs nothing) and the step's ``rates``
        argument is ignored. Else ``rate_free``: the first so many trials have rate 0 (their
        bag sums skip the mask, `jaxnn.ops.dropout.rate_free_trials`)."""
        key = (dropout, l2, shared_rng, per_trial_weights, group_rate, rate_free)
        if key in self._jitted:
            return self._jitted[key]
        static = dropout if group_rate is None else group_rate
        model = self.model if static is None else self._model(static)
        step = make_train_step(
            model, self.tx, l2_weight_decay=l2, sparse_embeddings=bool(self.tables)
        )
        eval_step = make_eval_step(model, self.num_classes)

        def evaluate(variables, sums, batch):
            sums = eval_step(variables, sums, batch)
            logits = model.apply(variables, batch["tokens"], batch["mask"], train=False)
            return sums, softmax(logits, axis=-1)

        init = self._init_fn(model)
        if dropout is not None:  # one trial, the ordinary step

            def one_step(state, batch, rows):
                return step(state, batch, None, *(() if rows is None else (rows,)))

            programs = (
                jax.jit(init),
                jax.jit(one_step, donate_argnums=0, static_argnums=2),
                jax.jit(evaluate, donate_argnums=1),
            )
        else:
            trial_axis = 0 if per_trial_weights else None
            rng_axis = None if shared_rng else 0

            def group_step(states, batch, rates, rows):
                shared = {k: v for k, v in batch.items() if k != "weights"}

                def one(state, weights, rate, counter, rng):
                    state = state.replace(step=counter, rng=rng)
                    return step(
                        state,
                        {**shared, "weights": weights},
                        rate if group_rate is None else None,
                        *(() if rows is None else (rows,)),
                    )

                counter, rng = states.step, states.rng
                if shared_rng:  # one seed: one dropout key, draws made once for all trials
                    counter, rng = counter[0], rng[0]
                axes = self._trial_axes(states)
                k = rates.shape[0]
                with sparse_lib.trial_minor_tables(), rate_free_trials(rate_free, trials=k):
                    return jax.vmap(
                        one,
                        in_axes=(axes, trial_axis, 0, rng_axis, rng_axis),
                        out_axes=axes,
                    )(states, batch["weights"], rates, counter, rng)

            def init_group(seeds, hyper):  # tables stored trial-minor, [V, K, D]
                states = jax.vmap(init)(seeds, hyper)
                axes = self._trial_axes(states)
                return jax.tree.map(lambda x, a: jnp.moveaxis(x, 0, a), states, axes)

            def evaluate_group(variables, sums, batch):  # see `_fit` for the layout
                axes = self._eval_axes(variables)
                return jax.vmap(evaluate, in_axes=(axes, 0, None))(variables, sums, batch)

            programs = (
                jax.jit(init_group),
                jax.jit(group_step, donate_argnums=0, static_argnums=3),
                jax.jit(evaluate_group, donate_argnums=1),
            )
        self._jitted[key] = programs
        return programs

    # -- training -------------------------------------------------------------------------------
    def fit(
        self,
        hyper: Mapping[str, Sequence[float]],
        seeds: Sequence[int],
        *,
        sample_weights: np.ndarray | None = None,
        eval_splits: Mapping[str, Any] | None = None,
        keep_probs: bool = False,
    ) -> GroupResult:
        """Train K trials; evaluate every epoch on ``eval_splits`` (default: validation).

        Args:
          hyper: {name: [K] values} for "dropout" and the optimizer's injected
            hyperparameters (jaxnn.train.optim.HYPERPARAMETERS: learning_rate, weight_decay,
            ...); a name left out takes the config's value for every trial.
          seeds: K ints (each trial's initial parameters and dropout key).
          sample_weights: [K, N_train] non-negative weights of the training examples per trial
            (bootstrap counts, jaxnn.analysis); None = all ones.
          eval_splits: {name: EncodedSplit}; "validation" drives best epoch and early stopping.
          keep_probs: also return every epoch's predicted probabilities on each eval split.
        """
        k = len(seeds)
        allowed = {"dropout", *HYPERPARAMETERS}
        unknown = sorted(set(hyper) - allowed)
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; allowed: {sorted(allowed)}")
        values = {"dropout": self.cfg["model"]["dropout"]}
        values |= {name: self.cfg["optim"][name] for name in HYPERPARAMETERS}
        arrays = {}
        for name, default in values.items():
            arr = np.asarray(hyper.get(name, [default] * k), np.float32)
            if arr.shape != (k,):
                raise ValueError(
                    f"hyper[{name!r}] must have shape ({k},) like seeds; got {arr.shape}"
                )
            arrays[name] = arr
        if np.any(arrays["learning_rate"] <= 0) or np.any(arrays["weight_decay"] < 0):
            raise ValueError(
                "learning_rate must be > 0 and weight_decay >= 0; got "
                f"{arrays['learning_rate'].tolist()}, {arrays['weight_decay'].tolist()}"
            )
        rates = arrays.pop("dropout")
        if np.any((rates < 0) | (rates >= 1)):
            raise ValueError(f"dropout must be in [0, 1); got {rates.tolist()}")
        n_train = len(self.data.train)
        if sample_weights is not None:
            sample_weights = np.asarray(sample_weights, np.float32)
            if sample_weights.shape != (k, n_train) or np.any(sample_weights < 0):
                raise ValueError(
                    f"sample_weights must be non-negative with shape ({k}, {n_train}), got "
                    f"{sample_weights.shape}"
                )
        eval_splits = dict(eval_splits or {"validation": self.data.validation})
        if "validation" not in eval_splits:
            raise ValueError(f"eval_splits must include 'validation', got {sorted(eval_splits)}")
        start = time.perf_counter()
        seeds = np.asarray(seeds, np.int64)
        wd = arrays["weight_decay"]
        if self.vmap:
            # trials of one dropout rate side by side, so that a chunk often has one rate
            # (static in its model); each chunk of <= trials_per_program is one program
            order = np.argsort(rates, kind="stable")
            size = self.trials_per_program or k
            chunks = [order[i : i + size] for i in range(0, k, size)]
        else:
            chunks = [np.array([i]) for i in range(k)]
        parts = []
        for idx in chunks:
            chunk_rates = rates[idx]
            if self.vmap:
                shared_rng = len(set(seeds[idx].tolist())) == 1
                # rate-0 trials lead the chunk (ordered by rate); they skip the mask of bag sums
                # that share the draws (one seed), so only then is the count worth a program
                free = int(np.sum(chunk_rates == 0)) if shared_rng and self._pools_rows else 0
                programs = self._programs(
                    None,
                    bool(self.l2_mode and np.any(wd[idx] > 0)),
                    shared_rng,
                    sample_weights is not None,
                    float(chunk_rates[0]) if len(set(chunk_rates.tolist())) == 1 else None,
                    free,
                )
            else:
                programs = self._programs(
                    float(chunk_rates[0]), bool(self.l2_mode and wd[idx[0]] > 0), True, False
                )
            parts.append(
                self._fit(
                    programs,
                    len(idx),
                    seeds[idx],
                    {n: a[idx] for n, a in arrays.items()},
                    chunk_rates,
                    None if sample_weights is None else sample_weights[idx],
                    eval_splits,
                    keep_probs,
                    vmapped=self.vmap,
                )
            )
        if len(parts) == 1 and np.array_equal(chunks[0], np.arange(k)):
            result = parts[0]
        else:  # back in the callers' trial order
            back = np.argsort(np.concatenate(chunks))
            pick = lambda items: [items[j] for j in back]
            stack = lambda *x: jnp.concatenate(x)[back]
            result = GroupResult(
                history=pick([h for p in parts for h in p.history]),
                failure=pick([f for p in parts for f in p.failure]),
                best_epoch=pick([b for p in parts for b in p.best_epoch]),
                best_variables=jax.tree.map(stack, *[p.best_variables for p in parts]),
                last_variables=jax.tree.map(stack, *[p.last_variables for p in parts]),
                probs={
                    n: np.concatenate([p.probs[n] for p in parts], axis=1)[:, back]
                    for n in parts[0].probs
                },
            )
        result.wall_time_s = time.perf_counter() - start
        return result

    def _fit(
        self, programs, k, seeds, arrays, rates, sample_weights, eval_splits, keep_probs, *, vmapped
    ):
        init, train_step, evaluate = programs
        t = self.cfg["train"]
        patience, select = int(t["patience"]), t["select_metric"]
        if vmapped:
            state = init(jnp.asarray(seeds), {n: jnp.asarray(a) for n, a in arrays.items()})
            rates_dev = jnp.asarray(rates)
            axis = lambda tree: tree
        else:
            state = init(int(seeds[0]), {n: float(a[0]) for n, a in arrays.items()})
            axis = lambda tree: jax.tree.map(lambda x: x[None], tree)
        history: list[list[dict]] = [[] for _ in range(k)]
        failure: list[str | None] = [None] * k
        best_epoch: list[int | None] = [None] * k
        best_value = [-np.inf] * k
        bad_epochs = [0] * k
        stopped = [False] * k
        best = None
        probs_out: dict[str, list] = {n: [] for n in eval_splits}
        step = 0
        for epoch in range(self.num_epochs):
            zeros = jax.tree.map(
                lambda z, m: jnp.broadcast_to(z, m.shape), zero_train_metrics(), state.metrics
            )
            state = state.replace(metrics=zeros)
            indices = self.train_batches.order(epoch)[: self.steps_per_epoch]
            for index, rows in zip(indices, self._epoch_rows(epoch, indices), strict=True):
                batch = self.train_batches.make_batch(index)
                if sample_weights is not None:
                    batch["weights"] = (batch["weights"][None] * sample_weights[:, index]).astype(
                        np.float32
                    )
                    if not vmapped:
                        batch["weights"] = batch["weights"][0]
                if vmapped:
                    state = train_step(state, batch, rates_dev, rows)
                else:
                    state = train_step(state, batch, rows)
                step += 1
            metrics = jax.device_get(axis(state.metrics))
            variables = self._for_eval(state.variables()) if vmapped else state.variables()
            evals = {
                n: self._evaluate(evaluate, axis, variables, s, k if vmapped else None)
                for n, s in eval_splits.items()
            }
            improved = np.zeros(k, bool)
            for j in range(k):
                if failure[j] is not None or stopped[j]:
                    continue
                bad = int(metrics["nonfinite_step"][j])
                if bad != NO_NONFINITE:
                    failure[j] = f"non-finite training loss at epoch {epoch + 1}, step {bad + 1}"
                    continue
                weight = max(float(metrics["weight"][j]), 1.0)
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(metrics["loss_sum"][j]) / weight,
                    "train_accuracy": float(metrics["correct"][j]) / weight,
                }
                for name, (scores, _) in evals.items():
                    prefix = "val" if name == "validation" else name
                    for key, value in scores.items():
                        record[f"{prefix}_{key}"] = float(value[j])
                history[j].append(record)
                value = record[f"val_{select}"]
                if value > best_value[j]:
                    best_value[j], best_epoch[j], bad_epochs[j] = value, epoch + 1, 0
                    improved[j] = True
                else:
                    bad_epochs[j] += 1
                    if patience and bad_epochs[j] >= patience:
                        stopped[j] = True
            if keep_probs:
                for name, (_, probs) in evals.items():
                    probs_out[name].append(probs)
            if best is None:
                best = jax.tree.map(jnp.copy, axis(variables))
            elif improved.any():
                axes = self._eval_axes(variables) if vmapped else 0
                best = _where(jnp.asarray(improved), axis(variables), best, axes)
            if all(stopped[j] or failure[j] for j in range(k)) and not keep_probs:
                break
        return GroupResult(
            history=history,
            failure=failure,
            best_epoch=best_epoch,
            best_variables=self._leading(best) if vmapped and self._pools_rows else best,
            last_variables=self._leading(state.variables()) if vmapped else axis(state.variables()),
            probs={n: np.stack(v) for n, v in probs_out.items() if v},
        )

    def _evaluate(self, evaluate, axis, variables, split, trials) -> tuple[dict, np.ndarray]:
        """({loss, accuracy, macro_f1: [K]}, probs [K, N, C]) of ``split``, in its order;
        ``trials``: K of a vmapped ``evaluate``, None for one trial's."""
        batches = eval_batches(
            split, batch_size=self.cfg["train"]["eval_batch_size"], buckets=self.buckets
        )
        sums = zero_eval_metrics(self.num_classes)
        if trials is not None:
            sums = jax.tree.map(lambda x: jnp.broadcast_to(x, (trials, *x.shape)), sums)
        probs = []
        for index in batches.order(0):
            sums, p = evaluate(variables, sums, batches.make_batch(index))
            probs.append(p)
        sums, probs = jax.device_get((axis(sums), axis(probs)))
        cm = np.asarray(sums["confusion"])
        scores = {
            "loss": np.asarray(sums["loss_sum"]) / np.maximum(np.asarray(sums["weight"]), 1.0),
            "accuracy": np.array([float(accuracy(c)) for c in cm]),
            "macro_f1": np.array([float(macro_f1(c)) for c in cm]),
        }
        return scores, np.concatenate(probs, axis=-2)[:, : len(split)]

    def evaluate(self, variables: Any, split: Any) -> list[dict[str, float]]:
        """Loss, accuracy and macro F1 of each of K variables (leading axis K) on ``split``."""
        k = jax.tree.leaves(variables)[0].shape[0]
        _, _, evaluate = self._programs(float(self.cfg["model"]["dropout"]), False, True, False)
        add_axis = lambda tree: jax.tree.map(lambda x: x[None], tree)
        out = []
        for j in range(k):
            one = jax.tree.map(lambda x, j=j: x[j], variables)
            scores, _ = self._evaluate(evaluate, add_axis, one, split, None)
            out.append({name: float(v[0]) for name, v in scores.items()})
        return out
