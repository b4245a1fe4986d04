"""Metrics: pure functions over confusion matrices, jit-safe.

    cm = confusion_matrix(labels, predictions, num_classes, weights)   [C, C], rows = true class
    accuracy(cm), macro_f1(cm), precision_recall_f1(cm) -> (precision [C], recall [C], f1 [C])

Evaluation adds the batch matrices on the device and computes the metrics once, at the end.
"""

from jaxnn.metrics.classification import (
    accuracy,
    confusion_matrix,
    macro_f1,
    precision_recall_f1,
)

__all__ = ["accuracy", "confusion_matrix", "macro_f1", "precision_recall_f1"]
