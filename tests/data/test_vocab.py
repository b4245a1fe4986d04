"""Tests for jaxnn/data/vocab.py: vocabulary, encoding, unknown-word ratio."""

import json
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn.data.text import tokenize
from jaxnn.data.vocab import (
    PAD_ID,
    UNK_ID,
    UnknownWordWarning,
    Vocabulary,
    unk_stats,
    warn_if_unknown,
)

TRAIN = ["The cat sat on the mat.", "The dog sat!", "A cat, a dog; the end.", ""]


def _reference_vocab(texts, min_freq, max_size):
    counts = Counter(w for t in texts for w in tokenize(t))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max_size - 2]
    return ["<pad>", "<unk>", *words]


def _reference_encode(vocab_tokens, texts, max_len):
    index = {w: i for i, w in enumerate(vocab_tokens)}
    rows, lengths = [], []
    for text in texts:
        ids = [index.get(w, 1) for w in tokenize(text)][:max_len]
        lengths.append(len(ids))
        rows.append(ids + [0] * (max_len - len(ids)))
    return np.array(rows, dtype=np.int32).reshape(len(texts), max_len), np.array(lengths)


@pytest.mark.parametrize(("min_freq", "max_size"), [(1, None), (2, None), (1, 5), (3, 3), (1, 2)])
def test_build_matches_counter_reference(min_freq, max_size):
    vocab = Vocabulary.build(TRAIN, min_freq=min_freq, max_size=max_size)
    assert list(vocab.tokens) == _reference_vocab(TRAIN, min_freq, max_size)
    assert vocab.tokens[PAD_ID] == "<pad>" and vocab.tokens[UNK_ID] == "<unk>"
    if max_size is not None:
        assert len(vocab) <= max_size


def test_build_does_not_depend_on_text_order():
    assert Vocabulary.build(TRAIN) == Vocabulary.build(TRAIN[::-1])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(alphabet="abc d.!'", max_size=20), min_size=1, max_size=6),
    st.lists(st.text(alphabet="abcde .", max_size=20), min_size=1, max_size=6),
    st.integers(1, 6),
    st.integers(1, 3),
)
def test_encode_matches_reference(train, texts, max_len, min_freq):
    vocab = Vocabulary.build(train, min_freq=min_freq)
    encoded = vocab.encode(texts, max_len)
    tokens, lengths = _reference_encode(vocab.tokens, texts, max_len)
    assert encoded.tokens.dtype == np.int32 and encoded.lengths.dtype == np.int32
    np.testing.assert_array_equal(encoded.tokens, tokens)
    np.testing.assert_array_equal(encoded.lengths, lengths)
    assert encoded.num_truncated == sum(len(tokenize(t)) > max_len for t in texts)
    # Padding exactly after the length.
    positions = np.arange(max_len)[None, :]
    assert np.all((encoded.tokens != PAD_ID) == (positions < encoded.lengths[:, None]))


def test_encode_truncates_and_counts():
    vocab = Vocabulary.build(["a b c d e"])
    encoded = vocab.encode(["a b c d e", "e d", "x"], max_len=3)
    assert vocab.decode(encoded.tokens[0]) == ["a", "b", "c"]
    assert encoded.lengths.tolist() == [3, 2, 1]
    assert encoded.num_truncated == 1
    assert encoded.tokens[2].tolist() == [UNK_ID, PAD_ID, PAD_ID]


def test_encode_empty_text_is_an_all_padding_row():
    encoded = Vocabulary.build(["a"]).encode(["", "a"], max_len=4)
    assert encoded.lengths.tolist() == [0, 1]
    assert encoded.tokens[0].tolist() == [0, 0, 0, 0]


