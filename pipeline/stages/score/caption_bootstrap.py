"""Bootstrap replicates of the corpus-level caption metrics: images are resampled, each with its references, and
BLEU-1..4, CIDEr and ROUGE-L are recomputed on the resampled corpus from the tokenized captions (pure functions).

BLEU and CIDEr are not means of per-image scores: BLEU pools n-gram counts over the corpus, and CIDEr weighs
n-grams by their document frequency among the corpus's references. Running pycocoevalcap a thousand times would
take hours on COCO's 5,000 images, so both are re-derived here in matrix form from its own n-gram counting
(`precook`, `cook_refs`, `cook_test`): BLEU from per-image counts summed with each image's multiplicity, CIDEr from
sparse n-gram matrices and each replicate's document frequencies. On the original sample both equal pycocoevalcap's
scores (`tests/stages/test_caption_metrics.py`, also on resampled corpora written out image by image). ROUGE-L is a
mean of per-image scores. METEOR and SPICE get no interval: their scores come from Java, image by image, and
METEOR's corpus score is not the mean of those."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import sparse

from pipeline.stages.score.uncertainty import RESAMPLES, draw_blocks

ORDERS = 4
SIGMA = 6.0  # pycocoevalcap's CIDEr-D length penalty
TINY, SMALL = 1e-15, 1e-9  # pycocoevalcap's BLEU smoothing (bleu_scorer.py, compute_score)
BLEU_COLUMNS = 2 + 2 * ORDERS  # testlen, reflen, guess per order, correct per order


def bleu_statistics(truth: Mapping[int, Sequence[str]], made: Mapping[int, Sequence[str]]) -> np.ndarray:
    """(images, 10): each image's caption length, its closest reference length (the `closest` option
    pycocoevalcap's Bleu uses), and per order the n-grams guessed and those matching a reference (clipped)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for image in truth:
        comps = cook_test(made[image][0], cook_refs(truth[image], n=ORDERS), n=ORDERS)
        testlen = comps["testlen"]
        reflen = min((abs(length - testlen), length) for length in comps["reflen"])[1]
        rows.append([testlen, reflen, *comps["guess"], *comps["correct"]])
    return np.array(rows, dtype=np.float64)


def corpus_bleu(totals: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed statistics (..., 10) -> (..., 4): the geometric mean of the smoothed precisions up to
    each order, times the brevity penalty (pycocoevalcap's compute_score)."""
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2:2 + ORDERS], totals[..., 2 + ORDERS:]
    products = np.cumprod((correct + TINY) / (guess + SMALL), axis=-1)
    bleus = products ** (1.0 / np.arange(1, ORDERS + 1))
    ratio = (testlen + TINY) / (reflen + SMALL)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.where(ratio < 1, ratio, 1)), 1.0)
    return bleus * penalty[..., None]


@dataclass(frozen=True)
class CiderTerms:
    """The corpus as sparse n-gram matrices: which n-grams each image's references hold (`present`), and for every
    (image or reference, order) row the terms whose tf-idf weights' squares make CIDEr's dot products and norms."""

    present: sparse.csr_matrix      # (images, ngrams): 1 where any reference of the image holds the n-gram
    caption_norms: sparse.csr_matrix  # (images * 4, ngrams): tf^2 of the image's caption
    reference_norms: sparse.csr_matrix  # (pairs * 4, ngrams): tf^2 of the reference
    overlaps: sparse.csr_matrix     # (pairs * 4, ngrams): min(tf caption, tf reference) * tf reference
    pair_image: np.ndarray          # (pairs,): the image of each (image, reference) pair
    penalty: np.ndarray             # (pairs,): exp(-delta^2 / 2 sigma^2), delta the difference in bigram counts
    references: np.ndarray          # (images,): each image's number of references


