"""A small text problem whose answer is known, for the bias-variance test and for demos.

Words come in three groups: "a0".."a{G-1}", "b0".."b{G-1}" and neutral "n0".."n{M-1}". A text
holds ``length`` words; each of the groups a and b is present in it with probability 1/2
(then 1-3 of its words appear), and the rest are neutral words. The label is

    y = [a present] XOR [b present]        (flipped with probability ``noise``)

so the Bayes error is ``noise``. A bag-of-words model with a 1-dimensional embedding and at most
one hidden unit scores a text by a monotone function of one linear feature, which cannot express
XOR: it underfits (high bias). A wide model can express it; trained unregularized on few texts it
also memorizes which neutral words came with which label (high variance).
"""

from __future__ import annotations

import numpy as np

from jaxnn.data import Corpus, Split

__all__ = ["xor_corpus"]


def _texts(rng: np.random.Generator, n: int, groups: int, neutral: int, length: int, noise: float):
    texts, labels = [], []
    for _ in range(n):
        has_a, has_b = rng.random() < 0.5, rng.random() < 0.5
        words = []
        for present, prefix in ((has_a, "a"), (has_b, "b")):
            if present:
                count = int(rng.integers(1, 4))
                words += [f"{prefix}{i}" for i in rng.integers(0, groups, count)]
        words += [f"n{i}" for i in rng.integers(0, neutral, length - len(words))]
        rng.shuffle(words)
        label = int(has_a != has_b)
        if rng.random() < noise:
            label = 1 - label
        texts.append(" ".join(words))
        labels.append(label)
    return Split(texts, np.asarray(labels, np.int32))


def xor_corpus(
    *,
    num_train: int = 200,
    num_validation: int = 400,
    groups: int = 5,
    neutral: int = 300,
    length: int = 12,
    noise: float = 0.05,
    seed: int = 0,
) -> Corpus:
    """The XOR corpus above as a `jaxnn.data.Corpus` (labels "0", "1"); pass it to prepare()."""
    if length < 6:
        raise ValueError(f"length must be >= 6 (room for both groups), got {length}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")
    rng = np.random.default_rng(seed)
    train = _texts(rng, num_train, groups, neutral, length, noise)
    validation = _texts(rng, num_validation, groups, neutral, length, noise)
    return Corpus("xor", train, validation, ("0", "1"), {"noise": noise})
