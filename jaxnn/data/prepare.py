"""One call from a corpus to model-ready arrays, cached: `prepare` and, at the end, `prepare_test`.

``prepare(source, max_len=..., min_freq=..., max_size=...)`` loads the corpus (`load_corpus`),
builds the vocabulary from the training split only, encodes train and validation to int32
[N, max_len], and counts unknown words per split (warning above ``unk_warn_threshold``). The
result is cached under ``<data_dir>/encoded/`` keyed by everything it depends on (a built-in
corpus's pinned checksum, a user file's sha256 or a folder's file listing, every corpus option,
seed, max_len, min_freq, max_size, the tokenizer and the cache format), so a second call reads a
few NumPy files and never touches the texts.

The cache never stops a run: a cache file that cannot be read back (truncated, a flipped byte,
any exception) is named in one warning and rebuilt; a data directory that cannot be written
(read-only, full) means no cache, with one warning. A cache is written into a temporary folder
beside it, flushed, then renamed in one step, so a killed writer never leaves half a cache.

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnn.data._checks import check_positive_int
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
    encode_token_batch,
    warn_if_unknown,
)

__all__ = ["EncodedSplit", "Prepared", "encode_split", "prepare", "prepare_test"]

log = logging.getLogger("jaxnn.data")

# 2: undecodable bytes counted per text (info), atomic writes
_CACHE_VERSION = 2


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
        # only a cache: the other processes are already training
        _save_or_warn(prepared, plan_path)
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
    """Everything the encoded arrays depend on: the cache format, the tokenizer, the corpus's
    content and every corpus option (`corpus_fingerprint`, defaults filled in), the split seed,
    and the vocabulary and encoding options. A change of any of them is another cache entry."""
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


class CacheUnreadableError(Exception):
    """A cache file that cannot be read back (``path``: the file; the cause is chained)."""

    def __init__(self, path: Path, reason: object) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


# leftovers of a writer killed mid-write are removed once they are this old (a writer that is
# still running is never that slow)
_STALE_TMP_S = 3600.0


def _write_file(path: Path, write) -> None:
    """``write(file)`` into ``path`` and flush it to disk, so a rename after it never publishes
    a half-written file (even after a power loss)."""
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


_TMP_NAME = re.compile(r".+-[0-9a-f]{20}(\.plan)?\.tmp[A-Za-z0-9_]{8}")


def _remove_stale_tmp(path: Path) -> None:
    """Remove the temporary folders of killed writers (of any entry) beside ``path``."""
    now = time.time()
    for tmp in path.parent.iterdir():
        try:
            if _TMP_NAME.fullmatch(tmp.name) and now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _save(prepared: Prepared, path: Path) -> None:
    """Write the cache folder ``path`` atomically: every file goes into a temporary folder
    beside it (flushed to disk), which is then renamed to ``path`` in one step, so a reader sees
    the whole cache or none, whatever moment a writer is killed at. A folder already at ``path``
    with no ``meta.json`` (a pre-atomic leftover) is replaced. Raises OSError (e.g. a read-only
    or full data directory): the caller decides that this only costs the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
    try:
        for name in ("train", "validation"):
            split = getattr(prepared, name)
            arrays = {"lengths": split.lengths, "labels": split.labels}
            if isinstance(split, EncodedSplit):  # a ShardedSplit's plan: no tokens
                arrays = {"tokens": split.tokens, **arrays}
            _write_file(tmp / f"{name}.npz", lambda f, arrays=arrays: np.savez(f, **arrays))
        vocab_tmp = prepared.vocab.save(tmp / "vocab.json")
        with open(vocab_tmp, "rb") as f:
            os.fsync(f.fileno())
        meta = {
            "version": _CACHE_VERSION,
            "name": prepared.name,
            "label_names": list(prepared.label_names),
            "max_len": prepared.max_len,
            "info": prepared.info,
        }
        body = json.dumps(meta).encode("utf-8")
        _write_file(tmp / "meta.json", lambda f: f.write(body))  # last: marks a complete cache
        if path.is_dir() and not (path / "meta.json").is_file():
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process wrote it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read(path: Path, what: str, read):
    """``read(path)``, any failure (a truncated zip, a bad CRC, EOF, bad JSON, a pickle, a
    missing key...) raised as `CacheUnreadableError` naming the file."""
    try:
        return read(path)
    except Exception as err:
        raise CacheUnreadableError(path, f"{what}: {type(err).__name__}: {err}") from err


def _read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return {name: np.asarray(arrays[name]) for name in names}


