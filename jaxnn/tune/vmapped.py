"""K bag-of-words trials in one vmapped, jitted program (same shapes, different hyperparameters).

jaxnn.train trains one config at a time; its flax modules hold the dropout rate as a static
attribute and its optimizer bakes the learning rate and decay in as Python floats, so K trials
would be K programs. Here the same model and step are written as pure functions whose
hyperparameters that change no shape are traced arrays with a leading trial axis K:

    learning_rate [K]   dropout [K]   weight_decay [K]   init/dropout seed [K]
    sample_weights [K, N] (optional: bootstrap counts per training example, jaxnn.analysis)

and one jitted step trains all K at once. Every trial of a group sees the same batches (one
BatchIterator, seeded by the config's seed), which the layout uses:

- Embedding tables (and their Adam moments) are trial-minor, [V, K, D]: the distinct rows of a
  batch are the same for every trial, so one gather brings all K trials' rows ([U, K, D],
  each row's K vectors contiguous) and one scatter writes them back. The head's kernels are
  [K, in, out] (an einsum over K). The public params (``GroupResult``, ``evaluate``) have the
  trial first, [K, V, D], like a stack of single-trial params.
- The sparse-row bookkeeping (the batch's distinct ids, padded to one of a few `ROW_BUCKETS`
  sizes U, and each token's slot) is computed once per batch on the host, with NumPy.
- A trial without dropout pools with a matmul, counts [B, U] @ rows [U, K*D] (counts[b, u] =
  occurrences of row u in text b / its tokens); a trial with dropout gathers its [B, T', D]
  token vectors (dropout acts on each token before the mean). A trial's dropout draws are a
  function of its seed and the step, so trials with one seed (a tuner stage's) share them:
  drawn once, and those trials' vectors are gathered together, [c, T', K', D] for a chunk of
  c texts at a time (`_dropout_mean_pool`). Trials with different seeds go one at a time (in
  a scan: one trial's per-token arrays alive at a time). The trials with dropout run first in
  the group (`fit` reorders them and puts them back).

``vmap=False`` runs the same step with K = 1, one trial after another: the sequential reference
benchmarks/tune.py measures, with the same metrics as the group.

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

import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from jaxnn.ops.dropout import traced_keep_threshold, uniform_bits16
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
      best_params: params pytree with leading axis K at each trial's best epoch (the very
        arrays of ``last_params`` when every trial's best epoch is the last one).
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


# Distinct-row slots U a batch pads to: 8 sizes per octave from 256, multiples of 64 (at most
# ~9% padding, a few shapes per corpus).
ROW_BUCKETS = tuple(sorted({-(-int(256 * 2 ** (i / 8)) // 64) * 64 for i in range(8 * 23)}))


def _per_trial(values: jax.Array, ndim: int, axis: int) -> jax.Array:
    """values [K] shaped to broadcast against an ndim-array whose trial axis is ``axis``."""
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


def _row_chunk(slots: int, row_size: int, target: int = 65536) -> int:
    """Rows per chunk of the lazy update: a power-of-two multiple of 64 dividing ``slots``
    (a multiple of 64, as every `ROW_BUCKETS` size), about ``target`` floats per chunk."""
    chunk = 64
    while chunk * 2 * row_size <= target and slots % (chunk * 2) == 0:
        chunk *= 2
    return chunk


@jax.custom_vjp
def _counts_matmul(counts: jax.Array, counts_t: jax.Array, rows: jax.Array) -> jax.Array:
    """counts [B, U] @ rows [U, M], differentiated in rows only, with the transposed counts
    [U, B] given (XLA CPU's dot with a transposed operand took ~1.7x as long at M = 512)."""
    return counts @ rows


def _counts_matmul_fwd(counts, counts_t, rows):
    return counts @ rows, counts_t


def _counts_matmul_bwd(counts_t, g):
    return None, None, counts_t @ g


_counts_matmul.defvjp(_counts_matmul_fwd, _counts_matmul_bwd)


def _texts_per_chunk(batch: int, floats_per_text: int, target: int = 1 << 17) -> int:
    """The largest divisor of ``batch`` whose per-token arrays hold at most ``target`` floats
    (at least 1): a chunk's [c, T', K, D] temporaries (512 KiB) stay in a core's L2 cache.
    (1 << 17 against 1 << 20 floats: bbc_news steps with 4 of 8 trials dropping, 15.4 against
    16.5 ms, medians of 25 interleaved rounds of 20 batches.)"""
    best = 1
    for c in range(1, batch + 1):
        if batch % c == 0 and c * floats_per_text <= target:
            best = c
    return best


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dropout_mean_pool(chunk, num_dropout, rows, invs, masks, counts, bits, rates):
    """Pooled vectors [B, K, D] of K trials of one seed: trials [0, num_dropout) with dropout
    (sharing their uniform draws), the others without.

    With tables n of rows[n] [U_n, K, D] (K trials' rows, trial-minor), ids invs[n] [B, T_n]
    into them and masks[n] [B, T_n] (real tokens), and bits [B, sum_n T_n, D] (uint16, the
    draws `jaxnn.ops.dropout` makes for the tables' token vectors concatenated along the
    tokens), dropout trial k's pooled vector is

        pooled[b, k] = sum_{n, t: mask} where(bits >= tau_k, E_n[k][inv] * scale_k, 0) / count_b

    (tau_k, scale_k = `traced_keep_threshold(rates[k])`, rates [num_dropout]; count_b = the
    text's real tokens over all tables), i.e. mean_pool(dropout(concatenated vectors)) of each
    trial alone; the other trials' is the mean itself, sum_n counts[n] [B, U_n] @ E_n[trial]
    (counts[n] = (counts, counts_t) of `_host_rows`; None when every trial has dropout).

    One gather brings the dropout trials' rows together ([c, T_n, num_dropout, D], each id's
    vectors contiguous, straight out of the [U_n, K, D] rows), ``chunk`` texts at a time so
    that the per-token temporaries stay in cache. The backward is linear (no residual but the
    ids, masks, counts and bits) and returns each table's gradient whole, [U_n, K, D]: the
    counts matmul's part is written once and the chunks' token gradients scatter-add into the
    dropout trials' part in place (no per-part copies to slice and join).
    """
    if chunk < 1 or bits.shape[0] % chunk:
        raise ValueError(f"chunk={chunk} must divide the batch size {bits.shape[0]}")
    k = rows[0].shape[1]
    if not 0 < num_dropout <= k or (counts is None) != (num_dropout == k):
        raise ValueError(
            f"num_dropout={num_dropout} must be in [1, K={k}], with counts given iff it is < K"
        )
    return _dropout_pool_fwd(chunk, num_dropout, rows, invs, masks, counts, bits, rates)[0]


def _pool_parts(invs, masks, bits, rates):
    threshold, scale = traced_keep_threshold(rates)  # [K']
    count = jnp.maximum(sum(jnp.sum(m, 1, dtype=jnp.float32) for m in masks), 1.0)  # [B]
    starts = np.cumsum([0] + [inv.shape[1] for inv in invs])

    def kept(bits, n):  # table n's keep mask [c, T_n, K', D] from a chunk's bits [c, T', D]
        draws = bits[:, starts[n] : starts[n + 1], None, :].astype(jnp.int32)
        return draws >= threshold[:, None]

    return scale[:, None], count, kept


def _dropout_pool_fwd(chunk, num_dropout, rows, invs, masks, counts, bits, rates):
    rows, invs, masks = (tuple(map(jnp.asarray, x)) for x in (rows, invs, masks))
    scale, count, kept = _pool_parts(invs, masks, bits, rates)
    k, d = rows[0].shape[1:]

    def body(i, out):
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * chunk, chunk)
        bits_c, total = take(bits), 0.0
        for n, (r, inv, m) in enumerate(zip(rows, invs, masks)):
            vectors = r[take(inv), :num_dropout]  # [c, T_n, K', D]: one gather, no slice copy
            y = jnp.where(kept(bits_c, n), vectors * scale, 0.0)
            total = total + jnp.sum(jnp.where(take(m)[..., None, None], y, 0.0), axis=1)
        pooled = total / take(count)[:, None, None]
        return jax.lax.dynamic_update_slice_in_dim(out, pooled.astype(out.dtype), i * chunk, 0)

    out = jnp.zeros((bits.shape[0], num_dropout, d), rows[0].dtype)
    out = jax.lax.fori_loop(0, bits.shape[0] // chunk, body, out)
    counts_t = None
    if counts is not None:  # the trials without dropout: the mean as a matmul
        rest = sum(
            c @ r[:, num_dropout:].reshape(r.shape[0], -1) for (c, _), r in zip(counts, rows)
        )
        out = jnp.concatenate([out, rest.reshape(out.shape[0], k - num_dropout, d)], axis=1)
        counts_t = tuple(ct for _, ct in counts)
    return out, (tuple(r.shape for r in rows), invs, masks, counts_t, bits, rates)


def _dropout_pool_bwd(chunk, num_dropout, res, g):
    shapes, invs, masks, counts_t, bits, rates = res
    scale, count, kept = _pool_parts(invs, masks, bits, rates)
    g_drop = g[:, :num_dropout] / count[:, None, None]
    grads = []
    for n, (u, k, d) in enumerate(shapes):
        part = jnp.zeros((u, num_dropout, d), g.dtype)
        if counts_t is not None:  # the counts matmul's gradient fills trials [num_dropout, K)
            rest = counts_t[n] @ g[:, num_dropout:].reshape(g.shape[0], -1)
            part = jnp.concatenate([part, rest.reshape(u, k - num_dropout, d)], axis=1)
        grads.append(part)

    def body(i, grads):
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * chunk, chunk)
        bits_c, g_c = take(bits), take(g_drop)[:, None] * scale  # [c, 1, K', D]
        out = []
        for n, (acc, inv, m) in enumerate(zip(grads, invs, masks)):
            live = kept(bits_c, n) & take(m)[..., None, None]
            out.append(acc.at[take(inv), :num_dropout].add(jnp.where(live, g_c, 0.0)))
        return tuple(out)

    grads = jax.lax.fori_loop(0, bits.shape[0] // chunk, body, tuple(grads))
    return grads, None, None, None, None, None


_dropout_mean_pool.defvjp(_dropout_pool_fwd, _dropout_pool_bwd)


def _dropout_trials(x: jax.Array, rates: jax.Array, keys: jax.Array, trial_axis: int) -> jax.Array:
    """jaxnn.ops.dropout with trial k's rate and key on slice k of ``trial_axis`` (rates [K],
    keys [K]): each trial draws the same mask as it would alone."""
    return jax.vmap(ops_dropout, in_axes=(trial_axis, 0, 0), out_axes=trial_axis)(x, rates, keys)


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
        self._last_init: tuple[int, dict] | None = None
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

    def features(self, tokens: np.ndarray, mask: np.ndarray) -> dict[str, tuple]:
        """{table: (ids [B, T'], mask [B, T'])} as BowClassifier.feature_ids, on the host."""
        feats = {"embed": (np.asarray(tokens, np.int32), np.asarray(mask, bool))}
        if "bigram_embed" in self.tables:
            ids = np.asarray(self._bigram_ids(tokens), np.int32)
            feats["bigram_embed"] = (ids, feats["embed"][1][:, :-1] & feats["embed"][1][:, 1:])
        return feats

    def pooled(
        self,
        picked: Mapping[str, Sequence[jax.Array]],
        rows: Mapping[str, Mapping[str, jax.Array]],
        dropout: jax.Array,
        keys: jax.Array | None,
        num_dropout: int | None = None,
    ) -> jax.Array:
        """The mean of each text's vectors, trial by trial: [B, K, D].

        picked {table: a tuple}: ([U, D],) = the rows of one trial with dropout, or
        ([U, K', D],) = the rows of K' trials (U = the batch's distinct rows, or the whole
        table); rows[table] is its bookkeeping (`_host_rows`). Trials without dropout pool
        with one matmul, pooled = sum_table counts [B, U] @ rows [U, K'*D], counts[b, u] =
        (occurrences of row u in text b) / (tokens of text b): no [B, T', K', D] array. A trial
        with dropout drops each token's vector on its own (dropout acts before the mean), so its
        vectors are gathered per token, [B, T', D]. With ``keys`` (trials of one seed), the
        first ``num_dropout`` (default: all K') trials have dropout: `_dropout_mean_pool`.
        """
        names = list(rows)
        if picked[names[0]][0].ndim == 2:  # one trial, with dropout
            x = jnp.concatenate([picked[n][0][rows[n]["inv"]] for n in names], axis=1)
            m = jnp.concatenate([rows[n]["mask"] for n in names], axis=1)
            return mean_pool(ops_dropout(x, dropout[0], keys[0, 0]), m)[:, None]
        k = picked[names[0]][0].shape[1]
        if keys is not None:  # trials with dropout and one seed: the same draws for all
            nd = k if num_dropout is None else num_dropout
            invs = tuple(rows[n]["inv"] for n in names)
            b, tokens = invs[0].shape[0], sum(inv.shape[1] for inv in invs)
            bits = uniform_bits16(keys[0, 0], (b, tokens, self.embed_dim))
            chunk = _texts_per_chunk(b, tokens * nd * self.embed_dim)
            masks = tuple(rows[n]["mask"] for n in names)
            rows_k = tuple(picked[n][0] for n in names)
            counts = None
            if nd < k:
                counts = tuple((rows[n]["counts"], rows[n]["counts_t"]) for n in names)
            return _dropout_mean_pool(chunk, nd, rows_k, invs, masks, counts, bits, dropout[:nd])
        width = k * self.embed_dim
        pooled = sum(
            _counts_matmul(rows[n]["counts"], rows[n]["counts_t"], picked[n][0].reshape(-1, width))
            for n in names
        )
        return pooled.reshape(-1, k, self.embed_dim)

    def head_logits(
        self,
        h: jax.Array,
        head: Sequence[Mapping],
        dropout: jax.Array,
        keys: jax.Array | None,
        num_dropout: int | None = None,
    ) -> jax.Array:
        """pooled [B, K, D] -> logits [B, K, C]; keys None = deterministic (eval).

        ``head`` layers hold kernel [K, in, out] and bias [K, out]; dropout [K] rates and keys
        [K, layers] (one key per trial and dropout site: the embeddings, then each hidden layer).
        Only the first ``num_dropout`` (default: all) trials draw masks; the others have rate 0.
        """
        nd = h.shape[1] if num_dropout is None else num_dropout
        for i, layer in enumerate(head):
            h = jnp.einsum("bki,kio->bko", h, layer["kernel"]) + layer["bias"]
            if i < len(head) - 1:
                h = self.activation(h)
                if keys is not None:
                    dropped = _dropout_trials(h[:, :nd], dropout[:nd], keys[:nd, i + 1], 1)
                    h = dropped if nd == h.shape[1] else jnp.concatenate([dropped, h[:, nd:]], 1)
        return h

    # -- the step of K trials ----------------------------------------------------------------
    def _host_rows(self, batch: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Per table, the sparse-row bookkeeping of one batch, computed once on the host.

        Three exact forms of the same update, chosen by size:
          dense (sparse_embeddings=False): every row steps; inv = the ids.
          lazy, rows: rows [U] = the distinct ids of the batch, sorted, padded with V (read as
            zeros, dropped on write) to U = the smallest of `ROW_BUCKETS` above their count (so
            at most a handful of shapes compile); inv [B, T'] = the slot of each id in rows
            (padding tokens point at a padding slot).
          lazy, U >= V: touched bool [V]: the whole table is computed and the rows not in the
            batch are kept (cheaper than gathering more rows than there are); inv = the ids.
        Each form also has mask [B, T'] and counts [B, U or V]: occurrences of each slot in
        each text divided by the text's tokens (over all tables), the mean as a matrix (and
        counts_t, its transpose, for the gradient).
        """
        feats = self.features(batch["tokens"], batch["mask"])
        tokens = sum(mask.sum(1) for _, mask in feats.values())
        per_token = 1.0 / np.maximum(tokens, 1).astype(np.float32)  # [B]
        out = {}
        for name, (ids, mask) in feats.items():
            size = self.tables[name]
            live = np.where(mask, ids, size)
            entry = {"inv": ids, "mask": mask}
            slots = size
            if self.sparse:
                seen = np.zeros(size + 1, bool)
                seen[live.ravel()] = True
                seen[size] = False
                count = int(seen.sum())
                slots = next((u for u in ROW_BUCKETS if u > count), size)
                if slots >= size:
                    slots = size
                    entry["touched"] = seen[:size]
                else:
                    rows = np.full(slots, size, np.int32)
                    rows[:count] = np.flatnonzero(seen)
                    slot_of = np.cumsum(seen, dtype=np.int32) - 1
                    slot_of[size] = count  # a padding slot
                    entry["rows"], entry["inv"] = rows, slot_of[live]
                    live = np.where(mask, entry["inv"], slots)
            b = ids.shape[0]
            flat = (np.arange(b)[:, None] * (slots + 1) + live).ravel()
            counts = np.bincount(flat, np.repeat(per_token, ids.shape[1]), b * (slots + 1))
            entry["counts"] = counts.reshape(b, slots + 1)[:, :slots].astype(np.float32)
            entry["counts_t"] = np.ascontiguousarray(entry["counts"].T)
            out[name] = entry
        return out

    def _train_step(
        self,
        params,
        opt,
        lr,
        dropout,
        wd,
        seeds,
        rows,
        labels,
        weights,
        step,
        num_dropout,
        shared_seed,
    ):
        """K trials: (params, opt, losses [K]) after one step. lr, dropout, wd, seeds [K];
        weights [K, B] (example weights x sample weights).

        Tables are trial-minor, [V, K, D]: the K trials see the same batch, so one gather of
        its distinct rows brings every trial's vectors ([U, K, D], contiguous) and one scatter
        writes them back. Trials share no arithmetic: the objective is the sum of the K losses,
        whose gradient with respect to trial k's parameters is trial k's own gradient.
        ``num_dropout`` (static): the first num_dropout trials draw dropout masks, the others
        have rate 0 and draw none (the same result as a mask that keeps everything).
        ``shared_seed`` (static): the dropout trials share one seed, so their uniform draws are
        the same (a trial's masks are a function of its seed and the step): drawn once, and the
        trials pooled together (`_dropout_mean_pool`); else one trial at a time in a scan.
        """
        keys = None
        if num_dropout:
            sites = len(params["head"])
            keys = jax.vmap(
                lambda s: jax.random.split(
                    jax.random.fold_in(jax.random.fold_in(jax.random.key(s), 1), step), sites
                )
            )(seeds)
        picked = jax.lax.optimization_barrier(
            {
                n: params[n]
                if "rows" not in r
                else params[n].at[r["rows"]].get(mode="fill", fill_value=0.0)
                for n, r in rows.items()
            }
        )

        def loss_fn(head, split, dropout, keys, weights, wd, nd=None):
            """(sum of the objectives, losses [k]) of k trials (head leaves [k, ...]); with
            keys, the first nd (default: all) of them have dropout."""
            pooled = self.pooled(split, rows, dropout, keys, nd)
            logits = self.head_logits(pooled, head, dropout, keys, nd)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # [B, k, C]
            ce = -jnp.take_along_axis(logp, labels[:, None, None], axis=2)[..., 0].T  # [k, B]
            losses = jnp.sum(ce * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1.0)
            objective = losses
            if self.decay_mode == "l2":
                objective = losses + wd * sum(
                    jnp.sum(jnp.square(layer["kernel"]), (1, 2)) for layer in head
                )
            return jnp.sum(objective), losses

        # Trials of one seed: every trial in one gradient call, the dropout ones pooling a
        # chunk of texts at a time (`_dropout_mean_pool`, which also pools the others and gives
        # each table's gradient whole). Dropout trials of several seeds: the gradient in parts
        # (the losses are separate, so this is the same gradient), the dropout trials one at a
        # time in a loop, each one's backward before the next one's forward, so that one
        # trial's per-token arrays are alive at a time (all at once, as XLA schedules them in
        # one program, made a K = 4 step 1.4x four K = 1 steps), then the others together.
        losses, g_head, g_rows = [], [], {n: [] for n in picked}
        grad = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        one_call = bool(num_dropout and shared_seed)

        def together(part: slice, keys, nd=None):
            """The trials ``part`` in one gradient call (their rows [U, k, D] as they are; a
            full slice is no copy: XLA drops it)."""
            take = lambda x: x[part]
            (_, loss), (g_h, g_r) = grad(
                jax.tree.map(take, params["head"]),
                {n: (p[:, part],) for n, p in picked.items()},
                take(dropout),
                None if keys is None else take(keys),
                take(weights),
                take(wd),
                nd,
            )
            losses.append(loss)
            g_head.append(g_h)
            for n, (g,) in g_r.items():
                g_rows[n].append(g)

        if one_call:
            # one seed: the trials' draws are the same, so their token vectors are gathered,
            # dropped and pooled together, a chunk of texts at a time (`_dropout_mean_pool`)
            together(slice(None), keys, num_dropout)
        elif num_dropout:

            def one_trial(_, xs):
                head, trial_rows, rate, key, w, decay = xs
                one = lambda x: x[None]
                (_, loss), (g_h, g_r) = grad(
                    jax.tree.map(one, head),
                    {n: (r,) for n, r in trial_rows.items()},
                    *map(one, (rate, key, w, decay)),
                )
                return None, (loss[0], jax.tree.map(lambda g: g[0], g_h), g_r)

            first = lambda x: x[:num_dropout]
            _, (loss_d, g_head_d, g_rows_d) = jax.lax.scan(
                one_trial,
                None,
                (
                    jax.tree.map(first, params["head"]),
                    {n: jnp.swapaxes(p[:, :num_dropout], 0, 1) for n, p in picked.items()},
                    *map(first, (dropout, keys, weights, wd)),
                ),
            )
            losses.append(loss_d)
            g_head.append(g_head_d)
            for n, (g,) in g_rows_d.items():
                g_rows[n].append(jnp.swapaxes(g, 0, 1))
        if num_dropout < len(seeds) and not one_call:
            together(slice(num_dropout, None), None)
        losses = jnp.concatenate(losses)
        g_head = jax.tree.map(lambda *g: jnp.concatenate(g), *g_head)
        # The tables' gradients: one [U, K, D] part after one call, else the parts (dropout
        # trials, the others: [U, k_i, D]), joined and scaled a row chunk at a time inside the
        # update below: joining the whole [U, K, D] first cost a pass through memory as long as
        # the update's gathers.
        scale = None
        if self.clip > 0:  # each trial's global norm; tables carry the trial on axis 1
            sq = sum(jnp.sum(jnp.square(g), range(1, g.ndim)) for g in jax.tree.leaves(g_head))
            sq = sq + sum(
                jnp.concatenate([jnp.sum(jnp.square(g), (0, 2)) for g in parts])
                for parts in g_rows.values()
            )
            scale = jnp.minimum(1.0, self.clip / jnp.maximum(jnp.sqrt(sq), 1e-12))
            g_head = jax.tree.map(lambda g: g * _per_trial(scale, g.ndim, 0), g_head)

        def joined(parts, start=None, size=None):
            """The gradient rows [start, start + size) (all without start) of every trial."""
            if start is not None:
                parts = [jax.lax.dynamic_slice_in_dim(g, start, size) for g in parts]
            g = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
            return g if scale is None else g * scale[None, :, None]

        count = opt["count"] + 1
        lr_t = lr * self.schedule(step)  # [K]

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
                    d = d + _per_trial(wd, d.ndim, 0) * layer[name]
                out[name] = layer[name] - _per_trial(lr_t, d.ndim, 0) * d
            new_params["head"].append(out)
            head_m.append(m_out)
            head_v.append(v_out)
        new_opt = {"count": count, "head_m": head_m, "head_v": head_v, "m": {}, "v": {}}
        lr_rows = lr_t[None, :, None]
        for name, r in rows.items():
            if "rows" not in r:  # the whole table (dense, or lazy through ``touched``)
                m_old, v_old = opt["m"][name], opt["v"][name]
                d, m_new, v_new = direction(joined(g_rows[name]), m_old, v_old)
                p_new = picked[name] - lr_rows * d
                if "touched" in r:
                    keep = r["touched"][:, None, None]
                    p_new = jnp.where(keep, p_new, picked[name])
                    m_new, v_new = jnp.where(keep, m_new, m_old), jnp.where(keep, v_new, v_old)
                new_params[name], new_opt["m"][name], new_opt["v"][name] = p_new, m_new, v_new
                continue
            # Row chunks of ~256 KiB per array in a loop (gather, update, scatter): the whole
            # [U, K, D] at once streamed several 6 MiB temporaries through memory per step,
            # where one trial's rows alone stay in the 2 MiB L2 cache.
            at, parts = r["rows"], g_rows[name]
            chunk = _row_chunk(at.shape[0], len(seeds) * self.embed_dim)

            def update(i, tables, at=at, parts=parts, chunk=chunk):
                idx = jax.lax.dynamic_slice_in_dim(at, i * chunk, chunk)
                g_c = joined(parts, i * chunk, chunk)
                p_c, m_c, v_c = (t.at[idx].get(mode="fill", fill_value=0.0) for t in tables)
                d, m_c, v_c = direction(g_c, m_c, v_c)
                new = (p_c - lr_rows * d, m_c, v_c)
                return tuple(t.at[idx].set(c, mode="drop") for t, c in zip(tables, new))

            new_params[name], new_opt["m"][name], new_opt["v"][name] = jax.lax.fori_loop(
                0,
                at.shape[0] // chunk,
                update,
                (params[name], opt["m"][name], opt["v"][name]),
            )
        return new_params, new_opt, losses

    def _init_opt(self, params: Mapping) -> dict:
        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        return {
            "count": jnp.zeros((), jnp.int32),
            "head_m": zeros(params["head"]),
            "head_v": zeros(params["head"]),
            "m": {n: jnp.zeros_like(params[n]) for n in self.tables},
            "v": {n: jnp.zeros_like(params[n]) for n in self.tables},
        }

    def _eval_step(self, params, rows, labels, weights):
        """(probs [K, B, C], loss sums [K], confusion [K, C, C]) of one eval batch."""
        picked = {
            n: params[n]
            if "rows" not in r
            else params[n].at[r["rows"]].get(mode="fill", fill_value=0.0)
            for n, r in rows.items()
        }
        k = params["head"][0]["bias"].shape[0]
        no_dropout = jnp.zeros((k,))
        pooled = self.pooled({n: (p,) for n, p in picked.items()}, rows, no_dropout, None)
        logits = jnp.swapaxes(self.head_logits(pooled, params["head"], no_dropout, None), 0, 1)
        logp = jax.nn.log_softmax(logits)  # [K, B, C]
        ce = -jnp.take_along_axis(logp, labels[None, :, None], axis=2)[..., 0]  # [K, B]
        cm = jax.vmap(
            lambda pred: confusion_matrix(labels, pred, self.num_classes, weights=weights)
        )(jnp.argmax(logits, -1))
        return jax.nn.softmax(logits), jnp.sum(ce * weights, 1), cm

    def _compile(self) -> None:
        self._bigram_ids = jax.jit(
            lambda tokens: hashed_bigram_ids(tokens, self.tables.get("bigram_embed", 1))
        )
        self._train = jax.jit(self._train_step, donate_argnums=(0, 1), static_argnums=(10, 11))
        self._eval = jax.jit(self._eval_step)
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        # The running best is donated: it is replaced, never read again (a fresh copy of
        # every table per improving epoch cost more than the where itself).
        self._select = jax.jit(self._where_trial, donate_argnums=(2,))
        metrics = jax.jit(jax.vmap(lambda cm: (accuracy(cm), macro_f1(cm))))
        self._scores = lambda cm: jax.device_get(metrics(jnp.asarray(cm, jnp.float32)))
        self._init_opt_jit = jax.jit(self._init_opt)
        self._stack_trials = jax.jit(
            lambda trees: {
                **{n: jnp.stack([t[n] for t in trees], axis=1) for n in self.tables},
                "head": jax.tree.map(lambda *x: jnp.stack(x), *[t["head"] for t in trees]),
            }
        )
        self._swap = jax.jit(self._swap_tables)

    def _where_trial(self, mask: jax.Array, new: Any, old: Any) -> Any:
        """new where mask[k] else old, trial by trial (mask [K] bool; tables trial-minor)."""
        out = {n: jnp.where(mask[None, :, None], new[n], old[n]) for n in self.tables}
        out["head"] = jax.tree.map(
            lambda a, b: jnp.where(_per_trial(mask, a.ndim, 0), a, b), new["head"], old["head"]
        )
        return out

    def _swap_tables(self, params: Any, order: jax.Array | None = None) -> Any:
        """Tables [V, K, D] (internal) <-> [K, V, D] (public: every leaf has the trial first).

        Without ``order`` a transposition of the tables, its own inverse (either direction);
        with it, internal to public with trial k of the result = trial order[k] of ``params``.
        """
        if order is None:  # a transposition, no gather
            return {
                **{n: jnp.swapaxes(params[n], 0, 1) for n in self.tables},
                "head": params["head"],
            }
        return {
            **{n: jnp.take(params[n], order, axis=1).swapaxes(0, 1) for n in self.tables},
            "head": jax.tree.map(lambda x: jnp.take(x, order, axis=0), params["head"]),
        }

    def _init_drawn(self, seed: int) -> dict:
        """`init`, remembering the last seed's draws (the trials of a stage share the config's
        seed: one draw for the whole group, or for all the trials run one after another)."""
        if self._last_init is None or self._last_init[0] != seed:
            self._last_init = (seed, self.init(seed))
        return self._last_init[1]

    def _init(self, seeds: np.ndarray) -> tuple[Any, Any]:
        """Params and optimizer state of trials ``seeds`` [K], tables trial-minor."""
        trees = [self._init_drawn(int(s)) for s in seeds]
        on_device: dict[int, Any] = {}  # each distinct draw is transferred once
        trees = [on_device.setdefault(id(t), jax.device_put(t)) for t in trees]
        params = self._stack_trials(trees)
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
        seeds = np.asarray(seeds)
        if self.vmap:  # the trials with dropout first (`_train_step`), back in order below
            order = np.argsort(dropout <= 0, kind="stable")
            back = np.argsort(order)  # the caller's trial i is trial back[i] of the group
            part = self._fit_group(
                lr[order],
                dropout[order],
                wd[order],
                seeds[order],
                sample_weights[order],
                eval_splits,
                keep_probs,
                back=back,
            )
            # (the params came back in the caller's order from _fit_group; the rest here)
            part.history, part.failure, part.best_epoch = (
                [x[i] for i in back] for x in (part.history, part.failure, part.best_epoch)
            )
            part.probs = {n: v[:, back] for n, v in part.probs.items()}
            parts = [part]
        else:  # one trial after another, each alone (K = 1) with the same step
            parts = [
                self._fit_group(
                    lr[i : i + 1],
                    dropout[i : i + 1],
                    wd[i : i + 1],
                    seeds[i : i + 1],
                    sample_weights[i : i + 1],
                    eval_splits,
                    keep_probs,
                )
                for i in range(k)
            ]
        concat = lambda *x: jnp.concatenate(x) if len(x) > 1 else x[0]
        result = GroupResult(
            history=[h for p in parts for h in p.history],
            failure=[f for p in parts for f in p.failure],
            best_epoch=[b for p in parts for b in p.best_epoch],
            best_params=jax.tree.map(concat, *[p.best_params for p in parts]),
            last_params=jax.tree.map(concat, *[p.last_params for p in parts]),
            probs={n: np.concatenate([p.probs[n] for p in parts], axis=1) for n in parts[0].probs},
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
            outs.append(
                self._eval(params, self._host_rows(batch), batch["labels"], batch["weights"])
            )
        outs = jax.device_get(outs)  # host arithmetic from here: no eager device ops to compile
        probs = np.concatenate([o[0] for o in outs], axis=-2)
        loss = np.sum([o[1] for o in outs], axis=0)
        cm = np.sum([o[2] for o in outs], axis=0)
        return probs[:, : len(split)], np.asarray(loss), cm

    def _fit_group(
        self, lr, dropout, wd, seeds, sample_weights, eval_splits, keep_probs, back=None
    ):
        """Train the trials ``seeds`` [K] together; params in the public layout (trial first),
        trial k of them = trial back[k] here (default: the same order)."""
        k = len(seeds)
        in_order = back is None or np.array_equal(back, np.arange(k))
        if in_order:
            to_public = self._swap
        else:
            to_public = lambda p: self._swap(p, jnp.asarray(back))
        params, opt = self._init(seeds)
        num_dropout = int(np.sum(dropout > 0))
        shared_seed = len(set(np.asarray(seeds)[:num_dropout].tolist())) <= 1
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
        final_improved = np.zeros(k, bool)
        for epoch in range(self.num_epochs):
            losses = []
            for i, batch in enumerate(self.train_batches.epoch(epoch)):
                if i >= self.steps_per_epoch:
                    break
                index = batch["index"]
                sw = np.where(index >= 0, sample_weights[:, np.maximum(index, 0)], 0.0)
                rows = self._host_rows(batch)  # NumPy: the jitted call transfers it
                params, opt, loss = self._train(
                    params,
                    opt,
                    *hyper,
                    seeds_dev,
                    rows,
                    batch["labels"],
                    (batch["weights"][None] * sw).astype(np.float32),
                    step,
                    num_dropout,
                    shared_seed,
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
            if keep_probs:
                for name, (probs, _, _) in evals.items():
                    probs_out[name].append(probs)
            last_epoch = epoch == self.num_epochs - 1 or (
                all(stopped[i] or failure[i] for i in range(k)) and not keep_probs
            )
            if last_epoch:  # the final selection is made with the public layout, below
                final_improved = improved
                break
            if improved.any():
                best_params = self._select(jnp.asarray(improved), params, best_params)
        last_public = to_public(params)
        if final_improved.all():  # every best is the last epoch's: one array serves both
            best_public = last_public
        elif final_improved.any():
            best_public = to_public(self._select(jnp.asarray(final_improved), params, best_params))
        else:
            best_public = to_public(best_params)
        return GroupResult(
            history=history,
            failure=failure,
            best_epoch=best_epoch,
            best_params=best_public,
            last_params=last_public,
            probs={n: np.stack(v) for n, v in probs_out.items() if v},
        )

    def evaluate(self, params: Any, split: Any) -> list[dict[str, float]]:
        """Loss, accuracy and macro F1 of each of the K params (leading axis K) on ``split``."""
        _, loss_sum, cm = self._evaluate(self._swap(params), split)
        acc, f1 = self._scores(cm)
        return [
            {
                "loss": float(loss_sum[t]) / max(len(split), 1),
                "accuracy": float(acc[t]),
                "macro_f1": float(f1[t]),
            }
            for t in range(cm.shape[0])
        ]
