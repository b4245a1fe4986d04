"""One call from a corpus to model-ready arrays, cached: `prepare` and, at the end, `prepare_test`.

``prepare(source, max_len=..., min_freq=..., max_size=...)`` loads the corpus (`load_corpus`),
builds the vocabulary from the training split only, encodes train and validation to int32
[N, max_len], and counts unknown words per split (warning above ``unk_warn_threshold``). The
result is cached under ``<data_dir>/encoded/`` keyed by everything it depends on (the corpus's
checksum or file listing, corpus options, seed, max_len, min_freq, max_size, tokenizer), so a
second call reads a few NumPy files and never touches the texts.

``prepare_test(source, vocab, max_len=...)`` encodes the test split with a given (saved)
vocabulary, for the final evaluation only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnn.data.corpora import (
    Corpus,
    Split,
    corpus_fingerprint,
    load_corpus,
    load_test_split,
)
from jaxnn.data.corpora import data_dir as _data_root
from jaxnn.data.text import TOKENIZER_NAME, tokenize_batch
from jaxnn.data.vocab import (
    Encoded,
    UnkStats,
    Vocabulary,
    check_positive_int,
    encode_token_batch,
    warn_if_unknown,
)

__all__ = ["EncodedSplit", "Prepared", "encode_split", "prepare", "prepare_test"]

log = logging.getLogger("jaxnn.data")

_CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class EncodedSplit:
    """An encoded split with its labels and unknown-word statistics.

    Attributes:
      tokens: int32 [N, max_len] token ids, PAD_ID after each row's length.
      lengths: int32 [N] real tokens per row (0 for an empty text).
      labels: int32 [N] class ids.
      num_truncated: texts longer than max_len tokens (cut to their first max_len).
      unk: unknown words among the kept tokens (`UnkStats`).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    num_truncated: int
    unk: UnkStats

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def encoded(self) -> Encoded:
        return Encoded(self.tokens, self.lengths, self.num_truncated)


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything training needs from the data side.

    Attributes:
      name: corpus name or path.
      vocab: built from ``train`` only; save it beside checkpoints (``vocab.save``).
      label_names: C class names (label id c = label_names[c]).
      train, validation: `EncodedSplit`s; row i is text i of ``load_corpus(...).train`` /
        ``.validation`` with the same seed and options.
      max_len: L of the token matrices.
      info: corpus processing counts (`Corpus.info`), unknown-word stats, truncation counts,
        and "cache": {"path", "hit"}.
    """

    name: str
    vocab: Vocabulary
    label_names: tuple[str, ...]
    train: EncodedSplit
    validation: EncodedSplit
    max_len: int
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def encode_split(
    split: Split,
    vocab: Vocabulary,
    max_len: int,
    *,
    name: str = "split",
    unk_warn_threshold: float | None = None,
) -> EncodedSplit:
    """Encode one `Split` with ``vocab`` (an `EncodedSplit`), warning on a high unknown ratio."""
    check_positive_int("max_len", max_len)
    encoded, stats = encode_token_batch(vocab, tokenize_batch(split.texts), max_len)
    warn_if_unknown(stats, unk_warn_threshold, name)
    return EncodedSplit(encoded.tokens, encoded.lengths, split.labels, encoded.num_truncated, stats)


def _check_threshold(value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
    ):
        raise ValueError(f"unk_warn_threshold must be None or a number in [0, 1], got {value!r}")


def _build(corpus: Corpus, max_len: int, min_freq: int, max_size: int | None) -> Prepared:
    num_train = len(corpus.train)
    # One tokenizing pass over train + validation; the vocabulary counts the train rows only.
    batch = tokenize_batch([*corpus.train.texts, *corpus.validation.texts])
    vocab = Vocabulary.from_token_batch(
        batch, min_freq=min_freq, max_size=max_size, rows=slice(0, num_train)
    )
    result = {}
    for name, rows, split in [
        ("train", slice(0, num_train), corpus.train),
        ("validation", slice(num_train, None), corpus.validation),
    ]:
        encoded, stats = encode_token_batch(vocab, batch.select(rows), max_len)
        result[name] = EncodedSplit(
            encoded.tokens, encoded.lengths, split.labels, encoded.num_truncated, stats
        )
    info = dict(corpus.info)
    info.update(
        vocab_size=len(vocab),
        max_len=max_len,
        min_freq=min_freq,
        max_size=max_size,
        num_truncated={k: v.num_truncated for k, v in result.items()},
        unk={k: v.unk.to_dict() for k, v in result.items()},
    )
    return Prepared(
        name=corpus.name,
        vocab=vocab,
        label_names=corpus.label_names,
        train=result["train"],
        validation=result["validation"],
        max_len=max_len,
        info=info,
    )


def _cache_dir(root: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)[:40]
    return root / "encoded" / f"{label}-{digest}"


def _save(prepared: Prepared, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    try:
        for name in ("train", "validation"):
            split: EncodedSplit = getattr(prepared, name)
            np.savez(
                tmp / f"{name}.npz", tokens=split.tokens, lengths=split.lengths, labels=split.labels
            )
        prepared.vocab.save(tmp / "vocab.json")
        meta = {
            "version": _CACHE_VERSION,
            "name": prepared.name,
            "label_names": list(prepared.label_names),
            "max_len": prepared.max_len,
            "info": prepared.info,
        }
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:  # another process wrote it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(path: Path) -> Prepared:
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if meta.get("version") != _CACHE_VERSION:
        raise ValueError(f"cache version {meta.get('version')} != {_CACHE_VERSION}")
    info = meta["info"]
    splits = {}
    for name in ("train", "validation"):
        with np.load(path / f"{name}.npz") as arrays:
            splits[name] = EncodedSplit(
                tokens=arrays["tokens"],
                lengths=arrays["lengths"],
                labels=arrays["labels"],
                num_truncated=int(info["num_truncated"][name]),
                unk=UnkStats.from_dict(info["unk"][name]),
            )
    return Prepared(
        name=meta["name"],
        vocab=Vocabulary.load(path / "vocab.json"),
        label_names=tuple(meta["label_names"]),
        train=splits["train"],
        validation=splits["validation"],
        max_len=int(meta["max_len"]),
        info=info,
    )


def prepare(
    source: str | os.PathLike | Corpus,
    *,
    max_len: int,
    min_freq: int = 1,
    max_size: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    unk_warn_threshold: float | None = 0.05,
    cache: bool = True,
    **options: object,
) -> Prepared:
    """Load, build the vocabulary, encode train and validation; cached (see module docstring).

    Args:
      source: a corpus name or path (as for `load_corpus`), or an already loaded `Corpus`
        (then nothing is cached).
      max_len: L >= 1, tokens kept per text (the first L).
      min_freq, max_size: vocabulary options (`Vocabulary.build`); max_size counts <pad>/<unk>.
      seed: the split seed (`load_corpus`).
      data_dir: cache root (default $JAXNN_DATA_DIR or ~/.cache/jaxnn).
      unk_warn_threshold: warn (`UnknownWordWarning`) when a split's unknown-word ratio is above
        it; None never warns.
      cache: read and write ``<data_dir>/encoded/``.
      **options: corpus options (`load_corpus`).

    Returns:
      `Prepared`: vocab, label_names, train and validation `EncodedSplit`s, info.
    """
    max_len = check_positive_int("max_len", max_len)
    check_positive_int("min_freq", min_freq)
    if max_size is not None:
        check_positive_int("max_size", max_size)
    _check_threshold(unk_warn_threshold)
    if isinstance(source, Corpus):
        if options:
            raise TypeError(f"corpus options {sorted(options)} given with an already loaded Corpus")
        prepared = _build(source, max_len, min_freq, max_size)
        prepared.info["cache"] = {"path": None, "hit": False}
    else:
        path = None
        if cache:
            key = {
                "cache_version": _CACHE_VERSION,
                "tokenizer": TOKENIZER_NAME,
                "source": corpus_fingerprint(source, options),
                "seed": int(seed),
                "max_len": max_len,
                "min_freq": min_freq,
                "max_size": max_size,
            }
            path = _cache_dir(_data_root(data_dir), str(source), key)
        prepared = None
        if path is not None and (path / "meta.json").is_file():
            try:
                prepared = _load(path)
                prepared.info["cache"] = {"path": str(path), "hit": True}
                log.info("%s: encoded splits read from the cache %s", source, path)
            except (OSError, ValueError, KeyError) as err:
                log.warning("ignoring the unreadable cache %s (%s); rebuilding", path, err)
                shutil.rmtree(path, ignore_errors=True)
                prepared = None
        if prepared is None:
            corpus = load_corpus(source, seed=seed, data_dir=data_dir, **options)
            prepared = _build(corpus, max_len, min_freq, max_size)
            if path is not None:
                _save(prepared, path)
            prepared.info["cache"] = {"path": None if path is None else str(path), "hit": False}
    for name in ("train", "validation"):
        split = getattr(prepared, name)
        warn_if_unknown(split.unk, unk_warn_threshold, f"{prepared.name} {name}")
        log.info(
            "%s %s: %d examples, %d truncated to %d tokens, unknown-word ratio %.2f%% "
            "(%d distinct unknown words)",
            prepared.name,
            name,
            len(split),
            split.num_truncated,
            max_len,
            100 * split.unk.ratio,
            split.unk.num_oov_types,
        )
    return prepared


def prepare_test(
    source: str | os.PathLike,
    vocab: Vocabulary,
    *,
    max_len: int,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    unk_warn_threshold: float | None = 0.05,
    **options: object,
) -> EncodedSplit:
    """Encode the test split (`load_test_split`) with ``vocab``; for the final evaluation only."""
    max_len = check_positive_int("max_len", max_len)
    _check_threshold(unk_warn_threshold)
    split = load_test_split(source, seed=seed, data_dir=data_dir, **options)
    return encode_split(
        split, vocab, max_len, name=f"{source} test", unk_warn_threshold=unk_warn_threshold
    )
