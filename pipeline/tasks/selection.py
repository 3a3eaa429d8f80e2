"""Image-caption selection, as clip_benchmark scores SugarCrepe and Winoground (image_caption_selection.py): each
instance's images against its captions, one product per instance, argmax deciding; text, image and group scores.
Its texts are each instance's captions, with the images it shows. Resampled by unit (SugarCrepe's image,
Winoground's example), with all its instances."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.data.datasets import DatasetInfo, DatasetSpec
from pipeline.stages.score import TaskScores, metrics, ties, uncertainty
from pipeline.tasks import Task

if TYPE_CHECKING:
    import torch

    from pipeline.models.loading import ModelLoader
    from pipeline.models.precision import Recipe
    from pipeline.stages import StageResult
    from pipeline.stages.embed import Texts
    from pipeline.store.artifacts import StageOutput


class Selection(Task):
    name = "image_caption_selection"
    formats = ("sugar_crepe", "hf")
    metrics = metrics.SELECTION_METRICS

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        """Image features with each image's name, which the instances refer to."""
        from pipeline.data import reading
        from pipeline.stages.embed.images import encode_indexed

        return encode_indexed(loader, spec, precision, batch_size, num_workers, reading.selection_images,
                              "image_names")

    def texts(self, dataset: DatasetInfo, images: Callable[[], StageResult]) -> Texts:
        def texts():  # the captions of each instance, with the images it shows (the image stage is shared)
            from pipeline.data import reading

            captions, shown = reading.selection_instances(dataset.spec)
            return captions, {"instance_images": np.array(shown, dtype=str)}
        return texts

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        return selection_outputs(images, text, recipe, device)

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        return selection_scores(spec, upstream["embed_image"], upstream["classify"])


def selection_outputs(images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
    """Each instance's (images, captions) similarities, (N, I, C), from the images it names and its captions (C per
    instance, in order), and its resampling unit: its first image (SugarCrepe's entries share images)."""
    import torch

    from pipeline.stages.classify import image_rows, normalized_pair, product
    from pipeline.store.artifacts import StageOutput

    image_features, text_features = normalized_pair(images.arrays, text.arrays, recipe, device)
    shown = text["instance_images"]
    rows = image_rows(images, shown)                                             # (N, I)
    captions = text_features.reshape(len(shown), -1, text_features.shape[-1])  # (N, C, dim), in order
    pictures = image_features[torch.as_tensor(rows, device=image_features.device)]
    # clip_benchmark's image_caption_selection.py:184-190: one `images_emb @ texts_emb.t()` per instance, which torch
    # rounds otherwise than the same numbers inside one larger product (most of them at 512 dimensions); argmax
    # (l.193-194) then decides
    scores = np.stack([product(pictures[m], captions[m].T, recipe, device)
                       for m in range(len(shown))]).astype(np.float32)
    # an instance's equal captions (a negative word for word the caption) or images get bit-equal similarities
    same_text, same_image = ties.distinct(text_features.cpu()), ties.distinct(image_features.cpu())
    if same_text is not None:
        first = ties.first_within(same_text[1].numpy().reshape(captions.shape[:2]))
        scores = np.take_along_axis(scores, first[:, None, :], axis=2)
    if same_image is not None:
        first = ties.first_within(same_image[1].numpy()[rows])
        scores = np.take_along_axis(scores, first[:, :, None], axis=1)
    units = np.unique(rows[:, 0], return_inverse=True)[1].astype(np.int64)
    return StageOutput(arrays={"scores": scores, "units": units})


def selection_scores(spec: DatasetSpec, images: StageResult, predicted: StageResult) -> TaskScores:
    """SugarCrepe's and Winoground's metrics from each instance's similarities; resampled by unit."""
    outcomes = {**metrics.selection_outcomes(predicted["scores"]), "units": predicted["units"]}
    values = metrics.selection_values(outcomes)
    values = {**values, "num_instances": float(len(outcomes["units"])),
              ties.TIES: float(ties.selection_ties(predicted["scores"]).sum())}
    replicates = selection_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return TaskScores(values, outcomes, replicates, int(outcomes["units"].max()) + 1,
                  uncertainty.structure_digest([outcomes["units"]]))


def selection_replicates(outcomes: Mapping[str, np.ndarray], resamples: int = uncertainty.RESAMPLES,
                         seed: int | Sequence[int] = uncertainty.SEED) -> dict[str, np.ndarray]:
    """Units (SugarCrepe's images, Winoground's examples) resampled, each with all its instances: each metric is
    the share of the drawn units' instances it counts."""
    units = outcomes["units"]
    correct = np.stack([outcomes[name].astype(np.float64) for name in metrics.SELECTION_METRICS], axis=1)
    n_units = int(units.max()) + 1 if len(units) else 0
    parts = []
    for block in uncertainty.draw_blocks(n_units, resamples, seed):
        offsets = block + n_units * np.arange(len(block))[:, None]
        counts = np.bincount(offsets.ravel(), minlength=n_units * len(block)).reshape(len(block), n_units)
        weights = counts[:, units].astype(np.float64)  # how often each instance was drawn, with its unit
        parts.append((weights @ correct) / weights.sum(axis=1, keepdims=True))
    stacked = np.concatenate(parts)
    return {name: stacked[:, column] for column, name in enumerate(metrics.SELECTION_METRICS)}
