"""Pure metric functions: arrays in, numbers out, as clip_benchmark and DataComp define them."""
from __future__ import annotations

import math

import numpy as np

from pipeline.stages import ties


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits; NaN with fewer than k classes."""
    if logits.shape[1] < k:
        return math.nan
    return float(top_k_correct(logits, labels, k).mean())


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy: the mean over classes present in `labels` of per-class recall."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, predictions))


def chance_adjusted_accuracy(acc1: float, num_classes: int) -> float:
    """The blog's acc1_adjusted: acc1 - 1/N, so chance is 0."""
    return acc1 - 1.0 / num_classes


CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall", "acc1_adjusted")


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


# -- multi-label classification (Pascal VOC 2007) ---------------------------------------------------
# The VOC devkit's classification ground truth of an (image, class): present, absent, or "difficult" (the image
# holds only objects of the class marked difficult), which the devkit's evaluation leaves out of that class.
PRESENT, ABSENT, DIFFICULT = 1, -1, 0
# The recall levels of the 11-point AP as the Python ports of the devkit write them (py-faster-rcnn's voc_eval.py,
# `np.arange(0., 1.1, 0.1)`: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001): a recall of exactly
# 3/10 does not reach the fourth level. MATLAB's `0:0.1:1` in VOCevalcls.m may hold 0.6 and 0.7 exactly (its colon
# fills the upper half from the end); the two differ only where a recall equals 3/5 or 7/10 exactly.
ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)
MULTILABEL_METRICS = ("map_11point", "mean_average_precision")


