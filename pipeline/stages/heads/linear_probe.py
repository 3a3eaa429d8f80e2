"""Linear-probe head stage: cached image features of the train (and validation) split -> logits on the test split,
so the score and aggregate stages take it as they take zero-shot logits. The run records the chosen λ and C, the
validation curve (arrays and a plot), the examples per class and where validation came from."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np

from pipeline.errors import PipelineError
from pipeline.stages import StageContext, StageResult
from pipeline.stages.embed.projection import EMBEDDING, PRE_PROJECTION
from pipeline.stages.heads import HeadSpec, probe, splits
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import cache_key

VERSION = "1"
CURVE_PLOT = "validation_curve.png"


def probe_key(head: HeadSpec, train_key: str, test_key: str, validation_key: str | None) -> str:
    return cache_key("linear_probe", VERSION, head.key_material(validation_key is not None),
                     [train_key, test_key, validation_key or "-"])


def probe_features(images: StageResult, head: HeadSpec, pre_is_embedding: bool = False) -> np.ndarray:
    """The paper's pre-projection features (a ResNet's, `pre_is_embedding`, are its embedding), or CLIP_benchmark's:
    the embedding, L2-normalized. float64, as scikit-learn fits them."""
    if head.features == "embedding":
        features = images[EMBEDDING].astype(np.float64)
        return features / np.linalg.norm(features, axis=1, keepdims=True)
    if pre_is_embedding:
        return images[EMBEDDING].astype(np.float64)
    if PRE_PROJECTION not in images.arrays:
        raise PipelineError(f"the image features of run {images.run_id} hold no pre-projection features; "
                            f"use head.features=embedding")
    return images[PRE_PROJECTION].astype(np.float64)


def probe_outputs(head: HeadSpec, train: StageResult, test: StageResult, validation: StageResult | None,
                  n_classes: int, pre_is_embedding: bool = False) -> StageOutput:
    """Fit on the train split's features (validation provided, or carved from train), score the test split."""
    train_x, train_y = probe_features(train, head, pre_is_embedding), train["labels"]
    provided = None
    if validation is not None:  # validation rows appended after train's, addressed by index like a carved split
        provided = np.arange(len(train_y), len(train_y) + len(validation["labels"]))
        train_x = np.concatenate([train_x, probe_features(validation, head, pre_is_embedding)])
        train_y = np.concatenate([train_y, validation["labels"]])
    split = splits.probe_split(train_y, head.k_shot, head.val_fraction, head.seed, provided)
    result = probe.run(train_x, train_y, probe_features(test, head, pre_is_embedding), n_classes, split,
                       refit_on_validation=head.k_shot is None, seed=head.seed)
    curve = np.array(sorted(result.search.curve), dtype=np.float64)
    return StageOutput(
        arrays={"logits": result.logits, "predictions": result.logits.argmax(axis=1).astype(np.int64),
                "curve_lambda": 10.0 ** (curve[:, 0] / probe.STEPS_PER_DECADE), "curve_accuracy": curve[:, 1]},
        metrics={"lambda": result.search.best_lambda, "C": result.search.best_c,
                 "examples_per_class": float(result.examples_per_class),
                 "validation_examples": float(len(split.validation))},
        tags={"validation_source": split.validation_source, "head_seed": str(head.seed),
              "k_shot": head.labels()["k_shot"], "probe_features": head.features})


def curve_plot(output: StageOutput, title: str) -> bytes:
    """Validation accuracy against λ (log scale), the chosen λ marked: what the search saw, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam, accuracy = output.arrays["curve_lambda"], output.arrays["curve_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(lam, accuracy, marker="o", markersize=3)
    ax.axvline(output.metrics["lambda"], color="tab:red", linestyle="--",
               label=f"chosen λ = {output.metrics['lambda']:.3g} (C = {output.metrics['C']:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("λ (L2 strength)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def linear_probe(ctx: StageContext, head: HeadSpec, train: StageResult, test: StageResult,
                 validation: StageResult | None, n_classes: int, pre_is_embedding: bool = False) -> StageResult:
    """The probe's test logits, cached by the head's settings and the features' keys (`stage=classify`,
    `head=linear_probe`), so the score stage takes them like zero-shot logits."""
    key = probe_key(head, train.key, test.key, validation.key if validation is not None else None)
    shots = head.labels()["k_shot"]
    name = f"probe:{ctx.tags.get('model')}:{ctx.tags.get('dataset')}:k={shots}:seed={head.seed}"

    def compute() -> StageOutput:
        output = probe_outputs(head, train, test, validation, n_classes, pre_is_embedding)
        title = f"{name} ({output.tags['validation_source']} validation)"
        return replace(output, figures={CURVE_PLOT: curve_plot(output, title)})

    return ctx.run("classify", key, name, compute, tags={"head": "linear_probe"})
