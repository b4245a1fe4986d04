"""jaxnn/models/bow.py against a NumPy transcription of the bag-of-words formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.models import BowClassifier, hashed_bigram_ids, hashed_ngram_ids, unique_ids


def _numpy_ngram_ids(tokens: np.ndarray, n: int, buckets: int) -> np.ndarray:
    """The docstring's rule: h = a_1; h = mix(h * 0x9E3779B1 + a_k) for k = 2..n; h mod buckets."""
    m = (1 << 32) - 1
    width = max(tokens.shape[1] - n + 1, 0)
    h = tokens[:, :width].astype(np.uint64)
    for k in range(1, n):
        h = (h * 0x9E3779B1 + tokens[:, k : k + width].astype(np.uint64)) & m
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & m
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & m
        h ^= h >> 16
    return (h % buckets).astype(np.int32)


def _numpy_bigram_ids(tokens: np.ndarray, buckets: int) -> np.ndarray:
    return _numpy_ngram_ids(tokens, 2, buckets)


def _batch(seed=0, batch=5, length=9, vocab=50):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, size=batch)
    lengths[0] = 0  # an all-padding row
    lengths[1] = length
    mask = np.arange(length) < lengths[:, None]
    tokens = np.where(mask, rng.integers(2, vocab, size=(batch, length)), 0).astype(np.int32)
    return tokens, mask


@pytest.mark.parametrize("buckets", [1, 97, 2**20])
def test_hashed_bigram_ids_match_numpy(buckets):
    tokens = np.random.default_rng(1).integers(0, 2**31 - 1, size=(4, 12)).astype(np.int32)
    tokens[0, :3] = [0, 1, 2**31 - 1]
    ours = np.asarray(jax.jit(hashed_bigram_ids, static_argnums=1)(jnp.asarray(tokens), buckets))
    np.testing.assert_array_equal(ours, _numpy_bigram_ids(tokens, buckets))
    assert ours.min() >= 0 and ours.max() < buckets


def test_hashed_bigram_ids_spread_and_order_matters():
    ids = np.asarray(hashed_bigram_ids(jnp.asarray([[3, 4, 3]]), 2**20))
    assert ids[0, 0] != ids[0, 1]  # (3, 4) and (4, 3) are different bigrams
    tokens = np.random.default_rng(0).integers(2, 5000, size=(64, 64))
    ids = np.asarray(hashed_bigram_ids(jnp.asarray(tokens), 1024))
    counts = np.bincount(ids.ravel(), minlength=1024)
    assert counts.max() < 20  # about 4 per bucket: no clustering


def test_single_token_gives_no_bigrams():
    assert hashed_bigram_ids(jnp.zeros((3, 1), jnp.int32), 10).shape == (3, 0)


def _numpy_forward(params, tokens, mask, buckets, activation=None):
    table = np.asarray(params["embed"]["embedding"], np.float64)
    vectors = [table[tokens]]
    masks = [mask]
    if buckets:
        bigram_table = np.asarray(params["bigram_embed"]["embedding"], np.float64)
        vectors.append(bigram_table[_numpy_bigram_ids(tokens, buckets)])
        masks.append(mask[:, :-1] & mask[:, 1:])
    total = sum((v * m[..., None]).sum(1) for v, m in zip(vectors, masks))
    count = sum(m.sum(1) for m in masks)[:, None]
    x = total / np.maximum(count, 1)
    dense = sorted(
        jax.tree_util.tree_flatten_with_path(params["head"])[0],
        key=lambda item: jax.tree_util.keystr(item[0]),
    )
    kernels = [np.asarray(leaf, np.float64) for path, leaf in dense if path[-1].key == "kernel"]
    biases = [np.asarray(leaf, np.float64) for path, leaf in dense if path[-1].key == "bias"]
    for i, (w, b) in enumerate(zip(kernels, biases)):
        x = x @ w + b
        if i < len(kernels) - 1:
            x = activation(x)
    return x


