"""Tests for jaxnn/data/prepare.py: corpus -> vocabulary -> encoded splits, and the cache."""

import errno
import importlib
import logging
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxnn.data.corpora import load_corpus, load_test_split
from jaxnn.data.prepare import prepare, prepare_test
from jaxnn.data.text import tokenize
from jaxnn.data.vocab import UNK_ID, UnknownWordWarning, Vocabulary

# the module (``jaxnn.data.prepare`` as an attribute is the function of that name)
prepare_module = importlib.import_module("jaxnn.data.prepare")


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


# --- the cache: damaged files, unwritable folders, atomic writes -------------------------------


def _cache_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "cache" in r.getMessage()
    ]


def _flip_byte(path, fraction=1 / 3):
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickled_npz(path):
    np.savez(path, tokens=np.array([object()], dtype=object), lengths=np.zeros(1), labels=[0])


def _wrong_shape_npz(path):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(path, **{**arrays, "tokens": arrays["tokens"][:, :-1]})


DAMAGES = {
    "train.npz truncated": ("train.npz", _truncate),
    "train.npz one byte flipped": ("train.npz", _flip_byte),
    "train.npz empty": ("train.npz", lambda p: p.write_bytes(b"")),
    "train.npz garbage": ("train.npz", lambda p: p.write_bytes(b"garbage")),
    "train.npz pickled objects": ("train.npz", _pickled_npz),
    "train.npz tokens of another max_len": ("train.npz", _wrong_shape_npz),
    "validation.npz deleted": ("validation.npz", lambda p: p.unlink()),
    "meta.json truncated": ("meta.json", _truncate),
    "meta.json not an object": ("meta.json", lambda p: p.write_text("[1, 2]")),
    "vocab.json truncated": ("vocab.json", _truncate),
    "vocab.json of another tokenizer": (
        "vocab.json",
        lambda p: p.write_text(p.read_text().replace("lower-word-punct-v1", "other")),
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_any_unreadable_cache_file_is_named_in_one_warning_and_rebuilt(
    small_csv, tmp_path, caplog, damage
):
    root = tmp_path / "c"
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}
    first = prepare(small_csv, **options)
    path = Path(first.info["cache"]["path"])
    name, damage_fn = DAMAGES[damage]
    damage_fn(path / name)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        again = prepare(small_csv, **options)
    warnings_ = _cache_warnings(caplog)
    assert len(warnings_) == 1, warnings_
    assert str(path / name) in warnings_[0] and "rebuilding" in warnings_[0]
    assert again.info["cache"] == {"path": str(path), "hit": False}
    for split in ("train", "validation"):
        np.testing.assert_array_equal(getattr(again, split).tokens, getattr(first, split).tokens)
    assert again.vocab == first.vocab
    assert prepare(small_csv, **options).info["cache"]["hit"]  # written again, whole


def _refuse_mkdir_under(monkeypatch, root, err_no=errno.EROFS):
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(err_no, os.strerror(err_no), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_read_only_data_dir_without_a_cache_means_no_cache_and_one_warning(
    small_csv, tmp_path, caplog, monkeypatch
):
    # Running as root ignores chmod, so the read-only filesystem is os.mkdir failing with EROFS
    # under the data directory, as it does on a read-only mount.
    root = tmp_path / "ro"
    root.mkdir()
    _refuse_mkdir_under(monkeypatch, root)
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        prep = prepare(small_csv, **options)
    warnings_ = _cache_warnings(caplog)
    assert len(warnings_) == 1 and "Read-only file system" in warnings_[0], warnings_
    assert "JAXNN_DATA_DIR" in warnings_[0]
    assert prep.info["cache"] == {"path": None, "hit": False}
    assert list(root.iterdir()) == []
    reference = prepare(small_csv, max_len=8, cache=False, unk_warn_threshold=None)
    np.testing.assert_array_equal(prep.train.tokens, reference.train.tokens)


def test_read_only_data_dir_with_a_cache_reads_it(small_csv, tmp_path, caplog, monkeypatch):
    root = tmp_path / "c"
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}
    first = prepare(small_csv, **options)
    _refuse_mkdir_under(monkeypatch, root)
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        again = prepare(small_csv, **options)
    assert again.info["cache"]["hit"] and not _cache_warnings(caplog)
    np.testing.assert_array_equal(again.train.tokens, first.train.tokens)


def test_a_full_disk_while_writing_leaves_no_cache_and_no_temporary_folder(
    small_csv, tmp_path, caplog, monkeypatch
):
    root = tmp_path / "c"
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare_module.os, "fsync", full)
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        prep = prepare(small_csv, **options)
    warnings_ = _cache_warnings(caplog)
    assert len(warnings_) == 1 and "No space left on device" in warnings_[0], warnings_
    assert prep.info["cache"] == {"path": None, "hit": False}
    assert list((root / "encoded").iterdir()) == []  # the temporary folder is gone
    monkeypatch.undo()
    assert not prepare(small_csv, **options).info["cache"]["hit"]
    assert prepare(small_csv, **options).info["cache"]["hit"]


