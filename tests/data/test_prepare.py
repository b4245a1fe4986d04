"""Tests for jaxnn/data/prepare.py: corpus -> vocabulary -> encoded splits, and the cache."""

import os
import time
import warnings
from collections import Counter

import numpy as np
import pytest

from jaxnn.data.corpora import load_corpus, load_test_split
from jaxnn.data.prepare import prepare, prepare_test
from jaxnn.data.text import tokenize
from jaxnn.data.vocab import UNK_ID, UnknownWordWarning, Vocabulary


def _reference_rows(vocab_tokens, texts, max_len):
    index = {w: i for i, w in enumerate(vocab_tokens)}
    rows = []
    for text in texts:
        ids = [index.get(w, UNK_ID) for w in tokenize(text)][:max_len]
        rows.append(ids + [0] * (max_len - len(ids)))
    return np.array(rows, dtype=np.int32)


@pytest.fixture
def small_csv(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    lines = ["text,label"]
    for i in range(120):
        label = ["red", "green", "blue"][i % 3]
        n = int(rng.integers(1, 30))
        lines.append(f"{label}{i} " + " ".join(rng.choice(words, n)) + f",{label}")
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prepare_matches_independent_reference(small_csv, tmp_path):
    prep = prepare(
        small_csv, max_len=12, min_freq=2, data_dir=tmp_path / "c", unk_warn_threshold=None
    )
    corpus = load_corpus(small_csv)
    # Vocabulary from the training split only, via collections.Counter.
    counts = Counter(w for t in corpus.train.texts for w in tokenize(t))
    words = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    assert list(prep.vocab.tokens) == ["<pad>", "<unk>", *words]
    assert prep.label_names == corpus.label_names == ("blue", "green", "red")
    for split, source in [(prep.train, corpus.train), (prep.validation, corpus.validation)]:
        np.testing.assert_array_equal(
            split.tokens, _reference_rows(prep.vocab.tokens, source.texts, 12)
        )
        np.testing.assert_array_equal(split.labels, source.labels)
        lengths = [min(len(tokenize(t)), 12) for t in source.texts]
        assert split.lengths.tolist() == lengths
        assert split.num_truncated == sum(len(tokenize(t)) > 12 for t in source.texts)
        # Unknown-word ratio counted independently over the kept tokens.
        kept = split.tokens[split.tokens != 0]
        assert split.unk.num_unk == int((kept == UNK_ID).sum())
        assert split.unk.ratio == pytest.approx((kept == UNK_ID).mean())
    # Each text starts with a word ("red17") seen once: unknown in validation with min_freq=2.
    assert prep.validation.unk.num_oov_types >= len(corpus.validation)
    assert prep.info["cache"]["hit"] is False


def test_cache_hit_gives_identical_arrays_and_misses_on_changes(small_csv, tmp_path):
    root = tmp_path / "c"
    first = prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None)
    second = prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None)
    assert second.info["cache"] == {"path": first.info["cache"]["path"], "hit": True}
    assert second.vocab == first.vocab and second.label_names == first.label_names
    for name in ("train", "validation"):
        a, b = getattr(first, name), getattr(second, name)
        for field in ("tokens", "lengths", "labels"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert getattr(a, field).dtype == getattr(b, field).dtype
        assert a.unk == b.unk and a.num_truncated == b.num_truncated
    for changed in [{"max_len": 9}, {"seed": 1}, {"min_freq": 2}, {"max_size": 20}]:
        options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None, **changed}
        assert not prepare(small_csv, **options).info["cache"]["hit"]
        assert prepare(small_csv, **options).info["cache"]["hit"]
    # Editing the file invalidates its cache entry.
    with small_csv.open("a") as f:
        f.write("brand new text,red\n")
    later = time.time() + 5
    os.utime(small_csv, (later, later))
    edited = prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None)
    assert not edited.info["cache"]["hit"]
    assert len(edited.train) + len(edited.validation) > len(first.train) + len(first.validation)


