"""Tests for jaxnn/data/readers.py (and the DataError classes it raises): delimiters, option
checks naming file / option / allowed values, undecodable bytes counted per text."""

import json

import pytest

from jaxnn.data import (
    BadDataError,
    DataError,
    DataNotFoundError,
    DataOptionError,
    load_corpus,
)
from jaxnn.data.readers import DecodeCounts, check_reader_options, read_file

NO_SPLIT = {"test_fraction": 0.0, "validation_fraction": 0.0}


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("delimiter", "suffix"), [(";", ".csv"), ("|", ".csv"), ("\t", ".csv"), (",", ".tsv")]
)
def test_delimiter_option_overrides_the_suffix(tmp_path, delimiter, suffix):
    rows = [("a, b", "x"), ("c\td", "y"), ("e;f|g", "x")]
    # each text holds the other delimiters, never its own (quoting would hide a wrong split)
    body = f"text{delimiter}label\n" + "".join(
        f"{t.replace(delimiter, ' ')}{delimiter}{y}\n" for t, y in rows
    )
    path = _write(tmp_path / f"d{suffix}", body)
    corpus = load_corpus(path, delimiter=delimiter, **NO_SPLIT)
    assert sorted(corpus.train.texts) == sorted(t.replace(delimiter, " ") for t, _ in rows)
    assert corpus.label_names == ("x", "y")


def test_delimiter_is_inferred_from_the_format_when_empty(tmp_path):
    path = _write(tmp_path / "d.tsv", "text\tlabel\nhello, there\t1\nbye\t0\n")
    for delimiter in (None, ""):
        corpus = load_corpus(path, delimiter=delimiter, **NO_SPLIT)
        assert sorted(corpus.train.texts) == ["bye", "hello, there"]
    path = _write(tmp_path / "d.data", "text;label\nhello;1\nbye;0\n")
    corpus = load_corpus(path, format="csv", delimiter=";", **NO_SPLIT)
    assert sorted(corpus.train.texts) == ["bye", "hello"]


def test_a_wrong_delimiter_is_suggested(tmp_path):
    path = _write(tmp_path / "d.csv", "text;label\nhello;1\n")
    with pytest.raises(DataOptionError, match=r"one column: is delimiter=',' right\?") as err:
        load_corpus(path)
    assert err.value.path == str(path) and err.value.line == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delimiter": ";;"}, r"delimiter=';;' is not allowed; allowed: one character"),
        ({"delimiter": "a"}, r"delimiter='a' is not allowed"),
        ({"delimiter": '"'}, r"delimiter='\"' is not allowed"),
        ({"delimiter": 5}, r"delimiter=5 is not allowed"),
        ({"format": "xml"}, r"format='xml' is not allowed; allowed: csv, tsv, jsonl"),
        ({"text_column": ""}, r"text_column='' is not allowed; allowed: a column name"),
        ({"label_column": 3}, r"label_column=3 is not allowed"),
        ({"split_column": ["s"]}, r"split_column=\['s'\] is not allowed.*or None"),
        ({"label_column": "text"}, r"must be different columns, got \['text', 'text'\]"),
        ({"classes": ["a"]}, r"classes=\['a'\] applies to a folder"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number in \[0, 1\), got 1.0"),
        ({"strip_html_breaks": "yes"}, r"strip_html_breaks='yes' is not allowed"),
    ],
)
def test_every_reader_option_is_checked_naming_file_and_allowed_values(tmp_path, options, message):
    path = _write(tmp_path / "d.csv", "text,label\nhello,1\n")
    with pytest.raises(DataOptionError, match=message) as err:
        load_corpus(path, **options)
    assert isinstance(err.value, ValueError) and isinstance(err.value, DataError)
    assert str(path) in str(err.value)


