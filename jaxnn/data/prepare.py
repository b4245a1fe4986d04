"""One call from a corpus to model-ready arrays, cached: `prepare` and, at the end, `prepare_test`.

``prepare(source, max_len=..., min_freq=..., max_size=...)`` loads the corpus (`load_corpus`),
builds the vocabulary from the training split only, encodes train and validation to int32
[N, max_len], and counts unknown words per split (warning above ``unk_warn_threshold``). The
result is cached under ``<data_dir>/encoded/`` keyed by everything it depends on (the corpus's
checksum or file listing, corpus options, seed, max_len, min_freq, max_size, tokenizer), so a
second call reads a few NumPy files and never touches the texts.

``prepare_test(source, vocab, max_len=...)`` encodes the test split with a given (saved)
vocabulary, for the final evaluation only.

Several processes (``processes=ProcessGroup(p, P, allgather)`` with P > 1, what
`jaxnn.train.loop.load_data` passes under ``jax.distributed``): no process encodes the whole
corpus. Every process loads the corpus texts, tokenizes only its share n ≡ p (mod P) for the
vocabulary, lengths and unknown-word counts, exchanges them (`jaxnn.data.sharded.plan_splits`),
and returns `ShardedSplit`s that encode a row when a batch of this process first asks for it.
The vocabulary, lengths, labels and statistics are those of one process (so are the batches).
The cache: the vocabulary, lengths and labels (never the tokens) are read from the
one-process cache when it is there, else from ``<cache dir>.plan/`` written by an earlier
multi-process run; only when every process finds them is the plan pass skipped.
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
from jaxnn.data.sharded import ProcessGroup, ShardedSplit, plan_splits
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
        ``.validation`` with the same seed and options. In a multi-process run
        (``prepare(..., processes=...)``), `ShardedSplit`s: the same lengths, labels and
        statistics, rows encoded on demand.
      max_len: L of the token matrices.
      info: corpus processing counts (`Corpus.info`), unknown-word stats, truncation counts,
        and "cache": {"path", "hit"}.
    """

    name: str
    vocab: Vocabulary
    label_names: tuple[str, ...]
    train: EncodedSplit | ShardedSplit
    validation: EncodedSplit | ShardedSplit
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
    result: dict[str, EncodedSplit | ShardedSplit] = {}
    for name, rows, split in [
        ("train", slice(0, num_train), corpus.train),
        ("validation", slice(num_train, None), corpus.validation),
    ]:
        encoded, stats = encode_token_batch(vocab, batch.select(rows), max_len)
        result[name] = EncodedSplit(
            encoded.tokens, encoded.lengths, split.labels, encoded.num_truncated, stats
        )
    return _prepared(corpus, vocab, result, max_len, min_freq, max_size)


def _build_sharded(
    corpus: Corpus, max_len: int, min_freq: int, max_size: int | None, group: ProcessGroup
) -> Prepared:
    splits = {name: getattr(corpus, name) for name in ("train", "validation")}
    vocab, planned = plan_splits(
        {name: (split.texts, split.labels) for name, split in splits.items()},
        group,
        max_len=max_len,
        min_freq=min_freq,
        max_size=max_size,
    )
    return _prepared(corpus, vocab, planned, max_len, min_freq, max_size)


def _prepared(
    corpus: Corpus,
    vocab: Vocabulary,
    splits: dict[str, EncodedSplit | ShardedSplit],
    max_len: int,
    min_freq: int,
    max_size: int | None,
) -> Prepared:
    info = dict(corpus.info)
    info.update(
        vocab_size=len(vocab),
        max_len=max_len,
        min_freq=min_freq,
        max_size=max_size,
        num_truncated={k: v.num_truncated for k, v in splits.items()},
        unk={k: v.unk.to_dict() for k, v in splits.items()},
    )
    return Prepared(
        name=corpus.name,
        vocab=vocab,
        label_names=corpus.label_names,
        train=splits["train"],
        validation=splits["validation"],
        max_len=max_len,
        info=info,
    )


