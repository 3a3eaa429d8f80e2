"""Ties by one rule (pipeline/stages/ties.py): equal texts get bit-equal similarities, the earlier index wins, and
the numbers equal clip_benchmark's own functions run on the same features where ties decide them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import image_caption_selection, zeroshot_retrieval
from sklearn.metrics import balanced_accuracy_score

from pipeline.data import datasets
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.models.precision import FP32_RECIPE
from pipeline.stages import classify, metrics, score, ties
from pipeline.stages.embed import Embedded
from pipeline.stages.embed.texts import encode_strings

CPU = torch.device("cpu")


class Lookup(torch.nn.Module):
    """A stand-in model for clip_benchmark's evaluate functions: an "image" is its own embedding, a text's embedding
    is looked up by the string, so equal strings get the same tensor (as a text tower gives tokens alike)."""

    def __init__(self, texts: dict[str, torch.Tensor]):
        super().__init__()
        self.order = list(texts)
        self.table = torch.stack([texts[t] for t in self.order])

    def tokenize(self, strings: list[str]) -> torch.Tensor:
        return torch.tensor([self.order.index(s) for s in strings])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens]


def embedded(**arrays) -> Embedded:
    return Embedded({name: np.asarray(value) for name, value in arrays.items()}, "key", "run")


def test_distinct_rows_point_every_row_at_the_first_equal_one():
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0]])
    kept, position = ties.distinct(rows)
    assert kept.tolist() == [0, 1, 3] and position.tolist() == [0, 1, 0, 2, 1]
    assert ties.distinct(rows[:2]) is None  # nothing repeated: the caller computes as before


def test_the_earlier_index_wins_and_each_rank_knows_its_bounds():
    scores = np.array([[0.5, 0.9, 0.9, 0.1],   # label 2 ties with class 1 ahead of it
                       [0.9, 0.9, 0.2, 0.9]])  # label 0 ties with two classes after it
    rank, best, worst = ties.label_ranks(scores, np.array([2, 0]))
    assert rank.tolist() == [2, 1] and best.tolist() == [1, 1] and worst.tolist() == [2, 3]
    assert metrics.top_k_correct(scores, np.array([2, 0]), 1).tolist() == [False, True]
    assert ties.decided(best, worst, [1]).tolist() == [True, True]
    assert ties.decided(best, worst, [5]).tolist() == [False, False]


@pytest.mark.parametrize("n", [64, 700])
def test_topk_keeps_the_first_maximum_at_k_1_from_64_scores_on(n):
    """What the docs claim of clip_benchmark's `torch.topk` on CPU: with k = 1 and n >= 64 it takes the rule's top
    item, as argmax does, also where the maximum is repeated."""
    scores = torch.randn(256, n, generator=torch.Generator().manual_seed(n))
    scores[:, n // 2] = scores.max(dim=1).values  # the maximum twice, the copy later
    labels = np.arange(256) % n
    ours = ties.label_ranks(scores.numpy(), labels)[0] <= 1
    assert (ours == (torch.topk(scores, 1, dim=1)[1][:, 0] == torch.as_tensor(labels)).numpy()).all()
    assert (torch.topk(scores, 1, dim=1)[1][:, 0] == scores.argmax(dim=1)).all()


def test_duplicate_captions_and_images_give_clip_benchmarks_recalls():
    """700 images with a caption each, some captions repeated under other images and some images repeated: our
    classify and score stages against clip_benchmark 1.6.2's zeroshot_retrieval.evaluate on the same features.
    Recall@1 is the same number (its topk keeps the first maximum); at 5 and 10 its topk may keep either of two tied
    items, so the two differ by at most the outcomes a tie decided there."""
    rng = torch.Generator().manual_seed(0)
    n, dim = 700, 16
    captions = [f"caption {i}" for i in range(n)]
    for i in range(1, n, 25):          # image i's caption is word for word image i - 1's
        captions[i] = captions[i - 1]
    vectors = {text: torch.randn(dim, generator=rng) for text in dict.fromkeys(captions)}
    images = torch.stack([vectors[text] + 0.05 * torch.randn(dim, generator=rng) for text in captions])
    for i in range(12, n, 50):         # image i - 1 is image i again
        images[i - 1] = images[i]
    model = Lookup(vectors)
    batches = [(images[s:s + 100], [[t] for t in captions[s:s + 100]]) for s in range(0, n, 100)]
    theirs = zeroshot_retrieval.evaluate(model, batches, model.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])

    text_features = F.normalize(torch.stack([vectors[t] for t in captions]), dim=-1)
    owners = np.arange(n)
    predicted = classify.retrieval_outputs(embedded(image_features=images.numpy(), caption_image=owners),
                                           embedded(text_features=text_features.numpy()), FP32_RECIPE, CPU)
    ours = metrics.retrieval_metrics(predicted.arrays["image_rank"], predicted.arrays["text_rank"])
    bounds = {side: predicted.arrays[f"{side}_rank_bounds"].T for side in ("image", "text")}
    for side in ("image", "text"):
        for k in metrics.RECALL_KS:
            name, tied = f"{side}_retrieval_recall@{k}", ties.decided(*bounds[side], [k]).sum()
            assert abs(ours[name] - theirs[name]) <= tied / n + 1e-6, name  # theirs: a float32 mean
            if k == 1:
                assert tied > 0 and ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    decided = [ties.decided(*bounds[side], metrics.RECALL_KS) for side in ("image", "text")]
    spec = datasets.DatasetSpec("duplicates", "zeroshot_retrieval", "-", "test", "mean_recall@1")
    scored = score.retrieval_scores(spec, embedded(caption_image=owners), embedded(**predicted.arrays))
    assert scored.values["ties"] == decided[0].sum() + decided[1].sum()
    # counting strictly higher scores only (a tie counted as found, as before) gives other numbers
    found = metrics.retrieval_metrics(bounds["image"][0], bounds["text"][0])
    assert found["text_retrieval_recall@1"] > theirs["text_retrieval_recall@1"] + 1e-6
    assert found["image_retrieval_recall@1"] > theirs["image_retrieval_recall@1"] + 1e-6


def test_a_negative_caption_equal_to_the_caption_gives_clip_benchmarks_verdict():
    """SugarCrepe entries (one image, its caption, a negative) whose negative is the caption itself: both get the
    very same similarity and argmax takes the caption, as clip_benchmark's image_caption_selection.evaluate does."""
    rng = torch.Generator().manual_seed(3)
    n, dim = 24, 8
    entries = [(f"caption {m}", f"caption {m}" if m % 8 == 0 else f"negative {m}") for m in range(n)]
    vectors = {text: torch.randn(dim, generator=rng) for pair in entries for text in pair}
    images = torch.stack([vectors[c] + 0.8 * torch.randn(dim, generator=rng) for c, _ in entries])
    model = Lookup(vectors)
    batches = [(images[s:s + 5, :, None, None], [list(e) for e in entries[s:s + 5]]) for s in range(0, n, 5)]
    theirs = image_caption_selection.evaluate(model, batches, model.tokenize, "cpu", amp=False)

    names = np.array([f"{m:012d}.jpg" for m in range(n)])
    texts = F.normalize(torch.stack([vectors[t] for pair in entries for t in pair]), dim=-1)
    predicted = classify.selection_outputs(embedded(image_features=images.numpy(), image_names=names),
                                           embedded(text_features=texts.numpy(), instance_images=names[:, None]),
                                           FP32_RECIPE, CPU).arrays
    equal = np.array([c == negative for c, negative in entries])
    assert (predicted["scores"][equal, 0, 0] == predicted["scores"][equal, 0, 1]).all()
    assert metrics.selection_outcomes(predicted["scores"][equal])["acc"].all()  # the caption, first, wins its tie
    outcomes = metrics.selection_outcomes(predicted["scores"])
    for name in ("acc", "text_acc", "image_acc"):
        assert outcomes[name].mean() == pytest.approx(theirs[name], abs=1e-6), name
    assert ties.selection_ties(predicted["scores"]).tolist() == equal.tolist()


