"""Score stage: every metric that applies to the task, logged as MLflow metrics (clip_benchmark/DataComp names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from pipeline import PipelineError, metrics
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.datasets import DatasetSpec
from pipeline.embed import Embedded

VERSION = "2"


@dataclass(frozen=True)
class Scores:
    metrics: Mapping[str, float]
    main_metric: str
    key: str
    run_id: str
    inputs: Mapping[str, str]  # stage -> the run id of the stage run this score was computed from


def classification_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> dict[str, float]:
    logits, labels = predicted["logits"], images["labels"]
    values = metrics.classification_metrics(logits, labels)
    for name in spec.extra_metrics:
        values[name] = metrics.EXTRA_METRICS[name](predicted["predictions"], labels)
    for group in spec.group_metrics:
        field = spec.metadata_fields.index(group["field"])
        values[group["name"]] = metrics.worst_group_accuracy(
            logits, labels, images["metadata"][:, field], k=int(group.get("k", 1)))
    return {**values, "num_samples": float(len(labels)), "num_classes": float(logits.shape[1])}


def retrieval_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> dict[str, float]:
    values = metrics.retrieval_metrics(predicted["image_rank"], predicted["text_rank"])
    return {**values, "num_images": float(len(predicted["text_rank"])), "num_captions": float(len(predicted["image_rank"]))}


def winogavil_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> dict[str, float]:
    bounds = np.cumsum(images["game_sizes"])[:-1]
    truths = np.split(images["associations"], bounds)
    chosen = np.split(predicted["chosen"], bounds)
    return {**metrics.winogavil_scores(truths, chosen), "num_games": float(len(truths))}


def metric_names(spec: DatasetSpec) -> list[str]:
    """The metrics the score stage logs for `spec`, known before anything runs."""
    if spec.task == "zeroshot_retrieval":
        return list(metrics.retrieval_metrics(np.ones(1), np.ones(1)))
    if spec.task == "winogavil":
        return list(metrics.winogavil_scores([np.array([True, False])], [np.array([True, False])]))
    return list(metrics.CLASSIFICATION_METRICS) + list(spec.extra_metrics) + [g["name"] for g in spec.group_metrics]


SCORERS: dict[str, Callable[[DatasetSpec, Embedded, Embedded], dict[str, float]]] = {
    "zeroshot_classification": classification_scores,
    "zeroshot_retrieval": retrieval_scores,
    "winogavil": winogavil_scores,
}


def score_key(spec: DatasetSpec, classify_key: str, image_key: str) -> str:
    config = {"task": spec.task, "main_metric": spec.main_metric, "groups": list(spec.group_metrics),
              "extra": list(spec.extra_metrics), "fields": list(spec.metadata_fields)}
    return cache_key("score", VERSION, config, [classify_key, image_key])


INPUT_TAG = "input."  # the stage runs a score was computed from, so a served score still names them


def score(cache: StageCache, spec: DatasetSpec, key: str, inputs: Callable[[], Mapping[str, Embedded]], *,
          tags: Mapping[str, str], params: Mapping[str, Any]) -> Scores:
    """Looked up by `key` first: on a hit nothing upstream is read. `inputs` gives the `images` (the ground truth:
    labels, metadata, caption owners, associations), `text` and `predicted` stages, only when scores are computed."""
    upstream: dict[str, Embedded] = {}

    def compute() -> StageOutput:
        metrics = SCORERS[spec.task](spec, upstream["embed_image"], upstream["classify"])
        return StageOutput(metrics=metrics, tags={INPUT_TAG + stage: e.run_id for stage, e in upstream.items()})

    request = StageRequest("score", key, {**tags, "main_metric": spec.main_metric}, params,
                           name=f"score:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, compute, before=lambda: upstream.update(inputs()))
    if spec.main_metric not in result.output.metrics:
        raise PipelineError(f"main metric {spec.main_metric!r} of {spec.name} is not among {sorted(result.output.metrics)}")
    inputs_used = {k.removeprefix(INPUT_TAG): v for k, v in result.tags.items() if k.startswith(INPUT_TAG)}
    return Scores(dict(result.output.metrics), spec.main_metric, key, result.run_id, inputs_used)
