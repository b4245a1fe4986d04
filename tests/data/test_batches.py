"""Tests for jaxnn/data/batches.py: fixed-shape bucketed batches, epochs, prefetch."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn.data.batches import (
    BatchIterator,
    default_buckets,
    eval_batches,
    make_batches,
    prefetch,
)
from jaxnn.data.vocab import Encoded


def _encoded(lengths, max_len):
    """Rows whose token t of example n is 1000 * (n + 1) + t + 1 (distinct, never PAD)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = lengths.size
    values = 1000 * (np.arange(n)[:, None] + 1) + np.arange(max_len)[None, :] + 1
    tokens = np.where(np.arange(max_len)[None, :] < lengths[:, None], values, 0).astype(np.int32)
    return Encoded(tokens, lengths, 0)


def _check_batch(batch, encoded, labels, batch_size, buckets):
    """Every field of one batch against the source arrays (via the "index" key)."""
    assert set(batch) == {"tokens", "mask", "labels", "weights", "index"}
    tokens, mask, index = batch["tokens"], batch["mask"], batch["index"]
    assert tokens.dtype == np.int32 and mask.dtype == bool
    assert batch["labels"].dtype == np.int32 and batch["weights"].dtype == np.float32
    length = tokens.shape[1]
    assert tokens.shape == mask.shape == (batch_size, length)
    assert length in buckets
    real = index >= 0
    longest = encoded.lengths[index[real]].max(initial=0)
    assert length == min(b for b in buckets if b >= longest)  # the smallest bucket that fits
    np.testing.assert_array_equal(batch["weights"], real.astype(np.float32))
    for row in range(batch_size):
        if real[row]:
            n = index[row]
            width = min(length, encoded.tokens.shape[1])
            assert tokens[row, :width].tolist() == encoded.tokens[n, :width].tolist()
            assert not tokens[row, width:].any()
            assert mask[row].tolist() == [t < encoded.lengths[n] for t in range(length)]
            assert batch["labels"][row] == labels[n]
        else:  # padding row: nothing real, weight 0
            assert not tokens[row].any() and not mask[row].any() and batch["labels"][row] == 0


