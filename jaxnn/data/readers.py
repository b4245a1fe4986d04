"""Readers of a user's corpus files: CSV / TSV / JSONL files and folders of ``<class>/*.txt``.

Each reader turns a source into `Record`s (text, label, split or None, where) and nothing more:
no cleaning, deduplication or splitting (`jaxnn.data.splits`). ``where`` is ``file:line`` (the
line a CSV record ends on, a JSONL line) or the path of a text file, so every later message can
name the example.

Options (`check_reader_options` validates them, naming the file, the option, its value and what
is allowed):

- ``format``: "csv", "tsv" or "jsonl" ("ndjson" is read as "jsonl"); None or "" infers it from
  the file's suffix (.csv, .tsv, .jsonl, .ndjson).
- ``delimiter``: one character separating CSV fields; None or "" infers it from the format
  ("," for csv, a tab for tsv). Only for csv/tsv.
- ``text_column``, ``label_column``: column names (CSV header / JSON keys); defaults "text",
  "label".
- ``split_column``: None, or a column whose values are train / validation / test (also "valid",
  "val", "dev" for validation), which then replace the seeded split.
- ``classes``: for a folder, the class sub-folders to read (default: every sub-folder, except
  aclImdb's unlabelled ``unsup``).

Bytes are decoded as UTF-8 (`decode_text`): a byte-order mark is removed and every undecodable
byte becomes U+FFFD, counted per text (`DecodeCounts`: a file with one bad byte in each of
three records counts three texts).

Errors are `BadDataError` / `DataOptionError` / `DataNotFoundError` (`jaxnn.data.errors`),
carrying the path and the line where known.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxnn.data.errors import BadDataError, DataNotFoundError, DataOptionError
from jaxnn.data.text import decode_text

__all__ = [
    "FORMATS",
    "DecodeCounts",
    "Record",
    "check_reader_options",
    "delimited_records",
    "file_format",
    "jsonl_records",
    "read_file",
    "read_folder",
]

log = logging.getLogger("jaxnn.data")

# format name -> the suffixes that imply it
FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "tsv": (".tsv",),
    "jsonl": (".jsonl", ".ndjson"),
}
_FORMAT_ALIASES = {"ndjson": "jsonl"}
_DEFAULT_DELIMITERS = {"csv": ",", "tsv": "\t"}
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")


@dataclass
class Record:
    """One raw example: ``split`` is None unless the source names it; ``where`` is
    ``file:line`` or a file path."""

    text: str
    label: str
    split: str | None
    where: str


@dataclass
class DecodeCounts:
    """Repairs made while decoding, counted per text (and per byte)."""

    num_replaced_bytes: int = 0
    num_texts_with_replaced_bytes: int = 0
    num_byte_order_marks: int = 0
    replaced_examples: list[str] = field(default_factory=list)

    def decode(self, data: bytes, where: str) -> str:
        """One text from its bytes (a text file): repairs counted as one text."""
        text, replaced, bom = decode_text(data)
        self.num_byte_order_marks += bom
        self._count(replaced, where)
        return text

    def decode_file(self, data: bytes) -> tuple[str, bool]:
        """A whole file of many texts: the string with each undecodable byte kept as a lone
        surrogate (U+DC80..U+DCFF), to be replaced per field by `repair`; and whether any was
        found. Valid UTF-8 never decodes to a lone surrogate, so none is mistaken."""
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
            self.num_byte_order_marks += 1
        try:
            return data.decode("utf-8"), False
        except UnicodeDecodeError:
            return data.decode("utf-8", "surrogateescape"), True

    def repair(self, text: str, where: str, *, is_text: bool = True) -> str:
        """``text`` (a field of a file from `decode_file`) with each escaped byte replaced by
        U+FFFD, counted; ``is_text`` False (a label) counts the bytes but not a text."""
        fixed, replaced = _ESCAPED_BYTE_RE.subn("\ufffd", text)
        if replaced:
            if is_text:
                self._count(replaced, where)
            else:
                self.num_replaced_bytes += replaced
        return fixed

    def _count(self, replaced: int, where: str) -> None:
        if replaced:
            self.num_replaced_bytes += replaced
            self.num_texts_with_replaced_bytes += 1
            if len(self.replaced_examples) < 5:
                self.replaced_examples.append(where)


def _check_column_name(path: Path, option: str, value: object, optional: bool) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        allowed = "a column name (non-empty string)" + (" or None" if optional else "")
        raise DataOptionError(
            f"{path}: {option}={value!r} is not allowed; allowed: {allowed}", path=path
        )


def file_format(path: Path, fmt: object) -> str:
    """The format of the file ``path``: ``fmt`` when given (validated), else from the suffix."""
    if fmt not in (None, ""):
        name = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
        if not isinstance(fmt, str) or name not in FORMATS:
            raise DataOptionError(
                f"{path}: format={fmt!r} is not allowed; allowed: {', '.join(FORMATS)} "
                "(or leave it empty to infer it from the suffix)",
                path=path,
            )
        return name
    suffix = path.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise DataOptionError(
        f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; pass format= "
        f"one of {', '.join(repr(f) for f in FORMATS)} (or use a suffix: {known})",
        path=path,
    )


def check_reader_options(path: Path, options: Mapping[str, object]) -> dict:
    """Validate the reader options for the file or folder ``path``; returns them with
    ``format`` and ``delimiter`` resolved (None for a folder; delimiter None for jsonl).

    Raises:
      DataOptionError: naming the file, the option, its value and what is allowed.
    """
    resolved = dict(options)
    _check_column_name(path, "text_column", options.get("text_column"), optional=False)
    _check_column_name(path, "label_column", options.get("label_column"), optional=False)
    _check_column_name(path, "split_column", options.get("split_column"), optional=True)
    columns = [options.get(k) for k in ("text_column", "label_column", "split_column")]
    columns = [c for c in columns if c is not None]
    if len(set(columns)) != len(columns):
        raise DataOptionError(
            f"{path}: text_column, label_column and split_column must be different columns, got "
            f"{columns}",
            path=path,
        )
    classes = options.get("classes")
    if classes is not None and (
        isinstance(classes, str)
        or not isinstance(classes, Sequence)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise DataOptionError(
            f"{path}: classes={classes!r} is not allowed; allowed: None (every sub-folder) or a "
            "non-empty list of class folder names",
            path=path,
        )
    delimiter = options.get("delimiter")
    if path.is_dir():
        if classes is None and options.get("format") not in (None, ""):
            log.info("%s is a folder: format=%r does not apply", path, options.get("format"))
        resolved.update(format=None, delimiter=None)
        return resolved
    if classes is not None:
        raise DataOptionError(
            f"{path}: classes={list(classes)!r} applies to a folder of <class>/*.txt, not to a "
            "file; remove it (the file's label_column gives the classes)",
            path=path,
        )
    fmt = file_format(path, options.get("format"))
    if fmt == "jsonl":
        if delimiter not in (None, ""):
            raise DataOptionError(
                f"{path}: delimiter={delimiter!r} does not apply to the jsonl format; remove it",
                path=path,
            )
        delimiter = None
    elif delimiter in (None, ""):
        delimiter = _DEFAULT_DELIMITERS[fmt]
    elif (
        not isinstance(delimiter, str)
        or len(delimiter) != 1
        or delimiter in "\r\n\"'"
        or delimiter.isalnum()
    ):
        raise DataOptionError(
            f"{path}: delimiter={delimiter!r} is not allowed; allowed: one character that is not "
            "a letter, digit, quote or newline (e.g. ',', '\\t', ';', '|'), or empty to infer it "
            "from the format",
            path=path,
        )
    resolved.update(format=fmt, delimiter=delimiter)
    return resolved


def delimited_records(
    text: str,
    delimiter: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
    where: str,
    counts: DecodeCounts | None = None,
) -> list[Record]:
    """Records of a CSV/TSV file's decoded content ``text`` (header row first); a field may hold
    the delimiter, quotes and newlines when quoted. ``where`` names the file in messages."""
    # The whole file is one string, so newlines inside quoted fields are part of the field.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = reader.fieldnames
    except csv.Error as err:
        raise BadDataError(
            f"{where}, line 1: not a readable header row ({err})", path=where, line=1
        ) from err
    if not columns:
        raise BadDataError(
            f"{where} is empty: expected a header row with column names", path=where, line=1
        )
    for option, column in [
        ("text_column", text_column),
        ("label_column", label_column),
        ("split_column", split_column),
    ]:
        if column is not None and column not in columns:
            hint = ""
            if (
                len(columns) == 1
                and delimiter not in columns[0]
                and any(d in columns[0] for d in ",\t;|")
            ):
                hint = f" (the header has one column: is delimiter={delimiter!r} right?)"
            raise DataOptionError(
                f"{where}: {option}={column!r} is not a column; the columns are "
                f"{list(columns)}{hint}",
                path=where,
                line=1,
            )
    records = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadDataError(
                f"{where}, line {reader.line_num}: malformed record ({err})",
                path=where,
                line=reader.line_num,
            ) from err
        line = reader.line_num
        if None in row:
            raise BadDataError(
                f"{where}, record ending on line {line}: {len(columns) + len(row[None])} fields "
                f"but the header has {len(columns)} (an unquoted delimiter or quote inside a "
                "text?)",
                path=where,
                line=line,
            )
        values = [row[text_column], row[label_column]]
        if split_column is not None:
            values.append(row[split_column])
        if any(v is None for v in values):
            raise BadDataError(
                f"{where}, record ending on line {line}: fewer fields than the header's "
                f"{len(columns)}: {row}",
                path=where,
                line=line,
            )
        here = f"{where}:{line}"
        text_value, label = row[text_column], row[label_column]
        split = None if split_column is None else row[split_column]
        if counts is not None:
            text_value = counts.repair(text_value, here)
            label = counts.repair(label, here, is_text=False)
            split = None if split is None else counts.repair(split, here, is_text=False)
        records.append(Record(text_value, label, split, here))
    return records


def _label_str(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def jsonl_records(
    text: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
    where: str,
    counts: DecodeCounts | None = None,
) -> list[Record]:
    """Records of a JSON-lines file's decoded content ``text``: one object per non-blank line."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        here = f"{where}:{number}"
        if counts is not None:
            # a bad byte inside a JSON string: repaired before parsing (json rejects surrogates
            # only when escaped, but keep the parse independent of them)
            line = counts.repair(line, here)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadDataError(
                f"{where}, line {number}: not valid JSON ({err})", path=where, line=number
            ) from err
        if not isinstance(obj, dict):
            raise BadDataError(
                f"{where}, line {number}: expected a JSON object, got {line[:80]!r}",
                path=where,
                line=number,
            )
        for option, column in [
            ("text_column", text_column),
            ("label_column", label_column),
            ("split_column", split_column),
        ]:
            if column is not None and column not in obj:
                raise DataOptionError(
                    f"{where}, line {number}: {option}={column!r} is missing; the keys are "
                    f"{sorted(obj)}",
                    path=where,
                    line=number,
                )
        value = obj[text_column]
        if not isinstance(value, str):
            raise BadDataError(
                f"{where}, line {number}: {text_column!r} must be a string, got "
                f"{type(value).__name__}",
                path=where,
                line=number,
            )
        split = None if split_column is None else str(obj[split_column])
        records.append(Record(value, _label_str(obj[label_column]), split, here))
    return records


