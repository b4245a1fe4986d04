"""Confusion-matrix metrics: accuracy, per-class precision, recall and F1, and macro F1.

Everything is computed from one confusion matrix M [C, C] (C classes), rows = true class,
columns = predicted class, M[i, j] = total weight of the examples of class i predicted as j:

    tp_c = M[c, c]
    fp_c = sum_i M[i, c] - tp_c          predicted c, truly something else   (column c)
    fn_c = sum_j M[c, j] - tp_c          truly c, predicted something else   (row c)

    accuracy    = sum_c tp_c / sum_ij M[i, j]           "correct predictions / total predictions"
    precision_c = tp_c / (tp_c + fp_c)
    recall_c    = tp_c / (tp_c + fn_c)
    F1_c        = 2 precision_c recall_c / (precision_c + recall_c)
                = 2 tp_c / (2 tp_c + fp_c + fn_c)             (the same where defined)
    macro F1    = (1 / |P|) sum_{c in P} F1_c,    P = classes present in the labels or predictions

Macro F1 weighs every class equally, so a rare class counts as much as a frequent one (it is
"less biased by class imbalance" than accuracy). A ratio whose denominator is 0 is defined as 0
(scikit-learn's ``zero_division=0``): a class never predicted has precision 0, a class absent
from the labels has recall 0. Classes that appear in neither the labels nor the predictions are
left out of the macro mean, as scikit-learn's ``f1_score(average="macro")`` does when its
``labels`` argument is not given; an empty matrix (total weight 0) has accuracy 0 and macro F1 0.

Why a confusion matrix: it is a sum over examples, so an evaluation adds the matrices of its
batches on the device and computes the metrics once at the end. Macro F1 is not additive: the
mean of per-batch macro F1s is a different (and batch-size dependent) number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["accuracy", "confusion_matrix", "macro_f1", "precision_recall_f1"]


def _check_int(name: str, array: jax.Array) -> None:
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {array.dtype}")


def confusion_matrix(
    labels: jax.Array,
    predictions: jax.Array,
    num_classes: int,
    weights: jax.Array | None = None,
) -> jax.Array:
    """The confusion matrix M [C, C]: M[i, j] = sum of weights of examples with label i,
    prediction j (rows = true class, columns = predicted class).

    Args:
      labels: int [...] true class ids (any shape, usually [B]).
      predictions: int [...] predicted class ids, same shape (e.g. ``argmax(logits, -1)``).
      num_classes: C >= 1, a Python int (static under jit).
      weights: optional [...] per-example weights, same shape; 0 drops an example (a padding
        row of a batch). Fractional weights are allowed.

    Returns:
      int32 [C, C] counts when ``weights`` is None, else float [C, C] (float32, or the weights'
      dtype if that is a wider float). Matrices of several batches add up to the matrix of
      their union, so an evaluation accumulates ``cm_total += confusion_matrix(...)`` on the
      device and computes the metrics once at the end.

    Ids outside [0, C) (including negative ones) contribute nothing; no error can be raised
    on values under jit. Shapes and dtypes are checked at trace time.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a Python int >= 1, got {num_classes!r}")
    labels = jnp.asarray(labels)
    predictions = jnp.asarray(predictions)
    _check_int("labels", labels)
    _check_int("predictions", predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must have the same shape, got labels {labels.shape} "
            f"and predictions {predictions.shape}"
        )
    if weights is None:
        dtype = jnp.int32
        weights = jnp.ones(labels.shape, dtype)
    else:
        weights = jnp.asarray(weights)
        if weights.shape != labels.shape:
            raise ValueError(
                f"weights must have the shape of labels {labels.shape}, got {weights.shape}"
            )
        if jnp.issubdtype(weights.dtype, jnp.floating):
            dtype = jnp.promote_types(weights.dtype, jnp.float32)
        else:
            dtype = jnp.float32
        weights = weights.astype(dtype)
    labels = labels.reshape(-1).astype(jnp.int32)
    predictions = predictions.reshape(-1).astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0)
    valid &= predictions < num_classes
    weights = jnp.where(valid, weights.reshape(-1), jnp.zeros((), dtype))
    # Out-of-range ids are sent to row C (dropped by the scatter), never wrapped around.
    rows = jnp.where(valid, labels, num_classes)
    cols = jnp.where(valid, predictions, 0)
    cm = jnp.zeros((num_classes, num_classes), dtype)
    return cm.at[rows, cols].add(weights, mode="drop")


def _check_cm(cm: jax.Array) -> jax.Array:
    cm = jnp.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"cm must be a square confusion matrix [C, C], got shape {cm.shape}")
    return cm


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, 0 where the denominator is 0 (zero_division=0)."""
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, numerator / safe, 0)


def _float(cm: jax.Array) -> jax.Array:
    if jnp.issubdtype(cm.dtype, jnp.floating):
        return cm.astype(jnp.promote_types(cm.dtype, jnp.float32))
    return cm.astype(jnp.float32)


def accuracy(cm: jax.Array) -> jax.Array:
    """Accuracy = trace(M) / sum(M): correct predictions over all predictions.

    Args:
      cm: [C, C] confusion matrix (`confusion_matrix`, possibly summed over batches).

    Returns:
      float32 scalar; 0 for an empty matrix (total weight 0).
    """
    cm = _float(_check_cm(cm))
    return _ratio(jnp.trace(cm), jnp.sum(cm))


def precision_recall_f1(cm: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class precision, recall and F1 (see the module docstring for the formulas).

    precision_c = tp_c / (tp_c + fp_c), recall_c = tp_c / (tp_c + fn_c),
    F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c); each 0 where its denominator is 0.

    Args:
      cm: [C, C] confusion matrix, rows = true class, columns = predicted class.

    Returns:
      (precision, recall, f1), each float32 [C]. Equal to scikit-learn's
      ``precision_recall_fscore_support(..., labels=range(C), zero_division=0)[:3]``.
    """
    cm = _float(_check_cm(cm))
    tp = jnp.diagonal(cm)
    predicted = jnp.sum(cm, axis=0)  # tp + fp
    actual = jnp.sum(cm, axis=1)  # tp + fn
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)  # 2tp + fp + fn
    return precision, recall, f1


def macro_f1(cm: jax.Array) -> jax.Array:
    """Macro F1 = unweighted mean of F1_c over the classes present in labels or predictions.

    A class c is present when row c or column c of ``cm`` has non-zero weight; absent classes
    are left out of the mean (scikit-learn's ``f1_score(average="macro", zero_division=0)``
    without ``labels``). A class that is present but never predicted correctly counts as 0.
    A class seen only in zero-weight (padding) rows is absent here; scikit-learn, given those
    rows with ``sample_weight`` 0, would count it as present with F1 0.

    Args:
      cm: [C, C] confusion matrix, accumulated over the whole evaluation set.

    Returns:
      float32 scalar; 0 for an empty matrix.
    """
    cm = _float(_check_cm(cm))
    _, _, f1 = precision_recall_f1(cm)
    present = (jnp.sum(cm, axis=0) + jnp.sum(cm, axis=1)) > 0
    return _ratio(jnp.sum(jnp.where(present, f1, 0)), jnp.sum(present).astype(f1.dtype))
