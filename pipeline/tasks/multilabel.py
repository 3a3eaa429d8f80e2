"""Multi-label classification: Pascal VOC 2007 as the CLIP paper scored it, each class's average precision from
the zero-shot logits against the devkit's flags (11-point mAP, and clip_benchmark's mAP with its own sort).
Resampled by image, with its flags for every class."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from pipeline.data.datasets import DatasetSpec
from pipeline.stages.score import TaskScores, metrics, multilabel, ties, uncertainty
from pipeline.tasks import Task
from pipeline.tasks.classification import classification_outputs

if TYPE_CHECKING:
    import torch

    from pipeline.models.loading import ModelLoader
    from pipeline.models.precision import Recipe
    from pipeline.stages import StageResult
    from pipeline.store.artifacts import StageOutput


class Multilabel(Task):
    name = "multilabel_classification"
    formats = ("voc",)
    class_prompts = True
    metrics = metrics.MULTILABEL_METRICS

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        """Image features with each image's row of the devkit's ground truth, (images, classes) flags 1, -1, 0."""
        from pipeline.data import reading
        from pipeline.stages.embed.images import encode_indexed

        return encode_indexed(loader, spec, precision, batch_size, num_workers, reading.multilabel_batches, "labels")

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        return classification_outputs(images, text, recipe, device)  # the same logits, scored per class

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        return multilabel_scores(spec, upstream["embed_image"], upstream["classify"])


def multilabel_scores(spec: DatasetSpec, images: StageResult, predicted: StageResult) -> TaskScores:
    """VOC2007's mAPs from the logits and the devkit's flags; both are kept, since resampling needs every score."""
    outcomes = {"scores": predicted["logits"], "labels": images["labels"]}
    values = {name: float(value[0]) for name, value in multilabel.multilabel_metrics(predicted["logits"], images["labels"]).items()}
    values = {**values, "num_samples": float(len(outcomes["labels"])), "num_classes": float(outcomes["scores"].shape[1]),
              ties.TIES: float(ties.ranking_ties(predicted["logits"], images["labels"]))}
    replicates = multilabel_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return TaskScores(values, outcomes, replicates, len(outcomes["labels"]),
                  uncertainty.structure_digest([outcomes["labels"]]))


def multilabel_replicates(outcomes: Mapping[str, np.ndarray], resamples: int = uncertainty.RESAMPLES,
                          seed: int | Sequence[int] = uncertainty.SEED) -> dict[str, np.ndarray]:
    """Images resampled with their flags for every class: each AP is computed on the resample's counts of each
    image (`multilabel.multilabel_metrics` with weights), one block of replicates at a time."""
    scores, truth = outcomes["scores"], outcomes["labels"]
    parts: dict[str, list[np.ndarray]] = {}
    n = len(truth)
    for block in uncertainty.draw_blocks(n, resamples, seed):
        offsets = block + n * np.arange(len(block))[:, None]
        counts = np.bincount(offsets.ravel(), minlength=n * len(block)).reshape(len(block), n)
        for name, values in multilabel.multilabel_metrics(scores, truth, counts).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