@pytest.mark.parametrize(
    ("buckets", "hidden", "activation"),
    [(0, 0, None), (64, 0, None), (64, 8, lambda x: np.maximum(x, 0))],
)
def test_logits_equal_numpy_mean_of_unigram_and_bigram_vectors(buckets, hidden, activation):
    tokens, mask = _batch()
    model = BowClassifier(
        vocab_size=50, num_classes=3, embed_dim=6, hidden_size=hidden, bigram_buckets=buckets
    )
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    logits = jax.jit(lambda v, t, m: model.apply(v, t, m, train=False))(variables, tokens, mask)
    expected = _numpy_forward(variables["params"], tokens, mask, buckets, activation)
    assert logits.shape == (5, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_padding_positions_do_not_matter():
    tokens, mask = _batch()
    model = BowClassifier(vocab_size=50, num_classes=2, embed_dim=4, bigram_buckets=32)
    variables = model.init(jax.random.key(1), tokens, mask, train=False)
    garbage = np.where(mask, tokens, 7)  # other ids at padded positions
    a = model.apply(variables, tokens, mask, train=False)
    b = model.apply(variables, garbage, mask, train=False)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_gradient_of_embedding_matches_numpy_for_linear_head():
    tokens, mask = _batch(batch=3, length=5)
    model = BowClassifier(vocab_size=50, num_classes=2, embed_dim=3)
    variables = model.init(jax.random.key(2), tokens, mask, train=False)

    def total_logit(params):
        return model.apply({"params": params}, tokens, mask, train=False)[:, 1].sum()

    grads = jax.grad(total_logit)(variables["params"])
    kernel = next(
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"]["head"])[0]
        if path[-1].key == "kernel"
    )
    expected = np.zeros((50, 3))
    for b in range(3):
        n = mask[b].sum()
        for t in np.flatnonzero(mask[b]):
            expected[tokens[b, t]] += np.asarray(kernel)[:, 1] / n
    np.testing.assert_allclose(grads["embed"]["embedding"], expected, rtol=1e-5, atol=1e-7)


def test_dropout_acts_only_in_training():
    tokens, mask = _batch()
    model = BowClassifier(vocab_size=50, num_classes=2, embed_dim=8, dropout_rate=0.5)
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    eval_a = model.apply(variables, tokens, mask, train=False)
    eval_b = model.apply(variables, tokens, mask, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(variables, tokens, mask, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = model.apply(variables, tokens, mask, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, train_b)


def test_feature_ids_and_table_names():
    tokens, mask = _batch()
    model = BowClassifier(vocab_size=50, num_classes=2, bigram_buckets=16)
    features = model.apply({}, tokens, mask, method="feature_ids")
    assert set(features) == set(model.table_names()) == {"embed", "bigram_embed"}
    ids, bigram_mask = features["bigram_embed"]
    assert ids.shape == (5, 8)
    np.testing.assert_array_equal(bigram_mask, mask[:, :-1] & mask[:, 1:])
    assert BowClassifier(vocab_size=5, num_classes=2).table_names() == ("embed",)


def _numpy_bag_logits(params, tokens, mask, *, bigrams, trigrams, binary, pooling):
    """Linear head over the pooled bag of unigram, bigram and trigram vectors, in NumPy."""
    tables = [("embed", 1, None), ("bigram_embed", 2, bigrams), ("trigram_embed", 3, trigrams)]
    out = []
    for b in range(tokens.shape[0]):
        total, count = 0.0, 0
        for name, n, buckets in tables:
            if n > 1 and not buckets:
                continue
            length = int(mask[b].sum())
            ids = (
                tokens[b, :length]
                if n == 1
                else _numpy_ngram_ids(tokens[b : b + 1, :length], n, buckets)[0]
            )
            if binary:
                ids = np.unique(ids)
            table = np.asarray(params[name]["embedding"], np.float64)
            total = total + table[ids].sum(0)
            count += len(ids)
        scale = 0.0 if count == 0 else (1 / count if pooling == "mean" else 1 / np.sqrt(count))
        pooled = total * scale if count else np.zeros(params["embed"]["embedding"].shape[1])
        dense = params["head"]
        layer = dense[sorted(dense)[0]]
        out.append(pooled @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"]))
    return np.stack(out)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_hashed_ngram_ids_match_numpy(n):
    tokens = np.random.default_rng(n).integers(0, 2**31 - 1, size=(3, 10)).astype(np.int32)
    ours = np.asarray(hashed_ngram_ids(jnp.asarray(tokens), n, 1000))
    np.testing.assert_array_equal(ours, _numpy_ngram_ids(tokens, n, 1000))
    assert ours.shape == (3, 11 - n)
    np.testing.assert_array_equal(
        hashed_ngram_ids(jnp.asarray(tokens), 2, 97), hashed_bigram_ids(jnp.asarray(tokens), 97)
    )
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        hashed_ngram_ids(jnp.asarray(tokens), 1, 10)


def test_unique_ids_is_the_set_of_unmasked_ids():
    ids = jnp.asarray([[5, 3, 5, 9, 3, 7], [1, 1, 1, 1, 0, 0], [4, 4, 2, 2, 2, 2]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    out, keep = unique_ids(ids, mask)
    for row in range(3):
        got = sorted(np.asarray(out[row])[np.asarray(keep[row])].tolist())
        want = sorted(set(np.asarray(ids[row])[np.asarray(mask[row])].tolist()))
        assert got == want


@pytest.mark.parametrize(
    ("bigrams", "trigrams", "binary", "pooling"),
    [(0, 0, True, "mean"), (64, 32, False, "mean"), (64, 32, True, "sqrt"), (0, 16, False, "sqrt")],
)
def test_logits_equal_numpy_bag_of_ngrams(bigrams, trigrams, binary, pooling):
    tokens, mask = _batch(length=11, vocab=6)  # a small vocabulary: repeated n-grams
    model = BowClassifier(
        vocab_size=6,
        num_classes=3,
        embed_dim=5,
        bigram_buckets=bigrams,
        trigram_buckets=trigrams,
        binary_features=binary,
        pooling=pooling,
    )
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    logits = jax.jit(lambda v, t, m: model.apply(v, t, m, train=False))(variables, tokens, mask)
    expected = _numpy_bag_logits(
        variables["params"],
        tokens,
        mask,
        bigrams=bigrams,
        trigrams=trigrams,
        binary=binary,
        pooling=pooling,
    )
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    names = (
        {"embed"}
        | ({"bigram_embed"} if bigrams else set())
        | ({"trigram_embed"} if trigrams else set())
    )
    assert set(model.table_names()) == names


def test_unknown_pooling_is_refused():
    tokens, mask = _batch()
    with pytest.raises(ValueError, match=r"pooling='max'.*allowed: mean, sqrt"):
        BowClassifier(vocab_size=50, num_classes=2, pooling="max").init(
            jax.random.key(0), tokens, mask, train=False
        )


# -- classify_rows: the same function from a batch's distinct rows --------------------------------
def _distinct_inputs(model, params, tokens, mask, extra_slots=3):
    """(rows, slots, masks) as the sparse train step builds them (jaxnn.train.sparse), with a few
    unused slots past the distinct rows."""
    from jaxnn.train import sparse as sparse_lib

    features = model.apply({}, tokens, mask, method="feature_ids")
    rows, slots, masks = {}, {}, {}
    for name, (ids, m) in features.items():
        size = sparse_lib.distinct_rows(np.asarray(ids), np.asarray(m)) + extra_slots
        indices, slot = sparse_lib.distinct_slots(ids, m, size=size)
        rows[name] = sparse_lib.gather_rows(params[name]["embedding"], indices)
        slots[name], masks[name] = slot, m
    return rows, slots, masks


@pytest.mark.parametrize(
    ("rate", "hidden", "bigrams", "trigrams", "binary", "pooling", "dtype"),
    [
        (0.0, 0, 0, 0, False, "mean", None),  # counts @ rows
        (0.0, 6, 32, 16, True, "sqrt", None),
        (0.3, 0, 0, 0, False, "mean", None),  # blocked dropout sum
        (0.3, 6, 32, 16, False, "sqrt", None),
        (0.5, 0, 32, 0, True, "mean", jnp.bfloat16),
        (1.0, 0, 32, 0, False, "mean", None),  # everything dropped
        ("traced", 6, 32, 0, False, "mean", None),  # a rate known only at run time
    ],
)
def test_classify_rows_equals_classify_of_the_looked_up_vectors(
    rate, hidden, bigrams, trigrams, binary, pooling, dtype
):
    """classify_rows(rows, slots) = classify(rows[slots]): logits and the rows' gradients, in
    training (same dropout draws) and evaluation, jitted and not."""
    tokens, mask = _batch(seed=3, batch=6, length=13, vocab=9)
    traced = rate == "traced"
    model = BowClassifier(
        vocab_size=9,
        num_classes=3,
        embed_dim=8,
        hidden_size=hidden,
        dropout_rate=0.0 if traced else rate,
        bigram_buckets=bigrams,
        trigram_buckets=trigrams,
        binary_features=binary,
        pooling=pooling,
        dtype=dtype,
    )
    params = model.init(jax.random.key(0), tokens, mask, train=False)["params"]
    rows, slots, masks = _distinct_inputs(model, params, tokens, mask)
    dense = {k: v for k, v in params.items() if k not in rows}
    rngs = {"dropout": jax.random.key(7)}
    tol = dict(rtol=2e-2, atol=2e-2) if dtype is not None else dict(rtol=1e-5, atol=1e-6)

    for train in (True, False):
        call_rate = {"dropout_rate": jnp.float32(0.3)} if traced else {}

        def reference(rows, train=train, call_rate=call_rate):
            vectors = {n: r.at[slots[n]].get(mode="fill", fill_value=0) for n, r in rows.items()}
            return model.apply(
                {"params": dense},
                vectors,
                masks,
                train=train,
                rngs=rngs,
                method="classify",
                **call_rate,
            )

        def from_rows(rows, train=train, call_rate=call_rate):
            return model.apply(
                {"params": dense},
                rows,
                slots,
                masks,
                train=train,
                rngs=rngs,
                method="classify_rows",
                **call_rate,
            )

        want = reference(rows)
        for fn in (from_rows, jax.jit(from_rows)):
            np.testing.assert_allclose(fn(rows), want, **tol)
        loss = lambda f: lambda r: jnp.sum(jnp.sin(f(r)) * jnp.arange(3.0))
        want_grad = jax.grad(loss(reference))(rows)
        got_grad = jax.jit(jax.grad(loss(from_rows)))(rows)
        for name in rows:
            np.testing.assert_allclose(got_grad[name], want_grad[name], **tol)
    if rate == 1.0:  # all dropped: the head's bias for every text
        np.testing.assert_allclose(
            from_rows(rows, train=True), np.broadcast_to(dense["head"]["Dense_0"]["bias"], (6, 3))
        )


def test_classify_rows_whole_tables_take_the_blocked_sum(monkeypatch):
    """__call__ with the whole tables as rows, forced into the blocked form (as for a large
    vocabulary): the same logits as classify of the looked-up vectors, with and without
    dropout, and the tables' gradients."""
    from jaxnn.ops import embedding_bag

    monkeypatch.setattr(embedding_bag, "COUNTS_MAX_ROWS_PER_LOOKUP", 0)
    monkeypatch.setattr(embedding_bag, "BLOCK_ELEMENTS", 2 * 13 * 8)
    tokens, mask = _batch(seed=5, batch=6, length=13, vocab=40)
    model = BowClassifier(vocab_size=40, num_classes=3, embed_dim=8, bigram_buckets=64)
    params = model.init(jax.random.key(0), tokens, mask, train=False)["params"]
    features = model.apply({}, tokens, mask, method="feature_ids")
    masks = {n: m for n, (_, m) in features.items()}
    rngs = {"dropout": jax.random.key(2)}
    for train, rate in ((False, 0.0), (True, 0.4)):

        def reference(params, train=train, rate=rate):
            vectors = {n: params[n]["embedding"][ids] for n, (ids, _) in features.items()}
            return model.apply(
                {"params": params},
                vectors,
                masks,
                train=train,
                rngs=rngs,
                method="classify",
                dropout_rate=rate,
            )

        def called(params, train=train, rate=rate):
            return model.apply(
                {"params": params}, tokens, mask, train=train, rngs=rngs, dropout_rate=rate
            )

        np.testing.assert_allclose(called(params), reference(params), rtol=1e-5, atol=1e-6)
        loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            jax.grad(loss(called))(params),
            jax.grad(loss(reference))(params),
        )


@pytest.mark.parametrize("rate", [1.5, -0.2])
def test_a_dropout_rate_outside_0_1_is_refused(rate):
    """As the Dropout module refuses it, whichever path sums the vectors."""
    tokens, mask = _batch()
    model = BowClassifier(vocab_size=50, num_classes=2, embed_dim=4)
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    with pytest.raises(ValueError, match=r"allowed: a probability in \[0, 1\]"):
        model.apply(
            variables,
            tokens,
            mask,
            train=True,
            dropout_rate=rate,
            rngs={"dropout": jax.random.key(1)},
        )


def test_an_id_outside_the_table_makes_its_text_nan():
    """An id >= V is NaN for its text (as a gather's fill makes it), never silently dropped;
    the other texts are untouched."""
    tokens, mask = _batch(seed=1, vocab=50)
    model = BowClassifier(vocab_size=50, num_classes=2, embed_dim=4)
    variables = model.init(jax.random.key(0), tokens, mask, train=False)
    good = model.apply(variables, tokens, mask, train=False)
    bad_tokens = np.array(tokens)
    bad_tokens[1, 0] = 50  # row 1 is full length: a real token
    bad = model.apply(variables, bad_tokens, mask, train=False)
    assert np.all(np.isnan(bad[1]))
    np.testing.assert_allclose(np.delete(bad, 1, axis=0), np.delete(good, 1, axis=0))
