"""The paper's λ search and probe fit (pipeline/heads/probe.py)."""
import numpy as np
import pytest

from pipeline.heads import probe


def test_search_visits_the_paper_grid_and_halves_around_the_peak():
    """Hand-checked: accuracy peaks at k = 5 (λ = 10^(5/8)). Start at k = -48, -32, …, 48 (best 0, nearer 5 than
    16), then 0±8 → 8, 8±4 → 4, 4±2 → 6 (|6-5| = |4-5|: tie on accuracy goes to the smaller λ, so 4), 4±1 → 5."""
    accuracy = lambda lam: 1.0 - abs(np.log10(lam) * 8 - 5) / 100
    found = probe.search(accuracy)
    visited = [k for k, _ in found.curve]
    assert visited[:7] == list(range(-48, 49, 16))
    assert visited[7:] == [-8, 8, 4, 12, 2, 6, 3, 5]
    assert found.best_k == 5 and found.best_lambda == pytest.approx(10 ** (5 / 8))
    assert found.best_c == pytest.approx(1 / 10 ** (5 / 8))


def test_ties_go_to_the_smaller_lambda():
    found = probe.search(lambda lam: 0.5)
    assert found.best_k == -48


def test_search_matches_the_full_grid_on_a_real_single_peaked_case():
    """Logistic regression on two noisy Gaussian blobs: every one of the 97 grid values fitted independently; the
    search's λ has the grid's best validation accuracy, or one within 1/n_val of it."""
    rng = np.random.default_rng(0)
    n, dim = 120, 20
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, dim))
    features = centres[labels] * 0.6 + rng.normal(size=(n, dim))
    train, val = (features[:80], labels[:80]), (features[80:], labels[80:])
    accuracy_at = probe.validation_accuracy(train, val)
    grid = {k: accuracy_at(probe.lam(k)) for k in range(-48, 49)}
    found = probe.search(accuracy_at)
    assert len(found.curve) < len(grid)
    assert grid[found.best_k] >= max(grid.values()) - 1 / len(val[1])


def test_pre_projection_features_are_the_visual_towers_output_before_proj(tiny_checkpoint):
    """Against open_clip's own model with the projection removed, and the embedding derived back from them."""
    import copy

    import open_clip
    import torch

    from pipeline.embed import projection as heads_features
    from pipeline.models import register_project_architectures

    register_project_architectures()
    model, _, _ = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(tiny_checkpoint))
    model.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stripped = copy.deepcopy(model)
    stripped.visual.proj = None
    with torch.no_grad():
        with heads_features.without_projection(model.visual) as visual:
            pre = visual(images)
        reference = stripped.encode_image(images)
        embedding = model.encode_image(images)
    assert model.visual.proj is not None  # restored
    assert pre.shape[1] == model.visual.transformer.width and not torch.allclose(pre, embedding)
    torch.testing.assert_close(pre, reference)
    torch.testing.assert_close(heads_features.embed_from_pre_projection(pre, model.visual), embedding)


def test_probe_split_sets_validation_aside_then_draws_k_shots_per_class():
    from pipeline.heads.splits import probe_split

    labels = np.repeat(np.arange(4), 25)  # 4 classes x 25
    split = probe_split(labels, k_shot=3, val_fraction=0.2, seed=7)
    assert split.validation_source == "carved" and len(split.validation) == 20
    assert np.bincount(labels[split.validation]).tolist() == [5, 5, 5, 5]  # stratified
    assert np.bincount(labels[split.fit]).tolist() == [3, 3, 3, 3]
    assert not set(split.fit) & set(split.validation)
    again = probe_split(labels, k_shot=3, val_fraction=0.2, seed=7)
    other = probe_split(labels, k_shot=3, val_fraction=0.2, seed=8)
    assert np.array_equal(split.fit, again.fit) and not np.array_equal(split.fit, other.fit)
    full = probe_split(labels, k_shot=None, val_fraction=0.2, seed=7)
    assert len(full.fit) == 80 and np.array_equal(full.validation, split.validation)


def test_probe_logits_cover_every_class_and_more_shots_help():
    from pipeline.heads.splits import probe_split

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 1.5
    labels = np.repeat(np.arange(5), 60)
    features = centres[labels] + rng.normal(size=(300, 16))
    test_labels = np.repeat(np.arange(5), 20)
    test = centres[test_labels] + rng.normal(size=(100, 16))
    accuracies = {}
    for k in (1, 16):
        runs = [probe.run(features, labels, test, 6, probe_split(labels, k, 0.2, seed), refit_on_validation=False,
                          seed=seed) for seed in range(3)]
        assert all(r.logits.shape == (100, 6) and np.isneginf(r.logits[:, 5]).all() for r in runs)
        assert all(r.examples_per_class == k for r in runs)
        accuracies[k] = np.mean([np.mean(r.logits.argmax(1) == test_labels) for r in runs])
    assert accuracies[16] >= accuracies[1] + 0.05


def test_the_probe_stage_caches_logits_and_records_its_search(store):
    from pipeline.cache import StageCache
    from pipeline.embed import Embedded
    from pipeline.heads.linear_probe import linear_probe

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8)) * 2
    train_y, test_y = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train = Embedded({"image_features": centres[train_y] + rng.normal(size=(90, 8)), "labels": train_y}, "train-k", "r1")
    test = Embedded({"image_features": centres[test_y] + rng.normal(size=(30, 8)), "labels": test_y}, "test-k", "r2")
    head = {"name": "linear_probe", "k_shot": 4, "seed": 1, "features": "pre_projection", "val_fraction": 0.2}
    cache = StageCache(store)
    first = linear_probe(cache, head, train, test, None, 3, tags={"model": "m", "dataset": "d"}, params={})
    again = linear_probe(cache, head, train, test, None, 3, tags={"model": "m", "dataset": "d"}, params={})
    assert first.run_id == again.run_id and first["logits"].shape == (30, 3)
    run = store.client.get_run(first.run_id)
    assert run.data.tags["validation_source"] == "carved" and run.data.tags["k_shot"] == "4"
    assert run.data.metrics["examples_per_class"] == 4 and run.data.metrics["C"] == pytest.approx(1 / run.data.metrics["lambda"])
    assert len(first["curve_lambda"]) == len(first["curve_accuracy"]) >= 7
    other_seed = linear_probe(cache, {**head, "seed": 2}, train, test, None, 3, tags={}, params={})
    assert other_seed.run_id != first.run_id
