"""Tests for jaxnn/data/sharded.py: P processes, simulated by P threads joined by a barrier
allgather, each tokenize only their share. References: collections.Counter over `tokenize`
(vocabulary, lengths, unknown words), a transcription of the encoding, and the texts every
process actually hands to the tokenizer (counted by wrapping it)."""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxnn.data.batches import BatchIterator, eval_batches
from jaxnn.data.corpora import load_corpus, load_test_split
from jaxnn.data.prepare import prepare, prepare_test
from jaxnn.data.sharded import ProcessGroup, ShardedSplit
from jaxnn.data.text import tokenize, tokenize_batch
from jaxnn.data.vocab import UNK_ID

MAX_LEN = 12
# the modules, not the functions of the same name that jaxnn.data exports
sharded_module = importlib.import_module("jaxnn.data.sharded")
prepare_module = importlib.import_module("jaxnn.data.prepare")


@pytest.fixture
def corpus_csv(tmp_path):
    """A 3-class CSV whose texts are distinct (each ends in its own word t<i>)."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(80)]
    lines = ["text,label"]
    for i in range(300):
        label = ["red", "green", "blue"][i % 3]
        n = int(rng.integers(0, 25))
        lines.append(" ".join([label, *rng.choice(words, n), f"t{i}"]) + f",{label}")
    path = tmp_path / "corpus.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


class Tokenized:
    """Every text handed to the tokenizer, per simulated process (thread name)."""

    def __init__(self, monkeypatch):
        self.texts: dict[str, list[str]] = {}
        self._lock = threading.Lock()

        def counted(texts, *args, **kwargs):
            with self._lock:
                name = threading.current_thread().name
                self.texts.setdefault(name, []).extend(texts)
            return tokenize_batch(texts, *args, **kwargs)

        monkeypatch.setattr(sharded_module, "tokenize_batch", counted)
        monkeypatch.setattr(prepare_module, "tokenize_batch", counted)

    def of(self, p: int) -> list[str]:
        return self.texts.get(f"process-{p}", [])

    def reset(self) -> None:
        self.texts.clear()


def run_processes(count: int, fn):
    """fn(ProcessGroup) on ``count`` threads named process-<p>; their results in order."""
    barrier = threading.Barrier(count)
    slots: list[bytes | None] = [None] * count

    def allgather_of(p):
        def allgather(payload: bytes) -> list[bytes]:
            slots[p] = payload
            barrier.wait(timeout=60)
            out = list(slots)
            barrier.wait(timeout=60)
            return out

        return allgather

    results, errors = [None] * count, []

    def work(p):
        try:
            results[p] = fn(ProcessGroup(p, count, allgather_of(p)))
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(p,), name=f"process-{p}") for p in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def local_rows(p: int, count: int, batch_size: int) -> slice:
    """Process p's rows of a global batch, as `jaxnn.train.distributed.local_rows` gives them."""
    size = batch_size // count
    return slice(p * size, (p + 1) * size)


def reference_rows(vocab_tokens, texts, max_len):
    index = {w: i for i, w in enumerate(vocab_tokens)}
    rows = []
    for text in texts:
        ids = [index.get(w, UNK_ID) for w in tokenize(text)][:max_len]
        rows.append(ids + [0] * (max_len - len(ids)))
    return np.array(rows, dtype=np.int32).reshape(len(texts), max_len)


