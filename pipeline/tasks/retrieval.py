"""Zero-shot image-text retrieval, as clip_benchmark and DataComp score it: image and text recall@1/5/10 from
`torch.topk` per query, with mean ranks; the dataset's own captions are its texts (a webdataset's come with the
images; a multilingual `lines` set's name their images). Resampled by image, with all its captions."""
from __future__ import annotations

import itertools
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

OUTCOMES = ("image_found", "text_found", "image_rank", "text_rank")


class Retrieval(Task):
    name = "zeroshot_retrieval"
    formats = ("wds", "hf", "lines")
    metrics = metrics.RETRIEVAL_METRICS

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        return encode_retrieval_images(loader, spec, precision, batch_size, num_workers)

    def texts(self, dataset: DatasetInfo, images: Callable[[], StageResult]) -> Texts:
        spec = dataset.spec
        if spec.format == "lines":
            def texts():  # the job language's captions, each with its image's name
                from pipeline.data import reading

                captions, owners = reading.lines_captions(spec)
                return captions, {"caption_names": np.array(owners, dtype=str)}
            return texts
        return lambda: ([str(text) for text in images()["captions"]], {})

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        return retrieval_outputs(images, text, recipe, device)

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        return retrieval_scores(spec, upstream["embed_image"], upstream["classify"])


def encode_retrieval_images(loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Image features plus every caption and the index of its image (captions are embedded as text later); for a
    multilingual `lines` dataset the images alone, with their names, shared by its languages."""
    from pipeline.data import reading
    from pipeline.stages.embed.images import encode_batches, encode_indexed, pinned
    from pipeline.store.artifacts import StageOutput

    if spec.format == "lines":
        return encode_indexed(loader, spec, precision, batch_size, num_workers, reading.lines_images, "image_names")
    loaded = loader.get()
    captions: list[str] = []
    caption_image: list[int] = []
    image_ids = itertools.count()

    def collect(batch) -> None:
        for per_image in batch.fields["txt"]:
            image_id = next(image_ids)
            captions.extend(per_image)
            caption_image.extend([image_id] * len(per_image))

    batches = reading.retrieval_batches(spec, loaded.preprocess, batch_size, num_workers, pinned(loaded))
    encoded = encode_batches(loaded, batches, spec, precision, collect)
    return StageOutput(arrays={**encoded.arrays, "captions": np.array(captions, dtype=str),
                               "caption_image": np.array(caption_image, dtype=np.int64)}, metrics=encoded.metrics)


def retrieval_outputs(images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
    # The caption x image similarity matrix (25k x 5k for MSCOCO) is not stored: torch.topk's verdicts and the ranks
    # carry every metric.
    import torch

    from pipeline.stages.classify import caption_owners, equal_product, normalized_pair
    from pipeline.store.artifacts import StageOutput

    image_features, text_features = normalized_pair(images.arrays, text.arrays, recipe, device)
    owners, shown = caption_owners(images, text)
    if shown is not None:
        image_features = image_features[torch.as_tensor(shown, device=image_features.device)]
    scores = equal_product(text_features, image_features.T, recipe, device)  # zeroshot_retrieval.py:66
    return StageOutput(arrays={**metrics.retrieval_outcomes(scores, owners), "caption_image": owners})


def retrieval_scores(spec: DatasetSpec, images: StageResult, predicted: StageResult) -> TaskScores:
    """Recall@k from the classify stage's `torch.topk` verdicts (`metrics.retrieval_outcomes`), mean ranks from the
    ranks; resampled by image."""
    outcomes = {**{name: predicted[name] for name in OUTCOMES}, "caption_image": predicted["caption_image"]}
    values = metrics.retrieval_metrics(*(outcomes[name] for name in OUTCOMES))
    tied = [ties.decided(*predicted[f"{side}_rank_bounds"].T, metrics.RECALL_KS) for side in ("image", "text")]
    values = {**values, "num_images": float(len(predicted["text_rank"])),
              "num_captions": float(len(predicted["image_rank"])), ties.TIES: float(sum(t.sum() for t in tied))}
    replicates = retrieval_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return TaskScores(values, outcomes, replicates, len(outcomes["text_rank"]),
                  uncertainty.structure_digest([outcomes["caption_image"]]))


def retrieval_replicates(outcomes: Mapping[str, np.ndarray], resamples: int = uncertainty.RESAMPLES,
                         seed: int | Sequence[int] = uncertainty.SEED) -> dict[str, np.ndarray]:
    """Images resampled with all their captions: text recall over the drawn images, image recall over their
    captions (an image drawn twice brings its captions twice), each from the per-query verdicts
    (`metrics.retrieval_outcomes`)."""
    image_found, text_found = outcomes["image_found"], outcomes["text_found"]
    image_rank, text_rank, owner = outcomes["image_rank"], outcomes["text_rank"], outcomes["caption_image"]
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(len(text_rank) + 1))
    counts = np.diff(starts)

    def on(idx: np.ndarray) -> dict[str, float]:
        lengths = counts[idx]  # the captions of each drawn image, as one index vector without a Python loop
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        captions = order[np.repeat(starts[idx], lengths) + offsets]
        return metrics.retrieval_metrics(image_found[captions], text_found[idx], image_rank[captions], text_rank[idx])

    return uncertainty.collect(uncertainty.draws(len(text_rank), resamples, seed), on)
