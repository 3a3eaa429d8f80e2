"""The task types and their registry: every registered task, an unknown one refused in one line, a toy task type
added in one module and run as a job; metric definitions on worked examples, the reference where one runs
offline, and a real job per task on a synthetic stand-in in the source's on-disk layout."""
import math

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_retrieval
from sklearn.metrics import f1_score

from pipeline import tasks
from pipeline.data import datasets, reading
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.stages.classify import normalize
from pipeline.stages.embed.texts import encode_texts
from pipeline.stages.score import metrics
from pipeline.tasks import captioning, classification, multilabel, retrieval, selection, winogavil
from pipeline.tasks.retrieval import OUTCOMES as RETRIEVAL_OUTCOMES
from pipeline.tasks.retrieval import encode_retrieval_images
from pipeline.tasks.winogavil import winogavil_cue_text
from tests import synthetic
from tests.conftest import compose_config


# -- the registry ----------------------------------------------------------------------------------------
def test_every_task_type_is_registered_under_the_name_its_keys_hold():
    kinds = {classification.Classification: "zeroshot_classification", retrieval.Retrieval: "zeroshot_retrieval",
             winogavil.WinoGAViL: "winogavil", multilabel.Multilabel: "multilabel_classification",
             selection.Selection: "image_caption_selection", captioning.Captioning: "captioning"}
    assert {type(task): name for name, task in tasks.REGISTRY.items()} == kinds
    assert [name for name, task in tasks.REGISTRY.items() if task.probe] == ["zeroshot_classification"]
    assert [name for name, task in tasks.REGISTRY.items() if task.generates] == ["captioning"]


def test_an_unknown_task_or_a_format_it_does_not_read_is_one_line():
    spec = datasets.DatasetSpec("x", "zeroshot_clasification", "/x", "test", "acc1")
    with pytest.raises(PipelineError, match=r"dataset.task='zeroshot_clasification' is not a task type; use one of "
                                            r"captioning, image_caption_selection, .*zeroshot_retrieval \(pipeline/tasks/"):
        tasks.check(spec)
    with pytest.raises(PipelineError, match="task winogavil reads formats hf, not wds"):
        tasks.check(datasets.DatasetSpec("x", "winogavil", "/x", "test", "avg_jaccard_score"))


class TopTwo(tasks.Task):
    """A toy task type, whole in this module: single-label images scored by whether the label is among the two
    classes a zero-shot classifier ranks highest; resampled by sample."""

    name = "top2_classification"
    formats = ("wds",)
    class_prompts = True
    metrics = ("acc2",)

    def encode_images(self, loader, spec, precision, batch_size, num_workers):
        return classification.encode_classification_images(loader, spec, precision, batch_size, num_workers)

    def outputs(self, images, text, recipe, device):
        return classification.classification_outputs(images, text, recipe, device)

    def scores(self, spec, upstream, options):
        from pipeline.stages.score import TaskScores, uncertainty

        labels = upstream["embed_image"]["labels"]
        correct = metrics.top_k_correct(upstream["classify"]["logits"], labels, 2)
        seed = uncertainty.dataset_seed(spec.name)
        replicates = {"acc2": np.concatenate([correct[block].mean(axis=1)
                                              for block in uncertainty.draw_blocks(len(labels), seed=seed)])}
        return TaskScores({"acc2": float(correct.mean())}, {"correct2": correct}, replicates, len(labels),
                          uncertainty.structure_digest([labels]))


def test_a_task_type_added_in_one_module_runs_as_a_job(tmp_path, tiny_checkpoint, shapes_root, monkeypatch):
    """The toy task above, registered (its one line) and given its precision line on the command line (what a
    line in each conf/protocol file gives): a job of it encodes, classifies and scores through the stages, which
    know nothing of it, and is served from the cache the second time."""
    monkeypatch.setitem(tasks.REGISTRY, TopTwo.name, TopTwo())
    cfg = job_config(tmp_path, tiny_checkpoint, f"dataset.root={shapes_root}", f"dataset.task={TopTwo.name}",
                     "dataset.main_metric=acc2", "metric=main", "prompts=classname",
                     f"+protocol.autocast.{TopTwo.name}={{image: false, text: false, logits: false}}")
    result = run_job(cfg)
    plain = run_job(job_config(tmp_path, tiny_checkpoint, f"dataset.root={shapes_root}", "prompts=classname"))
    assert result.metric == "acc2" and plain.metrics["acc1"] <= result.value <= plain.metrics["acc5"]
    assert result.metrics["ci_low/acc2"] <= result.value <= result.metrics["ci_high/acc2"]
    assert run_job(cfg).score_run_id == result.score_run_id


