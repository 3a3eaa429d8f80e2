"""Score stage: every metric that applies to the task, logged as MLflow metrics (clip_benchmark/DataComp names),
each with its 95 % bootstrap interval (`pipeline/uncertainty.py`); the per-sample outcomes and the replicates are
kept as small artifacts, so averages and paired comparisons never need the logits."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.data.datasets import CAPTIONING, MULTILABEL, SELECTION, DatasetSpec
from pipeline.errors import PipelineError
from pipeline.stages import metrics, multilabel, ties, uncertainty
from pipeline.stages.embed import Embedded
from pipeline.store.artifacts import METRICS_FILE, StageOutput
from pipeline.store.cache import StageCache, StageRequest, cache_key

# 3: per-sample outcomes, bootstrap replicates and intervals; 4: `ties` (issue 35); 5: ties decided by the references'
# own calls (torch.topk for acc1/acc5 and recall@k, torch.sort for clip_benchmark's mAP), their float32 shares
VERSION = "5"
TASK_VERSIONS = {CAPTIONING: "4"}  # captioning decides no tie: its results stay where they are
TIES = ties.TIES


@dataclass(frozen=True)
class Scores:
    metrics: Mapping[str, float]
    main_metric: str
    key: str
    run_id: str
    inputs: Mapping[str, str]  # stage -> the run id of the stage run this score was computed from


@dataclass(frozen=True)
class Scored:
    """A task's metrics, its per-sample outcomes, each metric's bootstrap replicates, and the resampled units."""

    values: dict[str, float]
    outcomes: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]
    units: int
    order: str  # `uncertainty.structure_digest`: results pair only when theirs agree
    figures: Mapping[str, bytes] = field(default_factory=dict)  # files for people, beside the arrays


def group_array(field: str) -> str:
    return f"group_{field}"


def classification_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> Scored:
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
    replicates = uncertainty.classification_replicates(outcomes, n_classes, extra, groups, seed=seed)
    _, best, worst = ties.label_ranks(logits, labels)
    tied = ties.decided(best, worst, [k for k in (1, 5) if k <= n_classes])
    values = {**values, "num_samples": float(len(labels)), "num_classes": float(n_classes), TIES: float(tied.sum())}
    order = [labels, *(outcomes[group_array(g["field"])] for g in spec.group_metrics)]
    return Scored(values, outcomes, replicates, len(labels), uncertainty.structure_digest(order))


RETRIEVAL_OUTCOMES = ("image_found", "text_found", "image_rank", "text_rank")


def retrieval_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> Scored:
    """Recall@k from the classify stage's `torch.topk` verdicts (`metrics.retrieval_outcomes`), mean ranks from the
    ranks; resampled by image."""
    outcomes = {**{name: predicted[name] for name in RETRIEVAL_OUTCOMES}, "caption_image": predicted["caption_image"]}
    values = metrics.retrieval_metrics(*(outcomes[name] for name in RETRIEVAL_OUTCOMES))
    tied = [ties.decided(*predicted[f"{side}_rank_bounds"].T, metrics.RECALL_KS) for side in ("image", "text")]
    values = {**values, "num_images": float(len(predicted["text_rank"])),
              "num_captions": float(len(predicted["image_rank"])), TIES: float(sum(t.sum() for t in tied))}
    replicates = uncertainty.retrieval_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return Scored(values, outcomes, replicates, len(outcomes["text_rank"]),
                  uncertainty.structure_digest([outcomes["caption_image"]]))


def winogavil_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> Scored:
    bounds = np.cumsum(images["game_sizes"])[:-1]
    truths = np.split(images["associations"], bounds)
    chosen = np.split(predicted["chosen"], bounds)
    outcomes = {"game_scores": metrics.winogavil_jaccards(truths, chosen), "game_sizes": images["game_sizes"]}
    values = {**metrics.winogavil_breakdown(outcomes["game_scores"], outcomes["game_sizes"]),
              "num_games": float(len(truths)), TIES: float(predicted["tied"].sum())}
    replicates = uncertainty.winogavil_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return Scored(values, outcomes, replicates, len(truths),
                  uncertainty.structure_digest([outcomes["game_sizes"], images["associations"]]))


def multilabel_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> Scored:
    """VOC2007's mAPs from the logits and the devkit's flags; both are kept, since resampling needs every score."""
    outcomes = {"scores": predicted["logits"], "labels": images["labels"]}
    values = {name: float(value[0]) for name, value in multilabel.multilabel_metrics(predicted["logits"], images["labels"]).items()}
    values = {**values, "num_samples": float(len(outcomes["labels"])), "num_classes": float(outcomes["scores"].shape[1]),
              TIES: float(ties.ranking_ties(predicted["logits"], images["labels"]))}
    replicates = uncertainty.multilabel_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return Scored(values, outcomes, replicates, len(outcomes["labels"]),
                  uncertainty.structure_digest([outcomes["labels"]]))


def selection_scores(spec: DatasetSpec, images: Embedded, predicted: Embedded) -> Scored:
    """SugarCrepe's and Winoground's metrics from each instance's similarities; resampled by unit."""
    outcomes = {**metrics.selection_outcomes(predicted["scores"]), "units": predicted["units"]}
    values = metrics.selection_values(outcomes)
    values = {**values, "num_instances": float(len(outcomes["units"])),
              TIES: float(ties.selection_ties(predicted["scores"]).sum())}
    replicates = uncertainty.selection_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return Scored(values, outcomes, replicates, int(outcomes["units"].max()) + 1,
                  uncertainty.structure_digest([outcomes["units"]]))


