"""Tests for jaxnn/metrics/classification.py against scikit-learn (an independent reference).

sklearn.metrics: confusion_matrix, accuracy_score, f1_score(average="macro", zero_division=0),
precision_recall_fscore_support(labels=range(C), zero_division=0). Weighted cases compare with
scikit-learn on the rows of non-zero weight (scikit-learn counts a class seen only in a
zero-weight row as present; a padding row is not data, so jaxnn does not).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxnn.metrics import accuracy, confusion_matrix, macro_f1, precision_recall_f1


def _sk(labels, predictions, num_classes, weights=None):
    """scikit-learn's numbers on the rows of non-zero weight."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if weights is not None:
        keep = np.asarray(weights) != 0
        labels, predictions, weights = labels[keep], predictions[keep], np.asarray(weights)[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels,
            predictions,
            labels=list(range(num_classes)),
            zero_division=0,
            sample_weight=weights,
        )
        return {
            "cm": skm.confusion_matrix(
                labels, predictions, labels=list(range(num_classes)), sample_weight=weights
            ),
            "accuracy": skm.accuracy_score(labels, predictions, sample_weight=weights),
            "macro_f1": skm.f1_score(
                labels, predictions, average="macro", zero_division=0, sample_weight=weights
            ),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }


def _all_metrics(labels, predictions, weights, num_classes):
    return _metrics(confusion_matrix(labels, predictions, num_classes, weights=weights))


# one compilation per (shapes, num_classes), shared by the tests
_all_metrics_jit = jax.jit(_all_metrics, static_argnums=3)


def _ours(labels, predictions, num_classes, weights=None):
    return _all_metrics_jit(jnp.asarray(labels), jnp.asarray(predictions), weights, num_classes)


