"""Bootstrap intervals and paired comparisons (pipeline/stages/score/uncertainty.py, pipeline/reports/comparisons.py), checked against
direct resampling written out here independently, and for coverage on simulated data."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipeline.stages.score import metrics, multilabel, uncertainty
from pipeline.tasks import classification, retrieval, selection, winogavil
from pipeline.tasks import multilabel as multilabel_task
from tests.records import direct_interval

R = uncertainty.RESAMPLES




def test_the_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    covered = 0
    for _ in range(500):
        correct = rng.random(1000) < 0.7
        outcomes = {"labels": np.zeros(1000, dtype=np.int64), "predictions": np.zeros(1000, dtype=np.int64),
                    "correct1": correct}
        low, high = uncertainty.interval(classification.classification_replicates(outcomes, 2)["acc1"])
        covered += low <= 0.7 <= high
    assert 0.92 <= covered / 500 <= 0.98, covered / 500


def classification_outcomes(n=300, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    return {"labels": labels, "predictions": logits.argmax(1), "correct1": metrics.top_k_correct(logits, labels, 1),
            "correct5": metrics.top_k_correct(logits, labels, 5), "group_region": rng.integers(0, 4, n)}


def test_plain_metrics_equal_a_direct_resampling_of_the_outcomes():
    outcomes = classification_outcomes()
    extra = {"F1-macro_all": metrics.macro_f1_present}
    replicates = classification.classification_replicates(outcomes, 6, extra)
    rng = np.random.default_rng(uncertainty.SEED)
    acc1, recall, f1 = [], [], []
    for _ in range(R):
        idx = rng.integers(0, 300, 300)
        labels, predictions = outcomes["labels"][idx], outcomes["predictions"][idx]
        acc1.append(np.mean(labels == predictions))
        recall.append(balanced_accuracy_score(labels, predictions))
        f1.append(f1_score(labels, predictions, average="macro", labels=np.unique(labels)))
    assert uncertainty.interval(replicates["acc1"]) == pytest.approx(direct_interval(acc1))
    assert uncertainty.interval(replicates["mean_per_class_recall"]) == pytest.approx(direct_interval(recall))
    assert uncertainty.interval(replicates["F1-macro_all"]) == pytest.approx(direct_interval(f1))
    assert uncertainty.interval(replicates["acc1_adjusted"]) == pytest.approx(
        tuple(v - 1 / 6 for v in direct_interval(acc1)))


def test_worst_group_metrics_resample_within_each_group():
    outcomes = classification_outcomes()
    groups = outcomes["group_region"]
    replicates = classification.classification_replicates(outcomes, 6, groups={"acc_worst_region": ("group_region", 1)})
    rng = np.random.default_rng(uncertainty.SEED)
    members = [np.flatnonzero(groups == g) for g in range(4)]
    direct = []
    for _ in range(R):
        drawn = [m[rng.integers(0, len(m), len(m))] for m in members]
        direct.append(min(outcomes["correct1"][d].mean() for d in drawn))
    assert uncertainty.interval(replicates["acc_worst_region"]) == pytest.approx(direct_interval(direct))


def test_retrieval_resamples_images_with_all_their_captions():
    rng = np.random.default_rng(4)
    owner = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    rng.shuffle(owner)
    ks = len(metrics.RECALL_KS)
    outcomes = {"image_found": rng.random((len(owner), ks)) < 0.4, "text_found": rng.random((40, ks)) < 0.5,
                "image_rank": rng.integers(1, 20, len(owner)), "text_rank": rng.integers(1, 8, 40),
                "caption_image": owner}
    replicates = retrieval.retrieval_replicates(outcomes)
    draw = np.random.default_rng(uncertainty.SEED)
    direct, ranks = [], []
    for _ in range(R):
        images = draw.integers(0, 40, 40)
        captions = [c for i in images for c in np.flatnonzero(owner == i)]
        direct.append(0.5 * (np.mean(outcomes["image_found"][captions, 0]) + np.mean(outcomes["text_found"][images, 0])))
        ranks.append(np.mean(outcomes["image_rank"][captions]))
    # recall is clip_benchmark's float32 share, within float32's rounding of the plain mean
    assert uncertainty.interval(replicates["mean_recall@1"]) == pytest.approx(direct_interval(direct), abs=1e-7)
    assert uncertainty.interval(replicates["image_retrieval_mean_rank"]) == pytest.approx(direct_interval(ranks))


def test_winogavil_resamples_games():
    rng = np.random.default_rng(5)
    outcomes = {"game_scores": rng.random(30), "game_sizes": rng.choice([5, 6, 10, 12], 30)}
    replicates = winogavil.winogavil_replicates(outcomes)
    draw = np.random.default_rng(uncertainty.SEED)
    direct = [outcomes["game_scores"][draw.integers(0, 30, 30)].mean() for _ in range(R)]
    assert uncertainty.interval(replicates["avg_jaccard_score"]) == pytest.approx(direct_interval(direct))


def test_the_paired_test_finds_nothing_against_itself_and_a_clear_difference_where_there_is_one():
    outcomes = classification_outcomes()
    a = classification.classification_replicates(outcomes, 6)["acc1"]
    assert uncertainty.paired(a, a) == (0.0, 0.0, 1.0)
    better = dict(outcomes, correct1=outcomes["correct1"].copy())
    wrong = np.flatnonzero(~better["correct1"])
    better["correct1"][wrong[: len(wrong) // 2]] = True  # right wherever A is right, and on half of A's misses
    b = classification.classification_replicates(better, 6)["acc1"]
    low, high, p = uncertainty.paired(b, a)
    assert low > 0 and p < 0.01












def test_each_dataset_draws_its_own_resamples_the_same_for_every_model():
    first, again = (next(uncertainty.draws(100, seed=uncertainty.dataset_seed("cifar10"))) for _ in range(2))
    other = next(uncertainty.draws(100, seed=uncertainty.dataset_seed("mnist")))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_worst_group_intervals_use_the_groups_own_k():
    outcomes = classification_outcomes()
    outcomes["correct3"] = np.ones(300, dtype=bool)
    replicates = classification.classification_replicates(outcomes, 6, groups={"wg3": ("group_region", 3),
                                                                          "wg1": ("group_region", 1)})
    assert (replicates["wg3"] == 1).all() and (replicates["wg1"] < 1).all()




def test_multilabel_resamples_images_with_all_their_classes():
    """Each replicate equals both mAPs computed on the resampled images themselves, clip_benchmark's with its own
    function (scores drawn in float64, so no two images tie)."""
    import torch
    from clip_benchmark.metrics import zeroshot_classification as cb

    rng = np.random.default_rng(6)
    truth = rng.choice([1, -1, 0], p=[0.3, 0.6, 0.1], size=(150, 4)).astype(np.int8)
    scores = rng.normal(size=truth.shape) + truth
    replicates = multilabel_task.multilabel_replicates({"scores": scores, "labels": truth}, resamples=50)
    draw = np.random.default_rng(uncertainty.SEED)
    for b in range(50):
        idx = draw.integers(0, 150, 150)
        direct = multilabel.multilabel_metrics(scores[idx], truth[idx])
        theirs = cb.average_precision_per_class(torch.from_numpy(scores[idx]), torch.from_numpy(truth[idx] != -1).float())
        assert replicates["map_11point"][b] == pytest.approx(direct["map_11point"][0])
        assert replicates["mean_average_precision"][b] == pytest.approx(theirs.mean().item(), abs=1e-6)


def test_selection_resamples_units_with_all_their_instances():
    rng = np.random.default_rng(7)
    units = rng.integers(0, 25, 60)
    units = np.unique(units, return_inverse=True)[1]  # 0..U-1, as the classify stage numbers them
    outcomes = {name: rng.random(60) < 0.6 for name in metrics.SELECTION_METRICS} | {"units": units}
    replicates = selection.selection_replicates(outcomes)
    draw = np.random.default_rng(uncertainty.SEED)
    direct = []
    for _ in range(R):
        drawn = draw.integers(0, units.max() + 1, units.max() + 1)
        instances = [i for u in drawn for i in np.flatnonzero(units == u)]
        direct.append(outcomes["acc"][instances].mean())
    assert uncertainty.interval(replicates["acc"]) == pytest.approx(direct_interval(direct))


def test_a_sample_order_digest_from_before_the_dataset_order_never_matches_a_new_one():
    """Score version 3 hashed the owners alone, which every order of images with five captions each shares."""
    import hashlib

    owners = np.repeat(np.arange(4), 5)
    before = hashlib.sha256(np.ascontiguousarray(owners).tobytes()).hexdigest()[:16]
    assert uncertainty.structure_digest([owners]) == uncertainty.structure_digest([owners.copy()]) != before