KILLED_WRITER = """
import os, signal, sys
import importlib
p = importlib.import_module('jaxnn.data.prepare')
real = p._write_file
def write(path, fn):
    real(path, fn)
    if path.name == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)
p._write_file = write
p.prepare(sys.argv[1], max_len=8, data_dir=sys.argv[2], unk_warn_threshold=None)
"""


@pytest.mark.parametrize("killed_after", ["train.npz", "meta.json"])
def test_a_writer_killed_mid_write_never_leaves_a_half_written_cache(
    small_csv, tmp_path, caplog, monkeypatch, killed_after
):
    root = tmp_path / "c"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(small_csv), str(root), killed_after],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    encoded = root / "encoded"
    (leftover,) = list(encoded.iterdir())
    assert ".tmp" in leftover.name  # never the cache folder itself
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        prep = prepare(small_csv, **options)
    assert not prep.info["cache"]["hit"] and not _cache_warnings(caplog)
    assert prepare(small_csv, **options).info["cache"]["hit"]
    # an old leftover is removed by the next write
    monkeypatch.setattr(prepare_module, "_STALE_TMP_S", 0.0)
    prepare(small_csv, **{**options, "max_len": 9})
    assert not leftover.exists()


# --- the cache key covers every option that changes the encoded data ----------------------------

# The fixture below parses three ways: with "," (columns text, label, body, topic, split, ...),
# with ";" (columns ..., text, label, ...) and with a tab (columns ..., text, label), so that the
# delimiter and the format each give other texts and labels from the same file.
_KEY_ROWS = 60


@pytest.fixture
def key_csv(tmp_path):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]

    def text(i, tag):
        extra = " <br />" if i % 4 == 0 else ""
        return f"{tag}{i}{extra} " + " ".join(rng.choice(words, int(rng.integers(2, 20))))

    lines = ["text,label,body,topic,split,x;text;label;y\ttext\tlabel"]
    for i in range(_KEY_ROWS):
        label, topic = ["red", "green", "blue"][i % 3], ["hot", "cold"][i % 2]
        split = ["train", "train", "train", "validation", "test"][i % 5]
        lines.append(
            f"{text(i, 'a')},{label},{text(i, 'b')},{topic},{split},"
            f"q;{text(i, 'c')};{topic};r\t{text(i, 'd')}\t{label}"
        )
    path = tmp_path / "key.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


BASE = {"max_len": 8, "min_freq": 1, "max_size": None, "seed": 0}
# one changed value per option of `prepare` and of the corpus that can change the arrays
ENCODING_OPTIONS = {
    "max_len": 12,
    "min_freq": 2,
    "max_size": 20,
    "seed": 1,
    "test_fraction": 0.3,
    "validation_fraction": 0.3,
    "label_names": ["red", "blue", "green"],
    "strip_html_breaks": False,
    "text_column": "body",
    "label_column": "topic",
    "split_column": "split",
    "format": "tsv",
    "delimiter": ";",
}
# config.data keys -> the `prepare` argument they become (jaxnn.train's load_data)
CONFIG_TO_PREPARE = {
    "corpus": "source",
    "split_seed": "seed",
    "max_len": "max_len",
    "min_freq": "min_freq",
    "max_vocab_size": "max_size",
    # the reader options (jaxnn.train.config.corpus_options passes those that are set)
    "text_column": "text_column",
    "label_column": "label_column",
    "split_column": "split_column",
    "delimiter": "delimiter",
}
# config.data keys that never reach the encoded arrays (batching, warnings, threads)
CONFIG_NOT_ENCODING = {"sort_pool", "smallest_bucket", "unk_warn_threshold", "prefetch"}


def test_every_data_config_key_is_either_a_cache_key_or_declared_not_to_encode():
    from jaxnn.train.config import base_config

    keys = set(base_config().data.keys())
    assert keys == set(CONFIG_TO_PREPARE) | CONFIG_NOT_ENCODING, keys
    for argument in CONFIG_TO_PREPARE.values():
        assert argument == "source" or argument in ENCODING_OPTIONS


