"""Classify stage: zero-shot logits `100 * normalize(image_features) @ classifier` and predictions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.embed import ImageEmbeddings, TextClassifier

VERSION = "1"
LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class Logits:
    logits: np.ndarray       # (N, C) float32
    predictions: np.ndarray  # (N,) int64
    key: str
    run_id: str


def zero_shot_logits(image_features: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    normalized = image_features / np.linalg.norm(image_features, axis=1, keepdims=True)
    return (LOGIT_SCALE * normalized @ classifier).astype(np.float32)


def compute(images: ImageEmbeddings, classifier: TextClassifier) -> StageOutput:
    logits = zero_shot_logits(images.features, classifier.weights)
    return StageOutput(arrays={"logits": logits, "predictions": logits.argmax(axis=1).astype(np.int64)})


def classify(cache: StageCache, images: ImageEmbeddings, classifier: TextClassifier, *,
             tags: Mapping[str, str], params: Mapping[str, Any]) -> Logits:
    key = cache_key("classify", VERSION, {}, [images.key, classifier.key])
    request = StageRequest("classify", key, tags, params,
                           name=f"classify:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, lambda: compute(images, classifier))
    return Logits(result.output.arrays["logits"], result.output.arrays["predictions"], key, result.run_id)