@pytest.mark.parametrize("count", [2, 3])
def test_each_process_tokenizes_its_share_and_its_rows_of_each_batch_only(
    corpus_csv, tmp_path, monkeypatch, count
):
    corpus = load_corpus(corpus_csv)
    train, val = corpus.train.texts, corpus.validation.texts
    where = {t: ("train", i) for i, t in enumerate(train)} | {
        t: ("validation", i) for i, t in enumerate(val)
    }
    batch_size, epochs = 12, 2
    tokenized = Tokenized(monkeypatch)

    def process(group):
        prep = prepare(
            corpus_csv,
            max_len=MAX_LEN,
            min_freq=2,
            data_dir=tmp_path / "cache",
            unk_warn_threshold=None,
            processes=group,
        )
        rows = local_rows(group.index, group.count, batch_size)
        it = BatchIterator(
            prep.train, batch_size=batch_size, shuffle=True, seed=0, sort_pool=2, buckets=(4, 12)
        )
        fed, batches, plan_texts = [], [], len(tokenized.of(group.index))
        for epoch in range(epochs):
            order = it.order(epoch)
            fed.append(np.concatenate([index[rows] for index in order]))
            batches.append([it.make_batch(index[rows]) for index in order])
        evals = eval_batches(prep.validation, batch_size=batch_size)
        val_fed = np.concatenate([index[rows] for index in evals.order(0)])
        val_batches = [evals.make_batch(index[rows]) for index in evals.order(0)]
        return prep, plan_texts, fed, batches, val_fed, val_batches, it.order

    results = run_processes(count, process)

    # the vocabulary of the whole training split (Counter reference), the same on every process
    counts = Counter(w for t in train for w in tokenize(t))
    words = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    for prep, *_ in results:
        assert list(prep.vocab.tokens) == ["<pad>", "<unk>", *words]
        assert isinstance(prep.train, ShardedSplit) and not hasattr(prep.train, "tokens")
        for split, texts in [(prep.train, train), (prep.validation, val)]:
            lengths = [len(tokenize(t)) for t in texts]
            assert split.lengths.tolist() == [min(n, MAX_LEN) for n in lengths]
            assert split.num_truncated == sum(n > MAX_LEN for n in lengths)
            kept = [w for t in texts for w in tokenize(t)[:MAX_LEN]]
            oov = Counter(w for w in kept if w not in prep.vocab)
            assert split.unk.num_tokens == len(kept)
            assert split.unk.num_unk == sum(oov.values())
            assert split.unk.num_oov_types == len(oov)
            top = sorted(oov.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
            assert list(split.unk.top_oov) == top
    orders = [r[6] for r in results]
    for epoch in range(epochs):  # every process plans the same global batches
        for other in orders[1:]:
            for a, b in zip(orders[0](epoch), other(epoch), strict=True):
                np.testing.assert_array_equal(a, b)

    reference = {
        "train": reference_rows(results[0][0].vocab.tokens, train, MAX_LEN),
        "validation": reference_rows(results[0][0].vocab.tokens, val, MAX_LEN),
    }
    for p, (_prep, plan_texts, fed, batches, val_fed, val_batches, _) in enumerate(results):
        texts = tokenized.of(p)
        # no text is tokenized twice by a process, and never another process's rows
        assert max(Counter(texts).values()) == 1
        share = set(train[p::count]) | set(val[p::count])
        assert set(texts[:plan_texts]) == share and plan_texts == len(share)
        needed = share | {train[i] for f in fed for i in f} | {val[i] for i in val_fed}
        assert set(texts) == needed
        # per epoch: this process's rows are 1/P of the epoch's examples
        steps = len(train) // batch_size
        for f in fed:
            assert f.size == steps * batch_size // count
        train_texts = [t for t in texts if where[t][0] == "train"]
        first_epoch = len(share & set(train)) + len({train[i] for i in fed[0]} - share)
        assert len(train_texts) <= first_epoch + fed[1].size
        assert len(train_texts) < len(train)  # never the whole training split
        # the rows are those of the reference encoding
        for f, epoch_batches in zip(fed, batches, strict=True):
            for k, batch in enumerate(epoch_batches):
                index = f[k * (batch_size // count) : (k + 1) * (batch_size // count)]
                width = batch["tokens"].shape[1]
                np.testing.assert_array_equal(
                    batch["tokens"][: index.size], reference["train"][index, :width]
                )
        for k, batch in enumerate(val_batches):
            index = val_fed[k * (batch_size // count) : (k + 1) * (batch_size // count)]
            index = index[index >= 0]
            width = batch["tokens"].shape[1]
            np.testing.assert_array_equal(
                batch["tokens"][: index.size], reference["validation"][index, :width]
            )
    # together the processes feed every example of the epoch's global batches exactly once
    for epoch in range(epochs):
        together = np.concatenate([r[2][epoch] for r in results])
        assert np.unique(together).size == together.size == (len(train) // batch_size) * batch_size
    together = np.concatenate([r[4] for r in results])
    assert sorted(together.tolist()) == list(range(len(val)))  # evaluation: none dropped


def test_the_plan_is_read_from_the_cache_when_every_process_has_it(
    corpus_csv, tmp_path, monkeypatch
):
    options = dict(max_len=MAX_LEN, min_freq=2, unk_warn_threshold=None)
    tokenized = Tokenized(monkeypatch)
    cold = run_processes(
        2, lambda g: prepare(corpus_csv, data_dir=tmp_path / "a", processes=g, **options)
    )
    assert cold[0].info["cache"]["hit"] is False
    assert cold[0].info["cache"]["path"].endswith(".plan")
    tokenized.reset()
    warm = run_processes(
        2, lambda g: prepare(corpus_csv, data_dir=tmp_path / "a", processes=g, **options)
    )
    assert all(w.info["cache"]["hit"] and w.info["cache"]["path"].endswith(".plan") for w in warm)
    assert tokenized.texts == {}  # nothing tokenized: vocabulary and lengths from the cache
    for a, b in zip(cold, warm, strict=True):
        assert a.vocab == b.vocab
        np.testing.assert_array_equal(a.train.lengths, b.train.lengths)
        assert a.validation.unk == b.validation.unk and b.train.num_held == 0

    # a damaged plan: every process makes the plan again (none fails alone), and rewrites it
    plan = Path(cold[0].info["cache"]["path"])
    damaged = (plan / "train.npz").read_bytes()
    (plan / "train.npz").write_bytes(damaged[: len(damaged) // 2])  # a cut zip: BadZipFile
    tokenized.reset()
    again = run_processes(
        2, lambda g: prepare(corpus_csv, data_dir=tmp_path / "a", processes=g, **options)
    )
    assert not any(a.info["cache"]["hit"] for a in again) and len(tokenized.of(1)) > 0
    assert again[0].vocab == cold[0].vocab
    with np.load(plan / "train.npz") as arrays:
        assert sorted(arrays.files) == ["labels", "lengths"]  # rewritten; never the tokens
        np.testing.assert_array_equal(arrays["lengths"], cold[1].train.lengths)

    # a one-process cache (written by prepare without processes) serves as a plan too
    single = prepare(corpus_csv, data_dir=tmp_path / "b", **options)
    tokenized.reset()
    from_single = run_processes(
        2, lambda g: prepare(corpus_csv, data_dir=tmp_path / "b", processes=g, **options)
    )
    assert tokenized.texts == {}
    assert from_single[1].info["cache"]["path"] == single.info["cache"]["path"]
    assert from_single[1].vocab == single.vocab
    np.testing.assert_array_equal(from_single[1].validation.lengths, single.validation.lengths)
    rows = np.array([3, 0, 7])
    np.testing.assert_array_equal(
        from_single[1].train.rows(rows, MAX_LEN), single.train.tokens[rows]
    )
    assert len(tokenized.of(1)) == 0  # rows() ran on the main thread
    assert from_single[1].train.num_tokenized == 3

    # caches that differ between hosts: both processes make the plan (no process waits alone)
    tokenized.reset()
    mixed = run_processes(
        2,
        lambda g: prepare(
            corpus_csv, data_dir=tmp_path / ("b" if g.index == 0 else "c"), processes=g, **options
        ),
    )
    assert not any(m.info["cache"]["hit"] for m in mixed)
    assert len(tokenized.of(0)) == len(tokenized.of(1)) > 0
    assert mixed[0].vocab == mixed[1].vocab == single.vocab


def test_sharded_test_split_and_bad_groups(corpus_csv, tmp_path, monkeypatch):
    single = prepare(corpus_csv, max_len=MAX_LEN, data_dir=tmp_path, unk_warn_threshold=None)
    test = load_test_split(corpus_csv)
    tokenized = Tokenized(monkeypatch)
    splits = run_processes(
        2,
        lambda g: prepare_test(
            corpus_csv, single.vocab, max_len=MAX_LEN, unk_warn_threshold=None, processes=g
        ),
    )
    whole = prepare_test(corpus_csv, single.vocab, max_len=MAX_LEN, unk_warn_threshold=None)
    for p, split in enumerate(splits):
        assert len(tokenized.of(p)) == len(test.texts[p::2])
        assert split.lengths.tolist() == [min(len(tokenize(t)), MAX_LEN) for t in test.texts]
        assert split.unk == whole.unk and split.num_truncated == whole.num_truncated
        np.testing.assert_array_equal(
            split.rows(np.arange(len(test))),
            reference_rows(single.vocab.tokens, test.texts, MAX_LEN),
        )

    # processes that loaded different corpora: an error naming both sizes, not different plans
    message = (  # each process reports the other's size and its own
        r"process 0 loaded \{'test': 9\} texts but process 1 \{'test': 10\}"
        r"|process 1 loaded \{'test': 10\} texts but process 0 \{'test': 9\}"
    )
    with pytest.raises(ValueError, match=message):
        run_processes(
            2,
            lambda g: sharded_module.plan_splits(
                {"test": (test.texts[: 9 + g.index], test.labels[: 9 + g.index])},
                g,
                max_len=MAX_LEN,
                vocab=single.vocab,
            ),
        )

    # fewer texts than processes: process 2's share is empty, the plan is still the whole one
    texts, labels = ["b a b", ""], np.array([0, 1])
    plans = run_processes(
        3, lambda g: sharded_module.plan_splits({"train": (texts, labels)}, g, max_len=2)
    )
    for vocab, planned in plans:
        assert vocab.tokens == ("<pad>", "<unk>", "b", "a")
        assert planned["train"].lengths.tolist() == [2, 0] and planned["train"].num_truncated == 1
        np.testing.assert_array_equal(planned["train"].rows(np.array([1, 0])), [[0, 0], [2, 3]])
    assert [planned["train"].num_held for _, planned in plans] == [2, 2, 2]

    noop = lambda payload: [payload]
    with pytest.raises(ValueError, match=r"ProcessGroup.index=2 is not allowed; allowed: 0 <="):
        ProcessGroup(2, 2, noop)
    with pytest.raises(ValueError, match=r"ProcessGroup.count must be >= 1, got 0"):
        ProcessGroup(0, 0, noop)
    with pytest.raises(TypeError, match=r"processes must be a ProcessGroup or None, got 2"):
        prepare(corpus_csv, max_len=MAX_LEN, processes=2)
    # P = 1 is one process: the whole corpus encoded as without a group
    one = prepare(
        corpus_csv, max_len=MAX_LEN, data_dir=tmp_path, processes=ProcessGroup(0, 1, noop)
    )
    np.testing.assert_array_equal(one.train.tokens, single.train.tokens)
