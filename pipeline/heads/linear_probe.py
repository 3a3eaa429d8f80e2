"""Linear-probe head stage: cached image features of the train (and validation) split -> logits on the test split,
so the score and aggregate stages take it as they take zero-shot logits. The run records the chosen λ and C, the
validation curve, the examples per class and where validation came from."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.embed import Embedded
from pipeline.heads import probe, splits

VERSION = "1"


def probe_key(head: Mapping[str, Any], train_key: str, test_key: str, validation_key: str | None) -> str:
    config = {name: head.get(name) for name in ("k_shot", "seed", "features", "val_fraction")}
    return cache_key("linear_probe", VERSION, config, [train_key, test_key, validation_key or "-"])


def probe_outputs(head: Mapping[str, Any], train: Embedded, test: Embedded, validation: Embedded | None,
                  n_classes: int) -> StageOutput:
    """Fit on the train split's features (validation provided, or carved from train), score the test split."""
    train_x, train_y = train["image_features"].astype(np.float64), train["labels"]
    provided = None
    if validation is not None:  # validation rows appended after train's, addressed by index like a carved split
        provided = np.arange(len(train_y), len(train_y) + len(validation["labels"]))
        train_x = np.concatenate([train_x, validation["image_features"].astype(np.float64)])
        train_y = np.concatenate([train_y, validation["labels"]])
    seed = int(head.get("seed", 0))
    split = splits.probe_split(train_y, head.get("k_shot"), float(head.get("val_fraction", 0.2)), seed, provided)
    result = probe.run(train_x, train_y, test["image_features"].astype(np.float64), n_classes, split,
                       refit_on_validation=head.get("k_shot") is None, seed=seed)
    curve = np.array(result.search.curve, dtype=np.float64)
    return StageOutput(
        arrays={"logits": result.logits, "predictions": result.logits.argmax(axis=1).astype(np.int64),
                "curve_lambda": 10.0 ** (curve[:, 0] / probe.STEPS_PER_DECADE), "curve_accuracy": curve[:, 1]},
        metrics={"lambda": result.search.best_lambda, "C": result.search.best_c,
                 "examples_per_class": float(result.examples_per_class)},
        tags={"validation_source": split.validation_source, "head_seed": str(seed),
              "k_shot": str(head.get("k_shot") or "all")})


def linear_probe(cache: StageCache, head: Mapping[str, Any], train: Embedded, test: Embedded,
                 validation: Embedded | None, n_classes: int, *, tags: Mapping[str, str],
                 params: Mapping[str, Any]) -> Embedded:
    key = probe_key(head, train.key, test.key, validation.key if validation is not None else None)
    shots = head.get("k_shot") or "all"
    request = StageRequest("classify", key, {**tags, "head": "linear_probe"}, params,
                           name=f"probe:{tags.get('model')}:{tags.get('dataset')}:k={shots}:seed={head.get('seed', 0)}")
    result = cache.get_or_compute(request, lambda: probe_outputs(head, train, test, validation, n_classes))
    return Embedded(result.output.arrays, key, result.run_id)
