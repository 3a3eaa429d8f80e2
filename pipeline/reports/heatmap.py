"""The model × dataset heatmap of one metric, with the mean as its last column: readable at the blog's scale
(13 models × 38 datasets), every cell annotated in percent."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.reports import plots, tables

# Row-label fields, shown only where the results differ in them (a sweep over one protocol needs no protocol).
LABEL_FIELDS = ["model", "pretrained", "protocol", "head", "prompts"]


def combined_tables(per_prompts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The per-prompt-set tables stacked, each row with its `prompts`."""
    return pd.concat([t.assign(prompts=p) for p, t in per_prompts.items()], ignore_index=True)


def row_labels(combined: pd.DataFrame) -> pd.Series:
    """Each row's label: model / pretrained, and whichever of protocol, head and prompts differ between rows."""
    varying = [f for f in LABEL_FIELDS if combined[f].nunique() > 1] or ["model", "pretrained"]
    for required in ("model", "pretrained"):
        if required not in varying:
            varying.insert(LABEL_FIELDS.index(required), required)
    return combined[varying].astype(str).agg(" / ".join, axis=1)


def matrix(per_prompts: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The per-prompt-set tables (`tables.build_tables`) as one numeric matrix: a row per (model, pretrained,
    protocol, head, prompts), labelled by the fields that vary, a column per dataset, then the mean."""
    combined = combined_tables(per_prompts)
    values = combined.drop(columns=LABEL_FIELDS + [tables.WEIGHTED_COLUMN], errors="ignore").astype(float)
    values.index = row_labels(combined)
    datasets = [c for c in values.columns if c != tables.MEAN_COLUMN]
    return values[datasets + [tables.MEAN_COLUMN]]


def plot(values: pd.DataFrame, metric: str, path: Path) -> Path:
    plt = plots.pyplot()

    rows, columns = values.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.42 * columns), max(2.5, 1.6 + 0.34 * rows)))
    data = values.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(np.arange(columns), values.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(rows), values.index, fontsize=8)
    ax.axvline(columns - 1.5, color="white", linewidth=2)  # sets the mean apart from the datasets
    for (i, j), value in np.ndenumerate(data):
        if not np.isnan(value):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6.5,
                    color="black" if value > 0.6 else "white")
    label = tables.metric_label(metric)
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label=label)
    ax.set_title(f"{label} (%), model × dataset; last column: mean over datasets")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
