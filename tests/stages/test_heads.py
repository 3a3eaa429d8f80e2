"""The paper's λ search and probe fit (pipeline/stages/heads/probe.py)."""
from dataclasses import replace

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.stages.heads import HeadSpec, probe


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

    from pipeline.models.loading import register_project_architectures
    from pipeline.stages.embed import projection

    register_project_architectures()
    model, _, _ = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(tiny_checkpoint))
    model.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stripped = copy.deepcopy(model)
    stripped.visual.proj = None
    with torch.no_grad():
        with projection.without_projection(model.visual) as visual:
            pre = visual(images)
        reference = stripped.encode_image(images)
        embedding = model.encode_image(images)
    assert model.visual.proj is not None  # restored
    assert pre.shape[1] == model.visual.transformer.width and not torch.allclose(pre, embedding)
    torch.testing.assert_close(pre, reference)
    with torch.no_grad():
        both = projection.image_encoder(model)(images)  # the embed stage's pass: the embedding derived from pre
    torch.testing.assert_close(both["pre_projection_features"], reference)
    torch.testing.assert_close(both["image_features"], embedding)


def test_probe_split_sets_validation_aside_then_draws_k_shots_per_class():
    from pipeline.stages.heads.splits import probe_split

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
    from pipeline.stages.heads.splits import probe_split

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
    from pipeline.stages import StageContext, StageResult
    from pipeline.stages.heads.linear_probe import linear_probe
    from pipeline.store.cache import StageCache

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8)) * 2
    train_y, test_y = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train = StageResult({"pre_projection_features": centres[train_y] + rng.normal(size=(90, 8)), "labels": train_y}, "train-k", "r1")
    test = StageResult({"pre_projection_features": centres[test_y] + rng.normal(size=(30, 8)), "labels": test_y}, "test-k", "r2")
    head = HeadSpec("linear_probe", k_shot=4, seed=1)
    cache = StageCache(store)
    stages = StageContext(cache, {"model": "m", "dataset": "d"}, {})
    first = linear_probe(stages, head, train, test, None, 3)
    again = linear_probe(stages, head, train, test, None, 3)
    assert first.run_id == again.run_id and first["logits"].shape == (30, 3)
    run = store.client.get_run(first.run_id)
    assert run.data.tags["validation_source"] == "carved" and run.data.tags["k_shot"] == "4"
    assert run.data.metrics["examples_per_class"] == 4 and run.data.metrics["C"] == pytest.approx(1 / run.data.metrics["lambda"])
    assert len(first["curve_lambda"]) == len(first["curve_accuracy"]) >= 7
    assert np.all(np.diff(first["curve_lambda"]) > 0)  # stored in λ order, ready to plot
    assert "validation_curve.png" in {f.path for f in store.client.list_artifacts(first.run_id)}
    other_seed = linear_probe(StageContext(cache, {}, {}), replace(head, seed=2), train, test, None, 3)
    assert other_seed.run_id != first.run_id


def test_head_configs_are_checked_before_anything_runs():
    assert HeadSpec.from_cfg({"name": "zeroshot"}).labels() == {"head": "zeroshot", "k_shot": "-", "seed": "-"}
    full = HeadSpec.from_cfg({"name": "linear_probe", "k_shot": None, "seed": 3})
    assert full.labels() == {"head": "linear_probe", "k_shot": "all", "seed": "3", "features": "pre_projection"}
    for bad, message in [({"k_shot": 0}, "head.k_shot=0"), ({"features": "logits"}, "head.features='logits'"),
                         ({"val_fraction": 1.0}, "head.val_fraction=1.0"), ({"seed": "x"}, "head.seed='x'")]:
        with pytest.raises(PipelineError, match=message.replace(".", r"\.").replace("(", r"\(")):
            HeadSpec.from_cfg({"name": "linear_probe", **bad})


