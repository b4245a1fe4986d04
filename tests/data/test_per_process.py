"""jaxnn/data/per_process.py: a process's rows of a global batch are those rows of the whole
batch (same tokens, mask, labels, weights, padded to the whole batch's bucket length)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnn.data.batches import BatchIterator
from jaxnn.data.per_process import process_batch


class _Encoded:
    def __init__(self, lengths: np.ndarray, max_len: int):
        self.lengths = lengths
        self.tokens = np.zeros((len(lengths), max_len), np.int32)
        for i, n in enumerate(lengths):
            self.tokens[i, :n] = np.arange(2, 2 + n) + 100 * i


@pytest.mark.parametrize("rows", [slice(0, 4), slice(4, 8), slice(2, 6)])
def test_a_process_gets_its_rows_of_the_whole_batch(rows):
    lengths = np.array([3, 30, 5, 7, 2, 9, 4, 6])
    encoded = _Encoded(lengths, 32)
    labels = np.arange(8) % 3
    batches = BatchIterator(encoded, labels, batch_size=8, shuffle=True, buckets=(8, 16, 32))
    index = np.array([4, 0, 2, 6, 3, 5, 7, 1])
    whole = batches.make_batch(index)
    mine = process_batch(batches, index, rows)
    assert set(mine) == set(whole)
    for key, value in whole.items():
        np.testing.assert_array_equal(mine[key], value[rows], err_msg=key)


def test_one_process_gets_the_whole_batch():
    lengths = np.array([3, 5, 2, 4])
    batches = BatchIterator(_Encoded(lengths, 8), np.zeros(4, int), batch_size=4, shuffle=True)
    index = np.array([3, 1, 0, 2])
    whole = batches.make_batch(index)
    mine = process_batch(batches, index, slice(0, 4))
    for key, value in whole.items():
        np.testing.assert_array_equal(mine[key], value)