def captioning_scores(spec: DatasetSpec, generated: Embedded, spice: bool) -> Scored:
    """The COCO caption metrics of the generated captions against each image's references (pycocoevalcap, on
    Java); BLEU, ROUGE-L and CIDEr resampled by image in Python, METEOR and SPICE without replicates."""
    from pipeline.stages import caption_bootstrap, caption_metrics

    owners = generated["reference_image"]
    references = [[] for _ in range(len(generated["captions"]))]
    for text, image in zip(generated["references"], owners):
        references[image].append(str(text))
    truth, made = caption_metrics.tokenize(references, [str(c) for c in generated["captions"]])
    scores = caption_metrics.evaluate(truth, made, spice)
    replicates = caption_bootstrap.caption_replicates(truth, made, scores.per_image["ROUGE_L"],
                                                      seed=uncertainty.dataset_seed(spec.name))
    outcomes = {**{f"image_{name}": values for name, values in scores.per_image.items()},
                "tokenized_captions": np.array([made[i][0] for i in made], dtype=str),
                "tokenized_references": np.array([text for i in truth for text in truth[i]], dtype=str),
                "reference_image": owners}
    values = {**scores.values, "num_images": float(len(references)), "num_references": float(len(owners))}
    return Scored(values, outcomes, replicates, len(references), uncertainty.structure_digest([owners]),
                  {CAPTIONS_FILE: captions_table(generated["captions"], references, scores.per_image)})


CAPTIONS_FILE = "captions.csv"


def captions_table(captions: np.ndarray, references: list[list[str]], per_image: Mapping[str, np.ndarray]) -> bytes:
    """Each image's caption, its references and its scores, for reading in the MLflow UI."""
    import pandas as pd

    table = pd.DataFrame({"image": range(len(captions)), "caption": captions,
                          "references": [" | ".join(texts) for texts in references],
                          **{name: values for name, values in per_image.items()}})
    return table.to_csv(index=False, float_format="%.4f").encode()


def with_intervals(scored: Scored) -> StageOutput:
    """The score's output: metrics with each one's interval bounds and the number of resampled units, the
    per-sample outcomes, and the replicates (`bootstrap`, one row per name in `bootstrap_metrics`) that averages
    and paired comparisons are computed from."""
    names = sorted(scored.replicates)
    bounds = {}
    for name in names:
        low, high = uncertainty.interval(scored.replicates[name])
        bounds[uncertainty.CI_LOW + name], bounds[uncertainty.CI_HIGH + name] = low, high
    arrays = {**scored.outcomes, "bootstrap": np.stack([scored.replicates[name] for name in names]),
              "bootstrap_metrics": np.array(names, dtype=str)}
    return StageOutput(arrays=arrays, metrics={**scored.values, **bounds, uncertainty.N_METRIC: float(scored.units)},
                       tags={ORDER_TAG: scored.order}, figures=scored.figures)