def test_probes_need_a_train_split_and_refuse_test_only_copies(shapes_root):
    from pipeline.data.datasets import DatasetSpec, probe_splits

    base = {"name": "shapes", "task": "zeroshot_classification", "root": str(shapes_root), "split": "test",
            "main_metric": "acc1", "train_split": "train"}
    train, validation = probe_splits(DatasetSpec.from_cfg(base))
    assert (train.split, validation) == ("train", None)
    _, validation = probe_splits(DatasetSpec.from_cfg({**base, "validation_split": "val"}))
    assert validation.split == "val"
    refusals = [({"root": "/data/wds_cifar10_test"}, "source=clip_benchmark"),
                ({"source": "datacomp", "root": "/data/x"}, "holds only the test split"),
                ({"train_split": None}, "has no train split"),
                ({"train_split": "test"}, "also the split the probe is scored on"),
                ({"validation_split": "test"}, "validation_split='test' is the split")]
    for change, message in refusals:
        with pytest.raises(PipelineError, match=message.replace(".", r"\.").replace("(", r"\(")):
            probe_splits(DatasetSpec.from_cfg({**base, **change}))


def test_a_probe_is_refused_where_its_task_has_none():
    from pipeline.jobs.spec import JobSpec
    from tests.conftest import compose_config

    with pytest.raises(PipelineError, match="head=linear_probe fits single-label classes; dataset mscoco_captions is "
                                            "a captioning task: use head=zeroshot"):
        JobSpec.from_cfg(compose_config("dataset=mscoco_captions", "head=linear_probe"))


def test_the_catalog_says_which_splits_probes_can_use():
    """DataComp's copies are refused, CLIP_benchmark's give the train split, test-only sets have none."""
    from pipeline.data.datasets import DatasetSpec, probe_splits
    from tests.conftest import compose_config

    def spec(*overrides):
        return DatasetSpec.from_cfg(compose_config(*overrides).dataset)

    with pytest.raises(PipelineError, match="dataset.source=clip_benchmark"):
        probe_splits(spec("dataset=cifar10"))
    train, _ = probe_splits(spec("dataset=cifar10", "dataset.source=clip_benchmark"))
    assert train.split == "train" and train.root.endswith("clip-benchmark/wds_cifar10/tree/main")
    with pytest.raises(PipelineError, match="has no train split"):
        probe_splits(spec("dataset=imagenet-a", "dataset.source=clip_benchmark"))


def test_a_test_only_source_fails_in_one_line_before_any_run(tmp_path):
    from tests.conftest import run_pipeline

    proc = run_pipeline(tmp_path, "head=linear_probe", "dataset=vtab/cifar100")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "holds only the test split" in proc.stderr and "dataset.source=clip_benchmark" in proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_pre_projection_features_are_refused_for_other_towers():
    from pipeline.stages.embed import projection

    assert projection.tower_kind("ViT-B-32") == "vit" and projection.tower_kind("RN50") == "resnet"
    with pytest.raises(PipelineError, match="head.features=embedding"):
        projection.tower_kind("convnext_base")
    with pytest.raises(PipelineError, match="head.features=embedding"):
        projection.tower_kind("coca_ViT-B-32")


