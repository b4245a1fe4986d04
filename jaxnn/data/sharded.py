"""Several processes, one corpus: each process tokenizes and encodes only its share.

P processes (hosts) train on global batches of B rows; process p feeds the rows
[p B / P, (p + 1) B / P) of every global batch (`jaxnn.train.distributed.local_rows`). All P must
agree on the vocabulary (counts over the whole training split), on every text's length (the
length buckets and sort pools decide each global batch's shape and composition) and on the
unknown-word statistics (logged and reported). `plan_splits` gets all three without any process
tokenizing the whole corpus (N texts, L = max_len):

1. Plan pass: process p tokenizes its share, the texts n ≡ p (mod P) of every split, once
   (ceil or floor of N / P texts): word counts c_p[w] over its training texts, and the token
   length len_n of each of its texts.
2. Exchange (`ProcessGroup.allgather`): every process receives every share's counts and lengths.
   counts[w] = Σ_p c_p[w] is the count over the whole training split, and `Vocabulary.from_counts`
   depends only on the (word, count) pairs, so every process builds the vocabulary one process
   builds. lengths[p + kP] = share p's k-th length, then min(len_n, L): the lengths one process
   computes, hence the same batches (`BatchIterator.order` reads lengths only).
3. Each process encodes its share with the vocabulary (those rows are kept) and counts the
   out-of-vocabulary words among its kept tokens; a second exchange sums them (`UnkStats`
   of the whole split, equal to one process's).
4. Training and evaluation ask a `ShardedSplit` only for the rows of each global batch that the
   process feeds (`ShardedSplit.rows`, called by `BatchIterator.make_batch`); a row not held yet
   is tokenized and encoded then and kept, so no text is tokenized twice by a process.

Cost per process, N texts, E epochs of a shuffled split: the plan pass tokenizes N / P texts;
epoch e feeds a fresh random N / P rows, of which the ones not held yet are tokenized: at most
N / P per epoch and, in expectation, N (1 - (1 - 1/P)^(E+1)) in all (P = 2, E = 1: 0.75 N; P = 8,
E = 1: 0.23 N); with the plan read from the cache (`prepare`), N (1 - (1 - 1/P)^E). An
evaluation split (fixed order) costs at most 2 N / P texts the first time, then nothing. Memory:
the rows held, never a whole [N, L] matrix unless every row was fed. Every process still loads
all N texts (the corpus readers have no random access). One process (P = 1) never comes here:
`prepare` encodes the whole corpus as before.

Why not simpler: a fixed shard per process (each shuffling its own texts) makes the global
batches depend on P, so 2 processes x 2 devices would no longer train like 1 process x 4; and
exchanging the encoded shares would give every process the whole [N, L] matrix again (N L 4
bytes through every allgather).

Edge cases: a share may be empty (N < P); a text of 0 tokens is an all-padding row, as with one
process. Tokens never contain "\\n" (whitespace is never a token), which separates the words of
an exchanged share.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from jaxnn.data._checks import check_positive_int
from jaxnn.data.text import tokenize_batch
from jaxnn.data.vocab import (
    UnkStats,
    Vocabulary,
    encode_token_batch,
    encode_with_oov_counts,
)

__all__ = ["ProcessGroup", "ShardedSplit", "plan_splits", "share_indices"]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the P processes of a run, and how they exchange host data.

    Attributes:
      index: p, 0 <= p < count.
      count: P >= 1.
      allgather: ``allgather(payload: bytes) -> list[bytes]``, a collective every process calls
        in the same order: P payloads, process 0's first (`jaxnn.train.distributed.allgather_bytes`
        over ``jax.distributed``; a test may join threads).
    """

    index: int
    count: int
    allgather: Callable[[bytes], list[bytes]]

    def __post_init__(self) -> None:
        check_positive_int("ProcessGroup.count", self.count)
        if isinstance(self.index, bool) or not isinstance(self.index, int | np.integer):
            raise TypeError(f"ProcessGroup.index must be an int, got {self.index!r}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"ProcessGroup.index={self.index} is not allowed; allowed: 0 <= index < "
                f"count={self.count}"
            )

    def exchange(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every process's ``arrays`` (NumPy, no objects), in process order."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payloads = self.allgather(buffer.getvalue())
        if len(payloads) != self.count:
            raise RuntimeError(f"allgather returned {len(payloads)} payloads for {self.count}")
        out = []
        for payload in payloads:
            with np.load(io.BytesIO(payload), allow_pickle=False) as loaded:
                out.append({key: loaded[key] for key in loaded.files})
        return out


def share_indices(num_texts: int, group: ProcessGroup) -> np.ndarray:
    """int64 [ceil((N - p) / P)] the texts process p tokenizes in the plan pass: n ≡ p (mod P)."""
    return np.arange(group.index, num_texts, group.count, dtype=np.int64)


def _words(types: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(types).encode("utf-8"), dtype=np.uint8)


def _unwords(data: np.ndarray, count: int) -> list[str]:
    words = data.tobytes().decode("utf-8").split("\n") if count else []
    if len(words) != count:
        raise RuntimeError(f"exchanged {len(words)} words for {count} counts")
    return words


def _merge_counts(parts: list[tuple[list[str], np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """Σ over parts of (words, counts) -> (distinct words, int64 counts)."""
    index: dict[str, int] = {}
    for words, _ in parts:
        for word in words:
            index.setdefault(word, len(index))
    total = np.zeros(len(index), dtype=np.int64)
    for words, counts in parts:
        if words:
            np.add.at(
                total, np.fromiter(map(index.__getitem__, words), np.int64, len(words)), counts
            )
    return list(index), total


class ShardedSplit:
    """One split of a multi-process run: the whole split's plan, only this process's rows.

    Same attributes as an `EncodedSplit` except ``tokens``, which no process holds whole:

    Attributes:
      lengths: int32 [N] min(len_n, L) of every text (every process has the same).
      labels: int32 [N].
      num_truncated: texts longer than L tokens, in the whole split.
      unk: `UnkStats` of the whole split.
      max_len: L.
      num_tokenized: texts this process has tokenized for this split (plan pass + on demand).
      num_held: rows this process holds encoded.

    ``rows(index, width)`` -> int32 [K, width], the first ``width`` token ids of the texts
    ``index`` [K] (ids as `Vocabulary.encode` gives them); rows not held are tokenized and encoded
    first and kept. Thread-safe (batches are built on a prefetch thread).
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: np.ndarray,
        lengths: np.ndarray,
        *,
        vocab: Vocabulary,
        max_len: int,
        num_truncated: int,
        unk: UnkStats,
        held_index: np.ndarray | None = None,
        held_tokens: np.ndarray | None = None,
        num_tokenized: int = 0,
    ):
        self.max_len = check_positive_int("max_len", max_len)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.lengths = np.asarray(lengths, dtype=np.int32)
        if self.labels.shape != (len(texts),) or self.lengths.shape != (len(texts),):
            raise ValueError(
                f"labels {self.labels.shape} and lengths {self.lengths.shape} must both be "
                f"({len(texts)},), one per text"
            )
        self.texts = texts
        self.vocab = vocab
        self.num_truncated = int(num_truncated)
        self.unk = unk
        self.num_tokenized = int(num_tokenized)
        self._slot = np.full(len(texts), -1, dtype=np.int64)
        self._store = np.zeros((0, self.max_len), dtype=np.int32)
        self._held = 0
        self._lock = threading.Lock()
        if held_index is not None:
            self._keep(np.asarray(held_index, dtype=np.int64), np.asarray(held_tokens, np.int32))

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_held(self) -> int:
        return self._held

    def _keep(self, index: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape != (index.size, self.max_len):
            raise ValueError(
                f"held tokens must be [{index.size}, {self.max_len}], got {tokens.shape}"
            )
        need = self._held + index.size
        if need > self._store.shape[0]:
            grown = np.zeros((max(need, 2 * self._store.shape[0]), self.max_len), np.int32)
            grown[: self._held] = self._store[: self._held]
            self._store = grown
        self._store[self._held : need] = tokens
        self._slot[index] = np.arange(self._held, need)
        self._held = need

    def rows(self, index: np.ndarray, width: int | None = None) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        width = self.max_len if width is None else min(int(width), self.max_len)
        with self._lock:
            missing = np.unique(index[self._slot[index] < 0])
            if missing.size:
                batch = tokenize_batch([self.texts[i] for i in missing.tolist()])
                self.num_tokenized += int(missing.size)
                encoded, _ = encode_token_batch(self.vocab, batch, self.max_len)
                if not np.array_equal(encoded.lengths, self.lengths[missing]):
                    k = int(np.argmax(encoded.lengths != self.lengths[missing]))
                    raise RuntimeError(
                        f"text {int(missing[k])} has {int(encoded.lengths[k])} kept tokens but "
                        f"the plan says {int(self.lengths[missing[k]])}: the texts are not the "
                        "ones the plan was made from (a stale plan cache?)"
                    )
                self._keep(missing, encoded.tokens)
            return self._store[self._slot[index], :width]


@dataclass(frozen=True)
class _Share:
    """One split's share on this process: its texts and their encoded rows."""

    index: np.ndarray  # int64 [K] texts of the share
    tokens: np.ndarray  # int32 [K, L]


def plan_splits(
    splits: dict[str, tuple[Sequence[str], np.ndarray]],
    group: ProcessGroup,
    *,
    max_len: int,
    vocab: Vocabulary | None = None,
    vocab_split: str = "train",
    min_freq: int = 1,
    max_size: int | None = None,
) -> tuple[Vocabulary, dict[str, ShardedSplit]]:
    """Steps 1-3 of the module docstring for every split of ``splits`` ({name: (texts, labels)}).

    With ``vocab=None`` the vocabulary is built from the counts of ``splits[vocab_split]``
    (``min_freq``, ``max_size`` as for `Vocabulary.build`); otherwise ``vocab`` is used (a test
    split). Every process of ``group`` must call it with the same splits, in the same order.

    Returns:
      (vocab, {name: `ShardedSplit`}), identical plans on every process.
    """
    max_len = check_positive_int("max_len", max_len)
    if vocab is None and vocab_split not in splits:
        raise ValueError(f"vocab_split={vocab_split!r} is not one of the splits {sorted(splits)}")
    names = list(splits)
    shares = {name: share_indices(len(splits[name][0]), group) for name in names}
    # 1. one tokenizing pass over this process's share of every split
    texts = [splits[name][0][i] for name in names for i in shares[name].tolist()]
    batch = tokenize_batch(texts)
    bounds = np.cumsum([0, *(shares[name].size for name in names)])
    parts = {name: slice(int(bounds[k]), int(bounds[k + 1])) for k, name in enumerate(names)}
    # 2. exchange counts (when building the vocabulary) and lengths
    mine = {f"lengths/{name}": batch.lengths[parts[name]] for name in names}
    mine["sizes"] = np.asarray([len(splits[name][0]) for name in names], dtype=np.int64)
    if vocab is None:
        counts = np.bincount(batch.select(parts[vocab_split]).ids, minlength=len(batch.types))
        present = np.flatnonzero(counts)
        mine["words"] = _words([batch.types[i] for i in present.tolist()])
        mine["counts"] = counts[present].astype(np.int64)
    gathered = group.exchange(mine)
    for p, g in enumerate(gathered):  # the same corpus everywhere, or the plans would differ
        if not np.array_equal(g["sizes"], mine["sizes"]):
            raise ValueError(
                f"process {p} loaded {dict(zip(names, g['sizes'].tolist()))} texts but process "
                f"{group.index} {dict(zip(names, mine['sizes'].tolist()))}; every process must "
                "load the same corpus with the same options and seed"
            )
    if vocab is None:
        words, total = _merge_counts(
            [(_unwords(g["words"], g["counts"].size), g["counts"]) for g in gathered]
        )
        vocab = Vocabulary.from_counts(words, total, min_freq=min_freq, max_size=max_size)
    raw_lengths = {}
    for name in names:
        full = np.zeros(len(splits[name][0]), dtype=np.int64)
        for p, g in enumerate(gathered):
            full[p :: group.count] = g[f"lengths/{name}"]
        raw_lengths[name] = full
    # 3. encode the share; exchange the unknown-word counts of the kept tokens
    local: dict[str, _Share] = {}
    mine = {}
    for name in names:
        part = batch.select(parts[name])
        encoded, num_tokens, oov_counts = encode_with_oov_counts(vocab, part, max_len)
        local[name] = _Share(shares[name], encoded.tokens)
        present = np.flatnonzero(oov_counts)
        mine[f"tokens/{name}"] = np.asarray([num_tokens], dtype=np.int64)
        mine[f"oov_words/{name}"] = _words([part.types[i] for i in present.tolist()])
        mine[f"oov_counts/{name}"] = oov_counts[present]
    gathered = group.exchange(mine)
    out = {}
    for name in names:
        words, total = _merge_counts(
            [
                (
                    _unwords(g[f"oov_words/{name}"], g[f"oov_counts/{name}"].size),
                    g[f"oov_counts/{name}"],
                )
                for g in gathered
            ]
        )
        num_tokens = sum(int(g[f"tokens/{name}"][0]) for g in gathered)
        texts, labels = splits[name]
        out[name] = ShardedSplit(
            texts,
            labels,
            np.minimum(raw_lengths[name], max_len),
            vocab=vocab,
            max_len=max_len,
            num_truncated=int(np.count_nonzero(raw_lengths[name] > max_len)),
            unk=UnkStats.from_oov_counts(num_tokens, words, total),
            held_index=local[name].index,
            held_tokens=local[name].tokens,
            num_tokenized=int(local[name].index.size),
        )
    return vocab, out
