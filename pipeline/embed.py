"""Embed stage: image features and labels for (model, dataset), text classifiers for (model, classes, prompts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from pipeline import PipelineError, datasets, prompts
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.models import ModelLoader

VERSION = "1"


@dataclass(frozen=True)
class ImageEmbeddings:
    features: np.ndarray  # (N, D) float32, as the image encoder returns them (not normalized)
    labels: np.ndarray    # (N,) int64
    key: str
    run_id: str


@dataclass(frozen=True)
class TextClassifier:
    weights: np.ndarray   # (D, C) float32, one normalized column per class
    key: str
    run_id: str


def image_key(loader: ModelLoader, dataset: datasets.DatasetInfo) -> str:
    return cache_key("embed/image", VERSION, {"model": loader.spec.fingerprint, "dataset": dataset.fingerprint})


def text_key(loader: ModelLoader, classnames: list[str], templates: list[str]) -> str:
    config = {"model": loader.spec.fingerprint, "classnames": classnames, "templates": templates}
    return cache_key("embed/text", VERSION, config)


def encode_images(loader: ModelLoader, spec: datasets.DatasetSpec, batch_size: int, num_workers: int) -> StageOutput:
    loaded = loader.get()
    features, labels = [], []
    batches = datasets.image_batches(spec, loaded.preprocess, batch_size, num_workers)
    try:
        with torch.no_grad(), loaded.autocast():
            for images, targets in tqdm(batches, desc=f"embed {spec.name}/{spec.split}", unit="batch"):
                features.append(loaded.model.encode_image(images.to(loaded.device)).float().cpu())
                labels.append(torch.as_tensor(targets))
    except (PipelineError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise PipelineError(
            f"reading dataset {spec.name} ({spec.root}, split {spec.split}) failed: {exc}. "
            f"A shard may be corrupt or truncated; re-download or regenerate it."
        ) from exc
    if not features:
        raise PipelineError(f"dataset {spec.name} ({spec.root}, split {spec.split}) yielded no samples")
    return StageOutput(arrays={
        "image_features": torch.cat(features).numpy().astype(np.float32),
        "labels": torch.cat(labels).numpy().astype(np.int64),
    })


def encode_classifier(loader: ModelLoader, classnames: list[str], templates: list[str]) -> StageOutput:
    loaded = loader.get()
    with torch.no_grad(), loaded.autocast():
        weights = open_clip.build_zero_shot_classifier(
            loaded.model, loaded.tokenizer, classnames, prompts.fillers(templates),
            device=loaded.device, use_tqdm=True,
        )
    return StageOutput(arrays={"classifier": weights.float().cpu().numpy()})


def embed_images(cache: StageCache, loader: ModelLoader, dataset: datasets.DatasetInfo, *, tags: Mapping[str, str],
                 params: Mapping[str, Any], batch_size: int, num_workers: int) -> ImageEmbeddings:
    """Image features and labels for (model, dataset, split); independent of the prompt set."""
    key = image_key(loader, dataset)
    request = StageRequest("embed", key, {**tags, "modality": "image", "prompts": "*"}, params,
                           name=f"embed-image:{loader.spec.name}:{dataset.spec.name}")
    result = cache.get_or_compute(request, lambda: encode_images(loader, dataset.spec, batch_size, num_workers))
    arrays = result.output.arrays
    return ImageEmbeddings(arrays["image_features"], arrays["labels"], key, result.run_id)


def embed_text(cache: StageCache, loader: ModelLoader, classnames: list[str], templates: list[str], *,
               tags: Mapping[str, str], params: Mapping[str, Any]) -> TextClassifier:
    """Zero-shot classifier weights from open_clip's build_zero_shot_classifier."""
    key = text_key(loader, classnames, templates)
    request = StageRequest("embed", key, {**tags, "modality": "text"}, params,
                           name=f"embed-text:{loader.spec.name}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, lambda: encode_classifier(loader, classnames, templates))
    return TextClassifier(result.output.arrays["classifier"], key, result.run_id)
