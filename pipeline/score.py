"""Score stage: every applicable metric for a (logits, labels) pair, logged as MLflow metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pipeline import metrics
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.classify import Logits

VERSION = "1"


@dataclass(frozen=True)
class Scores:
    metrics: Mapping[str, float]
    main_metric: str
    key: str
    run_id: str

    @property
    def main(self) -> float:
        return self.metrics[self.main_metric]


def compute(logits: Logits, labels: np.ndarray) -> StageOutput:
    values = metrics.classification_metrics(logits.logits, labels)
    return StageOutput(metrics={**values, "num_samples": float(len(labels)), "num_classes": float(logits.logits.shape[1])})


def score(cache: StageCache, logits: Logits, labels: np.ndarray, *, main_metric: str, labels_key: str,
          tags: Mapping[str, str], params: Mapping[str, Any]) -> Scores:
    """`labels_key` is the key of the stage that produced `labels` (the image embedding)."""
    key = cache_key("score", VERSION, {"main_metric": main_metric}, [logits.key, labels_key])
    request = StageRequest("score", key, {**tags, "main_metric": main_metric}, params,
                           name=f"score:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, lambda: compute(logits, labels))
    if main_metric not in result.output.metrics:
        raise KeyError(f"main metric {main_metric!r} is not among {sorted(result.output.metrics)}")
    return Scores(dict(result.output.metrics), main_metric, key, result.run_id)
