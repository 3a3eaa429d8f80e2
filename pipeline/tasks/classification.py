"""Zero-shot (single-label) classification, as clip_benchmark and DataComp score it: acc1 and acc5 from one
`torch.topk`, mean per-class recall from argmax, chance-adjusted acc1, a dataset's WILDS and fairness group and
extra metrics; a linear probe applies. Resampled by test sample (within groups for worst-group metrics)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.data.datasets import DatasetSpec
from pipeline.stages.score import TaskScores, metrics, ties, uncertainty
from pipeline.tasks import Task

if TYPE_CHECKING:
    import torch

    from pipeline.models.loading import ModelLoader
    from pipeline.models.precision import Recipe
    from pipeline.stages import StageResult
    from pipeline.store.artifacts import StageOutput


class Classification(Task):
    name = "zeroshot_classification"
    class_prompts = True
    probe = True
    metrics = metrics.CLASSIFICATION_METRICS

    def metric_names(self, spec: DatasetSpec) -> list[str]:
        return [*self.metrics, *spec.extra_metrics, *(group["name"] for group in spec.group_metrics)]

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        return encode_classification_images(loader, spec, precision, batch_size, num_workers)

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        return classification_outputs(images, text, recipe, device)

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        return classification_scores(spec, upstream["embed_image"], upstream["classify"])


def encode_classification_images(loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                                 num_workers: int) -> StageOutput:
    """Image features with each image's label and, for WILDS and fairness sets, its metadata row."""
    from pipeline.data import reading
    from pipeline.stages.embed.images import encode_batches, pinned
    from pipeline.store.artifacts import StageOutput

    loaded = loader.get()
    labels: list[int] = []
    metadata: list[np.ndarray] = []

    def collect(batch) -> None:
        labels.extend(int(label) for label in batch.fields["cls"])
        metadata.extend(batch.fields.get("npy", ()))

    batches = reading.classification_batches(spec, loaded.preprocess, batch_size, num_workers, pinned(loaded))
    encoded = encode_batches(loaded, batches, spec, precision, collect)
    arrays = {**encoded.arrays, "labels": np.array(labels, dtype=np.int64)}
    if metadata:
        arrays["metadata"] = np.stack(metadata).astype(np.int64)
    return StageOutput(arrays=arrays, metrics=encoded.metrics)


def classification_outputs(images: StageResult, text: StageResult, recipe: Recipe, device: torch.device
                           ) -> StageOutput:
    """The zero-shot logits and clip_benchmark's and DataComp's `pred = logits.argmax(axis=1)`
    (zeroshot_classification.py:225): the first maximum."""
    from pipeline.stages.classify import zero_shot_logits
    from pipeline.store.artifacts import StageOutput

    logits = zero_shot_logits(images.arrays, text.arrays, recipe, device)
    return StageOutput(arrays={"logits": logits, "predictions": logits.argmax(axis=1).astype(np.int64)})


def group_array(field: str) -> str:
    return f"group_{field}"


def classification_scores(spec: DatasetSpec, images: StageResult, predicted: StageResult) -> TaskScores:
    """acc1 and acc5 from clip_benchmark's `torch.topk` call, predictions (mean per-class recall, WILDS' metrics,
    DataComp's top-1 groups) from argmax, as the references decide each (`metrics.accuracy_outcomes`)."""
    logits, labels = predicted["logits"], images["labels"]
    n_classes = logits.shape[1]
    outcomes = {"labels": labels, "predictions": logits.argmax(axis=1), **metrics.accuracy_outcomes(logits, labels)}
    values = metrics.classification_values(outcomes, n_classes)
    extra = {name: metrics.EXTRA_METRICS[name] for name in spec.extra_metrics}
    for name, metric in extra.items():
        values[name] = metric(outcomes["predictions"], labels)
    groups: dict[str, tuple[str, int]] = {}
    for group in spec.group_metrics:
        field, k = spec.metadata_fields.index(group["field"]), int(group.get("k", 1))
        outcomes[group_array(group["field"])] = images["metadata"][:, field]
        if 1 < k <= n_classes and f"correct{k}" not in outcomes:  # top-5 is already there
            outcomes[f"correct{k}"] = metrics.top_k_correct(logits, labels, k)
        groups[group["name"]] = (group_array(group["field"]), k)
        values[group["name"]] = metrics.worst_group(metrics.group_correct(outcomes, k), images["metadata"][:, field])
    seed = uncertainty.dataset_seed(spec.name)
    replicates = classification_replicates(outcomes, n_classes, extra, groups, seed=seed)
    _, best, worst = ties.label_ranks(logits, labels)
    tied = ties.decided(best, worst, [k for k in (1, 5) if k <= n_classes])
    values = {**values, "num_samples": float(len(labels)), "num_classes": float(n_classes),
              ties.TIES: float(tied.sum())}
    order = [labels, *(outcomes[group_array(g["field"])] for g in spec.group_metrics)]
    return TaskScores(values, outcomes, replicates, len(labels), uncertainty.structure_digest(order))


def classification_replicates(outcomes: Mapping[str, np.ndarray], n_classes: int,
                              extra: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] = {},
                              groups: Mapping[str, tuple[str, int]] = {}, resamples: int = uncertainty.RESAMPLES,
                              seed: int | Sequence[int] = uncertainty.SEED) -> dict[str, np.ndarray]:
    """acc1, acc5 (torch.topk's verdicts), mean_per_class_recall (argmax's), acc1_adjusted and `extra`
    (name -> f(predictions, labels)) over resampled samples; each worst-group metric (name -> (group array name, k),
    `metrics.group_correct`) over samples resampled within its groups."""
    labels, predictions, correct1 = outcomes["labels"], outcomes["predictions"], outcomes["correct1"]
    correct5, predicted = outcomes.get("correct5"), predictions == labels
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["acc1", "acc5", "mean_per_class_recall", *extra]}
    for block in uncertainty.draw_blocks(len(labels), resamples, seed):
        parts["acc1"].append(correct1[block].mean(axis=1))
        parts["acc5"].append(correct5[block].mean(axis=1) if correct5 is not None else np.full(len(block), math.nan))
        parts["mean_per_class_recall"].append(uncertainty.balanced_recall(labels[block], predicted[block], n_classes))
        for name, metric in extra.items():
            parts[name].append(np.array([metric(predictions[idx], labels[idx]) for idx in block]))
    values = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    values["acc1_adjusted"] = metrics.chance_adjusted_accuracy(values["acc1"], n_classes)
    for name, (field, k) in groups.items():
        correct = metrics.group_correct(outcomes, k)  # None where the dataset has fewer than k classes
        values[name] = np.full(resamples, math.nan) if correct is None else np.array(
            [min(float(correct[i].mean()) for i in per_group)
             for per_group in uncertainty.grouped_draws(outcomes[field], resamples, seed)])
    return values