def _metrics(cm):
    precision, recall, f1 = precision_recall_f1(cm)
    return {
        "cm": cm,
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _assert_same(ours, ref):
    for key, value in ref.items():
        np.testing.assert_allclose(np.asarray(ours[key]), value, rtol=1e-6, atol=1e-6, err_msg=key)


def _random_case(seed, batch, num_classes, weighted):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    # predictions agree with the labels about half the time, so the metrics are not trivial
    noise = rng.integers(0, num_classes, batch).astype(np.int32)
    predictions = np.where(rng.random(batch) < 0.5, labels, noise).astype(np.int32)
    weights = None
    if weighted:
        weights = (rng.random(batch) < 0.8).astype(np.float32)
    return labels, predictions, weights


class TestAgainstScikitLearn:
    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("num_classes", [2, 5, 17])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_random_jit(self, seed, num_classes, weighted):
        labels, predictions, weights = _random_case(seed, 97, num_classes, weighted)
        w = None if weights is None else jnp.asarray(weights)
        ours = _all_metrics_jit(jnp.asarray(labels), jnp.asarray(predictions), w, num_classes)
        _assert_same(ours, _sk(labels, predictions, num_classes, weights))

    @pytest.mark.parametrize("weighted", [False, True])
    def test_random_eager(self, weighted):
        labels, predictions, weights = _random_case(9, 61, 6, weighted)
        w = None if weights is None else jnp.asarray(weights)
        ours = _all_metrics(jnp.asarray(labels), jnp.asarray(predictions), w, 6)
        _assert_same(ours, _sk(labels, predictions, 6, weights))

    def test_class_never_predicted(self):
        labels = np.array([0, 1, 2, 2, 1, 0, 2], np.int32)
        predictions = np.array([0, 0, 2, 2, 0, 0, 0], np.int32)  # class 1 never predicted
        ref = _sk(labels, predictions, 3)
        assert ref["precision"][1] == 0 and ref["f1"][1] == 0
        _assert_same(_ours(labels, predictions, 3), ref)

    def test_class_absent_from_labels(self):
        labels = np.array([0, 0, 2, 2, 0], np.int32)  # class 1 never a label, but predicted
        predictions = np.array([0, 1, 2, 1, 0], np.int32)
        ref = _sk(labels, predictions, 3)
        assert ref["recall"][1] == 0
        _assert_same(_ours(labels, predictions, 3), ref)

    def test_class_absent_from_both_is_left_out_of_macro_mean(self):
        labels = np.array([0, 1, 1, 0], np.int32)
        predictions = np.array([0, 1, 0, 0], np.int32)
        ref = _sk(labels, predictions, 4)  # classes 2, 3 absent from labels and predictions
        _assert_same(_ours(labels, predictions, 4), ref)
        f1 = ref["f1"]
        np.testing.assert_allclose(
            float(_ours(labels, predictions, 4)["macro_f1"]),
            (f1[0] + f1[1]) / 2,
            rtol=1e-6,
        )

    @pytest.mark.parametrize("cls", [0, 2])
    def test_all_one_class(self, cls):
        labels = np.full(9, cls, np.int32)
        predictions = np.full(9, cls, np.int32)
        ref = _sk(labels, predictions, 3)
        assert ref["macro_f1"] == 1.0 and ref["accuracy"] == 1.0
        _assert_same(_ours(labels, predictions, 3), ref)
        # all one class, all wrong
        wrong = np.full(9, (cls + 1) % 3, np.int32)
        ref = _sk(labels, wrong, 3)
        _assert_same(_ours(labels, wrong, 3), ref)

    def test_weights_with_zeros(self):
        labels = np.array([0, 1, 2, 1, 2, 0, 1], np.int32)
        predictions = np.array([0, 2, 2, 1, 0, 0, 0], np.int32)
        weights = np.array([1, 0, 1, 1, 0, 1, 0], np.float32)
        ref = _sk(labels, predictions, 3, weights)
        _assert_same(_ours(labels, predictions, 3, jnp.asarray(weights)), ref)

    def test_fractional_weights(self):
        labels, predictions, _ = _random_case(11, 50, 4, False)
        weights = np.random.default_rng(3).uniform(0.1, 2.0, 50).astype(np.float32)
        ref = _sk(labels, predictions, 4, weights)
        _assert_same(_ours(labels, predictions, 4, jnp.asarray(weights)), ref)

    def test_padding_row_of_an_unseen_class_does_not_count(self):
        # class 2 appears only in a padding row (weight 0): not present, so not in the mean
        labels = np.array([0, 1, 2], np.int32)
        predictions = np.array([0, 1, 2], np.int32)
        weights = jnp.array([1.0, 1.0, 0.0])
        assert float(_ours(labels, predictions, 3, weights)["macro_f1"]) == 1.0


class TestEdgeCases:
    def test_empty_all_weights_zero(self):
        labels = jnp.array([0, 1, 1], jnp.int32)
        cm = confusion_matrix(labels, labels, 2, weights=jnp.zeros(3))
        np.testing.assert_array_equal(np.asarray(cm), np.zeros((2, 2)))
        # scikit-learn refuses empty input; jaxnn defines every metric of it as 0
        assert float(accuracy(cm)) == 0.0
        assert float(macro_f1(cm)) == 0.0
        for value in precision_recall_f1(cm):
            np.testing.assert_array_equal(np.asarray(value), np.zeros(2))

    def test_zero_length_batch(self):
        empty = jnp.zeros((0,), jnp.int32)
        cm = confusion_matrix(empty, empty, 3)
        assert cm.shape == (3, 3) and int(cm.sum()) == 0
        assert float(accuracy(cm)) == 0.0 and float(macro_f1(cm)) == 0.0

    def test_dtypes(self):
        labels = jnp.array([0, 1], jnp.int32)
        assert confusion_matrix(labels, labels, 2).dtype == jnp.int32
        assert confusion_matrix(labels, labels, 2, weights=jnp.ones(2)).dtype == jnp.float32
        assert confusion_matrix(labels, labels, 2, weights=jnp.ones(2, bool)).dtype == jnp.float32
        assert accuracy(confusion_matrix(labels, labels, 2)).dtype == jnp.float32

    def test_out_of_range_ids_are_dropped_not_wrapped(self):
        labels = jnp.array([0, -1, 1, 2, 1], jnp.int32)
        predictions = jnp.array([0, 1, -1, 1, 5], jnp.int32)
        cm = confusion_matrix(labels, predictions, 2)
        np.testing.assert_array_equal(np.asarray(cm), [[1, 0], [0, 0]])

    def test_any_leading_shape(self):
        labels, predictions, _ = _random_case(5, 24, 3, False)
        flat = confusion_matrix(labels, predictions, 3)
        grid = confusion_matrix(labels.reshape(4, 6), predictions.reshape(4, 6), 3)
        np.testing.assert_array_equal(np.asarray(grid), np.asarray(flat))
        np.testing.assert_array_equal(
            np.asarray(flat), skm.confusion_matrix(labels, predictions, labels=[0, 1, 2])
        )

    def test_bad_arguments(self):
        labels = jnp.array([0, 1], jnp.int32)
        with pytest.raises(ValueError, match="num_classes"):
            confusion_matrix(labels, labels, 0)
        with pytest.raises(ValueError, match="num_classes"):
            confusion_matrix(labels, labels, 2.0)
        with pytest.raises(ValueError, match="same shape"):
            confusion_matrix(labels, jnp.array([0, 1, 1]), 2)
        with pytest.raises(ValueError, match="weights"):
            confusion_matrix(labels, labels, 2, weights=jnp.ones(3))
        with pytest.raises(TypeError, match="predictions"):
            confusion_matrix(labels, jnp.array([0.0, 1.0]), 2)
        with pytest.raises(ValueError, match=r"\[C, C\]"):
            accuracy(jnp.ones((2, 3)))
        with pytest.raises(ValueError, match=r"\[C, C\]"):
            macro_f1(jnp.ones(4))


class TestAccumulation:
    def test_sum_of_batch_matrices_is_matrix_of_union(self):
        labels, predictions, weights = _random_case(7, 120, 4, True)
        whole = confusion_matrix(labels, predictions, 4, weights=jnp.asarray(weights))

        @jax.jit
        def add_batch(total, lab, pred, w):
            return total + confusion_matrix(lab, pred, 4, weights=w)

        total = jnp.zeros((4, 4), jnp.float32)
        for start in range(0, 120, 32):  # the last batch is short
            sl = slice(start, start + 32)
            total = add_batch(total, labels[sl], predictions[sl], jnp.asarray(weights[sl]))
        np.testing.assert_array_equal(np.asarray(total), np.asarray(whole))
        _assert_same(_metrics(total), _sk(labels, predictions, 4, weights))

    def test_macro_f1_of_accumulated_matrix_is_not_mean_of_batch_f1s(self):
        # Two batches: the first has only class 0 (all right), the second has both classes
        # and gets class 1 wrong half the time.
        batches = [
            (np.array([0, 0, 0, 0], np.int32), np.array([0, 0, 0, 0], np.int32)),
            (np.array([0, 1, 1, 1], np.int32), np.array([1, 1, 0, 0], np.int32)),
        ]
        per_batch = [float(_ours(lab, pred, 2)["macro_f1"]) for lab, pred in batches]
        total = sum(_ours(lab, pred, 2)["cm"] for lab, pred in batches)
        labels = np.concatenate([b[0] for b in batches])
        predictions = np.concatenate([b[1] for b in batches])
        ref = skm.f1_score(labels, predictions, average="macro", zero_division=0)
        np.testing.assert_allclose(float(macro_f1(total)), ref, rtol=1e-6)
        # F1 per batch: [1.0, 0.2333] -> mean 0.6167; the whole set: 0.5833
        assert abs(np.mean(per_batch) - ref) > 0.03
