"""Pure metric functions: arrays in, numbers out, as clip_benchmark and DataComp define them."""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import balanced_accuracy_score


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits; NaN with fewer than k classes."""
    if logits.shape[1] < k:
        return math.nan
    # argpartition is O(N*C) and, unlike a full sort, needs no tie-breaking beyond membership.
    top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top_k == labels[:, None]).any(axis=1).mean())


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy: the mean over classes present in `labels` of per-class recall."""
    return float(balanced_accuracy_score(labels, predictions))


def chance_adjusted_accuracy(acc1: float, num_classes: int) -> float:
    """The blog's acc1_adjusted: acc1 - 1/N, so chance is 0."""
    return acc1 - 1.0 / num_classes


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric that applies to single-label zero-shot classification."""
    predictions = logits.argmax(axis=1)
    acc1 = top_k_accuracy(logits, labels, 1)
    return {
        "acc1": acc1,
        "acc5": top_k_accuracy(logits, labels, 5),
        "mean_per_class_recall": mean_per_class_recall(predictions, labels),
        "acc1_adjusted": chance_adjusted_accuracy(acc1, logits.shape[1]),
    }
