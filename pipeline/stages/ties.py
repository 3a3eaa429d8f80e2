"""Ties, by one rule: equal inputs are computed once, so they get bit-equal similarities wherever they sit, and
among equal scores the earlier index ranks first (pure functions, see docs/precision.md#ties).

The rule is the one `argmax` documents (torch's and numpy's: the first maximal index), which clip_benchmark and
DataComp use for predictions, per-class recall and image-caption selection. Their top-k metrics (acc1 and acc5,
recall@k) go through `torch.topk`, whose order of tied elements torch leaves unspecified: on CPU, with k = 1 and
n >= 64, a heap of one that only a strictly higher score replaces keeps the first maximum, as the rule does; for
larger k (a heap of k, from which either of two tied elements may be evicted) or smaller n (introselect) it may
keep either. Each outcome is therefore also given its best and worst rank over every order of its ties, and a score
counts the outcomes a tie decided (`TIES`): how far its numbers can be from those of any other tie order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

TIES = "ties"  # the metric every score logs: how many outcomes a tie decided (a count, never resampled)
CHUNK = 4096  # rows compared at once: (CHUNK, n) boolean matrices, whatever the number of rows


def distinct(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the first row holding each distinct value, in order; each row's index among those), or None when no two
    rows are equal. A product over distinct rows gives equal rows one computed number: a matrix product may round
    a row in a block's tail otherwise than the same row elsewhere."""
    import torch

    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    if count == len(rows):
        return None
    first = torch.full((count,), len(rows), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(rows)), "amin")
    kept = torch.sort(first).values
    position = torch.empty(count, dtype=torch.long)
    position[inverse[kept]] = torch.arange(count)
    return kept, position[inverse]


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `scores` (samples, classes), the rank of its label's score by the rule, and the best and worst
    rank it could have over every order of its ties: (rank, best, worst), 1-based."""
    rank, best, worst = (np.empty(len(labels), dtype=np.int64) for _ in range(3))
    columns = np.arange(scores.shape[1])
    for start in range(0, len(labels), CHUNK):
        block, own_index = scores[start:start + CHUNK], labels[start:start + CHUNK]
        own = block[np.arange(len(block)), own_index][:, None]
        higher = (block > own).sum(axis=1)
        equal = block == own
        before = (equal & (columns[None, :] < own_index[:, None])).sum(axis=1)
        rank[start:start + CHUNK] = 1 + higher + before
        best[start:start + CHUNK] = 1 + higher
        worst[start:start + CHUNK] = higher + equal.sum(axis=1)
    return rank, best, worst


def retrieval_ranks(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, np.ndarray]:
    """From the (captions, images) similarities: each caption's own image's rank among the images (`image_rank`),
    each image's best-ranked own caption's rank among the captions (`text_rank`), by the rule, with the best and
    worst of each over every order of its ties (`image_rank_bounds`, `text_rank_bounds`: (n, 2))."""
    n_captions, n_images = scores.shape
    index = np.arange(n_captions)
    own = scores[index, caption_image]
    image = label_ranks(scores, caption_image)
    # An image is found at the place of its highest-scored caption, the earliest of them where several tie.
    top = np.full(n_images, -np.inf, dtype=scores.dtype)
    np.maximum.at(top, caption_image, own)
    at_top = own == top[caption_image]
    first = np.full(n_images, n_captions)
    np.minimum.at(first, caption_image[at_top], index[at_top])
    own_at_top = np.bincount(caption_image[at_top], minlength=n_images)
    higher, before, equal = (np.zeros(n_images, dtype=np.int64) for _ in range(3))
    for start in range(0, n_captions, CHUNK):
        block = scores[start:start + CHUNK]
        higher += (block > top[None, :]).sum(axis=0)
        tied = block == top[None, :]
        before += (tied & (index[start:start + CHUNK, None] < first[None, :])).sum(axis=0)
        equal += tied.sum(axis=0)
    return {"image_rank": image[0], "text_rank": 1 + higher + before,
            "image_rank_bounds": np.stack(image[1:], axis=1),
            "text_rank_bounds": np.stack([1 + higher, higher + equal - own_at_top + 1], axis=1)}


def decided(best: np.ndarray, worst: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Per outcome, whether a tie decided it: whether it is within the top k for some k of `ks` in one order of
    its ties and not in another."""
    best, worst = np.asarray(best), np.asarray(worst)
    return np.any([(best <= k) & (worst > k) for k in ks], axis=0) if len(ks) else np.zeros(len(best), dtype=bool)


def selection_ties(scores: np.ndarray) -> np.ndarray:
    """Per instance of (N, images, captions) similarities, whether a tie decided it: some image's own caption, or
    some caption's own image, scores exactly as high as its best rival."""
    k = min(scores.shape[1], scores.shape[2])
    own = np.arange(k)
    diagonal = scores[:, own, own]
    rivals_text, rivals_image = scores[:, :k, :].astype(np.float64), scores[:, :, :k].astype(np.float64)
    rivals_text[:, own, own] = -np.inf
    rivals_image[:, own, own] = -np.inf
    return ((diagonal == rivals_text.max(axis=2)) | (diagonal == rivals_image.max(axis=1))).any(axis=1)


def ranking_ties(scores: np.ndarray, truth: np.ndarray) -> int:
    """Multi-label ranking (images ranked per class): the (image, class) scores equal to another image's score in
    the same class whose flag differs, so that their order moves an AP."""
    count = 0
    for k in range(scores.shape[1]):
        values, groups = np.unique(scores[:, k], return_inverse=True)
        if len(values) == len(groups):
            continue
        pairs = np.unique(np.stack([groups, truth[:, k]], axis=1), axis=0)  # each (score, flag) once
        mixed = np.bincount(pairs[:, 0], minlength=len(values)) > 1
        count += int(mixed[groups].sum())
    return count


def chosen_by_tie(similarities: np.ndarray, n_chosen: int) -> bool:
    """WinoGAViL: whether the n-th most similar candidate ties with the next one, so the choice fell on a tie."""
    if not 0 < n_chosen < len(similarities):
        return False
    ranked = np.sort(similarities)[::-1]
    return bool(ranked[n_chosen - 1] == ranked[n_chosen])
