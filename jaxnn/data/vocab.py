"""Vocabulary with <pad> = 0 and <unk> = 1, encoding to int32, and the unknown-word ratio.

A word that was not in the training vocabulary maps to ``<unk>``; track

    unk_ratio = (number of <unk> ids) / (number of real, non-pad tokens)

The count is of id ``UNK_ID`` in the encoded tokens (counting empty-string tokens,
``tokens.count("")``, would always give 0: a tokenizer never produces them).

Shapes: N texts, L = max_len, V = len(vocab).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxnn.data._checks import check_positive_int
from jaxnn.data.errors import BadDataError, DataNotFoundError
from jaxnn.data.text import TOKENIZER_NAME, TokenBatch, tokenize_batch

__all__ = [
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "Encoded",
    "UnkStats",
    "UnknownWordWarning",
    "Vocabulary",
    "encode_token_batch",
    "encode_with_oov_counts",
    "unk_stats",
    "warn_if_unknown",
]

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
_FORMAT = "jaxnn.data.Vocabulary"
_VERSION = 1


class UnknownWordWarning(UserWarning):
    """A split's unknown-word ratio is above the configured threshold."""


def _check_texts(texts: object) -> Sequence[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a sequence of str (a list of texts), got a single string")
    texts = list(texts)  # type: ignore[arg-type]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
    return texts


def _check_vocab_options(min_freq: object, max_size: object) -> None:
    check_positive_int("min_freq", min_freq)
    if max_size is not None:
        check_positive_int("max_size", max_size)
        if max_size < 2:  # type: ignore[operator]
            raise ValueError(f"max_size must be >= 2 (it counts <pad> and <unk>), got {max_size}")


@dataclass(frozen=True)
class Encoded:
    """Texts as token ids.

    Attributes:
      tokens: int32 [N, L]; row n holds the first min(len_n, L) token ids of text n, then PAD_ID.
      lengths: int32 [N] number of real tokens per row, min(len_n, L); 0 for an empty text
        (an all-padding row: pooling and attention must treat it as such).
      num_truncated: how many texts had more than L tokens (their tail beyond L is cut).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    num_truncated: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class UnkStats:
    """Unknown words in one split, counted over the encoded tokens (what the model sees).

    Attributes:
      num_tokens: real (non-pad) tokens.
      num_unk: tokens encoded as UNK_ID.
      ratio: num_unk / num_tokens (0.0 when num_tokens == 0).
      num_oov_types: distinct out-of-vocabulary words among them.
      top_oov: up to 10 (word, count) pairs, most frequent out-of-vocabulary words first.
    """

    num_tokens: int
    num_unk: int
    ratio: float
    num_oov_types: int
    top_oov: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "num_unk": self.num_unk,
            "ratio": self.ratio,
            "num_oov_types": self.num_oov_types,
            "top_oov": [list(pair) for pair in self.top_oov],
        }

    @classmethod
    def from_oov_counts(
        cls, num_tokens: int, oov_types: Sequence[str], oov_counts: np.ndarray | Sequence[int]
    ) -> UnkStats:
        """The statistics of ``num_tokens`` kept tokens among which the out-of-vocabulary word
        ``oov_types[i]`` occurs ``oov_counts[i]`` times (zeros ignored): num_unk = sum of the
        counts, ratio = num_unk / num_tokens, top_oov ordered by (-count, word). Counts summed
        over disjoint parts of a split give the statistics of the whole split."""
        oov_counts = np.asarray(oov_counts, dtype=np.int64)
        oov = np.flatnonzero(oov_counts)
        top = sorted(oov.tolist(), key=lambda i: (-oov_counts[i], oov_types[i]))[:10]
        num_unk = int(oov_counts.sum())
        return cls(
            num_tokens=int(num_tokens),
            num_unk=num_unk,
            ratio=num_unk / num_tokens if num_tokens else 0.0,
            num_oov_types=int(oov.size),
            top_oov=tuple((oov_types[i], int(oov_counts[i])) for i in top),
        )

    @classmethod
    def from_dict(cls, data: dict) -> UnkStats:
        return cls(
            num_tokens=int(data["num_tokens"]),
            num_unk=int(data["num_unk"]),
            ratio=float(data["ratio"]),
            num_oov_types=int(data["num_oov_types"]),
            top_oov=tuple((str(w), int(c)) for w, c in data["top_oov"]),
        )


class Vocabulary:
    """Token <-> id map: id 0 = "<pad>", id 1 = "<unk>", then words by falling training count.

    Build it from the training split only (``Vocabulary.build(corpus.train.texts, ...)``), save it
    beside the checkpoints (``vocab.save(path)``, JSON) and reload it for evaluation
    (``Vocabulary.load(path)``).

    Example:
      >>> vocab = Vocabulary.build(["a b b", "b c"], min_freq=1)
      >>> vocab.tokens
      ('<pad>', '<unk>', 'b', 'a', 'c')
      >>> vocab.encode(["b z"], max_len=3).tokens
      array([[2, 1, 0]], dtype=int32)
    """

    def __init__(
        self, tokens: Sequence[str], *, min_freq: int | None = None, max_size: int | None = None
    ):
        tokens = tuple(tokens)
        if len(tokens) < 2 or tokens[PAD_ID] != PAD or tokens[UNK_ID] != UNK:
            raise ValueError(
                f"tokens must start with {PAD!r}, {UNK!r} (ids {PAD_ID}, {UNK_ID}); "
                f"got {list(tokens[:2])}"
            )
        index = {token: i for i, token in enumerate(tokens)}
        if len(index) != len(tokens):
            seen: set[str] = set()
            dup = next(t for t in tokens if t in seen or seen.add(t))
            raise ValueError(f"tokens must be distinct; {dup!r} appears more than once")
        self._tokens = tokens
        self._index = index
        self.min_freq = min_freq
        self.max_size = max_size

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls, texts: Sequence[str], *, min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Vocabulary of the words of ``texts`` (the training split).

        A word is kept if it occurs at least ``min_freq`` times; words are ordered by count,
        highest first, ties broken by the word itself (so the result never depends on text order);
        ``max_size`` caps the total size V *including* <pad> and <unk> (None = no cap).
        """
        return cls.from_token_batch(
            tokenize_batch(_check_texts(texts)), min_freq=min_freq, max_size=max_size
        )

    @classmethod
    def from_token_batch(
        cls,
        batch: TokenBatch,
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        rows: slice | None = None,
    ) -> Vocabulary:
        """`build` over already tokenized texts; ``rows`` restricts counting to some texts."""
        _check_vocab_options(min_freq, max_size)  # before counting
        ids = batch.ids if rows is None else batch.select(rows).ids
        counts = np.bincount(ids, minlength=len(batch.types))
        return cls.from_counts(batch.types, counts, min_freq=min_freq, max_size=max_size)

    @classmethod
    def from_counts(
        cls,
        types: Sequence[str],
        counts: np.ndarray | Sequence[int],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """`build` from word counts: ``counts[i]`` occurrences of the distinct word ``types[i]``.

        The vocabulary depends only on the (word, count) pairs, never on their order, so counts
        summed over disjoint parts of the training split (one per process) give the vocabulary
        of the whole split. A count of 0 is never kept.
        """
        _check_vocab_options(min_freq, max_size)
        counts = np.asarray(counts)
        if counts.shape != (len(types),):
            raise ValueError(
                f"counts must have shape ({len(types)},) to match types, got {counts.shape}"
            )
        kept = np.flatnonzero(counts >= min_freq)
        order = sorted(kept.tolist(), key=lambda i: (-counts[i], types[i]))
        if max_size is not None:
            order = order[: max_size - 2]
        return cls([PAD, UNK, *(types[i] for i in order)], min_freq=min_freq, max_size=max_size)

    # --- lookups ------------------------------------------------------------------------------
    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens in id order."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(self._tokens)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, min_freq={self.min_freq}, max_size={self.max_size})"

    def token_to_id(self, token: str) -> int:
        """Id of ``token``; UNK_ID for a word outside the vocabulary."""
        return self._index.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        return self._tokens[token_id]

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Token strings of ``ids`` with padding (PAD_ID) left out."""
        return [self._tokens[i] for i in np.asarray(ids).tolist() if i != PAD_ID]

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], max_len: int) -> Encoded:
        """Texts -> `Encoded` (tokens int32 [N, max_len], lengths int32 [N], num_truncated).

        Texts longer than ``max_len`` tokens keep their first ``max_len`` tokens. Raises
        ValueError when max_len < 1.
        """
        check_positive_int("max_len", max_len)
        encoded, _ = encode_token_batch(self, tokenize_batch(_check_texts(texts)), max_len)
        return encoded

    # --- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "tokenizer": TOKENIZER_NAME,
            "min_freq": self.min_freq,
            "max_size": self.max_size,
            "tokens": list(self._tokens),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically: a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by `save`; checks the format and the tokenizer name."""
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(
                f"vocabulary file not found: {path} (it is written beside the checkpoints by the "
                "run that trained them)",
                path=path,
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadDataError(f"{path} is not valid JSON: {err}", path=path) from err
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise BadDataError(
                f"{path} is not a jaxnn vocabulary (expected format {_FORMAT!r})", path=path
            )
        if data.get("tokenizer") != TOKENIZER_NAME:
            raise BadDataError(
                f"{path} was built with tokenizer {data.get('tokenizer')!r}, but this jaxnn "
                f"tokenizes with {TOKENIZER_NAME!r}; rebuild the vocabulary",
                path=path,
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise BadDataError(f"{path}: 'tokens' is not a list of strings", path=path)
        try:
            return cls(tokens, min_freq=data.get("min_freq"), max_size=data.get("max_size"))
        except (TypeError, ValueError) as err:
            raise BadDataError(f"{path}: not a valid vocabulary ({err})", path=path) from err


def encode_token_batch(
    vocab: Vocabulary, batch: TokenBatch, max_len: int
) -> tuple[Encoded, UnkStats]:
    """Encode tokenized texts and count their unknown words in one go (see `Encoded`, `UnkStats`).

    The unknown-word counts cover the kept tokens, the first min(len_n, max_len) of each text:
    ratio = #(tokens == UNK_ID) / #(real tokens).
    """
    encoded, num_tokens, oov_counts = encode_with_oov_counts(vocab, batch, max_len)
    return encoded, UnkStats.from_oov_counts(num_tokens, batch.types, oov_counts)


def encode_with_oov_counts(
    vocab: Vocabulary, batch: TokenBatch, max_len: int
) -> tuple[Encoded, int, np.ndarray]:
    """`encode_token_batch` before the statistics: (encoded, number of kept tokens, int64
    [len(batch.types)] occurrences of each type encoded as UNK_ID among the kept tokens)."""
    check_positive_int("max_len", max_len)
    num_texts = len(batch.lengths)
    # Look each distinct token up once, then map all occurrences with one gather.
    type_to_id = np.fromiter(
        (vocab.token_to_id(t) for t in batch.types), dtype=np.int32, count=len(batch.types)
    )
    lengths = np.minimum(batch.lengths, max_len).astype(np.int32)
    within = np.arange(int(batch.lengths.sum()), dtype=np.int64)
    within -= np.repeat(batch.offsets()[:-1], batch.lengths)
    kept = within < max_len
    del within
    kept_types = batch.ids[kept]
    kept_ids = type_to_id[kept_types]
    tokens = np.zeros((num_texts, max_len), dtype=np.int32)
    # Row-major order of the mask equals text-then-position order of kept_ids.
    tokens[np.arange(max_len) < lengths[:, None]] = kept_ids
    encoded = Encoded(
        tokens=tokens,
        lengths=lengths,
        num_truncated=int(np.count_nonzero(batch.lengths > max_len)),
    )
    oov_counts = np.bincount(kept_types[kept_ids == UNK_ID], minlength=len(batch.types))
    return encoded, int(kept_ids.size), oov_counts.astype(np.int64)


def unk_stats(texts: Sequence[str], vocab: Vocabulary, *, max_len: int | None = None) -> UnkStats:
    """Unknown-word statistics of ``texts`` under ``vocab``.

    ratio = (#tokens mapped to <unk>) / (#real tokens), plus the number of distinct
    out-of-vocabulary words. With ``max_len`` only the first max_len tokens of each text count
    (what an encoding with that max_len feeds the model); None counts every token.
    """
    batch = tokenize_batch(_check_texts(texts))
    if max_len is None:
        max_len = max(1, int(batch.lengths.max(initial=0)))
    _, stats = encode_token_batch(vocab, batch, max_len)
    return stats


def warn_if_unknown(stats: UnkStats, threshold: float | None, split: str) -> bool:
    """Issue an `UnknownWordWarning` when ``stats.ratio > threshold``; returns whether it did."""
    if threshold is None or stats.ratio <= threshold:
        return False
    examples = ", ".join(w for w, _ in stats.top_oov[:5])
    warnings.warn(
        f"{split}: unknown-word ratio {stats.ratio:.2%} ({stats.num_unk} of {stats.num_tokens} "
        f"tokens, {stats.num_oov_types} distinct out-of-vocabulary words, e.g. {examples}) is "
        f"above unk_warn_threshold={threshold}",
        UnknownWordWarning,
        stacklevel=3,
    )
    return True
