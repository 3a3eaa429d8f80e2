"""The prompt-engineering report (the CLIP paper's Figure 4, generalized): each prompt set's gain over the
class-name-only baseline on every dataset, with its paired-bootstrap interval, and the average gain.

The gains are `comparisons.compare` against `prompts=classname` on the zero-shot classification results alone
(retrieval and WinoGAViL use no prompt set, so they would only dilute the average with zeros).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.reports import comparisons, plots, tables
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import ZEROSHOT

BASELINE = "classname"
GROUP = ["model", "pretrained", "protocol"]


def eligible(records: Iterable[ScoreRecord]) -> list[ScoreRecord]:
    return [r for r in records if r.head == ZEROSHOT and r.task == "zeroshot_classification" and not r.is_external]


def applies(records: Iterable[ScoreRecord]) -> bool:
    """Whether `records` hold the baseline and at least one other prompt set."""
    found = {r.prompts for r in eligible(records)}
    return BASELINE in found and len(found) > 1


def gains(records: Iterable[ScoreRecord], metric: str, replicates: comparisons.Replicates) -> pd.DataFrame:
    """Per (model, pretrained, protocol, prompt set): the gain on each dataset and the plain and size-weighted
    mean gains, `gain = accuracy(prompt set) − accuracy(class name alone)`, with intervals and p-values."""
    records = eligible(records)
    if not applies(records):
        raise PipelineError(f"the prompt-engineering report compares prompt sets with prompts={BASELINE}: run the "
                            f"same models and datasets with prompts={BASELINE} and at least one other prompt set")
    # One average over every dataset, whichever copy each was read from: the copy goes into the dataset's label
    # (as in the tables) rather than into the grouping.
    labels = tables.dataset_labels(records)
    records = [replace(r, dataset=labels[(r.dataset, r.source, r.language)], source="") for r in records]
    table = comparisons.compare(records, metric, {"prompts": BASELINE}, replicates)
    if table.empty:
        raise PipelineError(f"no result has a prompts={BASELINE} partner (the same model, weights, protocol and "
                            f"dataset); run prompts={BASELINE} on the datasets and models the other prompt sets ran on")
    table = table.rename(columns={"candidate": "prompts", "difference": "gain", "candidate value": "value",
                                  "baseline value": f"{BASELINE} value"})
    table["prompts"] = table["prompts"].str.removeprefix("prompts=")
    return table.drop(columns=["baseline", "source"], errors="ignore")


def plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per (model, pretrained, protocol): a group of bars per dataset and for the mean, a bar per
    prompt set, its 95 % interval as an error bar, the zero line marked."""
    plt = plots.pyplot()

    table = table[~table["dataset"].str.startswith(tables.WEIGHTED_COLUMN)]
    panels = list(table.groupby(GROUP, sort=False))
    datasets = list(dict.fromkeys(table["dataset"]))
    prompt_sets = list(dict.fromkeys(table["prompts"]))
    width = 0.8 / len(prompt_sets)
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(min(30, max(6, 1.2 + 0.35 * len(datasets) * len(prompt_sets))), 3.6 * len(panels)))
    for ax, (group, rows) in zip(axes[:, 0], panels):
        for i, prompts in enumerate(prompt_sets):
            bars = rows[rows["prompts"] == prompts].set_index("dataset").reindex(datasets)
            gain = 100 * bars["gain"].to_numpy(dtype=float)
            errors = 100 * np.abs(np.stack([bars["gain"] - bars["ci_low"], bars["ci_high"] - bars["gain"]]).astype(float))
            ax.bar(np.arange(len(datasets)) + (i - (len(prompt_sets) - 1) / 2) * width, gain, width, label=prompts,
                   yerr=np.nan_to_num(errors), capsize=2, error_kw={"linewidth": 0.8})
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(datasets)), datasets, rotation=30, ha="right")
        ax.set_ylabel(f"gain over {BASELINE} (points)")
        ax.set_title(" / ".join(map(str, group)))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(title="prompt set", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Prompt engineering: gain over the class name alone, with 95 % paired-bootstrap intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
