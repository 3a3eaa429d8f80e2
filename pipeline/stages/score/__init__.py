"""Score stage: every metric of the task, logged as MLflow metrics (clip_benchmark/DataComp names), each with its
95 % bootstrap interval (`uncertainty`); the per-sample outcomes and the replicates are kept as small artifacts, so
averages and paired comparisons never need the logits. What is scored and how it is resampled is the task's
(`pipeline.tasks`); this package holds the pure metrics (`metrics`, `multilabel`, `caption_metrics`), the bootstrap
(`uncertainty`, `caption_bootstrap`) and the tie rules (`ties`) the tasks score with."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.data.datasets import DatasetSpec
from pipeline.errors import PipelineError
from pipeline.stages import StageContext, StageResult
from pipeline.stages.score import uncertainty
from pipeline.store.artifacts import METRICS_FILE, StageOutput
from pipeline.store.cache import cache_key

# 3: per-sample outcomes, bootstrap replicates and intervals; 4: `ties` (issue 35); 5: ties decided by the references'
# own calls (torch.topk for acc1/acc5 and recall@k, torch.sort for clip_benchmark's mAP), their float32 shares. A
# task whose scores did not change keeps its own version (`Task.score_version`).
VERSION = "5"


@dataclass(frozen=True)
class TaskScores:
    """What a task computes from its upstream stages: its metrics, the per-sample outcomes, each metric's bootstrap
    replicates, the number of resampled units, and the digest of their order (results pair when theirs agree)."""

    values: dict[str, float]
    outcomes: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]
    units: int
    order: str  # `uncertainty.structure_digest`: results pair only when theirs agree
    figures: Mapping[str, bytes] = field(default_factory=dict)  # files for people, beside the arrays


def with_intervals(scored: TaskScores) -> StageOutput:
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


def score_key(spec: DatasetSpec, classify_key: str, image_key: str, version: str = VERSION,
              material: Mapping[str, Any] | None = None) -> str:
    """The score's key: its inputs' keys, the dataset's metric definitions, the bootstrap's settings, and what
    else the task says determines it (`material`: captioning's SPICE switch and pycocoevalcap build)."""
    config = {"task": spec.task, "main_metric": spec.main_metric, "groups": list(spec.group_metrics),
              "extra": list(spec.extra_metrics), "fields": list(spec.metadata_fields),
              "bootstrap": [uncertainty.RESAMPLES, uncertainty.SEED, uncertainty.LEVEL], **(material or {})}
    return cache_key("score", version, config, [classify_key, image_key])


ORDER_TAG = "sample_order"
# What a cached score serves: its metrics, and the replicates the aggregate reads (checked here, so a damaged file
# is recomputed with the score alone); the per-sample outcomes stay in the store.
BOOTSTRAP_FILES = ("bootstrap.npy", "bootstrap_metrics.npy")
INPUT_TAG = "input."  # the stage runs a score was computed from, so a served score still names them

Scorer = Callable[[Mapping[str, StageResult]], TaskScores]


def score(ctx: StageContext, spec: DatasetSpec, key: str, inputs: Callable[[], Mapping[str, StageResult]],
          scorer: Scorer) -> StageResult:
    """Looked up by `key` first: on a hit nothing upstream is read. `inputs` gives the stages the task scores
    (`embed_image`, the ground truth; `text`; `classify`; or a captioning job's `generate`) only when the score is
    computed; `scorer` is the task's."""
    upstream: dict[str, StageResult] = {}

    def compute() -> StageOutput:
        output = with_intervals(scorer(upstream))
        return replace(output, tags={**output.tags, **{INPUT_TAG + stage: e.run_id for stage, e in upstream.items()}})

    name = f"score:{ctx.tags.get('model')}:{ctx.tags.get('dataset')}:{ctx.tags.get('prompts')}"
    result = ctx.run("score", key, name, compute, tags={"main_metric": spec.main_metric},
                     before=lambda: upstream.update(inputs()), serve_only=(METRICS_FILE, *BOOTSTRAP_FILES))
    if spec.main_metric not in result.metrics:
        raise PipelineError(f"main metric {spec.main_metric!r} of {spec.name} is not among {sorted(result.metrics)}")
    return result


def inputs_of(scored: StageResult) -> dict[str, str]:
    """The stage runs a score was computed from, by stage (a served score names those of the job that computed it)."""
    return {tag.removeprefix(INPUT_TAG): run_id for tag, run_id in scored.tags.items() if tag.startswith(INPUT_TAG)}
