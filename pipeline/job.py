"""One job of a sweep: resolve inputs, then embed -> classify -> score, each through the stage cache."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import PipelineError, classify, datasets, embed, prompts, score, tracking
from pipeline.cache import StageCache
from pipeline.models import ModelLoader, ModelSpec, resolve_device

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall", "acc1_adjusted")


@dataclass(frozen=True)
class JobResult:
    score_run_id: str
    metric: str
    value: float
    metrics: dict[str, float]


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def headline_metric(metric_name: str, main_metric: str) -> str:
    return main_metric if metric_name == "main" else metric_name


def run_job(cfg: DictConfig, output_dir: Path | None = None) -> JobResult:
    """Evaluate cfg.model on cfg.dataset with cfg.prompts; writes `result.json` into `output_dir` if given."""
    # Everything that can be wrong with the inputs is checked before any MLflow run exists.
    spec = datasets.DatasetSpec.from_cfg(cfg.dataset)
    if spec.main_metric not in CLASSIFICATION_METRICS:
        raise PipelineError(f"dataset.main_metric={spec.main_metric!r} is not one of {CLASSIFICATION_METRICS}")
    info = datasets.describe(spec)
    templates = prompts.resolve(cfg.prompts, info.templates)
    loader = ModelLoader(ModelSpec.from_cfg(cfg.model), resolve_device(cfg.device))
    loader.spec.fingerprint  # fails now, not mid-run, on a missing checkpoint
    metric = headline_metric(cfg.metric.name, spec.main_metric)

    store = tracking.connect_cfg(cfg.tracking)
    cache = StageCache(store, enabled=cfg.cache.enabled, force=cfg.cache.force)
    tags = {"model": loader.spec.arch, "pretrained": loader.spec.pretrained_label, "model_name": loader.spec.name,
            "dataset": spec.name, "prompts": cfg.prompts.name, "task": spec.task}
    params = flatten(cfg)

    images = embed.embed_images(cache, loader, info, tags=tags, params=params,
                                batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    classifier = embed.embed_text(cache, loader, info.classnames, templates, tags=tags, params=params)
    logits = classify.classify(cache, images, classifier, tags=tags, params=params)
    scores = score.score(cache, logits, images.labels, main_metric=spec.main_metric, labels_key=images.key,
                         tags=tags, params=params)

    result = JobResult(scores.run_id, metric, scores.metrics[metric], dict(scores.metrics))
    log.info("%s/%s on %s with prompts=%s: %s = %.4f", loader.spec.arch, loader.spec.pretrained_label,
             spec.name, cfg.prompts.name, metric, result.value)
    if output_dir is not None:
        payload = {"score_run_id": result.score_run_id, "tracking_uri": store.uri, "metric": metric,
                   "value": result.value}
        (Path(output_dir) / RESULT_FILE).write_text(json.dumps(payload, indent=2))
    return result
