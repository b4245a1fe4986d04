"""Tests for jaxnn/data/text.py: tokenizer, interned batches, decoding, cleaning."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn.data.text import decode_text, strip_html_breaks, tokenize, tokenize_batch


def test_tokenize_hand_checked_examples():
    assert tokenize("Don't stop!!  It's GREAT.") == [
        "don't",
        "stop",
        "!",
        "!",
        "it's",
        "great",
        ".",
    ]
    assert tokenize("I give it 10/10, e-mail me: a_b@x.com") == [
        "i",
        "give",
        "it",
        "10",
        "/",
        "10",
        ",",
        "e",
        "-",
        "mail",
        "me",
        ":",
        "a_b",
        "@",
        "x",
        ".",
        "com",
    ]
    assert tokenize("'quoted' rock’n’roll") == ["'", "quoted", "'", "rock’n’roll"]
    assert tokenize("Café ÜBER naïve") == ["café", "über", "naïve"]
    assert tokenize("") == []
    assert tokenize(" \n\t ") == []


def test_tokenize_never_produces_the_special_tokens():
    assert tokenize("<pad> <unk> <PAD>") == ["<", "pad", ">", "<", "unk", ">", "<", "pad", ">"]


def _reference_tokens(text: str) -> list[str]:
    """A character-by-character transcription of the rule, independent of the regex."""
    text = text.lower()
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isalnum() or ch == "_":
            j = i
            while True:
                while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                if (
                    j + 1 < len(text)
                    and text[j] in "'’"
                    and (text[j + 1].isalnum() or text[j + 1] == "_")
                ):
                    j += 1
                    continue
                break
            tokens.append(text[i:j])
            i = j
        else:
            tokens.append(ch)
            i += 1
    return tokens


_ALPHABET = "ab Z9_'’!?.,-\n\tÉé<>\u00a0"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_tokenize_matches_character_reference(text):
    # isalnum/isspace agree with re's \w and \s on this alphabet (checked here, not assumed).
    for ch in _ALPHABET:
        assert bool(re.fullmatch(r"\w", ch)) == (ch.isalnum() or ch == "_")
        assert bool(re.fullmatch(r"\s", ch)) == ch.isspace()
    assert tokenize(text) == _reference_tokens(text)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=_ALPHABET, max_size=30), max_size=8))
def test_tokenize_batch_equals_per_text_tokenize(texts):
    batch = tokenize_batch(texts)
    assert batch.texts_tokens() == [tokenize(t) for t in texts]
    assert batch.ids.dtype == np.int32
    assert batch.lengths.tolist() == [len(tokenize(t)) for t in texts]
    assert len(set(batch.types)) == len(batch.types)
    assert batch.offsets()[-1] == batch.ids.size


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab c.", max_size=12), max_size=9), st.integers(1, 4))
def test_tokenize_batch_chunking_does_not_change_the_result(texts, chunk_size):
    whole = tokenize_batch(texts, chunk_size=10**6)
    chunked = tokenize_batch(texts, chunk_size=chunk_size)
    assert chunked.types == whole.types  # first-appearance order either way
    np.testing.assert_array_equal(chunked.ids, whole.ids)
    np.testing.assert_array_equal(chunked.lengths, whole.lengths)


def test_tokenize_batch_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        tokenize_batch(["a"], chunk_size=0)


def test_token_batch_select_keeps_rows():
    texts = ["a b", "", "c a d", "e"]
    batch = tokenize_batch(texts)
    assert batch.select(slice(1, 3)).texts_tokens() == [[], ["c", "a", "d"]]
    assert batch.select(slice(3, None)).texts_tokens() == [["e"]]
    assert batch.select(slice(2, 2)).texts_tokens() == []


def test_decode_text_valid_utf8_and_bom():
    assert decode_text("héllo".encode()) == ("héllo", 0, False)
    assert decode_text(b"\xef\xbb\xbftext,label") == ("text,label", 0, True)
    # Only a leading BOM is removed.
    assert decode_text(b"a\xef\xbb\xbfb") == ("a\ufeffb", 0, False)


def test_decode_text_replaces_and_counts_each_bad_byte():
    # Latin-1 pound sign, as in BBC sports/199.txt.
    assert decode_text(b"a \xa315.8m fee") == ("a \ufffd15.8m fee", 1, False)
    text, replaced, _ = decode_text(b"\xff\xfeok\xc3")  # two stray bytes and a cut sequence
    assert (text, replaced) == ("\ufffd\ufffdok\ufffd", 3)
    # On single bad bytes the result equals Python's own "replace" handler.
    data = b"x\x80y\xa3z"
    assert decode_text(data)[0] == data.decode("utf-8", "replace")


def test_strip_html_breaks():
    assert strip_html_breaks("a<br />b<br/>c<BR>d<br  />e") == "a b c d e"
    assert strip_html_breaks("no tags <b>bold</b>") == "no tags <b>bold</b>"
