import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from pipeline.stages.score import metrics


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


# -- image-caption selection: clip_benchmark's argmax metrics and the Winoground paper's scores -------------------
class Embeddings(torch.nn.Module):
    """A stand-in model for clip_benchmark's evaluate: an "image" tensor is its own embedding, a text is looked up."""

    def __init__(self, texts: dict[str, torch.Tensor]):
        super().__init__()
        self.texts = texts
        self.order = list(texts)

    def tokenize(self, strings: list[str]) -> torch.Tensor:
        return torch.tensor([self.order.index(s) for s in strings])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.texts[self.order[int(t)]] for t in tokens])


def clip_benchmark_selection(images: torch.Tensor, captions: list[list[str]], texts: dict) -> dict[str, float]:
    """clip_benchmark 1.6.2's metrics/image_caption_selection.evaluate on instances of (I images, C captions)."""
    from clip_benchmark.metrics import image_caption_selection

    model = Embeddings(texts)
    batches = [(images[start:start + 3, :, :, None, None], captions[start:start + 3]) for start in range(0, len(images), 3)]
    return image_caption_selection.evaluate(model, batches, model.tokenize, "cpu", amp=False)


def our_scores(images: torch.Tensor, captions: list[list[str]], texts: dict) -> np.ndarray:
    normalize = lambda t: torch.nn.functional.normalize(t, dim=-1)
    caption_features = torch.stack([torch.stack([texts[c] for c in row]) for row in captions])
    return torch.einsum("nid,ncd->nic", normalize(images), normalize(caption_features)).numpy()


@pytest.mark.parametrize("shape", [(1, 2), (2, 2)])  # SugarCrepe's and Winoground's instances
def test_selection_metrics_equal_clip_benchmarks_evaluate(shape):
    rng = torch.Generator().manual_seed(sum(shape))
    n, (i, c) = 40, shape
    images = torch.randn(n, i, 6, generator=rng)
    captions = [[f"caption {k} of {m}" for k in range(c)] for m in range(n)]
    texts = {text: torch.randn(6, generator=rng) for row in captions for text in row}
    for m in range(n):  # better than chance: each image leans towards its own caption
        for k in range(min(i, c)):
            images[m, k] += texts[captions[m][k]]
    theirs = clip_benchmark_selection(images, captions, texts)
    ours = metrics.selection_outcomes(our_scores(images, captions, texts))
    for name in ("acc", "text_acc", "image_acc"):
        assert ours[name].mean() == pytest.approx(theirs[name], abs=1e-7), name
    assert 0.2 < ours["acc"].mean() < 1
    # without ties the Winoground paper's scores are the same counts
    assert (ours["text_score"] == ours["text_acc"]).all() and (ours["group_score"] == ours["acc"]).all()


def test_a_tie_counts_for_clip_benchmark_and_against_the_winoground_paper():
    # image 0 is as close to caption 1 as to its own caption 0; image 1 prefers its own
    e = torch.eye(3)
    texts = {"c0": (e[0] + e[1]) / 2 ** 0.5, "c1": (e[0] + e[2]) / 2 ** 0.5}
    images, captions = torch.stack([e[0], e[2]])[None], [["c0", "c1"]]
    scores = our_scores(images, captions, texts)
    assert scores[0, 0, 0] == scores[0, 0, 1]
    assert clip_benchmark_selection(images, captions, texts)["text_acc"] == 1.0
    ours = metrics.selection_outcomes(scores)
    assert ours["text_acc"][0] and not ours["text_score"][0] and not ours["group_score"][0]