def test_corrupt_cache_is_rebuilt(small_csv, tmp_path, caplog):
    root = tmp_path / "c"
    first = prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None)
    path = first.info["cache"]["path"]
    with open(os.path.join(path, "train.npz"), "wb") as f:
        f.write(b"garbage")
    again = prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None)
    assert again.info["cache"]["hit"] is False
    np.testing.assert_array_equal(again.train.tokens, first.train.tokens)
    assert "unreadable cache" in caplog.text
    assert prepare(small_csv, max_len=8, data_dir=root, unk_warn_threshold=None).info["cache"][
        "hit"
    ]


def test_prepare_warns_on_high_unknown_ratio_even_from_cache(small_csv, tmp_path):
    root = tmp_path / "c"
    for _ in range(2):
        with pytest.warns(UnknownWordWarning) as record:
            prepare(small_csv, max_len=30, max_size=5, data_dir=root, unk_warn_threshold=0.01)
        messages = sorted(str(w.message).split(": ")[0].split()[-1] for w in record)
        assert messages == ["train", "validation"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(small_csv, max_len=30, max_size=5, data_dir=root, unk_warn_threshold=None)


def test_prepare_accepts_a_loaded_corpus(small_csv):
    corpus = load_corpus(small_csv)
    prep = prepare(corpus, max_len=6, unk_warn_threshold=None)
    assert prep.info["cache"] == {"path": None, "hit": False}
    np.testing.assert_array_equal(
        prep.train.tokens, Vocabulary.build(corpus.train.texts).encode(corpus.train.texts, 6).tokens
    )
    with pytest.raises(TypeError, match="already loaded Corpus"):
        prepare(corpus, max_len=6, text_column="x")


def test_prepare_argument_errors(small_csv, tmp_path):
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        prepare(small_csv, max_len=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="unk_warn_threshold must be None or a number"):
        prepare(small_csv, max_len=4, unk_warn_threshold=2, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing.csv", max_len=4, data_dir=tmp_path)


def test_bbc_news_prepare_and_test_split(data_root, tmp_path):
    prep = prepare("bbc_news", max_len=128, min_freq=2, data_dir=data_root, unk_warn_threshold=None)
    corpus = load_corpus("bbc_news", data_dir=data_root)
    assert prep.num_classes == 5
    assert prep.train.tokens.shape == (len(corpus.train), 128)
    assert prep.train.tokens.dtype == np.int32
    np.testing.assert_array_equal(prep.validation.labels, corpus.validation.labels)
    rows = slice(0, 25)
    np.testing.assert_array_equal(
        prep.validation.tokens[rows],
        _reference_rows(prep.vocab.tokens, corpus.validation.texts[rows], 128),
    )
    assert 0 < prep.validation.unk.ratio < 0.1
    assert prep.train.num_truncated > 0  # BBC articles average ~400 words
    # The test split: saved vocabulary, reloaded, as at the final evaluation.
    vocab = Vocabulary.load(prep.vocab.save(tmp_path / "vocab.json"))
    test = prepare_test("bbc_news", vocab, max_len=128, data_dir=data_root, unk_warn_threshold=None)
    texts = load_test_split("bbc_news", data_dir=data_root).texts
    assert len(test) == len(texts)
    np.testing.assert_array_equal(test.tokens, _reference_rows(vocab.tokens, texts, 128))
    assert test.unk.ratio > 0


@pytest.mark.slow
def test_imdb_prepare_full_and_cached(data_root):
    start = time.perf_counter()
    prep = prepare("imdb", max_len=256, min_freq=2, data_dir=data_root, unk_warn_threshold=None)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = prepare("imdb", max_len=256, min_freq=2, data_dir=data_root, unk_warn_threshold=None)
    warm = time.perf_counter() - start
    print(f"imdb prepare: cold {cold:.2f} s, cached {warm:.2f} s")
    assert again.info["cache"]["hit"] and not prep.info["cache"]["hit"]
    assert len(prep.train) + len(prep.validation) == 24791
    assert prep.train.tokens.shape == (len(prep.train), 256)
    np.testing.assert_array_equal(again.train.tokens, prep.train.tokens)
    corpus = load_corpus("imdb", data_dir=data_root)
    rows = slice(0, 200)
    np.testing.assert_array_equal(
        prep.validation.tokens[rows],
        _reference_rows(prep.vocab.tokens, corpus.validation.texts[rows], 256),
    )
    assert 0 < prep.validation.unk.ratio < 0.05