# -- group metrics (WILDS, fairness) -------------------------------------------------------------------
def one_hot_logits(predictions, classes=4):
    return np.eye(classes, dtype=np.float32)[predictions]


def test_worst_group_accuracy_worked_example():
    labels = np.array([0, 1, 2, 3, 0, 1])
    predictions = np.array([0, 1, 0, 0, 0, 0])   # right: 1 1 0 0 1 0
    groups = np.array([0, 0, 1, 1, 2, 2])        # group acc: 1.0, 0.0, 0.5
    logits = one_hot_logits(predictions)
    assert metrics.worst_group_accuracy(logits, labels, groups) == 0.0
    # a group id with no samples (3) is ignored rather than counted as 0 or NaN
    assert metrics.group_accuracies(metrics.top_k_correct(logits, labels, 1), groups) == {0: 1.0, 1: 0.0, 2: 0.5}


def test_fmow_worst_region_keeps_other_as_datacomps_code_does():
    """DataComp's eval_utils/wilds_eval.py (mlfoundations/datacomp@4a8df19) builds the regions' group names with
    `region_grouper.group_field_str(group_idx)` (l.208), which, with no metadata map set on its WILDSEvaluator
    (l.112-114), reads `region = 5` (wilds 2.0.0, common/grouper.py:161-179). So its test
    `... == 0 or "Other" in group_str: continue` (l.213-217) only skips empty regions, and `acc_worst_region` is
    the minimum over every region with samples (l.223-226), "Other" (5) included."""
    from omegaconf import OmegaConf

    from pipeline.stages import StageResult
    from pipeline.tasks.classification import classification_scores
    from tests.conftest import CONF

    spec = datasets.DatasetSpec.from_cfg(OmegaConf.merge(OmegaConf.load(CONF / "dataset" / "wilds" / "fmow.yaml"),
                                                         {"root": "unused"}))
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0])
    predictions = labels.copy()
    predictions[8] = 1                                # the single "Other" image is wrong
    regions = np.array([0, 0, 1, 1, 2, 2, 4, 4, 5])   # region 3 (Americas) has no image
    metadata = np.stack([regions, np.zeros(9, int), labels], axis=1)
    images = StageResult({"labels": labels, "metadata": metadata}, "k", "r")
    predicted = StageResult({"logits": one_hot_logits(predictions), "predictions": predictions}, "k", "r")
    scores = classification_scores(spec, images, predicted).values
    assert scores["acc_worst_region"] == 0.0          # "Other" alone decides it
    assert scores["acc1"] == pytest.approx(8 / 9) and scores["acc_worst_year"] == pytest.approx(8 / 9)
    metadata[8, 0] = 4                                # move it to Oceania: still the worst region, now 2/3
    assert classification_scores(spec, images, predicted).values["acc_worst_region"] == pytest.approx(2 / 3)


def test_top5_worst_group_for_dollar_street():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 8)).astype(np.float32)
    labels = rng.integers(0, 8, 40)
    groups = np.repeat([0, 1, 2, 3], 10)
    expected = min(float(np.mean([labels[i] in np.argsort(-logits[i])[:5] for i in range(g * 10, g * 10 + 10)]))
                   for g in range(4))
    assert metrics.worst_group_accuracy(logits, labels, groups, k=5) == pytest.approx(expected)


def test_macro_f1_counts_only_classes_present():
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 2, 1, 1])  # class 2 is predicted but absent from the ground truth
    assert metrics.macro_f1_present(predictions, labels) == pytest.approx(f1_score(labels, predictions, average="macro",
                                                                                   labels=[0, 1]))
    assert metrics.macro_f1_present(predictions, labels) > f1_score(labels, predictions, average="macro")