def test_every_corpus_option_is_covered_by_the_cache_key_test():
    from jaxnn.data.corpora import _COMMON_OPTIONS, _USER_OPTIONS

    # "classes" applies to folders only: test_cache_misses_when_the_classes_change
    assert set(_COMMON_OPTIONS) | set(_USER_OPTIONS) == set(ENCODING_OPTIONS) - set(BASE) | {
        "classes"
    }


def _arrays(prep):
    return [
        np.asarray(x)
        for split in (prep.train, prep.validation)
        for x in (split.tokens, split.labels, split.lengths)
    ] + [np.asarray(prep.vocab.tokens)]


def _same(a, b) -> bool:
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("option", list(ENCODING_OPTIONS))
def test_cache_misses_when_any_encoding_option_changes(key_csv, tmp_path, option):
    root = tmp_path / "c"
    common = {"data_dir": root, "unk_warn_threshold": None}
    base = prepare(key_csv, **BASE, **common)
    assert prepare(key_csv, **BASE, **common).info["cache"]["hit"]
    changed = {**BASE, option: ENCODING_OPTIONS[option]}
    fresh = prepare(key_csv, **changed, **common)
    assert fresh.info["cache"]["hit"] is False
    assert fresh.info["cache"]["path"] != base.info["cache"]["path"]
    # the change is real: the arrays differ from the base run's, and equal an uncached build
    assert not _same(_arrays(fresh), _arrays(base))
    assert _same(_arrays(fresh), _arrays(prepare(key_csv, **changed, cache=False, **common)))
    assert prepare(key_csv, **changed, **common).info["cache"]["hit"]
    assert prepare(key_csv, **BASE, **common).info["cache"]["hit"]  # the base entry is intact


def test_cache_misses_when_the_classes_change(tmp_path):
    folder = tmp_path / "f"
    for name in ("neg", "pos", "meh"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            (folder / name / f"{i}.txt").write_text(f"{name} text {i} " * (i + 1))
    common = {"max_len": 8, "data_dir": tmp_path / "c", "unk_warn_threshold": None}
    base = prepare(folder, **common)
    fresh = prepare(folder, classes=["neg", "pos"], **common)
    assert not fresh.info["cache"]["hit"] and fresh.label_names == ("neg", "pos")
    assert base.label_names == ("meh", "neg", "pos")


def test_cache_misses_when_the_tokenizer_or_the_cache_format_changes(
    small_csv, tmp_path, monkeypatch
):
    options = {"max_len": 8, "data_dir": tmp_path / "c", "unk_warn_threshold": None}
    prepare(small_csv, **options)
    assert prepare(small_csv, **options).info["cache"]["hit"]
    monkeypatch.setattr(prepare_module, "TOKENIZER_NAME", "lower-word-punct-v2")
    assert not prepare(small_csv, **options).info["cache"]["hit"]
    monkeypatch.undo()
    monkeypatch.setattr(prepare_module, "_CACHE_VERSION", prepare_module._CACHE_VERSION + 1)
    assert not prepare(small_csv, **options).info["cache"]["hit"]


def test_cache_false_reads_nothing_and_writes_nothing(small_csv, tmp_path, monkeypatch):
    root = tmp_path / "c"
    options = {"max_len": 8, "data_dir": root, "unk_warn_threshold": None}
    prep = prepare(small_csv, cache=False, **options)
    assert prep.info["cache"] == {"path": None, "hit": False}
    assert not root.exists()  # nothing written, not even the folder
    # a planted cache entry for exactly these arguments (different tokens) is never read
    cached = prepare(small_csv, **options)
    path = Path(cached.info["cache"]["path"])
    with np.load(path / "train.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(path / "train.npz", **{**arrays, "tokens": np.ones_like(arrays["tokens"])})
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def no_read(*args, **kwargs):
        raise AssertionError("cache=False read the cache")

    monkeypatch.setattr(prepare_module, "_load", no_read)
    again = prepare(small_csv, cache=False, **options)
    np.testing.assert_array_equal(again.train.tokens, prep.train.tokens)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_a_same_size_edit_with_the_old_modification_time_misses_the_cache(small_csv, tmp_path):
    options = {"max_len": 8, "data_dir": tmp_path / "c", "unk_warn_threshold": None}
    first = prepare(small_csv, **options)
    stat = small_csv.stat()
    text = small_csv.read_text()
    small_csv.write_text(text.replace("red0 ", "red9 ", 1))  # same size
    os.utime(small_csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert small_csv.stat().st_size == stat.st_size
    edited = prepare(small_csv, **options)
    assert not edited.info["cache"]["hit"]
    assert edited.vocab != first.vocab
