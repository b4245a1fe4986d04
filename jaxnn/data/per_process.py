"""One process's rows of a global batch: what each process of a multi-process run builds.

A global batch of B examples is split over P processes by rows (process p holds the contiguous
rows ``rows = slice(p B / P, (p + 1) B / P)``, `jaxnn.train.distributed.local_rows`). Each
process gathers, tokenizes (a `ShardedSplit` encodes on demand) and pads only its rows, but to
the bucket length of the *whole* global batch, so that every process agrees on the shape
[B / P, L] of its piece.
"""

from __future__ import annotations

import numpy as np

from jaxnn.data.batches import BatchIterator

__all__ = ["process_batch"]


def process_batch(batches: BatchIterator, index: np.ndarray, rows: slice) -> dict[str, np.ndarray]:
    """This process's ``rows`` of the global batch of examples ``index`` ([B] int).

    ``rows == slice(0, B)`` (one process): ``batches.make_batch(index)``. Otherwise only the
    examples ``index[rows]`` are built, then padded along L to the bucket of the longest example
    of the whole global batch (every process knows every example's length).

    Returns the batch dict of `BatchIterator.make_batch` restricted to ``rows``: tokens and mask
    [rows, L], labels and weights [rows].
    """
    size = batches.batch_size
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