def test_unk_ratio_on_a_text_with_known_ratio():
    vocab = Vocabulary.build(["the cat sat"])
    # 8 tokens: the, dog, sat, on, the, dog, mat, "." -> unknown: dog, on, dog, mat, "." = 5.
    stats = unk_stats(["The dog sat on", "the dog mat."], vocab)
    assert stats.num_tokens == 8
    assert stats.num_unk == 5
    assert stats.ratio == pytest.approx(5 / 8)
    assert stats.num_oov_types == 4  # dog, on, mat, "."
    assert stats.top_oov[0] == ("dog", 2)
    # Counting empty-string tokens instead would say 0 here.
    tokens = [w for t in ["The dog sat on", "the dog mat."] for w in tokenize(t)]
    assert tokens.count("") / len(tokens) == 0.0
    assert stats.ratio > 0


def test_unk_ratio_counts_only_kept_tokens_with_max_len():
    vocab = Vocabulary.build(["a b"])
    stats = unk_stats(["a b x y", "x"], vocab, max_len=2)  # kept: a b | x
    assert (stats.num_tokens, stats.num_unk, stats.num_oov_types) == (3, 1, 1)
    assert unk_stats([""], vocab).ratio == 0.0


def test_unk_ratio_of_the_training_texts_is_zero_with_min_freq_1():
    vocab = Vocabulary.build(TRAIN)
    assert unk_stats(TRAIN, vocab).num_unk == 0
    # With min_freq=2 the singletons become unknown: count them independently.
    counts = Counter(w for t in TRAIN for w in tokenize(t))
    singles = sum(1 for t in TRAIN for w in tokenize(t) if counts[w] < 2)
    stats = unk_stats(TRAIN, Vocabulary.build(TRAIN, min_freq=2))
    assert stats.num_unk == singles
    assert stats.num_oov_types == sum(1 for c in counts.values() if c < 2)


def test_warning_above_threshold_only():
    vocab = Vocabulary.build(["the cat sat"])
    stats = unk_stats(["the dog"], vocab)  # ratio 0.5
    with pytest.warns(UnknownWordWarning, match=r"validation: unknown-word ratio 50\.00%"):
        assert warn_if_unknown(stats, 0.1, "validation")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_unknown(stats, 0.5, "validation")
        assert not warn_if_unknown(stats, None, "validation")


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build([*TRAIN, "naïve café ’"], min_freq=1, max_size=50)
    path = vocab.save(tmp_path / "run" / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.tokens == vocab.tokens
    assert (loaded.min_freq, loaded.max_size) == (1, 50)
    texts = ["the naïve dog", "zzz"]
    np.testing.assert_array_equal(loaded.encode(texts, 5).tokens, vocab.encode(texts, 5).tokens)
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][:2] == ["<pad>", "<unk>"]


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"tokens": ["<pad>", "<unk>"]}))
    with pytest.raises(ValueError, match="not a jaxnn vocabulary"):
        Vocabulary.load(bad)
    data = Vocabulary.build(["a"]).to_dict()
    data["tokenizer"] = "something-else"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="rebuild the vocabulary"):
        Vocabulary.load(bad)


def test_constructor_checks_special_tokens_and_duplicates():
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["<unk>", "<pad>", "a"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        Vocabulary(["<pad>", "<unk>", "a", "a"])


@pytest.mark.parametrize("max_len", [0, -3])
def test_encode_rejects_max_len_below_one(max_len):
    with pytest.raises(ValueError, match=f"max_len must be >= 1, got {max_len}"):
        Vocabulary.build(["a"]).encode(["a"], max_len)


def test_argument_errors():
    with pytest.raises(TypeError, match="max_len must be an int"):
        Vocabulary.build(["a"]).encode(["a"], 2.5)
    with pytest.raises(TypeError, match="single string"):
        Vocabulary.build("a text, not a list")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        Vocabulary.build(["a", None])
    with pytest.raises(ValueError, match="min_freq must be >= 1, got 0"):
        Vocabulary.build(["a"], min_freq=0)
    with pytest.raises(ValueError, match="max_size must be >= 2"):
        Vocabulary.build(["a"], max_size=1)
