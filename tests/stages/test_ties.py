"""Ties decided as the references decide them (pipeline/stages/score/ties.py): equal texts get bit-equal similarities, and
clip_benchmark 1.6.2's own functions, run on the same tie-rich features, give exactly our numbers: its
zeroshot_classification.evaluate and accuracy, zeroshot_retrieval.evaluate, image_caption_selection.evaluate and
average_precision_per_class, with fewer candidates than torch.topk's heap needs (64 per k) and with more."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import image_caption_selection, zeroshot_classification, zeroshot_retrieval
from sklearn.metrics import balanced_accuracy_score

from pipeline.data import datasets
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.models.precision import FP32_RECIPE
from pipeline.stages import classify, score
from pipeline.stages.score import metrics, multilabel, ties
from pipeline.stages import StageResult
from pipeline.stages.embed.texts import encode_strings
from pipeline.tasks import classification, retrieval, selection

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


def embedded(**arrays) -> StageResult:
    return StageResult({name: np.asarray(value) for name, value in arrays.items()}, "key", "run")


def test_distinct_rows_point_every_row_at_the_first_equal_one():
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0]])
    kept, position = ties.distinct(rows)
    assert kept.tolist() == [0, 1, 3] and position.tolist() == [0, 1, 0, 2, 1]
    assert ties.distinct(rows[:2]) is None  # nothing repeated: the caller computes as before


def test_label_ranks_count_ties_in_index_order_and_know_their_bounds():
    scores = np.array([[0.5, 0.9, 0.9, 0.1],   # label 2 ties with class 1 ahead of it
                       [0.9, 0.9, 0.2, 0.9]])  # label 0 ties with two classes after it
    rank, best, worst = ties.label_ranks(scores, np.array([2, 0]))
    assert rank.tolist() == [2, 1] and best.tolist() == [1, 1] and worst.tolist() == [2, 3]
    assert ties.decided(best, worst, [1]).tolist() == [True, True]
    assert ties.decided(best, worst, [5]).tolist() == [False, False]


def tied_scores(rows: int, n: int, seed: int) -> torch.Tensor:
    """Scores with many exact ties: small integers."""
    return torch.randint(0, 6, (rows, n), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("n", [4, 10, 63, 64, 319, 320, 700])
def test_topk_decides_ties_its_own_way_and_top_k_makes_its_very_call(n):
    """What docs/precision.md says of `torch.topk` on CPU: from 64 candidates per k on its heap keeps the earlier of
    tied items at the cut, so top-1 is argmax's choice and a top-k set holds the earlier ones; below, introselect
    keeps either; the order within a top 5 is the heap's, so its first column is not argmax's choice even then.
    `ties.top_k` gives exactly torch's indices, whatever the block of rows or the strides."""
    scores = tied_scores(800, n, n)
    first_max = (scores.argmax(dim=1) == scores.topk(1, 1)[1][:, 0]).all()
    assert bool(first_max) == (n >= 64)
    earlier = torch.sort(-scores, stable=True, dim=1)[1]  # ties in index order
    for k in (1, 5, 10):
        if k <= n:
            theirs = scores.topk(k, 1, True, True)[1]
            assert np.array_equal(ties.top_k(scores.numpy(), k), theirs.numpy())
            assert np.array_equal(ties.top_k(np.ascontiguousarray(scores.numpy().T).T, k), theirs.numpy())
            same_set = (theirs.sort(dim=1)[0] == earlier[:, :k].sort(dim=1)[0]).all()
            assert bool(same_set) == (n >= 64 * k or k == n), k
    if n >= 5:
        assert (scores.topk(5, 1, True, True)[1][:, 0] != scores.argmax(dim=1)).any()


@pytest.mark.parametrize("n", [4, 10, 63, 64, 700])
@pytest.mark.parametrize("k", [1, 5])
def test_top_k_accuracy_is_clip_benchmarks_accuracy_on_tied_logits(n, k):
    scores, labels = tied_scores(500, n, 7 * n + k), torch.arange(500) % n
    if k > n:
        assert np.isnan(metrics.top_k_accuracy(scores.numpy(), labels.numpy(), k))
        return
    [theirs] = zeroshot_classification.accuracy(scores, labels, topk=(k,))
    assert metrics.top_k_accuracy(scores.numpy(), labels.numpy(), k) == theirs


