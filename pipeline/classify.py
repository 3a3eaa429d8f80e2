"""Classify stage: turn embeddings into predictions — zero-shot logits, retrieval ranks, WinoGAViL choices."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from pipeline import metrics
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.embed import Embedded

VERSION = "1"
LOGIT_SCALE = 100.0


def normalize(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def zero_shot_logits(image_features: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """`100 * normalize(image_features) @ classifier`."""
    return (LOGIT_SCALE * normalize(image_features) @ classifier).astype(np.float32)


def classification_outputs(images: Embedded, text: Embedded) -> StageOutput:
    logits = zero_shot_logits(images["image_features"], text["classifier"])
    return StageOutput(arrays={"logits": logits, "predictions": logits.argmax(axis=1).astype(np.int64)})


def retrieval_outputs(images: Embedded, text: Embedded) -> StageOutput:
    # The caption x image similarity matrix (25k x 5k for MSCOCO) is not stored; the ranks carry every metric.
    image_rank, text_rank = metrics.retrieval_ranks(text["text_features"], normalize(images["image_features"]),
                                                    images["caption_image"])
    return StageOutput(arrays={"image_rank": image_rank, "text_rank": text_rank})


def winogavil_outputs(images: Embedded, text: Embedded) -> StageOutput:
    image_features = normalize(images["image_features"])
    chosen, start = [], 0
    truth = images["associations"]
    for game, size in enumerate(images["game_sizes"]):
        similarities = image_features[start:start + size] @ text["text_features"][game]
        chosen.append(metrics.winogavil_predictions(similarities, int(truth[start:start + size].sum())))
        start += size
    return StageOutput(arrays={"chosen": np.concatenate(chosen)})


OUTPUTS: dict[str, Callable[[Embedded, Embedded], StageOutput]] = {
    "zeroshot_classification": classification_outputs,
    "zeroshot_retrieval": retrieval_outputs,
    "winogavil": winogavil_outputs,
}


def classify(cache: StageCache, task: str, images: Embedded, text: Embedded, *,
             tags: Mapping[str, str], params: Mapping[str, Any]) -> Embedded:
    key = cache_key("classify", VERSION, {"task": task}, [images.key, text.key])
    request = StageRequest("classify", key, tags, params,
                           name=f"classify:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, lambda: OUTPUTS[task](images, text))
    return Embedded(result.output.arrays, key, result.run_id)
