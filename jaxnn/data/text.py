"""Text handling: byte decoding with counted repairs, light cleaning, and the word tokenizer.

The tokenizer is the single definition every other part of jaxnn.data relies on:

    tokenize(text) = re.findall(r"\\w+(?:['’]\\w+)*|[^\\w\\s]", text.lower())

i.e. lowercase, then words (letters, digits, underscore; an inner apostrophe keeps "don't" and
"you'll" whole) and single punctuation marks ("!!" -> "!", "!"). Whitespace separates tokens and is
never a token. The special vocabulary entries "<pad>" and "<unk>" can never be produced by it
("<" and ">" are punctuation), so a text cannot collide with them.

`tokenize_batch` is the fast path over many texts: one pass that tokenizes every text and interns
each distinct token once, returning int ids into a list of distinct tokens instead of N lists of
strings. Counting and vocabulary lookups then run in NumPy over those ids.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TOKENIZER_NAME",
    "TokenBatch",
    "decode_text",
    "strip_html_breaks",
    "tokenize",
    "tokenize_batch",
]

# Bump the name if the token definition ever changes: it is part of every cache key and of the
# saved vocabulary, so stale caches and mismatched vocabularies are detected.
TOKENIZER_NAME = "lower-word-punct-v1"

_TOKEN_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_BREAK_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")
_BOM = b"\xef\xbb\xbf"


def tokenize(text: str) -> list[str]:
    """Split one text into lowercase word and punctuation tokens.

    Example: ``tokenize("Don't stop!!  It's GREAT.")`` ->
    ``["don't", "stop", "!", "!", "it's", "great", "."]``. An empty or all-whitespace text gives
    ``[]``.
    """
    return _TOKEN_RE.findall(text.lower())


@dataclass(frozen=True)
class TokenBatch:
    """Tokens of N texts, interned.

    Attributes:
      types: the distinct tokens, in order of first appearance.
      ids: int32 [total] index into ``types`` of every token, texts concatenated in order.
      lengths: int64 [N] number of tokens of each text (``ids`` splits at ``cumsum(lengths)``).
    """

    types: list[str]
    ids: np.ndarray
    lengths: np.ndarray

    def offsets(self) -> np.ndarray:
        """int64 [N + 1] start of each text in ``ids`` (and the total at the end)."""
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def select(self, rows: slice) -> TokenBatch:
        """The texts ``rows`` (a contiguous slice), sharing ``types``."""
        start, stop, step = rows.indices(len(self.lengths))
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice, got {rows}")
        stop = max(start, stop)
        offsets = self.offsets()
        return TokenBatch(
            types=self.types,
            ids=self.ids[offsets[start] : offsets[stop]],
            lengths=self.lengths[start:stop],
        )

    def texts_tokens(self) -> list[list[str]]:
        """Back to one list of token strings per text (slow; for tests and inspection)."""
        offsets = self.offsets()
        return [
            [self.types[i] for i in self.ids[offsets[n] : offsets[n + 1]]]
            for n in range(len(self.lengths))
        ]


def tokenize_batch(texts: Sequence[str], chunk_size: int = 2048) -> TokenBatch:
    """Tokenize N texts with `tokenize` and intern the tokens (see `TokenBatch`).

    Equivalent to ``[tokenize(t) for t in texts]`` but returns ids. Texts are processed
    ``chunk_size`` at a time, so only one chunk's token strings are alive at once (the 13M tokens
    of IMDB as Python strings would take ~1 GB); each token is looked up with C-level ``map``
    over a dict, never in a Python loop body, and only a chunk's new distinct tokens are added in
    Python.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    findall = _TOKEN_RE.findall
    index: dict[str, int] = {}
    id_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    for start in range(0, len(texts), chunk_size):
        per_text = [findall(text.lower()) for text in texts[start : start + chunk_size]]
        flat = list(itertools.chain.from_iterable(per_text))
        for token in dict.fromkeys(flat):
            index.setdefault(token, len(index))
        id_chunks.append(np.fromiter(map(index.__getitem__, flat), dtype=np.int32, count=len(flat)))
        length_chunks.append(np.fromiter(map(len, per_text), dtype=np.int64, count=len(per_text)))
    return TokenBatch(
        types=list(index),
        ids=np.concatenate(id_chunks) if id_chunks else np.zeros(0, np.int32),
        lengths=np.concatenate(length_chunks) if length_chunks else np.zeros(0, np.int64),
    )


def decode_text(data: bytes) -> tuple[str, int, bool]:
    """Decode UTF-8 bytes, never failing and never hiding a repair.

    Returns ``(text, num_replaced, had_bom)``: a leading UTF-8 byte-order mark is removed
    (``had_bom``), and every byte that is not valid UTF-8 becomes U+FFFD, one per byte,
    counted in ``num_replaced`` (e.g. a Latin-1 "£" 0xA3 -> "\\ufffd", 1).
    """
    had_bom = data.startswith(_BOM)
    if had_bom:
        data = data[len(_BOM) :]
    try:
        return data.decode("utf-8"), 0, had_bom
    except UnicodeDecodeError:
        # surrogateescape maps each bad byte to one lone surrogate U+DC80..U+DCFF, which valid
        # UTF-8 can never produce; count them, then replace each by U+FFFD.
        text = data.decode("utf-8", "surrogateescape")
        text, num_replaced = _ESCAPED_BYTE_RE.subn("\ufffd", text)
        return text, num_replaced, had_bom


def strip_html_breaks(text: str) -> str:
    """Replace HTML line breaks (``<br />``, ``<br/>``, ``<br>``, any case) by a space."""
    if "<" not in text:
        return text
    return _BREAK_RE.sub(" ", text)
