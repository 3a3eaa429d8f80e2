"""Ties, decided as the references decide them: equal inputs are computed once, so they get bit-equal similarities
wherever they sit, and every choice among equal scores is made by the very call the reference makes, on CPU (pure
functions, see docs/precision.md#ties).

clip_benchmark 1.6.2 and DataComp take top-k accuracy and recall@k from `torch.topk` (`top_k`, the same call on the
same scores), predictions, per-class recall, WILDS' metrics and image-caption selection from `argmax` (the first
maximal index), clip_benchmark's VOC AP from `torch.sort` (`sorted_descending`), WinoGAViL from `np.argsort`.
`torch.topk` on CPU keeps a heap of k (libstdc++'s partial_sort) when there are at least 64 * k candidates and
introselect (nth_element) below: its choice among tied scores is a function of the row's values alone (not of the
batch, the strides or the dtype the values are held in), but not the earlier index in general. Each outcome is also
given its best and worst rank over every order of its ties, so a score counts the outcomes a tie decided (`TIES`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

TIES = "ties"  # the metric every score logs: how many outcomes a tie decided (a count, never resampled)
CHUNK = 4096  # rows compared at once: (CHUNK, n) boolean matrices, whatever the number of rows


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's `torch.topk(row, k, largest=True, sorted=True)` indices on CPU, (rows, min(k, columns)): the call
    clip_benchmark makes (zeroshot_classification.py:79, zeroshot_retrieval.py:105; DataComp's wds_eval.py, Dollar
    Street's top 5), so a tie falls where it falls there. torch decides each row from that row's values alone, so
    blocks of rows and any strides (`scores.T` for text retrieval) give the same choice; a float32 copy of bfloat16
    or float16 scores orders as they do. Where k exceeds the candidates clip_benchmark's topk refuses; here every
    candidate is taken."""
    import torch

    array = np.asarray(scores)
    if not array.flags.writeable or min(array.strides, default=0) < 0:  # torch takes neither
        array = array.copy()
    values = torch.from_numpy(array)
    k = min(k, values.shape[1])
    if len(values) == 0 or k == 0:
        return np.zeros((len(values), k), dtype=np.int64)
    return torch.cat([values[start:start + CHUNK].topk(k, 1, True, True)[1]
                      for start in range(0, len(values), CHUNK)]).numpy()


def sorted_descending(scores: np.ndarray) -> np.ndarray:
    """`torch.sort(scores, 0, True)` indices on CPU, as clip_benchmark's `average_precision_per_class` ranks one
    class's images (zeroshot_classification.py:155): not stable (std::sort, beyond a few elements), so among equal
    scores its order, not the index order, decides an AP."""
    import torch

    return torch.sort(torch.from_numpy(np.array(scores)), 0, True)[1].numpy()


def distinct(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the first row holding each distinct value, in order; each row's index among those), or None when no two
    rows are equal."""
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


def first_equal(rows: torch.Tensor) -> np.ndarray | None:
    """Per row, the index of the first row equal to it (its own where none is earlier), or None when no two rows
    are equal."""
    found = distinct(rows)
    return None if found is None else found[0][found[1]].numpy()


def first_within(ids: np.ndarray) -> np.ndarray:
    """Per row of `ids` (N, K), each position's first position holding the same id (an instance's equal captions)."""
    return (ids[:, :, None] == ids[:, None, :]).argmax(axis=2)


def equalized(values: np.ndarray, rows: np.ndarray | None = None, columns: np.ndarray | None = None) -> np.ndarray:
    """`values`, changed in place, with each row (column) that `first_equal` maps to an earlier one holding that
    one's numbers: torch's CPU matmul may round an equal row or column an ulp apart (where it falls in the kernel's
    blocks decides), and a tie would then be decided by rounding noise. Every other number stays the product's."""
    if rows is not None:
        moved = rows != np.arange(len(rows))
        values[moved] = values[rows[moved]]
    if columns is not None:
        moved = columns != np.arange(len(columns))
        values[:, moved] = values[:, columns[moved]]
    return values


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `scores` (samples, classes), the rank of its label's score with ties in index order (the earlier
    first), and the best and worst rank it could have over every order of its ties: (rank, best, worst), 1-based."""
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
    each image's best-ranked own caption's rank among the captions (`text_rank`), ties in index order (the mean
    ranks, which no reference computes), with the best and worst of each over every order of its ties
    (`image_rank_bounds`, `text_rank_bounds`: (n, 2)), which tell whether a tie decided a recall."""
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