# -- retrieval -----------------------------------------------------------------------------------------
def test_retrieval_worked_example():
    images = np.eye(3, dtype=np.float32)
    # captions 0,1 belong to image 0; caption 2 to image 1; caption 3 to image 2
    captions = normalize(np.array([[1, 0.2, 0], [0.1, 1, 0], [0, 1, 0.5], [0, 0.9, 1]], dtype=np.float32))
    owner = np.array([0, 0, 1, 2])
    outcomes = metrics.retrieval_outcomes(captions @ images.T, owner)
    assert outcomes["image_rank"].tolist() == [1, 2, 1, 1]
    assert outcomes["image_found"].tolist() == [[True] * 3, [False, True, True], [True] * 3, [True] * 3]
    # image 1's own caption 2 scores 0.89 against it, but caption 1 (image 0's) scores 0.995
    assert outcomes["text_rank"].tolist() == [1, 2, 1]
    assert outcomes["text_found"][:, 0].tolist() == [True, False, True]
    values = metrics.retrieval_metrics(*(outcomes[name] for name in RETRIEVAL_OUTCOMES))
    assert values["image_retrieval_recall@1"] == 0.75 and values["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert values["text_retrieval_recall@5"] == 1.0
    assert values["mean_recall@1"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert values["image_retrieval_mean_rank"] == 1.25 and values["text_retrieval_mean_rank"] == pytest.approx(4 / 3)


@pytest.fixture(scope="module")
def loader(tiny_checkpoint):
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu"))


def test_retrieval_matches_clip_benchmark(loader, tmp_path):
    root = synthetic.write_wds_retrieval(tmp_path / "retrieval", per_class=3)
    spec = datasets.DatasetSpec("retrieval_shapes", "zeroshot_retrieval", str(root), "test", "mean_recall@1")
    loaded = loader.get()
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    reference_loader = torch.utils.data.DataLoader(datasets.build(spec, loaded.preprocess).batched(
        16, collation_fn=image_captions_collate_fn), batch_size=None)
    reference = zeroshot_retrieval.evaluate(loaded.model, reference_loader, loaded.tokenizer, "cpu", amp=False,
                                            recall_k_list=[1, 5, 10])

    images = encode_retrieval_images(loader, spec, "fp32", batch_size=8, num_workers=0).arrays
    captions = encode_texts(loader, [str(c) for c in images["captions"]], "fp32").arrays["text_features"]
    outcomes = metrics.retrieval_outcomes(captions @ normalize(images["image_features"]).T, images["caption_image"])
    ours = metrics.retrieval_metrics(*(outcomes[name] for name in RETRIEVAL_OUTCOMES))
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    assert ours["mean_recall@1"] > 0.1  # better than chance (1/36 images)


# -- WinoGAViL -----------------------------------------------------------------------------------------
def test_winogavil_cue_prompt():
    assert winogavil_cue_text("Apple") == "An apple" and winogavil_cue_text("dog") == "A dog"


def test_winogavil_scores_worked_example():
    truths = [np.array([1, 1, 0, 0, 0], bool), np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], bool)]
    sims = [np.array([0.9, 0.1, 0.8, 0.0, 0.0]), np.array([0.9, 0, 0, 0, 0, 0, 0, 0, 0, 0.8])]
    chosen = [metrics.winogavil_predictions(s, int(t.sum())) for s, t in zip(sims, truths)]
    assert chosen[0].tolist() == [True, False, True, False, False]
    scores = metrics.winogavil_scores(truths, chosen)
    assert scores["jaccard_score_5"] == pytest.approx(1 / 3) and scores["jaccard_score_10"] == 1.0
    assert scores["jaccard_score_10-12"] == 1.0 and scores["avg_jaccard_score"] == pytest.approx(2 / 3)
    assert math.isnan(scores["jaccard_score_12"])


