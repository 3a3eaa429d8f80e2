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
    known = score.metric_names(spec)
    if spec.main_metric not in known:
        raise PipelineError(f"dataset.main_metric={spec.main_metric!r} is not computed for {spec.task}; use one of {known}")
    info = datasets.describe(spec)
    class_prompts = (prompts.resolve(cfg.prompts, spec.name, info.templates, info.classnames)
                     if spec.task == "zeroshot_classification" else None)
    loader = ModelLoader(ModelSpec.from_cfg(cfg.model, cfg.get("weights_dir")), resolve_device(cfg.device))
    loader.spec.fingerprint  # fails now, not mid-run, on a missing checkpoint
    metric = headline_metric(cfg.metric.name, spec.main_metric)

    store = tracking.connect_cfg(cfg.tracking)
    cache = StageCache(store, enabled=cfg.cache.enabled, force=cfg.cache.force)
    # Prompt sets only shape classifiers; retrieval and WinoGAViL embed the dataset's own texts.
    prompt_tag = cfg.prompts.name if class_prompts is not None else "*"
    tags = {"model": loader.spec.arch, "pretrained": loader.spec.pretrained_label, "model_name": loader.spec.name,
            "dataset": spec.name, "prompts": prompt_tag, "task": spec.task}
    if spec.column:
        tags["column"] = spec.column
    params = flatten(cfg)

    images = embed.embed_images(cache, loader, info, tags=tags, params=params,
                                batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    if class_prompts is not None:
        text = embed.embed_classifier(cache, loader, info.classnames, class_prompts, tags=tags, params=params)
    else:
        texts = images["captions"] if spec.task == "zeroshot_retrieval" else images["cues"]
        text = embed.embed_texts(cache, loader, [str(t) for t in texts], tags=tags, params=params)
    predicted = classify.classify(cache, spec.task, images, text, tags=tags, params=params)
    scores = score.score(cache, spec, images, predicted, tags=tags, params=params)

    result = JobResult(scores.run_id, metric, scores.metrics.get(metric, float("nan")), dict(scores.metrics))
    log.info("%s/%s on %s with prompts=%s: %s = %.4f", loader.spec.arch, loader.spec.pretrained_label,
             spec.name, prompt_tag, metric, result.value)
    if output_dir is not None:
        payload = {"score_run_id": result.score_run_id, "tracking_uri": store.uri, "metric": metric,
                   "value": result.value}
        (Path(output_dir) / RESULT_FILE).write_text(json.dumps(payload, indent=2))
    return result
