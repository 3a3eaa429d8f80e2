"""Pure metric functions: arrays in, numbers out, as clip_benchmark and DataComp define them."""
from __future__ import annotations

import math

import numpy as np

from pipeline.stages.score import ties


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per sample, whether the label is among `torch.topk(logits, k)`'s indices (`ties.top_k`: the call clip_benchmark
    and DataComp make, so a tie is decided as there)."""
    return (ties.top_k(logits, k) == np.asarray(labels)[:, None]).any(axis=1)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits (`top_k_correct`); NaN with fewer than k
    classes."""
    if logits.shape[1] < k:
        return math.nan
    return share(top_k_correct(logits, labels, k))


def share(correct: np.ndarray) -> float:
    """The fraction of outcomes that count, as clip_benchmark's `accuracy` divides: `float(count) / n`
    (zeroshot_classification.py:82); NaN without outcomes."""
    return float(np.count_nonzero(correct)) / len(correct) if len(correct) else math.nan


def accuracy_outcomes(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample, top-1 and top-5 as clip_benchmark's `evaluate` asks its `accuracy` for them
    (zeroshot_classification.py:227-231): one `output.topk(max(topk), 1, True, True)` (l.79), topk = (1, 5) from
    five classes on and (1,) below. `correct1` is that call's first column, so where the label ties for the top,
    acc1 is what torch's heap or introselect put first (`ties.top_k`), not always argmax's choice; `correct5` is
    whether the label is among its five."""
    k = 5 if logits.shape[1] >= 5 else 1
    hits = ties.top_k(logits, k) == np.asarray(labels)[:, None]
    return {"correct1": hits[:, 0], **({"correct5": hits.any(axis=1)} if k == 5 else {})}


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy: the mean over classes present in `labels` of per-class recall."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, predictions))


def chance_adjusted_accuracy(acc1: float, num_classes: int) -> float:
    """The blog's acc1_adjusted: acc1 - 1/N, so chance is 0."""
    return acc1 - 1.0 / num_classes


CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall", "acc1_adjusted")


def classification_values(outcomes: dict[str, np.ndarray], n_classes: int) -> dict[str, float]:
    """Every metric of single-label zero-shot classification from the per-sample outcomes (`accuracy_outcomes`, with
    `labels` and the argmax `predictions`): acc1 and acc5 from torch.topk's verdicts, mean per-class recall from
    argmax's predictions (clip_benchmark's `pred = logits.argmax(axis=1)`, zeroshot_classification.py:225, 232)."""
    acc1 = share(outcomes["correct1"])
    return {
        "acc1": acc1,
        "acc5": share(outcomes["correct5"]) if "correct5" in outcomes else math.nan,
        "mean_per_class_recall": mean_per_class_recall(outcomes["predictions"], outcomes["labels"]),
        "acc1_adjusted": chance_adjusted_accuracy(acc1, n_classes),
    }


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric that applies to single-label zero-shot classification, from the logits."""
    outcomes = {"labels": labels, "predictions": logits.argmax(axis=1), **accuracy_outcomes(logits, labels)}
    return classification_values(outcomes, logits.shape[1])


# -- multi-label classification (Pascal VOC 2007; the APs are in `multilabel.py`) -----------------------------
# The VOC devkit's classification ground truth of an (image, class): present, absent, or "difficult" (the image
# holds only objects of the class marked difficult), which the devkit's evaluation leaves out of that class.
PRESENT, ABSENT, DIFFICULT = 1, -1, 0
MULTILABEL_METRICS = ("map_11point", "mean_average_precision")


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


def float32_share(flags: np.ndarray) -> float:
    """The share of true flags as clip_benchmark reports it: `.float().mean().item()`, a float32 mean
    (zeroshot_retrieval.py:82-83, image_caption_selection.py:202-204)."""
    import torch

    return torch.from_numpy(np.asarray(flags, dtype=bool)).float().mean().item()


def selection_values(outcomes: dict[str, np.ndarray]) -> dict[str, float]:
    """Each selection metric's share of instances: clip_benchmark's three as its float32 mean, Winoground's three
    (which clip_benchmark does not compute) as a plain mean."""
    return {name: float32_share(outcomes[name]) if name in ("acc", "text_acc", "image_acc")
            else float(np.mean(outcomes[name])) for name in SELECTION_METRICS}


# -- WILDS and fairness ------------------------------------------------------------------------------
def group_correct(outcomes: dict[str, np.ndarray], k: int) -> np.ndarray | None:
    """Per sample, what DataComp's worst-group metric counts: for k = 1 its argmax prediction is right (wds_eval.py's
    `pred = logits.argmax(axis=1)`, scored by WILDS' Accuracy: FMoW, GeoDE, Camelyon17), for k > 1 the label is
    among `torch.topk(logits, k, dim=1)` (Dollar Street's `return_topk=5` and TopKAccuracy, fairness_eval.py), the
    call whose top 5 `accuracy_outcomes` keeps as `correct5`; None with fewer than k classes."""
    return outcomes["predictions"] == outcomes["labels"] if k == 1 else outcomes.get(f"correct{k}")


def group_accuracies(correct: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """Accuracy of each group that has samples (WILDS skips empty groups)."""
    return {int(g): float(correct[groups == g].mean()) for g in np.unique(groups)}


def worst_group(correct: np.ndarray | None, groups: np.ndarray) -> float:
    """The lowest accuracy over non-empty groups (`group_correct`'s outcomes): WILDS' `acc_wg`, FMoW's
    `acc_worst_region` ("Other" included, as DataComp computes it), Dollar Street's `acc_top5_wg`."""
    per_group = {} if correct is None else group_accuracies(correct, groups)
    return min(per_group.values()) if per_group else math.nan


def worst_group_accuracy(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 1) -> float:
    """`worst_group` from the logits."""
    outcomes = {"labels": labels, "predictions": logits.argmax(axis=1)}
    if 1 < k <= logits.shape[1]:
        outcomes[f"correct{k}"] = top_k_correct(logits, labels, k)
    return worst_group(group_correct(outcomes, k), groups)


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
RECALL_KS = (1, 5, 10)  # DataComp's recall_k_list


def retrieval_outcomes(scores: np.ndarray, caption_image: np.ndarray,
                       ks: tuple[int, ...] = RECALL_KS) -> dict[str, np.ndarray]:
    """Per query, from the (captions, images) similarities, what clip_benchmark's `recall_at_k(...) > 0` counts
    (zeroshot_retrieval.py:82-83, 95-116): `image_found` (captions, len(ks)), whether a caption's own image is
    among `torch.topk(its row, k)`; `text_found` (images, len(ks)), whether one of an image's captions is among the
    topk of its row of `scores.T` (its positive pairs, l.69-70, are exactly its own captions). The choice among tied
    scores is torch's own (`ties.top_k`), the candidates in the dataset's order. With the ranks and their bounds over
    the orders of their ties (`ties.retrieval_ranks`), for the mean ranks and the ties count."""
    owners = np.asarray(caption_image)
    images = np.arange(scores.shape[1])[:, None]
    image_found = np.stack([(ties.top_k(scores, k) == owners[:, None]).any(axis=1) for k in ks], axis=1)
    text_found = np.stack([(owners[ties.top_k(scores.T, k)] == images).any(axis=1) for k in ks], axis=1)
    return {"image_found": image_found, "text_found": text_found, **ties.retrieval_ranks(scores, owners)}


def retrieval_metrics(image_found: np.ndarray, text_found: np.ndarray, image_rank: np.ndarray, text_rank: np.ndarray,
                      ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """clip_benchmark's recall@k in both directions (its float32 share of the queries found, column j of the
    `retrieval_outcomes` for ks[j]), DataComp's mean_recall@1 (retr_eval.py), and the mean ranks.

    image_retrieval_recall@k: captions whose own image is in the top k images; text_retrieval_recall@k:
    images with at least one of their captions in the top k captions.
    """
    values: dict[str, float] = {}
    for column, k in enumerate(ks):
        values[f"image_retrieval_recall@{k}"] = float32_share(image_found[:, column])
        values[f"text_retrieval_recall@{k}"] = float32_share(text_found[:, column])
    values["mean_recall@1"] = 0.5 * (values["text_retrieval_recall@1"] + values["image_retrieval_recall@1"])
    values["image_retrieval_mean_rank"] = float(np.mean(image_rank))
    values["text_retrieval_mean_rank"] = float(np.mean(text_rank))
    return values


# -- WinoGAViL ----------------------------------------------------------------------------------------
def winogavil_predictions(similarities: np.ndarray, n_associations: int) -> np.ndarray:
    """Choose the n candidates most similar to the cue with DataComp's own call (wino_eval.py,
    `np.argsort(image_logits)[-n_assoc:]`), whose order of equal similarities numpy's argsort decides."""
    return np.isin(np.arange(len(similarities)), np.argsort(similarities)[-n_associations:])


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
RETRIEVAL_METRICS = (*(f"{side}_retrieval_recall@{k}" for k in RECALL_KS for side in ("image", "text")),
                     "mean_recall@1", "image_retrieval_mean_rank", "text_retrieval_mean_rank")
WINOGAVIL_METRICS = tuple(winogavil_breakdown(np.ones(1), np.array([10])))