# -- a real job per task type on synthetic stand-ins ---------------------------------------------------
def job_config(tmp_path, tiny_checkpoint, *overrides):
    return compose_config(f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                          f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0", *overrides)


@pytest.mark.parametrize("dataset, writer, main", [
    ("retrieval/flickr_1k_test_image_text_retrieval", synthetic.write_hf_retrieval, "mean_recall@1"),
    ("misc/winogavil", synthetic.write_hf_winogavil, "jaccard_score_10-12"),
    ("wilds/fmow", lambda root: synthetic.write_wds_classification(root, metadata_fields=3, groups=6), "acc_worst_region"),
    ("wilds/iwildcam", lambda root: synthetic.write_wds_classification(root, metadata_fields=9), "F1-macro_all"),
    ("wilds/camelyon17", lambda root: synthetic.write_wds_classification(root, metadata_fields=3), "acc1"),
    ("fairness/dollar_street", lambda root: synthetic.write_wds_classification(root, metadata_fields=3), "acc_top5_wg"),
    ("fairness/geode", lambda root: synthetic.write_wds_classification(root, metadata_fields=2), "acc_wg"),
])
def test_job_per_task_type(tmp_path, tiny_checkpoint, dataset, writer, main):
    cfg = job_config(tmp_path, tiny_checkpoint, f"dataset={dataset}", f"data_root={tmp_path / 'mirror'}", "metric=main")
    writer(__import__("pathlib").Path(cfg.dataset.root))
    result = run_job(cfg)
    assert result.metric == main and 0.0 <= result.value <= 1.0
    assert result.value > 0.3, result.metrics  # the tiny model is far above chance on shapes


def test_image_folder_with_folder_names_as_classes(tmp_path, tiny_checkpoint):
    root = synthetic.write_image_folder(tmp_path / "miniplaces")
    cfg = job_config(tmp_path, tiny_checkpoint, "dataset=wds", "dataset.name=miniplaces", "dataset.format=folder",
                     f"dataset.root={root}", "prompts=miniplaces")
    assert datasets.describe(datasets.DatasetSpec.from_cfg(cfg.dataset)).classnames == sorted(synthetic.CLASSES)
    assert run_job(cfg).value >= 0.8


@pytest.mark.parametrize("as_dict", [False, True])
def test_hf_mirror_may_be_a_save_to_disk_folder(tmp_path, as_dict):
    import datasets as hf

    rows = hf.load_dataset(str(synthetic.write_hf_retrieval(tmp_path / "parquet")), split="test")
    (hf.DatasetDict({"test": rows}) if as_dict else rows).save_to_disk(str(tmp_path / "saved"))
    spec = datasets.DatasetSpec("retrieval/x", "zeroshot_retrieval", str(tmp_path / "saved"), "test", "mean_recall@1",
                                format="hf")
    assert reading.load_hf(spec).column("caption") == rows["caption"]


def test_generic_wds_config_reads_any_webdataset(tmp_path, tiny_checkpoint, shapes_root):
    cfg = job_config(tmp_path, tiny_checkpoint, "dataset=wds", "dataset.name=my_shapes", f"dataset.root={shapes_root}")
    result = run_job(cfg)
    assert result.metric == "acc1" and result.value >= 0.8


# -- image-caption selection: SugarCrepe's seven subsets and Winoground on the bundled stand-ins -----------------
def test_winoground_job_scores_its_examples(tmp_path, tiny_checkpoint, compositional_root):
    cfg = job_config(tmp_path, tiny_checkpoint, "dataset=winoground", f"data_root={compositional_root}")
    result = run_job(cfg)
    assert result.metric == "group_score" and result.metrics["num_instances"] == 12 and result.metrics["n"] == 12
    assert {"acc", "text_acc", "image_acc", "text_score", "image_score"} <= set(result.metrics)
    assert result.metrics["ci_low/group_score"] <= result.value <= result.metrics["ci_high/group_score"]


@pytest.mark.slow
def test_a_sugar_crepe_sweep_encodes_cocos_images_once(tmp_path, tiny_checkpoint, compositional_root):
    import pandas as pd

    from tests.conftest import run_pipeline

    done = run_pipeline(tmp_path, "-m", "suite=sugar_crepe", f"data_root={compositional_root}",
                        f"model.pretrained={tiny_checkpoint}", "num_workers=0")
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert said.count("[embed] MISS embed-image") == 1 and said.count("[embed] HIT  embed-image") == 6
    [folder] = (tmp_path / "outputs" / "multirun").glob("*/*")
    table = pd.read_csv(folder / "table.csv")
    subsets = [f"sugar_crepe/{s}" for s in ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel",
                                            "swap_att", "swap_obj")]
    assert list(table.columns[5:12]) == subsets
    assert table.loc[0, "mean"] == pytest.approx(table.loc[0, subsets].mean(), abs=1e-4)  # CLIP_benchmark's average
    results = pd.read_csv(folder / "results.csv")
    acc = results[results["metric"] == "acc"]
    assert len(acc) == 7 and (acc["ci_low"] <= acc["value"]).all() and (acc["value"] <= acc["ci_high"]).all()