def cider_terms(truth: Mapping[int, Sequence[str]], made: Mapping[int, Sequence[str]]) -> CiderTerms:
    from pycocoevalcap.cider.cider_scorer import precook

    columns: dict[tuple, int] = {}
    column = lambda ngram: columns.setdefault(ngram, len(columns))
    present, caption, reference, overlap = ([], [], []), ([], [], []), ([], [], []), ([], [], [])
    pair_image, penalty, counts = [], [], []

    def put(target, row, col, value):
        for part, item in zip(target, (row, col, value)):
            part.append(item)

    def bigrams(terms) -> int:  # pycocoevalcap's "length": the summed counts of order-2 n-grams
        return sum(count for ngram, count in terms.items() if len(ngram) == 2)

    for i, image in enumerate(truth):
        hyp = precook(made[image][0], ORDERS)
        for ngram, count in hyp.items():
            put(caption, i * ORDERS + len(ngram) - 1, column(ngram), float(count) ** 2)
        refs = [precook(text, ORDERS) for text in truth[image]]
        for ngram in {ngram for ref in refs for ngram in ref}:
            put(present, i, column(ngram), 1.0)
        for ref in refs:
            pair = len(pair_image)
            for ngram, count in ref.items():
                row = pair * ORDERS + len(ngram) - 1
                put(reference, row, column(ngram), float(count) ** 2)
                if ngram in hyp:
                    put(overlap, row, column(ngram), float(min(hyp[ngram], count) * count))
            pair_image.append(i)
            penalty.append(math.exp(-float(bigrams(hyp) - bigrams(ref)) ** 2 / (2 * SIGMA ** 2)))
        counts.append(len(refs))
    images, pairs, width = len(counts), len(pair_image), len(columns)
    matrix = lambda parts, rows: sparse.csr_matrix((parts[2], (parts[0], parts[1])), shape=(rows, width))
    return CiderTerms(matrix(present, images), matrix(caption, images * ORDERS), matrix(reference, pairs * ORDERS),
                      matrix(overlap, pairs * ORDERS), np.array(pair_image), np.array(penalty), np.array(counts))


def cider(terms: CiderTerms, multiplicity: np.ndarray) -> np.ndarray:
    """CIDEr of corpora that hold image i `multiplicity[r, i]` times, (replicates,): per n-gram the weight
    log(N) - log(max(1, df)) squared, with df the images (counted with multiplicity) whose references hold it, as
    pycocoevalcap's `compute_cider` computes it for such a corpus written out."""
    multiplicity = np.atleast_2d(multiplicity).astype(np.float64)
    size = multiplicity.sum(axis=1)                                     # N of each replicate
    frequency = np.asarray(terms.present.T @ multiplicity.T)            # (ngrams, replicates)
    weights = (np.log(size)[None, :] - np.log(np.maximum(1.0, frequency))) ** 2
    caption = np.asarray(terms.caption_norms @ weights)                 # (images * 4, replicates)
    reference = np.asarray(terms.reference_norms @ weights)             # (pairs * 4, replicates)
    dot = np.asarray(terms.overlaps @ weights)
    rows = (terms.pair_image[:, None] * ORDERS + np.arange(ORDERS)).ravel()
    norms = np.sqrt(caption[rows]) * np.sqrt(reference)
    similarity = np.where(norms != 0, dot / np.where(norms != 0, norms, 1), dot)
    per_pair = similarity.reshape(len(terms.pair_image), ORDERS, -1).mean(axis=1) * terms.penalty[:, None]
    per_image = np.zeros((len(terms.references), per_pair.shape[1]))
    np.add.at(per_image, terms.pair_image, per_pair)
    per_image *= 10.0 / terms.references[:, None]
    return (multiplicity * per_image.T).sum(axis=1) / size


def multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
    """A block of index draws (replicates, n) as how often each image was drawn, (replicates, n)."""
    offsets = indices + n * np.arange(len(indices))[:, None]
    return np.bincount(offsets.ravel(), minlength=len(indices) * n).reshape(len(indices), n).astype(np.float64)


def caption_replicates(truth: Mapping[int, Sequence[str]], made: Mapping[int, Sequence[str]],
                       rouge: np.ndarray, seed, resamples: int = RESAMPLES, block: int = 25) -> dict[str, np.ndarray]:
    """Replicates of BLEU-1..4, ROUGE-L (the mean of `rouge`, pycocoevalcap's per-image scores) and CIDEr, images
    resampled with replacement, drawn as every other metric's are (`uncertainty.draw_blocks`)."""
    n = len(truth)
    bleu = bleu_statistics(truth, made)
    terms = cider_terms(truth, made)
    out: dict[str, list[np.ndarray]] = {name: [] for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")}
    for indices in draw_blocks(n, resamples, seed):
        for start in range(0, len(indices), block):  # CIDEr's weights are (ngrams, block): bound the memory
            counts = multiplicities(indices[start:start + block], n)
            for order, values in enumerate(corpus_bleu(counts @ bleu).T, start=1):
                out[f"Bleu_{order}"].append(values)
            out["ROUGE_L"].append(counts @ rouge / n)
            out["CIDEr"].append(cider(terms, counts))
    return {name: np.concatenate(parts) for name, parts in out.items()}