def _load(path: Path) -> Prepared:
    """The cached `Prepared` in ``path``; `CacheUnreadableError` naming the first file that
    cannot be read or does not fit the others (shapes, dtypes, max_len, label ids)."""
    meta_path = path / "meta.json"
    meta = _read(meta_path, "meta", lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(meta, dict) or meta.get("version") != _CACHE_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise CacheUnreadableError(meta_path, f"cache version {version} != {_CACHE_VERSION}")
    try:
        info = meta["info"]
        max_len = int(meta["max_len"])
        label_names = tuple(str(x) for x in meta["label_names"])
        name_ = str(meta["name"])
    except Exception as err:
        raise CacheUnreadableError(meta_path, f"{type(err).__name__}: {err}") from err
    vocab = _read(path / "vocab.json", "vocabulary", Vocabulary.load)
    splits = {}
    for name in ("train", "validation"):
        file = path / f"{name}.npz"
        arrays = _read(file, "arrays", lambda p: _read_npz(p, ("tokens", "lengths", "labels")))
        tokens, lengths, labels = arrays["tokens"], arrays["lengths"], arrays["labels"]
        n = labels.shape[0] if labels.ndim == 1 else -1
        problems = [
            (tokens.dtype != np.int32 or tokens.shape != (n, max_len), f"tokens {tokens.shape}"),
            (lengths.dtype != np.int32 or lengths.shape != (n,), f"lengths {lengths.shape}"),
            (labels.dtype != np.int32 or n < 0, f"labels {labels.shape}"),
        ]
        bad = [what for failed, what in problems if failed]
        if not bad and n and (labels.min() < 0 or labels.max() >= len(label_names)):
            bad.append(f"label ids outside 0..{len(label_names) - 1}")
        if not bad and n and (tokens.min() < 0 or tokens.max() >= len(vocab)):
            bad.append(f"token ids outside 0..{len(vocab) - 1}")
        if bad:
            raise CacheUnreadableError(
                file, f"arrays do not fit (max_len {max_len}, int32): {', '.join(bad)}"
            )
        try:
            splits[name] = EncodedSplit(
                tokens=tokens,
                lengths=lengths,
                labels=labels,
                num_truncated=int(info["num_truncated"][name]),
                unk=UnkStats.from_dict(info["unk"][name]),
            )
        except Exception as err:
            raise CacheUnreadableError(meta_path, f"{type(err).__name__}: {err}") from err
    return Prepared(
        name=name_,
        vocab=vocab,
        label_names=label_names,
        train=splits["train"],
        validation=splits["validation"],
        max_len=max_len,
        info=info,
    )


def _load_cached(path: Path, source: object) -> tuple[Prepared | None, bool]:
    """The cache at ``path`` if it is there and readable; else None, with one warning naming
    the unreadable file (which is removed, to be written again). Also returns whether the
    cache may be written (False when a damaged cache could not be removed)."""
    if not (path / "meta.json").is_file():
        return None, True
    try:
        prepared = _load(path)
    except CacheUnreadableError as err:
        shutil.rmtree(path, ignore_errors=True)
        removed = not path.exists()
        log.warning(
            "ignoring the unreadable cache file %s; %s",
            err,
            "rebuilding it"
            if removed
            else "it could not be removed either, so this run goes on without a cache",
        )
        return None, removed
    prepared.info["cache"] = {"path": str(path), "hit": True}
    log.info("%s: encoded splits read from the cache %s", source, path)
    return prepared, True


def _save_or_warn(prepared: Prepared, path: Path) -> bool:
    """`_save`, or one warning when the data directory cannot be written (read-only, full,
    no permission): the run goes on without a cache. Whether the cache was written."""
    try:
        _save(prepared, path)
    except OSError as err:
        log.warning(
            "cannot write the data cache %s (%s); going on without a cache. Set JAXNN_DATA_DIR "
            "(or data_dir=) to a writable folder to cache the encoded data",
            path,
            f"{type(err).__name__}: {err.strerror or err}",
        )
        return False
    return True


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
      cache: read and write ``<data_dir>/encoded/``; False reads and writes nothing there. A
        cache file that cannot be read (truncated, a flipped byte, any error) is named in one
        warning and rebuilt; a data directory that cannot be written (read-only, full) costs
        only the cache, with one warning. Writes are atomic (a temporary folder renamed).
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
        prepared, writable = (None, False) if path is None else _load_cached(path, source)
        if prepared is None:
            corpus = load_corpus(source, seed=seed, data_dir=data_dir, **options)
            prepared = _build(corpus, max_len, min_freq, max_size)
            written = path is not None and writable and _save_or_warn(prepared, path)
            prepared.info["cache"] = {"path": str(path) if written else None, "hit": False}
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
