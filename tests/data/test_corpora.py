"""Tests for jaxnn/data/corpora.py: load_corpus on user files and folders, splits, bad input
(the built-in corpora: test_sources.py; the split itself: test_splits.py)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from jaxnn.data.corpora import (
    load_corpus,
    load_test_split,
)


def _write_csv(path: Path, rows, header="text,label", encoding_bytes=None) -> Path:
    body = header + "\n" + "".join(r + "\n" for r in rows)
    path.write_bytes(encoding_bytes if encoding_bytes is not None else body.encode())
    return path


def _balanced_rows(n_per_class=10, classes=("neg", "pos")):
    return [f"example {c} number {i},{c}" for c in classes for i in range(n_per_class)]


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
