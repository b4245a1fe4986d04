"""K bag-of-words trials in one vmapped, jitted program (same shapes, different hyperparameters).

jaxnn.train trains one config at a time; its flax modules hold the dropout rate as a static
attribute and its optimizer bakes the learning rate and decay in as Python floats, so K trials
would be K programs. Here the same model and step are written as pure functions whose
hyperparameters that change no shape are traced arrays with a leading trial axis K:

    learning_rate [K]   dropout [K]   weight_decay [K]   init/dropout seed [K]
    sample_weights [K, N] (optional: bootstrap counts per training example, jaxnn.analysis)

and ``jax.vmap`` maps the single-trial step over K. Every trial of a group sees the same batches
(one BatchIterator, seeded by the config's seed); the sparse-row bookkeeping (which embedding rows a
batch touches) is computed once per batch and shared. Running K = 1 (``vmap=False``: the plain
jitted single-trial step) gives the same metrics as the vmapped group, which is what
benchmarks/tune.py measures.

The model is jaxnn.models.BowClassifier's (study guide §7): with ids x_1..x_n of a text,

    v_i = dropout(E[x_i]),   pooled = (1/n) sum_i v_i,   logits = MLP(pooled)       [B, C]

(hashed bigram rows G[b_j] join the mean when ``model.bigram_buckets`` > 0); the head has
``num_hidden_layers`` layers of ``hidden_size`` units with ``activation`` and dropout, then a
linear layer to C. Initialization as flax, drawn with NumPy from each trial's seed (identical
alone or in a group): tables N(0, 0.1^2), kernels LeCun normal, biases 0.

The step (as jaxnn.train): loss = weighted mean cross-entropy (+ lambda * sum w^2 over kernels
in the ``l2`` weight-decay mode), gradient clipping by global norm, Adam / SGD with momentum,
AdamW's decoupled decay (kernels only) in the ``decoupled`` mode, lr_t = learning_rate x the
warmup + cosine (or constant) schedule. Embedding tables are updated lazily: Adam's moments and
the rows move only for the rows a batch touches (``optim.sparse_embeddings``; with False every
row is "touched", which is the dense update). Tables are not decayed, as in jaxnn.train.

A trial whose training loss becomes non-finite is marked failed at that step (its metrics stop
there); the other trials of its group are unaffected (vmapped trials share no arithmetic).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.data import BatchIterator, eval_batches
from jaxnn.data.batches import default_buckets
from jaxnn.metrics import accuracy, confusion_matrix, macro_f1
from jaxnn.models.bow import hashed_bigram_ids
from jaxnn.ops import dropout as ops_dropout
from jaxnn.ops import get_activation, mean_pool
from jaxnn.train.config import validate_config, weight_decay_mode
from jaxnn.train.optim import make_schedule

__all__ = ["VMAP_FIELDS", "GroupResult", "VmappedBowTrainer", "shared_signature"]

VMAP_FIELDS = (("optim", "learning_rate"), ("model", "dropout"), ("optim", "weight_decay"))


def shared_signature(config: Mapping) -> str:
    """The config with the vmappable fields blanked: trials with equal signatures share shapes."""
    plain = json.loads(json.dumps(config, default=list))
    for section, name in VMAP_FIELDS:
        plain[section][name] = None
    return json.dumps(plain, sort_keys=True)


@dataclass
class GroupResult:
    """What `VmappedBowTrainer.fit` returns (index k = trial k).

    Attributes:
      history: per trial, one dict per epoch run before any failure: epoch, train_loss,
        val_loss, val_accuracy, val_macro_f1 (and the same for any other eval split).
      failure: per trial, None or the reason ("non-finite training loss at epoch e, step s").
      best_epoch: per trial, the epoch with the best validation ``select_metric`` (or None).
      best_params: params pytree with leading axis K at each trial's best epoch.
      last_params: params pytree with leading axis K after the last epoch.
      probs: {split: [epochs, K, N, C] predicted probabilities} when ``keep_probs``.
      wall_time_s: the whole group's wall time.
    """

    history: list[list[dict]]
    failure: list[str | None]
    best_epoch: list[int | None]
    best_params: Any
    last_params: Any
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time_s: float = 0.0


def _where_trial(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """new where mask[k] else old, for arrays with a leading trial axis K (mask [K] bool)."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - mask.ndim)), new, old)


