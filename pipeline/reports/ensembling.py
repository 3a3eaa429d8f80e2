"""Ensembling curves (the CLIP paper, section 3.1.4): zero-shot accuracy against the number of templates averaged
into the classifier, drawn from the per-template embeddings and image features the job runs cached; nothing is
encoded.

The curve is computed in fp32 on the CPU whatever precision the job ran in: a curve is a comparison between
template counts, and its last point (every template) equals the job's accuracy under fp32 (`protocol=fp32`, or
`datacomp` on a CPU); under autocast it may differ from the job's by the rounding of the logits.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.reports import plots
from pipeline.reports.results import ScoreRecord
from pipeline.stages.embed import TEMPLATE_SET_TAG
from pipeline.store import artifacts
from pipeline.store.tracking import TrackingStore, search_all

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.entities import Run

log = logging.getLogger(__name__)

ORDERS = 10    # random template orders averaged, besides the prompt set's own order
CURVE = ["model", "pretrained", "protocol", "dataset", "source", "prompts"]  # what one curve belongs to
SEED = 0


IMAGE_CHUNK_ELEMENTS = 1 << 25  # per-template logits held at once (128 MB in float32), whatever the dataset's size


def normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def accuracy_curves(image_features: np.ndarray, labels: np.ndarray, per_template: Sequence[np.ndarray],
                    orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Top-1 accuracy, per order (rows) and n = 1..T (columns), of the classifier averaged from the first n
    templates of that order with open_clip's recipe (normalize each prompt's embedding, mean, normalize).

    The mean's normalization only scales each class's column, so the logits of any average are running sums of
    the per-template logits divided by the running sum's per-class norm: each template's logits are computed once
    (in chunks of images), and an order costs additions rather than matrix products."""
    templates = np.stack([normalize(t.astype(np.float32)) for t in per_template])          # (T, C, D)
    count, classes = templates.shape[:2]
    norms = {tuple(order): np.linalg.norm(np.cumsum(templates[list(order)], axis=0), axis=-1) for order in orders}
    correct = np.zeros((len(orders), count))
    images = normalize(image_features.astype(np.float32))
    chunk = max(1, IMAGE_CHUNK_ELEMENTS // (count * classes))
    for start in range(0, len(images), chunk):
        logits = np.einsum("nd,tcd->tnc", images[start:start + chunk], templates)          # (T, n, C)
        truth = labels[start:start + chunk]
        for row, order in enumerate(orders):
            running = np.cumsum(logits[list(order)], axis=0) / norms[tuple(order)][:, None, :]
            correct[row] += (running.argmax(axis=-1) == truth).sum(axis=1)
    return correct / len(images)


def curves(image_features: np.ndarray, labels: np.ndarray, per_template: Sequence[np.ndarray],
           orders: int = ORDERS, seed: int = SEED) -> pd.DataFrame:
    """Per number of templates: the accuracy in the prompt set's own order, and the mean, minimum and maximum over
    `orders` random orders (seeded, so every model sees the same orders)."""
    count = len(per_template)
    rng = np.random.default_rng(seed)
    drawn = [list(range(count))] + [list(rng.permutation(count)) for _ in range(orders if count > 1 else 0)]
    accuracies = accuracy_curves(image_features, labels, per_template, drawn)
    listed, shuffled = accuracies[0], accuracies[1:] if count > 1 else accuracies
    return pd.DataFrame({"templates": np.arange(1, count + 1), "listed_order": listed,
                         "random_mean": shuffled.mean(axis=0), "random_min": shuffled.min(axis=0),
                         "random_max": shuffled.max(axis=0)})


@dataclass
class CachedArrays:
    """Arrays of stage runs, each run downloaded once for all the curves of one aggregate step (a dataset's image
    features serve every prompt set)."""

    store: TrackingStore
    loaded: dict[str, dict[str, np.ndarray] | None] = field(default_factory=dict)
    template_sets: dict[str, dict[str, Run]] = field(default_factory=dict)

    def templates(self, group: str) -> dict[str, Run]:
        """The newest servable embedding run of each template of a template set, searched once per set (every
        prompt set over the same classes shares it)."""
        if group not in self.template_sets:
            found = search_all(self.store, f"tags.{TEMPLATE_SET_TAG} = '{group}' and tags.modality = 'template' "
                                           f"and tags.cache_store = 'true' and attributes.status = 'FINISHED'",
                               ["attributes.start_time DESC"])
            by_template: dict[str, Run] = {}
            for run in found:
                by_template.setdefault(run.data.tags.get("template", ""), run)
            self.template_sets[group] = by_template
        return self.template_sets[group]

    def __call__(self, run: Run, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
        key = f"{run.info.run_id}:{','.join(names)}"
        if key not in self.loaded:
            self.loaded[key] = artifacts.load_arrays(run, names, self.store.uri)
        return self.loaded[key]


def cached_inputs(arrays: CachedArrays, record: ScoreRecord) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """(image features, labels, per-template embeddings in the prompt set's order) from the runs `record`'s job
    used; None for a classifier cached before it recorded its templates, or templates no longer servable."""
    store = arrays.store
    client = store.client
    text_run, image_run = record.tags.get("run.text"), record.tags.get("run.embed_image")
    if not text_run or not image_run:
        return None
    # A served score names the runs it was computed from: one quarantined since is read from the run recomputed in
    # its place, never blamed once healed (imported here: a table of result files never loads the store's modules).
    from pipeline.store.verify import current

    classifier = current(store, client.get_run(text_run))
    group = classifier.data.tags.get(TEMPLATE_SET_TAG)
    listed = arrays(classifier, ("templates",))
    if group is None or listed is None:
        return None
    templates = [str(t) for t in listed["templates"]]
    by_template = arrays.templates(group)
    if any(t not in by_template for t in templates):
        return None
    embeddings = [arrays(by_template[t], ("embeddings",))["embeddings"] for t in templates]
    images = arrays(current(store, client.get_run(image_run)), ("image_features", "labels"))
    return images["image_features"], images["labels"], embeddings


def from_store(store: TrackingStore, records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """One curve per result (zero-shot classification, see `prompt_gains.eligible`) whose prompt set has several
    templates."""
    frames, skipped = [], []
    arrays = CachedArrays(store)
    for record in records:  # the caller picked zero-shot classification results (`prompt_gains.eligible`)
        try:
            inputs = cached_inputs(arrays, record)
        except (artifacts.CorruptArtifact, artifacts.ArtifactUnavailable) as exc:
            log.warning("no ensembling curve for %s on %s with %s: its cached arrays cannot be read (%s)",
                        record.model, record.dataset, record.prompts, exc)
            continue
        if inputs is None:
            skipped.append(record)
            continue
        image_features, labels, per_template = inputs
        if len(per_template) < 2:
            continue
        frames.append(curves(image_features, labels, per_template).assign(
            model=record.model, pretrained=record.pretrained, protocol=record.protocol, dataset=record.dataset,
            source=record.source, prompts=record.prompts))
    if skipped:
        log.warning("%d result(s) have no ensembling curve (e.g. %s on %s with %s): CuPL's per-class sentences, a "
                    "classifier cached before classifiers recorded their templates, or templates computed with "
                    "cache.enabled=false", len(skipped), skipped[0].model, skipped[0].dataset, skipped[0].prompts)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[CURVE + [c for c in table.columns if c not in CURVE]]


def plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per dataset: accuracy against the number of templates, a line per (model, prompt set) in the
    listed order, with the band of random orders."""
    plt = plots.pyplot()

    copies = table.groupby("dataset")["source"].transform("nunique") > 1  # one panel per copy, named by it
    table = table.assign(panel=np.where(copies, table["dataset"] + " (" + table["source"] + ")", table["dataset"]))
    datasets = list(dict.fromkeys(table["panel"]))
    columns = min(4, len(datasets))
    rows = -(-len(datasets) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        for (model, pretrained, protocol, prompts), curve in table[table["panel"] == dataset].groupby(
                ["model", "pretrained", "protocol", "prompts"], sort=False):
            line, = ax.plot(curve["templates"], curve["listed_order"], marker="o", markersize=3,
                            label=f"{model} / {pretrained} / {protocol} / {prompts}")
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
               title=f"model / weights / protocol / prompts (band: {ORDERS} random orders)")
    fig.suptitle("Prompt ensembling: accuracy against the number of templates averaged")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