def test_classes_named_alike_get_equal_logits_and_the_earlier_class_wins():
    """ImageNet's class list names "sunglasses" and "missile" twice: equal classifier columns give bit-equal logits,
    the earlier class is the prediction (as argmax takes it, and clip_benchmark's per-class recall), and the score
    counts the samples whose top-1 or top-5 outcome that tie decided."""
    rng = torch.Generator().manual_seed(1)
    classes, dim, n = 320, 12, 200
    weights = F.normalize(torch.randn(classes, dim, generator=rng), dim=-1)
    weights[7], weights[300] = weights[3], weights[250]  # two pairs of classes named alike
    labels = torch.tensor([[3, 7, 250, 300][i % 4] for i in range(n)])
    features = weights[labels] + 0.3 * torch.randn(n, dim, generator=rng)
    logits = classify.zero_shot_logits({"image_features": features.numpy()}, {"classifier": weights.T.numpy()})
    assert (logits[:, 3] == logits[:, 7]).all() and (logits[:, 250] == logits[:, 300]).all()
    ours = metrics.classification_metrics(logits, labels.numpy())
    predictions = torch.from_numpy(logits).argmax(dim=1)
    assert ours["acc1"] == float((predictions == labels).double().mean()) <= 0.5  # the later class never wins
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-12)
    spec = datasets.DatasetSpec("named_alike", "zeroshot_classification", "-", "test", "acc1")
    scored = score.classification_scores(spec, embedded(labels=labels.numpy()), embedded(logits=logits))
    # each label ties with exactly one other class: a tie decides it where it is first or fifth
    own = logits[np.arange(n), labels.numpy()]
    place = 1 + (logits > own[:, None]).sum(axis=1)
    assert scored.values["ties"] == np.isin(place, [1, 5]).sum() > 0


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), CPU).get()


def test_texts_that_tokenize_alike_get_bit_equal_features(loaded):
    """Repeated texts, some far apart (other batches, trimmed to other lengths), and two long texts that differ only
    after the 77-token context: each group gets one embedding."""
    words = "red blue green small large square circle triangle photo of a the".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 12))) for _ in range(400)]
    texts += texts[:150] + ["a " * 90 + "square", "a " * 90 + "circle"]
    features = encode_strings(loaded, texts, "fp32")
    assert (features[400:550] == features[:150]).all()
    assert torch.equal(features[-1], features[-2])