def test_delimiter_does_not_apply_to_jsonl_and_classes_need_a_folder(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n')
    with pytest.raises(
        DataOptionError, match=r"d.jsonl: delimiter=',' does not apply to the jsonl"
    ):
        load_corpus(path, delimiter=",")
    folder = tmp_path / "f"
    (folder / "pos").mkdir(parents=True)
    (folder / "pos" / "1.txt").write_text("good")
    with pytest.raises(DataOptionError, match=r"classes='pos' is not allowed"):
        load_corpus(folder, classes="pos")
    with pytest.raises(DataNotFoundError, match=r"neg \(from classes=\) does not exist.*\['pos'\]"):
        load_corpus(folder, classes=["pos", "neg"])


def test_check_reader_options_resolves_format_and_delimiter(tmp_path):
    base = {"text_column": "t", "label_column": "l", "split_column": None, "classes": None}
    for name, fmt, delimiter in [("a.csv", "csv", ","), ("a.TSV", "tsv", "\t")]:
        path = _write(tmp_path / name, "t,l\n")
        got = check_reader_options(path, {**base, "format": None, "delimiter": ""})
        assert (got["format"], got["delimiter"]) == (fmt, delimiter)
    path = _write(tmp_path / "a.ndjson", "")
    got = check_reader_options(path, {**base, "format": None, "delimiter": None})
    assert (got["format"], got["delimiter"]) == ("jsonl", None)


def test_undecodable_bytes_are_counted_per_text_not_per_file(tmp_path):
    # three records with bad bytes (one with two), one clean: 4 bytes in 3 texts
    data = b"text,label\nprice \xa35,pos\nfine,neg\nbad \xff\xfe,neg\nalso \x80,pos\n"
    path = tmp_path / "d.csv"
    path.write_bytes(data)
    corpus = load_corpus(path, **NO_SPLIT)
    assert corpus.info["num_replaced_bytes"] == 4
    assert corpus.info["num_texts_with_replaced_bytes"] == 3
    assert corpus.info["replaced_bytes_examples"] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert sorted(corpus.train.texts) == sorted(
        ["price \ufffd5", "fine", "bad \ufffd\ufffd", "also \ufffd"]
    )
    # a genuine U+FFFD in valid UTF-8 is text, not a repair
    path.write_bytes("text,label\nkeep \ufffd,pos\nok,neg\n".encode())
    corpus = load_corpus(path, **NO_SPLIT)
    assert corpus.info["num_replaced_bytes"] == 0
    assert corpus.info["num_texts_with_replaced_bytes"] == 0
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(
        b'{"text": "a \xa3", "label": 1}\n{"text": "b", "label": 0}\n'
        b'{"text": "c \xff", "label": 1}\n'
    )
    counts = DecodeCounts()
    records = read_file(
        jsonl,
        {
            "text_column": "text",
            "label_column": "label",
            "split_column": None,
            "format": None,
            "delimiter": None,
            "classes": None,
        },
        counts,
    )
    assert [r.text for r in records] == ["a \ufffd", "b", "c \ufffd"]
    assert (counts.num_replaced_bytes, counts.num_texts_with_replaced_bytes) == (2, 2)


def test_data_errors_carry_path_and_line(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\nok,pos\na,b,c\n")
    with pytest.raises(BadDataError) as err:
        load_corpus(path)
    assert (err.value.path, err.value.line, err.value.exit_code) == (str(path), 3, 2)
    path = _write(tmp_path / "e.csv", "text,label\nok,pos\nfine,  \n")
    with pytest.raises(BadDataError, match=r"e\.csv:3: empty label") as err:
        load_corpus(path)
    assert (err.value.path, err.value.line) == (str(path), 3)
    path = _write(tmp_path / "s.csv", "text,label,split\na,x,train\nb,y,later\n")
    with pytest.raises(BadDataError, match=r"s.csv:3: split value 'later' is not one of") as err:
        load_corpus(path, split_column="split")
    assert err.value.line == 3
    jsonl = _write(tmp_path / "j.jsonl", json.dumps({"text": 1, "label": 0}) + "\n")
    with pytest.raises(BadDataError, match=r"j.jsonl, line 1: 'text' must be a string") as err:
        load_corpus(jsonl)
    assert (err.value.path, err.value.line) == (str(jsonl), 1)
    with pytest.raises(DataNotFoundError) as err:
        load_corpus(tmp_path / "missing.csv")
    assert err.value.path == str(tmp_path / "missing.csv")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataOptionError) as err:
        load_corpus(path, txt_column="text")
    assert isinstance(err.value, TypeError)  # an unknown keyword, as before
    only_blank = _write(tmp_path / "b.csv", 'text,label\n"  ",x\n')
    with pytest.raises(BadDataError, match="has no non-empty texts") as err:
        load_corpus(only_blank)
    assert err.value.path == str(only_blank)
