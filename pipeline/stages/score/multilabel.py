"""VOC2007's multi-label mAPs (pure functions): the paper's 11-point AP and clip_benchmark's plain AP, each image
ranked as its reference ranks it, with bootstrap weights."""
from __future__ import annotations

import numpy as np

from pipeline.stages.score import ties
from pipeline.stages.score.metrics import ABSENT, DIFFICULT, PRESENT

# The recall levels of the 11-point AP as the Python ports of the devkit write them (py-faster-rcnn's voc_eval.py,
# `np.arange(0., 1.1, 0.1)`: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001): a recall of exactly
# 3/10 does not reach the fourth level. MATLAB's `0:0.1:1` in VOCevalcls.m may hold 0.6 and 0.7 exactly (its colon
# fills the upper half from the end); the two differ only where a recall equals 3/5 or 7/10 exactly.
ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)


def ranked(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties in index order (a stable sort, as MATLAB's `sort` in the devkit)."""
    return np.argsort(-scores, kind="stable")


def _ranked_counts(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The flags in rank order (`order`, or `ranked`'s), and how often each ranked image counts: per row of
    `weights` (a bootstrap resample's draws of each image), or one row of ones."""
    order = ranked(scores) if order is None else order
    drawn = np.ones((1, len(scores))) if weights is None else np.atleast_2d(weights)[:, order].astype(np.float64)
    return truth[order], drawn


def eleven_point_ap(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """One class's 11-point interpolated AP, VOC2007's (devkit VOCevalcls.m; py-faster-rcnn's voc_eval.py with
    use_07_metric): images ranked by score, difficult ones left out, precision and recall at each rank; the mean
    over recall levels t = 0, 0.1, ..., 1 of the highest precision at a recall of at least t (0 if never reached).
    One AP per row of `weights`. Only the points at positives are needed: a negative's point has its preceding
    positive's recall and less precision, and so has every copy of an image but its last. NaN without positives."""
    flags, drawn = _ranked_counts(scores, truth, weights)
    at = np.flatnonzero(flags == PRESENT)
    counted = np.cumsum(drawn * (flags != DIFFICULT), axis=1)[:, at]  # images ranked so far, difficult ones out
    tp = np.cumsum(drawn[:, at], axis=1)
    positives = tp[:, -1:] if len(at) else np.zeros((len(drawn), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / positives
        precision = np.where(counted > 0, tp / np.maximum(counted, 1e-300), 0.0)
    best_from = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the highest precision at or after
    rows = np.arange(len(drawn))
    ap = np.zeros(len(drawn))
    for level in ELEVEN_POINTS:
        first = (recall < level).sum(axis=1)  # recall never falls along the ranking
        reached = first < len(at)
        ap += np.where(reached, best_from[rows, np.minimum(first, max(len(at) - 1, 0))] if len(at) else 0.0, 0.0)
    return np.where(positives[:, 0] > 0, ap / len(ELEVEN_POINTS), np.nan)


def clip_benchmark_ap(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """One class's plain (non-interpolated) AP as clip_benchmark computes it (metrics/zeroshot_classification.py,
    `average_precision_per_class`): every image ranked, the class present wherever VOC lists an object of it,
    difficult or not (its voc2007.py reads every box); the sum of the precision at each positive's rank over
    max(positives, 1). One AP per row of `weights`, the copies of an image ranked next to each other. Images are
    ranked by its own call, `torch.sort(scores, 0, True)` (l.155; `ties.sorted_descending`), which orders equal
    scores its own way."""
    flags, drawn = _ranked_counts(scores, truth, weights, ties.sorted_descending(scores))
    at = np.flatnonzero(flags != ABSENT)
    seen_before = (np.cumsum(drawn, axis=1) - drawn)[:, at]
    copies = drawn[:, at]
    hits_before = np.cumsum(copies, axis=1) - copies
    total = np.zeros(len(drawn))
    for copy in range(1, int(copies.max(initial=0)) + 1):
        total += np.where(copies >= copy, (hits_before + copy) / (seen_before + copy), 0.0).sum(axis=1)
    return total / np.maximum(copies.sum(axis=1), 1)


def clip_benchmark_map(scores: np.ndarray, truth: np.ndarray) -> float:
    """clip_benchmark's mean_average_precision itself: its `average_precision_per_class` on the logits, averaged as
    its `evaluate` does (zeroshot_classification.py:124-162, 216-220), in its float32 and with its sort's order of
    equal scores; `clip_benchmark_ap` resamples the same ranking."""
    import torch
    from clip_benchmark.metrics.zeroshot_classification import average_precision_per_class

    targets = torch.from_numpy((np.asarray(truth) != ABSENT).astype(np.int64))
    return average_precision_per_class(torch.from_numpy(np.array(scores)), targets).mean().item()


def multilabel_metrics(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The paper's mAP (the mean over classes of 11-point AP, difficult images left out) and clip_benchmark's
    (plain AP, difficult counted as present; without `weights`, its own number); one value per row of `weights`."""
    classes = range(scores.shape[1])
    elevens = np.mean([eleven_point_ap(scores[:, k], truth[:, k], weights) for k in classes], axis=0)
    if weights is None:
        return {"map_11point": elevens, "mean_average_precision": np.array([clip_benchmark_map(scores, truth)])}
    return {"map_11point": elevens, "mean_average_precision": np.mean([clip_benchmark_ap(scores[:, k], truth[:, k], weights)
                                                                       for k in classes], axis=0)}
