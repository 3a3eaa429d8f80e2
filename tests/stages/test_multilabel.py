"""VOC2007's multi-label mAPs (pipeline/stages/score/multilabel.py): the paper's 11-point AP and clip_benchmark's plain
AP, on worked examples and against clip_benchmark's own function."""
import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb

from pipeline.stages.score import metrics, multilabel

P, N, D = metrics.PRESENT, metrics.ABSENT, metrics.DIFFICULT


def ranked_problem(flags: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank the images in the order given."""
    return -np.arange(len(flags), dtype=np.float64), np.array(flags, dtype=np.int8)


def test_eleven_point_ap_hand_worked():
    # without the difficult image: P N P N P -> (precision, recall) 1 1/3, .5 1/3, 2/3 2/3, .5 2/3, .6 1;
    # levels 0-0.3 take 1, 0.4-0.6 take 2/3, 0.7-1 take 0.6
    scores, truth = ranked_problem([P, N, P, D, N, P])
    assert multilabel.eleven_point_ap(scores, truth)[0] == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11)
    # clip_benchmark counts the difficult image as present: precision 1, 2/3, 3/4, 4/6 at its positives
    assert multilabel.clip_benchmark_ap(scores, truth)[0] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)


def test_the_recall_levels_are_the_devkits_floating_point_ones():
    # recall 3/10 = 0.3 falls short of the level 0.30000000000000004 (3 * 0.1), so levels 0.3-1 all take the
    # precision after it, 10/11, rather than the first three positives' 1
    scores, truth = ranked_problem([P, P, P, N] + [P] * 7)
    assert multilabel.eleven_point_ap(scores, truth)[0] == pytest.approx((3 * 1 + 8 * 10 / 11) / 11)


def test_a_difficult_image_changes_the_papers_ap_nowhere_and_clip_benchmarks_where_it_ranks():
    scores, truth = ranked_problem([P, N, P, N, P])
    with_difficult = np.insert(truth, 1, D), np.insert(scores, 1, scores[0] - 0.5)
    assert multilabel.eleven_point_ap(with_difficult[1], with_difficult[0]) == multilabel.eleven_point_ap(scores, truth)
    assert multilabel.clip_benchmark_ap(with_difficult[1], with_difficult[0]) != multilabel.clip_benchmark_ap(scores, truth)


def test_a_perfect_ranking_scores_one_as_in_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    truth = np.where(rng.random(50) < 0.3, P, N).astype(np.int8)
    scores = truth + rng.random(50) * 0.5  # every positive above every negative
    assert multilabel.eleven_point_ap(scores, truth)[0] == average_precision_score(truth == P, scores) == 1.0
    assert multilabel.clip_benchmark_ap(scores, truth)[0] == 1.0


def test_a_class_without_positives_has_no_eleven_point_ap():
    scores, truth = ranked_problem([N, D, N])
    assert math.isnan(multilabel.eleven_point_ap(scores, truth)[0])
    assert multilabel.clip_benchmark_ap(scores, truth)[0] == 0.5  # its difficult image is present, ranked second
    assert multilabel.clip_benchmark_ap(*ranked_problem([N, N]))[0] == 0  # over max(positives, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_plain_map_equals_clip_benchmarks_own_function(seed):
    """clip_benchmark's average_precision_per_class on the labels its voc2007.py builds (every box present)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice([P, N, D], p=[0.2, 0.7, 0.1], size=(400, 20)).astype(np.int8)
    scores = (rng.normal(size=truth.shape) + 1.5 * (truth != N)).astype(np.float32)
    theirs = cb.average_precision_per_class(torch.from_numpy(scores), torch.from_numpy(truth != N).float())
    ours = multilabel.multilabel_metrics(scores, truth)
    assert ours["mean_average_precision"][0] == pytest.approx(theirs.mean().item(), abs=1e-6)
    assert ours["map_11point"][0] > ours["mean_average_precision"][0] - 0.2  # the two are close, not equal
