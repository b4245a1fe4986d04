"""Epochs of fixed-shape batches and a background prefetch thread.

Batch size B = examples per forward/backward pass; an epoch = one pass over every example.

A batch is a dict of NumPy arrays:

    tokens  int32   [B, L]  token ids, PAD_ID (0) after each row's length
    mask    bool    [B, L]  True on real tokens: mask[b, t] = t < length[b]
    labels  int32   [B]     class ids (0 on padding rows)
    weights float32 [B]     1.0 for a real example, 0.0 for a padding row
    index   int64   [B]     (only with return_index=True) example index, -1 on padding rows

L is the smallest bucket length >= the longest row in the batch; buckets default to the powers of
two from 16 up to max_len, plus max_len, so a jitted step compiles at most once per bucket.

Training (shuffle=True): the order of epoch e is a permutation drawn from
``numpy.random.default_rng([seed, e])``: reshuffled every epoch, identical when a run resumes at
epoch e. The last partial batch is dropped (remainder="drop"; different examples each epoch) or
filled with zero-weight padding rows (remainder="pad").

Evaluation (shuffle=False): examples in order, every one exactly once; the last batch is padded
with zero-weight rows, so a weighted sum over batches counts each example once. remainder="drop"
is refused without shuffling.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np

from jaxnn.data._checks import check_positive_int
from jaxnn.data.errors import BadDataError

__all__ = ["BatchIterator", "default_buckets", "eval_batches", "make_batches", "prefetch"]

T = TypeVar("T")
U = TypeVar("U")
Batch = dict[str, np.ndarray]


class _EncodedLike(Protocol):
    tokens: np.ndarray
    lengths: np.ndarray


class _RowSource(Protocol):  # a `jaxnn.data.sharded.ShardedSplit`
    lengths: np.ndarray
    max_len: int

    def rows(self, index: np.ndarray, width: int) -> np.ndarray: ...


def default_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_len``, then ``max_len`` itself.

    Example: default_buckets(300) = (16, 32, 64, 128, 256, 300); default_buckets(8) = (8,).
    """
    check_positive_int("max_len", max_len)
    check_positive_int("smallest", smallest)
    buckets = []
    length = 1
    while length < smallest:
        length *= 2
    while length < max_len:
        buckets.append(length)
        length *= 2
    return (*buckets, max_len)


