"""Bootstrap uncertainty for every score, from per-sample outcomes (pure functions).

Each result gets `RESAMPLES` bootstrap replicates of each metric: test samples for the classification metrics
(no stratification), samples within each group for worst-group metrics, images with all their captions for
retrieval, games for WinoGAViL, images with all their classes for VOC2007's mAP, images with all their entries for
SugarCrepe and examples for Winoground. The draws depend only on the dataset (its own seed, `dataset_seed`, and its
structure: size, groups, caption owners), never on the model, and every per-sample array is stored in the dataset's
own order (`embed.images.encode_batches`), never in the order a loader delivered it, so replicate b of two results
on the same test set saw the same resampled samples, wherever and however each was computed: their difference is a
paired bootstrap replicate. Each
dataset has its own seed, so averages over datasets combine independent resamples, replicate b of each. The 95 %
interval is the percentile interval. The bootstrap of a minimum (worst-group accuracy) is biased downwards: its
interval can lie below the value.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np


RESAMPLES = 1000
SEED = 0  # with the dataset's name (`dataset_seed`), so datasets are resampled independently of each other
LEVEL = 0.95
CI_LOW, CI_HIGH = "ci_low/", "ci_high/"  # metric-name prefixes of an interval's bounds
N_METRIC = "n"                           # the number of resampled units (samples, images, games)


def dataset_seed(dataset: str, seed: int = SEED) -> list[int]:
    """The resampling seed of one dataset: the same for every model and prompt set (so results on it pair), and
    different across datasets (so averages over datasets combine independent resamples)."""
    return [seed, zlib.crc32(dataset.encode())]


DATASET_ORDER = b"samples in the dataset's order;"  # what every digest since issue 35 vouches for


def structure_digest(arrays: Iterable[np.ndarray]) -> str:
    """What pairing needs two results to share: the test samples in the same order, told by their labels, groups,
    caption owners or game sizes. Samples are stored in the dataset's order, so results on the same data agree
    whatever batch_size, num_workers or device computed them. Results scored before that order was fixed (score
    version 3 and older) may hold another order behind the same labels or owners (every image with five captions
    gives the same owners in any order), so the digest names the order it vouches for and theirs never match."""
    digest = hashlib.sha256(DATASET_ORDER)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates; NaN where the metric is undefined."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if replicates.size == 0 or np.isnan(replicates).any():
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


BLOCK_ELEMENTS = 1 << 22  # draws made at once: 32 MB of indices, whatever the dataset's size


def draw_blocks(n: int, resamples: int = RESAMPLES, seed: int | Sequence[int] = SEED) -> Iterator[np.ndarray]:
    """The `resamples` index vectors (n draws with replacement from range(n) each) in blocks of rows. numpy's
    generator yields the same stream whether drawn row by row or a block at a time, so the blocks only bound
    memory (ImageNet's 50,000 x 1,000 at once would be 400 MB)."""
    rng = np.random.default_rng(seed)
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, (min(rows, resamples - start), n))


def draws(n: int, resamples: int = RESAMPLES, seed: int | Sequence[int] = SEED) -> Iterator[np.ndarray]:
    """The same index vectors as `draw_blocks`, one at a time."""
    for block in draw_blocks(n, resamples, seed):
        yield from block


def grouped_draws(groups: np.ndarray, resamples: int = RESAMPLES, seed: int | Sequence[int] = SEED) -> Iterator[list[np.ndarray]]:
    """Per replicate, each group's members resampled within the group (groups in sorted order)."""
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield [m[rng.integers(0, len(m), len(m))] for m in members]


def balanced_recall(labels: np.ndarray, correct: np.ndarray, n_classes: int) -> np.ndarray:
    """Per row of `labels`/`correct` (replicates x samples), the mean over the classes present of per-class recall:
    scikit-learn's balanced accuracy, with one bincount for a whole block of replicates."""
    labels, correct = np.atleast_2d(labels), np.atleast_2d(correct)
    offset = labels + n_classes * np.arange(len(labels))[:, None]
    size = len(labels) * n_classes
    totals = np.bincount(offset.ravel(), minlength=size).reshape(len(labels), n_classes)
    hits = np.bincount(offset.ravel(), weights=correct.ravel().astype(np.float64), minlength=size).reshape(totals.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)
    return np.nanmean(recall, axis=1)


def collect(indices: Iterable[np.ndarray], compute: Callable[[np.ndarray], Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Every metric `compute` gives on each resample, as one replicate array per metric."""
    values: dict[str, list[float]] = {}
    for idx in indices:
        for name, value in compute(idx).items():
            values.setdefault(name, []).append(value)
    return {name: np.array(v) for name, v in values.items()}


# -- paired comparisons ----------------------------------------------------------------------------------
def paired(candidate: np.ndarray, baseline: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(interval low, high, two-sided p) of candidate − baseline from replicates drawn on the same samples.
    p is twice the smaller share of replicate differences on either side of zero (at most 1, at least one over the
    number of replicates): a result against itself gives p = 1."""
    difference = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    low, high = interval(difference, level)
    if np.isnan(difference).any():
        return low, high, math.nan
    p = min(1.0, 2 * min(float((difference <= 0).mean()), float((difference >= 0).mean())))
    return low, high, max(p, 1 / len(difference))  # 1,000 replicates cannot tell p below 0.001


def mean_replicates(per_dataset: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Replicates of the (weighted) mean over datasets: datasets are resampled independently, so replicate b of
    the mean combines replicate b of each."""
    stacked = np.stack(per_dataset)
    if weights is None:
        return stacked.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)[:, None]
    return (stacked * w).sum(axis=0) / w.sum()
