import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from pipeline.stages import metrics


def random_problem(seed: int, n: int = 300, c: int = 12):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n).astype(np.float32)  # better than chance
    return logits, labels


def test_top_k_hand_worked():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1, 2, 1])
    assert metrics.top_k_accuracy(logits, labels, 1) == pytest.approx(0.5)
    # top-2: sample 1 has {2,1} ∋ 1; sample 2 has {0,1} ∌ 2
    assert metrics.top_k_accuracy(logits, labels, 2) == pytest.approx(0.75)


def test_acc5_is_nan_with_fewer_than_five_classes():
    logits, labels = random_problem(0, c=4)
    assert math.isnan(metrics.top_k_accuracy(logits, labels, 5))
    assert math.isnan(metrics.classification_metrics(logits, labels)["acc5"])


def test_mean_per_class_recall_hand_worked():
    # class 0: 2/2 right, class 1: 1/3 right -> (1 + 1/3) / 2, while plain accuracy is 3/5
    labels = np.array([0, 0, 1, 1, 1])
    predictions = np.array([0, 0, 1, 0, 0])
    assert metrics.mean_per_class_recall(predictions, labels) == pytest.approx(2 / 3)


def test_acc1_adjusted_is_acc1_minus_chance():
    logits, labels = random_problem(1, c=10)
    values = metrics.classification_metrics(logits, labels)
    assert values["acc1_adjusted"] == pytest.approx(values["acc1"] - 0.1)
    assert metrics.chance_adjusted_accuracy(0.05, 10) < 0  # worse than chance goes negative


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    logits, labels = random_problem(seed)
    values = metrics.classification_metrics(logits, labels)
    assert values["acc1"] == pytest.approx(top_k_accuracy_score(labels, logits, k=1, labels=range(12)), abs=1e-12)
    assert values["acc5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=range(12)), abs=1e-12)
    assert values["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_matches_clip_benchmark_functions(seed):
    logits, labels = random_problem(seed)
    acc1, acc5 = cb.accuracy(torch.from_numpy(logits), torch.from_numpy(labels), topk=(1, 5))
    values = metrics.classification_metrics(logits, labels)
    assert values["acc1"] == pytest.approx(acc1, abs=1e-12)
    assert values["acc5"] == pytest.approx(acc5, abs=1e-12)