class BatchIterator:
    """Fixed-shape batches of an encoded split, epoch after epoch (see the module docstring).

    Args:
      encoded: anything with ``tokens`` int32 [N, max_len] and ``lengths`` int [N] (an
        `Encoded` or `EncodedSplit`), or a `ShardedSplit` (``lengths`` [N], ``max_len`` and
        ``rows(index, width)``, which encodes rows only when a batch asks for them: a process
        of a multi-process run builds only its own rows, `jaxnn.data.sharded`).
      labels: int [N]; None takes ``encoded.labels``.
      batch_size: B >= 1.
      shuffle: True for training (reshuffled from (seed, epoch)); False keeps the order.
      seed: the shuffling seed.
      remainder: "drop" (only with shuffle=True) or "pad" the last partial batch.
      buckets: allowed lengths L, increasing; default `default_buckets(max_len)`.
      sort_pool: 0 = off; k > 1 groups examples of similar length: the epoch order is cut into
        pools of k*B examples, each pool is sorted by length and cut into batches, and (when
        shuffling) the order of the full batches is shuffled. Less padding, same examples.
      return_index: add the example indices (key "index", -1 on padding rows).

    Example:
      >>> it = BatchIterator(enc, labels, batch_size=32, shuffle=True, seed=0)
      >>> for epoch in range(3):
      ...     for batch in prefetch(it.epoch(epoch)):
      ...         state = train_step(state, batch)
    """

    def __init__(
        self,
        encoded: _EncodedLike | _RowSource,
        labels: np.ndarray | Sequence[int] | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        remainder: str = "drop",
        buckets: Sequence[int] | None = None,
        sort_pool: int = 0,
        return_index: bool = False,
    ):
        batch_size = check_positive_int("batch_size", batch_size)
        if remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
        if remainder == "drop" and not shuffle:
            raise ValueError(
                "remainder='drop' with shuffle=False would drop the same examples every time; "
                "evaluation must see every example: use remainder='pad'"
            )
        if isinstance(sort_pool, bool) or not isinstance(sort_pool, int) or sort_pool < 0:
            raise ValueError(f"sort_pool must be an int >= 0, got {sort_pool!r}")
        lengths = np.asarray(encoded.lengths)
        tokens = getattr(encoded, "tokens", None)
        if tokens is None:  # rows encoded on demand (a ShardedSplit)
            if lengths.ndim != 1:
                raise ValueError(f"encoded.lengths must be [N], got shape {lengths.shape}")
            max_len = check_positive_int("encoded.max_len", encoded.max_len)
            rows = encoded.rows
        else:
            tokens = np.asarray(tokens)
            if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
                raise ValueError(
                    f"encoded.tokens must be [N, max_len] and encoded.lengths [N]; got shapes "
                    f"{tokens.shape} and {lengths.shape}"
                )
            max_len = tokens.shape[1]
            rows = lambda index, width: tokens[index, :width]
        if labels is None:
            labels = getattr(encoded, "labels", None)
            if labels is None:
                raise ValueError("labels=None but encoded has no labels")
        labels = np.asarray(labels)
        if labels.shape != lengths.shape:
            raise ValueError(f"labels must have shape {lengths.shape}, got {labels.shape}")
        num_examples = lengths.shape[0]
        if buckets is None:
            buckets = default_buckets(max_len)
        buckets = tuple(check_positive_int("buckets[i]", b) for b in buckets)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must be distinct increasing lengths, got {buckets}")
        longest = int(lengths.max(initial=0))
        if buckets[-1] < longest:
            raise ValueError(f"the largest bucket {buckets[-1]} is shorter than a row ({longest})")
        if remainder == "drop" and num_examples < batch_size:
            raise BadDataError(
                f"batch_size={batch_size} is larger than the {num_examples} examples; with "
                "remainder='drop' an epoch would have no batch: use more data or a smaller batch "
                "size (train.batch_size in a run config), or remainder='pad' when calling "
                "BatchIterator yourself"
            )
        self.tokens = tokens  # None for a ShardedSplit
        self.max_len = int(max_len)
        self._rows = rows
        self.lengths = lengths.astype(np.int64)
        self.labels = labels.astype(np.int32)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.remainder = remainder
        self.buckets = buckets
        self.sort_pool = sort_pool
        self.return_index = return_index
        self._bucket_array = np.asarray(buckets)

    @property
    def num_examples(self) -> int:
        return int(self.lengths.shape[0])

    @staticmethod
    def count_batches(num_examples: int, batch_size: int, remainder: str) -> int:
        """Batches per epoch: floor(N / B) for "drop", ceil(N / B) for "pad"."""
        if remainder == "drop":
            return num_examples // batch_size
        return -(-num_examples // batch_size)

    def num_batches(self) -> int:
        """Batches per epoch (the same every epoch)."""
        return self.count_batches(self.num_examples, self.batch_size, self.remainder)

    def __len__(self) -> int:
        return self.num_batches()

    def order(self, epoch: int = 0) -> list[np.ndarray]:
        """The example indices of every batch of ``epoch`` (a padded batch's are fewer than B)."""
        n, size = self.num_examples, self.batch_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, int(epoch)])
            order = rng.permutation(n)
        else:
            rng = None
            order = np.arange(n)
        if self.remainder == "drop":
            order = order[: n - n % size]
        if self.sort_pool > 1:
            pool = self.sort_pool * size
            chunks = []
            for start in range(0, order.size, pool):
                part = order[start : start + pool]
                chunks.append(part[np.argsort(self.lengths[part], kind="stable")])
            order = np.concatenate(chunks) if chunks else order
        batches = [order[i : i + size] for i in range(0, order.size, size)]
        if self.sort_pool > 1 and rng is not None:
            full = [b for b in batches if b.size == size]
            partial = [b for b in batches if b.size < size]
            batches = [full[i] for i in rng.permutation(len(full))] + partial
        return batches

    def make_batch(self, index: np.ndarray) -> Batch:
        """The batch dict of the examples ``index`` (<= B of them; the rest padding rows)."""
        size, count = self.batch_size, index.size
        lengths = self.lengths[index]
        longest = int(lengths.max(initial=0))
        length = int(self._bucket_array[np.searchsorted(self._bucket_array, longest)])
        width = min(length, self.max_len)
        tokens = np.zeros((size, length), dtype=np.int32)
        tokens[:count, :width] = self._rows(index, width)
        row_lengths = np.zeros(size, dtype=np.int64)
        row_lengths[:count] = lengths
        labels = np.zeros(size, dtype=np.int32)
        labels[:count] = self.labels[index]
        weights = np.zeros(size, dtype=np.float32)
        weights[:count] = 1.0
        batch = {
            "tokens": tokens,
            "mask": np.arange(length) < row_lengths[:, None],
            "labels": labels,
            "weights": weights,
        }
        if self.return_index:
            full_index = np.full(size, -1, dtype=np.int64)
            full_index[:count] = index
            batch["index"] = full_index
        return batch

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, built lazily (wrap in `prefetch` to build them ahead)."""
        for index in self.order(epoch):
            yield self.make_batch(index)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


def make_batches(
    encoded: _EncodedLike,
    labels: np.ndarray | Sequence[int] | None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    remainder: str = "drop",
    buckets: Sequence[int] | None = None,
    sort_pool: int = 0,
) -> Iterator[Batch]:
    """The batches of one epoch: ``BatchIterator(...).epoch(epoch)``."""
    iterator = BatchIterator(
        encoded,
        labels,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        remainder=remainder,
        buckets=buckets,
        sort_pool=sort_pool,
    )
    return iterator.epoch(epoch)


def eval_batches(
    encoded: _EncodedLike,
    labels: np.ndarray | Sequence[int] | None = None,
    *,
    batch_size: int,
    buckets: Sequence[int] | None = None,
    sort_pool: int = 0,
    return_index: bool = False,
) -> BatchIterator:
    """Evaluation batches: in order, none dropped, last one padded with zero-weight rows."""
    return BatchIterator(
        encoded,
        labels,
        batch_size=batch_size,
        shuffle=False,
        remainder="pad",
        buckets=buckets,
        sort_pool=sort_pool,
        return_index=return_index,
    )


_ITEM, _END, _ERROR = range(3)


def prefetch(
    iterable: Iterable[T], size: int = 2, transform: Callable[[T], U] | None = None
) -> Iterator[U]:
    """Iterate ``iterable`` on a background thread, keeping up to ``size`` items ready.

    ``transform`` (e.g. ``jax.device_put``) runs on that thread too. The thread starts at once;
    an exception in it is re-raised in the consumer; closing or abandoning the returned
    generator stops the thread. Order is preserved.
    """
    size = check_positive_int("size", size)
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if transform is not None:
                    item = transform(item)
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as error:  # forwarded to the consumer
            put((_ERROR, error))

    thread = threading.Thread(target=work, name="jaxnn-prefetch", daemon=True)
    thread.start()

    def consume() -> Iterator[U]:
        try:
            while True:
                kind, item = items.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise item
                yield item
        finally:
            stop.set()
            if thread is not threading.current_thread():
                thread.join()  # no thread left inside JAX when the interpreter exits

    return consume()