def metric_names(spec: DatasetSpec) -> list[str]:
    """The metrics the score stage logs for `spec`, known before anything runs."""
    if spec.task == "zeroshot_retrieval":
        return list(metrics.RETRIEVAL_METRICS)
    if spec.task == "winogavil":
        return list(metrics.WINOGAVIL_METRICS)
    if spec.task == MULTILABEL:
        return list(metrics.MULTILABEL_METRICS)
    if spec.task == SELECTION:
        return list(metrics.SELECTION_METRICS)
    if spec.task == CAPTIONING:
        from pipeline.stages.caption_metrics import CAPTION_METRICS, SPICE

        return [*CAPTION_METRICS, SPICE]
    return list(metrics.CLASSIFICATION_METRICS) + list(spec.extra_metrics) + [g["name"] for g in spec.group_metrics]


SCORERS: dict[str, Callable[[DatasetSpec, Embedded, Embedded], Scored]] = {
    "zeroshot_classification": classification_scores,
    "zeroshot_retrieval": retrieval_scores,
    "winogavil": winogavil_scores,
    MULTILABEL: multilabel_scores,
    SELECTION: selection_scores,
}


def score_key(spec: DatasetSpec, classify_key: str, image_key: str, spice: bool = False) -> str:
    config = {"task": spec.task, "main_metric": spec.main_metric, "groups": list(spec.group_metrics),
              "extra": list(spec.extra_metrics), "fields": list(spec.metadata_fields),
              "bootstrap": [uncertainty.RESAMPLES, uncertainty.SEED, uncertainty.LEVEL]}
    if spec.task == CAPTIONING:  # (only there, so every other task's keys stay what they were)
        from importlib.metadata import version

        config = {**config, "spice": spice, "pycocoevalcap": version("pycocoevalcap")}
    return cache_key("score", TASK_VERSIONS.get(spec.task, VERSION), config, [classify_key, image_key])


ORDER_TAG = "sample_order"
# What a cached score serves: its metrics, and the replicates the aggregate reads (checked here, so a damaged file
# is recomputed with the score alone); the per-sample outcomes stay in the store.
BOOTSTRAP_FILES = ("bootstrap.npy", "bootstrap_metrics.npy")
INPUT_TAG = "input."  # the stage runs a score was computed from, so a served score still names them


def score(cache: StageCache, spec: DatasetSpec, key: str, inputs: Callable[[], Mapping[str, Embedded]], *,
          tags: Mapping[str, str], params: Mapping[str, Any], spice: bool = False) -> Scores:
    """Looked up by `key` first: on a hit nothing upstream is read. `inputs` gives the `embed_image` (the ground
    truth: labels, metadata, caption owners, associations), `text` and `classify` stages, or a captioning job's
    `generate` stage, only when scores are computed."""
    upstream: dict[str, Embedded] = {}

    def compute() -> StageOutput:
        scored = (captioning_scores(spec, upstream["generate"], spice) if spec.task == CAPTIONING else
                  SCORERS[spec.task](spec, upstream["embed_image"], upstream["classify"]))
        output = with_intervals(scored)
        return replace(output, tags={**output.tags, **{INPUT_TAG + stage: e.run_id for stage, e in upstream.items()}})

    request = StageRequest("score", key, {**tags, "main_metric": spec.main_metric}, params,
                           name=f"score:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}",
                           serve_only=(METRICS_FILE, *BOOTSTRAP_FILES))
    result = cache.get_or_compute(request, compute, before=lambda: upstream.update(inputs()))
    if spec.main_metric not in result.output.metrics:
        raise PipelineError(f"main metric {spec.main_metric!r} of {spec.name} is not among {sorted(result.output.metrics)}")
    inputs_used = {k.removeprefix(INPUT_TAG): v for k, v in result.tags.items() if k.startswith(INPUT_TAG)}
    return Scores(dict(result.output.metrics), spec.main_metric, key, result.run_id, inputs_used)