def _lecun(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """flax's lecun_normal: normal truncated to ±2 std, variance 1 / fan_in (redrawn outside)."""
    z = rng.standard_normal((fan_in, fan_out))
    while np.any(np.abs(z) > 2.0):
        bad = np.abs(z) > 2.0
        z[bad] = rng.standard_normal(int(bad.sum()))
    stddev = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return (stddev * z).astype(np.float32)


class VmappedBowTrainer:
    """Trains K same-shape bow trials of one config family together.

    Args:
      config: a training config (validated here; model.name must be "bow"). Its learning_rate,
        dropout and weight_decay are ignored: they come per trial in `fit`.
      data: `jaxnn.data.Prepared` (train + validation; vocabulary from train).
      vmap: True = one jitted program over the trial axis; False = a jitted single-trial step run
        once per trial (the "sequential" reference, same arithmetic).
    """

    def __init__(self, config: Any, data: Any, *, vmap: bool = True):
        cfg = validate_config(config)
        if cfg["model"]["name"] != "bow":
            raise ValueError(
                f"model.name={cfg['model']['name']!r}: the vmapped trainer builds only 'bow'; "
                "use the 'fit' engine for other models"
            )
        self.cfg = cfg
        self.data = data
        self.vmap = bool(vmap)
        m, o, t, d = cfg["model"], cfg["optim"], cfg["train"], cfg["data"]
        self.num_classes = data.num_classes
        self.vocab_size = len(data.vocab)
        self.tables = {"embed": self.vocab_size}
        if m["bigram_buckets"]:
            self.tables["bigram_embed"] = int(m["bigram_buckets"])
        self.embed_dim = int(m["embed_dim"])
        hidden = [int(m["hidden_size"])] * int(m["num_hidden_layers"]) if m["hidden_size"] else []
        self.layer_sizes = [self.embed_dim, *hidden, self.num_classes]
        self.activation = get_activation(m["activation"])
        self.optimizer = o["optimizer"]
        self.decay_mode = weight_decay_mode(o)
        self.b1, self.b2, self.eps = float(o["b1"]), float(o["b2"]), float(o["eps"])
        self.momentum = float(o["momentum"])
        self.clip = float(o["grad_clip_norm"])
        self.sparse = bool(o["sparse_embeddings"])
        self.batch_size = int(t["batch_size"])
        self.num_epochs = int(t["num_epochs"])
        self.patience = int(t["patience"])
        self.select = t["select_metric"]
        self.max_steps = int(t["max_steps_per_epoch"])
        self.buckets = default_buckets(d["max_len"], d["smallest_bucket"])
        self.train_batches = BatchIterator(
            data.train,
            batch_size=self.batch_size,
            shuffle=True,
            seed=cfg["seed"],
            buckets=self.buckets,
            sort_pool=d["sort_pool"],
            return_index=True,
        )
        steps = self.train_batches.num_batches()
        if self.max_steps:
            steps = min(steps, self.max_steps)
        self.steps_per_epoch = steps
        self.schedule = make_schedule({**o, "learning_rate": 1.0}, steps * self.num_epochs)
        self._compile()

    # -- the model, pure --------------------------------------------------------------------
    def init(self, seed: int) -> dict:
        """Params of one trial from an int seed: {"embed": [V, D], ..., "head": [layers]}.

        Drawn on the host with NumPy (``default_rng([seed, 0])``): the same values whether the
        trial runs alone or in a group, and no random-number program to compile.
        """
        rng = np.random.default_rng([int(seed), 0])
        params: dict[str, Any] = {}
        for name, rows in self.tables.items():
            params[name] = (0.1 * rng.standard_normal((rows, self.embed_dim))).astype(np.float32)
        head = []
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            head.append(
                {"kernel": _lecun(rng, fan_in, fan_out), "bias": np.zeros(fan_out, np.float32)}
            )
        params["head"] = head
        return params

    def features(self, tokens: jax.Array, mask: jax.Array) -> dict[str, tuple]:
        """{table: (ids [B, T'], mask [B, T'])} as BowClassifier.feature_ids."""
        feats = {"embed": (tokens.astype(jnp.int32), mask)}
        if "bigram_embed" in self.tables:
            ids = hashed_bigram_ids(tokens, self.tables["bigram_embed"])
            feats["bigram_embed"] = (ids, mask[:, :-1] & mask[:, 1:])
        return feats

    def logits(
        self,
        vectors: Mapping[str, jax.Array],
        masks: Mapping[str, jax.Array],
        head: Sequence[Mapping],
        dropout: jax.Array,
        rng: jax.Array | None,
    ) -> jax.Array:
        """vectors {table: [B, T', D]} -> logits [B, C]; rng None = deterministic (eval)."""
        x = jnp.concatenate([vectors[n] for n in self.tables], axis=1)
        m = jnp.concatenate([masks[n] for n in self.tables], axis=1)
        train = rng is not None
        keys = jax.random.split(rng, len(head)) if train else [None] * len(head)
        x = ops_dropout(x, dropout, keys[0], deterministic=not train)  # traced rate per trial
        h = mean_pool(x, m)
        for i, layer in enumerate(head):
            h = h @ layer["kernel"] + layer["bias"]
            if i < len(head) - 1:
                h = ops_dropout(self.activation(h), dropout, keys[i + 1], deterministic=not train)
        return h

    # -- one trial's step ------------------------------------------------------------------
    def _rows(self, batch: Mapping[str, jax.Array]) -> dict[str, tuple]:
        """Per table: (rows, inverse [B, T'], mask [B, T'], touched).

        Three exact forms of the same update, chosen statically by size:
          dense (sparse_embeddings=False): rows None, touched None: every row steps.
          lazy, B*T' < V: rows = the sorted distinct ids [U = B*T'] padded with V (dropped on
            write), inverse = position of each id in rows: O(B*T') work.
          lazy, B*T' >= V: rows None, touched bool [V]: the whole table is computed and the rows
            not in the batch are kept (cheaper than sorting more ids than there are rows).
        """
        out = {}
        for name, (ids, mask) in self.features(batch["tokens"], batch["mask"]).items():
            size = self.tables[name]
            if not self.sparse:
                out[name] = (None, ids, mask, None)
            elif ids.size < size:
                live = jnp.where(mask, ids, size)
                rows = jnp.unique(live.ravel(), size=live.size, fill_value=size)
                out[name] = (rows, jnp.searchsorted(rows, live), mask, None)
            else:
                live = jnp.where(mask, ids, size).ravel()
                touched = jnp.zeros((size,), bool).at[live].set(True, mode="drop")
                out[name] = (None, ids, mask, touched)
        return out

    def _train_step(
        self, params, opt, lr, dropout, wd, seed, rows, batch, sample_w, step, use_dropout
    ):
        """One trial: (params, opt, loss) after one step on ``batch``. Scalars lr/dropout/wd.

        ``use_dropout`` (static) False leaves the random masks out of the program: the result
        equals dropout with rate 0.
        """
        weights = batch["weights"] * sample_w
        rng = None
        if use_dropout:
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
        picked = {
            n: params[n] if r is None else params[n].at[r].get(mode="fill", fill_value=0.0)
            for n, (r, _, _, _) in rows.items()
        }

        def loss_fn(head, picked):
            vectors = {n: picked[n][inv] for n, (_, inv, _, _) in rows.items()}
            masks = {n: mask for n, (_, _, mask, _) in rows.items()}
            logits = self.logits(vectors, masks, head, dropout, rng)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32))
            ce = -jnp.take_along_axis(logp, batch["labels"][:, None], axis=1)[:, 0]
            loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
            objective = loss
            if self.decay_mode == "l2":
                objective = loss + wd * sum(jnp.sum(jnp.square(layer["kernel"])) for layer in head)
            return objective, loss

        (_, loss), (g_head, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            params["head"], picked
        )
        if self.clip > 0:
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves((g_head, g_rows))))
            scale = jnp.minimum(1.0, self.clip / jnp.maximum(norm, 1e-12))
            g_head, g_rows = jax.tree.map(lambda g: g * scale, (g_head, g_rows))
        count = opt["count"] + 1
        lr_t = lr * self.schedule(step)

        def direction(g, m, v):
            if self.optimizer == "sgd":
                m = g + self.momentum * m if self.momentum > 0 else g
                return m, m, v
            m = self.b1 * m + (1 - self.b1) * g
            v = self.b2 * v + (1 - self.b2) * jnp.square(g)
            m_hat = m / (1 - self.b1**count)
            v_hat = v / (1 - self.b2**count)
            return m_hat / (jnp.sqrt(v_hat) + self.eps), m, v

        new_params: dict[str, Any] = {"head": []}
        head_m, head_v = [], []
        for layer, g_layer, m_layer, v_layer in zip(
            params["head"], g_head, opt["head_m"], opt["head_v"]
        ):
            out, m_out, v_out = {}, {}, {}
            for name in layer:
                d, m_out[name], v_out[name] = direction(g_layer[name], m_layer[name], v_layer[name])
                if name == "kernel" and self.decay_mode == "decoupled":
                    d = d + wd * layer[name]
                out[name] = layer[name] - lr_t * d
            new_params["head"].append(out)
            head_m.append(m_out)
            head_v.append(v_out)
        new_opt = {"count": count, "head_m": head_m, "head_v": head_v, "m": {}, "v": {}}
        for name, (r, _, _, touched) in rows.items():
            if r is None:  # the whole table (dense, or lazy through ``touched``)
                m_old, v_old = opt["m"][name], opt["v"][name]
                d, m_new, v_new = direction(g_rows[name], m_old, v_old)
                p_new = picked[name] - lr_t * d
                if touched is not None:
                    keep = touched[:, None]
                    p_new = jnp.where(keep, p_new, picked[name])
                    m_new, v_new = jnp.where(keep, m_new, m_old), jnp.where(keep, v_new, v_old)
                new_params[name], new_opt["m"][name], new_opt["v"][name] = p_new, m_new, v_new
                continue
            m_rows = opt["m"][name].at[r].get(mode="fill", fill_value=0.0)
            v_rows = opt["v"][name].at[r].get(mode="fill", fill_value=0.0)
            d, m_rows, v_rows = direction(g_rows[name], m_rows, v_rows)
            new_params[name] = params[name].at[r].set(picked[name] - lr_t * d, mode="drop")
            new_opt["m"][name] = opt["m"][name].at[r].set(m_rows, mode="drop")
            new_opt["v"][name] = opt["v"][name].at[r].set(v_rows, mode="drop")
        return new_params, new_opt, loss

    def _init_opt(self, params: Mapping) -> dict:
        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        return {
            "count": jnp.zeros((), jnp.int32),
            "head_m": zeros(params["head"]),
            "head_v": zeros(params["head"]),
            "m": {n: jnp.zeros_like(params[n]) for n in self.tables},
            "v": {n: jnp.zeros_like(params[n]) for n in self.tables},
        }

    def _eval_one(self, params, batch):
        feats = self.features(batch["tokens"], batch["mask"])
        vectors = {n: params[n][ids] for n, (ids, _) in feats.items()}
        masks = {n: mask for n, (_, mask) in feats.items()}
        logits = self.logits(vectors, masks, params["head"], jnp.float32(0.0), None)
        probs = jax.nn.softmax(logits)
        logp = jax.nn.log_softmax(logits)
        ce = -jnp.take_along_axis(logp, batch["labels"][:, None], axis=1)[:, 0]
        cm = confusion_matrix(
            batch["labels"], jnp.argmax(logits, -1), self.num_classes, weights=batch["weights"]
        )
        return probs, jnp.sum(ce * batch["weights"]), cm

    def _compile(self) -> None:
        def train_one(params, opt, lr, dropout, wd, seed, batch, sample_w, step, use_dropout):
            rows = self._rows(batch)
            return self._train_step(
                params, opt, lr, dropout, wd, seed, rows, batch, sample_w, step, use_dropout
            )

        def train_many(params, opt, lr, dropout, wd, seed, batch, sample_w, step, use_dropout):
            rows = self._rows(batch)  # shared by the K trials
            step_fn = lambda p, o, a, b, c, s, w: self._train_step(
                p, o, a, b, c, s, rows, batch, w, step, use_dropout
            )
            return jax.vmap(step_fn)(params, opt, lr, dropout, wd, seed, sample_w)

        self._train = jax.jit(
            train_many if self.vmap else train_one, donate_argnums=(0, 1), static_argnums=(9,)
        )
        in_axes = (0, None)
        self._eval = jax.jit(
            jax.vmap(self._eval_one, in_axes=in_axes) if self.vmap else self._eval_one
        )
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        self._select = jax.jit(
            lambda mask, new, old: jax.tree.map(partial(_where_trial, mask), new, old)
        )
        metrics = jax.jit(jax.vmap(lambda cm: (accuracy(cm), macro_f1(cm))))
        self._scores = lambda cm: jax.device_get(metrics(jnp.asarray(cm, jnp.float32)))
        self._init_opt_jit = jax.jit(jax.vmap(self._init_opt) if self.vmap else self._init_opt)

    def _init(self, seeds: np.ndarray) -> tuple[Any, Any]:
        if self.vmap:
            trees = [self.init(int(s)) for s in seeds]
            params = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *trees)
        else:
            params = jax.tree.map(jnp.asarray, self.init(int(seeds)))
        return params, self._init_opt_jit(params)

    # -- training loop ---------------------------------------------------------------------
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
          hyper: {"learning_rate": [K], "dropout": [K], "weight_decay": [K]}.
          seeds: K ints (parameter init and dropout masks of each trial).
          sample_weights: [K, N_train] non-negative weights of the training examples per trial
            (bootstrap counts); None = all ones.
          eval_splits: {name: EncodedSplit}; "validation" drives best epoch and early stopping.
          keep_probs: also return every epoch's predicted probabilities on each eval split.
        """
        k = len(seeds)
        lr, dropout, wd = (
            np.asarray(hyper[n], np.float32) for n in ("learning_rate", "dropout", "weight_decay")
        )
        if not (lr.shape == dropout.shape == wd.shape == (k,)):
            raise ValueError(
                f"hyper arrays must all have shape ({k},) like seeds; got "
                f"{lr.shape}, {dropout.shape}, {wd.shape}"
            )
        if np.any(lr <= 0) or np.any((dropout < 0) | (dropout >= 1)) or np.any(wd < 0):
            raise ValueError(
                f"learning_rate must be > 0, dropout in [0, 1), weight_decay >= 0; got "
                f"{lr.tolist()}, {dropout.tolist()}, {wd.tolist()}"
            )
        n_train = len(self.data.train)
        if sample_weights is None:
            sample_weights = np.ones((k, n_train), np.float32)
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
        if self.vmap:
            result = self._fit_group(
                lr, dropout, wd, np.asarray(seeds), sample_weights, eval_splits, keep_probs
            )
        else:
            parts = [
                self._fit_group(
                    lr[i],
                    dropout[i],
                    wd[i],
                    np.asarray(seeds[i]),
                    sample_weights[i],
                    eval_splits,
                    keep_probs,
                )
                for i in range(k)
            ]
            result = GroupResult(
                history=[p.history[0] for p in parts],
                failure=[p.failure[0] for p in parts],
                best_epoch=[p.best_epoch[0] for p in parts],
                best_params=jax.tree.map(
                    lambda *x: jnp.concatenate(x), *[p.best_params for p in parts]
                ),
                last_params=jax.tree.map(
                    lambda *x: jnp.concatenate(x), *[p.last_params for p in parts]
                ),
                probs={
                    n: np.stack([p.probs[n][:, 0] for p in parts], axis=1) for n in parts[0].probs
                },
            )
        result.wall_time_s = time.perf_counter() - start
        return result

    def _evaluate(self, params: Any, split: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs [K, N, C], loss sums [K], confusion [K, C, C]) in the split's order."""
        outs = []
        batches = eval_batches(
            split, batch_size=self.cfg["train"]["eval_batch_size"], buckets=self.buckets
        )
        for batch in batches:
            outs.append(self._eval(params, {k: jnp.asarray(v) for k, v in batch.items()}))
        outs = jax.device_get(outs)  # host arithmetic from here: no eager device ops to compile
        probs = np.concatenate([o[0] for o in outs], axis=-2)
        loss = np.sum([o[1] for o in outs], axis=0)
        cm = np.sum([o[2] for o in outs], axis=0)
        if not self.vmap:
            probs, loss, cm = probs[None], np.asarray(loss)[None], cm[None]
        return probs[:, : len(split)], np.asarray(loss), cm

    def _fit_group(self, lr, dropout, wd, seeds, sample_weights, eval_splits, keep_probs):
        batched = self.vmap
        k = len(seeds) if batched else 1
        params, opt = self._init(np.asarray(seeds))
        use_dropout = bool(np.any(np.asarray(dropout) > 0))
        hyper = tuple(jnp.asarray(x, jnp.float32) for x in (lr, dropout, wd))
        seeds_dev = jnp.asarray(seeds, jnp.int32)
        history: list[list[dict]] = [[] for _ in range(k)]
        failure: list[str | None] = [None] * k
        best_epoch: list[int | None] = [None] * k
        best_value = [-math.inf] * k
        bad_epochs = [0] * k
        stopped = [False] * k
        best_params = self._copy(params)
        probs_out: dict[str, list] = {n: [] for n in eval_splits}
        step = 0
        for epoch in range(self.num_epochs):
            if all(stopped[i] or failure[i] for i in range(k)) and not keep_probs:
                break
            losses = []
            for i, batch in enumerate(self.train_batches.epoch(epoch)):
                if i >= self.steps_per_epoch:
                    break
                index = batch.pop("index")
                sw = np.where(index >= 0, sample_weights[..., np.maximum(index, 0)], 0.0)
                dev = {n: jnp.asarray(v) for n, v in batch.items()}
                params, opt, loss = self._train(
                    params,
                    opt,
                    *hyper,
                    seeds_dev,
                    dev,
                    jnp.asarray(sw, jnp.float32),
                    step,
                    use_dropout,
                )
                losses.append(loss)
                step += 1
            losses = np.asarray(jax.device_get(losses)).reshape(len(losses), k)
            evals = {n: self._evaluate(params, split) for n, split in eval_splits.items()}
            scores = {n: self._scores(e[2]) for n, e in evals.items()}  # (accuracy, macro F1) [K]
            improved = np.zeros(k, bool)
            for t in range(k):
                if failure[t] is not None or stopped[t]:
                    continue
                finite = np.isfinite(losses[:, t])
                if not finite.all():
                    first = int(np.argmin(finite))
                    failure[t] = (
                        f"non-finite training loss at epoch {epoch + 1}, "
                        f"step {step - len(losses) + first + 1}"
                    )
                    continue
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(losses[:, t].mean()),
                }
                for name, (_probs, loss_sum, _cm) in evals.items():
                    prefix = "val" if name == "validation" else name
                    n = len(eval_splits[name])
                    record[f"{prefix}_loss"] = float(loss_sum[t]) / max(n, 1)
                    record[f"{prefix}_accuracy"] = float(scores[name][0][t])
                    record[f"{prefix}_macro_f1"] = float(scores[name][1][t])
                history[t].append(record)
                value = record[f"val_{self.select}"]
                if value > best_value[t]:
                    best_value[t], best_epoch[t], bad_epochs[t] = value, epoch + 1, 0
                    improved[t] = True
                else:
                    bad_epochs[t] += 1
                    if self.patience and bad_epochs[t] >= self.patience:
                        stopped[t] = True
            if improved.any():
                mask = jnp.asarray(improved if batched else improved[0])
                best_params = self._select(mask, params, best_params)
            if keep_probs:
                for name, (probs, _, _) in evals.items():
                    probs_out[name].append(probs)
        if not batched:
            best_params = jax.tree.map(lambda x: x[None], best_params)
            params = jax.tree.map(lambda x: x[None], params)
        return GroupResult(
            history=history,
            failure=failure,
            best_epoch=best_epoch,
            best_params=best_params,
            last_params=params,
            probs={n: np.stack(v) for n, v in probs_out.items() if v},
        )

    def evaluate(self, params: Any, split: Any) -> list[dict[str, float]]:
        """Loss, accuracy and macro F1 of each of the K params (leading axis K) on ``split``."""
        if not self.vmap:
            raise ValueError("evaluate() needs the vmapped trainer (vmap=True)")
        _, loss_sum, cm = self._evaluate(params, split)
        acc, f1 = self._scores(cm)
        return [
            {
                "loss": float(loss_sum[t]) / max(len(split), 1),
                "accuracy": float(acc[t]),
                "macro_f1": float(f1[t]),
            }
            for t in range(cm.shape[0])
        ]