@pytest.mark.slow
def test_a_k_shot_sweep_on_the_tiny_model_end_to_end(tmp_path, shapes_root, tiny_checkpoint):
    """Zero-shot first, then 1..16-shot and full probes over 3 seeds: the test split is never encoded again, the
    train split once; mean accuracy grows with k; a repeat is served entirely from the cache."""
    from collections import Counter

    import pandas as pd

    from pipeline.jobs.scoring import run_job
    from pipeline.store import tracking
    from tests.conftest import asset_overrides, compose_config, run_pipeline

    assets = asset_overrides(shapes_root, tiny_checkpoint)
    sweep = ["-m", "head=linear_probe", "head.k_shot=1,2,4,8,16,null", "head.seed=0,1,2", *assets]

    def finished():
        store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
        return store, store.client.search_runs([store.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)

    def ok(proc):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    outputs = tmp_path / "outputs"
    run_job(compose_config(*assets, f"tracking.uri=sqlite:///{outputs}/mlflow.db", "num_workers=0",
                           f"tracking.artifact_location={outputs}/mlartifacts"))  # zero-shot, in this process
    ok(run_pipeline(tmp_path, *sweep))
    store, runs = finished()
    counts = Counter((r.data.tags["stage"], r.data.tags.get("split", "")) for r in runs)
    assert counts[("embed", "test")] == 1 and counts[("embed", "train")] == 1
    assert counts[("classify", "")] == 1 + 18 and counts[("job", "")] == 1 + 18
    [test_images] = [r for r in runs if r.data.tags.get("split") == "test"]
    stored = {name: np.load(store.client.download_artifacts(test_images.info.run_id, f"{name}.npy", str(tmp_path)))
              for name in ("pre_projection_features", "image_features")}
    assert stored["pre_projection_features"].shape[0] == stored["image_features"].shape[0] == 480
    assert not np.allclose(stored["pre_projection_features"], stored["image_features"])  # both kept, from one pass
    jobs = [r.data.tags for r in runs if r.data.tags["stage"] == "job" and r.data.tags["head"] == "linear_probe"]
    assert Counter((t["k_shot"], t["seed"]) for t in jobs) == Counter(
        (k, s) for k in ("1", "2", "4", "8", "16", "all") for s in ("0", "1", "2"))

    [sweep_dir] = [p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/fewshot.csv")]
    [row] = pd.read_csv(sweep_dir / "fewshot.csv").to_dict("records")
    means = [row[f"{k}-shot"] for k in (1, 2, 4, 8, 16)]
    assert all(b >= a - 0.02 for a, b in zip(means, means[1:])), means
    assert means[-1] >= means[0] + 0.05 and row["seeds"] == 3 and not np.isnan(row["zero-shot"])
    assert (sweep_dir / "fewshot.png").stat().st_size > 10_000
    table = pd.read_csv(sweep_dir / "table.csv")
    assert set(table["head"]) == {"linear_probe", *(f"linear_probe {k}-shot" for k in (1, 2, 4, 8, 16))}

    again = ok(run_pipeline(tmp_path, *sweep))
    _, rerun = finished()
    added = Counter(r.data.tags["stage"] for r in rerun) - Counter(r.data.tags["stage"] for r in runs)
    assert added == Counter({"job": 18, "aggregate": 1, "sweep": 1})
    assert " MISS " not in again.stderr and "loading tiny-clip" not in again.stderr


def test_probe_features_are_the_papers_or_clip_benchmarks():
    """pre_projection: the tower's stored penultimate features (a ResNet's embedding); embedding: CLIP_benchmark's
    L2-normalized embedding."""
    from pipeline.stages import StageResult
    from pipeline.stages.heads.linear_probe import probe_features

    pre, emb = np.arange(6.0).reshape(2, 3), np.array([[3.0, 4.0], [0.0, 2.0]])
    images = StageResult({"pre_projection_features": pre, "image_features": emb}, "k", "r")
    assert np.array_equal(probe_features(images, HeadSpec("linear_probe")), pre)
    assert np.allclose(probe_features(images, HeadSpec("linear_probe", features="embedding")), [[0.6, 0.8], [0, 1]])
    resnet = StageResult({"image_features": emb}, "k", "r")
    assert np.array_equal(probe_features(resnet, HeadSpec("linear_probe"), pre_is_embedding=True), emb)
    with pytest.raises(PipelineError, match="no pre-projection features"):
        probe_features(resnet, HeadSpec("linear_probe"))


def test_carving_keeps_single_example_classes_in_train_and_says_when_it_cannot():
    from pipeline.stages.heads.splits import carve_validation

    labels = np.array([0] * 10 + [1] * 10 + [2])
    train, val = carve_validation(labels, 0.2, seed=0)
    assert 20 in train and np.bincount(labels[val], minlength=3).tolist() == [2, 2, 0]
    assert sorted(np.concatenate([train, val])) == list(range(21))
    with pytest.raises(PipelineError, match="head.val_fraction"):
        carve_validation(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 0.2, seed=0)  # 2 validation examples for 4 classes


def test_a_provided_validation_split_is_never_fitted():
    """Validation rows follow train's; they are only validated on, and the full probe refits on both once."""
    from pipeline.stages.heads.splits import probe_split

    labels = np.array([0, 1] * 10 + [0, 1] * 3)
    provided = np.arange(20, 26)
    for k_shot in (None, 2):
        split = probe_split(labels, k_shot, 0.2, seed=0, provided_validation=provided)
        assert split.validation_source == "provided" and list(split.validation) == list(provided)
        assert not set(split.fit) & set(provided) and split.fit.max() < 20
    assert len(probe_split(labels, 2, 0.2, 0, provided).fit) == 4


def test_a_seed_sweep_over_a_deterministic_full_probe_reuses_its_run():
    """With a provided validation split the full probe draws nothing: its key ignores the seed (and the carved
    share); k-shot probes and carved splits keep both."""
    from pipeline.stages.heads.linear_probe import probe_key

    full, shots = HeadSpec("linear_probe"), HeadSpec("linear_probe", k_shot=4)
    assert probe_key(full, "tr", "te", "va") == probe_key(replace(full, seed=1, val_fraction=0.3), "tr", "te", "va")
    assert probe_key(shots, "tr", "te", "va") != probe_key(replace(shots, seed=1), "tr", "te", "va")
    assert probe_key(full, "tr", "te", None) != probe_key(replace(full, seed=1), "tr", "te", None)
    assert probe_key(full, "tr", "te", None) != probe_key(replace(full, val_fraction=0.3), "tr", "te", None)


def test_the_embedding_from_the_probe_pass_is_encode_images_bit_for_bit(tiny_checkpoint):
    """The zero-shot path's features are unchanged by the pass that also keeps pre-projection features: equal,
    not close, in fp32 and under bfloat16 autocast."""
    import open_clip
    import torch

    from pipeline.models.loading import register_project_architectures
    from pipeline.stages.embed.projection import image_encoder

    register_project_architectures()
    model, _, _ = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(tiny_checkpoint))
    model.eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            both = image_encoder(model)(images)
            reference = model.encode_image(images)
        assert both["image_features"].dtype == reference.dtype
        assert torch.equal(both["image_features"], reference)
        assert model.visual.proj is not None  # restored after the pass


@pytest.mark.slow
def test_a_job_validates_on_the_datasets_own_validation_split(tmp_path, shapes_root, tiny_checkpoint):
    """A copy of shapes whose `val` split is a third folder: the job embeds it as its own cached split, and the
    probe run says its validation was provided."""
    from pipeline.jobs.scoring import run_job
    from pipeline.store import tracking
    from tests.conftest import compose_config

    root = tmp_path / "shapes"
    root.mkdir()
    for entry in shapes_root.iterdir():
        (root / entry.name).symlink_to(entry)
    (root / "val").symlink_to(shapes_root / "test")
    run_job(compose_config("head=linear_probe", "head.k_shot=2", "dataset.validation_split=val", f"dataset.root={root}",
                           f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                           f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0"))
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables")
    runs = store.client.search_runs([store.experiment_id], "attributes.status = 'FINISHED'")
    assert sorted(r.data.tags["split"] for r in runs if r.data.tags["stage"] == "embed") == ["test", "train", "val"]
    [job] = [r for r in runs if r.data.tags["stage"] == "job"]
    probe_run = store.client.get_run(job.data.tags["run.classify"])
    assert "run.embed_validation" in job.data.tags and probe_run.data.tags["validation_source"] == "provided"
    assert probe_run.data.metrics["validation_examples"] == 480 and probe_run.data.metrics["examples_per_class"] == 2
