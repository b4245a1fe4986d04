"""From raw records to labelled splits: clean, deduplicate, number the labels, split.

The steps, in order (`jaxnn.data.corpora` runs them; each is counted in the corpus's ``info``):

1. `clean_and_dedup`: ``<br />`` tags replaced (``strip_html_breaks``), labels and split values
   normalized, empty or whitespace-only texts removed (counted), exact duplicate texts removed
   keeping the first occurrence, so that no text sits in two splits (counted; duplicates whose
   labels disagree are counted separately).
2. `label_names_of`: the class names, sorted (numerically when every label is an integer) or
   as given, from the training examples only.
3. `label_ids`: every record's label id; a validation or test label never seen in training is
   an error naming the record.
4. `split_indices`: a seeded split stratified by label (`stratified_split`), or the source's
   own train / validation / test (a missing validation split is drawn from train).
5. `make_splits`: the `Split`s, each keeping source order.

Splitting: for every class c with n_c examples, ``round(n_c * test_fraction)`` go to test and
``round((n_c - n_test_c) * validation_fraction)`` of the rest to validation (so
``validation_fraction`` is the share of the training pool held out), never leaving a class
without a training example. Which examples go where is drawn by ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from jaxnn.data.errors import BadDataError, DataOptionError
from jaxnn.data.readers import Record
from jaxnn.data.text import strip_html_breaks

__all__ = [
    "SPLITS",
    "Split",
    "check_fraction",
    "clean_and_dedup",
    "label_ids",
    "label_names_of",
    "make_splits",
    "split_indices",
    "stratified_split",
]

log = logging.getLogger("jaxnn.data")

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


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


def check_fraction(name: str, value: object, corpus: str | None = None) -> None:
    """Raise `DataOptionError` unless ``value`` is a number in [0, 1) (naming ``corpus``)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        prefix = f"corpus {corpus!r}: " if corpus else ""
        raise DataOptionError(f"{prefix}{name} must be a number in [0, 1), got {value!r}")


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded split of indices, stratified by label.

    For each class c (n_c examples): n_test = round(n_c * test_fraction),
    n_val = round((n_c - n_test) * validation_fraction), both reduced as needed so that at least
    one example of every class stays in train. Returns sorted int64 index arrays
    {"train", "validation", "test"} that partition range(len(labels)).
    """
    check_fraction("test_fraction", test_fraction)
    check_fraction("validation_fraction", validation_fraction)
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


def _path_of(where: str) -> str:
    head, _, tail = where.rpartition(":")
    return head if head and tail.isdigit() else where


def _line_of(where: str) -> int | None:
    head, _, tail = where.rpartition(":")
    return int(tail) if head and tail.isdigit() else None


def _bad(record: Record, message: str) -> BadDataError:
    return BadDataError(
        f"{record.where}: {message}", path=_path_of(record.where), line=_line_of(record.where)
    )


def _normalized_split(record: Record) -> str | None:
    if record.split is None:
        return None
    split = record.split.strip().lower()
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise _bad(
            record,
            f"split value {record.split!r} is not one of {SPLITS} (or {sorted(_SPLIT_ALIASES)} "
            "for validation); fix the value or the split_column option",
        )
    return split


def clean_and_dedup(records: list[Record], strip_breaks: bool, info: dict) -> list[Record]:
    """Normalize label and split fields, drop empty texts and exact duplicates (counted in
    ``info``: num_examples_read, num_empty_removed, empty_examples, num_duplicates_removed,
    num_conflicting_duplicates)."""
    kept: list[Record] = []
    first: dict[str, Record] = {}
    num_empty = num_dup = num_conflicting = 0
    empty_examples: list[str] = []
    for record in records:
        text = strip_html_breaks(record.text) if strip_breaks else record.text
        label = record.label.strip()
        if not label:
            raise _bad(record, "empty label; every example needs a label")
        split = _normalized_split(record)
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
        record = Record(text, label, split, record.where)
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


def _has_explicit_splits(records: Sequence[Record], name: str) -> bool:
    explicit = [r.split is not None for r in records]
    if any(explicit) and not all(explicit):
        missing = next(r for r in records if r.split is None)
        raise BadDataError(
            f"{name}: some examples have a split and others do not (e.g. {missing.where}); give "
            "every example a split, or none",
            path=_path_of(missing.where),
        )
    return bool(explicit) and explicit[0]


def _label_order(labels: Iterable[str]) -> tuple[str, ...]:
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def label_names_of(
    records: Sequence[Record], name: str, given: Sequence[object] | None
) -> tuple[tuple[str, ...], bool]:
    """The class names (``given`` as strings, else the training labels in order), and whether
    the records carry their own splits."""
    has_explicit = _has_explicit_splits(records, name)
    train_labels = [r.label for r in records if not has_explicit or r.split == "train"]
    if not train_labels:
        raise BadDataError(
            f"{name}: the train split is empty; give some examples the split value 'train'",
            path=name,
        )
    if given is not None:
        label_names = tuple(str(x) for x in given)
        if not label_names or len(set(label_names)) != len(label_names):
            raise DataOptionError(
                f"{name}: label_names must be a non-empty list of distinct names, got "
                f"{label_names}",
                path=name,
            )
        return label_names, has_explicit
    return _label_order(train_labels), has_explicit


def label_ids(
    records: Sequence[Record],
    label_names: tuple[str, ...],
    has_explicit: bool,
    given: bool,
) -> np.ndarray:
    """int32 [N] label id of every record; a label outside ``label_names`` is an error naming
    the record and its split."""
    label_id = {label: i for i, label in enumerate(label_names)}
    for record in records:
        if record.label not in label_id:
            where = "training" if not has_explicit or record.split == "train" else record.split
            raise _bad(
                record,
                f"label {record.label!r} ({where} split) is not among the "
                f"{'given label_names' if given else 'training labels'} {list(label_names)}",
            )
    return np.array([label_id[r.label] for r in records], dtype=np.int32)


def split_indices(
    records: Sequence[Record],
    labels: np.ndarray,
    has_explicit: bool,
    *,
    test_fraction: float,
    validation_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Indices of each split: stratified and seeded, or the records' own splits (a missing
    validation split drawn from train with ``validation_fraction``)."""
    if not has_explicit:
        return stratified_split(
            labels, test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed
        )
    split_of = np.array([SPLITS.index(r.split) for r in records])
    index = {name: np.flatnonzero(split_of == i) for i, name in enumerate(SPLITS)}
    if index["validation"].size == 0:
        pool = index["train"]
        inner = stratified_split(
            labels[pool], test_fraction=0.0, validation_fraction=validation_fraction, seed=seed
        )
        index["train"], index["validation"] = pool[inner["train"]], pool[inner["validation"]]
    return index


def make_splits(
    texts: Sequence[str], labels: np.ndarray, index: dict[str, np.ndarray]
) -> dict[str, Split]:
    """The `Split` of each name in ``index`` (rows in index order)."""
    return {
        name: Split([texts[i] for i in idx.tolist()], labels[idx]) for name, idx in index.items()
    }