def test_default_buckets():
    assert default_buckets(300) == (16, 32, 64, 128, 256, 300)
    assert default_buckets(256) == (16, 32, 64, 128, 256)
    assert default_buckets(8) == (8,)
    assert default_buckets(40, smallest=5) == (8, 16, 32, 40)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=37),
    st.integers(1, 8),
    st.sampled_from(["drop", "pad"]),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_training_epochs_fields_and_coverage(lengths, batch_size, remainder, epoch, sort_pool):
    n = len(lengths)
    if remainder == "drop" and n < batch_size:
        return
    encoded = _encoded(lengths, 40)
    labels = np.arange(n) % 3
    buckets = (4, 16, 40)
    it = BatchIterator(
        encoded,
        labels,
        batch_size=batch_size,
        shuffle=True,
        seed=7,
        remainder=remainder,
        buckets=buckets,
        sort_pool=sort_pool,
        return_index=True,
    )
    batches = list(it.epoch(epoch))
    assert len(batches) == it.num_batches() == len(it)
    expected = n // batch_size if remainder == "drop" else -(-n // batch_size)
    assert it.num_batches() == expected
    seen = []
    for batch in batches:
        _check_batch(batch, encoded, labels, batch_size, buckets)
        seen.extend(batch["index"][batch["index"] >= 0].tolist())
    assert len(seen) == len(set(seen))  # no example twice in an epoch
    if remainder == "pad":
        assert sorted(seen) == list(range(n))  # every example once
    else:
        assert len(seen) == batch_size * (n // batch_size)


def test_epochs_reshuffle_and_resume_identically():
    encoded = _encoded(np.full(50, 3), 8)
    labels = np.zeros(50)
    first = BatchIterator(encoded, labels, batch_size=10, shuffle=True, seed=1, return_index=True)
    orders = [np.concatenate([b["index"] for b in first.epoch(e)]) for e in range(3)]
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    # A new iterator (a resumed run) at epoch 2 sees exactly the same batches.
    resumed = BatchIterator(encoded, labels, batch_size=10, shuffle=True, seed=1, return_index=True)
    assert np.array_equal(np.concatenate([b["index"] for b in resumed.epoch(2)]), orders[2])
    other_seed = BatchIterator(
        encoded, labels, batch_size=10, shuffle=True, seed=2, return_index=True
    )
    assert not np.array_equal(np.concatenate([b["index"] for b in other_seed.epoch(0)]), orders[0])


def test_drop_remainder_drops_different_examples_each_epoch():
    encoded = _encoded(np.full(23, 2), 4)
    it = BatchIterator(encoded, np.zeros(23), batch_size=5, shuffle=True, seed=0, return_index=True)
    dropped = []
    for epoch in range(4):
        kept = {i for b in it.epoch(epoch) for i in b["index"].tolist()}
        assert len(kept) == 20
        dropped.append(frozenset(set(range(23)) - kept))
    assert len(set(dropped)) > 1


def test_evaluation_counts_every_example_exactly_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, size=103)
    encoded = _encoded(lengths, 30)
    labels = rng.integers(0, 4, size=103)
    it = eval_batches(encoded, labels, batch_size=16, return_index=True)
    batches = list(it.epoch())
    assert len(batches) == 7 == it.num_batches()
    index = np.concatenate([b["index"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert index[weights > 0].tolist() == list(range(103))  # in order, none dropped
    assert weights.sum() == 103
    # A weighted statistic over batches equals the plain NumPy one over the examples.
    per_example = np.concatenate([b["mask"].sum(axis=1) * (b["labels"] == 2) for b in batches])
    assert (per_example * weights).sum() / weights.sum() == pytest.approx(
        np.mean(lengths * (labels == 2))
    )
    for batch in batches:
        _check_batch(batch, encoded, labels, 16, default_buckets(30))


def test_sort_pool_reduces_padding_and_keeps_examples():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 256, size=512)
    encoded = _encoded(lengths, 256)
    labels = np.zeros(512)

    def cells(sort_pool):
        it = BatchIterator(
            encoded,
            labels,
            batch_size=16,
            shuffle=True,
            seed=3,
            sort_pool=sort_pool,
            return_index=True,
        )
        batches = list(it.epoch(0))
        index = sorted(i for b in batches for i in b["index"].tolist())
        assert index == list(range(512))
        return sum(b["tokens"].size for b in batches)

    assert cells(8) < 0.8 * cells(0)


def test_make_batches_is_one_epoch_of_the_iterator():
    encoded = _encoded([3, 1, 4, 1, 5, 9, 2, 6], 9)
    labels = np.arange(8)
    a = list(
        make_batches(encoded, labels, batch_size=3, shuffle=True, seed=5, epoch=2, remainder="pad")
    )
    b = list(
        BatchIterator(encoded, labels, batch_size=3, shuffle=True, seed=5, remainder="pad").epoch(2)
    )
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_labels_default_to_encoded_labels():
    class WithLabels:
        tokens = _encoded([1, 2], 2).tokens
        lengths = np.array([1, 2])
        labels = np.array([1, 0])

    batch = next(eval_batches(WithLabels(), batch_size=2).epoch())
    assert batch["labels"].tolist() == [1, 0]


def test_all_empty_rows_use_the_smallest_bucket():
    batch = next(eval_batches(_encoded([0, 0], 64), np.zeros(2), batch_size=4).epoch())
    assert batch["tokens"].shape == (4, 16)
    assert not batch["mask"].any()
    assert batch["weights"].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_an_error(batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {batch_size}"):
        BatchIterator(_encoded([1], 4), [0], batch_size=batch_size, shuffle=True)


def test_argument_errors():
    enc = _encoded([1, 2, 3], 4)
    with pytest.raises(ValueError, match="remainder must be 'drop' or 'pad'"):
        BatchIterator(enc, [0, 0, 0], batch_size=2, shuffle=True, remainder="keep")
    with pytest.raises(ValueError, match="evaluation must see every example"):
        BatchIterator(enc, [0, 0, 0], batch_size=2, shuffle=False, remainder="drop")
    with pytest.raises(ValueError, match="no batch"):
        BatchIterator(enc, [0, 0, 0], batch_size=4, shuffle=True, remainder="drop")
    with pytest.raises(ValueError, match="largest bucket 2 is shorter than a row"):
        BatchIterator(enc, [0, 0, 0], batch_size=2, shuffle=True, buckets=(1, 2))
    with pytest.raises(ValueError, match="distinct increasing"):
        BatchIterator(enc, [0, 0, 0], batch_size=2, shuffle=True, buckets=(4, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        BatchIterator(enc, [0, 0], batch_size=2, shuffle=True)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        BatchIterator(enc, [0, 0, 0], batch_size=2.0, shuffle=True)


def test_bucket_longer_than_max_len_pads_with_zeros():
    enc = _encoded([3, 5], 5)
    batch = next(eval_batches(enc, [0, 1], batch_size=2, buckets=(8,)).epoch())
    assert batch["tokens"].shape == (2, 8)
    assert batch["tokens"][1, :5].tolist() == enc.tokens[1].tolist()
    assert not batch["tokens"][:, 5:].any()


# --- prefetch ------------------------------------------------------------------------------------


def test_prefetch_preserves_order_and_applies_transform():
    out = list(prefetch(range(100), size=3, transform=lambda x: x * x))
    assert out == [x * x for x in range(100)]


def test_prefetch_runs_ahead_on_a_background_thread():
    produced = []
    names = set()

    def source():
        for i in range(5):
            names.add(threading.current_thread().name)
            produced.append(i)
            yield i

    it = prefetch(source(), size=2)
    deadline = time.monotonic() + 5
    while len(produced) < 3 and time.monotonic() < deadline:  # 2 queued + 1 waiting to be put
        time.sleep(0.01)
    assert produced == [0, 1, 2]  # before anything was consumed
    assert names == {"jaxnn-prefetch"}
    assert list(it) == [0, 1, 2, 3, 4]


def test_prefetch_forwards_exceptions():
    def source():
        yield 1
        raise RuntimeError("boom in the producer")

    it = prefetch(source())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom in the producer"):
        next(it)


def test_prefetch_stops_its_thread_when_closed():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = {t for t in threading.enumerate() if t.name == "jaxnn-prefetch"}
    it = prefetch(endless(), size=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = {t for t in threading.enumerate() if t.name == "jaxnn-prefetch"} - before
        if not alive:
            break
        time.sleep(0.02)
    assert not alive


def test_prefetch_rejects_bad_size():
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        prefetch([1], size=0)
