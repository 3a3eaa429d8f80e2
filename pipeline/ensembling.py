"""Ensembling curves (the CLIP paper, section 3.1.4): zero-shot accuracy against the number of templates averaged
into the classifier, drawn from the per-template embeddings and image features the job runs cached; nothing is
encoded.

The curve is computed in fp32 on the CPU whatever precision the job ran in: a curve is a comparison between
template counts, and its last point (every template) equals the job's accuracy under fp32 (`protocol=fp32`, or
`datacomp` on a CPU); under autocast it may differ from the job's by the rounding of the logits.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline import artifacts
from pipeline.embed import TEMPLATE_SET_TAG
from pipeline.results import ScoreRecord
from pipeline.tracking import TrackingStore

log = logging.getLogger(__name__)

ORDERS = 10    # random template orders averaged, besides the prompt set's own order
SEED = 0


def normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def accuracy_curve(image_features: np.ndarray, labels: np.ndarray, per_template: Sequence[np.ndarray],
                   order: Sequence[int]) -> np.ndarray:
    """Top-1 accuracy of the classifier averaged from the first n templates of `order`, for n = 1..T: open_clip's
    recipe (normalize each prompt's embedding, mean over templates, normalize) on running sums."""
    images = normalize(image_features.astype(np.float64))
    running = np.zeros_like(per_template[0], dtype=np.float64)
    accuracies = []
    for index in order:
        running += normalize(per_template[index].astype(np.float64))
        predictions = (images @ normalize(running).T).argmax(axis=1)
        accuracies.append(float((predictions == labels).mean()))
    return np.array(accuracies)


def curves(image_features: np.ndarray, labels: np.ndarray, per_template: Sequence[np.ndarray],
           orders: int = ORDERS, seed: int = SEED) -> pd.DataFrame:
    """Per number of templates: the accuracy in the prompt set's own order, and the mean, minimum and maximum over
    `orders` random orders (seeded, so every model sees the same orders)."""
    count = len(per_template)
    listed = accuracy_curve(image_features, labels, per_template, range(count))
    rng = np.random.default_rng(seed)
    shuffled = np.stack([accuracy_curve(image_features, labels, per_template, rng.permutation(count))
                         for _ in range(orders)]) if count > 1 else listed[None]
    return pd.DataFrame({"templates": np.arange(1, count + 1), "listed_order": listed,
                         "random_mean": shuffled.mean(axis=0), "random_min": shuffled.min(axis=0),
                         "random_max": shuffled.max(axis=0)})


def cached_inputs(store: TrackingStore, record: ScoreRecord) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """(image features, labels, per-template embeddings in the prompt set's order) from the runs `record`'s job
    used; None for a classifier cached before it recorded its templates (rerun with `cache.force=true` on the
    text stage's job, or accept the missing curve)."""
    client = store.client
    text_run, image_run = record.tags.get("run.text"), record.tags.get("run.embed_image")
    if not text_run or not image_run:
        return None
    classifier = client.get_run(text_run)
    group = classifier.data.tags.get(TEMPLATE_SET_TAG)
    listed = artifacts.load_arrays(classifier, ("templates",), store.uri)
    if group is None or listed is None:
        return None
    templates = [str(t) for t in listed["templates"]]
    found = client.search_runs([store.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.{TEMPLATE_SET_TAG} = '{group}' and tags.modality = 'template' "
                                             f"and tags.cache_store = 'true' and attributes.status = 'FINISHED'")
    by_template: dict[str, object] = {}
    for run in found:
        by_template.setdefault(run.data.tags.get("template", ""), run)
    if any(t not in by_template for t in templates):
        return None
    embeddings = [artifacts.load_arrays(by_template[t], ("embeddings",), store.uri)["embeddings"] for t in templates]
    images = artifacts.load_arrays(client.get_run(image_run), ("image_features", "labels"), store.uri)
    return images["image_features"], images["labels"], embeddings


def from_store(store: TrackingStore, records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """One curve per zero-shot classification result whose prompt set has several templates."""
    frames, skipped = [], []
    for record in records:
        if record.head != "zeroshot" or record.task != "zeroshot_classification" or record.is_external:
            continue
        inputs = cached_inputs(store, record)
        if inputs is None:
            skipped.append(record)
            continue
        image_features, labels, per_template = inputs
        if len(per_template) < 2:
            continue
        frames.append(curves(image_features, labels, per_template).assign(
            model=record.model, pretrained=record.pretrained, dataset=record.dataset, source=record.source,
            prompts=record.prompts))
    if skipped:
        log.warning("%d result(s) have no ensembling curve: their classifiers were cached before they recorded "
                    "their templates, or are CuPL's per-class sentences (e.g. %s on %s with %s)", len(skipped),
                    skipped[0].model, skipped[0].dataset, skipped[0].prompts)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    lead = ["model", "pretrained", "dataset", "source", "prompts"]
    return table[lead + [c for c in table.columns if c not in lead]]


def plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per dataset: accuracy against the number of templates, a line per (model, prompt set) in the
    listed order, with the band of random orders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(table["dataset"]))
    columns = min(4, len(datasets))
    rows = -(-len(datasets) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        for (model, pretrained, prompts), curve in table[table["dataset"] == dataset].groupby(
                ["model", "pretrained", "prompts"], sort=False):
            line, = ax.plot(curve["templates"], curve["listed_order"], marker="o", markersize=3,
                            label=f"{model} / {pretrained} / {prompts}")
            ax.fill_between(curve["templates"], curve["random_min"], curve["random_max"], color=line.get_color(),
                            alpha=0.15, linewidth=0)
        ax.set_title(dataset)
        ax.set_xlabel("templates averaged")
        ax.set_ylabel("top-1 accuracy")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small",
               title="model / weights / prompts (band: 10 random orders)")
    fig.suptitle("Prompt ensembling: accuracy against the number of templates averaged")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