def _read_plan(path: Path, corpus: Corpus, max_len: int) -> Prepared | None:
    """The plan (vocabulary, lengths, labels, statistics; no tokens) stored in the cache folder
    ``path`` (a one-process cache or a ``.plan`` one) as `ShardedSplit`s holding no row; None
    when absent, unreadable or not of ``corpus``."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != _CACHE_VERSION or int(meta["max_len"]) != max_len:
            return None
        info = meta["info"]
        vocab = Vocabulary.load(path / "vocab.json")
        splits = {}
        for name in ("train", "validation"):
            texts, labels = getattr(corpus, name).texts, getattr(corpus, name).labels
            with np.load(path / f"{name}.npz") as arrays:  # reads these two members only
                lengths, saved = arrays["lengths"], arrays["labels"]
            if lengths.shape != labels.shape or not np.array_equal(saved, labels):
                log.warning("the plan in %s is not of this corpus; ignoring it", path)
                return None
            splits[name] = ShardedSplit(
                texts,
                labels,
                lengths,
                vocab=vocab,
                max_len=max_len,
                num_truncated=int(info["num_truncated"][name]),
                unk=UnkStats.from_dict(info["unk"][name]),
            )
    except Exception as err:  # any damage: raising here would leave the other processes waiting
        log.warning("ignoring the unreadable plan in %s (%s)", path, err)
        return None
    return Prepared(
        name=meta["name"],
        vocab=vocab,
        label_names=tuple(meta["label_names"]),
        train=splits["train"],
        validation=splits["validation"],
        max_len=max_len,
        info=info,
    )


def _prepare_sharded(
    source: str | os.PathLike | Corpus,
    path: Path | None,
    group: ProcessGroup,
    *,
    max_len: int,
    min_freq: int,
    max_size: int | None,
    seed: int,
    data_dir: str | os.PathLike | None,
    options: dict,
) -> Prepared:
    """`prepare` of one of P > 1 processes (module docstring): a plan from the cache when every
    process has one, else the plan pass (`plan_splits`), then written to ``<path>.plan``."""
    if isinstance(source, Corpus):
        prepared = _build_sharded(source, max_len, min_freq, max_size, group)
        prepared.info["cache"] = {"path": None, "hit": False}
        return prepared
    corpus = load_corpus(source, seed=seed, data_dir=data_dir, **options)
    prepared = plan_path = where = None
    if path is not None:
        plan_path = path.with_name(path.name + ".plan")
        for where in (path, plan_path):
            prepared = _read_plan(where, corpus, max_len)
            if prepared is not None:
                break
    # a collective decision: caches may differ between hosts (a data_dir per host)
    found = np.asarray([prepared is not None], dtype=bool)
    if all(bool(g["found"][0]) for g in group.exchange({"found": found})):
        log.info("%s: vocabulary and lengths read from the cache %s", source, where)
        prepared.info["cache"] = {"path": str(where), "hit": True}
        return prepared
    if plan_path is not None and prepared is None and plan_path.exists():
        shutil.rmtree(plan_path, ignore_errors=True)  # damaged or stale: written again below
    prepared = _build_sharded(corpus, max_len, min_freq, max_size, group)
    log.info(
        "process %d of %d: tokenized its share (text n = %d mod %d) of %s: %d train, %d validation",
        group.index,
        group.count,
        group.index,
        group.count,
        source,
        prepared.train.num_tokenized,
        prepared.validation.num_tokenized,
    )
    if plan_path is not None and not (plan_path / "meta.json").is_file():
        try:
            _save(prepared, plan_path)
        except OSError as err:  # only a cache: the other processes are already training
            log.warning("could not write the plan cache %s (%s)", plan_path, err)
    prepared.info["cache"] = {"path": None if plan_path is None else str(plan_path), "hit": False}
    return prepared


def _cache_key(
    source: str | os.PathLike,
    options: dict,
    seed: int,
    max_len: int,
    min_freq: int,
    max_size: int | None,
) -> dict:
    return {
        "cache_version": _CACHE_VERSION,
        "tokenizer": TOKENIZER_NAME,
        "source": corpus_fingerprint(source, options),
        "seed": int(seed),
        "max_len": max_len,
        "min_freq": min_freq,
        "max_size": max_size,
    }


def _cache_dir(root: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)[:40]
    return root / "encoded" / f"{label}-{digest}"


def _save(prepared: Prepared, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    try:
        for name in ("train", "validation"):
            split = getattr(prepared, name)
            arrays = {"lengths": split.lengths, "labels": split.labels}
            if isinstance(split, EncodedSplit):  # a ShardedSplit's plan: no tokens
                arrays = {"tokens": split.tokens, **arrays}
            np.savez(tmp / f"{name}.npz", **arrays)
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
    processes: ProcessGroup | None = None,
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
      processes: this process's `ProcessGroup` in a multi-process run; with count P > 1 every
        process of the group must call `prepare` with the same arguments, and each encodes only
        its share (module docstring). None or P = 1: one process, the whole corpus encoded.
      **options: corpus options (`load_corpus`).

    Returns:
      `Prepared`: vocab, label_names, train and validation `EncodedSplit`s (`ShardedSplit`s
      when P > 1), info.
    """
    max_len = check_positive_int("max_len", max_len)
    check_positive_int("min_freq", min_freq)
    if max_size is not None:
        check_positive_int("max_size", max_size)
    _check_threshold(unk_warn_threshold)
    if processes is not None and not isinstance(processes, ProcessGroup):
        raise TypeError(f"processes must be a ProcessGroup or None, got {processes!r}")
    sharded = processes is not None and processes.count > 1
    if isinstance(source, Corpus) and options:
        raise TypeError(f"corpus options {sorted(options)} given with an already loaded Corpus")
    if sharded:
        path = None
        if cache and not isinstance(source, Corpus):
            key = _cache_key(source, options, seed, max_len, min_freq, max_size)
            path = _cache_dir(_data_root(data_dir), str(source), key)
        prepared = _prepare_sharded(
            source,
            path,
            processes,
            max_len=max_len,
            min_freq=min_freq,
            max_size=max_size,
            seed=seed,
            data_dir=data_dir,
            options=options,
        )
        prepared.info["processes"] = {"index": processes.index, "count": processes.count}
    elif isinstance(source, Corpus):
        prepared = _build(source, max_len, min_freq, max_size)
        prepared.info["cache"] = {"path": None, "hit": False}
    else:
        path = None
        if cache:
            key = _cache_key(source, options, seed, max_len, min_freq, max_size)
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
    processes: ProcessGroup | None = None,
    **options: object,
) -> EncodedSplit | ShardedSplit:
    """Encode the test split (`load_test_split`) with ``vocab``; for the final evaluation only.

    With ``processes`` of count P > 1 (every process calls it): a `ShardedSplit`, this process
    tokenizing its share n ≡ p (mod P) for the lengths and statistics, then the rows it feeds.
    """
    max_len = check_positive_int("max_len", max_len)
    _check_threshold(unk_warn_threshold)
    if processes is not None and not isinstance(processes, ProcessGroup):
        raise TypeError(f"processes must be a ProcessGroup or None, got {processes!r}")
    split = load_test_split(source, seed=seed, data_dir=data_dir, **options)
    if processes is not None and processes.count > 1:
        _, planned = plan_splits(
            {"test": (split.texts, split.labels)}, processes, max_len=max_len, vocab=vocab
        )
        warn_if_unknown(planned["test"].unk, unk_warn_threshold, f"{source} test")
        return planned["test"]
    return encode_split(
        split, vocab, max_len, name=f"{source} test", unk_warn_threshold=unk_warn_threshold
    )