def read_file(path: Path, options: Mapping[str, object], counts: DecodeCounts) -> list[Record]:
    """Records of a .csv / .tsv / .jsonl file (options: module docstring)."""
    options = check_reader_options(path, options)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataNotFoundError(
            f"cannot read the corpus file {path} ({err.strerror or err}); check the path and its "
            "permissions",
            path=path,
        ) from err
    text, escaped = counts.decode_file(data)
    repair = counts if escaped else None
    text_column, label_column = options["text_column"], options["label_column"]
    split_column = options["split_column"]
    if options["format"] == "jsonl":
        return jsonl_records(text, text_column, label_column, split_column, str(path), repair)
    return delimited_records(
        text, options["delimiter"], text_column, label_column, split_column, str(path), repair
    )


def read_folder(path: Path, options: Mapping[str, object], counts: DecodeCounts) -> list[Record]:
    """Records of a folder of ``<class>/*.txt``, optionally under ``train/`` and ``test/`` (and
    ``validation/``), whose split is then used."""
    options = check_reader_options(path, options)
    if (path / "train").is_dir() and (path / "test").is_dir():
        layout = [("train", path / "train"), ("test", path / "test")]
        if (path / "validation").is_dir():
            layout.insert(1, ("validation", path / "validation"))
    else:
        layout = [(None, path)]
    records: list[Record] = []
    for split, folder in layout:
        classes = options["classes"]
        if classes is None:
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if "unsup" in classes:  # aclImdb's unlabelled reviews
                classes.remove("unsup")
                log.info("%s: skipping the unlabelled folder %s", path, folder / "unsup")
        for name in classes:
            class_dir = folder / name
            if not class_dir.is_dir():
                raise DataNotFoundError(
                    f"class folder {class_dir} (from classes=) does not exist; the sub-folders of "
                    f"{folder} are {sorted(p.name for p in folder.iterdir() if p.is_dir())}",
                    path=class_dir,
                )
            files = sorted(class_dir.glob("*.txt"))
            if not files:
                log.warning("%s has no *.txt files; class %r gets no examples", class_dir, name)
            for file in files:
                try:
                    data = file.read_bytes()
                except OSError as err:
                    raise DataNotFoundError(
                        f"cannot read {file} ({err.strerror or err}); check its permissions",
                        path=file,
                    ) from err
                records.append(Record(counts.decode(data, str(file)), name, split, str(file)))
    if not records:
        raise BadDataError(
            f"{path}: no <class>/*.txt files found (expected one sub-folder per class, optionally "
            "under train/ and test/)",
            path=path,
        )
    return records