class Batches(list):
    """A dataloader as clip_benchmark's classification `evaluate` reads it: batches, and `dataset.classes`."""

    def __init__(self, batches: list, classes: list[str]):
        super().__init__(batches)
        self.dataset = types.SimpleNamespace(classes=classes)


@pytest.mark.parametrize("n_classes", [4, 12, 63, 64, 400])
def test_classes_named_alike_give_clip_benchmarks_classification_numbers(n_classes):
    """Classes named alike (ImageNet's two "sunglasses") get bit-equal logits, and samples of either tie for the top:
    clip_benchmark's evaluate on the same features decides acc1 and acc5 with its topk(5) (or topk(1) below five
    classes) and mean per-class recall with argmax, which disagree on tied samples; ours are its very numbers."""
    rng = torch.Generator().manual_seed(n_classes)
    dim, n = 12, 300
    names = [f"class {c}" for c in range(n_classes)]
    pairs = [(c, c + n_classes // 2) for c in range(0, n_classes // 2, 3)]
    for early, late in pairs:
        names[late] = names[early]
    vectors = {name: torch.randn(dim, generator=rng) for name in dict.fromkeys(names)}
    model = Lookup(vectors)
    tied_labels = [c for pair in pairs for c in pair]
    labels = torch.tensor([tied_labels[i % len(tied_labels)] if i % 2 else i % n_classes for i in range(n)])
    features = torch.stack([vectors[names[c]] for c in labels])  # each image exactly at its class: ties at the top
    features[::4] += 0.5 * torch.randn(len(features[::4]), dim, generator=rng)
    batches = Batches([(features[s:s + 64], labels[s:s + 64]) for s in range(0, n, 64)], names)
    theirs = zeroshot_classification.evaluate(model, batches, model.tokenize, names, ["{c}"], "cpu", amp=False)

    classifier = zeroshot_classification.zero_shot_classifier(model, model.tokenize, names, ["{c}"], "cpu", amp=False)
    logits = classify.zero_shot_logits({"image_features": features.numpy()}, {"classifier": classifier.numpy()})
    reference, _ = zeroshot_classification.run_classification(model, classifier, batches, "cpu", amp=False)
    assert np.array_equal(logits, reference.numpy())  # the same logits, ties included
    spec = datasets.DatasetSpec("named_alike", "zeroshot_classification", "-", "test", "acc1")
    scored = classification.classification_scores(spec, embedded(labels=labels.numpy()), embedded(logits=logits))
    for name in ("acc1", "acc5", "mean_per_class_recall"):
        assert scored.values[name] == theirs[name] or np.isnan(scored.values[name]) and np.isnan(theirs[name]), name
    # ties decided them, and the count says so; from 63 classes on, topk's first choice and argmax's disagree on
    # some tied samples (torch's introselect, then the heap's order within its five)
    argmax_right = scored.outcomes["predictions"] == labels.numpy()
    assert scored.values["ties"] > 0 and (n_classes < 63 or (scored.outcomes["correct1"] != argmax_right).any())
    assert scored.values["mean_per_class_recall"] == balanced_accuracy_score(labels, logits.argmax(axis=1))
    # and the point estimates are the means of the per-sample outcomes the bootstrap resamples
    assert scored.values["acc1"] == scored.outcomes["correct1"].mean()


@pytest.mark.parametrize("n_images", [24, 100, 700])
def test_duplicate_captions_and_images_give_clip_benchmarks_recalls(n_images):
    """Images with one or two captions each, some captions repeated word for word under other images and some images
    repeated: our classify and score stages against clip_benchmark 1.6.2's zeroshot_retrieval.evaluate on the same
    features, every recall@k the same number, with fewer than 64 candidates per k (24 images, 48 captions: topk's
    introselect), between (100) and more (700: its heap)."""
    rng = torch.Generator().manual_seed(n_images)
    dim = 16
    captions = [[f"caption {i}"] + ([f"other {i}"] if i % 3 != 2 else []) for i in range(n_images)]
    for i in range(1, n_images, 5):  # image i's first caption is word for word image i - 1's
        captions[i][0] = captions[i - 1][0]
    flat = [text for texts in captions for text in texts]
    vectors = {text: torch.randn(dim, generator=rng) for text in dict.fromkeys(flat)}
    images = torch.stack([vectors[texts[0]] + 0.05 * torch.randn(dim, generator=rng) for texts in captions])
    for i in range(3, n_images, 7):  # image i - 1 is image i again
        images[i - 1] = images[i]
    model = Lookup(vectors)
    batches = [(images[s:s + 64], captions[s:s + 64]) for s in range(0, n_images, 64)]
    theirs = zeroshot_retrieval.evaluate(model, batches, model.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])

    text_features = F.normalize(torch.stack([vectors[t] for t in flat]), dim=-1)
    owners = np.repeat(np.arange(n_images), [len(texts) for texts in captions])
    predicted = retrieval.retrieval_outputs(embedded(image_features=images.numpy(), caption_image=owners),
                                           embedded(text_features=text_features.numpy()), FP32_RECIPE, CPU)
    spec = datasets.DatasetSpec("duplicates", "zeroshot_retrieval", "-", "test", "mean_recall@1")
    scored = retrieval.retrieval_scores(spec, embedded(caption_image=owners), embedded(**predicted.arrays))
    for name, value in theirs.items():
        assert scored.values[name] == value, name
    assert scored.values["ties"] > 0
    assert scored.values["image_retrieval_recall@1"] == metrics.float32_share(scored.outcomes["image_found"][:, 0])
    if n_images < 64:  # introselect: counting ties in index order would give other numbers
        ranks = {side: predicted.arrays[f"{side}_rank"] for side in ("image", "text")}
        rule = [np.float32((ranks[side] <= k).mean()) for side in ("image", "text") for k in (1, 5, 10)]
        assert rule != [np.float32(theirs[f"{side}_retrieval_recall@{k}"]) for side in ("image", "text") for k in (1, 5, 10)]


@pytest.mark.parametrize("shape", [(1, 2), (2, 2)])  # SugarCrepe's instances, Winoground's
def test_equal_captions_in_an_instance_give_clip_benchmarks_verdict(shape):
    """Instances whose captions are equal (a SugarCrepe negative word for word its caption, Winoground's two
    captions alike): both get the very same similarity and argmax takes the first, as clip_benchmark's
    image_caption_selection.evaluate does on the same features."""
    rng = torch.Generator().manual_seed(sum(shape))
    (i, c), n, dim = shape, 40, 8
    entries = [[f"caption {m}.{j}" for j in range(c)] for m in range(n)]
    for m in range(0, n, 4):
        entries[m][1] = entries[m][0]
    vectors = {text: torch.randn(dim, generator=rng) for texts in entries for text in texts}
    images = torch.stack([torch.stack([vectors[texts[j]] + 0.8 * torch.randn(dim, generator=rng) for j in range(i)])
                          for texts in entries])                           # (N, I, dim)
    model = Lookup(vectors)
    batches = [(images[s:s + 5, :, :, None, None], entries[s:s + 5]) for s in range(0, n, 5)]
    theirs = image_caption_selection.evaluate(model, batches, model.tokenize, "cpu", amp=False)

    names = np.array([f"{m:06d}-{j}.jpg" for m in range(n) for j in range(i)])
    texts = F.normalize(torch.stack([vectors[t] for texts in entries for t in texts]), dim=-1)
    predicted = selection.selection_outputs(embedded(image_features=images.reshape(n * i, dim).numpy(), image_names=names),
                                           embedded(text_features=texts.numpy(), instance_images=names.reshape(n, i)),
                                           FP32_RECIPE, CPU).arrays
    equal = np.array([texts[0] == texts[1] for texts in entries])
    assert (predicted["scores"][equal, :, 0] == predicted["scores"][equal, :, 1]).all()
    spec = datasets.DatasetSpec("equal", "image_caption_selection", "-", "test", "acc")
    scored = selection.selection_scores(spec, embedded(), embedded(**predicted))
    for name in ("acc", "text_acc", "image_acc"):
        assert scored.values[name] == theirs[name], name
    assert scored.values["ties"] == equal.sum() > 0


def test_where_clip_benchmarks_own_product_rounds_equal_captions_apart_ours_keeps_them_tied():
    """The one place our selection numbers leave clip_benchmark's: at 512 dimensions its per-instance
    `images_emb @ texts_emb.t()` (image_caption_selection.py:190) gives two equal captions similarities an ulp apart
    in many instances, so its verdict there is rounding noise; ours are bit-equal (a tie, which argmax gives the
    caption). Every other similarity is its very number."""
    rng = torch.Generator().manual_seed(5)
    n, dim = 200, 512
    images = torch.randn(n, dim, generator=rng)
    texts = F.normalize(torch.randn(n, 2, dim, generator=rng), dim=-1)
    texts[::2, 1] = texts[::2, 0]                                   # every other negative is its caption
    normalized = F.normalize(images, dim=-1)                        # its l.181, once per image as ours
    theirs = torch.stack([normalized[m:m + 1] @ texts[m].t() for m in range(n)]).numpy()  # (N, 1, 2), its call
    names = np.array([f"{m:06d}.jpg" for m in range(n)])
    ours = selection.selection_outputs(embedded(image_features=images.numpy(), image_names=names),
                                      embedded(text_features=texts.reshape(2 * n, dim).numpy(),
                                               instance_images=names[:, None]), FP32_RECIPE, CPU).arrays["scores"]
    assert np.array_equal(ours[:, :, 0], theirs[:, :, 0]) and np.array_equal(ours[1::2], theirs[1::2])
    assert (ours[::2, 0, 1] == ours[::2, 0, 0]).all()
    assert (theirs[::2, 0, 1] != theirs[::2, 0, 0]).any()


def test_clip_benchmarks_ap_ranks_tied_scores_by_its_own_sort():
    """VOC2007 with scores that tie across images of either flag: our resampled AP ranks them as clip_benchmark's
    average_precision_per_class does (torch.sort, not stable), so with every image drawn once it is its number; a
    stable ranking would give others."""
    rng = np.random.default_rng(0)
    truth = rng.choice([metrics.PRESENT, metrics.ABSENT, metrics.DIFFICULT], p=[0.3, 0.6, 0.1], size=(300, 12))
    scores = rng.integers(0, 4, truth.shape).astype(np.float32)
    theirs = zeroshot_classification.average_precision_per_class(torch.from_numpy(scores),
                                                                  torch.from_numpy(truth != metrics.ABSENT).float())
    ones = np.ones((1, len(truth)))
    ours = np.array([multilabel.clip_benchmark_ap(scores[:, k], truth[:, k], ones)[0] for k in range(12)])
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-6)  # theirs sums in float32
    assert multilabel.multilabel_metrics(scores, truth)["mean_average_precision"][0] == theirs.mean().item()
    flags = (truth != metrics.ABSENT).astype(float)
    stable = [np.mean([flags[order[:r + 1], k].mean() for r in np.flatnonzero(flags[order, k])])
              for k in range(12) for order in [multilabel.ranked(scores[:, k])]]
    assert np.abs(np.array(stable) - theirs.numpy()).max() > 1e-3


def test_winogavil_chooses_among_tied_candidates_as_datacomps_argsort_does():
    """DataComp's wino_eval.py: `np.argsort(image_logits)[-n_assoc:]`, the candidates it keeps among equal float16
    similarities; a game without associations keeps every candidate there."""
    similarities = np.array([0.25, 0.5, 0.25, 0.25, 0.5, 0.125, 0.25, 0.5, 0.25, 0.125], dtype=np.float16)
    for n_assoc in range(0, 7):
        chosen = metrics.winogavil_predictions(similarities, n_assoc)
        assert chosen.tolist() == np.isin(np.arange(10), np.argsort(similarities)[-n_assoc:]).tolist()
    assert metrics.winogavil_predictions(similarities, 0).all()
    assert ties.chosen_by_tie(similarities, 4) and not ties.chosen_by_tie(similarities, 3)


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