def ranked(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties in index order (a stable sort, as MATLAB's `sort` in the devkit)."""
    return np.argsort(-scores, kind="stable")


def _ranked_counts(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The flags in rank order, and how often each ranked image counts: per row of `weights` (a bootstrap
    resample's draws of each image), or one row of ones."""
    order = ranked(scores)
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
    max(positives, 1). One AP per row of `weights`, the copies of an image ranked next to each other."""
    flags, drawn = _ranked_counts(scores, truth, weights)
    at = np.flatnonzero(flags != ABSENT)
    seen_before = (np.cumsum(drawn, axis=1) - drawn)[:, at]
    copies = drawn[:, at]
    hits_before = np.cumsum(copies, axis=1) - copies
    total = np.zeros(len(drawn))
    for copy in range(1, int(copies.max(initial=0)) + 1):
        total += np.where(copies >= copy, (hits_before + copy) / (seen_before + copy), 0.0).sum(axis=1)
    return total / np.maximum(copies.sum(axis=1), 1)


def multilabel_metrics(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The paper's mAP (the mean over classes of 11-point AP, difficult images left out) and clip_benchmark's
    (plain AP, difficult counted as present); one value per row of `weights`."""
    classes = range(scores.shape[1])
    return {"map_11point": np.mean([eleven_point_ap(scores[:, k], truth[:, k], weights) for k in classes], axis=0),
            "mean_average_precision": np.mean([clip_benchmark_ap(scores[:, k], truth[:, k], weights)
                                               for k in classes], axis=0)}


# -- image-caption selection (SugarCrepe, Winoground) ------------------------------------------------------
# Each instance has I images and C captions, image i belonging with caption i (i < min(I, C)): SugarCrepe's one image
# with its true and its negative caption, Winoground's two images and two captions.
SELECTION_METRICS = ("acc", "text_acc", "image_acc", "group_score", "text_score", "image_score")


def selection_outcomes(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per instance, from its (images, captions) similarities, (N, I, C): whether each metric counts it.

    clip_benchmark's (metrics/image_caption_selection.py, `evaluate`): text_acc when every image's most similar
    caption is its own, image_acc when every caption's most similar image is its own, acc when both; argmax breaks
    ties towards the first, so a tie counts for image 0 and caption 0 and against the others. The Winoground paper's
    text, image and group scores ask the same with strict inequalities, so a tie counts against every pair; the two
    agree wherever no two similarities are equal. SugarCrepe's accuracy is acc (its single image has no rival)."""
    n, images, captions = scores.shape
    k = min(images, captions)
    own = np.arange(k)
    text_acc = (scores.argmax(axis=2)[:, :k] == own).all(axis=1)
    image_acc = (scores.argmax(axis=1)[:, :k] == own).all(axis=1)
    diagonal = scores[:, own, own]  # (N, k): each pair's own similarity
    rivals_text, rivals_image = scores[:, :k, :].copy(), scores[:, :, :k].copy()
    rivals_text[:, own, own] = -np.inf  # an image's similarity to every other caption
    rivals_image[:, own, own] = -np.inf  # a caption's similarity to every other image
    text_score = (diagonal > rivals_text.max(axis=2)).all(axis=1)
    image_score = (diagonal > rivals_image.max(axis=1)).all(axis=1)
    return {"acc": text_acc & image_acc, "text_acc": text_acc, "image_acc": image_acc,
            "group_score": text_score & image_score, "text_score": text_score, "image_score": image_score}


# -- WILDS and fairness ------------------------------------------------------------------------------
def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-sample 0/1: is the label among the k highest logits, a tie going to the earlier class (`ties`), as
    `argmax` takes it for k = 1."""
    return ties.label_ranks(logits, labels)[0] <= k


def group_accuracies(correct: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """Accuracy of each group that has samples (WILDS skips empty groups)."""
    return {int(g): float(correct[groups == g].mean()) for g in np.unique(groups)}


def worst_group_accuracy(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 1) -> float:
    """The lowest top-k accuracy over non-empty groups: WILDS' `acc_wg`, FMoW's `acc_worst_region`
    ("Other" included, as DataComp computes it), Dollar Street's `acc_top5_wg`."""
    per_group = group_accuracies(top_k_correct(logits, labels, k), groups)
    return min(per_group.values()) if per_group else math.nan


def macro_f1_present(predictions: np.ndarray, labels: np.ndarray) -> float:
    """WILDS' `F1-macro_all`: macro F1 over the classes present in the ground truth."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", labels=np.unique(labels)))


def macro_recall_present(predictions: np.ndarray, labels: np.ndarray) -> float:
    """WILDS' `recall-macro_all`: macro recall over the classes present in the ground truth."""
    from sklearn.metrics import recall_score

    return float(recall_score(labels, predictions, average="macro", labels=np.unique(labels)))


EXTRA_METRICS = {"F1-macro_all": macro_f1_present, "recall-macro_all": macro_recall_present}


# -- retrieval ----------------------------------------------------------------------------------------
def retrieval_ranks(caption_features: np.ndarray, image_features: np.ndarray,
                    caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the right item (features L2-normalized): for each caption, the rank of its own image
    among all images; for each image, the rank of its best-ranked caption among all captions. Among equal scores
    the earlier item ranks first (`ties`)."""
    return retrieval_ranks_from_scores(caption_features @ image_features.T, caption_image)


def retrieval_ranks_from_scores(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`retrieval_ranks` from the (captions, images) similarity matrix; among equal scores the earlier image (or
    caption) ranks first (`ties.retrieval_ranks`, which also gives each rank's bounds over the orders of its ties)."""
    ranks = ties.retrieval_ranks(scores, caption_image)
    return ranks["image_rank"], ranks["text_rank"]


RECALL_KS = (1, 5, 10)  # DataComp's recall_k_list


def retrieval_metrics(image_rank: np.ndarray, text_rank: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """clip_benchmark's recall@k in both directions, DataComp's mean_recall@1, and the mean ranks.

    image_retrieval_recall@k: captions whose own image is in the top k images; text_retrieval_recall@k:
    images with at least one of their captions in the top k captions.
    """
    values: dict[str, float] = {}
    for k in ks:
        values[f"image_retrieval_recall@{k}"] = float((image_rank <= k).mean())
        values[f"text_retrieval_recall@{k}"] = float((text_rank <= k).mean())
    values["mean_recall@1"] = 0.5 * (values["image_retrieval_recall@1"] + values["text_retrieval_recall@1"])
    values["image_retrieval_mean_rank"] = float(image_rank.mean())
    values["text_retrieval_mean_rank"] = float(text_rank.mean())
    return values


# -- WinoGAViL ----------------------------------------------------------------------------------------
def winogavil_predictions(similarities: np.ndarray, n_associations: int) -> np.ndarray:
    """Choose the n candidates most similar to the cue."""
    chosen = np.zeros(len(similarities), dtype=bool)
    chosen[np.argsort(similarities)[len(similarities) - n_associations:]] = True
    return chosen


def winogavil_jaccards(truths: list[np.ndarray], predictions: list[np.ndarray]) -> np.ndarray:
    """The Jaccard index of each game's chosen candidates against its true associations."""
    from sklearn.metrics import jaccard_score

    return np.array([jaccard_score(t, p) for t, p in zip(truths, predictions)])


def winogavil_breakdown(scores: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    """DataComp's WinoGAViL averages of per-game Jaccard scores, overall and by number of candidates."""

    def mean(mask: np.ndarray) -> float:
        return float(scores[mask].mean()) if mask.any() else math.nan

    return {
        "avg_jaccard_score": mean(np.ones_like(sizes, dtype=bool)),
        **{f"jaccard_score_{n}": mean(sizes == n) for n in (5, 6, 10, 12)},
        "jaccard_score_5-6": mean(sizes <= 6),
        "jaccard_score_10-12": mean(sizes >= 10),
    }


def winogavil_scores(truths: list[np.ndarray], predictions: list[np.ndarray]) -> dict[str, float]:
    """DataComp's WinoGAViL breakdown: Jaccard index per game, averaged by number of candidates."""
    return winogavil_breakdown(winogavil_jaccards(truths, predictions), np.array([len(t) for t in truths]))


# The names each task's score carries (known before anything runs: configs are checked against them).
RETRIEVAL_METRICS = tuple(retrieval_metrics(np.ones(1), np.ones(1)))
WINOGAVIL_METRICS = tuple(winogavil_breakdown(np.ones(1), np.array([10])))
